"""Experiment config for ORQA fine-tuning (the original's defaults, original §3.4)."""
import realm_tf2  # noqa: F401

from official.core import config_definitions as cfg
from realm_tf2.tasks import orqa_task


def orqa_experiment() -> cfg.ExperimentConfig:
  """ORQA defaults: lr 1e-5, retriever beam 5000, reader beam 5, 1 question per step, best by EM.

  `trainer.train_steps` has no meaningful default in the original (README WebQuestions: 3417*20); it is
  set with --num_train_steps. Evaluation runs the whole dev split (`validation_steps=-1`).
  """
  task = orqa_task.OrqaTaskConfig()
  task.optimizer.learning_rate = 1e-5
  config = cfg.ExperimentConfig(
      task=task,
      trainer=cfg.TrainerConfig(
          train_steps=68340,
          validation_steps=-1,
          validation_interval=1000,
          checkpoint_interval=1000,
          steps_per_loop=100,
          summary_interval=100,
          max_to_keep=5),
      restrictions=[])
  return config
