"""Losses and metrics of REALM, ICT and ORQA (original §1.1, §3.2, §3.3). All computed in float32.

Model Garden has no marginal-over-retrieved-documents loss, no cross-replica in-batch-negative loss
(its dual-encoder task uses per-replica negatives only) and no marginal span loss, so these are
written here. They are pure tensor code (static shapes, no Python control flow on values), so they
run inside `tf.function(jit_compile=True)` and on TPU.
"""
from typing import Dict

import realm_tf2  # noqa: F401
import tensorflow as tf

# The original's "minus infinity" for masked logits (orqa_model.py).
_MASK_LOGIT = -10000.0


def realm_marginal_loss(retrieval_scores: tf.Tensor,
                        mlm_logits: tf.Tensor,
                        mlm_targets: tf.Tensor,
                        mlm_mask: tf.Tensor) -> Dict[str, tf.Tensor]:
  """REALM's marginal masked-LM loss over K retrieved candidates (candidate 0 = null document).

  Args:
    retrieval_scores: [B,K] query·document scores (from the trainable embedder).
    mlm_logits: [B,K,M,V] logits of the knowledge-augmented encoder for each candidate.
    mlm_targets: int [B,M] target token ids.
    mlm_mask: [B,M] 1 for real masked tokens, 0 for padding.

  Returns:
    dict with scalars `loss` (−mean marginal log-likelihood over real masked tokens),
    `retrieval_utility` (mean gain of the marginal over the null document), `mlm_accuracy`
    (argmax of the marginal token distribution), `loss_sum`, `utility_sum`, `correct_sum`,
    `num_masked` (sums, for exact cross-replica averaging) and tensors `candidate_log_probs` [B,K],
    `marginal_log_probs` [B,M], `predictions` int32 [B,M].
  """
  retrieval_scores = tf.cast(retrieval_scores, tf.float32)  # [B, K]
  mlm_logits = tf.cast(mlm_logits, tf.float32)  # [B, K, M, V]
  mlm_targets = tf.cast(mlm_targets, tf.int32)  # [B, M]
  mask = tf.cast(mlm_mask, tf.float32)  # [B, M]
  num_candidates = tf.shape(mlm_logits)[1]

  candidate_log_probs = tf.nn.log_softmax(retrieval_scores, axis=-1)  # [B, K]
  token_log_probs = tf.nn.log_softmax(mlm_logits, axis=-1)  # [B, K, M, V]
  tiled_targets = tf.tile(mlm_targets[:, None, :], [1, num_candidates, 1])  # [B, K, M]
  gold_log_probs = tf.gather(
      token_log_probs, tiled_targets[..., None], batch_dims=3)[..., 0]  # [B, K, M]
  joint = candidate_log_probs[:, :, None] + gold_log_probs  # [B, K, M]
  marginal = tf.reduce_logsumexp(joint, axis=1)  # [B, M]

  num_masked = tf.reduce_sum(mask)  # []
  loss_sum = -tf.reduce_sum(marginal * mask)  # []
  utility_sum = tf.reduce_sum((marginal - gold_log_probs[:, 0, :]) * mask)  # []

  marginal_token_log_probs = tf.reduce_logsumexp(
      candidate_log_probs[:, :, None, None] + token_log_probs, axis=1)  # [B, M, V]
  predictions = tf.argmax(marginal_token_log_probs, axis=-1, output_type=tf.int32)  # [B, M]
  correct = tf.cast(tf.equal(predictions, mlm_targets), tf.float32) * mask  # [B, M]
  correct_sum = tf.reduce_sum(correct)  # []

  return {
      "loss": tf.math.divide_no_nan(loss_sum, num_masked),
      "retrieval_utility": tf.math.divide_no_nan(utility_sum, num_masked),
      "mlm_accuracy": tf.math.divide_no_nan(correct_sum, num_masked),
      "loss_sum": loss_sum,
      "utility_sum": utility_sum,
      "correct_sum": correct_sum,
      "num_masked": num_masked,
      "candidate_log_probs": candidate_log_probs,
      "marginal_log_probs": marginal,
      "predictions": predictions,
  }


def ict_loss(query_emb: tf.Tensor, block_emb: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Inverse-cloze-task loss with in-batch negatives gathered across all replicas (original §3.2).

  Inside a replica context with R > 1 replicas, `block_emb` is all-gathered, so every query scores
  the b*R blocks of the global batch and its label is its global index `replica_id*b + i`. Outside a
  strategy (or with one replica) this is the plain in-batch softmax. The returned loss is the mean
  over this replica's b queries (divide by R before summing gradients across replicas).

  Args:
    query_emb: [b,D] query embeddings of this replica.
    block_emb: [b,D] embeddings of the blocks the queries came from (same order).
  Returns:
    dict with `loss` [], `accuracy` [], `logits` [b,b*R], `labels` int32 [b].
  """
  query_emb = tf.cast(query_emb, tf.float32)  # [b, D]
  block_emb = tf.cast(block_emb, tf.float32)  # [b, D]
  local_batch = tf.shape(query_emb)[0]
  ctx = tf.distribute.get_replica_context()
  if ctx is not None and ctx.num_replicas_in_sync > 1:
    all_blocks = ctx.all_gather(block_emb, axis=0)  # [b*R, D]
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
  else:
    all_blocks = block_emb  # [b, D]
    replica_id = tf.constant(0, tf.int32)
  logits = tf.matmul(query_emb, all_blocks, transpose_b=True)  # [b, b*R]
  labels = replica_id * local_batch + tf.range(local_batch, dtype=tf.int32)  # [b]
  per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # [b]
  predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)  # [b]
  return {
      "loss": tf.reduce_mean(per_example),
      "accuracy": tf.reduce_mean(tf.cast(tf.equal(predictions, labels), tf.float32)),
      "logits": logits,
      "labels": labels,
  }


def marginal_log_loss(logits: tf.Tensor, correct: tf.Tensor) -> tf.Tensor:
  """−log Σ_correct p over the last axis: logsumexp(logits) − logsumexp(logits + (1−correct)·−1e4).

  Args:
    logits: [..., X].
    correct: [..., X] bool or 0/1.
  Returns:
    [...] float32 loss, exactly 0 where no element is correct.
  """
  logits = tf.cast(logits, tf.float32)  # [..., X]
  correct = tf.cast(correct, tf.float32)  # [..., X]
  log_denominator = tf.reduce_logsumexp(logits, axis=-1)  # [...]
  log_numerator = tf.reduce_logsumexp(logits + (1.0 - correct) * _MASK_LOGIT, axis=-1)  # [...]
  any_correct = tf.cast(tf.reduce_any(correct > 0, axis=-1), tf.float32)  # [...]
  return (log_denominator - log_numerator) * any_correct


def add_retriever_scores(reader_logits: tf.Tensor, retriever_logits: tf.Tensor) -> tf.Tensor:
  """ORQA adds each block's retriever logit to all of its span logits (original §3.3).

  Args:
    reader_logits: [B,N,S] span logits of the N read blocks (invalid spans already −1e4).
    retriever_logits: [B,N] retriever logits of the same N blocks.
  Returns:
    [B,N,S] float32.
  """
  return (tf.cast(reader_logits, tf.float32)
          + tf.cast(retriever_logits, tf.float32)[:, :, None])  # [B, N, S]


def orqa_loss(retriever_logits: tf.Tensor,
              retriever_correct: tf.Tensor,
              reader_logits: tf.Tensor,
              reader_correct: tf.Tensor) -> Dict[str, tf.Tensor]:
  """ORQA joint loss: retriever marginal loss + reader marginal loss over all N*S spans.

  As original §3.3.

  Args:
    retriever_logits: [B,R] question·block scores of the R retrieved blocks.
    retriever_correct: [B,R] whether each block contains an answer.
    reader_logits: [B,N,S] span logits (retriever score already added, see `add_retriever_scores`).
    reader_correct: [B,N,S] whether each span is a gold answer span.
  Returns:
    dict with `loss` [] (mean over B of per-question loss), `retriever_loss` [], `reader_loss` [],
    `per_example_loss` [B], `per_example_retriever_loss` [B], `per_example_reader_loss` [B].
    Each component is zero for questions where nothing is correct.
  """
  batch = tf.shape(reader_logits)[0]
  retriever_loss = marginal_log_loss(retriever_logits, retriever_correct)  # [B]
  flat_reader_logits = tf.reshape(reader_logits, [batch, -1])  # [B, N*S]
  flat_reader_correct = tf.reshape(reader_correct, [batch, -1])  # [B, N*S]
  reader_loss = marginal_log_loss(flat_reader_logits, flat_reader_correct)  # [B]
  per_example = retriever_loss + reader_loss  # [B]
  return {
      "loss": tf.reduce_mean(per_example),
      "retriever_loss": tf.reduce_mean(retriever_loss),
      "reader_loss": tf.reduce_mean(reader_loss),
      "per_example_loss": per_example,
      "per_example_retriever_loss": retriever_loss,
      "per_example_reader_loss": reader_loss,
  }
