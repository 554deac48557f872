"""fused_attention: the fused softmax+dropout equals Keras' softmax then the same dropout mask, in
value and gradient; the layer falls back to the base class outside training; towers switch by config."""
import numpy as np

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import embedder
from realm_tf2.accel import fused_attention
from realm_tf2.accel import packed_dropout

BERT = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=37, dropout_rate=0.1, attention_dropout_rate=0.1)


def test_value_and_gradient_match_softmax_then_dropout():
  scores = tf.random.stateless_normal([2, 3, 5, 7], seed=[1, 2]) * 3.0
  mask = tf.cast(tf.random.stateless_uniform([2, 1, 5, 7], seed=[3, 4]) > 0.3, tf.int32)
  dz = tf.random.stateless_normal([2, 3, 5, 7], seed=[5, 6])
  with tf.GradientTape() as tape:
    tape.watch(scores)
    z, y = fused_attention.masked_softmax_dropout(scores, mask, 0.3)
  grad = tape.gradient(z, scores, output_gradients=dz)
  # The mask that was drawn: nonzero z (masked-out positions have y = 0 exactly, so any mask
  # value there gives the same z and gradient).
  keep = tf.cast(z != 0, tf.float32) / (1.0 - round(0.3 * 65536) / 65536)
  with tf.GradientTape() as tape:
    tape.watch(scores)
    y_ref = tf_keras.layers.Softmax()(scores, mask)
    z_ref = y_ref * keep
  grad_ref = tape.gradient(z_ref, scores, output_gradients=dz)
  np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(z.numpy(), z_ref.numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad.numpy(), grad_ref.numpy(), rtol=1e-4, atol=1e-6)
  attended = y.numpy() > 0
  assert 0.5 < (z.numpy()[attended] != 0).mean() < 0.9  # ~0.7 kept


def test_layer_uses_fused_path_only_when_training_with_packed_dropout():
  layer = tf_keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2)
  x = tf.random.stateless_normal([2, 6, 8], seed=[7, 8])
  mask = tf.ones([2, 6, 6], tf.int32)
  ref_eval = layer(x, x, attention_mask=mask, training=False)
  assert fused_attention.use_fused_attention(layer) == 1
  assert not layer._fused_applies(4, tf.float32, True)  # pylint: disable=protected-access  # Keras' generator
  packed_dropout.use_packed_dropout(layer)
  assert layer._fused_applies(4, tf.float32, True)  # pylint: disable=protected-access
  assert not layer._fused_applies(4, tf.float32, False)  # pylint: disable=protected-access
  np.testing.assert_array_equal(layer(x, x, attention_mask=mask, training=False).numpy(),
                                ref_eval.numpy())
  with tf.GradientTape() as tape:
    out = layer(x, x, attention_mask=mask, training=True)
    loss = tf.reduce_sum(out * out)
  grads = tape.gradient(loss, layer.trainable_variables)
  assert out.shape == (2, 6, 8) and all(g is not None for g in grads)
  assert not np.allclose(out.numpy(), ref_eval.numpy())  # dropout acted
