"""Last-layer row skipping (Model Garden's `output_range`) changes no numbers: the embedders compute
the last layer for [CLS] only, REALM's knowledge-augmented encoder for the query rows only."""
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
  full_encoder = bert.build_bert_encoder(_config())
  full_encoder(bert.to_encoder_inputs(feats))
  full_encoder.set_weights(emb.encoder.get_weights())
  full = full_encoder(bert.to_encoder_inputs(feats), training=False)
  assert full["sequence_output"].shape[1] == 10
  want = emb.layer_norm(emb.projection(full["pooled_output"])).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _part_and_full():
  part = knowledge_encoder.KnowledgeAugmentedEncoder(_config(), output_range=4)
  full = part.with_full_output()
  assert full is not part and full.output_range is None
  assert part.with_full_output() is not full  # a fresh copy each time; the full model returns itself
  assert full.with_full_output() is full
  return part, full


def test_knowledge_encoder_output_range_is_exact():
  part, full = _part_and_full()
  feats = dict(_features(), mlm_positions=tf.constant([[1, 2], [3, 1], [2, 2]], tf.int32))
  p, f = part(feats, training=False), full(feats, training=False)
  assert p["sequence_output"].shape[1] == 4 and f["sequence_output"].shape[1] == 10
  np.testing.assert_allclose(p["mlm_logits"].numpy(), f["mlm_logits"].numpy(), atol=1e-5)
  np.testing.assert_allclose(p["sequence_output"].numpy(), f["sequence_output"].numpy()[:, :4],
                             atol=1e-5)
  np.testing.assert_allclose(p["pooled_output"].numpy(), f["pooled_output"].numpy(), atol=1e-5)


@pytest.mark.slow  # XLA compile: about a minute on 2 CPU cores.
def test_output_range_under_xla():
  part, full = _part_and_full()
  feats = dict(_features(), mlm_positions=tf.constant([[1, 2], [3, 1], [2, 2]], tf.int32))
  fn = tf.function(lambda f: part(f, training=False)["mlm_logits"], jit_compile=True)
  np.testing.assert_allclose(fn(feats).numpy(), full(feats, training=False)["mlm_logits"].numpy(),
                             atol=1e-5)
