"""Device-side forward passes of ICT, REALM and ORQA, plus a minimal distributed train step.

Tasks call the `*_forward` functions inside their `compute_loss`; they are pure tensor code (static
shapes) and run under `tf.function(jit_compile=True)`. Feature names are prefixed versions of the BERT
inputs (`<prefix>input_ids`, `<prefix>input_mask`, `<prefix>segment_ids`):

  ICT:   query_* [b,Tq], block_* [b,Tb]
  REALM: query_* [B,Tq]; candidate_* [B,K,Tc] (embedder input, candidate 0 = null doc);
         joint_* [B,K,Tj] (encoder input); mlm_positions, mlm_targets int32 [B,M]; mlm_mask [B,M]
  ORQA:  question_* [B,Tq]; retrieved_block_emb float32 [B,R,D] (fixed index rows of the R retrieved
         blocks); retriever_correct [B,R]; reader_* [B,N,T] and reader_block_mask [B,N,T] (the first N
         retrieved blocks); reader_correct [B,N,S]
"""
from typing import Callable, Dict, Mapping, Sequence

import realm_tf2  # noqa: F401
import tensorflow as tf

from realm_tf2.modeling import losses

_BERT_KEYS = ("input_ids", "input_mask", "segment_ids")


def bert_inputs(features: Mapping[str, tf.Tensor], prefix: str, flatten: bool = False) -> dict:
  """Picks `<prefix>{input_ids,input_mask,segment_ids}`; with `flatten`, [B,K,T] -> [B*K,T]."""
  out = {}
  for key in _BERT_KEYS:
    name = prefix + key
    if name not in features:
      raise KeyError(f"feature '{name}' missing; got keys {sorted(features)}")
    x = features[name]
    if flatten:
      x = tf.reshape(x, [-1, x.shape[-1]])  # [B*K, T]
    out[key] = x
  return out


def ict_forward(query_embedder, block_embedder, features, training) -> Dict[str, tf.Tensor]:
  """ICT: embeds queries and blocks, in-batch (cross-replica) softmax. See `losses.ict_loss`."""
  query_emb = query_embedder(bert_inputs(features, "query_"), training=training)  # [b, D]
  block_emb = block_embedder(bert_inputs(features, "block_"), training=training)  # [b, D]
  return losses.ict_loss(query_emb, block_emb)


def realm_forward(query_embedder, doc_embedder, encoder, features, training) -> Dict[str, tf.Tensor]:
  """REALM: re-embeds query and K candidates with the trainable embedder, marginal MLM loss.

  Returns `losses.realm_marginal_loss` outputs plus `retrieval_scores` [B,K].
  """
  cand_shape = features["candidate_input_ids"].shape  # [B, K, Tc]
  num_candidates = cand_shape[1]
  query_emb = query_embedder(bert_inputs(features, "query_"), training=training)  # [B, D]
  cand_emb = doc_embedder(bert_inputs(features, "candidate_", flatten=True),
                          training=training)  # [B*K, D]
  cand_emb = tf.reshape(cand_emb, [-1, num_candidates, cand_emb.shape[-1]])  # [B, K, D]
  retrieval_scores = tf.einsum("bd,bkd->bk", query_emb, cand_emb)  # [B, K]

  joint = bert_inputs(features, "joint_", flatten=True)  # [B*K, Tj]
  mlm_positions = tf.cast(features["mlm_positions"], tf.int32)  # [B, M]
  num_masks = mlm_positions.shape[-1]
  joint["mlm_positions"] = tf.reshape(
      tf.tile(mlm_positions[:, None, :], [1, num_candidates, 1]), [-1, num_masks])  # [B*K, M]
  mlm_logits = encoder(joint, training=training)["mlm_logits"]  # [B*K, M, V]
  mlm_logits = tf.reshape(
      mlm_logits, [-1, num_candidates, num_masks, mlm_logits.shape[-1]])  # [B, K, M, V]
  out = losses.realm_marginal_loss(retrieval_scores, mlm_logits, features["mlm_targets"],
                                   features["mlm_mask"])
  out["retrieval_scores"] = retrieval_scores
  return out


def orqa_forward(query_embedder, reader, features, training) -> Dict[str, tf.Tensor]:
  """ORQA: exact retriever logits against fixed block embeddings + reader span logits -> joint loss.

  Returns `losses.orqa_loss` outputs plus `retriever_logits` [B,R] and `reader_logits` [B,N,S]
  (retriever score added), `starts`/`ends` [S].
  """
  question_emb = query_embedder(bert_inputs(features, "question_"), training=training)  # [B, D]
  block_emb = tf.stop_gradient(tf.cast(features["retrieved_block_emb"], tf.float32))  # [B, R, D]
  retriever_logits = tf.einsum("bd,brd->br", question_emb, block_emb)  # [B, R]

  reader_shape = features["reader_input_ids"].shape  # [B, N, T]
  num_read = reader_shape[1]
  reader_inputs = bert_inputs(features, "reader_", flatten=True)  # [B*N, T]
  reader_inputs["block_mask"] = tf.reshape(features["reader_block_mask"], [-1, reader_shape[-1]])
  reader_out = reader(reader_inputs, training=training)
  span_logits = tf.reshape(reader_out["logits"], [-1, num_read, reader_out["logits"].shape[-1]])
  reader_logits = losses.add_retriever_scores(span_logits, retriever_logits[:, :num_read])  # [B,N,S]
  out = losses.orqa_loss(retriever_logits, features["retriever_correct"], reader_logits,
                         features["reader_correct"])
  out.update(retriever_logits=retriever_logits, reader_logits=reader_logits,
             starts=reader_out["starts"], ends=reader_out["ends"])
  return out


def make_train_step(forward_fn: Callable[[Mapping[str, tf.Tensor]], Dict[str, tf.Tensor]],
                    variables: Sequence[tf.Variable],
                    optimizer,
                    strategy: tf.distribute.Strategy = None,
                    jit_compile: bool = True):
  """A distributed train step: XLA forward/backward per replica, then `optimizer.apply_gradients`.

  Args:
    forward_fn: features -> dict with scalar `loss` (per-replica mean).
    variables: Trainable variables (deduplicated, e.g. shared embedders listed once).
    optimizer: A tf_keras optimizer created under `strategy.scope()`.
    strategy: Defaults to the current strategy.
    jit_compile: Compile forward+backward with XLA.
  Returns:
    `step(distributed_features) -> {metric: replica-mean scalar}` (a `tf.function`); feed it
    `strategy.experimental_distribute_dataset` elements or plain tensors (single replica).
  """
  strategy = strategy or tf.distribute.get_strategy()

  def forward_backward(features):
    with tf.GradientTape() as tape:
      out = forward_fn(features)
      # Gradients are summed over replicas by the optimizer, so scale each replica's mean loss.
      scaled = out["loss"] / tf.cast(strategy.num_replicas_in_sync, tf.float32)
    grads = tape.gradient(scaled, variables)
    scalars = {k: v for k, v in out.items() if v.shape.rank == 0}
    return grads, scalars

  grad_fn = tf.function(forward_backward, jit_compile=jit_compile)

  def replica_step(features):
    grads, scalars = grad_fn(features)
    optimizer.apply_gradients(zip(grads, variables))
    return scalars

  @tf.function
  def step(features):
    per_replica = strategy.run(replica_step, args=(features,))
    return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
            for k, v in per_replica.items()}

  return step


def unique_variables(*models) -> list:
  """Trainable variables of several models, each variable once (shared embedders)."""
  seen, out = set(), []
  for model in models:
    for v in model.trainable_variables:
      if id(v) not in seen:
        seen.add(id(v))
        out.append(v)
  return out
