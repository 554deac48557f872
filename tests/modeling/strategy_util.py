"""One 2-replica MirroredStrategy per test process (several instances in one process can clash in
collective ops), shared by the modeling tests."""
import pytest
import tensorflow as tf

_STRATEGY = []


def two_device_strategy() -> tf.distribute.MirroredStrategy:
  if len(tf.config.list_logical_devices("CPU")) < 2:
    pytest.skip("needs 2 virtual CPUs")
  if not _STRATEGY:
    _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
  return _STRATEGY[0]
