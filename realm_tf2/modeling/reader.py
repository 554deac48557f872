"""ORQA reader: BERT + span scorer over every span of width 1..W (original §3.3)."""
from typing import Mapping, Optional, Tuple

import numpy as np
import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert

# Logit added to spans that are not wholly inside the block (the original's constant).
INVALID_SPAN_LOGIT = -10000.0


def enumerate_spans_np(seq_len: int, max_span_width: int) -> Tuple[np.ndarray, np.ndarray]:
  """NumPy twin of `enumerate_spans` (host-side code)."""
  starts, ends = [], []
  for width in range(1, min(max_span_width, seq_len) + 1):
    s = np.arange(0, seq_len - width + 1, dtype=np.int32)
    starts.append(s)
    ends.append(s + width - 1)
  return np.concatenate(starts), np.concatenate(ends)


def enumerate_spans(seq_len: int, max_span_width: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """All spans in ORQA's order: widths 1, 2, ..., W; within a width, starts 0..T-w.

  Args:
    seq_len: T (static).
    max_span_width: W.
  Returns:
    (starts, ends): int32 [S] each, ends inclusive; S = W*T - W*(W-1)/2 (3155 for T=320, W=10).
  """
  starts, ends = enumerate_spans_np(seq_len, max_span_width)
  return tf.constant(starts, tf.int32), tf.constant(ends, tf.int32)


class OrqaReader(tf_keras.Model):
  """Scores every candidate answer span of N blocks of one question.

  proj = Dense(2*span_hidden_size)(sequence_output) -> split into start/end [N,T,S];
  h = relu(start[s] + end[e]); h = LayerNorm(h, eps); logit = Dense(1)(h); spans not wholly inside
  `block_mask` get +(-10000). The retriever score is NOT added here (the loss/task adds it).
  Sub-layer names match the original checkpoint (`reader/dense`, `reader/layer_normalization`,
  `reader/dense_1`). Built eagerly on a dummy batch in `__init__`.

  Args:
    bert_config: `configs.BertConfig` of the reader BERT.
    span_hidden_size: S (256).
    max_span_width: W (10).
    layer_norm_epsilon: 1e-3 (Keras default, as the original).
    seq_len: Default T, used for the dummy build.
    vocab_size: Overrides `bert_config.vocab_size` (required when that is 0).
    name: "reader".

  Call:
    inputs: dict with `input_ids`, `input_mask`, `segment_ids`, `block_mask` int32 [N,T] (callers with
      [B,N,T] flatten to [B*N,T] and reshape the logits back).
    training: Python bool or None.
  Returns:
    dict with `logits` float32 [N,num_spans], `starts` int32 [num_spans], `ends` int32 [num_spans],
    `sequence_output` [N,T,H].
  """

  def __init__(self,
               bert_config: configs.BertConfig,
               span_hidden_size: int = 256,
               max_span_width: int = 10,
               layer_norm_epsilon: float = 1e-3,
               seq_len: int = 320,
               vocab_size: Optional[int] = None,
               name: str = "reader",
               **kwargs):
    super().__init__(name=name, **kwargs)
    self.span_hidden_size = span_hidden_size
    self.max_span_width = max_span_width
    self.seq_len = seq_len
    self.encoder = bert.build_bert_encoder(bert_config, vocab_size, name="encoder")
    self.span_projection = tf_keras.layers.Dense(
        2 * span_hidden_size, kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02), name="dense")
    self.span_layer_norm = tf_keras.layers.LayerNormalization(
        axis=-1, epsilon=layer_norm_epsilon, name="layer_normalization")
    self.span_output = tf_keras.layers.Dense(
        1, kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02), name="dense_1")
    dummy_len = min(seq_len, bert_config.max_position_embeddings)
    self(bert.dummy_features(seq_len=dummy_len,
                             block_mask=tf.ones([1, dummy_len], tf.int32)), training=False)

  def call(self, inputs: Mapping[str, tf.Tensor], training=None) -> dict:
    if "block_mask" not in inputs:
      raise KeyError(f"OrqaReader needs 'block_mask'; got keys {sorted(inputs)}")
    seq_len = inputs["input_ids"].shape[-1]
    if seq_len is None:
      raise ValueError("OrqaReader needs a static sequence length (the span list depends on it).")
    starts, ends = enumerate_spans(seq_len, self.max_span_width)  # [S'], [S']
    sequence_output = self.encoder(bert.to_encoder_inputs(inputs),
                                   training=training)["sequence_output"]  # [N, T, H]
    proj = self.span_projection(sequence_output)  # [N, T, 2S]
    start_proj, end_proj = tf.split(proj, 2, axis=-1)  # [N, T, S] each
    h = tf.gather(start_proj, starts, axis=1) + tf.gather(end_proj, ends, axis=1)  # [N, S', S]
    h = tf.nn.relu(h)
    h = self.span_layer_norm(h)  # [N, S', S]
    logits = tf.cast(tf.squeeze(self.span_output(h), -1), tf.float32)  # [N, S']
    block_mask = tf.cast(inputs["block_mask"], tf.float32)  # [N, T]
    valid = tf.gather(block_mask, starts, axis=1) * tf.gather(block_mask, ends, axis=1)  # [N, S']
    logits += (1.0 - valid) * INVALID_SPAN_LOGIT  # [N, S']
    return {"logits": logits, "starts": starts, "ends": ends, "sequence_output": sequence_output}
