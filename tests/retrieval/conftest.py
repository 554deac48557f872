"""Retrieval-test fixtures."""
import pytest

from tests.strategies import fresh_mirrored_strategy  # noqa: F401  (re-exported for the tests)


@pytest.fixture
def mirrored_strategy():
  return fresh_mirrored_strategy()
