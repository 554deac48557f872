"""SIGTERM (preemption) → checkpoint, then a clean exit.

Model Garden's own preemption support (`orbit.actions.SaveCheckpointIfPreempted`, built on
`tf.distribute.experimental.PreemptionCheckpointHandler`) only works when the strategy has a
`cluster_resolver` that receives the preemption notice (multi-worker / Cloud TPU pods). A single
host (CPU, one TPU VM, a preemptible VM's shutdown script) just gets SIGTERM, which by default
kills Python immediately and loses every step since the last periodic checkpoint. This module fills
that gap by hand: a signal handler only sets a flag (signal handlers must not touch TF state), and an
orbit train action — run by the controller after every train loop — sees the flag, saves a
checkpoint of the trainer's `tf.train.Checkpoint` through a `tf.train.CheckpointManager` on
`model_dir` (the same naming, `ckpt-<step>`, as the periodic ones, so a re-run resumes from it) and
stops the loop by raising `Preempted`. `driver.run_experiment` turns that into exit code 143
(128 + SIGTERM), so schedulers see "interrupted", not "done".
"""
import signal
import threading

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM.


class Preempted(Exception):
  """Raised by `SaveOnPreemptionAction` after the preemption checkpoint is written."""

  def __init__(self, step: int, path: str):
    super().__init__(f"preempted (SIGTERM) at step {step}; checkpoint {path}")
    self.step, self.path = step, path


class PreemptionWatcher:
  """Installs a SIGTERM handler that records the request (the main thread only).

  Args:
    signals: Signals treated as preemption notices.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._event = threading.Event()
    self._signals = tuple(signals)
    self._previous = {}

  def install(self) -> "PreemptionWatcher":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("preemption handler not installed: not on the main thread")
      return self
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def uninstall(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    # Only set a flag: the train loop is in the middle of TF work and saves at its next boundary.
    logging.warning("preemption: received signal %d; will checkpoint at the end of the current "
                    "train loop", signum)
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def request(self):
    """Simulates a preemption notice (tests, or an external notice source)."""
    self._event.set()


class SaveOnPreemptionAction:
  """Orbit train action: if preemption was requested, save `checkpoint` and raise `Preempted`.

  Args:
    watcher: The `PreemptionWatcher`.
    checkpoint: The trainer's `tf.train.Checkpoint` (global_step, model, optimizer).
    global_step: The trainer's step variable (checkpoint number).
    model_dir: Where the periodic checkpoints live.
    max_to_keep: As the run's CheckpointManager.
    on_save: Optional callable(step) run after the preemption checkpoint is written (the driver
      records a `split="preemption"` line in metrics.jsonl).
  """

  def __init__(self, watcher: PreemptionWatcher, checkpoint: tf.train.Checkpoint,
               global_step: tf.Variable, model_dir: str, max_to_keep: int = 5, on_save=None):
    self._watcher, self._checkpoint, self._step = watcher, checkpoint, global_step
    self._model_dir, self._max_to_keep, self._on_save = model_dir, max_to_keep, on_save

  def __call__(self, output):
    del output
    if not self._watcher.requested:
      return
    step = int(self._step.numpy())
    # A fresh manager reads the current `checkpoint` state file, so the periodic checkpoints the
    # run's own manager wrote stay listed (and garbage-collected) after this save.
    manager = tf.train.CheckpointManager(self._checkpoint, self._model_dir,
                                         max_to_keep=self._max_to_keep, step_counter=self._step)
    latest = manager.latest_checkpoint
    if latest and latest.endswith(f"-{step}"):
      path = latest  # the periodic save of this very step already happened
    else:
      path = manager.save(checkpoint_number=step)
    logging.warning("preemption: saved %s at step %d; stopping", path, step)
    if self._on_save is not None:
      self._on_save(step)
    raise Preempted(step, path)
