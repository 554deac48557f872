r"""Budget of the paper's setting (13.35M blocks, BERT-base, batch 512, k=8, 64 TPU cores) from per-unit
costs measured on this machine and scaled analytically.

  python benchmarks/scaling_budget.py [--measure_rows=50000] [--tpu_mfu=0.4] [--hosts=8] \
      [--host_cores=96] [--cpu_efficiency=<from pretrain_step>] > budget.jsonl

Measured here (each printed with its unit cost):
  * BlockStore bytes per wordpiece and per block (synthetic store of `--measure_blocks` blocks);
  * ScaNN index bytes per row and search seconds per query per row (`--measure_rows` rows, the
    settings `scann_settings_for` picks for 13.35M rows: tree + AH + reorder), brute force too;
  * host packing seconds per example (`RetrievalFeaturizer` with a free embedder: candidate+joint
    packing with the NumPy packers, null doc, uid filter);
  * the CPU's fp32 matmul rate per core and the embedder-forward efficiency on it (small RealmEmbedder
    over [32,96] queries, tf.function), used for host-side query embedding at BERT-base.
  * host core-seconds per example of the input pipeline's graph stage (read, parse, pick a span,
    tokenize, mask, batch: `pretrain_pipeline.build_device_pretrain_dataset`, process CPU time over
    synthetic shards), which both modes pay; in `task.retrieval=device` it is all the host does.
Assumed (flags, stated in the output): TPU v3 peak 61.5 bf16 TFLOP/s per core (123 per chip, 2 cores),
model-FLOP utilisation `--tpu_mfu`, 8 hosts x 96 vCPUs for 64 cores, mean block length; device mode:
16 GiB HBM per core, the dense title/body widths of the `DeviceBlockStore`, the utilisation of the
in-step search `--mips_utilisation`.
FLOP counts are analytic (benchmarks/common.py). One JSON line per quantity, then a summary line per
mode (`summary` = host retrieval, `summary_device` = device retrieval).
"""
import argparse
import math
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import realm_tf2  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from realm_tf2 import configs  # noqa: E402
from realm_tf2 import tokenization  # noqa: E402
from realm_tf2.data import pipeline_stats  # noqa: E402
from realm_tf2.data import pretrain_pipeline  # noqa: E402
from realm_tf2.modeling import embedder as embedder_lib  # noqa: E402
from realm_tf2.retrieval import block_store as block_store_lib  # noqa: E402
from realm_tf2.retrieval import embed_corpus  # noqa: E402
from realm_tf2.retrieval import index as index_lib  # noqa: E402

BASE = dict(hidden=768, layers=12, intermediate=3072, vocab=30522, projection=128)
GIB = 2.0 ** 30


def _dir_bytes(path):
  total = 0
  for root, _, files in tf.io.gfile.walk(path):
    for f in files:
      total += tf.io.gfile.stat(os.path.join(root, f)).length
  return total


def measure_block_store(n, mean_tokens, vocab=30522, seed=0):
  rng = np.random.default_rng(seed)
  titles = [rng.integers(5, vocab, 4).astype(np.int32) for _ in range(n)]
  bodies = [rng.integers(5, vocab, mean_tokens - 4).astype(np.int32) for _ in range(n)]
  store = block_store_lib.BlockStore.from_arrays(titles, bodies)
  return {"bytes_per_block": store.nbytes / n, "bytes_per_token": store.nbytes / (n * mean_tokens)}


def measure_index(rows, dim, target_rows, queries=64, k=8, seed=0):
  """Bytes/row and search s/query/row of ScaNN (settings for `target_rows`) and brute force."""
  rng = np.random.default_rng(seed)
  # Clustered rows (like real embeddings) so the tree/AH behave as on real data.
  centers = rng.standard_normal([64, dim]).astype(np.float32)
  emb = (centers[rng.integers(0, 64, rows)] + 0.3 * rng.standard_normal([rows, dim])).astype(np.float32)
  q = emb[rng.integers(0, rows, queries)] + 0.1 * rng.standard_normal([queries, dim]).astype(np.float32)
  out = {}
  settings = index_lib.scann_settings_for(target_rows)
  leaves = int(round(np.sqrt(rows)))
  # Same algorithm as at 13.35M (tree + AH + reorder), tree scaled to this many rows.
  settings.update(num_leaves=leaves, num_leaves_to_search=max(4, int(np.ceil(leaves * 0.05))),
                  training_sample_size=min(rows, 250000))
  for kind, kwargs in (("scann", {"settings": settings}), ("brute_force", {})):
    t = time.perf_counter()
    idx = index_lib.build_index(emb, kind, **kwargs)
    build_s = time.perf_counter() - t
    idx.search(q[:8], k)
    t = time.perf_counter()
    for _ in range(3):
      idx.search(q, k)
    search_s = (time.perf_counter() - t) / (3 * queries)
    d = tempfile.mkdtemp()
    idx.save(os.path.join(d, "idx"))
    size = _dir_bytes(os.path.join(d, "idx"))
    out[kind] = {"build_s_per_row": build_s / rows, "search_s_per_query": search_s,
                 "bytes_per_row": size / rows, "rows": rows}
  return out


def measure_packing(num_blocks=20000, n_queries=64, k=8, seed=0):
  """Host seconds per example of `RetrievalFeaturizer` minus its MIPS search (free embedder)."""
  rng = np.random.default_rng(seed)
  store = block_store_lib.BlockStore.from_arrays(
      [rng.integers(5, 30000, 4).astype(np.int32) for _ in range(num_blocks)],
      [rng.integers(5, 30000, 250).astype(np.int32) for _ in range(num_blocks)])
  index = index_lib.BruteForceIndex()
  index.build(rng.standard_normal([num_blocks, 16]).astype(np.float32))
  qv = rng.standard_normal([n_queries, 16]).astype(np.float32)

  class Snap:
    version, step, wall_time, index = 1, 0, 0.0, None

  snap = Snap()
  snap.index = index
  snap.query_embedder = lambda f: qv[:f["input_ids"].shape[0]]

  class Holder:
    def get(self):
      return snap

  cfg = pretrain_pipeline.PretrainInputConfig(num_candidates=k)
  feat = pretrain_pipeline.RetrievalFeaturizer(Holder(), store, (2, 3), cfg,
                                               pipeline_stats.PipelineStats("budget"))
  q = np.zeros([n_queries, cfg.query_seq_len], np.int32)
  q[:, :40] = rng.integers(5, 30000, [n_queries, 40])
  qm = (q > 0).astype(np.int32)
  batch = {"skip_code": np.zeros(n_queries, np.int32), "title": np.array([b"t%d" % i for i in range(n_queries)]),
           "text": np.array([b"x"] * n_queries), "query_input_ids": q, "query_input_mask": qm,
           "query_segment_ids": np.zeros_like(q),
           "mlm_positions": np.tile(np.arange(1, 11, dtype=np.int32), [n_queries, 1]),
           "mlm_targets": np.ones([n_queries, 10], np.int32), "mlm_mask": np.ones([n_queries, 10], np.int32)}
  feat(batch)
  t = time.perf_counter()
  for _ in range(3):
    feat(batch)
  total = (time.perf_counter() - t) / (3 * n_queries)
  t = time.perf_counter()
  for _ in range(3):
    index.search(qv, k)
  search = (time.perf_counter() - t) / (3 * n_queries)
  return {"pack_s_per_example": max(total - search, 0.0)}


def measure_graph_stage(num_records=2000, batches=20, batch=64, vocab_size=30522, seed=0):
  """Host core-seconds per example of the pipeline's graph stage (the device-mode pipeline:
  read, parse, pick a span, tokenize, mask, batch), from the process CPU time while iterating it
  over synthetic contracts §2 shards (`benchmarks/input_pipeline.py`: 4 sentences of 12-40
  words)."""
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix="realm_budget_")
  vocab_file = os.path.join(root, "vocab.txt")
  words = input_pipeline.write_vocab(vocab_file, vocab_size)
  pattern = input_pipeline.write_pretrain_shards(os.path.join(root, "pretrain"), words, num_records,
                                                 seed=seed)
  cfg = pretrain_pipeline.PretrainInputConfig(shuffle_buffer=100, repeat=True)
  ds = pretrain_pipeline.build_device_pretrain_dataset(
      pattern, tokenization.RealmTokenizer(vocab_file), batch, cfg)
  it = iter(ds)
  next(it)  # warm-up: tracing, file opening

  def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

  cpu0, t0 = cpu_seconds(), time.perf_counter()
  n = sum(int(next(it)["query_input_ids"].shape[0]) for _ in range(batches))
  cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - t0
  return {"core_s_per_example": cpu / n, "examples_per_s": n / wall, "examples": n}


def embedder_params(hidden, layers, intermediate, vocab, projection, positions=512, types=2):
  """Weights of a RealmEmbedder: BERT (embeddings, layers, pooler) + projection + LayerNorm."""
  embeddings = (vocab + positions + types) * hidden + 2 * hidden
  layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * intermediate + intermediate + 5 * hidden
  return embeddings + layers * layer + hidden * hidden + hidden + hidden * projection + 3 * projection


def device_budget(a, step_flops, step_s, tpu_rate, graph_core_s):
  """Paper-setting budget of `task.retrieval=device` (analytic sizes of the `DeviceBlockStore`).

  Returns the JSON records: HBM per core, retrieval FLOPs and time per step, host cores, summary.
  """
  n, cores, d = a.num_blocks, a.train_cores, BASE["projection"]
  shard = math.ceil(n / cores)
  chunk = min(a.device_rows_per_chunk or shard, shard)
  emb_bytes = {"float32": shard * d * 4, "bfloat16": shard * d * 2}
  # title_ids [S, Lt] + body_ids [S, Lb] + title_len, body_len, uids [S], int32.
  token_bytes = shard * (a.device_title_width + a.device_body_width + 3) * 4
  # Per step: the [R*b, chunk] float32 score block of the running top-k, and the all-reduced token
  # rows of the kept candidates [R*b, K-1, Lt+Lb+2] int32.
  scores_bytes = a.batch * chunk * 4
  payload_bytes = a.batch * (a.k - 1) * (a.device_title_width + a.device_body_width + 2) * 4
  # pick_with=snapshot: a float32 copy of the query tower on every core.
  tower_bytes = 4 * embedder_params(BASE["hidden"], BASE["layers"], BASE["intermediate"],
                                    BASE["vocab"], d) if a.pick_with == "snapshot" else 0
  hbm = emb_bytes["bfloat16"] + token_bytes + scores_bytes + payload_bytes + tower_bytes
  out = [dict(quantity="device_hbm_per_core", rows_per_core=shard, rows_per_chunk=chunk,
              block_emb_gib_bfloat16=emb_bytes["bfloat16"] / GIB,
              block_emb_gib_float32=emb_bytes["float32"] / GIB, token_gib=token_bytes / GIB,
              title_width=a.device_title_width, body_width=a.device_body_width,
              step_scores_gib=scores_bytes / GIB, step_payload_gib=payload_bytes / GIB,
              pick_with=a.pick_with, pick_tower_gib=tower_bytes / GIB, total_gib=hbm / GIB, hbm_per_core_gib=a.hbm_per_core_gib,
              share_of_hbm=hbm / GIB / a.hbm_per_core_gib)]
  embed = common.embedder_forward_flops(a.batch, 96, BASE["hidden"], BASE["layers"],
                                        BASE["intermediate"], d, cls_only=True)
  search = 2.0 * a.batch * n * d  # every query against every row, summed over the shards
  retrieval_s = (embed / (cores * tpu_rate) +
                 search / (cores * a.tpu_core_tflops * 1e12 * a.mips_utilisation))
  out.append(dict(quantity="device_retrieval_per_step", query_embed_tflop=embed / 1e12,
                  search_tflop=search / 1e12, step_tflop=step_flops / 1e12,
                  retrieval_share_of_step_flops=(embed + search) / step_flops,
                  mips_utilisation=a.mips_utilisation, seconds=retrieval_s,
                  step_s_without=step_s, step_s_with=step_s + retrieval_s,
                  all_reduce_mib_per_step=payload_bytes / 2**20,
                  note="search FLOPs do not shrink with more cores per query: each core scores the "
                       "global batch against its shard"))
  per_host = a.batch / a.hosts
  core_s = per_host * graph_core_s
  out.append(dict(quantity="device_input_per_host_per_step", examples=per_host,
                  graph_stage_core_s=core_s, step_s=step_s + retrieval_s,
                  cores_needed=core_s / (step_s + retrieval_s), host_cores=a.host_cores))
  bottlenecks = []
  if hbm / GIB > a.hbm_per_core_gib:
    bottlenecks.append(f"HBM: {hbm / GIB:.1f} GiB per core > {a.hbm_per_core_gib}")
  bottlenecks.append(f"in-step retrieval: +{retrieval_s / step_s:.1%} step time (search "
                     f"{search / step_flops:.2%}, query embedding {embed / step_flops:.2%} of the "
                     "step's FLOPs)")
  out.append(dict(quantity="summary_device", blocks=n, batch=a.batch, k=a.k, train_cores=cores,
                  hbm_per_core_gib=hbm / GIB, step_s=step_s + retrieval_s,
                  retrieval_share_of_step_time=retrieval_s / (step_s + retrieval_s),
                  input_cores_per_host=core_s / (step_s + retrieval_s),
                  refresh="as host mode (same corpus re-embedding); the new block_emb is assigned "
                          "to the shards between steps",
                  bottlenecks=bottlenecks))
  return out


def measure_cpu_embed(peak_per_core_gflops):
  """Efficiency of a compiled embedder forward (4L/256, [32,96]) vs the matmul rate."""
  bert = configs.BertConfig(vocab_size=30522, hidden_size=256, num_layers=4, num_attention_heads=4,
                            intermediate_size=1024)
  emb = embedder_lib.RealmEmbedder(bert, projection_size=128)
  feats = {"input_ids": tf.ones([32, 96], tf.int32), "input_mask": tf.ones([32, 96], tf.int32),
           "segment_ids": tf.zeros([32, 96], tf.int32)}
  fn = tf.function(lambda f: emb(f, training=False), jit_compile=True)
  fn(feats).numpy()
  times = common.time_calls(lambda: fn(feats), 3, sync=lambda x: x.numpy())
  flops = common.embedder_forward_flops(32, 96, 256, 4, 1024, 128)
  cores = os.cpu_count() or 1
  rate = flops / min(times) / 1e9
  return {"embed_gflops": rate, "efficiency": rate / (peak_per_core_gflops * cores)}


def measure_refresh(num_blocks=512, layers=4, hidden=256, heads=4, vocab=30522, batch_size=64,
                    buckets=None, tracker=None, bucket_penalty_tokens=None, precision="float32",
                    xla=True, cpu_accel="auto"):
  """Corpus-embedding rate and efficiency, FLOPs counted over REAL tokens only.

  Synthetic corpus with the refresh benchmark's length mix (`benchmarks/refresh.py`), embedded by
  `embed_corpus.embed_blocks` (length-bucketed by default) with a RealmEmbedder of the given size.
  Returns blocks/s, real-token GFLOP/s (issue count: every layer over the real tokens; required
  count: last layer on [CLS] only, which is what the embedder computes) and both efficiencies
  against the matmul rate of the run's precision (`common.peak_dtype`) sampled right before and after.
  precision="bfloat16" builds the embedder under the `mixed_bfloat16` policy (as a trainer run with
  `--mixed_precision=bfloat16` builds its refresh snapshots); xla=False embeds with plain TF ops
  (oneDNN), which on CPUs with AMX runs bf16 matmuls far faster than XLA:CPU does; `cpu_accel` is
  `embed_blocks`' mode of `realm_tf2.accel` for that non-XLA step.
  """
  from benchmarks import refresh as refresh_bench  # pylint: disable=g-import-not-at-top
  store = refresh_bench.synthetic_store(num_blocks, vocab)
  bert = configs.BertConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * hidden)
  with common.precision_scope(precision):
    emb = embedder_lib.RealmEmbedder(bert, projection_size=128)
  buckets = buckets or embed_corpus.AUTO_BUCKETS
  compile_stats = {}
  kw = dict(batch_size=batch_size, buckets=buckets, xla=xla,
            bucket_penalty_tokens=bucket_penalty_tokens, cpu_accel=cpu_accel)
  embed_corpus.embed_blocks(store, emb, 2, 3, stats=compile_stats, **kw)  # trace + compile each bucket
  lengths = embed_corpus.packed_lengths(store)
  issue = sum(common.embedder_forward_flops(1, int(l), hidden, layers, 4 * hidden, 128)
              for l in lengths)
  required = sum(common.embedder_forward_flops(1, int(l), hidden, layers, 4 * hidden, 128,
                                               cls_only=True) for l in lengths)
  tracker = tracker or common.PeakTracker((512, 1024), repeats=3,
                                          dtype=common.peak_dtype(precision))
  before = tracker.sample()
  stats = {}
  embed_corpus.embed_blocks(store, emb, 2, 3, stats=stats, **kw)
  after = tracker.sample()
  peak = 0.5 * (before + after)
  rate = issue / stats["seconds"] / 1e9
  return {"blocks": num_blocks, "precision": precision, "xla": xla, "cpu_accel": cpu_accel,
          "buckets_arg": buckets if isinstance(buckets, str) else list(buckets),
          "bucket_penalty_tokens": bucket_penalty_tokens,
          "buckets": stats["bucket_lengths"],
          "padded_per_real_token": stats["padded_tokens"] / stats["real_tokens"],
          # First pass (trace + one XLA compile per bucket) minus a steady pass: what each refresh
          # with a new snapshot embedder pays on top.
          "compile_overhead_seconds": compile_stats["seconds"] - stats["seconds"],
          "first_pass_seconds": compile_stats["seconds"], "steady_pass_seconds": stats["seconds"],
          "mean_real_len": float(lengths.mean()),
          "blocks_per_sec": stats["blocks_per_sec"], "real_token_gflops": rate,
          "peak_gflops_paired": peak, "efficiency_real_tokens": rate / peak,
          "required_efficiency_real_tokens": rate * required / issue / peak}


def run(a):
  rec = lambda **kw: common.emit(kw)  # noqa: E731
  n = a.num_blocks
  peak = common.measure_peak((512, 1024), repeats=3)["peak_gflops"]
  cores = os.cpu_count() or 1
  per_core = peak / cores
  rec(quantity="cpu_matmul_peak", gflops=peak, cores=cores, gflops_per_core=per_core)
  bf16_peak = common.measure_peak((512, 1024), repeats=3, dtype=tf.bfloat16)["peak_gflops"]
  rec(quantity="cpu_matmul_peak_bfloat16", gflops=bf16_peak, cores=cores,
      note="the rate bf16 runs (refresh_embed_measured with precision bfloat16) are held against")
  if a.refresh_blocks:
    # "auto" as embed_blocks picks it for this corpus size (the per-bucket compile penalty keeps a
    # small corpus to few buckets), "auto" without the penalty (what a large corpus gets: up to 8),
    # the fixed 64/128/192/288, and no bucketing.
    for buckets, penalty in ((embed_corpus.AUTO_BUCKETS, None), (embed_corpus.AUTO_BUCKETS, 0),
                             (embed_corpus.DEFAULT_BUCKETS, None), ((288,), None)):
      rec(quantity="refresh_embed_measured", size="4L/256", **measure_refresh(
          a.refresh_blocks, batch_size=a.refresh_batch, buckets=buckets,
          bucket_penalty_tokens=penalty))

  # --- memory per host ---------------------------------------------------------------------------
  bs = measure_block_store(a.measure_blocks, a.mean_block_tokens)
  store_gib = bs["bytes_per_block"] * n / GIB
  rec(quantity="block_store", measured_bytes_per_block=bs["bytes_per_block"],
      mean_block_tokens=a.mean_block_tokens, blocks=n, gib=store_gib)
  emb_gib = n * BASE["projection"] * 4 / GIB
  rec(quantity="block_emb", dtype="float32", gib=emb_gib, gib_bfloat16=emb_gib / 2)
  idx = measure_index(a.measure_rows, BASE["projection"], n)
  scann_gib = idx["scann"]["bytes_per_row"] * n / GIB
  rec(quantity="scann_index", measured_bytes_per_row=idx["scann"]["bytes_per_row"],
      measured_rows=a.measure_rows, gib=scann_gib,
      note="serialized ScaNN (tree+AH codes+float reorder data); block_emb copy inside")
  mem_total = store_gib + emb_gib + scann_gib
  rec(quantity="memory_per_host", gib=mem_total,
      note="each host's input pipeline retrieves for its own shard, so every host holds all three "
           "(plus the previous snapshot during a swap: x2 for block_emb+index)")

  # --- training step -----------------------------------------------------------------------------
  step = common.realm_step_flops(a.batch, a.k, 96, 288, 384, BASE["hidden"], BASE["layers"],
                                 BASE["intermediate"], BASE["vocab"], 10, BASE["projection"])
  tpu_rate = a.tpu_core_tflops * 1e12 * a.tpu_mfu
  step_s = step["total"] / (a.train_cores * tpu_rate)
  rec(quantity="train_step", tflop=step["total"] / 1e12, cores=a.train_cores, tpu_mfu=a.tpu_mfu,
      seconds=step_s, core_hours_per_200k_steps=step["total"] * 200000 / tpu_rate / 3600,
      wall_hours_200k_steps=step_s * 200000 / 3600)

  # --- refresh ------------------------------------------------------------------------------------
  per_block = common.embedder_forward_flops(1, a.refresh_len, BASE["hidden"], BASE["layers"],
                                            BASE["intermediate"], BASE["projection"])
  refresh_flops = per_block * n
  refresh_core_h = refresh_flops / tpu_rate / 3600
  refresh_wall_s = refresh_flops / (a.refresh_cores * tpu_rate)
  rec(quantity="refresh_pass", pflop=refresh_flops / 1e15, padded_len=a.refresh_len,
      tpu_core_hours=refresh_core_h, refresh_cores=a.refresh_cores,
      wall_minutes=refresh_wall_s / 60, train_steps_per_refresh=refresh_wall_s / step_s,
      passes_in_200k_steps=200000 * step_s / refresh_wall_s)

  # --- input pipeline per host ---------------------------------------------------------------------
  cpu_eff = a.cpu_efficiency or measure_cpu_embed(per_core)["efficiency"]
  per_host = a.batch / a.hosts
  q_flops = common.embedder_forward_flops(1, 96, BASE["hidden"], BASE["layers"],
                                          BASE["intermediate"], BASE["projection"])
  embed_core_s = q_flops / (per_core * 1e9 * cpu_eff)
  pack_s = measure_packing()["pack_s_per_example"]
  search_s = idx["scann"]["search_s_per_query"] * (n / a.measure_rows) * a.scann_scaling
  graph = measure_graph_stage(a.graph_records)
  rec(quantity="graph_stage_measured", **graph)
  graph_s = graph["core_s_per_example"]
  core_s = per_host * (embed_core_s + pack_s + search_s + graph_s)
  rec(quantity="input_pipeline_per_host_per_step", examples=per_host,
      query_embed_core_s=per_host * embed_core_s, cpu_embed_efficiency=cpu_eff,
      pack_core_s=per_host * pack_s, scann_search_core_s=per_host * search_s,
      graph_stage_core_s=per_host * graph_s, total_core_s=core_s, step_s=step_s,
      cores_needed=core_s / step_s, host_cores=a.host_cores,
      note="ScaNN search time scaled linearly in N (leaves searched grow with sqrt(N) and "
           "points per leaf with sqrt(N))")

  bottlenecks = []
  if core_s / step_s > a.host_cores:
    bottlenecks.append(f"host CPU: {core_s / step_s:.0f} cores needed per host > {a.host_cores}")
  if mem_total * 2 > a.host_mem_gib:
    bottlenecks.append(f"host memory: {2 * mem_total:.0f} GiB during a swap > {a.host_mem_gib}")
  rec(quantity="summary", blocks=n, model="BERT-base", batch=a.batch, k=a.k,
      train_cores=a.train_cores, memory_per_host_gib=mem_total, step_s=step_s,
      refresh_wall_min=refresh_wall_s / 60, refresh_tpu_core_hours=refresh_core_h,
      input_cores_per_host=core_s / step_s, dominant_input_cost=max(
          (("query_embed", embed_core_s), ("pack", pack_s), ("search", search_s),
           ("graph_stage", graph_s)), key=lambda x: x[1])[0],
      bottlenecks=bottlenecks or ["none above the host limits"])
  for record in device_budget(a, step["total"], step_s, tpu_rate, graph_s):
    rec(**record)


def parser():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--num_blocks", type=int, default=13353718)
  ap.add_argument("--batch", type=int, default=512)
  ap.add_argument("--k", type=int, default=8)
  ap.add_argument("--train_cores", type=int, default=64)
  ap.add_argument("--refresh_cores", type=int, default=16)
  ap.add_argument("--hosts", type=int, default=8, help="TPU v3-64 slice: 8 hosts x 8 cores")
  ap.add_argument("--host_cores", type=int, default=96)
  ap.add_argument("--host_mem_gib", type=float, default=335.0)
  ap.add_argument("--tpu_core_tflops", type=float, default=61.5, help="TPU v3 bf16 per core")
  ap.add_argument("--tpu_mfu", type=float, default=0.4, help="assumed model-FLOP utilisation")
  ap.add_argument("--cpu_efficiency", type=float, default=0.0,
                  help="host embedder efficiency vs matmul peak; 0 = measure")
  ap.add_argument("--mean_block_tokens", type=int, default=288,
                  help="blocks are greedily filled to 288 wordpieces: upper bound")
  ap.add_argument("--refresh_len", type=int, default=288)
  ap.add_argument("--scann_scaling", type=float, default=1.0)
  ap.add_argument("--measure_blocks", type=int, default=20000)
  ap.add_argument("--measure_rows", type=int, default=50000)
  ap.add_argument("--graph_records", type=int, default=2000,
                  help="synthetic pre-training records for the graph-stage measurement")
  ap.add_argument("--hbm_per_core_gib", type=float, default=16.0, help="TPU v3: 16 GiB per core")
  ap.add_argument("--device_title_width", type=int, default=32,
                  help="device mode: dense title width (the longest title, at most C-3)")
  ap.add_argument("--device_body_width", type=int, default=288,
                  help="device mode: dense body width (the longest body, at most max(C,J)-3)")
  ap.add_argument("--device_rows_per_chunk", type=int, default=65536,
                  help="device mode: rows scored at once per core (0 = the whole shard)")
  ap.add_argument("--pick_with", choices=("snapshot", "live"), default="snapshot",
                  help="device mode: snapshot = one more query tower per core")
  ap.add_argument("--mips_utilisation", type=float, default=0.4,
                  help="device mode: share of the TPU peak the in-step search reaches")
  ap.add_argument("--refresh_blocks", type=int, default=0,
                  help="also measure corpus embedding (4L/256) on this many blocks")
  ap.add_argument("--refresh_batch", type=int, default=128, help="embedding batch of --refresh_blocks")
  return ap


def main(argv=None):
  return run(parser().parse_args(argv))


if __name__ == "__main__":
  main()
