"""REALM / ICT retriever tower: BERT [CLS] pooler -> dense(128) -> LayerNorm -> dropout (§1.1, §3.2)."""
from typing import Mapping, Optional, Tuple

import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert


class RealmEmbedder(tf_keras.Model):
  """Embeds queries or documents into the retrieval space (the `projected` signature).

  Computes `pooled_output` of a BERT (tanh pooler over [CLS]) -> Dense(projection_size, Glorot-uniform
  kernel, zero bias, no activation) -> LayerNormalization(layer_norm_epsilon) -> Dropout(dropout_rate)
  in training only. No L2 normalisation: retrieval scores are raw dot products.

  The model is built eagerly on a dummy batch in `__init__`, so all weights exist right after
  construction (converters and exporters rely on that).

  Args:
    bert_config: `configs.BertConfig` of the tower.
    projection_size: Output width D (128 in the original).
    layer_norm_epsilon: 1e-12 for the released REALM embedder, 1e-3 for ICT modules.
    dropout_rate: Dropout after the layer norm, training only.
    vocab_size: Overrides `bert_config.vocab_size` (required when that is 0).
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
               name: str = "embedder",
               **kwargs):
    super().__init__(name=name, **kwargs)
    self._bert_config = bert_config
    self.projection_size = projection_size
    # Only [CLS] feeds the pooler, so the last layer computes that row alone (output_range=1).
    self.encoder = bert.build_bert_encoder(bert_config, vocab_size, name="encoder", output_range=1)
    self.projection = tf_keras.layers.Dense(
        projection_size, kernel_initializer="glorot_uniform", bias_initializer="zeros",
        name="dense")
    self.layer_norm = tf_keras.layers.LayerNormalization(
        axis=-1, epsilon=layer_norm_epsilon, name="layer_norm")
    self.dropout = tf_keras.layers.Dropout(dropout_rate)
    self(bert.dummy_features(), training=False)  # Build all weights now.

  def call(self, inputs: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
    pooled = self.encoder(bert.to_encoder_inputs(inputs), training=training)["pooled_output"]
    x = self.projection(pooled)  # [B, D]
    x = self.layer_norm(x)  # [B, D]
    x = self.dropout(x, training=training)  # [B, D]
    return tf.cast(x, tf.float32)


def build_embedders(model_config: configs.ModelConfig,
                    vocab_size: Optional[int] = None) -> Tuple[RealmEmbedder, RealmEmbedder]:
  """Returns (query_embedder, doc_embedder); the same object when `share_embedders` (REALM default).

  With `share_embedders=False` the document tower is a second, independent `RealmEmbedder` named
  "doc_embedder" (the original's non-shared path exported the wrong module, §6.10; ours is real).
  """
  kwargs = dict(projection_size=model_config.projection_size,
                layer_norm_epsilon=model_config.embedder_layer_norm_epsilon,
                dropout_rate=model_config.embedder_dropout_rate,
                vocab_size=vocab_size)
  query_embedder = RealmEmbedder(model_config.bert, name="embedder", **kwargs)
  if model_config.share_embedders:
    return query_embedder, query_embedder
  return query_embedder, RealmEmbedder(model_config.bert, name="doc_embedder", **kwargs)
