"""packed_bits_dropout: drop rate, unbiasedness, fresh masks, XLA, and the switch inside BERT towers."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert
from realm_tf2.modeling import embedder
from realm_tf2.accel import packed_dropout

BERT = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=37, dropout_rate=0.1, attention_dropout_rate=0.1)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_rate_scale_and_mean(dtype):
  x = tf.ones([1001, 999], dtype)  # odd element count: the last 32-bit word is half used
  y = packed_dropout.packed_bits_dropout(x, 0.1).numpy().astype(np.float32)
  q = 6554 / 65536  # round(0.1 * 2^16) / 2^16
  kept = y != 0
  assert abs(kept.mean() - (1 - q)) < 0.002  # 1M Bernoulli draws: std 0.0003
  np.testing.assert_allclose(np.unique(y[kept]), [1 / (1 - q)], rtol=1e-2 if dtype == tf.bfloat16 else 1e-6)
  assert abs(y.mean() - 1.0) < 0.005  # unbiased


def test_fresh_mask_each_call_and_identity_at_rate_zero():
  x = tf.ones([64, 64])
  a = packed_dropout.packed_bits_dropout(x, 0.5).numpy()
  b = packed_dropout.packed_bits_dropout(x, 0.5).numpy()
  assert (a != b).any()
  np.testing.assert_array_equal(packed_dropout.packed_bits_dropout(x, 0.0).numpy(), x.numpy())
  with pytest.raises(ValueError, match="rate"):
    packed_dropout.packed_bits_dropout(x, 1.0)


def test_gradient_is_the_same_mask():
  x = tf.random.normal([8, 16])
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = packed_dropout.packed_bits_dropout(x, 0.3, seed=tf.constant([3, 4]))
  g = tape.gradient(y, x).numpy()
  ratio = np.where(x.numpy() != 0, y.numpy() / x.numpy(), 0)
  np.testing.assert_allclose(g, ratio, rtol=1e-5, atol=1e-6)


def test_compiles_with_xla():
  f = tf.function(lambda x: packed_dropout.packed_bits_dropout(x, 0.1), jit_compile=True)
  y = f(tf.ones([4, 3, 5])).numpy()
  assert y.shape == (4, 3, 5) and set(np.unique(y)) <= {0.0, np.float32(65536 / (65536 - 6554))}


def _dropouts(layer):
  return [l for l in layer._flatten_layers() if isinstance(l, tf_keras.layers.Dropout)]  # pylint: disable=protected-access


def test_switch_inside_a_bert_tower():
  tower = embedder.RealmEmbedder(BERT, projection_size=8, dropout_rate=0.1)
  names_before = sorted(v.name for v in tower.variables)
  switched = packed_dropout.use_packed_dropout(tower)
  # Embedding dropout + per layer: attention probabilities, attention output, feed-forward output
  # (Model Garden's inner dropout too) + the embedder's own dropout.
  assert switched >= 1 + 3 * BERT.num_layers + 1
  assert packed_dropout.use_packed_dropout(tower) == 0  # idempotent
  assert sorted(v.name for v in tower.variables) == names_before  # checkpoints unchanged
  feats = {"input_ids": tf.constant([[2, 5, 6, 7, 3]] * 2), "input_mask": tf.ones([2, 5], tf.int32),
           "segment_ids": tf.zeros([2, 5], tf.int32)}
  eval_a, eval_b = tower(feats, training=False), tower(feats, training=False)
  np.testing.assert_array_equal(eval_a.numpy(), eval_b.numpy())  # inference: no dropout
  train_a, train_b = tower(feats, training=True), tower(feats, training=True)
  assert not np.allclose(train_a.numpy(), train_b.numpy())


def test_bert_encoder_dropout_uses_packed_generator():
  enc = bert.build_bert_encoder(BERT)
  enc(bert.to_encoder_inputs(bert.dummy_features()))
  packed_dropout.use_packed_dropout(enc)
  dropouts = _dropouts(enc)
  assert dropouts and all(isinstance(l._random_generator, packed_dropout.PackedBitsRandomGenerator)  # pylint: disable=protected-access
                          for l in dropouts)
