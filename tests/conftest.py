"""Shared test set-up: legacy Keras, two virtual CPU devices, tiny shared fixtures."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs so MirroredStrategy tests have two replicas. This must happen before any op runs.
_cpus = tf.config.list_physical_devices("CPU")
try:
  tf.config.set_logical_device_configuration(
      _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:
  pass  # Runtime already initialised (e.g. a plugin ran an op); tests needing 2 replicas skip.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _have_beam():
  try:
    import apache_beam  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def pytest_collection_modifyitems(config, items):
  """`beam`-marked tests need the `beam` extra, which lives in its own venv (protobuf < 7):
  scripts/run_beam_tests.sh runs them there; in a venv without Beam they are deselected (listed in
  the summary as deselected), whatever `-m` expression the caller passes."""
  if _have_beam():
    return
  keep = [item for item in items if item.get_closest_marker("beam") is None]
  if len(keep) != len(items):
    config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("beam")])
    items[:] = keep


@pytest.fixture(scope="session")
def tiny_vocab_file(tmp_path_factory):
  """A ~100-token WordPiece vocab shared by tests."""
  from tests import tiny_fixtures
  return tiny_fixtures.write_tiny_vocab(str(tmp_path_factory.mktemp("vocab") / "vocab.txt"))
