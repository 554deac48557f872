r"""REALM pre-training step throughput and useful-FLOP efficiency vs the matmul rate of the same run.

  python benchmarks/pretrain_step.py --layers=4 --hidden=256 --heads=4 --batch=4 --k=8 \
      --query_len=96 --cand_len=288 --joint_len=384 --xla --precision=float32 --steps=5

Runs the real task code (`RealmTask.build_model` + `RealmTask.train_step`, i.e. `compute_loss` ->
XLA forward/backward -> AdamWeightDecay) on a synthetic batch with the pipeline's static shapes.
The machine's matmul rate drifts under other load, so every timed step is bracketed by matmul-rate
samples (same matmul both times) and the efficiency is reported per step against the neighbouring
samples, plus overall.

Output (JSON lines): a `pretrain_step` record with examples_per_s, seconds_per_step (best/median),
useful_gflop_per_step (by part), achieved_gflops, peak_gflops (same run), efficiency.

`--retrieval=device --num_blocks=N` times the device-retrieval step instead
(`task.retrieval=device`): the batch holds only masked queries, and the step embeds them with the
picking query tower (`--pick_with`: a snapshot copy, default, or the live one), searches a
`DeviceBlockStore` of N synthetic blocks (random `block_emb`, `--emb_dtype`), packs the K candidates
and runs the towers and loss. The record adds the retrieval alone (`RealmTask.retrieve`, compiled
as the step is) timed after the steps: retrieval_seconds_median, retrieval_share (of the step
median) and gflop_retrieval (query-tower forward + the [B, N] inner products); the step's FLOP
counts include it.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import realm_tf2  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from realm_tf2 import accel  # noqa: E402
from realm_tf2 import configs  # noqa: E402
from realm_tf2.accel import custom_kernels  # noqa: E402
from realm_tf2 import optimization  # noqa: E402
from realm_tf2.modeling import embedder as embedder_lib  # noqa: E402
from realm_tf2.retrieval import block_store as block_store_lib  # noqa: E402
from realm_tf2.retrieval import device_retrieval  # noqa: E402
from realm_tf2.tasks import realm_task  # noqa: E402


def add_model_flags(ap: argparse.ArgumentParser):
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--intermediate", type=int, default=0, help="0 = 4*hidden")
  ap.add_argument("--vocab_size", type=int, default=30522)
  ap.add_argument("--projection", type=int, default=128)
  ap.add_argument("--dropout", type=float, default=0.1, help="hidden/attention/embedder dropout")
  ap.add_argument("--cpu_accel", choices=accel.MODES, default="auto",
                  help="realm_tf2.accel CPU speed-ups (applied only without XLA, as in training)")
  ap.add_argument("--accel_pieces", default=",".join(accel.PIECES),
                  help=f"comma-separated subset of {accel.PIECES} applied when cpu_accel is on")
  ap.add_argument("--cpp_kernels", action=argparse.BooleanOptionalAction, default=True,
                  help="the C++ kernels of realm_tf2/accel (--no-cpp_kernels: their TF-op versions)")
  ap.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--intra_op", type=int, default=0, help="TF intra-op threads (0 = all cores)")
  ap.add_argument("--peak_sizes", default="512,1024,2048")


def bert_config(a) -> configs.BertConfig:
  return configs.BertConfig(vocab_size=a.vocab_size, hidden_size=a.hidden, num_layers=a.layers,
                            num_attention_heads=a.heads,
                            intermediate_size=a.intermediate or 4 * a.hidden,
                            dropout_rate=a.dropout, attention_dropout_rate=a.dropout)


def synthetic_batch(batch, k, q, c, j, m, vocab, seed=0):
  """A REALM batch with the pipeline's feature names, static shapes and realistic padding."""
  rng = np.random.default_rng(seed)

  def seq(shape, real, two_segments):
    ids = rng.integers(5, vocab, size=shape).astype(np.int32)
    mask = (np.arange(shape[-1]) < real).astype(np.int32) * np.ones(shape, np.int32)
    seg = ((np.arange(shape[-1]) >= real // 3).astype(np.int32) * mask if two_segments
           else np.zeros(shape, np.int32))
    return ids * mask, mask, seg

  out = {}
  for prefix, shape, real, two in (("query_", [batch, q], min(q, 40), False),
                                   ("candidate_", [batch, k, c], c, True),
                                   ("joint_", [batch, k, j], j, True)):
    ids, mask, seg = seq(shape, real, two)
    out.update({prefix + "input_ids": ids, prefix + "input_mask": mask, prefix + "segment_ids": seg})
  out["mlm_positions"] = np.tile(np.arange(1, m + 1, dtype=np.int32), [batch, 1])
  out["mlm_targets"] = rng.integers(5, vocab, size=[batch, m]).astype(np.int32)
  out["mlm_mask"] = np.ones([batch, m], np.int32)
  out["index_version"] = np.ones([batch], np.int32)
  out["index_step"] = np.zeros([batch], np.int32)
  return {name: tf.constant(v) for name, v in out.items()}


def synthetic_block_store(num_blocks, cand_len, vocab, seed=0):
  """`num_blocks` blocks of a 4-token title and a body filling the candidate layout; row uids
  0..N-1 (valid `graph_doc_uid` values, distinct)."""
  rng = np.random.default_rng(seed)
  body = max(1, cand_len - 7)
  titles = rng.integers(5, vocab, [num_blocks, 4]).astype(np.int32)
  bodies = rng.integers(5, vocab, [num_blocks, body]).astype(np.int32)
  store = block_store_lib.BlockStore(
      titles.reshape(-1), np.arange(num_blocks + 1, dtype=np.int64) * 4, bodies.reshape(-1),
      np.arange(num_blocks + 1, dtype=np.int64) * body, np.arange(num_blocks, dtype=np.int64),
      source="synthetic")
  return store, np.arange(num_blocks, dtype=np.int32)


def device_batch(batch, q, m, vocab, num_blocks, seed=0):
  """A device-mode batch (`pretrain_pipeline.DEVICE_FEATURES`): masked queries, no candidates."""
  full = synthetic_batch(batch, 1, q, 8, 8, m, vocab, seed)
  rng = np.random.default_rng(seed + 1)
  out = {k: full[k] for k in ("query_input_ids", "query_input_mask", "query_segment_ids",
                              "mlm_positions", "mlm_targets", "mlm_mask")}
  out["source_uid"] = tf.constant(rng.integers(0, num_blocks, batch).astype(np.int32))
  out["pipeline_counts"] = tf.zeros([batch, 5], tf.int32)
  return out


def build(a):
  """(task, model, optimizer, batch, step_fn) for the flags."""
  common.set_precision(a.precision)
  cfg = realm_task.RealmPretrainTaskConfig(jit_compile=a.xla, retrieval=a.retrieval)
  cfg.device_retrieval.emb_dtype = a.emb_dtype
  cfg.device_retrieval.rows_per_chunk = a.rows_per_chunk
  cfg.device_retrieval.pick_with = a.pick_with
  cfg.model.bert = bert_config(a)
  cfg.model.projection_size = a.projection
  cfg.model.embedder_dropout_rate = a.dropout
  cfg.model.num_candidates, cfg.model.max_masks = a.k, a.max_masks
  cfg.model.query_seq_len, cfg.model.candidate_seq_len = a.query_len, a.cand_len
  cfg.model.joint_seq_len = a.joint_len
  task = realm_task.RealmTask(cfg)
  model = task.build_model()
  if accel.is_enabled(a.cpu_accel, a.xla):  # as training/driver.py does
    accel.apply(model, pieces=accel_pieces(a))
  opt = optimization.create_optimizer(configs.OptimizerConfig(num_warmup_steps=10), 1000)
  if a.retrieval == "device":
    store, uids = synthetic_block_store(a.num_blocks, a.cand_len, a.vocab_size)
    emb = np.random.default_rng(1).standard_normal([a.num_blocks, a.projection]).astype(np.float32)
    picker = None
    if a.pick_with == "snapshot":  # the snapshot's query tower: same architecture, own weights
      picker = embedder_lib.embedder_from_config(cfg.model, a.vocab_size)
      picker.trainable = False
    task.set_device_retrieval(device_retrieval.DeviceBlockStore(
        store, emb, candidate_seq_len=a.cand_len, joint_seq_len=a.joint_len, cls_id=2, sep_id=3,
        block_uids=uids, emb_dtype=cfg.device_retrieval.tf_emb_dtype,
        rows_per_chunk=a.rows_per_chunk or None), picker)
    batch = device_batch(a.batch, a.query_len, a.max_masks, a.vocab_size, a.num_blocks)
  else:
    batch = synthetic_batch(a.batch, a.k, a.query_len, a.cand_len, a.joint_len, a.max_masks,
                            a.vocab_size)
  step = tf.function(lambda x: task.train_step(x, model, opt))
  return task, model, opt, batch, step


def retrieval_flops(a) -> float:
  """Device retrieval per step: the query tower's inference forward + 2*B*N*D inner products
  (top-k and packing are not matmuls)."""
  return (common.embedder_forward_flops(a.batch, a.query_len, a.hidden, a.layers,
                                        a.intermediate or 4 * a.hidden, a.projection, cls_only=True)
          + 2.0 * a.batch * a.num_blocks * a.projection)


def time_retrieval(a, task, model, batch):
  """Seconds of `RealmTask.retrieve` alone (compiled like the step), after one warm-up call."""
  fn = tf.function(lambda x: task.retrieve(model, x)["candidate_input_ids"], jit_compile=a.xla)
  fn(batch).numpy()
  return common.time_calls(lambda: fn(batch), a.steps, sync=lambda x: x.numpy())


def accel_pieces(a):
  return tuple(p for p in a.accel_pieces.split(",") if p)


def run(a):
  # Read when the kernels are first loaded (realm_tf2/accel/custom_kernels.py).
  os.environ["REALM_TF2_CUSTOM_KERNELS"] = "1" if a.cpp_kernels else "0"
  common.set_threads(a.intra_op)
  tracker = common.PeakTracker(tuple(int(s) for s in a.peak_sizes.split(",")), repeats=3,
                               dtype=common.peak_dtype(a.precision))
  task, model, _, batch, step = build(a)
  t = time.perf_counter()
  for _ in range(a.warmup):
    float(step(batch)["loss"])
  compile_s = time.perf_counter() - t
  flops = common.realm_step_flops(a.batch, a.k, a.query_len, a.cand_len, a.joint_len, a.hidden,
                                  a.layers, a.intermediate or 4 * a.hidden, a.vocab_size,
                                  a.max_masks, a.projection)
  required = common.realm_step_flops(a.batch, a.k, a.query_len, a.cand_len, a.joint_len, a.hidden,
                                     a.layers, a.intermediate or 4 * a.hidden, a.vocab_size,
                                     a.max_masks, a.projection, required=True)
  cpu_times = []
  device = {}
  if a.retrieval == "device":
    extra = retrieval_flops(a)
    flops = dict(flops, retrieval=extra, total=flops["total"] + extra)
    required = dict(required, total=required["total"] + extra)
  times, ratios, loss = common.time_steps(lambda: float(step(batch)["loss"]), a.steps, tracker,
                                           flops["total"], cpu_times)
  s = common.summarize(times)
  if a.retrieval == "device":
    r = common.summarize(time_retrieval(a, task, model, batch))
    device = {"num_blocks": a.num_blocks, "emb_dtype": a.emb_dtype, "pick_with": a.pick_with,
              "rows_per_chunk": task.device_store.rows_per_chunk,
              "retrieval_seconds_median": r["median"], "retrieval_seconds_best": r["best"],
              "retrieval_share": r["median"] / s["median"]}
  refresh = measure_with_refresh(a, step, batch, s) if a.refresh_threads else {}
  if a.profile_dir:
    top_ops = profile_step(step, batch, a.profile_dir)
    common.emit({"benchmark": "pretrain_step_profile", "xla": a.xla, "top_ops": top_ops})
  rec = {
      "benchmark": "pretrain_step", "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
      "intermediate": a.intermediate or 4 * a.hidden, "vocab": a.vocab_size, "batch": a.batch,
      "k": a.k, "query_len": a.query_len, "cand_len": a.cand_len, "joint_len": a.joint_len,
      "max_masks": a.max_masks, "xla": a.xla, "precision": a.precision, "dropout": a.dropout,
      "retrieval": a.retrieval, **device,
      "cpu_accel": accel.is_enabled(a.cpu_accel, a.xla),
      "accel_pieces": list(accel_pieces(a)) if accel.is_enabled(a.cpu_accel, a.xla) else [],
      "cpp_kernels": accel.is_enabled(a.cpu_accel, a.xla) and custom_kernels.load() is not None,
      "steps": a.steps, "compile_s": compile_s, "loss": loss,
      "seconds_per_step_best": s["best"], "seconds_per_step_median": s["median"],
      "cpu_seconds_per_step_median": float(np.median(cpu_times)),
      "examples_per_s": a.batch / s["median"],
      "useful_gflop_per_step": flops["total"] / 1e9,
      **{f"gflop_{k}": v / 1e9 for k, v in flops.items() if k != "total"},
      "achieved_gflops_best": flops["total"] / s["best"] / 1e9,
      "achieved_gflops_median": flops["total"] / s["median"] / 1e9,
      **tracker.describe(),
      "efficiency_paired_median": float(np.median(ratios)),
      "efficiency_paired_best": float(np.max(ratios)),
      "efficiency_vs_peak": flops["total"] / s["best"] / 1e9 / tracker.peak,
      "required_gflop_per_step": required["total"] / 1e9,
      "required_efficiency_paired_median": float(np.median(ratios)) * required["total"] / flops["total"],
      "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
      **refresh,
  }
  return common.emit(rec)


def profile_step(step, batch, logdir, top=12):
  """Traces one step with `tf.profiler` and returns the top op kinds by self time.

  Events of the host plane (TF ops, or XLA HLO thunks such as `dot`/`fusion` under XLA) are grouped
  by name with numeric suffixes stripped; returns [(kind, seconds, share)].
  """
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  tf.profiler.experimental.start(logdir)
  float(step(batch)["loss"])
  tf.profiler.experimental.stop()
  path = sorted(glob.glob(os.path.join(logdir, "plugins/profile/*/*.xplane.pb")))[-1]
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  wrappers = ("call", "Execute", "Process", "Start", "Run", "python")
  for plane in space.planes:
    if plane.name != "/host:CPU":
      continue
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      # Self time: an event's duration minus its direct children's (events nest per thread line).
      events = sorted((e.offset_ps, e.offset_ps + e.duration_ps, names.get(e.metadata_id, "?"))
                      for e in line.events)
      stack, records = [], []
      for begin, end, name in events:
        while stack and stack[-1][0] <= begin:
          stack.pop()
        rec = [end, name, end - begin]
        if stack:
          stack[-1][2] -= end - begin
        stack.append(rec)
        records.append(rec)
      for _, name, self_ps in records:
        kind = re.sub(r"[._\-]\d.*$", "", name.split(":")[-1].split("/")[-1])
        if kind and kind not in wrappers and not kind.startswith("__inference"):
          totals[kind] += self_ps * 1e-12
  total = sum(totals.values()) or 1.0
  return [(k, round(v, 3), round(v / total, 3)) for k, v in totals.most_common(top)]


# A corpus re-embedding loop in its own process (the `--refresh=external` layout of run_pretrain.py:
# `python -m realm_tf2.retrieval.refresh` runs beside the trainer), with its own TF thread pools.
_REFRESH_LOOP = r"""
import sys, time, json
import realm_tf2
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, sys.argv[2])
from benchmarks import refresh as refresh_bench
from realm_tf2 import configs
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.retrieval import embed_corpus
layers, hidden, heads, vocab = (int(x) for x in sys.argv[3:7])
store = refresh_bench.synthetic_store(256, vocab)
bert = configs.BertConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                          num_attention_heads=heads, intermediate_size=4 * hidden)
emb = embedder_lib.RealmEmbedder(bert, projection_size=128)
print("ready", flush=True)
while True:
  stats = {}
  # Fixed buckets (the README's "step beside a refresher" row).
  embed_corpus.embed_blocks(store, emb, 2, 3, batch_size=64, stats=stats, xla=True,
                            buckets=embed_corpus.DEFAULT_BUCKETS)
  print(json.dumps({"blocks_per_sec": stats["blocks_per_sec"]}), flush=True)
"""


def measure_with_refresh(a, step, batch, alone):
  """Step time while a refresher process re-embeds a corpus with `a.refresh_threads` threads."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen(
      [sys.executable, "-c", _REFRESH_LOOP, str(a.refresh_threads), repo, str(a.layers),
       str(a.hidden), str(a.heads), str(a.vocab_size)],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    if proc.stdout.readline().strip() != "ready":
      raise RuntimeError("refresh loop failed to start")
    proc.stdout.readline()  # first pass done: its tracing is over
    times = []
    for _ in range(a.steps):
      t = time.perf_counter()
      float(step(batch)["loss"])
      times.append(time.perf_counter() - t)
  finally:
    proc.kill()  # the process started above, by its own handle
    out, _ = proc.communicate()
  rates = [float(l.split(":")[1].strip(" }")) for l in out.splitlines() if "blocks_per_sec" in l]
  s = common.summarize(times)
  return {"refresh_threads": a.refresh_threads,
          "with_refresh_seconds_per_step_median": s["median"],
          "with_refresh_seconds_per_step_best": s["best"],
          "refresh_slowdown_median": s["median"] / alone["median"],
          "refresh_blocks_per_sec": float(np.median(rates)) if rates else None}


def parser():
  # "resolve": benchmarks/input_pipeline.py extends this parser and defines its own --num_blocks
  # (the size of its host index), which replaces the device-retrieval one.
  ap = argparse.ArgumentParser(description=__doc__, conflict_handler="resolve",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_flags(ap)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--k", type=int, default=8)
  ap.add_argument("--query_len", type=int, default=96)
  ap.add_argument("--cand_len", type=int, default=288)
  ap.add_argument("--joint_len", type=int, default=384)
  ap.add_argument("--max_masks", type=int, default=10)
  ap.add_argument("--retrieval", choices=realm_task.RETRIEVAL_MODES, default="host",
                  help="host: the batch carries the K packed candidates; device: the step "
                       "retrieves them from --num_blocks synthetic blocks")
  ap.add_argument("--num_blocks", type=int, default=100000, help="device: corpus rows")
  ap.add_argument("--emb_dtype", choices=("float32", "bfloat16"), default="float32",
                  help="device: block_emb storage/scoring dtype")
  ap.add_argument("--pick_with", choices=realm_task.PICK_WITH, default="snapshot",
                  help="device: the query tower that picks (a snapshot copy or the live one)")
  ap.add_argument("--rows_per_chunk", type=int, default=0,
                  help="device: rows scored at once (0 = the whole shard)")
  ap.add_argument("--profile_dir", default="", help="trace one step with tf.profiler here")
  ap.add_argument("--refresh_threads", type=int, default=0,
                  help="also time steps beside a refresher process with this many intra-op threads")
  return ap


def main(argv=None):
  return run(parser().parse_args(argv))


if __name__ == "__main__":
  main()
