"""REALM / ICT retriever tower: BERT [CLS] pooler -> dense(128) -> LayerNorm -> dropout.

The tower of original §1.1 and §3.2.

`pooling="mean"` (not in the original) averages the last layer over the real tokens instead, for
encoders trained that way (sentence-transformers); the projection and LayerNorm follow as usual.
"""
from typing import Mapping, Optional, Tuple

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert


POOLINGS = ("cls", "mean")


class RealmEmbedder(tf_keras.Model):
  """Embeds queries or documents into the retrieval space (the `projected` signature).

  Computes `pooled_output` of a BERT (tanh pooler over [CLS]; or with `pooling="mean"` the mean of
  the last layer over `input_mask`) -> Dense(projection_size, Glorot-uniform kernel, zero bias, no
  activation) -> LayerNormalization(layer_norm_epsilon) -> Dropout(dropout_rate) in training only.
  No L2 normalisation: retrieval scores are raw dot products.

  The model is built eagerly on a dummy batch in `__init__`, so all weights exist right after
  construction (converters and exporters rely on that).

  Args:
    bert_config: `configs.BertConfig` of the tower.
    projection_size: Output width D (128 in the original).
    layer_norm_epsilon: 1e-12 for the released REALM embedder, 1e-3 for ICT modules.
    dropout_rate: Dropout after the layer norm, training only.
    vocab_size: Overrides `bert_config.vocab_size` (required when that is 0).
    pooling: "cls" (the original: BERT's pooler over [CLS]) or "mean" (mean of the last layer over
      the real tokens, for encoders trained with mean pooling). Same variables either way.
    name: Model name.

  Call:
    inputs: dict with `input_ids`, `input_mask`, `segment_ids`, int32 [B,T].
    training: Python bool or None.
  Returns:
    float32 [B, projection_size] (float32 also under a mixed precision policy).
  """

  def __init__(self,
               bert_config: configs.BertConfig,
               projection_size: int = 128,
               layer_norm_epsilon: float = 1e-12,
               dropout_rate: float = 0.1,
               vocab_size: Optional[int] = None,
               pooling: str = "cls",
               name: str = "embedder",
               **kwargs):
    super().__init__(name=name, **kwargs)
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    self._bert_config = bert_config
    self.projection_size = projection_size
    self.pooling = pooling
    # With [CLS] pooling only [CLS] feeds the pooler: the last layer computes that row alone.
    self.encoder = bert.build_bert_encoder(bert_config, vocab_size, name="encoder",
                                           output_range=1 if pooling == "cls" else None)
    self.projection = tf_keras.layers.Dense(
        projection_size, kernel_initializer="glorot_uniform", bias_initializer="zeros",
        name="dense")
    self.layer_norm = tf_keras.layers.LayerNormalization(
        axis=-1, epsilon=layer_norm_epsilon, name="layer_norm")
    self.dropout = tf_keras.layers.Dropout(dropout_rate)
    self(bert.dummy_features(), training=False)  # Build all weights now.

  def call(self, inputs: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
    outputs = self.encoder(bert.to_encoder_inputs(inputs), training=training)
    if self.pooling == "cls":
      pooled = outputs["pooled_output"]  # [B, H]
    else:
      sequence = outputs["sequence_output"]  # [B, T, H]
      mask = tf.cast(inputs["input_mask"], sequence.dtype)[:, :, None]  # [B, T, 1]
      pooled = tf.reduce_sum(sequence * mask, axis=1) / tf.maximum(
          tf.reduce_sum(mask, axis=1), tf.cast(1.0, sequence.dtype))  # [B, H]
    x = self.projection(pooled)  # [B, D]
    x = self.layer_norm(x)  # [B, D]
    x = self.dropout(x, training=training)  # [B, D]
    return tf.cast(x, tf.float32)


def embedder_from_config(model_config: configs.ModelConfig, vocab_size: Optional[int] = None,
                         name: str = "embedder") -> RealmEmbedder:
  """A `RealmEmbedder` with the retriever settings of `model_config` (bert, projection_size,
  embedder_layer_norm_epsilon, embedder_dropout_rate, embedder_pooling)."""
  return RealmEmbedder(model_config.bert, projection_size=model_config.projection_size,
                       layer_norm_epsilon=model_config.embedder_layer_norm_epsilon,
                       dropout_rate=model_config.embedder_dropout_rate, vocab_size=vocab_size,
                       pooling=model_config.embedder_pooling, name=name)


def build_embedders(model_config: configs.ModelConfig,
                    vocab_size: Optional[int] = None) -> Tuple[RealmEmbedder, RealmEmbedder]:
  """Returns (query_embedder, doc_embedder); the same object when `share_embedders` (REALM default).

  With `share_embedders=False` the document tower is a second, independent `RealmEmbedder` named
  "doc_embedder" (the original's non-shared path exported the wrong module, original §6.10; ours
  is real).
  """
  query_embedder = embedder_from_config(model_config, vocab_size, name="embedder")
  if model_config.share_embedders:
    return query_embedder, query_embedder
  return query_embedder, embedder_from_config(model_config, vocab_size, name="doc_embedder")
