"""MirroredStrategy for tests, safe to create several times in one pytest process.

Every MirroredStrategy in a process starts its collective group/instance keys at the same class-level
base, so a second strategy that re-uses an instance key with another shape fails ("Shape mismatch in the
collective instance"). The whole suite runs in one process and builds several strategies; production
builds one. Each strategy made here gets its own key base.
"""
import itertools

import pytest
import tensorflow as tf

_KEY_BASES = itertools.count(7_000_000, 100_000)


def fresh_mirrored_strategy(num_replicas: int = 2) -> tf.distribute.MirroredStrategy:
  """A MirroredStrategy over `num_replicas` virtual CPUs (skips the test if they do not exist)."""
  if len(tf.config.list_logical_devices("CPU")) < num_replicas:
    pytest.skip(f"needs {num_replicas} virtual CPUs")
  cls = tf.distribute.MirroredStrategy
  old = cls._collective_key_base  # pylint: disable=protected-access
  cls._collective_key_base = next(_KEY_BASES)  # pylint: disable=protected-access
  try:
    return cls([f"/cpu:{i}" for i in range(num_replicas)])
  finally:
    cls._collective_key_base = old  # pylint: disable=protected-access
