"""Retriever/embedder SavedModel: `projected` + `tokenization_info` (contracts §3, original §2.2)"""
from typing import Optional

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from realm_tf2.export import common


class EmbedderExportModule(common.ExportModule):
  """Exported embedder; `projected(input_ids, input_mask, segment_ids)` int32 [B,T] -> {"default" [B,D]}.

  Args:
    embedder: A built `RealmEmbedder` (any model mapping the three inputs to float32 [B,D]).
    vocab_file: vocab.txt stored as an asset.
    do_lower_case: Tokenizer lowercasing flag.
  """

  @tf.function(input_signature=[common.int_spec(2, "input_ids"), common.int_spec(2, "input_mask"),
                                common.int_spec(2, "segment_ids")])
  def projected(self, input_ids, input_mask, segment_ids):
    emb = self.model({"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids},
                     training=False)  # [B, D], dropout off
    return {"default": tf.cast(emb, tf.float32)}


def export_embedder(embedder, vocab_file: str, do_lower_case: bool, export_dir: str,
                    encoded_checkpoint: Optional[str] = None) -> str:
  """Writes the embedder export atomically.

  Args:
    embedder: Built `RealmEmbedder`.
    vocab_file: Vocabulary (copied in as an asset).
    do_lower_case: Lowercasing flag returned by `tokenization_info`.
    export_dir: Target directory (e.g. `model_dir/export/<step>/embedder`).
    encoded_checkpoint: Optional prefix of a `block_emb` checkpoint to include as
      `export_dir/encoded/encoded.ckpt`.
  Returns:
    export_dir.
  """
  module = EmbedderExportModule(embedder, vocab_file, do_lower_case)
  signatures = {"projected": module.projected.get_concrete_function(),
                "tokenization_info": module.tokenization_info.get_concrete_function()}
  return common.save_atomically(module, export_dir, signatures, encoded_checkpoint)
