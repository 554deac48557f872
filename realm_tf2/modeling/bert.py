"""BERT towers built from Model Garden (original §1.1, §4).

Every BERT in realm-tf2 (the retriever/embedder tower, the knowledge-augmented encoder and the ORQA
reader) is a Model Garden `networks.BertEncoderV2`; the MLM head is `layers.MaskedLM` with the output
projection tied to the word embeddings. Nothing here re-implements a transformer.

Variable layout of `BertEncoderV2` (what checkpoint converters map TF1 `bert/...` names onto):
  word_embeddings/embeddings [V,H]        <- bert/embeddings/word_embeddings
  type_embeddings/embeddings [types,H]    <- bert/embeddings/token_type_embeddings
  position_embedding/embeddings [P,H]     <- bert/embeddings/position_embeddings
  embeddings/layer_norm/{gamma,beta}      <- bert/embeddings/LayerNorm
  transformer/layer_L/self_attention/{query,key,value}/kernel [H, heads, H/heads], bias [heads, H/heads]
                                          <- .../attention/self/{query,key,value} (reshape [H,H])
  transformer/layer_L/self_attention/attention_output/kernel [heads, H/heads, H], bias [H]
                                          <- .../attention/output/dense
  transformer/layer_L/self_attention_layer_norm  <- .../attention/output/LayerNorm
  transformer/layer_L/intermediate/{kernel [H,I], bias}  <- .../intermediate/dense
  transformer/layer_L/output/{kernel [I,H], bias}        <- .../output/dense
  transformer/layer_L/output_layer_norm                  <- .../output/LayerNorm
  pooler_transform/{kernel,bias}                         <- bert/pooler/dense
MaskedLM (`build_masked_lm`): transform/dense, transform/LayerNorm, output_bias/bias
                                          <- cls/predictions/transform/{dense,LayerNorm}, output_bias
"""
from typing import Mapping, Optional

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras
from official.modeling import activations
from official.nlp.modeling import layers as nlp_layers
from official.nlp.modeling import networks

from realm_tf2 import configs

# Our feature names (the original signatures) -> Model Garden's encoder input names.
_INPUT_NAME_MAP = (("input_ids", "input_word_ids"),
                   ("input_mask", "input_mask"),
                   ("segment_ids", "input_type_ids"))


def resolve_vocab_size(bert_config: configs.BertConfig, vocab_size: Optional[int] = None) -> int:
  """Returns the word-embedding rows: explicit `vocab_size`, else `bert_config.vocab_size`.

  Raises:
    ValueError: if neither is positive (vocab_size 0 means "take it from the vocab file", which the
      caller has to resolve).
  """
  size = vocab_size if vocab_size else bert_config.vocab_size
  if not size or size <= 0:
    raise ValueError(
        "BertConfig.vocab_size is 0 (= number of lines of the vocab file) and no vocab_size was "
        "passed; resolve it from the vocab file first.")
  return int(size)


def get_activation(name: str):
  """The activation a BertConfig names.

  "gelu" is google-research/bert's tanh approximation (Model Garden's `activations.gelu`);
  "gelu_exact" is the erf form that Hugging Face checkpoints use (their config says "gelu");
  other names resolve through tf_keras.
  """
  if name == "gelu":
    return activations.gelu
  if name == "gelu_exact":
    return lambda x: tf.nn.gelu(x, approximate=False)
  return tf_keras.activations.get(name)


def build_bert_encoder(bert_config: configs.BertConfig,
                       vocab_size: Optional[int] = None,
                       name: Optional[str] = None,
                       output_range: Optional[int] = None) -> networks.BertEncoderV2:
  """Builds a Model Garden `BertEncoderV2` with google-research/bert semantics.

  Args:
    bert_config: Architecture (hidden size, layers, heads, dropouts, initializer range, ...).
    vocab_size: Overrides `bert_config.vocab_size` (needed when that is 0).
    name: Optional Keras layer name.
    output_range: Model Garden's `output_range`: the LAST layer computes only rows
      [0, output_range) (it still attends over every key/value), so those rows and
      `pooled_output` equal a full call's and `sequence_output` is [B, output_range, H]. For towers
      that read only [CLS] (the embedders, 1) or only the first rows (REALM's masked query).

  Returns:
    An unbuilt `BertEncoderV2`; call it with `to_encoder_inputs(features)`. Outputs a dict with
    `sequence_output` [B,T,H], `pooled_output` [B,H] (tanh pooler over [CLS]), `encoder_outputs`.
  """
  activation = get_activation(bert_config.hidden_activation)
  kwargs = {} if name is None else {"name": name}
  return networks.BertEncoderV2(
      vocab_size=resolve_vocab_size(bert_config, vocab_size),
      hidden_size=bert_config.hidden_size,
      num_layers=bert_config.num_layers,
      num_attention_heads=bert_config.num_attention_heads,
      max_sequence_length=bert_config.max_position_embeddings,
      type_vocab_size=bert_config.type_vocab_size,
      inner_dim=bert_config.intermediate_size,
      inner_activation=activation,
      output_dropout=bert_config.dropout_rate,
      attention_dropout=bert_config.attention_dropout_rate,
      initializer=tf_keras.initializers.TruncatedNormal(stddev=bert_config.initializer_range),
      output_range=output_range,
      **kwargs)


def build_masked_lm(encoder: networks.BertEncoderV2,
                    bert_config: configs.BertConfig,
                    name: str = "cls/predictions") -> nlp_layers.MaskedLM:
  """BERT's MLM head: dense(H, gelu) -> LayerNorm(1e-12) -> x·word_embeddings^T + output_bias."""
  return nlp_layers.MaskedLM(
      embedding_table=encoder.get_embedding_table(),
      activation=get_activation(bert_config.hidden_activation),
      initializer=tf_keras.initializers.TruncatedNormal(stddev=bert_config.initializer_range),
      output="logits",
      name=name)


def to_encoder_inputs(features: Mapping[str, tf.Tensor]) -> dict:
  """Maps {`input_ids`,`input_mask`,`segment_ids`} int32 [B,T] to Model Garden's encoder input dict.

  Raises:
    KeyError: naming the missing feature.
  """
  out = {}
  for ours, theirs in _INPUT_NAME_MAP:
    if ours not in features:
      raise KeyError(f"BERT input feature '{ours}' missing; got keys {sorted(features)}")
    out[theirs] = tf.cast(features[ours], tf.int32)
  return out


def dummy_features(batch_size: int = 1, seq_len: int = 8, **extra) -> dict:
  """All-ones int32 inputs used to build models eagerly (so weights exist after construction)."""
  feats = {"input_ids": tf.ones([batch_size, seq_len], tf.int32),
           "input_mask": tf.ones([batch_size, seq_len], tf.int32),
           "segment_ids": tf.zeros([batch_size, seq_len], tf.int32)}
  feats.update(extra)
  return feats
