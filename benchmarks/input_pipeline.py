r"""REALM input-pipeline throughput (examples/s, with retrieval, k=8) on a generated corpus.

  python benchmarks/input_pipeline.py --layers=4 --hidden=256 --heads=4 --batch=4 --k=8 \
      --num_records=2000 --num_blocks=5000 --retrieval_batch_size=32 [--trainer_examples_per_s=X]

Runs the real pipeline (`pretrain_pipeline.build_pretrain_dataset`: parse -> mask -> batched query
embedding with a `RealmEmbedder` of the flag size inside the `py_function` -> MIPS top-k -> null doc ->
BlockStore gather -> NumPy packing -> batch) over synthetic GZIP pre-training shards written in the
contracts §2 layout, and a synthetic retrieval corpus. Reports examples/s (after a warm-up), the
share of host time spent in the query embedder, the skip counts, and, if given, the ratio to the
trainer's examples/s (`benchmarks/pretrain_step.py` at the same config).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import realm_tf2  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import pretrain_step  # noqa: E402
from realm_tf2 import tokenization  # noqa: E402
from realm_tf2.data import pipeline_stats  # noqa: E402
from realm_tf2.data import pretrain_pipeline  # noqa: E402
from realm_tf2.modeling import embedder as embedder_lib  # noqa: E402
from realm_tf2.retrieval import block_store as block_store_lib  # noqa: E402
from realm_tf2.retrieval import index as index_lib  # noqa: E402
from realm_tf2.retrieval import refresher  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path, vocab_size):
  """Specials + `w<i>` words (each word is one wordpiece); returns the words."""
  words = [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(SPECIALS + words) + "\n")
  return words


def _pretrain_example(rng, words, num_sentences=4):
  """One contracts §2 record: sentences of 12-40 words, 1-3 salient spans of 1-3 words each."""
  sentences, spans, pieces, offset = [], [], [], 0
  for _ in range(num_sentences):
    sent = " ".join(rng.choice(words, rng.integers(12, 40))) + " ."
    start = offset
    sentences.append((start, start + len(sent)))
    toks = sent.split(" ")
    for _ in range(rng.integers(1, 3)):
      i = int(rng.integers(0, len(toks) - 4))
      w = int(rng.integers(1, 4))
      s = start + len(" ".join(toks[:i])) + (1 if i else 0)
      spans.append((s, s + len(" ".join(toks[i:i + w]))))
    pieces.append(sent)
    offset += len(sent) + 1
  text = " ".join(pieces)

  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

  feats = {
      "title": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"t"])),
      "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
      "sentence_byte_start": ints([s for s, _ in sentences]),
      "sentence_byte_limit": ints([e for _, e in sentences]),
      "span_byte_start": ints([s for s, _ in spans]),
      "span_byte_limit": ints([e for _, e in spans]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_pretrain_shards(directory, words, num_records, num_shards=4, seed=0):
  rng = np.random.default_rng(seed)
  tf.io.gfile.makedirs(directory)
  per = int(np.ceil(num_records / num_shards))
  for s in range(num_shards):
    path = os.path.join(directory, f"pretrain-{s:05d}-of-{num_shards:05d}")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
      for _ in range(min(per, num_records - s * per)):
        w.write(_pretrain_example(rng, words))
  return os.path.join(directory, "pretrain-*")


def synthetic_store(num_blocks, vocab_size, seed=1):
  """Blocks with the refresh benchmark's length mix (title 0-8, body 5-285 wordpieces)."""
  rng = np.random.default_rng(seed)
  titles, bodies = [], []
  for _ in range(num_blocks):
    titles.append(rng.integers(5, vocab_size, rng.integers(0, 9)).astype(np.int32))
    n = rng.integers(100, 286) if rng.random() < 0.6 else rng.integers(5, 100)
    bodies.append(rng.integers(5, vocab_size, n).astype(np.int32))
  return block_store_lib.BlockStore.from_arrays(titles, bodies)


def run(a):
  common.set_threads(a.intra_op)
  root = a.workdir or tempfile.mkdtemp(prefix="realm_input_bench_")
  vocab_file = os.path.join(root, "vocab.txt")
  words = write_vocab(vocab_file, a.vocab_size)
  pattern = write_pretrain_shards(os.path.join(root, "pretrain"), words, a.num_records)
  tokenizer = tokenization.RealmTokenizer(vocab_file)
  store = synthetic_store(a.num_blocks, a.vocab_size)
  emb = np.random.default_rng(2).standard_normal([a.num_blocks, a.projection]).astype(np.float32)
  index = index_lib.build_index(emb, a.index)
  embedder = embedder_lib.RealmEmbedder(pretrain_step.bert_config(a), projection_size=a.projection)
  holder = refresher.IndexHolder(refresher.IndexSnapshot(
      version=1, step=0, wall_time=time.time(), query_embedder=embedder, index=index))
  cfg = pretrain_pipeline.PretrainInputConfig(
      num_candidates=a.k, max_masks=a.max_masks, query_seq_len=a.query_len,
      candidate_seq_len=a.cand_len, joint_seq_len=a.joint_len,
      retrieval_batch_size=a.retrieval_batch_size, shuffle_buffer=100, repeat=True)
  stats = pipeline_stats.PipelineStats("bench")
  ds = pretrain_pipeline.build_pretrain_dataset(pattern, tokenizer, holder, store, a.batch, cfg,
                                                stats)
  it = iter(ds)
  for _ in range(a.warmup_batches):
    next(it)
  # Time spent embedding queries (the py_function's model call), measured by wrapping the graph
  # function the pipeline runs a Keras embedder as (`pretrain_pipeline._graph_fn`).
  embed_time = [0.0]
  graph_fn = pretrain_pipeline._graph_fn(embedder)  # pylint: disable=protected-access

  def timed_call(inputs, training=False):
    del training
    t0 = time.perf_counter()
    out = graph_fn(**inputs)
    embed_time[0] += time.perf_counter() - t0
    return out

  holder.swap(refresher.IndexSnapshot(version=2, step=0, wall_time=time.time(),
                                      query_embedder=timed_call, index=index))
  t = time.perf_counter()
  n = 0
  for _ in range(a.batches):
    n += int(next(it)["query_input_ids"].shape[0])
  dt = time.perf_counter() - t
  rate = n / dt
  rec = {"benchmark": "input_pipeline", "layers": a.layers, "hidden": a.hidden, "vocab": a.vocab_size,
         "batch": a.batch, "k": a.k, "query_len": a.query_len, "cand_len": a.cand_len,
         "joint_len": a.joint_len, "retrieval_batch_size": a.retrieval_batch_size,
         "num_blocks": a.num_blocks, "index": a.index, "examples": n, "seconds": dt,
         "examples_per_s": rate, "query_embed_share": embed_time[0] / dt,
         "records": stats.counts.get("records", 0), "skips": stats.skipped}
  if a.trainer_examples_per_s:
    rec["trainer_examples_per_s"] = a.trainer_examples_per_s
    rec["ratio_to_trainer"] = rate / a.trainer_examples_per_s
  return common.emit(rec)


def parser():
  ap = pretrain_step.parser()
  ap.description = __doc__
  ap.add_argument("--num_records", type=int, default=2000)
  ap.add_argument("--num_blocks", type=int, default=5000)
  ap.add_argument("--retrieval_batch_size", type=int, default=32)
  ap.add_argument("--index", choices=("brute_force", "scann"), default="brute_force")
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--warmup_batches", type=int, default=2)
  ap.add_argument("--trainer_examples_per_s", type=float, default=0.0)
  ap.add_argument("--workdir", default="")
  return ap


def main(argv=None):
  return run(parser().parse_args(argv))


if __name__ == "__main__":
  main()
