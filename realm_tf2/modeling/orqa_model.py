"""ORQA open-QA model: trainable question tower + fixed block index + reader (original §3.3).

One implementation of retrieve -> read -> predict, used by training, evaluation and the serving
export (`export/serving_export.py` only adds question wordpieces in front and answer text behind):

  `OrqaModel.call`      question wordpieces -> retrieval (top R) -> reader inputs of the top K
                         -> span logits + retriever logit                   (static shapes, XLA)
  `answer_correctness`  answers -> retriever_correct [B,R], reader_correct [B,K,S] (training/eval)
  `gold_span_correctness` the same from a precomputed gold (block, span) list (regex answers,
                         `data/regex_gold.py`)
  `predictions`         global argmax over (block, span) -> block row, span, score
  `correct_at_prediction` token-level exact match at the prediction, reader oracle
  answer text           `RealmTokenizer.span_text` on the predicted block's raw text (strings, so
                         host side in evaluation and in-graph in serving; never on the device)

With exact retrieval (the default), everything in `call`, the correctness functions,
`predictions` and `correct_at_prediction` is static-shape int32/float32 tensor code (no strings, no
Python on values), so it runs under `tf.function(jit_compile=True)` and on TPU, for a batch of
B >= 1 questions (the original ran one question per step).

Correctness is kept out of `call` on purpose: it is the only part that looks at answers, so another
definition (a precomputed gold (block, span) list: `gold_span_correctness`) replaces
`answer_correctness` without touching retrieval or reading.

Retrieval (original §3.3 Retrieve): exact brute force (`matmul` + `top_k` over all N block
embeddings) by default; or, with a `mips_index` (`ScannIndex(backend="tf")`), ScaNN's TF ops give
the R candidate rows, as in the original. ScaNN's ops are CPU-only kernels with no XLA lowering, so
a step that uses them cannot be `jit_compile=True` (the task refuses that combination at start-up).
Either way the retriever logits are exact dot products of the retrieved rows (gradient to the
question tower only), and the candidates are ordered by them. ScaNN may return fewer than R rows (a
partitioning tree with few rows in the searched leaves): the missing slots are `retrieved_valid`
False, with logit `INVALID_RETRIEVAL_LOGIT`, and are never correct.

Reader title option (`block_sep_pos`; not in the original, whose reader never sees titles): a
block's reader wordpieces are `title [SEP] body` (its text `title\nbody`, see
`qa_pipeline.pretokenize_blocks`), so the reader input is `[CLS] q [SEP] title [SEP] body [SEP]`.
Segment ids stay 0 on `[CLS] q [SEP]` and 1 on everything after it (title, inner [SEP], body, last
[SEP]); `block_mask` is 1 on title and body wordpieces and 0 on the inner [SEP]; spans across it
are invalid (`INVALID_SPAN_LOGIT`, like spans outside the block).

Differences from the original, on purpose:
* Exact brute-force retrieval is the default (the original always used ScaNN).
* `retriever_correct` is "an answer's wordpiece sequence occurs in the block's wordpieces". The
  original used a raw, case-sensitive substring test on the block TEXT (`HasAnswer`, original §6.7),
  which needs strings on device. Wordpiece matching is what the reader uses, so both losses now
  agree. (Recall metrics, `top_k_match`, still use `HasAnswer` on the raw text, host side.)
* Block wordpieces are tokenized once on the host (`qa_pipeline.pretokenize_blocks`) with the
  tokenizer used for questions and answers (`RealmTokenizer.tokenize_with_offsets`, ids equal to
  `tokenize`), not per step with ORQA's split-then-lower-case `tokenize_with_original_mapping`.
  The two differ only where case folding changes a delimiter (e.g. a zero-width space between two
  letters splits the word for ORQA, not for BERT's tokenizer).
* Answer text is the raw block text from the first byte of the span's first wordpiece to the last
  byte of its last wordpiece (`RealmTokenizer.span_text`), not SQuAD's `get_final_text` over the
  original tokens joined by single spaces. Where the raw text has whitespace between two original
  tokens, both give the same normalised answer (normalisation collapses whitespace); where two
  original tokens touch (punctuation inside a word: "U.S.", "John's"; CJK characters) the original
  inserts a space ("U . S .", normalised "u s") and ours keeps the text as written ("us", as the
  reference "U.S." normalises). Regex answers (CuratedTrec) see the raw text too.
* Reader packing (`ReaderInputs`, a C++ op in the original) is done with dense gathers
  (`pack_reader_inputs`, on the project's one dense pair packer).
"""
from typing import Dict, Mapping, Optional

import numpy as np
import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import losses
from realm_tf2.modeling import reader as reader_lib
from realm_tf2.retrieval import device_retrieval


class _Untracked:
  """Holder that Keras/tf.Module do not track: the block index must not go into model checkpoints
  (the original kept it in a local variable too; it is re-read from the retriever export)."""

  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)


# Logit of a retrieval slot ScaNN left empty: no probability mass in any softmax over the beam.
INVALID_RETRIEVAL_LOGIT = -1e9
BRUTE_FORCE = "brute_force"


def scann_candidates(mips_index, query: tf.Tensor, k: int):
  """Top-k candidate rows from a ScaNN TF-op index, padded to a static k.

  Args:
    mips_index: `ScannIndex(backend="tf")` (or an object with the same `search_tensors`).
    query: float32 [B, D].
    k: static number of rows.
  Returns:
    ids int32 [B, k] (0 where invalid), valid bool [B, k].
  """
  ids, dist = mips_index.search_tensors(tf.cast(query, tf.float32), k)  # [B, k'], k' <= k
  ids, dist = ids[:, :k], dist[:, :k]
  missing = k - tf.shape(ids)[1]
  ids = tf.ensure_shape(tf.pad(ids, [[0, 0], [0, missing]]), [None, k])  # [B, k]
  dist = tf.ensure_shape(tf.pad(dist, [[0, 0], [0, missing]], constant_values=np.nan),
                         [None, k])  # [B, k]
  valid = ~tf.math.is_nan(dist)  # [B, k]
  return tf.where(valid, ids, 0), valid


def pack_reader_inputs(question_ids, question_len, block_ids, block_len, seq_len, cls_id,
                       sep_id) -> Dict[str, tf.Tensor]:
  """ORQA `ReaderInputs` (original §3.3 Read step 4): `[CLS] q [SEP] block [SEP] 0...`, static
  shapes (XLA).

  The question is never cut (the caller keeps question_len <= seq_len - 3; at seq_len - 3 the block
  region is empty: `[CLS] q [SEP] [SEP]`); the block is cut so the final [SEP] is at most at
  seq_len-1. Segment ids are 0 on [CLS], question and the first [SEP], 1 on the block and the final
  [SEP]; block_mask is 1 only on block wordpieces. The project's one dense pair packer
  (`device_retrieval.pack_pair_dense`) with the question broadcast over the K blocks.

  Args:
    question_ids: int32 [B, Q]; question_len int32 [B] (question_len <= seq_len - 3).
    block_ids: int32 [B, K, Lb]; block_len int32 [B, K].
    seq_len: T (python int); cls_id, sep_id: special ids.
  Returns:
    input_ids, input_mask, segment_ids, block_mask: int32 [B, K, seq_len]; block_start int32 [B]
    (position of the first block wordpiece = question_len + 2).
  """
  packed = device_retrieval.pack_pair_dense(
      question_ids[:, tf.newaxis, :], question_len[:, tf.newaxis], block_ids, block_len, seq_len,
      cls_id, sep_id)  # each [B, K, T]; second_start [B, K]
  return {"input_ids": packed["input_ids"], "input_mask": packed["input_mask"],
          "segment_ids": packed["segment_ids"], "block_mask": packed["second_mask"],
          "block_start": packed["second_start"][:, 0]}


def answer_match_starts(token_ids: tf.Tensor, token_valid: tf.Tensor, answer_ids: tf.Tensor,
                        answer_len: tf.Tensor) -> tf.Tensor:
  """Where each answer's wordpiece sequence starts inside the valid tokens (overlaps allowed).

  Args:
    token_ids: int32 [B, X, T] (X blocks per question).
    token_valid: bool/int [B, X, T], 1 where a token may be part of an answer.
    answer_ids: int32 [B, A, L] zero-padded answers.
    answer_len: int32 [B, A] (0 = no answer in that slot, never matches).
  Returns:
    bool [B, X, T, A]: answer a occurs starting at position t (all its tokens valid).
  """
  max_len = answer_ids.shape[-1]
  seq_len = token_ids.shape[-1]
  ids = tf.pad(token_ids, [[0, 0], [0, 0], [0, max_len]], constant_values=-1)  # [B, X, T+L]
  valid = tf.pad(tf.cast(token_valid, tf.bool), [[0, 0], [0, 0], [0, max_len]])  # [B, X, T+L]
  match_shape = tf.concat([tf.shape(token_ids), tf.shape(answer_len)[1:]], 0)  # [B, X, T, A]
  match = tf.broadcast_to((answer_len > 0)[:, tf.newaxis, tf.newaxis, :], match_shape)
  for l in range(max_len):  # static unroll over answer positions (L is small)
    tok = ids[:, :, l:l + seq_len]  # [B, X, T]
    ok = valid[:, :, l:l + seq_len]  # [B, X, T]
    eq = tf.equal(tok[..., tf.newaxis], answer_ids[:, tf.newaxis, tf.newaxis, :, l])  # [B,X,T,A]
    needed = (l < answer_len)[:, tf.newaxis, tf.newaxis, :]  # [B, 1, 1, A]
    match &= (eq & ok[..., tf.newaxis]) | ~needed
  return match


def retriever_correct(block_ids: tf.Tensor, block_len: tf.Tensor, answer_ids: tf.Tensor,
                      answer_len: tf.Tensor) -> tf.Tensor:
  """A retrieved block is correct when an answer's wordpieces occur in it.

  Args:
    block_ids: int32 [B, R, Lb] wordpieces of the retrieved blocks; block_len int32 [B, R].
    answer_ids: int32 [B, A, L]; answer_len int32 [B, A].
  Returns:
    bool [B, R].
  """
  block_valid = tf.range(block_ids.shape[-1])[tf.newaxis, tf.newaxis, :] < block_len[..., None]
  return tf.reduce_any(answer_match_starts(block_ids, block_valid, answer_ids, answer_len),
                       axis=[2, 3])  # [B, R]


def reader_correct(reader_inputs: Mapping[str, tf.Tensor], starts: tf.Tensor, ends: tf.Tensor,
                   answer_ids: tf.Tensor, answer_len: tf.Tensor) -> tf.Tensor:
  """A span is correct when it is exactly an occurrence of an answer inside the block region
  (ORQA's gold spans: every occurrence of every answer, token-id matching).

  Args:
    reader_inputs: `pack_reader_inputs` output (input_ids, block_mask int32 [B, K, T]).
    starts, ends: int32 [S] span enumeration of the reader.
    answer_ids: int32 [B, A, L]; answer_len int32 [B, A].
  Returns:
    bool [B, K, S].
  """
  match = answer_match_starts(reader_inputs["input_ids"], reader_inputs["block_mask"], answer_ids,
                              answer_len)  # [B, K, T, A]
  match_at_start = tf.gather(match, starts, axis=2)  # [B, K, S, A]
  width = (ends - starts + 1)[tf.newaxis, tf.newaxis, :, tf.newaxis]  # [1, 1, S, 1]
  len_ok = tf.equal(width, answer_len[:, tf.newaxis, tf.newaxis, :])  # [B, 1, S, A]
  return tf.reduce_any(match_at_start & len_ok, axis=-1)  # [B, K, S]


def answer_correctness(model: "OrqaModel", outputs: Mapping[str, tf.Tensor], answer_ids: tf.Tensor,
                       answer_len: tf.Tensor) -> Dict[str, tf.Tensor]:
  """ORQA's correctness of retrieved blocks and read spans against wordpiece answers.

  Args:
    model: the `OrqaModel` that produced `outputs` (its block table gives the retrieved wordpieces).
    outputs: `OrqaModel.call` output.
    answer_ids: int [B, A, L] zero-padded answer wordpieces; answer_len int [B, A].
  Returns:
    retriever_correct bool [B, R]; reader_correct bool [B, K, S].
  """
  answer_ids = tf.cast(answer_ids, tf.int32)
  answer_len = tf.cast(answer_len, tf.int32)
  block_ids, block_len = model.gather_blocks(outputs["retrieved_ids"])  # [B, R, Lb], [B, R]
  return _only_valid_slots(outputs, {
      "retriever_correct": retriever_correct(block_ids, block_len, answer_ids, answer_len),
      "reader_correct": reader_correct(outputs["reader_inputs"], outputs["starts"], outputs["ends"],
                                       answer_ids, answer_len),
  })


def _only_valid_slots(outputs, correct):
  """Empty retrieval slots (`retrieved_valid` False) are never correct."""
  valid = outputs["retrieved_valid"]  # [B, R]
  num_read = correct["reader_correct"].shape[1]
  return {"retriever_correct": correct["retriever_correct"] & valid,
          "reader_correct": correct["reader_correct"] & valid[:, :num_read, tf.newaxis]}


def gold_span_correctness(model: "OrqaModel", outputs: Mapping[str, tf.Tensor],
                          gold_spans: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Correctness from a precomputed gold list of (corpus row, first, last wordpiece) triples, e.g.
  the occurrences of regular-expression answers (`data/regex_gold.py`).

  A retrieved block is correct when its row is a gold row; a span when (row, span) is a gold triple
  and the span lies in the block region the reader sees (both ends on `block_mask`). Static shapes:
  [B, R, G] and [B, K, S, G] comparisons.

  Args:
    model: the `OrqaModel` of `outputs` (unused: the triples already name corpus rows; kept for
      the same signature as `answer_correctness`).
    outputs: `OrqaModel.call` output.
    gold_spans: int [B, G, 3]: corpus row, first and last position among the row's `block_ids`
      (inclusive); rows < 0 are padding.
  Returns:
    retriever_correct bool [B, R]; reader_correct bool [B, K, S].
  """
  del model
  gold = tf.cast(gold_spans, tf.int32)
  rows, first, last = gold[..., 0], gold[..., 1], gold[..., 2]  # each [B, G]
  retrieved = outputs["retrieved_ids"]  # [B, R]
  row_hit = ((retrieved[:, :, tf.newaxis] == rows[:, tf.newaxis, :])
             & (rows >= 0)[:, tf.newaxis, :])  # [B, R, G]
  reader_inputs = outputs["reader_inputs"]
  num_read = reader_inputs["block_mask"].shape[1]
  starts, ends = outputs["starts"], outputs["ends"]  # [S]
  block_start = outputs["block_start"][:, tf.newaxis]  # [B, 1]
  first_at = (first + block_start)[:, tf.newaxis, :]  # [B, 1, G] positions in the reader input
  last_at = (last + block_start)[:, tf.newaxis, :]  # [B, 1, G]
  span_hit = ((starts[tf.newaxis, :, tf.newaxis] == first_at)
              & (ends[tf.newaxis, :, tf.newaxis] == last_at))  # [B, S, G]
  hit = tf.reduce_any(row_hit[:, :num_read, tf.newaxis, :] & span_hit[:, tf.newaxis, :, :],
                      axis=-1)  # [B, K, S]
  block_mask = reader_inputs["block_mask"] > 0  # [B, K, T]
  readable = tf.gather(block_mask, starts, axis=2) & tf.gather(block_mask, ends, axis=2)  # [B,K,S]
  return _only_valid_slots(outputs, {"retriever_correct": tf.reduce_any(row_hit, axis=-1),
                                     "reader_correct": hit & readable})


class OrqaModel(tf_keras.Model):
  """Retriever (question tower) + fixed block index + reader.

  Args:
    model_config: `configs.ModelConfig` (bert, projection_size, reader_seq_len, span sizes, beams).
    block_emb: float32 [N, D] block embeddings (fixed; `encoded.ckpt` of the retriever).
    block_ids: int32 [N, Lb] reader wordpieces of every block (`qa_pipeline.pretokenize_blocks`).
    block_len: int32 [N] wordpieces per block.
    cls_id, sep_id: special ids of the vocabulary.
    vocab_size: word-embedding rows when `model_config.bert.vocab_size` is 0.
    retriever_beam_size: R (default from the config, capped at N).
    reader_beam_size: K blocks read (default from the config, capped at R).
    block_sep_pos: int32 [N], position of the [SEP] between title and body in each row of
      `block_ids` (-1 = no title), for the reader title option; None = no titles.
    mips_index: None (exact in-graph brute force) or a `ScannIndex(backend="tf")` built on
      `block_emb` (CPU only, not XLA-compilable; not tracked or saved).

  Call inputs (int32): question_ids [B, Q], question_len [B] (other keys are ignored).
  Call outputs: see `call`.
  Attributes: retriever (`RealmEmbedder`), reader (`OrqaReader`), num_blocks, retriever_beam_size,
    reader_beam_size, block_emb / block_ids / block_len / block_sep_pos (non-trainable, NOT
    checkpointed), has_titles, mips_index.
  """

  def __init__(self, model_config: configs.ModelConfig, block_emb, block_ids, block_len,
               cls_id: int, sep_id: int, vocab_size: Optional[int] = None,
               retriever_beam_size: Optional[int] = None, reader_beam_size: Optional[int] = None,
               block_sep_pos=None, mips_index=None, name: str = "orqa", **kwargs):
    super().__init__(name=name, **kwargs)
    block_emb = np.asarray(block_emb, np.float32)
    block_ids = np.asarray(block_ids, np.int32)
    block_len = np.asarray(block_len, np.int32)
    n = block_emb.shape[0]
    if block_ids.shape[0] != n or block_len.shape[0] != n:
      raise ValueError(f"block_emb has {n} rows but block_ids/block_len have "
                       f"{block_ids.shape[0]}/{block_len.shape[0]}")
    self.has_titles = block_sep_pos is not None
    block_sep_pos = (np.full([n], -1, np.int32) if block_sep_pos is None
                     else np.asarray(block_sep_pos, np.int32))
    if block_sep_pos.shape != (n,):
      raise ValueError(f"block_sep_pos has shape {block_sep_pos.shape}, expected ({n},)")
    if mips_index is not None and mips_index.num_rows != n:
      raise ValueError(f"mips_index has {mips_index.num_rows} rows but block_emb has {n}")
    if block_emb.shape[1] != model_config.projection_size:
      raise ValueError(f"block_emb width {block_emb.shape[1]} != projection_size "
                       f"{model_config.projection_size}")
    self.model_config = model_config
    self.num_blocks = n
    self.retriever_beam_size = min(retriever_beam_size or model_config.retriever_beam_size, n)
    self.reader_beam_size = min(reader_beam_size or model_config.reader_beam_size,
                                self.retriever_beam_size)
    self.seq_len = model_config.reader_seq_len
    self.cls_id = int(cls_id)
    self.sep_id = int(sep_id)
    self.retriever = embedder_lib.embedder_from_config(model_config, vocab_size, name="retriever")
    self.reader = reader_lib.OrqaReader(
        model_config.bert, span_hidden_size=model_config.span_hidden_size,
        max_span_width=model_config.max_span_width,
        layer_norm_epsilon=model_config.reader_layer_norm_epsilon, seq_len=self.seq_len,
        vocab_size=vocab_size, name="reader")
    self._index = _Untracked(
        block_emb=tf.Variable(block_emb, trainable=False, name="block_emb"),  # [N, D]
        block_ids=tf.Variable(block_ids, trainable=False, name="block_ids"),  # [N, Lb]
        block_len=tf.Variable(block_len, trainable=False, name="block_len"),  # [N]
        block_sep_pos=tf.Variable(block_sep_pos, trainable=False, name="block_sep_pos"),  # [N]
        mips_index=mips_index)

  @property
  def block_emb(self):
    return self._index.block_emb

  @property
  def block_ids(self):
    return self._index.block_ids

  @property
  def block_len(self):
    return self._index.block_len

  @property
  def block_sep_pos(self):
    return self._index.block_sep_pos

  @property
  def mips_index(self):
    return self._index.mips_index

  def retrieve(self, question_emb: tf.Tensor, beam: int, mips_index=None):
    """The top `beam` corpus rows of each question, with exact logits.

    Args:
      question_emb: float32 [B, D] (the search itself sees it through `stop_gradient`).
      beam: R (python int).
      mips_index: None = the model's (`self.mips_index`), `BRUTE_FORCE` = exact in-graph search,
        or another ScaNN TF-op index over the same rows (e.g. the serving export's).
    Returns:
      retrieved_ids int32 [B, R]; retriever_logits float32 [B, R] (exact dot products, gradient to
      the question tower; `INVALID_RETRIEVAL_LOGIT` on empty slots); retrieved_valid bool [B, R].
      Sorted by logit, best first.
    """
    index = self.mips_index if mips_index is None else mips_index
    if isinstance(index, str):
      if index != BRUTE_FORCE:
        raise ValueError(f"mips_index must be an index, None or {BRUTE_FORCE!r}, got {index!r}")
      index = None
    block_emb = tf.convert_to_tensor(self.block_emb)  # [N, D]
    query = tf.stop_gradient(question_emb)  # [B, D]
    if index is None:
      all_scores = tf.matmul(query, block_emb, transpose_b=True)  # [B, N]
      _, retrieved_ids = tf.math.top_k(all_scores, k=beam)  # [B, R]
      valid = tf.ones_like(retrieved_ids, tf.bool)  # [B, R]
    else:
      retrieved_ids, valid = scann_candidates(index, query, beam)  # [B, R] each
    retrieved_emb = tf.gather(block_emb, retrieved_ids)  # [B, R, D]
    logits = tf.einsum("bd,brd->br", question_emb, retrieved_emb)  # [B, R]
    if index is not None:
      # Exact order of ScaNN's candidates (its own order is by approximate score), empty slots last.
      logits = tf.where(valid, logits, INVALID_RETRIEVAL_LOGIT)  # [B, R]
      _, order = tf.math.top_k(tf.stop_gradient(logits), k=beam)  # [B, R]
      retrieved_ids = tf.gather(retrieved_ids, order, batch_dims=1)
      logits = tf.gather(logits, order, batch_dims=1)
      valid = tf.gather(valid, order, batch_dims=1)
    return retrieved_ids, logits, valid

  def gather_blocks(self, ids):
    """Corpus rows `ids` int32 [...] -> (block_ids int32 [..., Lb], block_len int32 [...])."""
    return tf.gather(self.block_ids, ids), tf.gather(self.block_len, ids)

  def retriever_inputs(self, question_ids, question_len):
    """`[CLS] q [SEP]` int32 [B, Q+2], mask 1 on real tokens, segments 0 (original §2.3)."""
    q_max = question_ids.shape[1]
    pos = tf.range(q_max + 2, dtype=tf.int32)[tf.newaxis, :]  # [1, Q+2]
    q_len = question_len[:, tf.newaxis]  # [B, 1]
    q_tok = tf.pad(question_ids, [[0, 0], [1, 1]])  # [B, Q+2], question at 1..Q
    ids = tf.where(pos == 0, self.cls_id, tf.where(pos == q_len + 1, self.sep_id, q_tok))
    ids = tf.where(pos <= q_len + 1, ids, 0)
    return {"input_ids": tf.cast(ids, tf.int32),
            "input_mask": tf.cast(pos <= q_len + 1, tf.int32) + tf.zeros_like(ids),
            "segment_ids": tf.zeros_like(ids)}

  def call(self, inputs: Mapping[str, tf.Tensor], training=None,
           retriever_beam_size: Optional[int] = None, mips_index=None) -> Dict[str, tf.Tensor]:
    """Retrieve the top R blocks and read the top K of them.

    Args:
      inputs: question_ids int [B, Q], question_len int [B].
      training: dropout switch.
      retriever_beam_size: R for this call (python int; default the model's, capped at it). The
        original's PREDICT mode retrieves only the blocks it reads (original §3.3 Retrieve 6).
      mips_index: the search of this call (see `retrieve`; default the model's).
    Returns dict:
      retrieved_ids int32 [B, R]; retriever_logits float32 [B, R] (exact, gradient to the question
      tower only); retrieved_valid bool [B, R]; reader_inputs (dict of int32 [B, K, T]);
      block_start int32 [B]; read_sep_pos int32 [B, K] (the read blocks' `block_sep_pos`);
      reader_logits float32 [B, K, S] (span logits + retriever logit of the block); starts/ends
      int32 [S].
    """
    question_ids = tf.cast(inputs["question_ids"], tf.int32)  # [B, Q]
    question_len = tf.cast(inputs["question_len"], tf.int32)  # [B]
    beam = min(retriever_beam_size or self.retriever_beam_size, self.retriever_beam_size)
    num_read = min(self.reader_beam_size, beam)

    # Retrieve.
    question_emb = self.retriever(self.retriever_inputs(question_ids, question_len),
                                  training=training)  # [B, D]
    retrieved_ids, retriever_logits, retrieved_valid = self.retrieve(
        question_emb, beam, mips_index)  # each [B, R]

    # Read the top K.
    read_ids = retrieved_ids[:, :num_read]  # [B, K]
    block_ids, block_len = self.gather_blocks(read_ids)  # [B, K, Lb], [B, K]
    packed = pack_reader_inputs(question_ids, question_len, block_ids, block_len, self.seq_len,
                                self.cls_id, self.sep_id)  # each [B, K, T]
    read_sep_pos = tf.gather(self.block_sep_pos, read_ids)  # [B, K]
    if self.has_titles:
      sep_at = tf.where(read_sep_pos >= 0, packed["block_start"][:, tf.newaxis] + read_sep_pos,
                        -1)  # [B, K] position of the inner [SEP] in the reader input
      not_sep = tf.range(self.seq_len)[tf.newaxis, tf.newaxis, :] != sep_at[..., tf.newaxis]
      packed["block_mask"] = packed["block_mask"] * tf.cast(not_sep, tf.int32)  # [B, K, T]
    flat = {k: tf.reshape(packed[k], [-1, self.seq_len])
            for k in ("input_ids", "input_mask", "segment_ids", "block_mask")}  # [B*K, T]
    reader_out = self.reader(flat, training=training)
    starts, ends = reader_out["starts"], reader_out["ends"]  # [S]
    num_spans = starts.shape[0]
    span_logits = tf.reshape(reader_out["logits"], [-1, num_read, num_spans])  # [B, K, S]
    if self.has_titles:
      crosses = ((starts[tf.newaxis, tf.newaxis, :] < sep_at[..., tf.newaxis])
                 & (ends[tf.newaxis, tf.newaxis, :] > sep_at[..., tf.newaxis]))  # [B, K, S]
      span_logits += tf.cast(crosses, span_logits.dtype) * reader_lib.INVALID_SPAN_LOGIT
    reader_logits = losses.add_retriever_scores(span_logits, retriever_logits[:, :num_read])
    return {"retrieved_ids": retrieved_ids, "retriever_logits": retriever_logits,
            "retrieved_valid": retrieved_valid, "reader_inputs": packed,
            "block_start": packed["block_start"], "read_sep_pos": read_sep_pos,
            "reader_logits": reader_logits, "starts": starts, "ends": ends}


def predictions(outputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Global argmax over (block, span) of `reader_logits` (original §3.3 Prediction).

  Returns:
    pred_block int32 [B] (index into the K read blocks), pred_span int32 [B] (index into S),
    pred_block_id int32 [B] (corpus row), pred_start/pred_end int32 [B] (positions in the packed
    reader input), pred_score float32 [B], pred_in_block bool [B] (both ends on block wordpieces;
    False only when no block had a readable token), pred_first_wordpiece / pred_last_wordpiece
    int32 [B] (the span's positions among the wordpieces of the block's TEXT, as
    `RealmTokenizer.span_text` takes them: with the title option the inner [SEP] has no text, so
    positions after it move back by one; -1 when not pred_in_block).
  """
  logits = outputs["reader_logits"]  # [B, K, S]
  num_spans = logits.shape[-1]
  flat = tf.reshape(logits, [tf.shape(logits)[0], -1])  # [B, K*S]
  best = tf.argmax(flat, axis=-1, output_type=tf.int32)  # [B]
  block = best // num_spans  # [B]
  span = best % num_spans  # [B]
  start = tf.gather(outputs["starts"], span)  # [B]
  end = tf.gather(outputs["ends"], span)  # [B]
  block_mask = tf.gather(outputs["reader_inputs"]["block_mask"], block, batch_dims=1)  # [B, T]
  in_block = ((tf.gather(block_mask, start, batch_dims=1) > 0)
              & (tf.gather(block_mask, end, batch_dims=1) > 0))  # [B]
  block_start = outputs["block_start"]  # [B]
  sep = tf.gather(outputs["read_sep_pos"], block, batch_dims=1)  # [B], -1 = no title
  first = start - block_start  # [B] position in block_ids
  last = end - block_start  # [B]
  # To positions among the text's wordpieces: the inner [SEP] (never inside a valid span) has none.
  first -= tf.cast((sep >= 0) & (first > sep), tf.int32)
  last -= tf.cast((sep >= 0) & (last > sep), tf.int32)
  return {
      "pred_block": block,
      "pred_span": span,
      "pred_block_id": tf.gather(outputs["retrieved_ids"], block, batch_dims=1),
      "pred_start": start,
      "pred_end": end,
      "pred_score": tf.reduce_max(flat, axis=-1),
      "pred_in_block": in_block,
      "pred_first_wordpiece": tf.where(in_block, first, -1),
      "pred_last_wordpiece": tf.where(in_block, last, -1),
  }


def correct_at_prediction(preds: Mapping[str, tf.Tensor],
                          reader_correct: tf.Tensor) -> Dict[str, tf.Tensor]:
  """ORQA's token-level eval metrics per question (original §3.3 Eval metrics).

  Args:
    preds: `predictions` output.
    reader_correct: bool [B, K, S].
  Returns:
    exact_match bool [B] (reader_correct at the predicted (block, span)); reader_oracle bool [B]
    (some span of the read blocks is correct).
  """
  index = tf.stack([preds["pred_block"], preds["pred_span"]], axis=-1)  # [B, 2]
  return {"exact_match": tf.gather_nd(reader_correct, index, batch_dims=1),
          "reader_oracle": tf.reduce_any(reader_correct, axis=[1, 2])}
