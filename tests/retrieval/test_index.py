"""MIPS index tests: exact top-k vs NumPy, chunked merge, bf16 path, sharding, ScaNN, save/load."""
import realm_tf2  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from realm_tf2.retrieval import index as index_lib


def _data(n=1000, d=16, b=7, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32))


def _exact(emb, q, k):
  scores = q.astype(np.float64) @ emb.astype(np.float64).T
  ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return ids, np.take_along_axis(scores, ids, 1)


def _clustered(n, d, seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(max(8, n // 1000), d)).astype(np.float32)
  emb = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.normal(size=(n, d))
  return emb.astype(np.float32)


@pytest.mark.parametrize("kwargs", [
    dict(),  # one chunk
    dict(rows_per_chunk=97, query_batch_size=3),  # ragged last chunk, running merge, query batches
    dict(rows_per_chunk=128, use_bfloat16=True),  # bf16 scoring + exact float32 rescore
    dict(rows_per_chunk=250, jit_compile=True),  # XLA
])
def test_brute_force_equals_numpy(kwargs):
  emb, q = _data()
  ids, scores = index_lib.BruteForceIndex(**kwargs).build(emb).search(q, 10)
  want_ids, want_scores = _exact(emb, q, 10)
  assert ids.dtype == np.int32 and scores.dtype == np.float32 and ids.shape == (7, 10)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_merge_top_k_hand_computed():
  s, i = index_lib.merge_top_k(tf.constant([[5., 1.]]), tf.constant([[10, 11]]),
                               tf.constant([[3., 7.]]), tf.constant([[20, 21]]), 3)
  np.testing.assert_array_equal(i.numpy(), [[21, 10, 20]])
  np.testing.assert_array_equal(s.numpy(), [[7., 5., 3.]])


def test_brute_force_inside_xla_function():
  emb, q = _data(n=300)
  index = index_lib.BruteForceIndex(rows_per_chunk=64).build(emb)

  @tf.function(jit_compile=True)
  def step(x):
    return index.search_tensors(x * 1.0, 4)

  ids, _ = step(tf.constant(q))
  np.testing.assert_array_equal(ids.numpy(), _exact(emb, q, 4)[0])


@pytest.mark.parametrize("use_bf16", [False, True])
def test_sharded_brute_force_mirrored(use_bf16, mirrored_strategy):
  strategy = mirrored_strategy
  emb, q = _data(n=1001)
  index = index_lib.BruteForceIndex(rows_per_chunk=100, strategy=strategy,
                                    use_bfloat16=use_bf16).build(emb)
  ids, scores = index.search(q, 8)
  want_ids, want_scores = _exact(emb, q, 8)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  # Both shards contribute winners (rows of shard 1 start at 501).
  assert (ids >= 501).any() and (ids < 501).any()


def test_brute_force_save_load_and_checkpoint_key(tmp_path):
  emb, q = _data()
  index = index_lib.BruteForceIndex(rows_per_chunk=300).build(emb)
  index.save(str(tmp_path / "bf"))
  loaded = index_lib.load_index(str(tmp_path / "bf"))
  assert isinstance(loaded, index_lib.BruteForceIndex) and loaded.num_rows == 1000
  np.testing.assert_array_equal(loaded.search(q, 5)[0], index.search(q, 5)[0])
  # Payload is a plain `block_emb` checkpoint.
  got = tf.train.load_checkpoint(str(tmp_path / "bf" / "emb.ckpt")).get_tensor("block_emb")
  np.testing.assert_array_equal(got, emb)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_bad_query_shape_and_k():
  emb, q = _data(n=20)
  index = index_lib.BruteForceIndex().build(emb)
  with pytest.raises(ValueError, match=r"\[B, 16\]"):
    index.search(q[:, :3], 2)
  with pytest.raises(ValueError, match="k must be"):
    index.search(q, 21)


def test_scann_settings_rules():
  assert index_lib.scann_settings_for(10000)["scoring"] == "brute_force"
  s = index_lib.scann_settings_for(50000)
  assert s["scoring"] == "ah" and s["num_leaves"] == 0 and s["reorder"] > 0
  s = index_lib.scann_settings_for(1000000)
  assert s["num_leaves"] == 1000 and s["anisotropic_quantization_threshold"] == 0.2
  assert index_lib.scann_settings_for(1000000, num_leaves=7)["num_leaves"] == 7
  with pytest.raises(ValueError, match="unknown ScaNN setting"):
    index_lib.scann_settings_for(10, spherical=True)


@pytest.mark.parametrize("backend", ["pybind", "tf"])
def test_scann_small_exact_and_round_trip(tmp_path, backend):
  emb = _clustered(30000, 32, seed=1)  # AH + reorder branch
  q = emb[:50] + 0.1
  index = index_lib.ScannIndex(backend=backend).build(emb)
  ids, scores = index.search(q, 8)
  want_ids, _ = _exact(emb, q, 8)
  recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(ids, want_ids)])
  assert recall >= 0.95, recall
  # Reordering makes returned scores exact inner products.
  np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", q, emb[ids]), rtol=1e-4, atol=1e-3)
  index.save(str(tmp_path / "scann"))
  loaded = index_lib.load_index(str(tmp_path / "scann"))
  assert loaded.num_rows == 30000 and loaded.backend == backend
  np.testing.assert_array_equal(loaded.search(q, 8)[0], ids)


@pytest.mark.slow
def test_scann_recall_100k():
  emb = _clustered(100000, 128, seed=3)
  rng = np.random.default_rng(4)
  q = (emb[rng.integers(0, 100000, 200)] + 0.5 * rng.normal(size=(200, 128))).astype(np.float32)
  index = index_lib.ScannIndex().build(emb)
  assert index.settings["num_leaves"] == 316
  ids, _ = index.search(q, 8)
  want_ids = index_lib.BruteForceIndex().build(emb).search(q, 8)[0]
  recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(ids, want_ids)])
  assert recall >= 0.95, recall
  # Search-time overrides take effect without a rebuild: 1 leaf of 316 loses recall.
  ids1, _ = index.set_search_params(num_leaves_to_search=1, reorder=8).search(q, 8)
  assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(ids1, want_ids)]) < recall


def test_index_factory_kinds_auto_threshold_and_saved_index(tmp_path):
  assert index_lib.resolve_mips("auto", index_lib.AUTO_SCANN_MIN_ROWS - 1) == "brute_force"
  assert index_lib.resolve_mips("auto", index_lib.AUTO_SCANN_MIN_ROWS) == "scann"
  assert index_lib.resolve_mips("scann", 10) == "scann"
  with pytest.raises(ValueError, match="mips must be one of"):
    index_lib.IndexFactory("faiss")
  emb = _clustered(2000, 16, seed=2)  # easy: ScaNN scores small corpora exactly
  q = emb[:20] + 0.05
  bf = index_lib.IndexFactory("brute_force")(emb)
  factory = index_lib.IndexFactory("scann", {"reorder": None, "scoring": "brute_force"})
  sc = factory(emb)
  assert bf.kind == "brute_force" and sc.kind == "scann" and sc.settings["scoring"] == "brute_force"
  np.testing.assert_array_equal(sc.search(q, 8)[0], bf.search(q, 8)[0])  # same top-k
  sc.save(str(tmp_path / "index"))
  loaded = factory.load_or_build(str(tmp_path / "index"), emb)
  assert loaded is not sc and loaded.kind == "scann" and loaded.num_rows == 2000
  # A saved index of another kind, or of other rows, is not used: the factory builds anew.
  assert index_lib.IndexFactory("brute_force").load_or_build(str(tmp_path / "index"), emb).kind == \
      "brute_force"
  assert factory.load_or_build(str(tmp_path / "index"), emb[:1000]).num_rows == 1000
  assert factory.load_or_build(str(tmp_path / "missing"), emb).num_rows == 2000
