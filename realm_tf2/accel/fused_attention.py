"""Multi-head attention whose masked softmax and probability dropout share one backward pass.

Why this exists: in BERT's attention the [B, heads, T, T] probability tensor is the largest
activation (18.9M elements per layer of the REALM step's 384-token joint encoder at B·k = 32), and
on a CPU every elementwise pass over it costs milliseconds. Keras computes
`z = dropout(softmax(s + mask_adder))` and autodiff differentiates the two ops separately:
dropout's backward multiplies by the mask, then softmax's backward does `(g - Σ g·y)·y`. With
z = y·m the same gradient is `z·dz - y·Σ(dz·z)`, one pass fewer, with the mask itself no longer
needed in the backward pass. Keras and Model Garden differentiate op by op, hence this piece.

Semantics are Keras' `MultiHeadAttention` with `packed_dropout` masks: additive mask of -1e9,
softmax over the last axis, inverted dropout of the probabilities (`packed_keep_mask`). Anything
else (inference, no dropout, Keras' own dropout generator, multi-axis attention, a non-boolean
`training`) runs the base class unchanged. The second output (`return_attention_scores`) is the
probabilities before dropout, as in Keras, but without a gradient in the fused case.
"""
import math

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2.accel import layer_swap
from realm_tf2.accel import packed_dropout
from realm_tf2.accel import custom_kernels

_MASK_NEGATIVE = -1e9  # Keras' additive mask value (float16 excepted, which falls back)


def masked_softmax_dropout(scores: tf.Tensor, attention_mask, rate: float, use_kernel=None):
  """z = packed_dropout(softmax(scores + (1 - mask)·(-1e9)), rate) with a fused gradient.

  On a CPU, the C++ kernel of `realm_tf2/accel/cpu_kernels.cc` does the forward and the
  backward pass in one sweep each (same maths; its keep mask comes from a counter-based generator
  instead of Philox, with the same keep probability). Elsewhere, or when it cannot be built, the
  TensorFlow ops below run.

  Args:
    scores: [B, N, T, S] attention logits.
    attention_mask: [B, 1, T, S] (or broadcastable) 0/1 mask, or None.
    rate: Dropout rate in [0, 1) (0: softmax alone).
    use_kernel: None = the C++ kernel when `custom_kernels.active()` (traced inside
      `custom_kernels.enabled()`, the kernels built) and the shapes suit it; False = TensorFlow ops;
      True = the kernel or an error.
  Returns:
    (z [B, N, T, S] dropped-out probabilities, y [B, N, T, S] probabilities without a gradient).
  """
  dtype = scores.dtype
  kernels = None
  if use_kernel:
    kernels = custom_kernels.load()
  elif use_kernel is None:
    kernels = custom_kernels.active()
  if use_kernel and kernels is None:
    raise RuntimeError("the masked_softmax_dropout C++ kernel is not available (see the log)")
  if kernels is not None and _kernel_applies(scores, attention_mask):
    return _masked_softmax_dropout_kernel(kernels, scores, attention_mask, rate)
  if use_kernel:
    raise ValueError(f"the C++ kernel takes rank-4 float32/bfloat16 scores and a rank-4 mask "
                     f"broadcastable to them, got {scores.dtype.name} {scores.shape} and "
                     f"{None if attention_mask is None else attention_mask.shape}")
  # Computed in float32 whatever the compute dtype: TensorFlow's CPU kernels run bfloat16
  # elementwise ops slower than float32 (each converts on load and store), and the casts in and
  # out cost less than that (docs/scaling.md).
  adder = None if attention_mask is None else _mask_adder(attention_mask)
  probabilities = []

  @tf.custom_gradient
  def fused(s):
    s = tf.cast(s, tf.float32)
    y = tf.nn.softmax(s + adder if adder is not None else s, axis=-1)  # [B, N, T, S]
    z = y * packed_dropout.packed_keep_mask(tf.shape(y), rate, tf.float32)
    probabilities.append(y)

    def grad(dz):
      # d/ds of z = y·m: (dz·m - Σ(dz·m·y))·y = dz·z - y·Σ(dz·z), sums over the last axis.
      dz_z = tf.cast(dz, tf.float32) * z
      return tf.cast(dz_z - y * tf.reduce_sum(dz_z, -1, keepdims=True), dtype)

    return tf.cast(z, dtype), grad

  z = fused(scores)
  return z, tf.stop_gradient(tf.cast(probabilities[0], dtype))


def _mask_adder(attention_mask):
  """float32 (1 - mask)·(-1e9), the mask's shape ([B, 1, T, S])."""
  return (1.0 - tf.cast(attention_mask, tf.float32)) * _MASK_NEGATIVE


def _kernel_applies(scores, attention_mask) -> bool:
  """Rank-4 float32/bfloat16 scores and a rank-4 mask whose dims are 1 or the scores' (unknown
  dims pass: the kernel checks them when it runs and names a mismatch)."""
  if scores.dtype not in (tf.float32, tf.bfloat16) or scores.shape.rank != 4:
    return False
  if attention_mask is None:
    return True
  if attention_mask.shape.rank != 4:
    return False
  dims = list(zip(attention_mask.shape, scores.shape))
  return all(m is None or s is None or m == s or (m == 1 and i < 3) for i, (m, s) in enumerate(dims))


def _masked_softmax_dropout_kernel(kernels, scores, attention_mask, rate):
  """`masked_softmax_dropout` with the C++ kernels: only y (in the scores' dtype) and the seed are
  kept for the backward pass, which regenerates the keep mask."""
  threshold, scale = packed_dropout.threshold_and_scale(rate)
  adder = tf.zeros([0], tf.float32) if attention_mask is None else _mask_adder(attention_mask)
  seed = tf.random.uniform([], minval=tf.int64.min, maxval=tf.int64.max, dtype=tf.int64)
  probabilities = []

  @tf.custom_gradient
  def fused(s):
    z, y = kernels.realm_masked_softmax_dropout(s, adder, seed, threshold=threshold, scale=scale)
    probabilities.append(y)  # [B, N, T, S]

    def grad(dz):
      return kernels.realm_masked_softmax_dropout_grad(dz, y, seed, threshold=threshold,
                                                       scale=scale)

    return z, grad

  z = fused(scores)
  return z, tf.stop_gradient(probabilities[0])


class FusedSoftmaxDropoutAttention(tf_keras.layers.MultiHeadAttention):
  """Keras `MultiHeadAttention` using `masked_softmax_dropout` when training with packed dropout.

  At inference it runs the base class, except inside `custom_kernels.enabled()` (the corpus
  re-embedding step without XLA), where the C++ kernel's softmax replaces Keras' mask add +
  softmax. Opt-in, so that graphs traced for XLA or for export never contain the project's op.

  Same variables, config and outputs as the base class; existing layers are switched in place
  by `use_fused_attention`.
  """

  def _last_axis_softmax(self, rank: int, dtype) -> bool:
    return tuple(self._softmax.axis) in ((-1,), (rank - 1,)) and dtype != tf.float16

  def _fused_applies(self, rank: int, dtype, training) -> bool:
    generator = getattr(self._dropout_layer, "_random_generator", None)
    return (training is True and 0.0 < float(self._dropout) < 1.0
            and isinstance(generator, packed_dropout.PackedBitsRandomGenerator)
            and self._last_axis_softmax(rank, dtype))

  def _inference_kernel_applies(self, rank: int, dtype, training) -> bool:
    return (training in (None, False) and self._last_axis_softmax(rank, dtype)
            and custom_kernels.active() is not None)

  def _compute_attention(self, query, key, value, attention_mask=None, training=None):
    # query [B, T, N, H] has the rank of the scores [B, N, T, S].
    rank, dtype = query.shape.rank, query.dtype
    if self._fused_applies(rank, dtype, training):
      rate = float(self._dropout)
    elif self._inference_kernel_applies(rank, dtype, training):
      rate = 0.0  # the C++ kernel's softmax alone (no dropout at inference)
    else:
      return super()._compute_attention(query, key, value, attention_mask, training)
    # Same scaling and einsums as the base class; only softmax + dropout differ.
    scaled_query = tf.multiply(query, 1.0 / math.sqrt(float(self._key_dim)))
    scores = tf.einsum(self._dot_product_equation, key, scaled_query)  # [B, N, T, S]
    if attention_mask is not None:
      for _ in range(scores.shape.rank - attention_mask.shape.rank):  # [B, T, S] -> [B, 1, T, S]
        attention_mask = tf.expand_dims(attention_mask, axis=-len(self._attention_axes) * 2 - 1)
    if rate == 0.0 and not _kernel_applies(scores, attention_mask):
      # The unscaled query: the base class scales it itself (the unused einsum above is pruned).
      return super()._compute_attention(query, key, value, attention_mask, training)
    dropped, probabilities = masked_softmax_dropout(scores, attention_mask, rate)
    return tf.einsum(self._combine_equation, dropped, value), probabilities  # [B, T, N, H]


def use_fused_attention(layer: tf_keras.layers.Layer) -> int:
  """Switches every plain Keras `MultiHeadAttention` under a BUILT `layer` to
  `FusedSoftmaxDropoutAttention` (changes the instances' class only). Returns how many."""
  return layer_swap.swap_layer_class(layer, tf_keras.layers.MultiHeadAttention,
                                     FusedSoftmaxDropoutAttention)
