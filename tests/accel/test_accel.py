"""realm_tf2.accel: plain towers by default, `apply` switches computation only (same variables,
object graph and inference outputs), and `is_enabled` keeps it off under XLA."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from realm_tf2 import accel
from realm_tf2 import configs
from realm_tf2.accel import float32_kernels
from realm_tf2.accel import fused_attention
from realm_tf2.accel import packed_dropout
from realm_tf2.modeling import embedder
from realm_tf2.modeling import knowledge_encoder

BERT = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=37)
FEATS = {"input_ids": tf.constant([[2, 5, 6, 7, 3]] * 2), "input_mask": tf.ones([2, 5], tf.int32),
         "segment_ids": tf.zeros([2, 5], tf.int32)}


def _kinds(model):
  return {type(l) for l in model._flatten_layers()}  # pylint: disable=protected-access


def test_towers_are_plain_model_garden_layers():
  kinds = _kinds(knowledge_encoder.KnowledgeAugmentedEncoder(BERT))
  assert tf_keras.layers.MultiHeadAttention in kinds
  assert tf_keras.layers.LayerNormalization in kinds
  assert not kinds & {fused_attention.FusedSoftmaxDropoutAttention,
                      float32_kernels.Float32LayerNormalization}


def test_apply_switches_every_piece_and_keeps_the_checkpoint():
  plain = knowledge_encoder.KnowledgeAugmentedEncoder(BERT)
  fast = knowledge_encoder.KnowledgeAugmentedEncoder(BERT)
  fast.set_weights(plain.get_weights())
  counts = accel.apply(fast)
  # Per layer: attention; LayerNorms: embeddings + 2 per layer + the MLM transform's;
  # GELU: one per layer + the MLM transform's dense.
  assert counts["attention"] == BERT.num_layers
  assert counts["layer_norm"] == 1 + 2 * BERT.num_layers + 1
  assert counts["gelu"] == BERT.num_layers + 1
  assert counts["dropout"] >= 1 + 3 * BERT.num_layers
  assert accel.apply(fast) == {"dropout": 0, "attention": 0, "layer_norm": 0, "gelu": 0}
  assert fused_attention.FusedSoftmaxDropoutAttention in _kinds(fast)
  assert [v.name for v in fast.variables] == [v.name for v in plain.variables]
  feats = dict(FEATS, mlm_positions=tf.constant([[1, 2]] * 2))
  np.testing.assert_allclose(fast(feats, training=False)["mlm_logits"].numpy(),
                             plain(feats, training=False)["mlm_logits"].numpy(), atol=2e-5)
  # A checkpoint written by the accelerated model restores into the plain one (same object graph).
  path = tf.train.Checkpoint(model=fast).write(
      tf.io.gfile.join(tf.compat.v1.test.get_temp_dir(), "accel_ckpt"))
  other = knowledge_encoder.KnowledgeAugmentedEncoder(BERT)
  tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(other.get_weights()[0], fast.get_weights()[0])


def test_apply_pieces_and_packed_masks_in_training():
  tower = embedder.RealmEmbedder(BERT, projection_size=8, dropout_rate=0.1)
  counts = accel.apply(tower, pieces=("dropout",))
  assert set(counts) == {"dropout"}
  dropouts = [l for l in tower._flatten_layers() if isinstance(l, tf_keras.layers.Dropout)]  # pylint: disable=protected-access
  assert all(isinstance(l._random_generator, packed_dropout.PackedBitsRandomGenerator)  # pylint: disable=protected-access
             for l in dropouts)
  with pytest.raises(ValueError, match="unknown cpu_accel pieces"):
    accel.apply(tower, pieces=("bogus",))


def test_is_enabled_only_without_xla():
  assert accel.is_enabled("auto", jit_compile=False)
  assert accel.is_enabled("on", jit_compile=False)
  assert not accel.is_enabled("auto", jit_compile=True)
  assert not accel.is_enabled("off", jit_compile=False)
  with pytest.raises(ValueError, match="cpu_accel"):
    accel.is_enabled("fast", jit_compile=False)
