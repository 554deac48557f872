"""Shared pieces of the performance benchmarks: matmul peak, analytic FLOP counts, timing, JSON lines.

FLOP convention: one multiply-add = 2 FLOPs; only matrix products are counted (embedding gathers,
layer norms, softmax, gelu and dropout are bandwidth work, not FLOPs). Backward of a matmul is two
matmuls of the same size, so forward+backward = 3x forward (`TRAIN_MULTIPLIER`).

Per transformer layer on T tokens (hidden H, feed-forward I), every row computed:
  Q,K,V projections 3*2*T*H*H, attention scores 2*T*T*H, context 2*T*T*H, output 2*T*H*H,
  feed-forward 2*2*T*H*I  ->  8*T*H^2 + 4*T^2*H + 4*T*H*I.

Two counts of a step are reported: `issue` (the issue's definition: every encoder layer over every
position, MLM head at masked positions only) and `required` (the same, except that the LAST layer
only needs the rows that are read: [CLS] for the embedders, the query part for the joint encoder —
`transformer_layer_flops(..., rows=r)`). The model computes exactly the `required` work
(Model Garden's `output_range`, `realm_tf2.modeling.bert.build_bert_encoder`), so `required` is the
honest numerator; `issue` is kept for comparison with the target's definition.
"""
import contextlib
import json
import sys
import time
from typing import Callable, Dict, List, Optional

import realm_tf2  # noqa: F401
import numpy as np
import tensorflow as tf

TRAIN_MULTIPLIER = 3.0


def keras_policy_name(precision: str) -> str:
  """The Keras mixed-precision policy for a benchmark's `--precision` ("float32" | "bfloat16")."""
  if precision not in ("float32", "bfloat16"):
    raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
  return "mixed_bfloat16" if precision == "bfloat16" else "float32"


def set_precision(precision: str):
  """Sets the global Keras policy for the rest of the process (the step benchmarks' CLIs)."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  tf_keras.mixed_precision.set_global_policy(keras_policy_name(precision))


@contextlib.contextmanager
def precision_scope(precision: str):
  """Builds models under `precision`'s policy, then restores the previous global policy."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(keras_policy_name(precision))
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


def emit(record: Dict, stream=None) -> Dict:
  """Prints one JSON line (floats rounded) and returns the record."""
  out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
  print(json.dumps(out), file=stream or sys.stdout, flush=True)
  return record


# --- analytic FLOP counts ------------------------------------------------------------------------

def transformer_layer_flops(tokens: int, hidden: int, intermediate: int, rows=None) -> float:
  """Forward FLOPs of one transformer layer over `tokens` keys, computing `rows` output rows.

  rows=None: all rows. Otherwise K,V projections still cover all tokens; the Q/output projections,
  attention and feed-forward only the `rows`.
  """
  t, h, i = float(tokens), float(hidden), float(intermediate)
  r = t if rows is None else float(rows)
  return 4 * t * h * h + 4 * r * h * h + 4 * r * t * h + 4 * r * h * i


def encoder_forward_flops(num_seqs: int, seq_len: int, hidden: int, layers: int,
                          intermediate: int, pooler: bool = True, last_rows=None) -> float:
  """Forward FLOPs of a BERT encoder over `num_seqs` sequences of `seq_len` (+ tanh pooler).

  last_rows: rows the last layer computes (None = all).
  """
  per_seq = ((layers - 1) * transformer_layer_flops(seq_len, hidden, intermediate)
             + transformer_layer_flops(seq_len, hidden, intermediate, last_rows))
  if pooler:
    per_seq += 2.0 * hidden * hidden
  return num_seqs * per_seq


def embedder_forward_flops(num_seqs, seq_len, hidden, layers, intermediate, projection,
                           cls_only=False) -> float:
  """RealmEmbedder: encoder + pooler + Dense(projection); cls_only: last layer on [CLS] only."""
  return (encoder_forward_flops(num_seqs, seq_len, hidden, layers, intermediate,
                                last_rows=1 if cls_only else None)
          + num_seqs * 2.0 * hidden * projection)


def mlm_head_forward_flops(num_positions: int, hidden: int, vocab: int) -> float:
  """MaskedLM at `num_positions` rows: transform Dense(H) + logits against the [V,H] table."""
  return num_positions * (2.0 * hidden * hidden + 2.0 * hidden * vocab)


def realm_step_flops(batch, k, query_len, cand_len, joint_len, hidden, layers, intermediate,
                     vocab, max_masks, projection=128, required=False) -> Dict[str, float]:
  """Useful FLOPs of one REALM train step (forward+backward = 3x forward), by part.

  Encoders over query [B,Q], candidates [B*K,C] and joint inputs [B*K,J] at their static lengths;
  MLM head only at the B*K*M masked positions; retrieval scores B*K*D dot products.
  required=True: last layers only over the rows that are read ([CLS]; joint rows < Q-1).
  """
  joint_rows = min(query_len - 1, joint_len) if required else None
  parts = {
      "query": embedder_forward_flops(batch, query_len, hidden, layers, intermediate, projection,
                                      cls_only=required),
      "candidates": embedder_forward_flops(batch * k, cand_len, hidden, layers, intermediate,
                                           projection, cls_only=required),
      "joint": encoder_forward_flops(batch * k, joint_len, hidden, layers, intermediate,
                                     last_rows=joint_rows),
      "mlm_head": mlm_head_forward_flops(batch * k * max_masks, hidden, vocab),
      "scores": 2.0 * batch * k * projection,
  }
  out = {name: TRAIN_MULTIPLIER * f for name, f in parts.items()}
  out["total"] = sum(out.values())
  return out


def orqa_step_flops(batch, question_len, reader_len, num_read, retriever_beam, hidden, layers,
                    intermediate, projection=128, span_hidden=256, max_span_width=10,
                    required=False) -> Dict[str, float]:
  """Useful FLOPs of one ORQA fine-tuning step (forward+backward).

  Question encoder [B,Tq], reader over [B*N,T], span MLP (start/end projections of every token
  + one output unit per span), retriever logits against the B*R fixed block embeddings.
  """
  spans = sum(max(reader_len - w + 1, 0) for w in range(1, max_span_width + 1))
  parts = {
      "question": embedder_forward_flops(batch, question_len, hidden, layers, intermediate,
                                         projection, cls_only=required),
      "reader": encoder_forward_flops(batch * num_read, reader_len, hidden, layers, intermediate),
      "span_head": batch * num_read * (2.0 * reader_len * hidden * 2 * span_hidden
                                       + 2.0 * spans * span_hidden),
      "retriever": 2.0 * batch * retriever_beam * projection,
  }
  out = {name: TRAIN_MULTIPLIER * f for name, f in parts.items()}
  out["total"] = sum(out.values())
  return out


# --- timing --------------------------------------------------------------------------------------

def time_calls(fn: Callable[[], object], repeats: int, sync: Callable[[object], object] = None
               ) -> List[float]:
  """Wall seconds of each of `repeats` calls of `fn` (result passed to `sync` to wait for it)."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    if sync is not None:
      sync(out)
    times.append(time.perf_counter() - t)
  return times


def summarize(times: List[float]) -> Dict[str, float]:
  """best / median seconds."""
  return {"best": float(np.min(times)), "median": float(np.median(times))}


_PEAK_FNS = {}


def matmul_fn(n: int, dtype=tf.float32, xla: bool = True, chain: int = 4):
  """A tf.function computing `chain` dependent [n,n]x[n,n] products (one call = chain*2n^3 FLOPs).

  Chained products keep the work inside one dispatched function so per-call overhead is negligible.
  """
  key = (n, dtype, xla, chain)
  if key not in _PEAK_FNS:
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal([n, n]).astype(np.float32) / np.sqrt(n), dtype)
    b = tf.constant(rng.standard_normal([n, n]).astype(np.float32) / np.sqrt(n), dtype)

    @tf.function(jit_compile=xla)
    def run():
      x = a
      for _ in range(chain):
        x = tf.matmul(x, b)
      return tf.reduce_sum(tf.cast(x[:1, :1], tf.float32))

    run()  # compile
    _PEAK_FNS[key] = (run, chain * 2.0 * n ** 3)
  return _PEAK_FNS[key]


def matmul_gflops(n: int = 1024, dtype=tf.float32, xla: bool = True, repeats: int = 5,
                  chain: int = 4) -> Dict[str, float]:
  """Dense matmul rate in GFLOP/s (best and median over `repeats` calls)."""
  fn, flops = matmul_fn(n, dtype, xla, chain)
  s = summarize(time_calls(fn, repeats, sync=lambda x: x.numpy()))
  return {"gflops_best": flops / s["best"] / 1e9, "gflops_median": flops / s["median"] / 1e9}


def peak_dtype(precision: str):
  """The matmul dtype a run's speed is held against: bfloat16 when it computes in bfloat16 (mixed
  precision), where the CPU's bf16 units (AMX) set the attainable rate, else float32."""
  return tf.bfloat16 if "bfloat16" in str(precision) else tf.float32


def measure_peak(sizes=(512, 1024, 2048), repeats: int = 5, dtype=tf.float32) -> Dict[str, float]:
  """The machine's `dtype` matmul rate: max over square sizes and plain-TF vs XLA (best of repeats)."""
  best, detail = 0.0, {}
  for n in sizes:
    for xla in (False, True):
      r = matmul_gflops(n, dtype, xla, repeats=repeats)
      detail[f"n{n}_{'xla' if xla else 'tf'}"] = r["gflops_best"]
      best = max(best, r["gflops_best"])
  return {"peak_gflops": best, **detail}


class PeakTracker:
  """Re-measures the matmul peak between benchmark phases (other load on the machine moves it).

  `sample()` takes one quick measurement at the size that won the initial sweep; `peak` is the max
  of all samples, `median` their median. Ratios are reported against both. `dtype`: the matmul
  dtype of the rate (`peak_dtype(precision)`: bfloat16 for bf16 runs).
  """

  def __init__(self, sizes=(512, 1024, 2048), repeats: int = 5, dtype=tf.float32):
    self.dtype = tf.as_dtype(dtype)
    sweep = measure_peak(sizes, repeats, self.dtype)
    self.detail = sweep
    keys = [k for k in sweep if k.startswith("n")]
    winner = max(keys, key=lambda k: sweep[k])
    self._n = int(winner[1:].split("_")[0])
    self._xla = winner.endswith("xla")
    self.samples = [sweep["peak_gflops"]]

  def sample(self, repeats: int = 3) -> float:
    r = matmul_gflops(self._n, self.dtype, self._xla, repeats=repeats)["gflops_best"]
    self.samples.append(r)
    return r

  @property
  def peak(self) -> float:
    return float(np.max(self.samples))

  @property
  def median(self) -> float:
    return float(np.median(self.samples))

  def describe(self) -> Dict:
    return {"peak_gflops": self.peak, "peak_gflops_median": self.median,
            "peak_dtype": self.dtype.name,
            "peak_matmul": f"{self._n}x{self._n} {'xla' if self._xla else 'tf'}",
            "peak_samples": len(self.samples)}


def set_threads(intra_op: Optional[int] = None, inter_op: Optional[int] = None):
  """Process-wide TF thread pools (must run before the first op)."""
  if intra_op:
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
  if inter_op:
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def time_steps(run_step: Callable[[], float], steps: int, tracker, total_flops: float,
               cpu_times=None):
  """Runs `run_step()` (returns the loss) `steps` times.

  Returns (seconds per step, efficiency per step, last loss); efficiency is the step's useful FLOP/s
  over the mean of the matmul rate `tracker` measured right before and right after that step. With a
  list `cpu_times`, each step's process CPU seconds (all threads) are appended to it: on a shared
  machine the work a step costs, which wall time (waiting for the cores) does not show.
  """
  times, ratios, loss = [], [], float("nan")
  before = tracker.sample()
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    loss = run_step()
    dt = time.perf_counter() - t
    if cpu_times is not None:
      cpu_times.append(time.process_time() - c)
    after = tracker.sample()
    times.append(dt)
    ratios.append(total_flops / dt / 1e9 / (0.5 * (before + after)))
    before = after
  return times, ratios, loss
