"""BlockStore: flat arrays, order, uids, texts, errors."""
import realm_tf2  # noqa: F401

import numpy as np
import pytest

from realm_tf2 import io_utils
from realm_tf2.retrieval import block_store as block_store_lib
from tests.retrieval import helpers


def test_from_retrieval_corpus_order_and_arrays(tmp_path):
  titles, bodies = helpers.random_blocks(23, seed=1)
  pattern = helpers.write_corpus(str(tmp_path / "c"), titles, bodies, num_shards=3)
  store = block_store_lib.BlockStore.from_retrieval_corpus(pattern, keep_text=True, batch_size=5)
  assert store.num_blocks == 23
  assert store.title_ids.dtype == np.int32 and store.title_offsets.dtype == np.int64
  for i in range(23):
    np.testing.assert_array_equal(store.title(i), titles[i])
    np.testing.assert_array_equal(store.body(i), bodies[i])
    assert store.text(i) == (f"title {i}", f"body {i}")
  np.testing.assert_array_equal(store.get_candidate_ids([[3, 0]]), [[1003, 1000]])
  total_tokens = sum(map(len, titles)) + sum(map(len, bodies))
  text_bytes = sum(len(f"title {i}") + len(f"body {i}") for i in range(23))
  assert store.nbytes == 4 * total_tokens + 8 * 2 * 24 + 8 * 23 + text_bytes + 8 * 2 * 24
  with pytest.raises(IndexError):
    store.get_candidate_ids([23])


def test_uid_recomputed_without_doc_uid(tmp_path):
  titles, bodies = helpers.random_blocks(4, seed=2)
  pattern = helpers.write_corpus(str(tmp_path / "c"), titles, bodies, num_shards=1, with_uid=False)
  store = block_store_lib.BlockStore.from_retrieval_corpus(pattern)
  assert store.uids[2] == io_utils.sha1_uid63("title 2", "body 2")
  with pytest.raises(ValueError, match="without raw texts"):
    store.text(0)


def test_from_arrays_and_bad_inputs(tmp_path):
  store = block_store_lib.BlockStore.from_arrays([[5, 6], []], [[7], [8, 9, 10]],
                                                 titles=["a", "b"], bodies=["x", "y"])
  np.testing.assert_array_equal(store.body_ids, [7, 8, 9, 10])
  np.testing.assert_array_equal(store.body_offsets, [0, 1, 4])
  assert store.uids[1] == io_utils.sha1_uid63("b", "y")
  with pytest.raises(FileNotFoundError):
    block_store_lib.BlockStore.from_retrieval_corpus(str(tmp_path / "none-*"))
  bad = tmp_path / "blocks-00000-of-00001"
  bad.write_bytes(b"not a gzip tfrecord")
  with pytest.raises(ValueError, match="blocks-00000-of-00001"):
    block_store_lib.BlockStore.from_retrieval_corpus(str(bad))
