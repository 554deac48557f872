"""Start-up check of the newest training checkpoint: a corrupt one is set aside, not restored.

A preempted or crashed job can leave its newest `ckpt-N` truncated (a killed copy to GCS, a full
disk). TensorFlow's restore then fails deep in the run with a `DataLossError`, and re-running the
same command fails the same way forever. `quarantine_unreadable_checkpoints` reads every tensor of the
newest checkpoint (the same bytes a restore reads, with their CRC32C checks); if that fails it moves
`ckpt-N.*` into `model_dir/corrupt_checkpoints/`, rewrites the `checkpoint` state file to the
remaining checkpoints and tries the next newest, so the run resumes from the last good one.
Model Garden / orbit have no such check (their `CheckpointManager.restore_or_initialize` just raises).
"""
import os
import time
from typing import List, Optional

from absl import logging
import tensorflow as tf

CORRUPT_SUBDIR = "corrupt_checkpoints"


def checkpoint_is_readable(prefix: str) -> Optional[str]:
  """Returns None if every tensor of checkpoint `prefix` reads back, else the error message."""
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, OSError, IndexError) as e:  # IndexError: short read
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return None


def _abs(model_dir: str, prefix: str) -> str:
  return prefix if os.path.isabs(prefix) or "://" in prefix else os.path.join(model_dir, prefix)


def _files_of(prefix: str) -> List[str]:
  return tf.io.gfile.glob(prefix + ".index") + tf.io.gfile.glob(prefix + ".data-*")


def quarantine_unreadable_checkpoints(model_dir: str) -> List[str]:
  """Sets aside unreadable newest checkpoints of `model_dir`; returns the prefixes set aside.

  Stops at the first readable checkpoint (older ones are not read). With no checkpoint left, the
  `checkpoint` state file is removed and the run starts from scratch (logged as an error).
  """
  quarantined = []
  started = time.time()
  while True:
    state = tf.train.get_checkpoint_state(model_dir)
    latest = tf.train.latest_checkpoint(model_dir)
    if state is None or not state.model_checkpoint_path:
      return quarantined
    if latest is None:  # the state file names a checkpoint whose files are gone
      latest = _abs(model_dir, state.model_checkpoint_path)
      error = "its files are missing"
    else:
      error = checkpoint_is_readable(latest)
    if error is None:
      if quarantined:
        logging.warning("resuming from %s after setting aside %s", latest, quarantined)
      else:
        logging.info("checkpoint %s verified in %.1fs", latest, time.time() - started)
      return quarantined
    target_dir = os.path.join(model_dir, CORRUPT_SUBDIR)
    tf.io.gfile.makedirs(target_dir)
    for path in _files_of(latest):
      tf.io.gfile.rename(path, os.path.join(target_dir, os.path.basename(path)), overwrite=True)
    remaining = [p for p in state.all_model_checkpoint_paths
                 if p != state.model_checkpoint_path and tf.io.gfile.exists(_abs(model_dir, p) + ".index")]
    logging.error("checkpoint %s is unreadable (%s); moved its files to %s/ and falling back to %s",
                  latest, error, target_dir, remaining[-1] if remaining else "a fresh start")
    quarantined.append(latest)
    state_file = os.path.join(model_dir, "checkpoint")
    if remaining:
      tf.compat.v1.train.update_checkpoint_state(model_dir, remaining[-1],
                                                 all_model_checkpoint_paths=remaining)
    else:
      tf.io.gfile.remove(state_file)
      return quarantined
