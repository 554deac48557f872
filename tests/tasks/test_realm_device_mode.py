"""`task.retrieval=device` (issue 29): the device-mode pipeline + train step against host mode on
one device (same candidates, same packed inputs, same loss when both pick with the same query
embedder), and under MirroredStrategy over the 2 virtual CPUs of conftest.py with the index sharded
over the replicas (same loss and update as 1 replica, XLA forward/backward, refresh, a corpus of odd
size); bfloat16.

The world: 13 blocks (odd: 7 + 6 rows over 2 replicas) of tiny-vocab words; 8 pre-training records
of one sentence with one single-wordpiece salient span (one masked token each, so the mean loss of
two equal replica halves is the global mean), every third record being a block's own document
(trivial retrieval); one record without spans (a counted skip).
"""
import os

import realm_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.data import corpus_format
from realm_tf2.data import pipeline_stats
from realm_tf2.data import pretrain_pipeline as pp
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.retrieval import block_store as bs
from realm_tf2.retrieval import device_retrieval as dr
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher
from realm_tf2.tasks import realm_task
from tests.strategies import fresh_mirrored_strategy

K, Q, C, J, M = 4, 12, 16, 24, 2
NUM_BLOCKS, NUM_RECORDS, BATCH = 13, 8, 4
PACKED = ("candidate_input_ids", "candidate_input_mask", "candidate_segment_ids",
          "joint_input_ids", "joint_input_mask", "joint_segment_ids")


def _words(vocab_file):
  return [w for w in tokenization.load_vocab(vocab_file)
          if w.isalpha() and w.islower() and not w.startswith("#")]


def _pretrain_record(title, text, span_word):
  start = text.index(f" {span_word} ") + 1
  return corpus_format.pretrain_example(title, text, [(0, len(text))],
                                        [(start, start + len(span_word))], doc_uid=0)


@pytest.fixture(scope="module")
def world(tiny_vocab_file, tmp_path_factory):
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  words = _words(tiny_vocab_file)
  rng = np.random.default_rng(0)
  d = tmp_path_factory.mktemp("device_world")
  titles = [" ".join(rng.choice(words, int(rng.integers(1, 4)))) for _ in range(NUM_BLOCKS)]
  bodies = [" ".join(rng.choice(words, int(rng.integers(4, 20)))) + " ." for _ in range(NUM_BLOCKS)]
  os.makedirs(d / "corpus")
  with tf.io.TFRecordWriter(str(d / "corpus" / "blocks-00000-of-00001"), options="GZIP") as w:
    for i, (title, body) in enumerate(zip(titles, bodies)):
      w.write(corpus_format.realm_example(
          title, body, tok.tokenize_np([title])[0], tok.tokenize_np([body])[0],
          io_utils.sha1_uid63(title, body), i).SerializeToString())
  records = []
  for i in range(NUM_RECORDS):
    if i % 3 == 0:  # a block's own document: the host and the device must both drop that block
      title, text = titles[2 * i], bodies[2 * i]
    else:
      title, text = "gazette", " ".join(rng.choice(words, 8)) + " ."
    span = text.split()[2]
    records.append(_pretrain_record(title, text, span))
  records.insert(3, corpus_format.pretrain_example("x", "no spans here .", [(0, 15)], [], 0))
  with tf.io.TFRecordWriter(str(d / "pretrain-00000-of-00001"), options="GZIP") as w:
    for r in records:
      w.write(r.SerializeToString())
  store = bs.BlockStore.from_retrieval_corpus(str(d / "corpus" / "blocks-*"))
  uids = dr.graph_uids_of_retrieval_corpus(str(d / "corpus" / "blocks-*"))
  return {"tok": tok, "store": store, "uids": uids, "pretrain": str(d / "pretrain-00000-of-00001"),
          "vocab_file": tiny_vocab_file}


def _config(vocab_file, retrieval, jit, pick_with="live"):
  cfg = realm_task.RealmPretrainTaskConfig(vocab_file=vocab_file, jit_compile=jit,
                                           retrieval=retrieval)
  cfg.device_retrieval.pick_with = pick_with
  cfg.model.bert = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2,
                                      num_attention_heads=2, intermediate_size=37,
                                      dropout_rate=0.0, attention_dropout_rate=0.0)
  cfg.model.projection_size = 8
  cfg.model.embedder_dropout_rate = 0.0
  cfg.model.num_candidates, cfg.model.max_masks = K, M
  cfg.model.query_seq_len, cfg.model.candidate_seq_len, cfg.model.joint_seq_len = Q, C, J
  return cfg


def _input_config():
  return pp.PretrainInputConfig(num_candidates=K, max_masks=M, query_seq_len=Q,
                                candidate_seq_len=C, joint_seq_len=J, retrieval_batch_size=4,
                                deterministic=True, repeat=False, shuffle_buffer=0)


def _device_batches(world, batch=BATCH):
  ds = pp.build_device_pretrain_dataset(world["pretrain"], world["tok"], batch, _input_config())
  return [{k: tf.constant(v) for k, v in b.items()} for b in ds.as_numpy_iterator()]


def _host_batches(world, query_embedder, block_emb):
  index = index_lib.BruteForceIndex().build(block_emb)
  holder = refresher.IndexHolder(refresher.IndexSnapshot(3, 40, 0.0, query_embedder, index))
  stats = pipeline_stats.PipelineStats()
  ds = pp.build_pretrain_dataset(world["pretrain"], world["tok"], holder, world["store"], BATCH,
                                 _input_config(), stats)
  return [{k: tf.constant(v) for k, v in b.items()} for b in ds.as_numpy_iterator()], stats


def _device_store(world, block_emb, strategy=None, **kwargs):
  return dr.DeviceBlockStore(world["store"], block_emb, candidate_seq_len=C, joint_seq_len=J,
                             cls_id=world["tok"].cls_id, sep_id=world["tok"].sep_id,
                             block_uids=world["uids"], strategy=strategy, index_version=3,
                             index_step=40, **kwargs)


def _index_retrieving_the_sources(model, device_batches, query_embedder=None, seed=0):
  """A fixed index block_emb [13, D] with well-separated scores (no near-ties for float rounding to
  flip): Gaussian rows, except that the three source documents' blocks 0, 6, 12 get 10x, 20x and
  30x their record's query embedding (by `query_embedder`, default the model's), so every query
  retrieves them and the records whose document they are must drop them."""
  query_embedder = query_embedder or model.embedder
  queries = np.concatenate([query_embedder({"input_ids": b["query_input_ids"],
                                            "input_mask": b["query_input_mask"],
                                            "segment_ids": b["query_segment_ids"]}).numpy()
                            for b in device_batches], 0)  # [8, D]
  block_emb = 3 * np.random.default_rng(seed).standard_normal(
      [NUM_BLOCKS, queries.shape[1]]).astype(np.float32)  # [13, D]
  block_emb[[0, 6, 12]] = np.array([[10], [20], [30]], np.float32) * queries[[0, 3, 6]]
  return block_emb


def test_device_pipeline_has_the_host_queries_and_counts_every_record(world):
  batches = _device_batches(world, batch=1)
  assert len(batches) == NUM_RECORDS
  assert set(batches[0]) == set(pp.DEVICE_FEATURES)
  counts = np.sum([b["pipeline_counts"].numpy()[0] for b in batches], axis=0)
  named = dict(zip(pp.DEVICE_COUNT_KEYS, counts.tolist()))
  assert named == {"records": NUM_RECORDS + 1, "skipped/no_valid_spans": 1,
                   "skipped/no_masked_token": 0, "skipped/mask_out_of_range": 0,
                   "skipped/malformed_record": 0}
  # The skipped record (4th) is counted with the example after it.
  np.testing.assert_array_equal(batches[3]["pipeline_counts"].numpy()[0], [2, 1, 0, 0, 0])
  # Source uids: records 0, 3, 6 are blocks 0, 6, 12's documents.
  uids = [int(b["source_uid"].numpy()[0]) for b in batches]
  assert [uids[i] for i in (0, 3, 6)] == [int(world["uids"][j]) for j in (0, 6, 12)]
  assert all(b["mlm_mask"].numpy().sum() == 1 for b in batches)


def _snapshot_tower(cfg, seed):
  """A query tower with other (random) weights than the model's: the stale snapshot's."""
  tf.random.set_seed(seed)
  tower = embedder_lib.embedder_from_config(cfg.model, realm_task.vocab_size_of(cfg))
  ids = tf.zeros([1, Q], tf.int32)
  tower({"input_ids": ids, "input_mask": ids, "segment_ids": ids}, training=False)
  tower.trainable = False
  return tower


def test_device_mode_picks_the_host_candidates_and_gives_the_host_loss(world):
  """One device, fixed index, both pick with the same query embedder (the snapshot's tower, not the
  model's weights; dropout 0): identical candidates and packed inputs, loss within 1e-5 (both score
  with the live towers), also with the whole device step (embed -> retrieve -> pack -> towers ->
  loss and gradient) compiled by XLA."""
  host_task = realm_task.RealmTask(_config(world["vocab_file"], "host", jit=True))
  device_cfg = _config(world["vocab_file"], "device", jit=True, pick_with="snapshot")
  device_task = realm_task.RealmTask(device_cfg)
  model = host_task.build_model()
  snapshot_tower = _snapshot_tower(device_cfg, seed=7)
  device_batches = _device_batches(world)
  block_emb = _index_retrieving_the_sources(model, device_batches, snapshot_tower)
  host_batches, stats = _host_batches(world, snapshot_tower, block_emb)
  assert stats.skipped == {"no_valid_spans": 1}  # no duplicates, enough blocks: host skips nothing
  assert stats.counts["trivial_retrievals_removed"] == 3
  device_task.set_device_retrieval(_device_store(world, block_emb), snapshot_tower)
  assert len(host_batches) == len(device_batches) == NUM_RECORDS // BATCH
  trivial = 0
  for host, device in zip(host_batches, device_batches):
    picked = device_task.retrieve(model, device)
    np.testing.assert_array_equal(picked["block_rows"].numpy(), host["retrieved_block_ids"].numpy())
    for key in PACKED:
      np.testing.assert_array_equal(picked[key].numpy(), host[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(picked["example_valid"].numpy(), np.ones(BATCH))
    np.testing.assert_array_equal(picked["index_version"].numpy(), host["index_version"].numpy())
    trivial += int(picked["trivial_removed"].numpy().sum())
    host_loss, host_logs = host_task.compute_loss(model, host, training=True)
    device_loss, device_logs = device_task.compute_loss(model, device, training=True)
    np.testing.assert_allclose(device_loss.numpy(), host_loss.numpy(), rtol=0, atol=1e-5)
    for key in ("retrieval_utility", "mlm_accuracy", "null_doc_prob"):
      np.testing.assert_allclose(device_logs[key].numpy(), host_logs[key].numpy(), atol=1e-5)
    # The XLA programs: host = towers + loss + gradient; device = the same with retrieval inside.
    assert device_task.retrieval_in_compiled_step()
    host_grads, host_xla_loss, _ = host_task.gradient_fn()(model, host)
    grads, xla_loss, logs = device_task.gradient_fn()(model, device)
    np.testing.assert_allclose(xla_loss.numpy(), host_xla_loss.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(xla_loss.numpy(), host_loss.numpy(), rtol=0, atol=1e-5)
    for var, g_host, g in zip(model.trainable_variables, host_grads, grads):
      assert (g is None) == (g_host is None), var.name  # None: unused (e.g. the encoder's pooler)
      if g is not None:
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                                   tf.convert_to_tensor(g_host).numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=var.name)
    assert logs["device_counts"].shape == (len(realm_task.DEVICE_COUNT_KEYS),)
  assert trivial == 3


def test_device_train_step_counts_and_weights_examples(world):
  """The step's counters (records, skips, examples, trivial removals) reach
  `device_pipeline_metrics`; an example without K candidates weighs 0 in the loss."""
  task = realm_task.RealmTask(_config(world["vocab_file"], "device", jit=False))
  model = task.build_model()
  batches = _device_batches(world)
  task.set_device_retrieval(_device_store(world, _index_retrieving_the_sources(model, batches)))
  opt = optimization.create_optimizer(configs.OptimizerConfig(learning_rate=1e-3), 10)
  step = tf.function(lambda x: task.train_step(x, model, opt))
  trivial = 0
  for batch in batches:
    logs = step(batch)
    assert "device_counts" not in logs and np.isfinite(logs["loss"].numpy())
    trivial += int(round(float(logs["trivial_removed"]) * BATCH))
  metrics = task.device_pipeline_metrics("pipeline/")
  assert metrics["pipeline/records"] == NUM_RECORDS + 1
  assert metrics["pipeline/examples"] == NUM_RECORDS
  assert metrics["pipeline/skipped/no_valid_spans"] == 1
  assert metrics["pipeline/skipped_total"] == 1
  assert metrics["pipeline/trivial_retrievals_removed"] == trivial > 0
  # Weighting: the same batch with example 0 marked invalid = the loss of examples 1..3 alone.
  batch = task.retrieve(model, _device_batches(world)[0])
  loss_all, _ = task.compute_loss(model, batch, training=False)
  invalid = dict(batch, example_valid=tf.constant([0, 1, 1, 1], tf.int32))
  loss_weighted, _ = task.compute_loss(model, invalid, training=False)
  rest = {k: v[1:] for k, v in batch.items()}
  loss_rest, _ = task.compute_loss(model, rest, training=False)
  np.testing.assert_allclose(loss_weighted.numpy(), loss_rest.numpy(), rtol=1e-6)
  assert abs(float(loss_weighted - loss_all)) > 1e-6


def test_two_replicas_equal_one_with_xla_refresh_and_odd_corpus(world):
  """MirroredStrategy over 2 virtual CPUs, block_emb sharded 7 + 6 rows (13 blocks): one XLA train
  step gives the 1-replica loss and weights; then a refresh (assign new block_emb) changes the
  candidates."""
  cfg = _config(world["vocab_file"], "device", jit=True)
  one_task = realm_task.RealmTask(cfg)
  model1 = one_task.build_model()
  block_emb = _index_retrieving_the_sources(model1, _device_batches(world))
  one_task.set_device_retrieval(_device_store(world, block_emb))
  batch = _device_batches(world)[0]
  before = [v.numpy().copy() for v in model1.trainable_variables]
  rows_one = one_task.retrieve(model1, batch)["block_rows"].numpy()

  def optimizer():
    return optimization.create_optimizer(configs.OptimizerConfig(learning_rate=1e-3,
                                                                 num_warmup_steps=0), 100)

  opt1 = optimizer()
  loss1 = float(tf.function(lambda x: one_task.train_step(x, model1, opt1))(batch)["loss"])
  after1 = [v.numpy() for v in model1.trainable_variables]

  strategy = fresh_mirrored_strategy(2)
  two_task = realm_task.RealmTask(cfg)
  with strategy.scope():
    model2 = two_task.build_model()
    opt2 = optimizer()
  for v, w in zip(model2.trainable_variables, before):
    v.assign(w)
  store2 = _device_store(world, block_emb, strategy=strategy)
  assert (store2.num_replicas, store2.shard_rows) == (2, 7)
  two_task.set_device_retrieval(store2)
  numpy_batch = {k: v.numpy() for k, v in batch.items()}
  features = next(iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(numpy_batch))))

  @tf.function
  def step(x):
    logs = strategy.run(two_task.train_step, args=(x, model2, opt2))
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["loss"], axis=None)

  @tf.function
  def retrieve(x):
    return strategy.run(lambda b: two_task.retrieve(model2, b)["block_rows"], args=(x,))

  def rows(x):
    return np.concatenate([t.numpy() for t in strategy.experimental_local_results(retrieve(x))])

  rows_before = rows(features)
  np.testing.assert_array_equal(rows_before, rows_one)
  with strategy.scope():
    assert not two_task.retrieval_in_compiled_step()  # the search runs before the XLA program
  loss2 = float(step(features))
  after2 = [v.numpy() for v in model2.trainable_variables]
  np.testing.assert_allclose(loss2, loss1, rtol=0, atol=1e-5)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(after1, before))
  assert moved > 1e-4
  for a1, a2 in zip(after1, after2):
    np.testing.assert_allclose(a2, a1, rtol=0, atol=1e-5)
  counts = two_task.device_pipeline_metrics()
  assert counts["examples"] == BATCH and counts["records"] == BATCH + 1

  # A refresh between steps: new, well-separated embeddings (scores far apart, so the 1e-5 weight
  # difference of the two models cannot flip a rank) -> other candidates, as with 1 replica.
  new_emb = 10 * np.random.default_rng(1).standard_normal(block_emb.shape).astype(np.float32)
  store2.assign_block_emb(new_emb, index_version=4, index_step=50)
  one_task.device_store.assign_block_emb(new_emb, index_version=4, index_step=50)
  rows_after = rows(features)
  assert not np.array_equal(rows_after, rows_before)
  # model1 moved by the same step as model2: the 1-replica search over the new embeddings agrees.
  np.testing.assert_array_equal(rows_after, one_task.retrieve(model1, batch)["block_rows"].numpy())


def test_bfloat16_device_step_is_one_xla_program(world):
  """Mixed bfloat16 towers and a bfloat16 block_emb: the whole device step (retrieval included)
  compiles with XLA, runs, and picks the float32 index's candidates on this well-separated index."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  cfg = _config(world["vocab_file"], "device", jit=True)
  batches = _device_batches(world)
  batch = batches[0]
  float_task = realm_task.RealmTask(cfg)
  float_model = float_task.build_model()
  block_emb = _index_retrieving_the_sources(float_model, batches)
  float_task.set_device_retrieval(_device_store(world, block_emb))
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    task = realm_task.RealmTask(cfg)
    model = task.build_model()
    model(float_task.retrieve(float_model, batch))  # builds the bfloat16 model's variables
    for v, w in zip(model.weights, float_model.weights):
      v.assign(w)
    task.set_device_retrieval(_device_store(world, block_emb, emb_dtype=tf.bfloat16))
    assert task.retrieval_in_compiled_step()
    opt = optimization.create_optimizer(configs.OptimizerConfig(learning_rate=1e-3), 10)
    logs = tf.function(lambda x: task.train_step(x, model, opt))(batch)
    assert np.isfinite(float(logs["loss"]))
    rows = task.retrieve(model, batch)["block_rows"].numpy()
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  # The source blocks (0, 6) score 10|q|^2: found and dropped under bfloat16 as under float32.
  np.testing.assert_array_equal(rows[:, 0], -1)
  assert 0 not in rows[0] and 6 not in rows[3]


def test_index_swap_loads_the_snapshot_query_tower_and_embeddings(world, tmp_path):
  """`DeviceIndexSwap` with `pick_with="snapshot"` (training/pretrain.py wiring): the current
  snapshot's query tower is loaded at start; a newer snapshot (a Keras embedder from the internal
  refresher, or an embedder export from the external one) replaces both the picking tower's weights
  and `block_emb` between loops; the picks follow them."""
  from realm_tf2.export import embedder_export  # pylint: disable=g-import-not-at-top
  from realm_tf2.training import pretrain  # pylint: disable=g-import-not-at-top
  cfg = _config(world["vocab_file"], "device", jit=False, pick_with="snapshot")
  task = realm_task.RealmTask(cfg)
  model = task.build_model()
  batch = _device_batches(world)[0]
  towers = [_snapshot_tower(cfg, seed) for seed in (1, 2, 3)]
  embs = [_index_retrieving_the_sources(model, _device_batches(world), t, seed=i)
          for i, t in enumerate(towers)]
  holder = refresher.IndexHolder(refresher.IndexSnapshot(
      3, 40, 0.0, towers[0], dr.BlockEmbeddings(embs[0]), source="init"))
  store = _device_store(world, embs[0])  # index version 3, step 40
  picker = pretrain.build_pick_embedder(
      type("P", (), {"task": cfg})(), tf.distribute.get_strategy(),
      lambda: embedder_lib.embedder_from_config(cfg.model, realm_task.vocab_size_of(cfg)))
  task.set_device_retrieval(store, picker)
  swap = dr.DeviceIndexSwap(
      holder, store, load_query_tower=lambda s: pretrain.load_snapshot_query_tower(picker, s, Q))

  def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))

  def picks():
    return task.retrieve(model, batch)["block_rows"].numpy()

  assert same_weights(picker, towers[0]) and not swap()  # nothing newer yet
  rows = [picks()]
  # Internal refresher: a Keras snapshot embedder.
  holder.swap(refresher.IndexSnapshot(4, 50, 1.0, towers[1], dr.BlockEmbeddings(embs[1]),
                                      source="ckpt-50"))
  assert swap() and same_weights(picker, towers[1])
  assert (swap.version, swap.step, int(store.index_version.numpy())) == (4, 50, 4)
  rows.append(picks())
  # External refresher: export/encoded/<step>/embedder (a SavedModel) with its encoded.ckpt.
  snapshot_dir = str(tmp_path / "export" / "encoded" / "100")
  embedder_export.export_embedder(towers[2], world["vocab_file"], True,
                                  os.path.join(snapshot_dir, "embedder"))
  holder.swap(refresher.IndexSnapshot(5, 100, 2.0, tf.saved_model.load(
      os.path.join(snapshot_dir, "embedder")), dr.BlockEmbeddings(embs[2]), source=snapshot_dir))
  assert swap() and same_weights(picker, towers[2]) and swap.swaps == 2
  rows.append(picks())
  # Each snapshot's tower + index drops the record's own block (0 for example 0, 6 for example 3).
  for r in rows:
    assert 0 not in r[0] and 6 not in r[3]
  assert not np.array_equal(rows[0], rows[1]) or not np.array_equal(rows[1], rows[2])
