"""Knowledge-augmented encoder ("bert") SavedModel: `tokens`, `mlm`, `tokenization_info`.

The signatures of contracts §3.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from realm_tf2.export import common


class BertExportModule(common.ExportModule):
  """Exported BERT with MLM head.

  Signatures (all int32 inputs, any B, T <= max_position_embeddings, dropout off):
    tokens(input_ids, input_mask, segment_ids [B,T]) -> {"pooled_output" [B,H], "sequence_output" [B,T,H]}
    mlm(input_ids, input_mask, segment_ids [B,T], mlm_positions [B,M])
      -> {"mlm_logits" float32 [B,M,V], "pooled_output" [B,H], "sequence_output" [B,T,H]}

  Args:
    encoder: A built `KnowledgeAugmentedEncoder`.
    vocab_file: vocab.txt stored as an asset.
    do_lower_case: Tokenizer lowercasing flag.
  """

  @tf.function(input_signature=[common.int_spec(2, "input_ids"), common.int_spec(2, "input_mask"),
                                common.int_spec(2, "segment_ids")])
  def tokens(self, input_ids, input_mask, segment_ids):
    out = self.model({"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids},
                     training=False)
    return {"pooled_output": tf.cast(out["pooled_output"], tf.float32),  # [B, H]
            "sequence_output": tf.cast(out["sequence_output"], tf.float32)}  # [B, T, H]

  @tf.function(input_signature=[common.int_spec(2, "input_ids"), common.int_spec(2, "input_mask"),
                                common.int_spec(2, "segment_ids"), common.int_spec(2, "mlm_positions")])
  def mlm(self, input_ids, input_mask, segment_ids, mlm_positions):
    out = self.model({"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
                      "mlm_positions": mlm_positions}, training=False)
    return {"mlm_logits": tf.cast(out["mlm_logits"], tf.float32),  # [B, M, V]
            "pooled_output": tf.cast(out["pooled_output"], tf.float32),  # [B, H]
            "sequence_output": tf.cast(out["sequence_output"], tf.float32)}  # [B, T, H]


def export_bert(knowledge_encoder, vocab_file: str, do_lower_case: bool, export_dir: str) -> str:
  """Writes the "bert" export (e.g. `model_dir/export/<step>/bert`) atomically; returns export_dir."""
  # `tokens` returns every row, which a training model with an output_range does not compute.
  module = BertExportModule(knowledge_encoder.with_full_output(), vocab_file, do_lower_case)
  signatures = {"tokens": module.tokens.get_concrete_function(),
                "mlm": module.mlm.get_concrete_function(),
                "tokenization_info": module.tokenization_info.get_concrete_function()}
  return common.save_atomically(module, export_dir, signatures)
