"""Experiment configs of pre-training, registered with Model Garden's `exp_factory`:
`realm/ict` (ORQA ICT, original §3.2) and `realm/pretrain` (REALM, original §1.9)."""
import realm_tf2  # noqa: F401

from official.core import config_definitions as cfg
from official.core import exp_factory
from realm_tf2.tasks import ict_task
from realm_tf2.tasks import realm_task


@exp_factory.register_config_factory("realm/ict")
def ict_experiment() -> cfg.ExperimentConfig:
  """ICT defaults of the original: batch 4096, 100k steps, lr 1e-4, warmup 10k, ckpt every 1000,
  query 64 / block 288, projection 128 with the Keras LayerNorm epsilon 1e-3."""
  task = ict_task.IctTaskConfig()
  task.optimizer.learning_rate = 1e-4
  task.optimizer.num_warmup_steps = 10000
  task.model.embedder_layer_norm_epsilon = 1e-3
  return cfg.ExperimentConfig(
      task=task,
      trainer=cfg.TrainerConfig(train_steps=100000, checkpoint_interval=1000, steps_per_loop=100,
                                summary_interval=100, validation_interval=1000, validation_steps=10,
                                max_to_keep=5),
      restrictions=["task.train_data.is_training != None"])


@exp_factory.register_config_factory("realm/pretrain")
def realm_experiment() -> cfg.ExperimentConfig:
  """REALM defaults (original §1.9): batch 512, 200k steps, lr 3e-5, k=8 incl. the null document, 10
  masks, lengths 96/288/384; checkpoints (= index refresh cadence) every 500 steps (the paper's
  "~500"); evaluation on the first 5 held-out shards; best export by retrieval_utility."""
  task = realm_task.RealmPretrainTaskConfig()
  task.optimizer.learning_rate = 3e-5
  return cfg.ExperimentConfig(
      task=task,
      trainer=cfg.TrainerConfig(train_steps=200000, checkpoint_interval=500, steps_per_loop=100,
                                summary_interval=100, validation_interval=1000, validation_steps=50,
                                max_to_keep=10,
                                best_checkpoint_eval_metric="retrieval_utility",
                                best_checkpoint_metric_comp="higher"),
      restrictions=["task.train_data.is_training != None"])
