"""Retrieval-test fixtures."""
import itertools

import pytest
import tensorflow as tf

_KEY_BASES = itertools.count(7_000_000, 100_000)


def fresh_mirrored_strategy():
  """A 2-CPU MirroredStrategy whose collective keys cannot collide with other strategies'.

  Every MirroredStrategy in a process starts its collective group/instance keys at the same class-level
  base, so a second strategy re-using an instance key with another shape fails ("Shape mismatch in the
  collective instance"). Tests build several strategies in one process; production builds one.
  """
  if len(tf.config.list_logical_devices("CPU")) < 2:
    pytest.skip("needs 2 virtual CPUs")
  cls = tf.distribute.MirroredStrategy
  old = cls._collective_key_base  # pylint: disable=protected-access
  cls._collective_key_base = next(_KEY_BASES)  # pylint: disable=protected-access
  try:
    return cls(["/cpu:0", "/cpu:1"])
  finally:
    cls._collective_key_base = old  # pylint: disable=protected-access


@pytest.fixture
def mirrored_strategy():
  return fresh_mirrored_strategy()
