"""Losses checked against hand-computed NumPy values."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf

from realm_tf2.modeling import losses
from tests.modeling import strategy_util


def _log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


# 1 query, 2 documents (doc 0 = null), 3 masked slots (the last is padding), vocab 4.
SCORES = np.array([[0.0, np.log(3.0)]], np.float32)  # p(doc) = [0.25, 0.75]
LOGITS = np.array([[[[2, 0, 0, 0], [0, 0, 0, 0], [0, 5, 0, 0]],
                    [[0, 1, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0]]]], np.float32)  # [1,2,3,4]
TARGETS = np.array([[0, 1, 1]], np.int32)
MASK = np.array([[1, 1, 0]], np.float32)


def test_realm_marginal_loss_hand_computed():
  out = losses.realm_marginal_loss(SCORES, LOGITS, TARGETS, MASK)
  # By hand: p(t0) = .25*e^2/(e^2+3) + .75/(e+3) = 0.30897; p(t1) = .25*.25 + .75*e^3/(e^3+3) = 0.71504.
  p0 = 0.25 * np.exp(2) / (np.exp(2) + 3) + 0.75 / (np.e + 3)
  p1 = 0.25 * 0.25 + 0.75 * np.exp(3) / (np.exp(3) + 3)
  assert p0 == pytest.approx(0.30897, abs=1e-5)
  assert p1 == pytest.approx(0.71504, abs=1e-5)
  expected_loss = -(np.log(p0) + np.log(p1)) / 2
  assert float(out["loss"]) == pytest.approx(expected_loss, abs=1e-5)
  assert float(out["loss"]) == pytest.approx(0.75497, abs=1e-4)
  # Utility: marginal minus the null document's log-likelihood, averaged over real masked tokens.
  null0 = np.exp(2) / (np.exp(2) + 3)
  null1 = 0.25
  expected_utility = ((np.log(p0) - np.log(null0)) + (np.log(p1) - np.log(null1))) / 2
  assert float(out["retrieval_utility"]) == pytest.approx(expected_utility, abs=1e-5)
  # Token 0: the null doc alone predicts 0 (the target) but the marginal predicts 1 -> wrong.
  # Token 1: marginal predicts 1 -> right. Token 2 is right too but padding -> not counted.
  np.testing.assert_array_equal(out["predictions"].numpy(), [[1, 1, 1]])
  assert float(out["mlm_accuracy"]) == pytest.approx(0.5)
  assert float(out["num_masked"]) == 2.0
  np.testing.assert_allclose(out["candidate_log_probs"].numpy(), np.log([[0.25, 0.75]]), atol=1e-6)


def test_realm_marginal_loss_general_numpy():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(2, 3)).astype(np.float32)
  logits = rng.normal(size=(2, 3, 4, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 4)).astype(np.int32)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
  out = losses.realm_marginal_loss(scores, logits, targets, mask)
  cand = _log_softmax(scores)  # [B,K]
  tok = _log_softmax(logits)  # [B,K,M,V]
  gold = np.take_along_axis(tok, np.broadcast_to(targets[:, None, :, None], (2, 3, 4, 1)), -1)[..., 0]
  marginal = np.log(np.exp(cand[:, :, None] + gold).sum(1))  # [B,M]
  assert float(out["loss"]) == pytest.approx(-(marginal * mask).sum() / mask.sum(), abs=1e-5)
  util = ((marginal - gold[:, 0]) * mask).sum() / mask.sum()
  assert float(out["retrieval_utility"]) == pytest.approx(util, abs=1e-5)
  pred = np.log(np.exp(cand[:, :, None, None] + tok).sum(1)).argmax(-1)
  assert float(out["mlm_accuracy"]) == pytest.approx(((pred == targets) * mask).sum() / mask.sum())
  # No masked token at all -> zeros, not NaN.
  empty = losses.realm_marginal_loss(scores, logits, targets, np.zeros_like(mask))
  assert float(empty["loss"]) == 0.0 and float(empty["mlm_accuracy"]) == 0.0


def _np_ce(logits, labels):
  return -_log_softmax(logits)[np.arange(len(labels)), labels]


Q = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.5]], np.float32)
BLK = np.array([[2.0, 0.0], [0.5, 1.0], [0.0, -1.0], [1.0, 1.0]], np.float32)


def test_ict_loss_single_replica():
  out = losses.ict_loss(Q[:2], BLK[:2])
  logits = Q[:2] @ BLK[:2].T  # [[2, .5], [0, 2]]
  np.testing.assert_allclose(out["logits"].numpy(), [[2.0, 0.5], [0.0, 2.0]])
  assert float(out["loss"]) == pytest.approx(_np_ce(logits, [0, 1]).mean(), abs=1e-6)
  assert float(out["accuracy"]) == 1.0


def test_ict_loss_gathers_negatives_across_replicas():
  strategy = strategy_util.two_device_strategy()
  q = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(Q[2 * ctx.replica_id_in_sync_group:][:2]))
  b = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(BLK[2 * ctx.replica_id_in_sync_group:][:2]))

  @tf.function
  def run(q, b):
    return strategy.run(losses.ict_loss, args=(q, b))

  out = run(q, b)
  logits = [t.numpy() for t in strategy.experimental_local_results(out["logits"])]
  labels = [t.numpy() for t in strategy.experimental_local_results(out["labels"])]
  per_replica_loss = [float(t) for t in strategy.experimental_local_results(out["loss"])]
  full = Q @ BLK.T  # every query against all 4 blocks of the global batch
  np.testing.assert_allclose(logits[0], full[:2], atol=1e-6)
  np.testing.assert_allclose(logits[1], full[2:], atol=1e-6)
  np.testing.assert_array_equal(labels[0], [0, 1])
  np.testing.assert_array_equal(labels[1], [2, 3])
  ce = _np_ce(full, [0, 1, 2, 3])
  assert per_replica_loss[0] == pytest.approx(ce[:2].mean(), abs=1e-5)
  assert per_replica_loss[1] == pytest.approx(ce[2:].mean(), abs=1e-5)
  # The global-negatives loss differs from per-replica in-batch negatives.
  assert per_replica_loss[1] != pytest.approx(_np_ce(Q[2:] @ BLK[2:].T, [0, 1]).mean(), abs=1e-3)


def test_marginal_log_loss_and_zeroing():
  logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], np.float32)
  correct = np.array([[True, False, True], [False, False, False]])
  out = losses.marginal_log_loss(logits, correct).numpy()
  expected0 = np.log(np.exp([1, 2, 3]).sum()) - np.log(np.exp([1, 3]).sum())
  assert out[0] == pytest.approx(expected0, abs=1e-6)
  assert out[1] == 0.0


def test_orqa_loss_batch_equals_mean_of_singles():
  rng = np.random.default_rng(1)
  b, r, n, s = 3, 6, 2, 5
  ret_logits = rng.normal(size=(b, r)).astype(np.float32)
  ret_correct = rng.random((b, r)) < 0.4
  ret_correct[2] = False  # one question with no correct block
  rd_logits = rng.normal(size=(b, n, s)).astype(np.float32)
  rd_correct = rng.random((b, n, s)) < 0.2
  rd_correct[0, 1, 3] = True
  rd_correct[1] = False  # one question with no correct span
  batch = losses.orqa_loss(ret_logits, ret_correct, rd_logits, rd_correct)
  singles = [losses.orqa_loss(ret_logits[i:i + 1], ret_correct[i:i + 1], rd_logits[i:i + 1],
                              rd_correct[i:i + 1]) for i in range(b)]
  assert float(batch["loss"]) == pytest.approx(np.mean([float(x["loss"]) for x in singles]), abs=1e-5)
  # NumPy: reader marginalises over the flattened N*S spans jointly.
  def mll(lg, c):
    if not c.any():
      return 0.0
    return np.log(np.exp(lg).sum()) - np.log(np.exp(lg[c]).sum())
  expected = [mll(ret_logits[i], ret_correct[i]) + mll(rd_logits[i].ravel(), rd_correct[i].ravel())
              for i in range(b)]
  np.testing.assert_allclose(batch["per_example_loss"].numpy(), expected, atol=1e-5)
  assert float(batch["per_example_reader_loss"][1]) == 0.0
  assert float(batch["per_example_retriever_loss"][2]) == 0.0


def test_add_retriever_scores():
  out = losses.add_retriever_scores(np.zeros([1, 2, 3], np.float32), np.array([[1.0, -2.0]], np.float32))
  np.testing.assert_allclose(out.numpy(), [[[1, 1, 1], [-2, -2, -2]]])
