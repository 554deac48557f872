r"""Index-refresh benchmark: corpus embedding throughput (blocks/s) and index build seconds.

Synthetic corpus of --num_blocks blocks with a realistic length mix (title 0-8, body mostly 100-285
wordpieces, some short), embedded by a randomly initialised `RealmEmbedder` of the tiny and small size
(configs/sizes), with and without length bucketing; then the brute-force and ScaNN index builds over
the resulting block_emb. One JSON object a line.

  python benchmarks/refresh.py [--sizes=tiny,small] [--num_blocks=2000]
"""
import realm_tf2  # noqa: F401

import json
import time

from absl import app
from absl import flags
import numpy as np

from realm_tf2 import configs
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a script: importing this module (e.g. `synthetic_store` from
  scaling_budget) must not claim flag names such as --xla that realm_tf2.training.flags defines."""
  flags.DEFINE_list("sizes", ["tiny", "small"], "Model sizes (configs/sizes/<name>.yaml shapes).")
  flags.DEFINE_integer("num_blocks", 2000, "Blocks to embed.")
  flags.DEFINE_integer("batch_size", 64, "Embedding batch size.")
  flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size.")
  flags.DEFINE_bool("xla", True, "One XLA program per bucket (embed_blocks xla=).")
  flags.DEFINE_integer("index_rows", 100000, "Rows for the index-build timing (block_emb tiled).")

SIZES = {  # configs/sizes/{tiny,small}.yaml
    "tiny": dict(hidden_size=32, num_layers=2, num_attention_heads=2, intermediate_size=37,
                 projection=16),
    "small": dict(hidden_size=256, num_layers=4, num_attention_heads=4, intermediate_size=1024,
                  projection=128),
}


def synthetic_store(n, vocab, seed=0):
  rng = np.random.default_rng(seed)
  titles, bodies = [], []
  for _ in range(n):
    titles.append(rng.integers(5, vocab, rng.integers(0, 9)))
    body_len = rng.integers(100, 286) if rng.random() < 0.6 else rng.integers(5, 100)
    bodies.append(rng.integers(5, vocab, body_len))
  return block_store_lib.BlockStore.from_arrays(titles, bodies)


def main(argv):
  del argv
  store = synthetic_store(FLAGS.num_blocks, FLAGS.vocab_size)
  print(json.dumps({"corpus_blocks": store.num_blocks, "block_store_bytes": store.nbytes,
                    "mean_packed_len": float(embed_corpus.packed_lengths(store).mean())}), flush=True)
  emb = None
  for size in FLAGS.sizes:
    s = SIZES[size]
    bert = configs.BertConfig(vocab_size=FLAGS.vocab_size, hidden_size=s["hidden_size"],
                              num_layers=s["num_layers"], num_attention_heads=s["num_attention_heads"],
                              intermediate_size=s["intermediate_size"])
    embedder = embedder_lib.RealmEmbedder(bert, projection_size=s["projection"])
    for buckets_arg in (embed_corpus.AUTO_BUCKETS, embed_corpus.DEFAULT_BUCKETS, (288,)):
      # Warm-up pass over the whole corpus, so every bucket's step is traced (and compiled) before
      # the timed pass; "auto" resolves to the same buckets in both passes.
      embed_corpus.embed_blocks(store, embedder, 2, 3, batch_size=FLAGS.batch_size,
                                buckets=buckets_arg, xla=FLAGS.xla)
      stats = {}
      emb = embed_corpus.embed_blocks(store, embedder, 2, 3, batch_size=FLAGS.batch_size,
                                      buckets=buckets_arg, stats=stats, xla=FLAGS.xla)
      print(json.dumps({"stage": "embed", "size": size, "buckets_arg": list(buckets_arg)
                        if not isinstance(buckets_arg, str) else buckets_arg,
                        "buckets": stats["bucket_lengths"],
                        "padded_per_real_token": round(stats["padded_tokens"] / stats["real_tokens"], 3),
                        "blocks": stats["blocks"], "seconds": round(stats["seconds"], 2),
                        "blocks_per_sec": round(stats["blocks_per_sec"], 1),
                        "steady_blocks_per_sec": round(stats["steady_blocks_per_sec"] or 0, 1),
                        "first_batch_seconds": round(stats["first_batch_seconds"], 2),
                        "batch_size": FLAGS.batch_size}), flush=True)
  rows = np.tile(emb, (int(np.ceil(FLAGS.index_rows / len(emb))), 1))[:FLAGS.index_rows]
  rows = rows + 0.01 * np.random.default_rng(1).normal(size=rows.shape).astype(np.float32)
  for kind in ("brute_force", "scann"):
    t = time.perf_counter()
    index_lib.build_index(rows, kind)
    print(json.dumps({"stage": "index_build", "kind": kind, "rows": len(rows), "dim": rows.shape[1],
                      "seconds": round(time.perf_counter() - t, 2)}), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
