"""Thread-safe counters of an input pipeline: records read, examples emitted, skips by reason, and
the retrieval-side timings (time blocked in `IndexHolder.get()`), readable by the task/driver."""
import collections
import threading
import time
from typing import Dict

import realm_tf2  # noqa: F401


class PipelineStats:
  """Counters shared between tf.data `py_function` threads and the training loop.

  Usage: `stats.add("records")`, `stats.skip("no_valid_spans")`, `stats.observe_wait(seconds)`,
  `stats.as_metrics()` -> flat dict of numbers (`skipped/<reason>`, `records`, `examples`, ...).
  """

  def __init__(self, name: str = "pipeline"):
    self.name = name
    self._lock = threading.Lock()
    self._counts = collections.Counter()
    self._skips = collections.Counter()
    self._max_wait = 0.0
    self._total_wait = 0.0
    self._last = {}
    self.start_time = time.time()
    # Record-index bookkeeping of `observe_record_indices` (malformed records dropped by tf.data).
    self._next_index = 0
    self._ahead = set()
    self._missing = set()
    self._unreported = collections.deque()  # missing indices, ascending, not yet settled

  def add(self, key: str, n: int = 1):
    with self._lock:
      self._counts[key] += int(n)

  def skip(self, reason: str, n: int = 1):
    if n:
      with self._lock:
        self._skips[reason] += int(n)

  def observe_record_indices(self, indices) -> int:
    """Counts records that vanished between `enumerate()` and here as `skipped/malformed_record`.

    The parse stage of a TFRecord pipeline cannot catch a malformed `tf.train.Example` (wrong
    feature type, missing required feature, offsets outside the text) inside the graph; it is dropped
    by `Dataset.ignore_errors(log_warning=True)` (which logs the parse error) and its index shows up
    here as a gap. Every index below the largest one seen that never arrived is counted (a late
    arrival, possible with non-deterministic parallel maps, is un-counted again). Returns the number
    newly counted.
    """
    indices = sorted(int(i) for i in indices)
    if not indices:
      return 0
    with self._lock:
      for i in indices:
        if i < self._next_index:
          if i in self._missing:  # reordered, not malformed
            self._missing.discard(i)
            self._skips["malformed_record"] -= 1
          continue
        self._ahead.add(i)
      new = 0
      while self._next_index <= indices[-1]:
        if self._next_index in self._ahead:
          self._ahead.discard(self._next_index)
        else:
          self._missing.add(self._next_index)
          self._unreported.append(self._next_index)
          new += 1
        self._next_index += 1
      if new:
        self._skips["malformed_record"] += new
      return new

  def settled_missing(self, lag: int = 4096) -> int:
    """Newly settled missing records: counted, still absent `lag` records later, not reported before.

    Pipelines log their missing-record warning with this number: a record that a non-deterministic
    parallel map merely delivers late arrives within far fewer than `lag` records (it is un-counted
    then and never reported), while every genuinely dropped record is reported once.
    """
    with self._lock:
      settled = 0
      while self._unreported and self._unreported[0] < self._next_index - lag:
        settled += self._unreported.popleft() in self._missing  # else it arrived late after all
      return settled

  def observe_wait(self, seconds: float):
    """Records time a pipeline thread spent blocked obtaining the index snapshot."""
    with self._lock:
      self._max_wait = max(self._max_wait, seconds)
      self._total_wait += seconds

  def set_last(self, **values):
    """Remembers the latest values of gauges (e.g. index version and snapshot step)."""
    with self._lock:
      self._last.update(values)

  def last(self, key, default=None):
    with self._lock:
      return self._last.get(key, default)

  @property
  def skipped(self) -> Dict[str, int]:
    with self._lock:
      return dict(self._skips)

  @property
  def counts(self) -> Dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def as_metrics(self, prefix: str = "") -> Dict[str, float]:
    """Flat numbers for metrics.jsonl: counts, `skipped_total`, `skipped/<reason>`, wait times (ms)."""
    with self._lock:
      out = {f"{prefix}{k}": v for k, v in self._counts.items()}
      out[f"{prefix}skipped_total"] = sum(self._skips.values())
      out.update({f"{prefix}skipped/{k}": v for k, v in self._skips.items()})
      out[f"{prefix}max_index_wait_ms"] = 1000.0 * self._max_wait
      out[f"{prefix}total_index_wait_ms"] = 1000.0 * self._total_wait
    return out

  def report(self) -> str:
    m = self.as_metrics()
    return f"{self.name}: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(m.items()))
