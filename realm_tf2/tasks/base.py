"""Shared Task machinery: XLA-compiled forward/backward, scalar metric plumbing, common config."""
import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from official.core import base_task
from official.core import config_definitions as cfg
from realm_tf2 import accel
from realm_tf2 import configs


@dataclasses.dataclass
class RealmTaskConfig(cfg.TaskConfig):
  """Fields every realm-tf2 task has.

  Attributes:
    model: Model shapes (`task.model`, shared by all modes so size YAMLs apply everywhere).
    optimizer: BERT AdamWeightDecay settings.
    vocab_file: WordPiece vocab (also exported as the `tokenization_info` asset).
    do_lower_case: Lower-case and strip accents before WordPiece.
    jit_compile: Compile forward+backward with XLA (`tf.function(jit_compile=True)`).
    cpu_accel: "auto" | "on" | "off": the CPU speed-ups of `realm_tf2.accel` for training and
      re-embedding without XLA ("auto" and "on" apply them only where `accel.is_enabled` allows).
  """
  model: configs.ModelConfig = dataclasses.field(default_factory=configs.ModelConfig)
  optimizer: configs.OptimizerConfig = dataclasses.field(default_factory=configs.OptimizerConfig)
  vocab_file: str = ""
  do_lower_case: bool = True
  jit_compile: bool = True
  cpu_accel: str = "auto"


class RealmBaseTask(base_task.Task):
  """Base Task: subclasses implement `compute_loss` and list `metric_names`.

  The device step is `compute_loss` + gradient, optionally XLA-compiled; the optimizer update runs
  outside the compiled function so cross-replica gradient aggregation stays with the strategy.
  """

  metric_names: Sequence[str] = ()

  def __init__(self, params, logging_dir: Optional[str] = None, name: Optional[str] = None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self._grad_fn = None

  # --- to implement -------------------------------------------------------------------------------
  def compute_loss(self, model: tf_keras.Model, inputs: Dict[str, tf.Tensor],
                   training: bool) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Returns `(loss scalar float32, {metric_name: scalar})` for one replica's batch."""
    raise NotImplementedError

  # --- Model Garden hooks -------------------------------------------------------------------------
  def build_metrics(self, training: bool = True):
    return [tf_keras.metrics.Mean(name, dtype=tf.float32) for name in self.metric_names]

  def _update_metrics(self, metrics, logs):
    for metric in metrics or []:
      if metric.name in logs:
        metric.update_state(logs[metric.name])

  def _forward_backward(self, model, inputs):
    with tf.GradientTape() as tape:
      loss, logs = self.compute_loss(model, inputs, training=True)
      # Optimizers sum gradients over replicas, so each replica's loss is scaled down.
      num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
      scaled_loss = loss / tf.cast(num_replicas, loss.dtype)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    return grads, loss, logs

  def gradient_fn(self):
    """The (optionally XLA-compiled) forward/backward function `(model, inputs) -> grads, loss, logs`."""
    if self._grad_fn is None:
      jit = getattr(self.task_config, "jit_compile", False)
      self._grad_fn = (tf.function(self._forward_backward, jit_compile=True) if jit
                       else self._forward_backward_in_kernels_scope)
    return self._grad_fn

  def _forward_backward_in_kernels_scope(self, model, inputs):
    # Without XLA, layers that `accel.apply` switched may trace the C++ CPU kernels here (they have
    # no XLA lowering, so the jit_compile path above never enters this scope).
    with accel.kernels_scope():
      return self._forward_backward(model, inputs)

  def variable_lr_schedules(self, model: tf_keras.Model):
    """Per-variable learning-rate schedules for `optimization.create_optimizer`, or None.

    A list of `(variables, fn(step) -> multiplier)`; the driver passes it to the optimizer. None (the
    default) trains every variable on the shared schedule; REALM's delayed retriever overrides it.
    """
    del model
    return None

  def train_step(self, inputs, model: tf_keras.Model, optimizer, metrics=None):
    grads, loss, logs = self.gradient_fn()(model, inputs)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    logs = dict(logs)
    logs[self.loss] = loss
    self._update_metrics(metrics, logs)
    return logs

  def validation_step(self, inputs, model: tf_keras.Model, metrics=None):
    loss, logs = self.compute_loss(model, inputs, training=False)
    logs = dict(logs)
    logs[self.loss] = loss
    self._update_metrics(metrics, logs)
    return logs
