"""Distribution: per-host input sharding (2 simulated input pipelines), 1- vs 2-replica equivalence of
the REALM, ICT and ORQA train steps (MirroredStrategy over the 2 virtual CPUs of conftest.py), and the
ICT in-batch negatives gathered across replicas checked against NumPy.

Equivalence is exact up to float rounding because every model runs with dropout 0 and the per-replica
losses are means over equal-sized halves (the REALM batch has the same number of real masked tokens in
each half), so mean-of-replica-means == global mean and summed scaled gradients == global gradient.
"""
import os

import realm_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.data import pipeline_stats
from realm_tf2.data import pretrain_pipeline
from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher
from realm_tf2.tasks import ict_task
from realm_tf2.tasks import realm_task
from tests import tiny_fixtures
from tests.strategies import fresh_mirrored_strategy

K, Q, C, J, M = (tiny_fixtures.REALM_K, tiny_fixtures.REALM_Q, tiny_fixtures.REALM_C,
                 tiny_fixtures.REALM_J, tiny_fixtures.REALM_M)
GLOBAL_BATCH = 4


def _need_two_cpus():
  if len(tf.config.list_logical_devices("CPU")) < 2:
    pytest.skip("needs the 2 virtual CPUs configured by tests/conftest.py")


def _tiny_bert():
  return configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                            intermediate_size=37, dropout_rate=0.0, attention_dropout_rate=0.0)


def _optimizer():
  return optimization.create_optimizer(
      configs.OptimizerConfig(learning_rate=1e-3, num_warmup_steps=0), 100)


def _one_vs_two_replicas(task_fn, batch):
  """Runs one train step on the global batch with 1 replica and with 2; returns both results.

  Returns:
    (loss_1, weights_before, weights_1, loss_2, weights_2) with weights as lists of numpy arrays.
  """
  task1 = task_fn()
  model1 = task1.build_model()
  before = [v.numpy().copy() for v in model1.trainable_variables]
  opt1 = _optimizer()
  inputs = {k: tf.constant(v) for k, v in batch.items()}
  loss1 = float(tf.function(lambda x: task1.train_step(x, model1, opt1))(inputs)["loss"])
  after1 = [v.numpy() for v in model1.trainable_variables]

  strategy = fresh_mirrored_strategy(2)
  task2 = task_fn()
  with strategy.scope():
    model2 = task2.build_model()
    opt2 = _optimizer()
  for v, w in zip(model2.trainable_variables, before):
    v.assign(w)
  _copy_weights_nontrainable(model1, model2)
  dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
  features = next(iter(dist))

  @tf.function
  def step(x):
    logs = strategy.run(task2.train_step, args=(x, model2, opt2))
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["loss"], axis=None)

  loss2 = float(step(features))
  after2 = [v.numpy() for v in model2.trainable_variables]
  return loss1, before, after1, loss2, after2


def _copy_weights_nontrainable(src, dst):
  for a, b in zip(src.non_trainable_variables, dst.non_trainable_variables):
    b.assign(a)


def _assert_equivalent(loss1, before, after1, loss2, after2):
  assert np.isfinite(loss1)
  np.testing.assert_allclose(loss2, loss1, rtol=0, atol=1e-5)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(after1, before))
  assert moved > 1e-4, "the step did not change the weights; the comparison would be vacuous"
  for a1, a2 in zip(after1, after2):
    np.testing.assert_allclose(a2, a1, rtol=0, atol=1e-5)


# --- per-host input sharding ---------------------------------------------------------------------

def _pretrain_record(words, rng):
  sent = " ".join(rng.choice(words, 6)) + " ."
  span_word = sent.split(" ")[2]
  start = len(" ".join(sent.split(" ")[:2])) + 1

  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

  feats = {
      "title": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"t"])),
      "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sent.encode()])),
      "sentence_byte_start": ints([0]), "sentence_byte_limit": ints([len(sent)]),
      "span_byte_start": ints([start]), "span_byte_limit": ints([start + len(span_word)]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@pytest.fixture(scope="module")
def realm_inputs(tiny_vocab_file, tmp_path_factory):
  """5 GZIP shards x 6 records; a 12-block store; brute-force index; a constant query embedder."""
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  vocab = tokenization.load_vocab(tiny_vocab_file)
  words = [w for w in vocab if w.isalpha() and w.islower() and not w.startswith("#")]
  rng = np.random.default_rng(0)
  d = tmp_path_factory.mktemp("pretrain_shards")
  for s in range(5):
    with tf.io.TFRecordWriter(str(d / f"pretrain-{s:05d}-of-00005"), options="GZIP") as w:
      for _ in range(6):
        w.write(_pretrain_record(words, rng))
  store = block_store_lib.BlockStore.from_arrays(
      [rng.integers(5, len(vocab), 3).astype(np.int32) for _ in range(12)],
      [rng.integers(5, len(vocab), 9).astype(np.int32) for _ in range(12)])
  index = index_lib.BruteForceIndex()
  index.build(rng.standard_normal([12, 4]).astype(np.float32))
  embed = lambda f: np.ones([f["input_ids"].shape[0], 4], np.float32)  # noqa: E731
  holder = refresher.IndexHolder(refresher.IndexSnapshot(1, 0, 0.0, embed, index))
  return {"pattern": str(d / "pretrain-*"), "tok": tok, "store": store, "holder": holder,
          "vocab_file": tiny_vocab_file}


def _examples(ds):
  """Each example as a hashable key (its masked query ids + targets), per batch."""
  batches = []
  for b in ds:
    ids, targets = b["query_input_ids"].numpy(), b["mlm_targets"].numpy()
    batches.append([tuple(i) + tuple(t) for i, t in zip(ids, targets)])
  return batches


@pytest.mark.slow  # 3 REALM pipelines (py_function retrieval stage): minutes on 2 CPU cores.
def test_realm_per_host_input_sharding(realm_inputs):
  """2 input pipelines (hosts), 1 replica each: disjoint halves of the data, per-host batch = 2."""
  cfg = realm_task.RealmPretrainTaskConfig(vocab_file=realm_inputs["vocab_file"])
  cfg.model.bert = _tiny_bert()
  cfg.model.num_candidates, cfg.model.max_masks = K, M
  cfg.model.query_seq_len, cfg.model.candidate_seq_len, cfg.model.joint_seq_len = Q, C, J
  data = realm_task.RealmDataConfig(input_path=realm_inputs["pattern"],
                                    global_batch_size=GLOBAL_BATCH, is_training=False,
                                    deterministic=True, num_eval_shards=4, shuffle_buffer_size=0)
  task = realm_task.RealmTask(cfg)
  task.set_retrieval(realm_inputs["holder"], realm_inputs["store"])
  per_host = []
  for i in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                     num_replicas_in_sync=2)
    batches = _examples(task.build_inputs(data, ctx))
    assert batches and all(len(b) == GLOBAL_BATCH // 2 for b in batches)
    per_host.append([e for b in batches for e in b])
  single_batches = _examples(task.build_inputs(data))
  assert all(len(b) == GLOBAL_BATCH for b in single_batches)
  single = [e for b in single_batches for e in b]
  a, b = set(per_host[0]), set(per_host[1])
  assert len(a) == len(per_host[0]) and len(b) == len(per_host[1])  # no duplicates within a host
  assert not a & b  # disjoint shards
  # 4 eval shards x 6 records: each host reads 2 whole shards -> 12 examples -> 6 batches of 2.
  assert len(a) == len(b) == 12
  assert a | b == set(single)  # together the hosts see exactly the single-pipeline data


@pytest.mark.slow  # 2 ICT pipelines: over a minute on 2 CPU cores.
def test_ict_per_host_input_sharding(tiny_vocab_file, tmp_path):
  """ICT shards by record: the 2 pipelines get disjoint halves that together are all examples."""
  vocab = tokenization.load_vocab(tiny_vocab_file)
  rng = np.random.default_rng(1)
  path = str(tmp_path / "examples.tfr")
  n = 16
  with tf.io.TFRecordWriter(path) as w:
    for i in range(n):
      # A distinct title per record identifies the example in the packed block.
      feats = {"title_ids": [5 + i], "token_ids": rng.integers(30, len(vocab), 10).tolist(),
               "sentence_starts": [0, 4, 7]}
      feats = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=v)) for k, v in feats.items()}
      w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
  cfg = ict_task.IctTaskConfig(vocab_file=tiny_vocab_file)
  cfg.model.bert = _tiny_bert()
  cfg.model.ict_query_seq_len, cfg.model.ict_block_seq_len = 12, 24
  task = ict_task.IctTask(cfg)
  data = ict_task.IctDataConfig(input_path=path, global_batch_size=4, is_training=False,
                                deterministic=True, shuffle_buffer_size=0)
  hosts = []
  for i in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                     num_replicas_in_sync=2)
    titles = []
    for b in task.build_inputs(data, ctx):
      assert b["block_input_ids"].shape[0] == 2  # per-host batch = global / 2
      titles += b["block_input_ids"].numpy()[:, 1].tolist()  # [CLS] title ...
    hosts.append(titles)
  assert sorted(hosts[0] + hosts[1]) == list(range(5, 5 + n))  # every record exactly once
  assert set(hosts[0]) == set(range(5, 5 + n, 2)) and len(hosts[0]) == n // 2  # record sharding


# --- 1- vs 2-replica equivalence -----------------------------------------------------------------

def _realm_batch(vocab_size, seed=0):
  # The same number of real masked tokens in each replica's half (3 each).
  return tiny_fixtures.realm_batch(GLOBAL_BATCH, vocab_size, [[1, 1], [1, 0], [1, 0], [1, 1]],
                                   index_version=1, index_step=0, seed=seed)


def _realm_task_fn(vocab_file):
  def make():
    tf.keras.utils.set_random_seed(3)
    # XLA on: the production step (forward+backward under jit_compile=True) must agree across replicas.
    cfg = realm_task.RealmPretrainTaskConfig(vocab_file=vocab_file, jit_compile=True)
    cfg.model.bert = _tiny_bert()
    cfg.model.projection_size = 16
    cfg.model.embedder_dropout_rate = 0.0
    return realm_task.RealmTask(cfg)
  return make


@pytest.mark.slow  # XLA compile of 3 BERT towers for 1 and 2 replicas: minutes on 2 CPU cores.
def test_realm_step_one_vs_two_replicas(tiny_vocab_file):
  _need_two_cpus()
  vocab_size = len(tokenization.load_vocab(tiny_vocab_file))
  _assert_equivalent(*_one_vs_two_replicas(_realm_task_fn(tiny_vocab_file),
                                           _realm_batch(vocab_size)))


def _ict_task_fn(vocab_file):
  def make():
    tf.keras.utils.set_random_seed(4)
    cfg = ict_task.IctTaskConfig(vocab_file=vocab_file, jit_compile=False)
    cfg.model.bert = _tiny_bert()
    cfg.model.projection_size = 16
    cfg.model.embedder_dropout_rate = 0.0
    return ict_task.IctTask(cfg)
  return make


def _ict_batch(vocab_size, seed=0):
  rng = np.random.RandomState(seed)
  out = {}
  for prefix, t, real in (("query_", 8, 5), ("block_", 16, 12)):
    ids = rng.randint(5, vocab_size, size=[GLOBAL_BATCH, t]).astype(np.int32)
    mask = np.tile((np.arange(t) < real).astype(np.int32), [GLOBAL_BATCH, 1])
    out.update({prefix + "input_ids": ids * mask, prefix + "input_mask": mask,
                prefix + "segment_ids": np.zeros_like(ids)})
  out["mask_query"] = np.array([1, 0, 1, 1], np.int32)
  return out


@pytest.mark.slow  # the ICT step traced for 1 and 2 replicas: about a minute on 2 CPU cores.
def test_ict_step_one_vs_two_replicas(tiny_vocab_file):
  """The 2-replica ICT step scores every query against all 4 blocks (gathered) -> same update."""
  _need_two_cpus()
  vocab_size = len(tokenization.load_vocab(tiny_vocab_file))
  _assert_equivalent(*_one_vs_two_replicas(_ict_task_fn(tiny_vocab_file), _ict_batch(vocab_size)))


def test_ict_negatives_gathered_across_replicas():
  """Per replica: logits [b, b*R] against ALL replicas' blocks, labels offset by replica_id*b."""
  _need_two_cpus()
  from realm_tf2.modeling import losses
  rng = np.random.default_rng(5)
  q = rng.standard_normal([GLOBAL_BATCH, 3]).astype(np.float32)
  d = rng.standard_normal([GLOBAL_BATCH, 3]).astype(np.float32)
  strategy = fresh_mirrored_strategy(2)
  dist = next(iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors((q, d)))))

  @tf.function
  def run(x):
    out = strategy.run(lambda qd: losses.ict_loss(qd[0], qd[1]), args=(x,))
    return {k: strategy.experimental_local_results(v) for k, v in out.items()}

  out = run(dist)
  logits = np.concatenate([x.numpy() for x in out["logits"]])  # [4, 4]
  labels = np.concatenate([x.numpy() for x in out["labels"]])  # [4]
  np.testing.assert_allclose(logits, q @ d.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labels, [0, 1, 2, 3])
  shifted = logits - logits.max(1, keepdims=True)
  ce = -(shifted[np.arange(4), labels] - np.log(np.exp(shifted).sum(1)))  # [4]
  replica_losses = [float(x) for x in out["loss"]]
  np.testing.assert_allclose(replica_losses, [ce[:2].mean(), ce[2:].mean()], rtol=1e-5)


def _orqa_task_fn(world):
  from realm_tf2.tasks import orqa_task
  from tests.tasks import orqa_world

  def make():
    tf.keras.utils.set_random_seed(6)
    bert = configs.BertConfig(**orqa_world.BERT, dropout_rate=0.0, attention_dropout_rate=0.0)
    tc = orqa_world.task_config(world, bert=bert, embedder_dropout_rate=0.0)
    tc.jit_compile = True  # the production XLA step
    tc.optimizer = configs.OptimizerConfig(learning_rate=1e-3, num_warmup_steps=0)
    return orqa_task.OrqaTask(tc)
  return make


@pytest.mark.slow  # builds the tiny ORQA world (retriever export) + 2 traces.
def test_orqa_step_one_vs_two_replicas(tmp_path):
  _need_two_cpus()
  from realm_tf2.data import qa_pipeline
  from tests.tasks import orqa_world
  world = orqa_world.build_world(str(tmp_path / "world"))
  make = _orqa_task_fn(world)
  task = make()
  feats = qa_pipeline.QAFeaturizer(task.tokenizer, 8, 2, 4).featurize(
      [qa_pipeline.QAExample(q, a) for q, a in orqa_world.QA[:GLOBAL_BATCH]])
  _assert_equivalent(*_one_vs_two_replicas(make, dict(feats)))
