"""REALM pre-training pipeline on hand-made records: masking, null doc, trivial-retrieval removal,
shapes and skip counting."""
import collections
import os

import realm_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.data import pipeline_stats
from realm_tf2.data import pretrain_pipeline as pp
from realm_tf2.retrieval import block_store as bs
from realm_tf2.retrieval import index as index_lib

Snapshot = collections.namedtuple("Snapshot", "version step wall_time query_embedder index")


class FixedHolder:
  def __init__(self, snapshot):
    self.snapshot = snapshot

  def get(self):
    return self.snapshot


def _example(title, text, sentences, spans):
  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
  feats = {
      "title": tf.train.Feature(bytes_list=tf.train.BytesList(value=[title.encode()])),
      "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
      "sentence_byte_start": ints([s for s, _ in sentences]),
      "sentence_byte_limit": ints([e for _, e in sentences]),
      "span_byte_start": ints([s for s, _ in spans]),
      "span_byte_limit": ints([e for _, e in spans]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _span(text, sub):
  start = text.encode().index(sub.encode())
  return start, start + len(sub.encode())


S1 = "john was born in paris ."
S2 = "mary wrote a book in 1875 ."
DOC = S1 + " " + S2
SENTS = [(0, len(S1)), (len(S1) + 1, len(DOC))]


@pytest.fixture(scope="module")
def setup(tiny_vocab_file, tmp_path_factory):
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  long_sentence = " ".join(["the"] * 20) + " london ."
  records = [
      _example("john", DOC, SENTS, [_span(DOC, "paris")]),             # ok: 1 wordpiece masked
      _example("mary", DOC, SENTS, [_span(DOC, "1875")]),              # ok: "1875" is one piece
      _example("x", DOC, SENTS, []),                                   # no spans at all
      _example("x", DOC, SENTS, [(SENTS[0][1] - 3, SENTS[1][0] + 4)]),  # crosses a boundary
      _example("x", DOC, SENTS, [(4, 5)]),                              # a space: no token inside
      _example("x", long_sentence, [(0, len(long_sentence))], [_span(long_sentence, "london")]),
  ]
  d = tmp_path_factory.mktemp("pretrain")
  path = str(d / "pretrain-00000-of-00001")
  with tf.io.TFRecordWriter(path, options="GZIP") as w:
    for r in records:
      w.write(r)
  # Retrieval corpus: block 0 is the "john" record's own document (trivial retrieval).
  titles = ["john", "paris", "mary", "book"]
  # Block 2 is a chunk of the "mary" record's document (same title, the sentence in its body).
  bodies = [DOC, "paris is the capital .", S2, "the book was first ."]
  store = bs.BlockStore.from_arrays(tok.tokenize_np(titles), tok.tokenize_np(bodies),
                                    titles=titles, bodies=bodies)
  emb = np.array([[10., 0.], [5., 0.], [3., 0.], [1., 0.]], np.float32)
  index = index_lib.BruteForceIndex()
  index.build(emb)
  embedder = lambda feats: np.tile([[1., 0.]], [feats["input_ids"].shape[0], 1])  # noqa: E731
  holder = FixedHolder(Snapshot(3, 40, 0.0, embedder, index))
  return tok, path, store, holder


def _run(setup, **overrides):
  tok, path, store, holder = setup
  cfg = pp.PretrainInputConfig(num_candidates=3, max_masks=4, query_seq_len=16, candidate_seq_len=20,
                               joint_seq_len=32, retrieval_batch_size=4, deterministic=True,
                               repeat=False, shuffle_buffer=0, **overrides)
  stats = pipeline_stats.PipelineStats()
  ds = pp.build_pretrain_dataset(path, tok, holder, store, batch_size=1, cfg=cfg, stats=stats)
  return tok, store, list(ds.as_numpy_iterator()), stats


def test_masking_candidates_and_skips(setup):
  tok, store, batches, stats = _run(setup)
  assert len(batches) == 2
  first, second = batches[0], batches[1]
  vocab = tok.vocab
  # "john was born in paris ." -> paris is wordpiece 4 -> position 5 (after [CLS]).
  np.testing.assert_array_equal(first["mlm_positions"][0], [5, 0, 0, 0])
  np.testing.assert_array_equal(first["mlm_targets"][0], [vocab.index("paris"), 0, 0, 0])
  np.testing.assert_array_equal(first["mlm_mask"][0], [1, 0, 0, 0])
  q = first["query_input_ids"][0]
  expected_q = [tok.cls_id] + [vocab.index(w) for w in "john was born in".split()] + [
      tok.mask_id, vocab.index("."), tok.sep_id]
  np.testing.assert_array_equal(q[:8], expected_q)
  assert q[8:].sum() == 0 and first["query_input_mask"][0].sum() == 8
  # "mary wrote a book in 1875 ." -> 1875 at wordpiece 5 -> position 6.
  np.testing.assert_array_equal(second["mlm_positions"][0], [6, 0, 0, 0])
  np.testing.assert_array_equal(second["mlm_targets"][0], [vocab.index("1875"), 0, 0, 0])

  # Candidates: null doc first, then top-3 minus the record's own document (row 0).
  np.testing.assert_array_equal(first["retrieved_block_ids"][0], [-1, 1, 2])
  null = first["candidate_input_ids"][0, 0]
  np.testing.assert_array_equal(null[:3], [tok.cls_id, tok.sep_id, tok.sep_id])
  assert null[3:].sum() == 0
  np.testing.assert_array_equal(first["candidate_segment_ids"][0, 0, :3], [0, 0, 1])
  # The "mary" record has no block uid, but row 2 has its title and its sentence: its source, a
  # trivial retrieval by content. Row 0 states the sentence under another title: a real candidate.
  np.testing.assert_array_equal(second["retrieved_block_ids"][0], [-1, 0, 1])
  # Candidate 1 = [CLS] title [SEP] body [SEP] of row 1; joint = [CLS] q [SEP] body [SEP], no title.
  cand = first["candidate_input_ids"][0, 1]
  t, b = store.title(1), store.body(1)
  np.testing.assert_array_equal(cand[:len(t) + len(b) + 3],
                                np.concatenate([[tok.cls_id], t, [tok.sep_id], b, [tok.sep_id]]))
  joint = first["joint_input_ids"][0, 1]
  q_tokens = q[1:7]
  np.testing.assert_array_equal(joint[:len(q_tokens) + len(b) + 3], np.concatenate(
      [[tok.cls_id], q_tokens, [tok.sep_id], b, [tok.sep_id]]))
  np.testing.assert_array_equal(first["joint_input_ids"][0, 0, :9],
                                np.concatenate([[tok.cls_id], q_tokens, [tok.sep_id, tok.sep_id]]))
  # The mlm position points at [MASK] in the joint input too.
  assert joint[first["mlm_positions"][0, 0]] == tok.mask_id
  # Shapes and version bookkeeping.
  assert first["candidate_input_ids"].shape == (1, 3, 20)
  assert first["joint_input_ids"].shape == (1, 3, 32)
  assert first["index_version"][0] == 3 and first["index_step"][0] == 40
  # Skip accounting: nothing silently lost.
  assert stats.skipped == {"no_valid_spans": 2, "no_masked_token": 1, "mask_out_of_range": 1}
  counts = stats.counts
  assert counts["records"] == 6 and counts["examples"] == 2
  assert counts["trivial_retrievals_removed"] == 2
  assert counts["trivial_retrievals_removed_by_content"] == 1
  metrics = stats.as_metrics()
  assert metrics["skipped_total"] == 4 and metrics["max_index_wait_ms"] >= 0


def test_max_masks_truncation_and_determinism(setup, tmp_path):
  tok, _, store, holder = setup
  text = "the king and the queen of london ."
  span = _span(text, "the king and the queen of london")
  path = str(tmp_path / "p-00000-of-00001")
  with tf.io.TFRecordWriter(path, options="GZIP") as w:
    w.write(_example("t", text, [(0, len(text))], [span]))
  cfg = pp.PretrainInputConfig(num_candidates=2, max_masks=4, query_seq_len=16, candidate_seq_len=20,
                               joint_seq_len=32, retrieval_batch_size=4, deterministic=True,
                               repeat=False, shuffle_buffer=0)
  stats = pipeline_stats.PipelineStats()
  ex = next(iter(pp.build_pretrain_dataset(path, tok, holder, store, 1, cfg, stats)))
  # 7 masked wordpieces, only the first 4 predicted; all 7 are [MASK] in the input.
  np.testing.assert_array_equal(ex["mlm_positions"][0].numpy(), [1, 2, 3, 4])
  assert int(np.sum(ex["query_input_ids"][0].numpy() == tok.mask_id)) == 7


def test_split_and_shard_files():
  files = [f"f{i}" for i in range(6)]
  assert pp.split_shards(files, 2, is_training=False) == ["f0", "f1"]
  assert pp.split_shards(files, 2, is_training=True) == ["f2", "f3", "f4", "f5"]
  with pytest.raises(ValueError, match="no shard left"):
    pp.split_shards(files[:2], 2, True)
  ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
  assert pp.shard_files(files, ctx) == (["f1", "f3", "f5"], None)
  assert pp.shard_files(files[:1], ctx) == (["f0"], (2, 1))


def test_doc_uid_matches_block_store():
  assert pp._doc_uid(b"john", DOC.encode()) == io_utils.sha1_uid63("john", DOC)



_CONCURRENT_EMBED = r"""
import sys, threading, time
import numpy as np
import tensorflow as tf
import tf_keras
from realm_tf2 import configs
from realm_tf2.data import pretrain_pipeline as pp
from realm_tf2.modeling import embedder as embedder_lib


class DenseLayerNorm(tf_keras.Model):
  # Dense + LayerNorm with epsilon >= 1.001e-5, so Keras uses the fused (oneDNN) kernel: the op that
  # corrupts the heap when run eagerly by several threads. Cheap, so the threads collide often.
  def __init__(self):
    super().__init__()
    self.dense = tf_keras.layers.Dense(16)
    self.layer_norm = tf_keras.layers.LayerNormalization(epsilon=1e-3)

  def call(self, inputs, training=None):
    x = tf.cast(inputs["input_ids"] * inputs["input_mask"] + inputs["segment_ids"], tf.float32)
    return self.layer_norm(self.dense(x))


cfg = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)
models = [DenseLayerNorm(), embedder_lib.RealmEmbedder(cfg, projection_size=16, layer_norm_epsilon=1e-3)]
rng = np.random.default_rng(0)
batches = []
for n in range(1, 9):  # changing batch sizes, as the retrieval stage sees after skips
  ids = rng.integers(5, 100, size=(n, 12)).astype(np.int32)
  batches.append({"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids)})
for model in models:
  expected = [pp._embed_queries(model, b) for b in batches]
  stop, errors, calls = time.time() + float(sys.argv[1]), [], [0]
  def work(offset):
    i = offset
    while time.time() < stop:
      got = pp._embed_queries(model, batches[i % len(batches)])
      if got.shape != expected[i % len(batches)].shape or not np.allclose(
          got, expected[i % len(batches)], atol=1e-5):
        errors.append(i)
      i += 1
      calls[0] += 1
  threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
  [t.start() for t in threads]
  [t.join() for t in threads]
  print("calls", calls[0], "mismatches", len(errors))
"""


def test_embed_queries_is_thread_safe():
  """3 threads embed queries of changing batch sizes with one Keras embedder (as the retrieval
  stage's 2 parallel `py_function` calls and the validation input do), for 3 s each with a
  Dense+LayerNorm model and a tiny `RealmEmbedder`. With eager calls the first model aborts the
  process within seconds (heap corruption; see `_embed_queries` and docs/history.md). Run in a
  subprocess, so a crash fails only this test.
  """
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-c", _CONCURRENT_EMBED, "3"], cwd=repo, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
  assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2, proc.stdout
  for line in lines:
    _, calls, _, mismatches = line.split()
    assert int(calls) > 100 and int(mismatches) == 0, proc.stdout


def test_sentence_in_block_with_wildcards():
  body = np.array([5, 6, 7, 8, 9, 10])
  assert pp.sentence_in_block(body, np.array([7, 8, 9]), np.array([True, True, True]))
  assert not pp.sentence_in_block(body, np.array([7, 9]), np.array([True, True]))
  # An unknown (masked past max_masks) position matches anything.
  assert pp.sentence_in_block(body, np.array([7, 0, 9]), np.array([True, False, True]))
  assert not pp.sentence_in_block(body, np.arange(10), np.ones(10, bool))  # longer than the block
  assert not pp.sentence_in_block(body, np.array([], int), np.array([], bool))
