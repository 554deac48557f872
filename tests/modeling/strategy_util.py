"""One 2-replica MirroredStrategy shared by the modeling tests (see tests/strategies.py)."""
import tensorflow as tf

from tests.strategies import fresh_mirrored_strategy

_STRATEGY = []


def two_device_strategy() -> tf.distribute.MirroredStrategy:
  if not _STRATEGY:
    _STRATEGY.append(fresh_mirrored_strategy())
  return _STRATEGY[0]
