"""Numerical faults: a NaN loss mid-run triggers Model Garden's blow-up recovery (restore the last
checkpoint), which realm-tf2 enables by default; a persistent NaN stops the run with a clear error."""
import math

import numpy as np
import pytest
import tensorflow as tf

from realm_tf2.tasks import ict_task
from realm_tf2.tasks import pretrain_experiments
from realm_tf2.training import driver
from realm_tf2.training import flags as flags_lib
from realm_tf2.training import metrics_log
from tests import tiny_fixtures
from tests.reliability import helpers as h


class PoisonedIctTask(ict_task.IctTask):
  """ICT whose loss gets `poison` added (0 normally, NaN while a test injects a fault)."""

  def __init__(self, params, **kwargs):
    super().__init__(params, **kwargs)
    self.poison = tf.Variable(0.0, trainable=False)

  def compute_loss(self, model, inputs, training):
    loss, logs = super().compute_loss(model, inputs, training)
    return loss + self.poison, logs


class InjectNanAction:
  """Train action: after the loop that ends at `at_step`, make the next loop's loss NaN."""

  def __init__(self, task, global_step, at_step, persistent=False):
    self.task, self.step, self.at, self.persistent = task, global_step, at_step, persistent
    self.injected = False

  def __call__(self, output):
    if not self.injected and int(self.step.numpy()) == self.at:
      self.task.poison.assign(float("nan"))
      self.injected = True
    elif self.injected and not self.persistent:
      self.task.poison.assign(0.0)


def _params(d, steps):
  params = pretrain_experiments.ict_experiment()
  # What run_pretrain/run_finetune apply to every experiment (flags.build_params).
  params.override({"trainer": {"recovery_max_trials": flags_lib.DEFAULT_RECOVERY_MAX_TRIALS}})
  params.override({
      "task": {"vocab_file": f"{d}/vocab.txt", "jit_compile": False,
               "model": {"ict_query_seq_len": 16, "ict_block_seq_len": 32, "projection_size": 16,
                         "bert": {"vocab_size": 0, "hidden_size": 32, "num_layers": 2,
                                  "num_attention_heads": 2, "intermediate_size": 37}},
               "optimizer": {"learning_rate": 1e-3, "num_warmup_steps": 1},
               "train_data": {"input_path": f"{d}/ex.tfr", "global_batch_size": 4,
                              "shuffle_buffer_size": 8},
               "validation_data": {"input_path": f"{d}/ex.tfr", "global_batch_size": 4}},
      "trainer": {"train_steps": steps, "steps_per_loop": 5, "checkpoint_interval": 5,
                  "summary_interval": 5, "validation_interval": 1000}})
  return params


def _setup(tmp_path):
  d = str(tmp_path)
  h.write_vocab(f"{d}/vocab.txt")
  h.write_ict_examples(f"{d}/ex.tfr", tiny_fixtures.tiny_vocab(), num_blocks=16)
  return d


def test_recovery_is_on_by_default():
  assert flags_lib.DEFAULT_RECOVERY_MAX_TRIALS >= 1
  assert pretrain_experiments.ict_experiment().trainer.loss_upper_bound == 1e6


def test_nan_loss_restores_last_checkpoint_and_training_continues(tmp_path):
  d = _setup(tmp_path)
  params = _params(d, steps=20)
  strategy = tf.distribute.get_strategy()
  task = PoisonedIctTask(params.task)
  trainer = driver.build_trainer(params, task, strategy, f"{d}/run", train=True, evaluate=False)
  inject = InjectNanAction(task, trainer.global_step, at_step=10)
  driver.run_experiment(params, task, f"{d}/run", "train", strategy, 4, train_actions=[inject],
                        trainer=trainer)
  assert inject.injected
  records = metrics_log.read_metrics(f"{d}/run", "train")
  losses = [(r["step"], r["training_loss"]) for r in records]
  # The loop 11..15 produced NaN (recorded visibly as the string "nan") ...
  assert (15, "nan") in losses, losses
  # ... recovery restored ckpt-10 (step back to 10), and training went on to the end with finite loss.
  after = [l for s, l in losses[losses.index((15, "nan")) + 1:]]
  assert after and all(isinstance(l, float) and math.isfinite(l) for l in after), losses
  assert int(trainer.global_step.numpy()) == 20
  for v in trainer.model.trainable_variables:
    assert np.all(np.isfinite(v.numpy())), v.name
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{d}/run"))
  assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 20


@pytest.mark.slow
def test_persistent_nan_stops_with_clear_error_after_max_trials(tmp_path):
  d = _setup(tmp_path)
  params = _params(d, steps=60)
  strategy = tf.distribute.get_strategy()
  task = PoisonedIctTask(params.task)
  trainer = driver.build_trainer(params, task, strategy, f"{d}/run", train=True, evaluate=False)
  inject = InjectNanAction(task, trainer.global_step, at_step=5, persistent=True)
  with pytest.raises(RuntimeError, match="NaN after training loop and it happens 4 times"):
    driver.run_experiment(params, task, f"{d}/run", "train", strategy, 4, train_actions=[inject],
                          trainer=trainer)
  # The last checkpoint on disk is still the good one from before the fault.
  assert h.checkpoint_steps(f"{d}/run")[-1] == 5
