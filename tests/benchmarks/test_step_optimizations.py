"""The step optimisations change no numbers: last-layer row skipping (`bert.call_encoder`) in the
embedders ([CLS] only) and in the knowledge-augmented encoder (rows before the query end)."""
import realm_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2.modeling import bert
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import knowledge_encoder


def _config():
  return configs.BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_attention_heads=2,
                            intermediate_size=24, dropout_rate=0.0, attention_dropout_rate=0.0)


def _features(batch=3, seq=10, seed=0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(seq)[None, :] < np.array([[10], [6], [3]])[:batch]).astype(np.int32)
  return {"input_ids": tf.constant(rng.integers(5, 50, [batch, seq]).astype(np.int32) * mask),
          "input_mask": tf.constant(mask),
          "segment_ids": tf.constant((np.arange(seq)[None, :] >= 4).astype(np.int32) * mask)}


def test_embedder_cls_only_last_layer_is_exact():
  emb = embedder_lib.RealmEmbedder(_config(), projection_size=8)
  feats = _features()
  got = emb(feats, training=False).numpy()  # last layer on [CLS] only
  full = emb.encoder(bert.to_encoder_inputs(feats), training=False)
  assert full["sequence_output"].shape[1] == 10  # the encoder itself is unchanged
  want = emb.layer_norm(emb.projection(full["pooled_output"])).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_knowledge_encoder_output_range_is_exact():
  kae = knowledge_encoder.KnowledgeAugmentedEncoder(_config())
  feats = dict(_features(), mlm_positions=tf.constant([[1, 2], [3, 1], [2, 2]], tf.int32))
  full = kae(feats, training=False)
  part = kae(feats, training=False, output_range=4)
  assert part["sequence_output"].shape[1] == 4 and full["sequence_output"].shape[1] == 10
  np.testing.assert_allclose(part["mlm_logits"].numpy(), full["mlm_logits"].numpy(), atol=1e-5)
  np.testing.assert_allclose(part["sequence_output"].numpy(),
                             full["sequence_output"].numpy()[:, :4], atol=1e-5)
  np.testing.assert_allclose(part["pooled_output"].numpy(), full["pooled_output"].numpy(),
                             atol=1e-5)


@pytest.mark.slow  # XLA compile on the loaded 2-core VM: ~1 min.
def test_output_range_under_xla():
  """The switch is read at trace time, so it also holds inside a compiled function."""
  kae = knowledge_encoder.KnowledgeAugmentedEncoder(_config())
  feats = dict(_features(), mlm_positions=tf.constant([[1, 2], [3, 1], [2, 2]], tf.int32))
  full = kae(feats, training=False)["mlm_logits"].numpy()
  fn = tf.function(lambda f: kae(f, training=False, output_range=4)["mlm_logits"], jit_compile=True)
  np.testing.assert_allclose(fn(feats).numpy(), full, atol=1e-5)
