"""Servable ORQA QA model: `serving_default(question: string [B])` -> answer (CONTRACTS §3).

One SavedModel holding the question tower, the reader, the block embeddings and the block texts; the
whole pipeline is graph ops (TF Text for tokenization, no py_function), so it loads in a process that
imports only `tensorflow` and `tensorflow_text` (and in TF Serving with the TF Text ops linked):

  question -> TF Text wordpieces (cut to max_question_len) -> `[CLS] q [SEP]` -> question embedding
  -> brute-force scores over all stored block embeddings -> top K (reader_beam_size) blocks
  -> stored texts -> in-graph `tokenize_with_original_mapping` -> `[CLS] q [SEP] block [SEP]` (T)
  -> reader span logits + retriever score -> global argmax (block, span)
  -> answer = the block's ORIGINAL tokens covered by the span, joined by single spaces.

Defined behaviour on odd input: an empty question is embedded as `[CLS] [SEP]` and answered normally;
a very long question is cut to `max_question_len` wordpieces; if no span is valid (e.g. empty blocks)
the answer is "" with the best (very negative) score. (SQuAD's `get_final_text` used by the eval
path is Python, so serving answers are the plain original-token text, possibly differing in
surrounding punctuation spacing.)
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from realm_tf2 import tokenization
from realm_tf2.export import common

# Joint logits below this mean "no valid span" (invalid spans carry -10000).
_NO_SPAN_LOGIT = -5000.0


class QAServingModule(tf.Module):
  """The exported QA model.

  Args:
    model: A built `OrqaModel` (its retriever, reader and block_emb are used).
    block_texts: list of N raw block strings, rows aligned with `model.block_emb`.
    vocab_file / do_lower_case: tokenizer (vocab copied in as an asset).
    max_question_len: wordpieces kept from the question (Q).
    reader_beam_size: blocks read per question (K, capped at N).
  """

  def __init__(self, model, block_texts, vocab_file: str, do_lower_case: bool,
               max_question_len: int = 64, reader_beam_size: int = 5):
    super().__init__()
    n = int(model.block_emb.shape[0])
    if len(block_texts) != n:
      raise ValueError(f"{len(block_texts)} block texts but block_emb has {n} rows")
    self._holder = common._Untracked(model)  # pylint: disable=protected-access
    self.tokenizer = tokenization.RealmTokenizer(vocab_file, do_lower_case)
    self.tokenization_info_module = tokenization.TokenizationInfo(vocab_file, do_lower_case)
    self.retriever_variables = list(model.retriever.variables)
    self.reader_variables = list(model.reader.variables)
    self.block_emb = tf.Variable(tf.convert_to_tensor(model.block_emb), trainable=False,
                                 name="block_emb")  # [N, D]
    self.block_texts = tf.Variable(tf.constant(list(block_texts), tf.string), trainable=False,
                                   name="block_texts")  # [N]
    self.max_question_len = int(max_question_len)
    self.num_read = int(min(reader_beam_size, n))
    self.seq_len = int(model.seq_len)

  @property
  def model(self):
    return self._holder.obj

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="question")])
  def serve(self, question):
    tok = self.tokenizer
    model = self.model
    k = self.num_read
    batch = tf.shape(question)[0]
    q_wp = tok.tokenize(question)[:, :self.max_question_len]  # ragged [B, (q)]
    q_inputs = tokenization.bert_pack([q_wp], self.max_question_len + 2, tok.cls_id,
                                      tok.sep_id)  # [B, Q+2]
    q_emb = model.retriever(q_inputs, training=False)  # [B, D]
    scores = tf.matmul(q_emb, self.block_emb, transpose_b=True)  # [B, N]
    top_scores, top_ids = tf.math.top_k(scores, k=k)  # [B, K]
    texts = tf.reshape(tf.gather(self.block_texts, top_ids), [-1])  # [B*K]
    orig_tokens, wp_ids, token_map = tok.tokenize_with_original_mapping(texts)  # ragged [B*K, (.)]
    q_rep = tf.gather(q_wp, tf.repeat(tf.range(batch), k))  # ragged [B*K, (q)]
    packed = tokenization.pack_reader_inputs(q_rep, wp_ids, token_map, tok.cls_id, tok.sep_id,
                                             self.seq_len)  # [B*K, T]
    reader_out = model.reader({key: packed[key] for key in
                               ("input_ids", "input_mask", "segment_ids", "block_mask")},
                              training=False)
    num_spans = reader_out["starts"].shape[0]
    logits = tf.reshape(reader_out["logits"], [batch, k, num_spans])  # [B, K, S]
    logits += top_scores[:, :, tf.newaxis]
    flat = tf.reshape(logits, [batch, k * num_spans])  # [B, K*S]
    best = tf.argmax(flat, axis=-1, output_type=tf.int32)  # [B]
    best_score = tf.reduce_max(flat, axis=-1)  # [B]
    block = best // num_spans  # [B]
    span = best % num_spans  # [B]
    row = tf.range(batch) * k + block  # [B] row in the B*K flattened blocks
    start = tf.gather(reader_out["starts"], span)  # [B]
    end = tf.gather(reader_out["ends"], span)  # [B]
    row_map = tf.gather(packed["token_map"], row)  # [B, T]
    o_start = tf.gather(row_map, start, batch_dims=1)  # [B]
    o_end = tf.gather(row_map, end, batch_dims=1)  # [B]
    sel = tf.gather(orig_tokens, row)  # ragged string [B, (o)]
    pos = tf.ragged.range(sel.row_lengths())  # ragged int64 [B, (o)]
    keep = ((pos >= tf.cast(o_start, tf.int64)[:, tf.newaxis])
            & (pos <= tf.cast(o_end, tf.int64)[:, tf.newaxis]))
    answer = tf.strings.reduce_join(tf.ragged.boolean_mask(sel, keep), axis=1, separator=" ")  # [B]
    valid = (best_score > _NO_SPAN_LOGIT) & (o_start >= 0) & (o_end >= o_start)
    answer = tf.where(valid, answer, tf.fill(tf.shape(answer), ""))
    block_index = tf.cast(tf.gather(top_ids, block, batch_dims=1), tf.int64)  # [B]
    return {"answer": answer, "score": best_score, "block_index": block_index,
            "block_text": tf.gather(self.block_texts, block_index)}


def export_serving(model, block_texts, vocab_file: str, do_lower_case: bool, export_dir: str,
                   max_question_len: int = 64, reader_beam_size: int = 5) -> str:
  """Writes `model_dir/export/serving` atomically (signatures `serving_default`, `tokenization_info`)."""
  module = QAServingModule(model, block_texts, vocab_file, do_lower_case, max_question_len,
                           reader_beam_size)
  signatures = {"serving_default": module.serve.get_concrete_function(),
                "tokenization_info": module.tokenization_info_module.__call__.get_concrete_function()}
  return common.save_atomically(module, export_dir, signatures)
