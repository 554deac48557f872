"""A corrupt newest training checkpoint is set aside at start-up and the run resumes from the
previous one (issue 8: corrupt checkpoint -> clear log line, training continues on the last good)."""
import logging
import os

import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2.training import checkpoint_guard


def _saves(model_dir, steps):
  v = tf.Variable(tf.zeros([64, 64]))
  step = tf.Variable(0, dtype=tf.int64)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v, global_step=step), model_dir,
                                       max_to_keep=5)
  for s in steps:
    v.assign(tf.fill([64, 64], float(s)))
    step.assign(s)
    manager.save(checkpoint_number=s)
  return v, step


def test_truncated_latest_checkpoint_is_quarantined_and_previous_restores(tmp_path, caplog):
  model_dir = str(tmp_path)
  v, step = _saves(model_dir, [10, 20, 30])
  data = tf.io.gfile.glob(os.path.join(model_dir, "ckpt-30.data-*"))[0]
  with open(data, "r+b") as f:
    f.truncate(100)  # killed mid-write
  with caplog.at_level(logging.ERROR):
    out = checkpoint_guard.quarantine_unreadable_checkpoints(model_dir)
  assert out == [os.path.join(model_dir, "ckpt-30")]
  assert "ckpt-30 is unreadable" in caplog.text and "falling back to" in caplog.text
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-20")
  assert sorted(os.listdir(os.path.join(model_dir, "corrupt_checkpoints"))) == [
      "ckpt-30.data-00000-of-00001", "ckpt-30.index"]
  tf.train.Checkpoint(v=v, global_step=step).restore(tf.train.latest_checkpoint(model_dir))
  assert int(step.numpy()) == 20 and float(v[0, 0]) == 20.0
  # A good newest checkpoint is left alone.
  assert checkpoint_guard.quarantine_unreadable_checkpoints(model_dir) == []
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-20")


def test_all_checkpoints_corrupt_or_missing_starts_fresh(tmp_path):
  model_dir = str(tmp_path)
  _saves(model_dir, [5, 6])
  for name in tf.io.gfile.glob(os.path.join(model_dir, "ckpt-6.index")):
    with open(name, "wb") as f:
      f.write(b"garbage")
  os.remove(os.path.join(model_dir, "ckpt-5.index"))  # files of the older one are gone
  out = checkpoint_guard.quarantine_unreadable_checkpoints(model_dir)
  assert len(out) == 1 and out[0].endswith("ckpt-6")
  assert tf.train.latest_checkpoint(model_dir) is None
  assert not os.path.exists(os.path.join(model_dir, "checkpoint"))
  assert checkpoint_guard.quarantine_unreadable_checkpoints(model_dir) == []  # no checkpoint: no-op
