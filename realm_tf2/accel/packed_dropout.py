"""Dropout that draws 16 random bits per element instead of a 32-bit float (a CPU speed-up).

Why this exists: on CPU, BERT's dropout is dominated by random-number generation. Keras' Dropout
(`tf.nn.dropout`) draws one 32-bit uniform float per element; the attention-probability dropout alone
is [B·K, heads, T, T] per layer (18.9M elements per layer of the 384-token joint encoder at B·K=32,
4 heads), a large share of a CPU REALM step (docs/scaling.md). Here
the keep mask comes from 16-bit integers: one 32-bit Philox word (`tf.random.stateless_uniform`,
full-range uint32) is bitcast into two uint16 halves, so half as many random words are generated and
no int->float conversion is needed. Neither Keras nor Model Garden offers this, hence the hand-written
piece; TPUs generate random bits in hardware and gain nothing, but lose nothing either.

Semantics: element kept with probability 1 - q, q = round(rate·65536)/65536 (|q - rate| <= 2^-17;
q = 0.1000061 for rate 0.1), kept values scaled by 1/(1 - q), so E[output] = input exactly. Fresh
randomness on every call (the seed pair is drawn from a stateful RNG), as Keras' default dropout.

`use_packed_dropout(layer)` (called by `accel.apply`) switches every Keras `Dropout` inside a built layer/model (Model Garden's
BertEncoderV2: embedding, attention-probability, attention-output and feed-forward dropouts) to this
mask. Dropout layers own no variables, so checkpoints and exports are unchanged.
"""
import numbers

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras
from tf_keras.src import backend as keras_backend

LEVELS = 65536  # distinct values of a uint16


def threshold_and_scale(rate: float):
  """(threshold, scale) of the 16-bit keep test: keep iff u >= threshold = round(rate·65536), kept
  values times scale = 1/(1 - q), q = threshold/65536 (also the C++ kernels' attributes)."""
  threshold = int(round(rate * LEVELS))
  return threshold, LEVELS / (LEVELS - threshold)


def packed_keep_mask(shape, rate: float, dtype, seed=None) -> tf.Tensor:
  """The scaled keep mask of `packed_bits_dropout`: 1/(1-q) with probability 1-q, else 0.

  Args:
    shape: 1-D int32 tensor or list, the mask's shape.
    rate: Python float in (0, 1): drop probability (rounded to a multiple of 2^-16).
    dtype: Float dtype of the mask.
    seed: Optional int32 [2] seed of the stateless generator; None draws one per call.
  Returns:
    Tensor of `shape` and `dtype`.
  """
  threshold, scale = threshold_and_scale(rate)
  shape = tf.convert_to_tensor(shape, tf.int32)
  n = tf.reduce_prod(shape)
  if seed is None:
    seed = tf.random.uniform([2], minval=-2**31, maxval=2**31 - 1, dtype=tf.int32)
  words = tf.random.stateless_uniform(tf.reshape((n + 1) // 2, [1]), seed=seed, minval=None,
                                      maxval=None, dtype=tf.uint32)  # [ceil(n/2)]
  halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:n]  # [n], two draws per word
  keep = tf.reshape(halves >= tf.constant(threshold, tf.uint16), shape)  # P = 1 - q
  return tf.cast(keep, dtype) * tf.constant(scale, dtype)


def packed_bits_dropout(x: tf.Tensor, rate: float, seed=None) -> tf.Tensor:
  """Inverted dropout of `x` with a keep mask from 16-bit random integers.

  Args:
    x: Any float tensor (static or dynamic shape).
    rate: Python float in [0, 1): drop probability (rounded to a multiple of 2^-16).
    seed: Optional int32 [2] seed of the stateless generator; None draws one per call.
  Returns:
    Tensor like `x`.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  if threshold_and_scale(rate)[0] == 0:
    return tf.identity(x)
  # One mask tensor in x's dtype: the forward pass is one multiply, and autodiff's backward of
  # `x * mask` reuses the same mask (one multiply).
  return x * packed_keep_mask(tf.shape(x), rate, x.dtype, seed)


class PackedBitsRandomGenerator(keras_backend.RandomGenerator):
  """A Keras `RandomGenerator` whose `dropout` uses `packed_bits_dropout` (no noise_shape)."""

  def dropout(self, inputs, rate, noise_shape=None):
    if noise_shape is not None or not isinstance(rate, numbers.Real):
      return super().dropout(inputs, rate, noise_shape=noise_shape)
    return packed_bits_dropout(inputs, float(rate))


def use_packed_dropout(layer: tf_keras.layers.Layer) -> int:
  """Switches every `tf_keras.layers.Dropout` under a BUILT `layer` to `packed_bits_dropout`.

  Model Garden creates the transformer's dropout layers in `build`, so call this after the first
  call (our towers do it right after their eager dummy build). Returns how many were switched.
  """
  count = 0
  for sub in layer._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
    if isinstance(sub, tf_keras.layers.Dropout) and not isinstance(
        getattr(sub, "_random_generator", None), PackedBitsRandomGenerator):
      sub._random_generator = PackedBitsRandomGenerator(seed=sub.seed)  # pylint: disable=protected-access
      count += 1
  return count
