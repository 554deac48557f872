"""`model_dir/metrics.jsonl`: one JSON object a line, `{"step", "split", <metric>: number, ...}`.

GCS objects cannot be appended to, so the writer keeps the (small) history in memory and rewrites
the whole file atomically on every write; a restarted run re-reads the file first and drops lines
beyond the restored step, so a resumed run never shows duplicate steps.
"""
import json
import math
import os
import threading

import realm_tf2  # noqa: F401
import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils


def _to_number(value):
  if hasattr(value, "numpy"):
    value = value.numpy()
  if isinstance(value, np.ndarray):
    if value.size != 1:
      return None
    value = value.reshape(()).item()
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, (int, float)):
    if isinstance(value, float) and not math.isfinite(value):
      return str(value)  # JSON has no NaN/inf; keep it visible as a string.
    return value
  return None


class MetricsJsonlWriter:
  """Appends metric records to `<model_dir>/metrics.jsonl` (atomic rewrite, gs:// safe).

  Args:
    model_dir: Run directory.
    resume_step: If given, existing lines with `step > resume_step` are dropped (they belong to a
      run that crashed after its last checkpoint).
  """

  def __init__(self, model_dir: str, resume_step: int | None = None, filename: str = "metrics.jsonl"):
    self.path = os.path.join(model_dir, filename)
    self._lock = threading.Lock()
    self._lines = []
    if tf.io.gfile.exists(self.path):
      with tf.io.gfile.GFile(self.path, "r") as f:
        for line in f:
          line = line.strip()
          if not line:
            continue
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue  # a torn last line of a crashed writer; the atomic rewrite drops it
          if resume_step is not None and rec.get("step", 0) > resume_step:
            continue
          self._lines.append(json.dumps(rec, sort_keys=True))

  def write(self, step: int, split: str, metrics: dict) -> dict:
    """Records `metrics` (scalars only; non-scalars are ignored) and returns the record."""
    record = {"step": int(step), "split": split}
    for key, value in sorted(metrics.items()):
      number = _to_number(value)
      if number is not None:
        record[key] = number
    with self._lock:
      self._lines.append(json.dumps(record, sort_keys=True))
      io_utils.atomic_write_text(self.path, "\n".join(self._lines) + "\n")
    return record


def read_metrics(model_dir: str, split: str | None = None, filename: str = "metrics.jsonl") -> list:
  """Reads `metrics.jsonl` back as a list of dicts (optionally one split)."""
  path = os.path.join(model_dir, filename)
  out = []
  if not tf.io.gfile.exists(path):
    return out
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      line = line.strip()
      if line:
        rec = json.loads(line)
        if split is None or rec.get("split") == split:
          out.append(rec)
  return out
