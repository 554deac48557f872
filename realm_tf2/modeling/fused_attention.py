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

from realm_tf2.modeling import layer_swap
from realm_tf2.modeling import packed_dropout

_MASK_NEGATIVE = -1e9  # Keras' additive mask value (float16 excepted, which falls back)


def masked_softmax_dropout(scores: tf.Tensor, attention_mask, rate: float):
  """z = packed_dropout(softmax(scores + (1 - mask)·(-1e9)), rate) with a fused gradient.

  Args:
    scores: [B, N, T, S] attention logits.
    attention_mask: [B, 1, T, S] (or broadcastable) 0/1 mask, or None.
    rate: Dropout rate in (0, 1).
  Returns:
    (z [B, N, T, S] dropped-out probabilities, y [B, N, T, S] probabilities without a gradient).
  """
  dtype = scores.dtype
  # Computed in float32 whatever the compute dtype: TensorFlow's CPU kernels run bfloat16
  # elementwise ops about 1.5-2x slower than float32 (each converts on load and store), and the
  # casts in and out cost less than that (forward+backward at [32, 4, 384, 384] on the 2-core VM:
  # 118 ms in bfloat16, 95 ms with float32 inside).
  adder = None
  if attention_mask is not None:
    adder = (1.0 - tf.cast(attention_mask, tf.float32)) * _MASK_NEGATIVE
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


class FusedSoftmaxDropoutAttention(tf_keras.layers.MultiHeadAttention):
  """Keras `MultiHeadAttention` using `masked_softmax_dropout` when training with packed dropout.

  Same variables, config and outputs as the base class; existing layers are switched in place
  by `use_fused_attention`.
  """

  def _fused_applies(self, rank: int, dtype, training) -> bool:
    generator = getattr(self._dropout_layer, "_random_generator", None)
    return (training is True and 0.0 < float(self._dropout) < 1.0
            and isinstance(generator, packed_dropout.PackedBitsRandomGenerator)
            and tuple(self._softmax.axis) in ((-1,), (rank - 1,)) and dtype != tf.float16)

  def _compute_attention(self, query, key, value, attention_mask=None, training=None):
    # query [B, T, N, H] has the rank of the scores [B, N, T, S].
    if not self._fused_applies(query.shape.rank, query.dtype, training):
      return super()._compute_attention(query, key, value, attention_mask, training)
    # Same scaling and einsums as the base class; only softmax + dropout differ.
    query = tf.multiply(query, 1.0 / math.sqrt(float(self._key_dim)))
    scores = tf.einsum(self._dot_product_equation, key, query)  # [B, N, T, S]
    if attention_mask is not None:
      for _ in range(scores.shape.rank - attention_mask.shape.rank):  # [B, T, S] -> [B, 1, T, S]
        attention_mask = tf.expand_dims(attention_mask, axis=-len(self._attention_axes) * 2 - 1)
    dropped, probabilities = masked_softmax_dropout(scores, attention_mask, float(self._dropout))
    return tf.einsum(self._combine_equation, dropped, value), probabilities  # [B, T, N, H]


def use_fused_attention(layer: tf_keras.layers.Layer) -> int:
  """Switches every plain Keras `MultiHeadAttention` under a BUILT `layer` to
  `FusedSoftmaxDropoutAttention` (changes the instances' class only). Returns how many."""
  return layer_swap.swap_layer_class(layer, tf_keras.layers.MultiHeadAttention,
                                     FusedSoftmaxDropoutAttention)
