"""Orbit actions run after every train/eval loop: progress line and metrics.jsonl records."""
import math
import sys
import time
from typing import Callable, Mapping, Optional

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

from realm_tf2.training import metrics_log


def _fmt_seconds(s: float) -> str:
  s = int(max(0, s))
  return f"{s // 3600:d}:{(s % 3600) // 60:02d}:{s % 60:02d}"


class TrainProgressAction:
  """Logs `step, loss, examples/s, ETA` and writes a `split="train"` record after each train loop.

  Args:
    writer: The run's `MetricsJsonlWriter`.
    global_step: The trainer's step variable.
    total_steps: `trainer.train_steps`, for the ETA.
    global_batch_size: Examples per step, for examples/s.
    extra_metrics_fn: Optional callable returning more scalars to record (index version, staleness).
    stream: Where the human-readable progress line goes (stdout by default).
  """

  def __init__(self, writer: metrics_log.MetricsJsonlWriter, global_step: tf.Variable,
               total_steps: int, global_batch_size: int,
               extra_metrics_fn: Optional[Callable[[], Mapping[str, float]]] = None, stream=None):
    self._writer = writer
    self._global_step = global_step
    self._total_steps = total_steps
    self._batch = global_batch_size
    self._extra = extra_metrics_fn
    self._stream = stream or sys.stdout
    self._last_time = None
    self._last_step = None

  def start(self):
    """Marks the start of timing (call right before training starts)."""
    self._last_time = time.time()
    self._last_step = int(self._global_step.numpy())

  def __call__(self, output: Mapping[str, tf.Tensor]):
    now = time.time()
    step = int(self._global_step.numpy())
    if self._last_time is None:
      self._last_time, self._last_step = now, step
    elapsed = max(now - self._last_time, 1e-9)
    steps = step - self._last_step
    steps_per_sec = steps / elapsed if steps > 0 else 0.0
    metrics = dict(output or {})
    metrics["steps_per_sec"] = steps_per_sec
    metrics["examples_per_sec"] = steps_per_sec * self._batch
    if self._extra is not None:
      metrics.update(self._extra())
    record = self._writer.write(step, "train", metrics)
    eta = (self._total_steps - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
    loss = float(record.get("training_loss", float("nan")))  # non-finite values are stored as strings
    extras = " ".join(f"{k}={record[k]:.4g}" for k in sorted(record)
                      if k not in ("step", "split", "training_loss", "steps_per_sec",
                                   "examples_per_sec", "learning_rate")
                      and isinstance(record[k], (int, float)))
    if not math.isfinite(loss):
      logging.error("non-finite training loss (%s) at step %d; Model Garden's blow-up recovery "
                    "(trainer.recovery_max_trials) restores the last checkpoint", loss, step)
    line = (f"[train] step {step}/{self._total_steps} loss={loss:.4f} "
            f"{metrics['examples_per_sec']:.1f} ex/s ETA {_fmt_seconds(eta) if eta == eta else '?'} "
            f"{extras}")
    print(line, file=self._stream, flush=True)  # one line per loop (not also logged: no duplicate)
    self._last_time, self._last_step = now, step


class EvalMetricsAction:
  """Writes a `split="eval"` record after each evaluation and prints it."""

  def __init__(self, writer: metrics_log.MetricsJsonlWriter, global_step: tf.Variable, stream=None):
    self._writer = writer
    self._global_step = global_step
    self._stream = stream or sys.stdout

  def __call__(self, output: Mapping[str, tf.Tensor]):
    step = int(self._global_step.numpy())
    record = self._writer.write(step, "eval", dict(output or {}))
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(record.items())
                     if k not in ("step", "split") and isinstance(v, (int, float)))
    print(f"[eval] step {step} {shown}", file=self._stream, flush=True)
