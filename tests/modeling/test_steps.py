"""REALM / ORQA train steps: XLA-compiled, identical on 1 replica and on 2 mirrored virtual CPUs."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2 import optimization
from realm_tf2.modeling import embedder
from realm_tf2.modeling import knowledge_encoder
from realm_tf2.modeling import reader
from realm_tf2.modeling import steps
from tests.modeling import strategy_util

BERT = configs.BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=37, dropout_rate=0.0, attention_dropout_rate=0.0)
OPT = configs.OptimizerConfig(learning_rate=1e-2, num_warmup_steps=0)


def _bert_feats(rng, prefix, shape):
  ids = rng.integers(5, 100, shape).astype(np.int32)
  mask = np.ones(shape, np.int32)
  mask[..., -2:] = 0
  return {prefix + "input_ids": ids * mask, prefix + "input_mask": mask,
          prefix + "segment_ids": np.zeros(shape, np.int32)}


def _realm_features(batch=4, k=3, m=2):
  rng = np.random.default_rng(0)
  f = {}
  f.update(_bert_feats(rng, "query_", (batch, 8)))
  f.update(_bert_feats(rng, "candidate_", (batch, k, 10)))
  f.update(_bert_feats(rng, "joint_", (batch, k, 12)))
  f["mlm_positions"] = rng.integers(1, 8, (batch, m)).astype(np.int32)
  f["mlm_targets"] = rng.integers(5, 100, (batch, m)).astype(np.int32)
  f["mlm_mask"] = np.ones((batch, m), np.float32)
  return f


def _orqa_features(batch=4, r=6, n=2, t=12, w=3):
  rng = np.random.default_rng(1)
  f = {}
  f.update(_bert_feats(rng, "question_", (batch, 6)))
  f["retrieved_block_emb"] = rng.normal(size=(batch, r, 16)).astype(np.float32)
  f["retriever_correct"] = rng.random((batch, r)) < 0.5
  f.update(_bert_feats(rng, "reader_", (batch, n, t)))
  block_mask = np.zeros((batch, n, t), np.int32)
  block_mask[..., 4:10] = 1
  f["reader_block_mask"] = block_mask
  num_spans = len(reader.enumerate_spans_np(t, w)[0])
  correct = np.zeros((batch, n, num_spans), bool)
  correct[:, 0, 5] = True  # span (5,5), inside the block
  f["reader_correct"] = correct
  return f


def _run(strategy, build_models, forward, features, initial_weights=None, num_steps=2):
  """Builds models under `strategy`, runs `num_steps` XLA train steps, returns losses + weights.

  lr 1e-2 makes a step visible; Adam without bias correction amplifies reduction-order noise on
  near-zero gradients, hence the 1e-4 tolerance on weights (losses agree to 1e-5).
  """
  with strategy.scope():
    models = build_models()
    if initial_weights is not None:
      for mdl, w in zip(models, initial_weights):
        mdl.set_weights(w)
    opt = optimization.create_optimizer(OPT, num_train_steps=10)
  variables = steps.unique_variables(*models)
  step = steps.make_train_step(lambda f: forward(models, f), variables, opt, strategy,
                               jit_compile=True)
  dataset = tf.data.Dataset.from_tensors(features).repeat()
  if strategy.num_replicas_in_sync > 1:
    # from_tensors keeps the global batch; rebatch splits it across replicas.
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(
        len(next(iter(features.values())))).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  losses = [{k: float(v) for k, v in step(next(iterator)).items()} for _ in range(num_steps)]
  return losses, [m.get_weights() for m in models]


def _two_device_strategy():
  return strategy_util.two_device_strategy()


def _realm_models():
  emb = embedder.RealmEmbedder(BERT, projection_size=16, dropout_rate=0.0)
  enc = knowledge_encoder.KnowledgeAugmentedEncoder(BERT)
  return emb, enc


def _realm_forward(models, f):
  emb, enc = models
  return steps.realm_forward(emb, emb, enc, f, training=True)


@pytest.mark.slow  # two XLA compilations of a 2-BERT step: ~1-5 min on 2 shared cores
def test_realm_step_single_vs_mirrored():
  features = _realm_features()
  init = [m.get_weights() for m in _realm_models()]
  single, w1 = _run(tf.distribute.get_strategy(), _realm_models, _realm_forward, features, init)
  mirrored, w2 = _run(_two_device_strategy(), _realm_models, _realm_forward, features, init)
  for s, m in zip(single, mirrored):
    assert np.isfinite(s["loss"]) and s["loss"] > 0
    assert m["loss"] == pytest.approx(s["loss"], abs=1e-5)
    assert m["retrieval_utility"] == pytest.approx(s["retrieval_utility"], abs=1e-5)
  assert single[1]["loss"] != pytest.approx(single[0]["loss"], abs=1e-6)  # the step trained
  for a, b in zip(w1[0] + w1[1], w2[0] + w2[1]):
    np.testing.assert_allclose(a, b, atol=1e-4)


def _orqa_models():
  emb = embedder.RealmEmbedder(BERT, projection_size=16, dropout_rate=0.0)
  rdr = reader.OrqaReader(BERT, span_hidden_size=8, max_span_width=3, seq_len=12)
  return emb, rdr


def _orqa_forward(models, f):
  emb, rdr = models
  return steps.orqa_forward(emb, rdr, f, training=True)


@pytest.mark.slow  # two XLA compilations: ~1-5 min on 2 shared cores
def test_orqa_step_single_vs_mirrored():
  features = _orqa_features()
  init = [m.get_weights() for m in _orqa_models()]
  single, w1 = _run(tf.distribute.get_strategy(), _orqa_models, _orqa_forward, features, init)
  mirrored, w2 = _run(_two_device_strategy(), _orqa_models, _orqa_forward, features, init)
  for s, m in zip(single, mirrored):
    assert np.isfinite(s["loss"]) and s["reader_loss"] > 0
    assert m["loss"] == pytest.approx(s["loss"], abs=1e-5)
    assert m["retriever_loss"] == pytest.approx(s["retriever_loss"], abs=1e-5)
  assert single[1]["loss"] != pytest.approx(single[0]["loss"], abs=1e-6)  # the step trained
  for a, b in zip(w1[0] + w1[1], w2[0] + w2[1]):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_orqa_forward_adds_retriever_score_and_matches_losses():
  features = {k: tf.constant(v) for k, v in _orqa_features(batch=2).items()}
  emb, rdr = _orqa_models()
  out = steps.orqa_forward(emb, rdr, features, training=False)
  q = emb({k[len("question_"):]: v for k, v in features.items() if k.startswith("question_")})
  ret = np.einsum("bd,brd->br", q.numpy(), features["retrieved_block_emb"].numpy())
  np.testing.assert_allclose(out["retriever_logits"].numpy(), ret, rtol=1e-5, atol=1e-5)
  flat = {k[len("reader_"):]: tf.reshape(v, [4, 12]) for k, v in features.items()
          if k.startswith("reader_") and k != "reader_correct"}
  span = rdr(flat)["logits"].numpy().reshape(2, 2, -1)
  np.testing.assert_allclose(out["reader_logits"].numpy(), span + ret[:, :2, None], atol=1e-4)


def _strip(features, prefix):
  return {k[len(prefix):]: v for k, v in features.items() if k.startswith(prefix)}


def test_realm_forward_matches_manual_composition():
  from realm_tf2.modeling import losses
  f = {k: tf.constant(v) for k, v in _realm_features(batch=2, k=3, m=2).items()}
  emb, enc = _realm_models()
  out = steps.realm_forward(emb, emb, enc, f, training=False)
  q = emb(_strip(f, "query_")).numpy()  # [2,16]
  cands = {k: tf.reshape(v, [6, 10]) for k, v in _strip(f, "candidate_").items()}
  c = emb(cands).numpy().reshape(2, 3, 16)
  scores = np.einsum("bd,bkd->bk", q, c)
  np.testing.assert_allclose(out["retrieval_scores"].numpy(), scores, rtol=1e-5, atol=1e-5)
  joint = {k: tf.reshape(v, [6, 12]) for k, v in _strip(f, "joint_").items()}
  joint["mlm_positions"] = tf.repeat(f["mlm_positions"], 3, axis=0)  # candidate-major per query
  logits = enc(joint)["mlm_logits"].numpy().reshape(2, 3, 2, 100)
  ref = losses.realm_marginal_loss(scores, logits, f["mlm_targets"], f["mlm_mask"])
  assert float(out["loss"]) == pytest.approx(float(ref["loss"]), abs=1e-5)
  assert float(out["mlm_accuracy"]) == pytest.approx(float(ref["mlm_accuracy"]))


def test_ict_forward_in_batch():
  rng = np.random.default_rng(2)
  f = {}
  f.update(_bert_feats(rng, "query_", (3, 6)))
  f.update(_bert_feats(rng, "block_", (3, 10)))
  f = {k: tf.constant(v) for k, v in f.items()}
  emb = embedder.RealmEmbedder(BERT, projection_size=16, dropout_rate=0.0)
  out = steps.ict_forward(emb, emb, f, training=False)
  logits = emb(_strip(f, "query_")).numpy() @ emb(_strip(f, "block_")).numpy().T
  np.testing.assert_allclose(out["logits"].numpy(), logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out["labels"].numpy(), [0, 1, 2])
