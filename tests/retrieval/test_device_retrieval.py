"""Device-side retrieval (`retrieval/device_retrieval.py`) against the host path
(`pretrain_pipeline.RetrievalFeaturizer`): same candidates and packed arrays; sharded over 2
replicas (MirroredStrategy over the 2 virtual CPUs of conftest.py) equal to 1; XLA; bfloat16;
refresh."""
import collections

import realm_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import tokenization
from realm_tf2.data import pipeline_stats
from realm_tf2.data import pretrain_pipeline as pp
from realm_tf2.retrieval import block_store as bs
from realm_tf2.retrieval import device_retrieval as dr
from realm_tf2.retrieval import index as index_lib
from tests.retrieval import helpers
from tests.strategies import fresh_mirrored_strategy

K, Q, C, J, M = 4, 10, 16, 24, 2
N, D, B = 11, 8, 6  # N odd: 2 shards of 6 rows, the second with one padding row
CLS, SEP = helpers.CLS_ID, helpers.SEP_ID
PACKED = ("candidate_input_ids", "candidate_input_mask", "candidate_segment_ids",
          "joint_input_ids", "joint_input_mask", "joint_segment_ids")
Snapshot = collections.namedtuple("Snapshot", "version step wall_time query_embedder index")


class _FixedHolder:
  def __init__(self, snapshot):
    self.snapshot = snapshot

  def get(self):
    return self.snapshot


World = collections.namedtuple("World", "store emb queries")


def _world(seed=0):
  """11 blocks (block 7 repeats block 3's document), varied lengths (titles up to 15 > C-3, bodies
  up to 29 > J-3); 6 masked queries: 0/1 find their own block first, 2 is block 3's own document
  (also block 7), 3 retrieves blocks 3 and 7 (a repeated uid), 4/5 random, away from blocks 3/7."""
  rng = np.random.default_rng(seed)
  titles = [f"title {i}" for i in range(N)]
  bodies = [f"body {i} of the corpus" for i in range(N)]
  title_ids = [rng.integers(5, helpers.VOCAB_SIZE, rng.integers(0, 16)) for _ in range(N)]
  body_ids = [rng.integers(5, helpers.VOCAB_SIZE, rng.integers(0, 30)) for _ in range(N)]
  titles[7], bodies[7], title_ids[7], body_ids[7] = titles[3], bodies[3], title_ids[3], body_ids[3]
  title_ids[1] = rng.integers(5, helpers.VOCAB_SIZE, 15)  # a title that eats the whole body
  store = bs.BlockStore.from_arrays(title_ids, body_ids, titles=titles, bodies=bodies)
  # Dimension 0 belongs to blocks 3 and 7 alone; the other queries point away from it.
  emb = rng.normal(size=[N, D]).astype(np.float32)
  emb[:, 0] = 0
  emb[3] = np.concatenate([[5.0], 0.1 * rng.normal(size=D - 1)])
  emb[7] = 0.95 * emb[3]
  q_emb = rng.normal(size=[B, D]).astype(np.float32)
  q_emb[0], q_emb[1] = 3 * emb[0], 3 * emb[5]
  q_emb[[0, 1, 4, 5], 0] = -2.0
  q_emb[2] = q_emb[3] = np.concatenate([[3.0], 0.3 * rng.normal(size=D - 1)])
  sources = [(titles[0], bodies[0]), (titles[5], bodies[5]), (titles[3], bodies[3]),
             ("elsewhere", "a document not in the corpus"), ("x", "y"), (titles[9], bodies[9])]
  q_ids = np.zeros([B, Q], np.int32)
  q_mask = np.zeros([B, Q], np.int32)
  for i, n in enumerate([3, 10, 7, 5, 9, 4]):
    q_ids[i, :n] = np.concatenate([[CLS], rng.integers(5, helpers.VOCAB_SIZE, n - 2), [SEP]])
    q_mask[i, :n] = 1
  queries = {"emb": q_emb, "titles": [t.encode() for t, _ in sources],
             "texts": [x.encode() for _, x in sources], "ids": q_ids, "mask": q_mask}
  return World(store, emb, queries)


def _easy_world():
  """`_world` with small-integer embeddings (exact in bfloat16) and distinct, well-separated scores:
  dimension 0 ranks the blocks (16 apart), the rest adds at most +-6."""
  world = _world()
  rng = np.random.default_rng(5)
  emb = np.zeros([N, D], np.float32)
  emb[:, 0] = rng.permutation(N) - 5
  emb[:, 1:3] = rng.integers(-3, 4, size=[N, 2])
  q = np.zeros([B, D], np.float32)
  q[:, 0] = rng.choice([-16, 16], size=B)
  q[:, 1:3] = rng.integers(-1, 2, size=[B, 2])
  return World(world.store, emb, dict(world.queries, emb=q))


def _source_uids(queries):
  return dr.graph_doc_uid(tf.constant(queries["titles"]), tf.constant(queries["texts"])).numpy()


def _host(world, emb=None):
  """Host featurizer output per query (None where the host skips it) and the skip counts."""
  emb = world.emb if emb is None else emb
  index = index_lib.BruteForceIndex().build(emb)
  cfg = pp.PretrainInputConfig(num_candidates=K, max_masks=M, query_seq_len=Q, candidate_seq_len=C,
                               joint_seq_len=J)
  stats = pipeline_stats.PipelineStats()
  results = []
  q = world.queries
  for i in range(B):
    def embedder(feats, training=False, i=i):
      del feats, training
      return q["emb"][i:i + 1]
    featurizer = pp.RetrievalFeaturizer(_FixedHolder(Snapshot(1, 0, 0.0, embedder, index)),
                                        world.store, (CLS, SEP), cfg, stats)
    batch = {"skip_code": np.zeros([1], np.int32), "title": np.array([q["titles"][i]], object),
             "text": np.array([q["texts"][i]], object), "query_input_ids": q["ids"][i:i + 1],
             "query_input_mask": q["mask"][i:i + 1],
             "query_segment_ids": np.zeros_like(q["ids"][i:i + 1]),
             "mlm_positions": np.zeros([1, M], np.int32), "mlm_targets": np.zeros([1, M], np.int32),
             "mlm_mask": np.zeros([1, M], np.int32)}
    out = featurizer(batch)
    results.append({k: v[0] for k, v in out.items()} if len(out["index_version"]) else None)
  return results, stats.skipped


def _device_store(world, strategy=None, **kwargs):
  return dr.DeviceBlockStore(world.store, world.emb, candidate_seq_len=C, joint_seq_len=J,
                             cls_id=CLS, sep_id=SEP, strategy=strategy, **kwargs)


def _retrieve_one_replica(store, queries, jit=False, **kwargs):
  def fn(q, uid, ids, mask):
    return store.retrieve_candidates(q, uid, ids, mask, K, **kwargs)
  if jit:
    fn = tf.function(fn, jit_compile=True)
  out = fn(tf.constant(queries["emb"]), tf.constant(_source_uids(queries)),
           tf.constant(queries["ids"]), tf.constant(queries["mask"]))
  return {k: v.numpy() for k, v in out.items()}


def _retrieve_replicas(strategy, store, queries, **kwargs):
  """Global batch split over the replicas in order; per-replica outputs concatenated back."""
  r = strategy.num_replicas_in_sync
  b = B // r
  arrays = (queries["emb"], _source_uids(queries), queries["ids"], queries["mask"])
  inputs = strategy.experimental_distribute_values_from_function(
      lambda ctx: tuple(tf.constant(a[ctx.replica_id_in_sync_group * b:][:b]) for a in arrays))

  @tf.function
  def step(x):
    return strategy.run(lambda *a: store.retrieve_candidates(*a, K, **kwargs), args=x)

  out = step(inputs)
  return {k: np.concatenate([t.numpy() for t in strategy.experimental_local_results(v)])
          for k, v in out.items()}


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _assert_matches_host(device, host):
  """Every example the host keeps: same rows (order) and identical packed arrays."""
  kept = 0
  for i, h in enumerate(host):
    if h is None:
      continue
    kept += 1
    np.testing.assert_array_equal(device["block_rows"][i], h["retrieved_block_ids"], err_msg=str(i))
    for key in PACKED:
      np.testing.assert_array_equal(device[key][i], h[key], err_msg=f"{key} of example {i}")
    assert device["example_valid"][i] == 1 and device["candidate_valid"][i].all()
  return kept


# --------------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("seq_len", [3, 5, 9, 16, 40])
def test_pack_pair_dense_equals_bert_pack(seq_len):
  rng = np.random.default_rng(seq_len)
  lens = [(0, 0), (0, 7), (5, 0), (3, 4), (20, 3), (2, 30), (13, 13), (1, 1)]
  first = np.zeros([len(lens), 20], np.int32)
  second = np.zeros([len(lens), 30], np.int32)
  for i, (a, b) in enumerate(lens):
    first[i, :a] = rng.integers(5, 99, a)
    second[i, :b] = rng.integers(5, 99, b)
  got = dr.pack_pair_dense(first, [a for a, _ in lens], second, [b for _, b in lens], seq_len,
                           CLS, SEP)
  want = tokenization.bert_pack(
      [tf.ragged.constant([first[i, :a] for i, (a, _) in enumerate(lens)], dtype=tf.int32),
       tf.ragged.constant([second[i, :b] for i, (_, b) in enumerate(lens)], dtype=tf.int32)],
      seq_len, CLS, SEP)
  for key in ("input_ids", "input_mask", "segment_ids"):
    np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
  # second_mask marks exactly the kept `second` tokens.
  np.testing.assert_array_equal(got["second_mask"].numpy().sum(1), got["second_kept"].numpy())


def test_pack_pair_dense_broadcasts_first_over_candidates():
  first = np.array([[7, 8, 9, 0]], np.int32)[:, np.newaxis, :]  # [1, 1, 4]
  second = np.array([[[20, 21, 22], [30, 0, 0]]], np.int32)  # [1, 2, 3]
  out = dr.pack_pair_dense(first, [[3]], second, [[3, 1]], 8, CLS, SEP)
  np.testing.assert_array_equal(out["input_ids"].numpy()[0], [
      [CLS, 7, 8, 9, SEP, 20, 21, SEP],  # budget 8 - 3 = 5: the query's 3, then 2 of the body
      [CLS, 7, 8, 9, SEP, 30, SEP, 0]])
  np.testing.assert_array_equal(out["segment_ids"].numpy()[0, 1], [0, 0, 0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(out["second_start"].numpy(), [[5, 5]])


def test_select_candidates_drops_source_and_repeats_and_reports_missing():
  rows = tf.constant([[4, 9, 2, 7, 5], [1, 3, 0, -1, 12]], tf.int32)
  uids = tf.constant([[40, 90, 40, 70, 50], [10, 30, 10, -1, -1]], tf.int32)
  valid = tf.constant([[True] * 5, [True, True, True, False, False]])
  out = dr.select_candidates(rows, uids, valid, tf.constant([90, 30]), num_kept=3)
  # Row 0: 9 is the source, 2 repeats uid 40 -> 4, 7, 5. Row 1: 3 is the source, 0 repeats 1.
  np.testing.assert_array_equal(out["rows"].numpy(), [[4, 7, 5], [1, -1, -1]])
  np.testing.assert_array_equal(out["valid"].numpy(), [[1, 1, 1], [1, 0, 0]])
  np.testing.assert_array_equal(out["trivial_removed"].numpy(), [1, 1])
  np.testing.assert_array_equal(out["duplicates_removed"].numpy(), [1, 1])


def test_graph_uids_agree_between_pipeline_store_and_corpus(tmp_path):
  titles, bodies = helpers.random_blocks(5, seed=3)
  pattern = helpers.write_corpus(str(tmp_path / "corpus"), titles, bodies, num_shards=2)
  with_text = bs.BlockStore.from_retrieval_corpus(pattern, keep_text=True)
  from_store = dr.graph_uids_of_block_store(with_text)
  np.testing.assert_array_equal(dr.graph_uids_of_retrieval_corpus(pattern), from_store)
  # What the tf.data graph computes per pre-training record whose (title, text) is a block's.
  ds = tf.data.Dataset.from_tensor_slices(([f"title {i}" for i in range(5)],
                                           [f"body {i}" for i in range(5)]))
  in_graph = np.array(list(ds.map(dr.graph_doc_uid).as_numpy_iterator()))
  np.testing.assert_array_equal(in_graph, from_store)
  assert from_store.dtype == np.int32 and len(set(from_store.tolist())) == 5
  assert from_store.min() >= 0
  without_text = bs.BlockStore.from_retrieval_corpus(pattern)
  with pytest.raises(ValueError, match="keep_text=True"):
    dr.graph_uids_of_block_store(without_text)


def test_token_widths_are_what_the_layouts_can_use():
  world = _world()
  title_w, body_w = dr.token_widths(world.store, C, J)
  assert title_w == min(int(world.store.title_lengths().max()), C - 3) == 13
  assert body_w == min(int(world.store.body_lengths().max()), J - 3)
  store = _device_store(world)
  assert (store.title_width, store.body_width) == (title_w, body_w)


# --------------------------------------------------------------------------------------- one device


def test_one_device_equals_host_featurizer():
  world = _world()
  host, skipped = _host(world)
  # Queries 2 and 3 retrieve blocks 3 and 7 (one document twice): the host skips them.
  assert [h is None for h in host] == [False, False, True, True, False, False]
  assert skipped == {"duplicate_retrievals": 2}
  store = _device_store(world)
  device = _retrieve_one_replica(store, world.queries)
  assert device["candidate_input_ids"].shape == (B, K, C)
  assert device["joint_input_ids"].shape == (B, K, J)
  assert _assert_matches_host(device, host) == 4
  # Trivial retrievals removed where the source block ranked first.
  np.testing.assert_array_equal(device["trivial_removed"], [1, 1, 2, 0, 0, 0])
  # Where the host skips, the device fills from the spare slots: the source's two copies removed
  # (query 2); block 7 dropped as a repeat of block 3 (query 3).
  assert 3 not in device["block_rows"][2] and 7 not in device["block_rows"][2]
  assert device["block_rows"][3][1] == 3 and 7 not in device["block_rows"][3]
  assert device["duplicates_removed"][3] == 1
  np.testing.assert_array_equal(device["example_valid"], np.ones(B))
  np.testing.assert_array_equal(device["index_version"], np.zeros(B))


def test_one_device_compiles_with_xla():
  world = _world()
  store = _device_store(world, rows_per_chunk=4)  # 3 chunks: the running top-k merge in XLA too
  eager = _retrieve_one_replica(store, world.queries)
  _assert_same(_retrieve_one_replica(store, world.queries, jit=True), eager)
  _assert_same(_retrieve_one_replica(store, world.queries, jit=True, recall_target=0.95), eager)
  _assert_matches_host(eager, _host(world)[0])


def test_too_small_corpus_marks_missing_candidates_invalid():
  world = _world()
  small = bs.BlockStore.from_arrays([world.store.title(i) for i in range(2)],
                                    [world.store.body(i) for i in range(2)],
                                    titles=["title 0", "title 1"], bodies=["body 0 of the corpus",
                                                                           "body 1 of the corpus"])
  store = dr.DeviceBlockStore(small, world.emb[:2], candidate_seq_len=C, joint_seq_len=J,
                              cls_id=CLS, sep_id=SEP)
  out = _retrieve_one_replica(store, world.queries)
  # Query 0's source is block 0: one survivor; the others keep both blocks; K-1 = 3 needed.
  np.testing.assert_array_equal(out["candidate_valid"][0], [1, 1, 0, 0])
  np.testing.assert_array_equal(out["block_rows"][0], [-1, 1, -1, -1])
  np.testing.assert_array_equal(out["example_valid"], np.zeros(B))
  # An empty slot is packed as the null document: [CLS][SEP][SEP] / [CLS] q [SEP][SEP].
  np.testing.assert_array_equal(out["candidate_input_ids"][0, 3], out["candidate_input_ids"][0, 0])
  np.testing.assert_array_equal(out["joint_input_ids"][0, 3], out["joint_input_ids"][0, 0])


def test_bfloat16_block_emb_gives_the_float32_candidates():
  easy = _easy_world()
  queries = easy.queries
  f32 = _retrieve_one_replica(_device_store(easy), queries)
  bf16 = _retrieve_one_replica(_device_store(easy, emb_dtype=tf.bfloat16), queries)
  _assert_same(bf16, f32)
  assert _assert_matches_host(f32, _host(easy)[0]) == 4


# --------------------------------------------------------------------------------------- replicas


def test_two_replicas_equal_one_and_follow_refreshes():
  world = _world()
  one = _retrieve_one_replica(_device_store(world), world.queries)
  strategy = fresh_mirrored_strategy(2)
  sharded = _device_store(world, strategy=strategy)
  assert (sharded.num_replicas, sharded.shard_rows) == (2, 6)
  uids = sharded._vars["uids"]  # pylint: disable=protected-access
  shards = strategy.experimental_local_results(uids)
  np.testing.assert_array_equal(shards[1].numpy()[-1], dr.PAD_UID)  # row 11 is padding
  _assert_same(_retrieve_replicas(strategy, sharded, world.queries), one)
  _assert_same(_retrieve_replicas(strategy, sharded, world.queries, recall_target=0.95), one)
  chunked = _device_store(world, strategy=strategy, rows_per_chunk=4)
  assert chunked.shard_rows == 8  # ceil(11 / 2) = 6 rounded up to whole chunks of 4
  _assert_same(_retrieve_replicas(strategy, chunked, world.queries), one)

  # A refresh (between steps) changes the candidates; they follow the new embeddings exactly.
  new_emb = np.roll(world.emb, 4, axis=0)
  sharded.assign_block_emb(new_emb, index_version=2, index_step=30)
  after = _retrieve_replicas(strategy, sharded, world.queries)
  assert not np.array_equal(after["block_rows"], one["block_rows"])
  host_after, _ = _host(world, emb=new_emb)
  assert _assert_matches_host(after, host_after) == 6
  np.testing.assert_array_equal(after["index_version"], np.full(B, 2))
  np.testing.assert_array_equal(after["index_step"], np.full(B, 30))


def test_two_replicas_bfloat16():
  easy = _easy_world()
  queries = easy.queries
  strategy = fresh_mirrored_strategy(2)
  bf16 = _retrieve_replicas(strategy, _device_store(easy, strategy=strategy, emb_dtype=tf.bfloat16),
                            queries)
  _assert_same(bf16, _retrieve_one_replica(_device_store(easy), queries))


def test_wrong_shapes_are_rejected():
  world = _world()
  with pytest.raises(ValueError, match="block_emb has shape"):
    _device_store(World(world.store, world.emb[:5], world.queries))
  store = _device_store(world)
  with pytest.raises(ValueError, match="new block_emb has shape"):
    store.assign_block_emb(world.emb[:, :4])
  with pytest.raises(ValueError, match="block_uids"):
    _device_store(world, block_uids=np.zeros([3], np.int32))
