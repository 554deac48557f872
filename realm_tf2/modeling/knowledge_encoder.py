"""REALM knowledge-augmented encoder: BERT + tied-embedding MLM head (original §1.1, "bert")."""
from typing import Mapping, Optional

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert


class KnowledgeAugmentedEncoder(tf_keras.Model):
  """BERT with the standard MLM head, logits computed only at `mlm_positions`.

  Built eagerly on a dummy batch in `__init__` (weights exist after construction).

  Args:
    bert_config: `configs.BertConfig`.
    vocab_size: Overrides `bert_config.vocab_size` (required when that is 0).
    output_range: None, or R when every `mlm_positions` entry is < R (REALM: the masks are in the
      query part of the joint input, < query_seq_len - 1): the last layer then computes only rows
      [0, R) and `sequence_output` is [B, R, H]; logits and `pooled_output` are those of a full call.
      Exports use `with_full_output()`.
    name: Model name ("bert", as the exported module).

  Call:
    inputs: dict with `input_ids`, `input_mask`, `segment_ids` int32 [B,T] and optionally
      `mlm_positions` int32 [B,M].
    training: Python bool or None.
  Returns:
    dict with `sequence_output` [B,T,H] ([B,R,H] with an output_range), `pooled_output` [B,H]
    (compute dtype) and, when `mlm_positions` is given, `mlm_logits` float32 [B,M,V].
  """

  def __init__(self,
               bert_config: configs.BertConfig,
               vocab_size: Optional[int] = None,
               output_range: Optional[int] = None,
               name: str = "bert",
               **kwargs):
    super().__init__(name=name, **kwargs)
    self._bert_config = bert_config
    self.output_range = output_range
    self.encoder = bert.build_bert_encoder(bert_config, vocab_size, name="encoder",
                                           output_range=output_range)
    # MaskedLM ties to the word-embedding table, which exists only once the encoder is built.
    with tf.name_scope(self.name):
      self.encoder(bert.to_encoder_inputs(bert.dummy_features()), training=False)
    self.masked_lm = bert.build_masked_lm(self.encoder, bert_config)
    self(bert.dummy_features(mlm_positions=tf.zeros([1, 1], tf.int32)), training=False)

  @property
  def vocab_size(self) -> int:
    return int(self.encoder.get_embedding_table().shape[0])

  def with_full_output(self) -> "KnowledgeAugmentedEncoder":
    """This model if it has no output_range, else a copy (same weights) that computes every row."""
    if self.output_range is None:
      return self
    full = KnowledgeAugmentedEncoder(self._bert_config, vocab_size=self.vocab_size, name=self.name)
    full.set_weights(self.get_weights())
    return full

  def call(self, inputs: Mapping[str, tf.Tensor], training=None) -> dict:
    outputs = self.encoder(bert.to_encoder_inputs(inputs), training=training)
    result = {"sequence_output": outputs["sequence_output"],  # [B, T, H]
              "pooled_output": outputs["pooled_output"]}  # [B, H]
    if "mlm_positions" in inputs:
      positions = tf.cast(inputs["mlm_positions"], tf.int32)  # [B, M]
      logits = self.masked_lm(outputs["sequence_output"], masked_positions=positions)  # [B, M, V]
      result["mlm_logits"] = tf.cast(logits, tf.float32)
    return result
