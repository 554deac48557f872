"""GELU and LayerNorm with hand-written gradients, computed in float32 (a CPU speed-up).

Why this exists: in the REALM step on a CPU, after the matmuls, BERT's elementwise work dominates
(profile in docs/scaling.md: LayerNorm forward+backward and GELU forward+backward about
12 % of op time each, at mixed bfloat16). Two things make TensorFlow's versions slow there:
  * Keras' `LayerNormalization` with BERT's epsilon 1e-12 cannot use the fused kernel (which would
    raise epsilon to 1e-5), so it runs `tf.nn.moments` + `tf.nn.batch_normalization`, and autodiff
    of that composite is some twenty elementwise ops and reductions.
  * Under mixed bfloat16, GELU's tanh polynomial and its autodiff run in bfloat16, which TensorFlow's
    CPU kernels handle about 2x slower than float32 (each op converts on load and store).
Here both have a closed-form backward pass (`tf.custom_gradient`) with the few tensors it needs
saved from the forward pass, all in float32; outputs and input gradients are cast back to the
input dtype. The maths is the same as Model Garden's tanh-GELU (google-research/bert's) and Keras'
LayerNormalization (same epsilon, biased variance): float32 results agree to rounding (tests).
What they save is in docs/scaling.md. Neither Model Garden nor Keras offers these, hence the
hand-written pieces. They compile under XLA, but `realm_tf2.accel` uses them only without it.
"""
import math

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2.accel import layer_swap
from realm_tf2.accel import custom_kernels

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


@tf_keras.utils.register_keras_serializable(package="realm_tf2")
def gelu_tanh(x):
  """BERT's tanh-approximate GELU, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in float32.

  Traced inside `custom_kernels.enabled()` (`accel.kernels_scope()`: CPU training and re-embedding), it
  runs the C++ kernels of `realm_tf2/accel/cpu_kernels.cc` (one pass forward, one backward); else
  the TensorFlow ops below.

  Args:
    x: Float tensor of any shape and float dtype.
  Returns:
    Tensor like `x` (same dtype); the gradient is the closed form, also computed in float32.
  """
  kernels = custom_kernels.active()
  if kernels is not None and x.dtype in (tf.float32, tf.bfloat16):
    return _gelu_tanh_kernel(kernels, x)
  return _gelu_tanh_ops(x)


def _gelu_tanh_kernel(kernels, x):
  @tf.custom_gradient
  def fn(x):
    return kernels.realm_gelu_tanh(x), lambda dy: kernels.realm_gelu_tanh_grad(dy, x)
  return fn(x)


@tf.custom_gradient
def _gelu_tanh_ops(x):
  """`gelu_tanh` with TensorFlow ops and the closed-form gradient."""
  dtype = x.dtype
  xf = tf.cast(x, tf.float32)
  x2 = tf.square(xf)
  t = tf.tanh(xf * (_SQRT_2_OVER_PI + _SQRT_2_OVER_PI * _CUBIC * x2))
  half_x = 0.5 * xf
  y = half_x + half_x * t

  def grad(dy):
    # d/dx = 0.5·(1 + t) + 0.5·x·(1 - t²)·√(2/π)·(1 + 3·0.044715·x²)
    d = 0.5 + 0.5 * t + half_x * (1.0 - tf.square(t)) * (
        _SQRT_2_OVER_PI + 3.0 * _SQRT_2_OVER_PI * _CUBIC * x2)
    return tf.cast(tf.cast(dy, tf.float32) * d, dtype)

  return tf.cast(y, dtype), grad


def layer_norm_last_axis(x, gamma, beta, epsilon: float):
  """LayerNorm over the last axis in float32 with a closed-form gradient.

  Args:
    x: [..., H] float tensor (any float dtype).
    gamma, beta: [H] float32 scale and offset.
    epsilon: Added to the (biased) variance, as Keras.
  Returns:
    [..., H] in x's dtype.
  """
  reduce_axes = list(range(len(x.shape) - 1))  # all but the last (static rank)

  @tf.custom_gradient
  def forward(x, gamma, beta):
    dtype = x.dtype
    xf = tf.cast(x, tf.float32)
    centred = xf - tf.reduce_mean(xf, -1, keepdims=True)
    inv_std = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), -1, keepdims=True) + epsilon)
    x_hat = centred * inv_std  # [..., H]
    y = x_hat * gamma + beta

    def grad(dy):
      dy = tf.cast(dy, tf.float32)
      d_gamma = tf.reduce_sum(dy * x_hat, reduce_axes)  # [H]
      d_beta = tf.reduce_sum(dy, reduce_axes)  # [H]
      g = dy * gamma  # dL/dx_hat
      # dL/dx = inv_std · (g - mean(g) - x_hat · mean(g · x_hat)), means over the last axis.
      dx = inv_std * (g - tf.reduce_mean(g, -1, keepdims=True)
                      - x_hat * tf.reduce_mean(g * x_hat, -1, keepdims=True))
      return tf.cast(dx, dtype), d_gamma, d_beta

    return tf.cast(y, dtype), grad

  return forward(x, gamma, beta)


class Float32LayerNormalization(tf_keras.layers.LayerNormalization):
  """Keras `LayerNormalization` whose last-axis, non-fused case runs `layer_norm_last_axis`.

  Same variables, config and semantics as the base class (other axes, ragged inputs and the fused
  case fall back to it). Existing layers are switched in place by `use_float32_layer_norm`.
  """

  def call(self, inputs):
    if (self._fused or isinstance(inputs, tf.RaggedTensor) or not self.center or not self.scale
        or inputs.shape.rank is None or list(self.axis) != [inputs.shape.rank - 1]):
      return super().call(inputs)
    inputs = tf.cast(inputs, self.compute_dtype)
    return layer_norm_last_axis(inputs, tf.cast(self.gamma, tf.float32),
                                tf.cast(self.beta, tf.float32), self.epsilon)


def use_float32_layer_norm(layer: tf_keras.layers.Layer) -> int:
  """Switches every plain Keras `LayerNormalization` under a BUILT `layer` to
  `Float32LayerNormalization` (changes the instances' class; variables and names are untouched).
  Returns how many were switched."""
  return layer_swap.swap_layer_class(layer, tf_keras.layers.LayerNormalization,
                                     Float32LayerNormalization)
