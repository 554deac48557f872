"""REALM task: model wiring checked against numpy, XLA train step under MirroredStrategy (2 virtual
CPUs), and init_utils round trips (export dir and training checkpoint roots)."""
import dataclasses
import os

import realm_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2 import optimization
from realm_tf2.modeling import init_utils
from realm_tf2.tasks import realm_task
from tests import tiny_fixtures
from tests.strategies import fresh_mirrored_strategy

K, Q, C, J, M = (tiny_fixtures.REALM_K, tiny_fixtures.REALM_Q, tiny_fixtures.REALM_C,
                 tiny_fixtures.REALM_J, tiny_fixtures.REALM_M)


def _task(vocab_file, jit=True):
  cfg = realm_task.RealmPretrainTaskConfig(vocab_file=vocab_file, jit_compile=jit)
  cfg.model.bert = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                                      intermediate_size=37, dropout_rate=0.0,
                                      attention_dropout_rate=0.0)
  cfg.model.projection_size = 16
  cfg.model.embedder_dropout_rate = 0.0
  return realm_task.RealmTask(cfg)


def _batch(batch_size, vocab_size, seed=0):
  return tiny_fixtures.realm_batch(batch_size, vocab_size, np.tile([[1, 0]], [batch_size, 1]),
                                   index_version=2, index_step=10, seed=seed)


def _log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_loss_matches_numpy(tiny_vocab_file):
  task = _task(tiny_vocab_file)
  model = task.build_model()
  vocab = model.bert.vocab_size
  batch = _batch(2, vocab)
  inputs = {k: tf.constant(v) for k, v in batch.items()}
  loss, logs = task.compute_loss(model, inputs, training=False)
  # Independent numpy computation from the towers called one by one.
  q = model.embedder({"input_ids": batch["query_input_ids"], "input_mask": batch["query_input_mask"],
                      "segment_ids": batch["query_segment_ids"]}).numpy()  # [B, D]
  marg, utils = [], []
  for b in range(2):
    d = model.embedder({"input_ids": batch["candidate_input_ids"][b],
                        "input_mask": batch["candidate_input_mask"][b],
                        "segment_ids": batch["candidate_segment_ids"][b]}).numpy()  # [K, D]
    cand_lp = _log_softmax(d @ q[b])  # [K]
    logits = model.bert({"input_ids": batch["joint_input_ids"][b],
                         "input_mask": batch["joint_input_mask"][b],
                         "segment_ids": batch["joint_segment_ids"][b],
                         "mlm_positions": np.tile(batch["mlm_positions"][b:b + 1], [K, 1])}
                        )["mlm_logits"].numpy()  # [K, M, V]
    gold = _log_softmax(logits)[:, 0, batch["mlm_targets"][b, 0]]  # only position 0 is real
    m = np.log(np.sum(np.exp(cand_lp + gold)))
    marg.append(m)
    utils.append(m - gold[0])
  np.testing.assert_allclose(loss.numpy(), -np.mean(marg), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logs["retrieval_utility"].numpy(), np.mean(utils), rtol=1e-4, atol=1e-5)
  assert logs["index_version"].numpy() == 2.0


@pytest.mark.slow  # XLA compile of 3 BERT towers x 2 replicas: minutes on 2 CPU cores.
def test_xla_train_step_mirrored(tiny_vocab_file):
  task = _task(tiny_vocab_file, jit=True)
  strategy = fresh_mirrored_strategy()
  with strategy.scope():
    model = task.build_model()
    opt = optimization.create_optimizer(configs.OptimizerConfig(learning_rate=1e-3,
                                                                num_warmup_steps=0), 10)
    metrics = task.build_metrics()
  batch = _batch(4, model.bert.vocab_size)
  ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
  it = iter(ds)

  @tf.function
  def step():
    return strategy.run(task.train_step, args=(next(it), model, opt, metrics))

  before = [v.numpy().copy() for v in model.embedder.projection.weights]
  losses = [float(strategy.reduce("MEAN", step()["loss"], axis=None)) for _ in range(3)]
  after = model.embedder.projection.weights
  assert all(np.isfinite(losses))
  assert not np.allclose(before[0], after[0].numpy())  # retrieval side gets gradients
  assert losses[-1] < losses[0]  # same batch thrice: the loss must go down
  assert {m.name for m in metrics} >= {"mlm_accuracy", "retrieval_utility", "index_version"}


def test_init_utils_roundtrip(tiny_vocab_file, tmp_path):
  from realm_tf2.export import bert_export, embedder_export
  task = _task(tiny_vocab_file, jit=False)
  src = task.build_model()
  # 1) From exports.
  emb_dir = embedder_export.export_embedder(src.embedder, tiny_vocab_file, True,
                                            str(tmp_path / "export/1/embedder"))
  bert_dir = bert_export.export_bert(src.bert, tiny_vocab_file, True, str(tmp_path / "export/1/bert"))
  dst = task.build_model()
  init_utils.init_embedder(dst.embedder, emb_dir)
  init_utils.init_knowledge_encoder(dst.bert, bert_dir)
  for a, b in zip(src.variables, dst.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # 2) From a REALM training checkpoint (root model/embedder) and an ICT-style one (root model).
  prefix = tf.train.Checkpoint(model=src).write(str(tmp_path / "run/ckpt-1"))
  ict_prefix = tf.train.Checkpoint(model=src.embedder).write(str(tmp_path / "ict/ckpt-1"))
  dst2 = task.build_model()
  assert init_utils.init_embedder(dst2.embedder, prefix) == "model/embedder"
  assert init_utils.init_knowledge_encoder(dst2.bert, prefix) == "model/bert"
  dst3 = task.build_model()
  assert init_utils.init_embedder(dst3.embedder, ict_prefix) == "model"
  for a, b, c in zip(src.variables, dst2.variables, dst3.embedder.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  np.testing.assert_array_equal(src.embedder.projection.kernel.numpy(),
                                dst3.embedder.projection.kernel.numpy())
  # A bare BertEncoderV2 (e.g. an ORQA reader's) from the bert export.
  enc = task.build_model().bert.encoder
  init_utils.init_bert_encoder(enc, bert_dir, donor_fns=(lambda: task.build_model().bert,))
  np.testing.assert_array_equal(enc.get_embedding_table().numpy(),
                                src.bert.encoder.get_embedding_table().numpy())
  # Wrong tower: an embedder cannot be initialised from a bert export.
  with pytest.raises(ValueError):
    init_utils.init_embedder(task.build_model().embedder, bert_dir)
  with pytest.raises(FileNotFoundError):
    init_utils.resolve_checkpoint(str(tmp_path / "nothing"))


def test_retriever_warmup_freezes_retriever_then_ramps_it_in(tiny_vocab_file, tmp_path):
  """task.retriever_warmup_steps: the retriever's learning rate is 0 for the first N optimizer steps
  (exactly frozen, weight decay included, while the encoder trains, under XLA), its Adam moments
  still track its gradients, and from step N its rate ramps up linearly."""
  task = _task(tiny_vocab_file, jit=True)
  task.task_config.retriever_warmup_steps = 2
  task.task_config.retriever_ramp_steps = 2
  model = task.build_model()
  opt = optimization.create_optimizer(configs.OptimizerConfig(learning_rate=1e-2, num_warmup_steps=0),
                                      10, variable_lr_schedules=task.variable_lr_schedules(model))
  ramp = task.variable_lr_schedules(model)[0][1]
  assert [float(ramp(i)) for i in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]
  batch = _batch(2, model.bert.vocab_size)
  step = tf.function(lambda: task.train_step(batch, model, opt))
  snap = lambda layer: [w.numpy().copy() for w in layer.weights]  # noqa: E731
  emb0, bert0 = snap(model.embedder), snap(model.bert)
  for _ in range(3):
    step()  # optimizer steps 0, 1, 2: multiplier 0
  emb1, bert1 = snap(model.embedder), snap(model.bert)
  assert all(np.array_equal(a, b) for a, b in zip(emb0, emb1))
  assert not all(np.array_equal(a, b) for a, b in zip(bert0, bert1))
  kernel = model.embedder.projection.kernel
  moment = opt._adam_v[opt._index_dict[opt._var_key(kernel)]]  # pylint: disable=protected-access
  assert np.any(moment.numpy() > 0)  # the frozen retriever's gradients reached the optimizer
  step()  # step 3: half rate
  assert not all(np.array_equal(a, b) for a, b in zip(emb1, snap(model.embedder)))
  # The schedules are not optimizer state: the checkpoint is the usual one and restores.
  prefix = tf.train.Checkpoint(model=model, optimizer=opt).write(str(tmp_path / "ckpt"))
  names = {n for n, _ in tf.train.list_variables(prefix)}
  assert not any("schedule" in n for n in names)
  fresh = task.build_model()
  fresh_opt = optimization.create_optimizer(configs.OptimizerConfig(learning_rate=1e-2), 10)
  tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).read(prefix).assert_existing_objects_matched()


def test_retriever_learning_rate_multiplier_scales_the_ramp_or_stands_alone(tiny_vocab_file):
  """task.retriever_learning_rate_multiplier: the ramp ends at the multiplier; without a warm-up it
  is a constant multiplier on the retriever only; 1.0 and no warm-up = no per-variable schedule;
  a non-positive value is a config error naming the field."""
  task = _task(tiny_vocab_file, jit=False)
  model = task.build_model()
  assert task.variable_lr_schedules(model) is None
  task.task_config.retriever_learning_rate_multiplier = 0.1
  ((variables, constant),) = task.variable_lr_schedules(model)
  assert {v.ref() for v in variables} == {v.ref() for v in model.embedder.trainable_variables}
  assert [round(float(constant(i)), 6) for i in (0, 100)] == [0.1, 0.1]
  task.task_config.retriever_warmup_steps, task.task_config.retriever_ramp_steps = 2, 2
  (_, ramp), = task.variable_lr_schedules(model)
  assert [round(float(ramp(i)), 6) for i in range(6)] == [0.0, 0.0, 0.0, 0.05, 0.1, 0.1]
  task.task_config.retriever_ramp_steps = 0
  (_, jump), = task.variable_lr_schedules(model)
  assert [round(float(jump(i)), 6) for i in range(4)] == [0.0, 0.0, 0.1, 0.1]
  task.task_config.retriever_learning_rate_multiplier = 0.0
  with pytest.raises(ValueError, match="retriever_learning_rate_multiplier"):
    task.variable_lr_schedules(model)


def test_retrieval_mode_is_checked(tiny_vocab_file):
  """task.retrieval must be host|device; device-mode settings are checked at start-up with messages
  naming the field; device-mode calls on a host task (or before the store is attached) fail
  clearly."""
  from realm_tf2.training import pretrain
  with pytest.raises(ValueError, match="task.retrieval"):
    realm_task.RealmTask(realm_task.RealmPretrainTaskConfig(vocab_file=tiny_vocab_file,
                                                            retrieval="accelerator"))
  cfg = realm_task.RealmPretrainTaskConfig(vocab_file=tiny_vocab_file, retrieval="device",
                                           mips="scann")
  cfg.device_retrieval.emb_dtype = "float16"
  cfg.device_retrieval.recall_target = 1.5
  problems = pretrain._device_retrieval_problems(cfg)  # pylint: disable=protected-access
  assert len(problems) == 3
  assert "task.mips=scann" in problems[0] and "emb_dtype" in problems[1]
  assert "recall_target" in problems[2]
  assert pretrain._device_retrieval_problems(  # pylint: disable=protected-access
      realm_task.RealmPretrainTaskConfig(retrieval="host", mips="scann")) == []
  host = _task(tiny_vocab_file, jit=False)
  with pytest.raises(ValueError, match="retrieval='device'"):
    host.set_device_retrieval(None)
  device = realm_task.RealmTask(dataclasses.replace(host.task_config, retrieval="device"))
  assert {m.name for m in device.build_metrics()} >= set(device.device_metric_names)
  assert not {m.name for m in host.build_metrics()} & set(device.device_metric_names)
  with pytest.raises(ValueError, match="set_device_retrieval"):
    device.retrieve(device.build_model(), {})
