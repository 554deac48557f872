"""Runs a realm-tf2 experiment with Model Garden's Trainer and orbit Controller.

The loop itself is Model Garden's (`official.core.train_lib.run_experiment`: orbit Controller,
CheckpointManager, TensorBoard summaries, loss blow-up recovery). What this module adds:
- the BERT AdamWeightDecay optimizer built from `task.optimizer` (Model Garden's factory has bias
  correction; see `realm_tf2.optimization`),
- `metrics.jsonl` records and a progress line (step, loss, examples/s, ETA) after every loop,
- caller-supplied orbit actions (index refresh bookkeeping, exports) and extra metrics.
"""
import contextlib
import os
from typing import Callable, List, Mapping, Optional, Sequence

import realm_tf2  # noqa: F401
from absl import logging
import orbit
import tensorflow as tf
import tf_keras

from official.core import base_trainer
from official.core import config_definitions
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance
from realm_tf2 import accel
from realm_tf2 import optimization
from realm_tf2.training import actions as actions_lib
from realm_tf2.training import checkpoint_guard
from realm_tf2.training import metrics_log
from realm_tf2.training import preemption


def latest_step(model_dir: str) -> int:
  """Global step of the newest checkpoint in `model_dir`, or 0."""
  ckpt = tf.train.latest_checkpoint(model_dir)
  if not ckpt:
    return 0
  return int(train_utils.read_global_step_from_checkpoint(ckpt))


def resumable_train_dataset(task, data_config, strategy: tf.distribute.Strategy, skip_steps: int):
  """The distributed train dataset with the batches of `skip_steps` finished steps skipped.

  The Trainer's checkpoint holds model, optimizer and global step but not the input position, so a
  resumed run would otherwise see the first batches again. Skipping whole batches (each global step
  takes `num_replicas_in_sync / num_input_pipelines` per-replica batches from every pipeline) makes a
  deterministic-mode run (`deterministic=True`, fixed seed) read exactly the batches an uninterrupted
  run reads. Cost: the skipped batches still go through the host pipeline once (no device work).
  """
  def dataset_fn(input_context=None):
    ds = task.build_inputs(data_config, input_context)
    pipelines = input_context.num_input_pipelines if input_context else 1
    per_step = max(1, strategy.num_replicas_in_sync // pipelines)
    if skip_steps:
      logging.info("resume: skipping %d input batches (%d finished steps)", skip_steps * per_step,
                   skip_steps)
      ds = ds.skip(skip_steps * per_step)
    return ds
  return orbit.utils.make_distributed_dataset(strategy, dataset_fn)


def set_seeds(params: config_definitions.ExperimentConfig) -> bool:
  """Seeds Python/NumPy/TF from `task.train_data.seed` when it is set (or `deterministic`).

  Call it before building anything random (models, an initial index embedder); returns whether
  seeds were set.
  """
  train_data = params.task.train_data
  seed = getattr(train_data, "seed", None)
  if getattr(train_data, "deterministic", False) or seed is not None:
    tf_keras.utils.set_random_seed(int(seed or 0))
    return True
  return False


def build_trainer(params: config_definitions.ExperimentConfig, task, strategy: tf.distribute.Strategy,
                  model_dir: str, train: bool = True, evaluate: bool = True) -> base_trainer.Trainer:
  """Builds model, optimizer and Model Garden Trainer inside `strategy.scope()`.

  With `task.train_data.seed` set (or `deterministic`) the global seeds are set from it, so weight
  initialisation repeats; on resume (a checkpoint in `model_dir`)
  the train input skips the batches of the finished steps (`resumable_train_dataset`).
  """
  train_data = params.task.train_data
  set_seeds(params)
  # Before anything reads latest_step(): a corrupt newest checkpoint is set aside, not restored.
  checkpoint_guard.quarantine_unreadable_checkpoints(model_dir)
  with strategy.scope():
    model = task.build_model()
    task_config = params.task
    if accel.apply_if_enabled(model, getattr(task_config, "cpu_accel", "off"),
                              getattr(task_config, "jit_compile", False), strategy):
      logging.info("CPU speed-ups of realm_tf2.accel applied to the model (task.cpu_accel=%s)",
                   task_config.cpu_accel)
    optimizer = optimization.create_optimizer(
        params.task.optimizer, params.trainer.train_steps,
        variable_lr_schedules=task.variable_lr_schedules(model))
    train_dataset = None
    if train:
      train_dataset = resumable_train_dataset(task, train_data, strategy, latest_step(model_dir))
    return base_trainer.Trainer(
        params, task, model=model, optimizer=optimizer, train=train, evaluate=evaluate,
        train_dataset=train_dataset,
        checkpoint_exporter=train_lib.maybe_create_best_ckpt_exporter(params, model_dir))


def run_experiment(params: config_definitions.ExperimentConfig, task, model_dir: str, mode: str,
                   strategy: tf.distribute.Strategy, global_batch_size: int,
                   train_actions: Sequence[Callable] = (), eval_actions: Sequence[Callable] = (),
                   extra_metrics_fn: Optional[Callable[[], Mapping[str, float]]] = None,
                   trainer: Optional[base_trainer.Trainer] = None):
  """Runs `mode` ("train", "eval", "train_and_eval") and returns `(trainer, eval_logs)`.

  Args:
    params: The experiment config (already overridden and validated).
    task: A `realm_tf2.tasks.base.RealmBaseTask` built from `params.task`.
    model_dir: Run directory (checkpoints, summaries, metrics.jsonl, params.yaml).
    mode: "train", "eval" or "train_and_eval".
    strategy: From `realm_tf2.training.strategy.get_strategy`.
    global_batch_size: Examples per step (for examples/s).
    train_actions / eval_actions: Extra orbit actions, called with the loop's output dict.
    extra_metrics_fn: Returns extra scalars recorded with every train record.
    trainer: A pre-built trainer (e.g. to let callers attach a refresher to its model first).
  """
  tf.io.gfile.makedirs(model_dir)
  train_utils.serialize_config(params, model_dir)
  if params.runtime.mixed_precision_dtype:
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
  trainer = trainer or build_trainer(params, task, strategy, model_dir,
                                     train="train" in mode, evaluate="eval" in mode)
  resume_step = latest_step(model_dir)
  writer = metrics_log.MetricsJsonlWriter(model_dir, resume_step=resume_step)
  if resume_step and "train" in mode:
    # The train input skipped the batches of the finished steps (resumable_train_dataset).
    writer.write(resume_step, "resume", {"skipped_steps": resume_step})
  progress = actions_lib.TrainProgressAction(
      writer, trainer.global_step, params.trainer.train_steps, global_batch_size,
      extra_metrics_fn=extra_metrics_fn)
  eval_writer = actions_lib.EvalMetricsAction(writer, trainer.global_step)
  # SIGTERM -> checkpoint at the end of the current train loop -> exit 143 (see preemption.py).
  watcher = preemption.PreemptionWatcher().install()
  on_preemption = preemption.SaveOnPreemptionAction(
      watcher, trainer.checkpoint, trainer.global_step, model_dir, params.trainer.max_to_keep,
      on_save=lambda step: writer.write(step, "preemption", {"checkpoint_step": step}))
  progress.start()
  try:
    # orbit's Controller both logs and prints each progress message; only the log copy is kept, so
    # every event shows once (our progress/eval lines hold their own handle on the real stdout).
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
      _, eval_logs = train_lib.run_experiment(
          distribution_strategy=strategy, task=task, mode=mode, params=params, model_dir=model_dir,
          train_actions=[progress, *train_actions, on_preemption],
          eval_actions=[eval_writer, *eval_actions], trainer=trainer)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    raise SystemExit(preemption.PREEMPTED_EXIT_CODE) from e
  finally:
    watcher.uninstall()
  return trainer, eval_logs
