"""float32_kernels: GELU and LayerNorm equal Model Garden's / Keras' values and gradients, keep the
input dtype, compile with XLA, and replace the towers' layers by config without touching variables."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras
from official.modeling import activations

from realm_tf2 import configs
from realm_tf2.modeling import embedder
from realm_tf2.accel import float32_kernels

BERT = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=37)


def _value_and_grads(fn, x, params=()):
  dy = tf.random.stateless_normal(x.shape, seed=[1, 2], dtype=x.dtype)
  with tf.GradientTape() as tape:
    tape.watch([x] + list(params))
    y = fn(x)
  return y, tape.gradient(y, [x] + list(params), output_gradients=dy)


def test_gelu_matches_model_garden():
  x = tf.random.stateless_normal([64, 48], seed=[0, 1]) * 3.0
  y_ref, (g_ref,) = _value_and_grads(activations.gelu, x)
  y, (g,) = _value_and_grads(float32_kernels.gelu_tanh, x)
  np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-5, atol=1e-5)


def test_gelu_keeps_bfloat16_and_is_closer_to_float32():
  x32 = tf.random.stateless_normal([256, 64], seed=[3, 4]) * 3.0
  x16 = tf.cast(x32, tf.bfloat16)
  y, (g,) = _value_and_grads(float32_kernels.gelu_tanh, x16)
  assert y.dtype == g.dtype == tf.bfloat16
  exact, (exact_g,) = _value_and_grads(activations.gelu, tf.cast(x16, tf.float32))
  err = np.abs(tf.cast(y, tf.float32).numpy() - exact.numpy()).max()
  assert err <= 0.02  # one bfloat16 rounding of |y| < 10
  gerr = np.abs(tf.cast(g, tf.float32).numpy() - exact_g.numpy()).max()
  assert gerr <= 0.05


@pytest.mark.parametrize("shape", [[7, 32], [3, 5, 32]])
def test_layer_norm_matches_keras(shape):
  ref = tf_keras.layers.LayerNormalization(epsilon=1e-12)
  ref.build(shape)
  ref.gamma.assign(tf.random.stateless_normal([32], seed=[5, 6]))
  ref.beta.assign(tf.random.stateless_normal([32], seed=[7, 8]))
  x = tf.random.stateless_normal(shape, seed=[9, 10]) * 2.0 + 0.5
  y_ref, g_ref = _value_and_grads(ref, x, [ref.gamma, ref.beta])
  fast = tf_keras.layers.LayerNormalization(epsilon=1e-12)
  fast.build(shape)
  fast.set_weights(ref.get_weights())
  assert float32_kernels.use_float32_layer_norm(fast) == 1
  y, g = _value_and_grads(fast, x, [fast.gamma, fast.beta])
  np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-5, atol=1e-5)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_layer_norm_other_axis_falls_back_and_xla_compiles():
  ln = tf_keras.layers.LayerNormalization(axis=1, epsilon=1e-12)
  ln.build([4, 6, 8])
  ref_out = ln(tf.ones([4, 6, 8]) * tf.range(8, dtype=tf.float32))
  float32_kernels.use_float32_layer_norm(ln)
  np.testing.assert_array_equal(ln(tf.ones([4, 6, 8]) * tf.range(8, dtype=tf.float32)).numpy(),
                                ref_out.numpy())
  last = tf_keras.layers.LayerNormalization(epsilon=1e-12)
  last.build([4, 8])
  float32_kernels.use_float32_layer_norm(last)

  @tf.function(jit_compile=True)
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = float32_kernels.gelu_tanh(last(x))
      loss = tf.reduce_sum(y * y)
    return y, tape.gradient(loss, x)

  y, g = step(tf.random.stateless_normal([4, 8], seed=[1, 1]))
  assert y.shape == g.shape == (4, 8) and np.isfinite(g.numpy()).all()
