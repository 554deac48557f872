"""BERT's AdamWeightDecay optimizer and learning-rate schedule (original §1.1).

Why not Model Garden's versions:
- `official.modeling.optimization.legacy_adamw.AdamWeightDecay` subclasses Keras Adam and therefore
  applies Adam's bias correction (lr·sqrt(1−β2^t)/(1−β1^t)); the original BERT/REALM/ORQA optimizer has
  none. It is also a legacy (v1-style) Keras optimizer. So the update rule is written here, as a
  new-style `tf_keras.optimizers.Optimizer` (`build`/`update_step`), which reuses Keras's cross-replica
  gradient aggregation, its global-norm clipping (applied to the *aggregated* gradients, before the
  update) and its per-variable XLA update (`jit_compile`).
- `official.modeling.optimization.lr_schedule.LinearWarmup` warms up towards the *decayed* schedule's
  value at the end of warmup, not towards the peak rate, and BERT's decay runs from step 0 (not from the
  end of warmup). The decay part is exactly Keras `PolynomialDecay(lr, num_train_steps, 0.0, power=1)`,
  which is reused; only the warmup switch is written here.
"""
import re
from typing import Callable, Iterable, Optional, Sequence, Tuple

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs

# Variables whose name matches any of these are not decayed (BERT's `exclude_from_weight_decay`).
DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY = ("LayerNorm", "layer_norm", "bias")


@tf_keras.utils.register_keras_serializable(package="realm_tf2")
class WarmupPolynomialDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
  """lr·step/warmup while step < warmup, else lr·(1 − min(step, T)/T) (decay counted from step 0).

  Args:
    learning_rate: Peak learning rate.
    num_train_steps: T, the step at which the rate reaches 0.
    num_warmup_steps: Warmup length (0 disables warmup).
  """

  def __init__(self, learning_rate: float, num_train_steps: int, num_warmup_steps: int):
    super().__init__()
    if num_train_steps <= 0:
      raise ValueError(f"num_train_steps must be positive, got {num_train_steps}")
    self.learning_rate = float(learning_rate)
    self.num_train_steps = int(num_train_steps)
    self.num_warmup_steps = int(num_warmup_steps)
    self._decay = tf_keras.optimizers.schedules.PolynomialDecay(
        self.learning_rate, self.num_train_steps, end_learning_rate=0.0, power=1.0)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    decayed = tf.cast(self._decay(step), tf.float32)
    if self.num_warmup_steps <= 0:
      return decayed
    warmup = self.learning_rate * step / float(self.num_warmup_steps)
    return tf.where(step < float(self.num_warmup_steps), warmup, decayed)

  def get_config(self):
    return {"learning_rate": self.learning_rate, "num_train_steps": self.num_train_steps,
            "num_warmup_steps": self.num_warmup_steps}


class _ScheduleTable:
  """[(variables, fn)] -> {variable key: fn}, once the optimizer knows its variable keys."""

  def __init__(self, entries):
    self._entries = list(entries or ())
    self._by_key = {}

  def index(self, var_key):
    for variables, fn in self._entries:
      for v in variables:
        self._by_key.setdefault(var_key(v), fn)

  def of(self, key):
    return self._by_key.get(key)


class DelayedLinearRamp:
  """Learning-rate multiplier 0 before `start`, rising linearly to `final` over `ramp` steps.

  For variables that must stay fixed for the first `start` optimizer steps (e.g. REALM's retriever
  while a random-init encoder learns to read). Unlike a stop_gradient, the variables' Adam moments
  keep tracking their gradients while the multiplier is 0, so the release is not a jolt: the
  original optimizer has no bias correction, and moments that start from zero at the release make
  the first updates several times larger than lr (~3x at the first step).

  Args:
    start: Optimizer step at which the multiplier leaves 0.
    ramp: Steps from 0 to `final` (0 = jump to `final` at `start`).
    final: The multiplier after the ramp (> 0; default 1 = the full rate).
  """

  def __init__(self, start: int, ramp: int, final: float = 1.0):
    if not final > 0:  # NaN too
      raise ValueError(f"DelayedLinearRamp needs a positive final multiplier, got {final}")
    self.start, self.ramp, self.final = int(start), int(ramp), float(final)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    if self.ramp <= 0:
      return self.final * tf.cast(step >= float(self.start), tf.float32)
    return self.final * tf.clip_by_value((step - float(self.start)) / float(self.ramp), 0.0, 1.0)


class ConstantMultiplier:
  """Learning-rate multiplier `value` at every step (e.g. a slower ORQA reader).

  Args:
    value: The multiplier (> 0; to freeze variables set them `trainable=False` instead, which also
      saves their gradient and optimizer slots).
  """

  def __init__(self, value: float):
    if not value > 0:  # NaN too
      raise ValueError(f"ConstantMultiplier needs a positive value, got {value}")
    self.value = float(value)

  def __call__(self, step):
    del step
    return tf.constant(self.value, tf.float32)


@tf_keras.utils.register_keras_serializable(package="realm_tf2")
class AdamWeightDecay(tf_keras.optimizers.Optimizer):
  """Adam with decoupled weight decay and, by default, NO bias correction (BERT's
  `AdamWeightDecayOptimizer`).

  Per variable p with gradient g (after cross-replica sum and global-norm clipping):
    m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
    update = m / (sqrt(v) + ε) + [wd·p unless name matches LayerNorm|layer_norm|bias]
    p = p − lr·update
  With `bias_correction`, lr is multiplied by sqrt(1−β2^t)/(1−β1^t) at the t-th applied step (t ≥ 1),
  Adam's correction of the zero-initialised moments; the weight-decay term is scaled with it.

  Args:
    learning_rate: float or `LearningRateSchedule` (called with the number of applied steps).
    weight_decay_rate: Decoupled decay coefficient (0.01).
    beta_1, beta_2, epsilon: Adam constants (0.9, 0.999, 1e-6).
    exclude_from_weight_decay: Regexes searched in variable names; matches are not decayed.
    global_clipnorm: Clip the aggregated gradients to this global norm (1.0); None disables.
    variable_lr_schedules: Optional [(variables, fn(step) -> float multiplier)]: those variables'
      learning rate (and so their weight decay) is scaled by fn(applied steps), e.g.
      `DelayedLinearRamp`. A variable in several entries gets the first.
    bias_correction: Adam's bias correction (False = the original).
    name: Optimizer name.
  """

  def __init__(self,
               learning_rate=1e-5,
               weight_decay_rate: float = 0.01,
               beta_1: float = 0.9,
               beta_2: float = 0.999,
               epsilon: float = 1e-6,
               exclude_from_weight_decay: Optional[Iterable[str]] = DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
               global_clipnorm: Optional[float] = 1.0,
               variable_lr_schedules: Optional[Sequence[Tuple[Sequence[tf.Variable],
                                                              Callable]]] = None,
               bias_correction: bool = False,
               name: str = "AdamWeightDecay",
               **kwargs):
    # Keras's own `weight_decay` is left None: decay is applied inside `update_step`, exactly as the
    # original (added to the Adam update before the learning-rate multiplication).
    super().__init__(name=name, global_clipnorm=global_clipnorm, **kwargs)
    self._learning_rate = self._build_learning_rate(learning_rate)
    self.weight_decay_rate = float(weight_decay_rate)
    self.beta_1 = float(beta_1)
    self.beta_2 = float(beta_2)
    self.epsilon = float(epsilon)
    self.bias_correction = bool(bias_correction)
    self.exclude_patterns = tuple(exclude_from_weight_decay or ())
    # A plain holder, not attributes: Keras would track a list/dict assigned to the optimizer as
    # checkpoint dependencies (the variables and schedules are not optimizer state).
    self._lr_schedules = _ScheduleTable(variable_lr_schedules)

  def build(self, var_list):
    super().build(var_list)
    if getattr(self, "_built", False):
      return
    self._built = True
    self._adam_m = [self.add_variable_from_reference(v, "adam_m") for v in var_list]
    self._adam_v = [self.add_variable_from_reference(v, "adam_v") for v in var_list]
    self._lr_schedules.index(self._var_key)

  def do_weight_decay(self, variable_name: str) -> bool:
    """Whether a variable of this name is decayed (static, decided at trace time)."""
    if not self.weight_decay_rate:
      return False
    return not any(re.search(p, variable_name) for p in self.exclude_patterns)

  def update_step(self, gradient, variable):
    if isinstance(gradient, tf.IndexedSlices):
      # BERT's optimizer is dense (moments of untouched embedding rows still decay).
      gradient = tf.convert_to_tensor(gradient)
    dtype = variable.dtype
    gradient = tf.cast(gradient, dtype)
    lr = tf.cast(self.learning_rate, dtype)
    schedule = self._lr_schedules.of(self._var_key(variable))
    if schedule is not None:
      lr = lr * tf.cast(schedule(self.iterations), dtype)
    if self.bias_correction:
      t = tf.cast(self.iterations + 1, dtype)  # `iterations` counts the steps applied before this one
      lr = lr * tf.sqrt(1.0 - tf.pow(tf.cast(self.beta_2, dtype), t)) / (
          1.0 - tf.pow(tf.cast(self.beta_1, dtype), t))
    index = self._index_dict[self._var_key(variable)]
    m = self._adam_m[index]
    v = self._adam_v[index]
    if self.do_weight_decay(variable.name):
      # Decoupled decay from the pre-update value: p - lr·(adam + wd·p) = (p - lr·wd·p) - lr·adam.
      # One fused kernel (var -= alpha·delta with delta = var) instead of read, multiply, assign.
      tf.raw_ops.ResourceApplyGradientDescent(
          var=variable.handle, alpha=lr * self.weight_decay_rate,
          delta=tf.convert_to_tensor(variable), use_locking=False)
    # The Adam part in one fused kernel (one pass over p, m, v instead of ~10 elementwise ops;
    # XLA/TPU have it too). beta powers 0 make its built-in correction lr·sqrt(1-0)/(1-0) = lr, i.e.
    # none, as BERT; the optional correction is already in `lr` above.
    zero = tf.zeros([], dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=m.handle, v=v.handle, beta1_power=zero, beta2_power=zero, lr=lr,
        beta1=tf.constant(self.beta_1, dtype), beta2=tf.constant(self.beta_2, dtype),
        epsilon=tf.constant(self.epsilon, dtype), grad=gradient, use_locking=False)

  def get_config(self):
    config = super().get_config()
    config.update({
        "learning_rate": self._serialize_hyperparameter(self._learning_rate),
        "weight_decay_rate": self.weight_decay_rate,
        "beta_1": self.beta_1,
        "beta_2": self.beta_2,
        "epsilon": self.epsilon,
        "bias_correction": self.bias_correction,
        "exclude_from_weight_decay": list(self.exclude_patterns),
    })
    return config


def create_learning_rate_schedule(opt_cfg: configs.OptimizerConfig,
                                  num_train_steps: int) -> WarmupPolynomialDecay:
  """BERT schedule; `num_warmup_steps` None -> min(10000, max(100, num_train_steps // 10))."""
  warmup = opt_cfg.num_warmup_steps
  if warmup is None:
    warmup = configs.default_warmup_steps(num_train_steps)
  return WarmupPolynomialDecay(opt_cfg.learning_rate, num_train_steps, warmup)


def create_optimizer(opt_cfg: configs.OptimizerConfig, num_train_steps: int,
                     variable_lr_schedules=None) -> AdamWeightDecay:
  """The original `bert.optimization.create_optimizer` recipe as a tf_keras optimizer.

  Create it under the strategy scope. Gradients passed to `apply_gradients` are summed across
  replicas, clipped to global norm `opt_cfg.clip_norm`, then applied. `variable_lr_schedules`: see
  `AdamWeightDecay` (not in the original; e.g. a task's delayed retriever).
  """
  return AdamWeightDecay(
      learning_rate=create_learning_rate_schedule(opt_cfg, num_train_steps),
      weight_decay_rate=opt_cfg.weight_decay_rate,
      beta_1=opt_cfg.beta_1,
      beta_2=opt_cfg.beta_2,
      epsilon=opt_cfg.epsilon,
      global_clipnorm=opt_cfg.clip_norm if opt_cfg.clip_norm else None,
      variable_lr_schedules=variable_lr_schedules,
      bias_correction=opt_cfg.bias_correction)
