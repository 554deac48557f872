r"""MIPS benchmark: brute force vs ScaNN on clustered synthetic data (one JSON object a line).

For each N in --sizes: build seconds, queries/s and recall@k (vs exact brute force) of
  * brute_force (exact TF matmul + chunked top-k, float32), optionally bf16 scoring + exact rescore,
  * scann (settings from `scann_settings_for(N)`), swept over search-time (leaves, reorder) pairs.
Data: `num_clusters` Gaussian centres (N(0,1)), points = centre + noise*N(0,1), dot product, not
normalised (like REALM). Queries: perturbed database points (a fresh draw).

  python benchmarks/mips.py --sizes=100000,1000000
"""
import realm_tf2  # noqa: F401

import json
import time

from absl import app
from absl import flags
import numpy as np

from realm_tf2.retrieval import index as index_lib

flags.DEFINE_list("sizes", ["100000", "1000000"], "Numbers of rows N.")
flags.DEFINE_integer("dim", 128, "Embedding width.")
flags.DEFINE_integer("num_queries", 1000, "Queries per measurement.")
flags.DEFINE_integer("k", 8, "Neighbours.")
flags.DEFINE_float("noise", 0.5, "Within-cluster noise scale.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("bf16", True, "Also time the bfloat16 brute-force path.")
flags.DEFINE_list("sweep", ["20:100", "30:150", "50:150", "50:250", "100:250"],
                  "ScaNN search-time leaves:reorder pairs (tree indexes only).")
FLAGS = flags.FLAGS


def clustered(n, d, num_queries, noise, seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(max(16, n // 1000), d)).astype(np.float32)
  emb = centers[rng.integers(0, len(centers), n)]
  emb += noise * rng.normal(size=(n, d)).astype(np.float32)
  q = emb[rng.integers(0, n, num_queries)] + noise * rng.normal(size=(num_queries, d)).astype(np.float32)
  return emb.astype(np.float32), q.astype(np.float32)


def recall(ids, exact):
  return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)]))


def timed_search(index, q, k, repeats=2):
  index.search(q[:16], k)  # warm-up (trace / one-time init)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    ids, _ = index.search(q, k)
    best = min(best, time.perf_counter() - t)
  return ids, len(q) / best


def emit(**kw):
  print(json.dumps(kw), flush=True)


def main(argv):
  del argv
  k = FLAGS.k
  for n in (int(s) for s in FLAGS.sizes):
    emb, q = clustered(n, FLAGS.dim, FLAGS.num_queries, FLAGS.noise, FLAGS.seed)
    t = time.perf_counter()
    bf = index_lib.BruteForceIndex(rows_per_chunk=131072, query_batch_size=250).build(emb)
    build = time.perf_counter() - t
    exact, bf_qps = timed_search(bf, q, k, repeats=1)
    emit(n=n, method="brute_force", build_secs=round(build, 2), qps=round(bf_qps, 1),
         recall_at_k=1.0, k=k)
    if FLAGS.bf16:
      t = time.perf_counter()
      bf16 = index_lib.BruteForceIndex(rows_per_chunk=131072, query_batch_size=250,
                                       use_bfloat16=True).build(emb)
      build = time.perf_counter() - t
      ids, qps = timed_search(bf16, q, k, repeats=1)
      emit(n=n, method="brute_force_bf16", build_secs=round(build, 2), qps=round(qps, 1),
           recall_at_k=round(recall(ids, exact), 4), k=k)
      del bf16
    del bf
    t = time.perf_counter()
    sc = index_lib.ScannIndex().build(emb)
    build = time.perf_counter() - t
    default = dict(sc.settings)
    ids, qps = timed_search(sc, q, k)
    emit(n=n, method="scann", build_secs=round(build, 2), qps=round(qps, 1),
         recall_at_k=round(recall(ids, exact), 4), k=k, speedup_vs_brute_force=round(qps / bf_qps, 1),
         settings=default)
    if default["num_leaves"]:
      for pair in FLAGS.sweep:
        leaves, reorder = (int(x) for x in pair.split(":"))
        sc.set_search_params(num_leaves_to_search=leaves, reorder=reorder)
        ids, qps = timed_search(sc, q, k)
        emit(n=n, method="scann", qps=round(qps, 1), recall_at_k=round(recall(ids, exact), 4), k=k,
             speedup_vs_brute_force=round(qps / bf_qps, 1),
             settings=dict(sc.settings))
      sc.set_search_params(default["num_leaves_to_search"], default["reorder"])


if __name__ == "__main__":
  app.run(main)
