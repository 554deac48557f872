"""custom_kernels: the C++ masked softmax + dropout kernels build, match TensorFlow's maths in value
and gradient (float32 and bfloat16, every mask broadcast), keep elements at the asked rate with a
fresh mask per seed, reject bad shapes with a clear error, and stay out of XLA-traced code."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2.accel import fused_attention
from realm_tf2.accel import packed_dropout
from realm_tf2.accel import custom_kernels

RATE = 0.3
THRESHOLD = int(round(RATE * packed_dropout.LEVELS))
SCALE = packed_dropout.LEVELS / (packed_dropout.LEVELS - THRESHOLD)


@pytest.fixture(scope="module")
def kernels():
  module = custom_kernels.load()
  assert module is not None, "the C++ kernels must build on the test machines (g++ is there)"
  return module


def _reference(scores, mask, keep, dz):
  """TensorFlow ops: softmax(scores + adder) * keep * scale and its autodiff gradient, float32."""
  s = tf.cast(scores, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(s)
    adder = 0.0 if mask is None else (1.0 - tf.cast(mask, tf.float32)) * -1e9
    y = tf.nn.softmax(s + adder, -1)
    z = y * keep * SCALE
  return y, z, tape.gradient(z, s, output_gradients=tf.cast(dz, tf.float32))


@pytest.mark.parametrize("dtype,tol", [(tf.float32, 1e-6), (tf.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask_shape", [None, [2, 1, 5, 7], [2, 1, 1, 7], [1, 1, 1, 7],
                                        [2, 3, 5, 7]])
def test_matches_tensorflow_ops(kernels, dtype, tol, mask_shape):
  del kernels
  scores = tf.cast(tf.random.stateless_normal([2, 3, 5, 7], seed=[1, 2]) * 3.0, dtype)
  mask = (None if mask_shape is None else
          tf.cast(tf.random.stateless_uniform(mask_shape, seed=[3, 4]) > 0.3, tf.int32))
  dz = tf.cast(tf.random.stateless_normal([2, 3, 5, 7], seed=[5, 6]), dtype)
  with tf.GradientTape() as tape:
    tape.watch(scores)
    z, y = fused_attention.masked_softmax_dropout(scores, mask, RATE, use_kernel=True)
  grad = tape.gradient(z, scores, output_gradients=dz)
  assert z.dtype == y.dtype == grad.dtype == dtype
  keep = tf.cast(z != 0, tf.float32)  # the mask drawn (masked-out keys have y = 0 either way)
  y_ref, z_ref, grad_ref = _reference(scores, mask, keep, dz)
  as32 = lambda t: tf.cast(t, tf.float32).numpy()
  np.testing.assert_allclose(as32(y), y_ref.numpy(), rtol=tol, atol=tol / 10)
  np.testing.assert_allclose(as32(z), z_ref.numpy(), rtol=tol, atol=tol / 10)
  np.testing.assert_allclose(as32(grad), grad_ref.numpy(), rtol=tol * 10, atol=tol)
  attended = y_ref.numpy() > 0
  assert 0.4 < keep.numpy()[attended].mean() < 0.95


def test_keep_rate_and_fresh_masks(kernels):
  scores = tf.zeros([4, 2, 64, 257])  # rows not a multiple of the 4 draws per random word
  adder = tf.zeros([0])
  seeds = [tf.constant(s, tf.int64) for s in (1, 2)]
  z1, y = kernels.realm_masked_softmax_dropout(scores, adder, seeds[0], threshold=THRESHOLD,
                                               scale=SCALE)
  z2, _ = kernels.realm_masked_softmax_dropout(scores, adder, seeds[1], threshold=THRESHOLD,
                                               scale=SCALE)
  again, _ = kernels.realm_masked_softmax_dropout(scores, adder, seeds[0], threshold=THRESHOLD,
                                                 scale=SCALE)
  np.testing.assert_array_equal(again.numpy(), z1.numpy())  # deterministic for a seed
  kept1, kept2 = z1.numpy() != 0, z2.numpy() != 0
  n = kept1.size
  expected = 1.0 - THRESHOLD / packed_dropout.LEVELS
  assert abs(kept1.mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
  assert 0.55 < (kept1 == kept2).mean() < 0.65  # independent masks agree ~ p² + q² = 0.58
  np.testing.assert_allclose(z1.numpy()[kept1], y.numpy()[kept1] * SCALE, rtol=1e-6)
  # The backward pass regenerates the forward mask from the seed: gradient zero where dropped.
  ds = kernels.realm_masked_softmax_dropout_grad(tf.ones_like(y), y, seeds[0],
                                                 threshold=THRESHOLD, scale=SCALE)
  z_dz = z1.numpy()
  np.testing.assert_allclose(ds.numpy(), z_dz - y.numpy() * z_dz.sum(-1, keepdims=True),
                             rtol=1e-5, atol=1e-7)


def test_bad_shapes_are_named(kernels):
  seed = tf.constant(0, tf.int64)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"scores must be \[B, N, T, S\]"):
    kernels.realm_masked_softmax_dropout(tf.zeros([2, 3, 4]), tf.zeros([0]), seed,
                                         threshold=1, scale=1.0)
  with pytest.raises(tf.errors.InvalidArgumentError, match="adder dim 1"):
    kernels.realm_masked_softmax_dropout(tf.zeros([2, 3, 4, 5]), tf.zeros([2, 2, 4, 5]), seed,
                                         threshold=1, scale=1.0)
  with pytest.raises(ValueError, match="rank-4 mask"):
    fused_attention.masked_softmax_dropout(tf.zeros([2, 3, 4, 5]), tf.ones([2, 4, 5]), 0.1,
                                           use_kernel=True)


def _op_types(fn, *args):
  return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def test_opt_in_only(kernels):
  """Layers use the kernels only when traced inside `enabled()`: never in graphs traced for XLA or
  for export, which are traced outside it (or inside `enabled(False)`)."""
  del kernels
  layer = tf_keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2)
  x = tf.random.stateless_normal([2, 6, 8], seed=[7, 8])
  mask = tf.ones([2, 6, 6], tf.int32)
  layer(x, x, attention_mask=mask)
  fused_attention.use_fused_attention(layer)
  packed_dropout.use_packed_dropout(layer)
  ours = {"RealmMaskedSoftmaxDropout", "RealmMaskedSoftmaxDropoutGrad"}

  def call(training):
    def fn(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, x, attention_mask=mask, training=training)
      return out, tape.gradient(tf.reduce_sum(out * out), x)
    return fn

  def within(on, fn):
    def wrapped(x):
      with custom_kernels.enabled(on):
        return fn(x)
    return wrapped

  assert custom_kernels.active() is None
  for training in (True, False):
    assert not ours & _op_types(call(training), x)  # outside enabled(): TensorFlow ops
    assert ours & _op_types(within(True, call(training)), x)  # inside: the kernels
    assert not ours & _op_types(within(True, within(False, call(training))), x)
  # Same outputs either way at inference (no randomness there).
  eval_tf = call(False)(x)[0]
  eval_kernel = within(True, call(False))(x)[0]
  np.testing.assert_allclose(eval_kernel.numpy(), eval_tf.numpy(), rtol=1e-5, atol=1e-6)

  @tf.function(jit_compile=True)
  def compiled(x):
    with custom_kernels.enabled(False):  # an XLA trace nested in an enabled region
      return layer(x, x, attention_mask=mask, training=True)

  with custom_kernels.enabled():
    assert compiled(x).shape == (2, 6, 8)
  with custom_kernels.enabled(False), pytest.raises(ValueError, match="rank-4 mask"):
    fused_attention.masked_softmax_dropout(tf.zeros([2, 3, 4, 5]), tf.ones([2, 4, 5]), 0.1,
                                           use_kernel=True)  # True forces it, shapes checked


def test_failed_build_reports_the_compiler_output(tmp_path, monkeypatch):
  monkeypatch.setenv("REALM_TF2_KERNEL_CACHE", str(tmp_path))
  fake = tmp_path / "fake-cxx"
  fake.write_text("#!/bin/sh\necho 'fake-cxx: error: no such thing' >&2\nexit 3\n")
  fake.chmod(0o755)
  monkeypatch.setenv("CXX", str(fake))
  with pytest.raises(RuntimeError, match=r"(?s)failed \(exit 3\).*no such thing"):
    custom_kernels.library_path()
  leftovers = [p for p in tmp_path.rglob("*.so")]
  assert not leftovers  # nothing half-written stays in the cache


@pytest.mark.parametrize("dtype,tol", [(tf.float32, 1e-5), (tf.bfloat16, 1e-2)])  # tanh: Eigen vs TF
def test_gelu_kernel_matches_tensorflow_ops(kernels, dtype, tol):
  from realm_tf2.accel import float32_kernels  # pylint: disable=g-import-not-at-top
  x = tf.cast(tf.random.stateless_normal([3, 1000 + 37], seed=[9, 9]) * 3.0, dtype)  # odd chunks
  dy = tf.cast(tf.random.stateless_normal(x.shape, seed=[8, 8]), dtype)

  def value_and_grad(on):
    with tf.GradientTape() as tape:
      tape.watch(x)
      with custom_kernels.enabled(on):
        y = float32_kernels.gelu_tanh(x)
    return y, tape.gradient(y, x, output_gradients=dy)

  y, g = value_and_grad(True)
  y_ref, g_ref = value_and_grad(False)
  assert y.dtype == g.dtype == dtype
  as32 = lambda t: tf.cast(t, tf.float32).numpy()
  np.testing.assert_allclose(as32(y), as32(y_ref), rtol=tol, atol=tol)
  np.testing.assert_allclose(as32(g), as32(g_ref), rtol=tol, atol=tol)
  assert "RealmGeluTanh" in _op_types(lambda v: value_and_grad(True), x)
  assert "RealmGeluTanh" not in _op_types(lambda v: value_and_grad(False), x)
  del kernels


def test_inference_fallback_inside_enabled_matches_keras(kernels):
  """Inside `enabled()`, attention the kernel does not take (float64 here) runs Keras' own
  computation, with the query scaled once."""
  del kernels
  layer = tf_keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2, dtype="float64")
  x = tf.random.stateless_normal([2, 6, 8], seed=[3, 8], dtype=tf.float64)
  mask = tf.ones([2, 6, 6], tf.int32)
  reference = layer(x, x, attention_mask=mask, training=False)
  fused_attention.use_fused_attention(layer)
  packed_dropout.use_packed_dropout(layer)
  with custom_kernels.enabled():
    out = layer(x, x, attention_mask=mask, training=False)
  np.testing.assert_allclose(out.numpy(), reference.numpy(), rtol=1e-12)
