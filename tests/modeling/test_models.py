"""Model construction, shapes, span enumeration, reader head vs NumPy, mixed precision."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert
from realm_tf2.modeling import embedder
from realm_tf2.modeling import knowledge_encoder
from realm_tf2.modeling import reader

BERT = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=37, dropout_rate=0.0, attention_dropout_rate=0.0)


def _features(batch, seq_len, seed=0, **extra):
  rng = np.random.default_rng(seed)
  feats = {"input_ids": tf.constant(rng.integers(5, 100, (batch, seq_len)), tf.int32),
           "input_mask": tf.ones([batch, seq_len], tf.int32),
           "segment_ids": tf.zeros([batch, seq_len], tf.int32)}
  feats.update(extra)
  return feats


def test_span_enumeration_order_and_count():
  starts, ends = reader.enumerate_spans(320, 10)
  starts, ends = starts.numpy(), ends.numpy()
  assert starts.shape == (3155,) and ends.shape == (3155,)
  offset = 0
  for w in range(1, 11):
    n = 320 - w + 1
    assert (starts[offset], ends[offset]) == (0, w - 1)
    assert (starts[offset + n - 1], ends[offset + n - 1]) == (320 - w, 319)
    np.testing.assert_array_equal(ends[offset:offset + n] - starts[offset:offset + n], w - 1)
    offset += n
  assert offset == 3155
  s, e = reader.enumerate_spans_np(4, 3)
  np.testing.assert_array_equal(s, [0, 1, 2, 3, 0, 1, 2, 0, 1])
  np.testing.assert_array_equal(e, [0, 1, 2, 3, 1, 2, 3, 2, 3])


def test_embedder_shapes_dropout_and_build():
  emb = embedder.RealmEmbedder(BERT, projection_size=16, dropout_rate=0.5)
  assert emb.built and len(emb.trainable_variables) > 0  # weights exist right after construction
  feats = _features(3, 8)
  out = emb(feats, training=False)
  assert out.shape == (3, 16) and out.dtype == tf.float32
  np.testing.assert_allclose(out.numpy(), emb(feats, training=False).numpy())
  # Eval output = LayerNorm(dense(pooled)); training drops ~half of the entries.
  pooled = emb.encoder(bert.to_encoder_inputs(feats))["pooled_output"]
  np.testing.assert_allclose(out.numpy(), emb.layer_norm(emb.projection(pooled)).numpy(), atol=1e-6)
  assert float(tf.reduce_mean(tf.cast(emb(feats, training=True) == 0, tf.float32))) > 0.2
  assert emb.layer_norm.epsilon == 1e-12
  q, d = embedder.build_embedders(configs.ModelConfig(bert=BERT, projection_size=16))
  assert q is d
  q, d = embedder.build_embedders(
      configs.ModelConfig(bert=BERT, projection_size=16, share_embedders=False))
  assert q is not d and d.name == "doc_embedder"


def test_vocab_size_zero_needs_explicit_size():
  cfg = BERT.replace(vocab_size=0)
  with pytest.raises(ValueError, match="vocab"):
    bert.build_bert_encoder(cfg)
  assert bert.build_bert_encoder(cfg, vocab_size=57)._config["vocab_size"] == 57
  with pytest.raises(KeyError, match="segment_ids"):
    bert.to_encoder_inputs({"input_ids": 1, "input_mask": 1})


def test_knowledge_encoder_mlm_logits_tied_and_at_positions():
  enc = knowledge_encoder.KnowledgeAugmentedEncoder(BERT)
  assert enc.masked_lm.embedding_table is enc.encoder.get_embedding_table()
  positions = tf.constant([[1, 3], [0, 7]], tf.int32)
  out = enc(_features(2, 8, mlm_positions=positions), training=False)
  assert out["mlm_logits"].shape == (2, 2, 100) and out["mlm_logits"].dtype == tf.float32
  assert out["sequence_output"].shape == (2, 8, 32) and out["pooled_output"].shape == (2, 32)
  # Recompute BERT's head by hand at the gathered positions.
  seq = out["sequence_output"].numpy()
  gathered = np.concatenate([seq[0, [1, 3]], seq[1, [0, 7]]])  # [B*M, H]
  mlm = enc.masked_lm
  h = mlm.layer_norm(mlm.activation(gathered @ mlm.dense.kernel.numpy() + mlm.dense.bias.numpy()))
  expected = h.numpy() @ enc.encoder.get_embedding_table().numpy().T + mlm.bias.numpy()
  np.testing.assert_allclose(out["mlm_logits"].numpy(), expected.reshape(2, 2, 100), atol=1e-4)
  assert "mlm_logits" not in enc(_features(1, 8), training=False)


def test_reader_head_matches_numpy_and_masks_invalid_spans():
  rdr = reader.OrqaReader(BERT, span_hidden_size=8, max_span_width=3, seq_len=6)
  names = {v.name for v in rdr.trainable_variables}
  assert {"reader/dense/kernel:0", "reader/dense_1/kernel:0",
          "reader/layer_normalization/gamma:0"} <= names
  assert rdr.span_projection.kernel.shape == (32, 16) and rdr.span_output.kernel.shape == (8, 1)
  block_mask = tf.constant([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], tf.int32)
  out = rdr(_features(2, 6, block_mask=block_mask), training=False)
  starts, ends = out["starts"].numpy(), out["ends"].numpy()
  assert out["logits"].shape == (2, 15) and len(starts) == 6 + 5 + 4
  seq = out["sequence_output"].numpy()
  proj = seq @ rdr.span_projection.kernel.numpy() + rdr.span_projection.bias.numpy()
  st, en = proj[..., :8], proj[..., 8:]
  h = np.maximum(st[:, starts] + en[:, ends], 0.0)  # [2,15,8]
  mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = (h - mu) / np.sqrt(var + 1e-3) * rdr.span_layer_norm.gamma.numpy() + rdr.span_layer_norm.beta.numpy()
  raw = (h @ rdr.span_output.kernel.numpy())[..., 0] + rdr.span_output.bias.numpy()[0]
  bm = block_mask.numpy()
  valid = bm[:, starts] * bm[:, ends]
  np.testing.assert_allclose(out["logits"].numpy(), raw - 10000.0 * (1 - valid), atol=1e-3)
  # Span (2,4) is inside block 0; span (1,2) is inside block 1 only.
  i24 = int(np.where((starts == 2) & (ends == 4))[0][0])
  i12 = int(np.where((starts == 1) & (ends == 2))[0][0])
  assert valid[0, i24] == 1 and valid[1, i24] == 0 and valid[0, i12] == 0 and valid[1, i12] == 1
  assert out["logits"].numpy()[1, i24] < -5000


def test_mixed_bfloat16_policy_outputs_float32():
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    emb = embedder.RealmEmbedder(BERT, projection_size=16)
    enc = knowledge_encoder.KnowledgeAugmentedEncoder(BERT)
    rdr = reader.OrqaReader(BERT, span_hidden_size=8, max_span_width=3, seq_len=6)
    assert emb.projection.compute_dtype == "bfloat16"
    assert emb.projection.kernel.dtype == tf.float32
    assert emb(_features(2, 6), training=False).dtype == tf.float32
    out = enc(_features(2, 6, mlm_positions=tf.constant([[1], [2]])), training=False)
    assert out["mlm_logits"].dtype == tf.float32
    assert bool(tf.reduce_all(tf.math.is_finite(out["mlm_logits"])))
    r = rdr(_features(2, 6, block_mask=tf.ones([2, 6], tf.int32)), training=False)
    assert r["logits"].dtype == tf.float32
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")


def test_embedder_mean_pooling():
  """pooling="mean": the masked mean of the last layer feeds the projection (same variables)."""
  cfg = configs.BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_attention_heads=2,
                           intermediate_size=24, dropout_rate=0.0, attention_dropout_rate=0.0)
  mean = embedder.RealmEmbedder(cfg, projection_size=8, pooling="mean")
  cls = embedder.RealmEmbedder(cfg, projection_size=8)
  assert [v.name for v in mean.variables] == [v.name for v in cls.variables]
  feats = {"input_ids": tf.constant([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]]),
           "input_mask": tf.constant([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]),
           "segment_ids": tf.zeros([2, 6], tf.int32)}
  seq = mean.encoder(bert.to_encoder_inputs(feats), training=False)["sequence_output"].numpy()
  want_pooled = np.stack([seq[0, :4].mean(0), seq[1, :3].mean(0)])
  want = mean.layer_norm(mean.projection(tf.constant(want_pooled))).numpy()
  np.testing.assert_allclose(mean(feats, training=False).numpy(), want, atol=1e-5)
  with pytest.raises(ValueError, match="pooling"):
    embedder.RealmEmbedder(cfg, projection_size=8, pooling="max")
