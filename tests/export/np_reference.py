"""Independent NumPy forward passes of BERT / REALM embedder / MLM head / ORQA span scorer.

Works directly on *canonical TF1 names* (`bert/encoder/layer_0/attention/self/query/kernel`, kernels
[in, out]), so it checks the converters' name maps and reshapes end to end.
"""
import math

import numpy as np


def gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_exact(x):
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, gamma, beta, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def bert(w, input_ids, input_mask, segment_ids, num_heads, act=gelu_tanh, prefix="bert/"):
  """Returns (sequence_output [B,T,H], pooled_output [B,H]) in float64."""
  g = lambda n: np.asarray(w[prefix + n], np.float64)
  b, t = input_ids.shape
  x = g("embeddings/word_embeddings")[input_ids]
  x = x + g("embeddings/token_type_embeddings")[segment_ids] + g("embeddings/position_embeddings")[:t]
  x = layer_norm(x, g("embeddings/LayerNorm/gamma"), g("embeddings/LayerNorm/beta"), 1e-12)
  h = x.shape[-1]
  d = h // num_heads
  mask_add = (1.0 - input_mask[:, None, None, :].astype(np.float64)) * -10000.0
  layer = 0
  while prefix + f"encoder/layer_{layer}/attention/self/query/kernel" in w:
    p = f"encoder/layer_{layer}/"
    dense = lambda v, n: v @ g(p + n + "/kernel") + g(p + n + "/bias")
    split = lambda v: v.reshape(b, t, num_heads, d).transpose(0, 2, 1, 3)
    q, k, v = (split(dense(x, f"attention/self/{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + mask_add
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, h)
    x = layer_norm(dense(ctx, "attention/output/dense") + x,
                   g(p + "attention/output/LayerNorm/gamma"), g(p + "attention/output/LayerNorm/beta"),
                   1e-12)
    inter = act(dense(x, "intermediate/dense"))
    x = layer_norm(dense(inter, "output/dense") + x, g(p + "output/LayerNorm/gamma"),
                   g(p + "output/LayerNorm/beta"), 1e-12)
    layer += 1
  pooled = np.tanh(x[:, 0] @ g("pooler/dense/kernel") + g("pooler/dense/bias"))
  return x, pooled


def mlm_logits(w, sequence_output, positions, act=gelu_tanh, bert_prefix="bert/",
               cls_prefix="cls/predictions/"):
  """[B,M,V] logits of BERT's MLM head (tied word embeddings)."""
  g = lambda n: np.asarray(w[n], np.float64)
  x = np.take_along_axis(sequence_output, positions[:, :, None], axis=1)  # [B,M,H]
  x = act(x @ g(cls_prefix + "transform/dense/kernel") + g(cls_prefix + "transform/dense/bias"))
  x = layer_norm(x, g(cls_prefix + "transform/LayerNorm/gamma"),
                 g(cls_prefix + "transform/LayerNorm/beta"), 1e-12)
  return x @ g(bert_prefix + "embeddings/word_embeddings").T + g(cls_prefix + "output_bias")


def projection(w, pooled, dense, norm, eps):
  """Embedder head: dense -> LayerNorm (no dropout)."""
  x = pooled @ np.asarray(w[dense + "/kernel"], np.float64) + w[dense + "/bias"]
  return layer_norm(x, w[norm + "/gamma"], w[norm + "/beta"], eps)


def spans(seq_len, max_width):
  starts, ends = [], []
  for width in range(1, max_width + 1):
    for s in range(0, seq_len - width + 1):
      starts.append(s)
      ends.append(s + width - 1)
  return np.array(starts, np.int32), np.array(ends, np.int32)


def span_logits(w, sequence_output, block_mask, max_width, prefix="reader/"):
  """ORQA span scorer (original §3.3), -10000 on invalid spans -> (logits [N,S], starts, ends)."""
  starts, ends = spans(sequence_output.shape[1], max_width)
  proj = sequence_output @ np.asarray(w[prefix + "dense/kernel"], np.float64) + w[prefix + "dense/bias"]
  half = proj.shape[-1] // 2
  hidden = np.maximum(proj[:, starts, :half] + proj[:, ends, half:], 0.0)
  hidden = layer_norm(hidden, w[prefix + "layer_normalization/gamma"],
                      w[prefix + "layer_normalization/beta"], 1e-3)
  logits = (hidden @ w[prefix + "dense_1/kernel"] + w[prefix + "dense_1/bias"])[..., 0]
  valid = block_mask[:, starts] * block_mask[:, ends]
  return logits + (1.0 - valid) * -10000.0, starts, ends
