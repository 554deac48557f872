"""ORQA reader SavedModel: `span_logits` + `tokenization_info` (contracts §3, original §3.3)."""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from realm_tf2.export import common
from realm_tf2.modeling import bert as bert_lib
from realm_tf2.modeling import reader as reader_lib


def enumerate_spans_dynamic(seq_len: tf.Tensor, max_span_width: int):
  """`reader.enumerate_spans` for a runtime T: widths 1..W, within a width starts 0..T-w.

  Args:
    seq_len: int32 scalar tensor T.
    max_span_width: W (Python int).
  Returns:
    (starts, ends) int32 [S], S = sum_w max(0, T-w+1).
  """
  starts, ends = [], []
  for width in range(1, max_span_width + 1):
    s = tf.range(tf.maximum(seq_len - width + 1, 0), dtype=tf.int32)  # [T-w+1]
    starts.append(s)
    ends.append(s + (width - 1))
  return tf.concat(starts, 0), tf.concat(ends, 0)


class ReaderExportModule(common.ExportModule):
  """Exported ORQA reader.

  `span_logits(input_ids, input_mask, segment_ids, block_mask)` int32 [N,T] (N blocks of one question,
  any T <= max_position_embeddings) -> {"logits" float32 [N,S], "starts" int32 [S], "ends" int32 [S]}.
  Spans not wholly inside `block_mask` get -10000 added; the retriever score is not added.

  `OrqaReader.call` needs a static T (its span list is a constant). A SavedModel signature must accept
  any T, so the span head is re-applied here with the reader's own sub-layers over a span list computed
  at run time; tests check it equals `OrqaReader.call` at fixed T.

  Args:
    reader: A built `OrqaReader` (attributes encoder, span_projection, span_layer_norm, span_output,
      max_span_width).
    vocab_file: vocab.txt stored as an asset.
    do_lower_case: Tokenizer lowercasing flag.
  """

  @tf.function(input_signature=[common.int_spec(2, "input_ids"), common.int_spec(2, "input_mask"),
                                common.int_spec(2, "segment_ids"), common.int_spec(2, "block_mask")])
  def span_logits(self, input_ids, input_mask, segment_ids, block_mask):
    reader = self.model
    features = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
    seq_out = reader.encoder(bert_lib.to_encoder_inputs(features),
                             training=False)["sequence_output"]  # [N, T, H]
    starts, ends = enumerate_spans_dynamic(tf.shape(input_ids)[1], reader.max_span_width)  # [S]
    proj = reader.span_projection(seq_out)  # [N, T, 2*Hs]
    start_proj, end_proj = tf.split(proj, 2, axis=-1)  # [N, T, Hs] each
    h = tf.nn.relu(tf.gather(start_proj, starts, axis=1) + tf.gather(end_proj, ends, axis=1))  # [N, S, Hs]
    h = reader.span_layer_norm(h)  # [N, S, Hs]
    logits = tf.cast(tf.squeeze(reader.span_output(h), -1), tf.float32)  # [N, S]
    mask = tf.cast(block_mask, tf.float32)  # [N, T]
    valid = tf.gather(mask, starts, axis=1) * tf.gather(mask, ends, axis=1)  # [N, S]
    logits += (1.0 - valid) * reader_lib.INVALID_SPAN_LOGIT  # [N, S]
    return {"logits": logits, "starts": starts, "ends": ends}


def export_reader(reader, vocab_file: str, do_lower_case: bool, export_dir: str) -> str:
  """Writes the reader export (e.g. `model_dir/export/best/reader`) atomically; returns export_dir."""
  module = ReaderExportModule(reader, vocab_file, do_lower_case)
  signatures = {"span_logits": module.span_logits.get_concrete_function(),
                "tokenization_info": module.tokenization_info.get_concrete_function()}
  return common.save_atomically(module, export_dir, signatures)
