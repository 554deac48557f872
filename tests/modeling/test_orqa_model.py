"""ORQA pieces on hand-built inputs: the reader packer, answer matching (retriever / reader
correctness), prediction, and the answer text (`RealmTokenizer.span_text`) against the original's
`get_final_text`."""
import numpy as np
import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import tokenization
from realm_tf2.evaluation import answers as answers_lib
from realm_tf2.modeling import orqa_model

CLS, SEP = 2, 3


def _pack(questions, blocks, seq_len):
  """Dense packer inputs from Python lists: one block per question (K = 1)."""
  q_max = max(1, max(len(q) for q in questions))
  b_max = max(1, max(len(b) for b in blocks))
  q_ids = np.array([q + [0] * (q_max - len(q)) for q in questions], np.int32)
  b_ids = np.array([[b + [0] * (b_max - len(b))] for b in blocks], np.int32)
  out = orqa_model.pack_reader_inputs(
      tf.constant(q_ids), tf.constant([len(q) for q in questions], tf.int32), tf.constant(b_ids),
      tf.constant([[len(b)] for b in blocks], tf.int32), seq_len, CLS, SEP)
  return {k: v.numpy() for k, v in out.items()}


def test_pack_reader_inputs_truncates_block():
  q = [64, 23, 15, 35, 11]
  block = list(range(1000, 1400))
  out = _pack([q], [block], 320)
  assert out["input_ids"].shape == (1, 1, 320)
  assert out["input_ids"][0, 0].tolist() == [2] + q + [3] + block[:312] + [3]  # [SEP] at 319
  assert out["segment_ids"][0, 0].tolist() == [0] * 7 + [1] * 313
  assert out["input_mask"][0, 0].tolist() == [1] * 320
  assert out["block_mask"][0, 0].tolist() == [0] * 7 + [1] * 312 + [0]
  assert out["block_start"].tolist() == [7]


def test_pack_reader_inputs_short_question_and_question_filling_the_input():
  out = _pack([[64, 23], list(range(100, 417))], [[41, 23, 16], [41, 23]], 320)
  # Short: padding after the final [SEP].
  assert out["input_ids"][0, 0, :9].tolist() == [2, 64, 23, 3, 41, 23, 16, 3, 0]
  assert out["segment_ids"][0, 0, :9].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0]
  assert out["block_mask"][0, 0, :9].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0]
  assert out["input_mask"][0, 0, :9].tolist() == [1] * 8 + [0]
  # A 317-token question (seq_len - 3, the longest the task allows): no block token fits.
  assert out["input_ids"][1, 0].tolist() == [2] + list(range(100, 417)) + [3, 3]
  assert out["block_mask"][1, 0].sum() == 0
  assert out["segment_ids"][1, 0].tolist() == [0] * 319 + [1]
  assert out["block_start"].tolist() == [4, 319]


def test_reader_and_retriever_correctness():
  # Reader inputs: [CLS] 41 [SEP] 20 21 20 21 21 22 [SEP] 0 ; [CLS] 20 21 [SEP] 21 [SEP] ...
  packed = _pack([[41], [20, 21]], [[20, 21, 20, 21, 21, 22], [21]], 11)
  packed = {k: tf.constant(v) for k, v in packed.items()}
  answers = tf.constant([[[20, 21], [21, 0], [22, 3]], [[20, 21], [0, 0], [0, 0]]], tf.int32)
  answer_len = tf.constant([[2, 1, 2], [2, 0, 0]], tf.int32)
  starts = tf.constant([3, 4, 5, 6, 7, 8, 3, 5, 1], tf.int32)
  ends = tf.constant([3, 4, 5, 6, 7, 8, 4, 6, 2], tf.int32)
  correct = orqa_model.reader_correct(packed, starts, ends, answers, answer_len).numpy()
  # Row 0: "21" at 4, 6, 7 and "20 21" at 3-4 and 5-6 (overlapping occurrences); "22 [SEP]"
  # crosses the block end and never matches.
  assert correct[0, 0].tolist() == [False, True, False, True, True, False, True, True, False]
  # Row 1: "20 21" occurs only in the question (1-2); an empty answer slot never matches.
  assert not correct[1].any()
  block_ids = tf.constant([[[20, 21, 20, 0], [22, 3, 0, 0]], [[21, 0, 0, 0], [20, 21, 9, 9]]])
  block_len = tf.constant([[3, 2], [1, 2]])
  got = orqa_model.retriever_correct(block_ids, block_len, answers, answer_len).numpy().tolist()
  assert got == [[True, True], [False, True]]  # [22, 3] answers row 0; padding past block_len not


def test_predictions_and_correct_at_prediction():
  starts = tf.constant([0, 1, 2, 3, 0, 1, 2], tf.int32)
  ends = tf.constant([0, 1, 2, 3, 1, 2, 3], tf.int32)
  block_mask = np.zeros([2, 2, 4], np.int32)
  block_mask[:, :, 2:] = 1  # block wordpieces at positions 2 and 3 (block_start 2)
  block_mask[1] = 0  # question 1: both read blocks empty
  logits = np.full([2, 2, 7], -10000.0, np.float32)
  logits[0, 1, 6] = 3.0  # question 0: block 1, span (2, 3)
  logits[0, 0, 2] = 2.0
  logits[1, 0, 0] = -9990.0  # question 1: only invalid spans
  outputs = {"reader_logits": tf.constant(logits), "starts": starts, "ends": ends,
             "retrieved_ids": tf.constant([[7, 5, 9], [1, 2, 3]], tf.int32),
             "reader_inputs": {"block_mask": tf.constant(block_mask)},
             "block_start": tf.constant([2, 2], tf.int32)}
  preds = {k: v.numpy() for k, v in orqa_model.predictions(outputs).items()}
  assert preds["pred_block"].tolist() == [1, 0] and preds["pred_block_id"].tolist() == [5, 1]
  assert preds["pred_start"].tolist() == [2, 0] and preds["pred_end"].tolist() == [3, 0]
  assert preds["pred_in_block"].tolist() == [True, False]
  assert preds["pred_first_wordpiece"].tolist() == [0, -1]
  assert preds["pred_last_wordpiece"].tolist() == [1, -1]
  np.testing.assert_allclose(preds["pred_score"], [3.0, -9990.0])
  correct = np.zeros([2, 2, 7], bool)
  correct[0, 0, 2] = True  # the right span, but the prediction is elsewhere
  correct[1, 0, 0] = True
  at = orqa_model.correct_at_prediction(orqa_model.predictions(outputs), tf.constant(correct))
  assert at["exact_match"].numpy().tolist() == [False, True]
  assert at["reader_oracle"].numpy().tolist() == [True, True]


def _span(tok, text, piece):
  """(first, last) wordpiece positions covering the bytes of `piece` (its first occurrence)."""
  raw = text.encode("utf-8")
  begin = raw.index(piece.encode("utf-8"))
  end = begin + len(piece.encode("utf-8"))
  _, starts, ends = tok.tokenize_with_offsets(tf.constant(text))
  starts, ends = starts.numpy().tolist(), ends.numpy().tolist()
  return starts.index(begin), ends.index(end)


@pytest.fixture(scope="module")
def tok(tiny_vocab_file):
  return tokenization.RealmTokenizer(tiny_vocab_file)


def test_span_text_is_the_raw_text_with_case_and_accents(tok):
  texts = ["Caf\u00e9 JOHN's book", "Stra\u00dfe in Paris", "born in  Paris\nin 1875.", "x"]
  pieces = ["Caf\u00e9 JOHN's", "Stra\u00dfe", "Paris\nin 1875.", "x"]
  spans = [_span(tok, t, p) for t, p in zip(texts, pieces)]
  got = tok.span_text(tf.constant(texts), [s for s, _ in spans], [e for _, e in spans]).numpy()
  assert [g.decode("utf-8") for g in got] == pieces
  # Out of range or reversed spans give "" (e.g. no valid span in the read blocks).
  bad = tok.span_text(tf.constant(["a b", "a b", "a b", ""]), [-1, 1, 0, 0], [0, 0, 5, 0]).numpy()
  assert bad.tolist() == [b"", b"", b"", b""]


def test_answer_text_vs_original_get_final_text(tok):
  """The original's answer (original tokens joined by spaces, trimmed by SQuAD's `get_final_text`)
  and ours (the raw text of the span) normalise to the same answer where the raw text has whitespace
  between the span's original tokens, also across case, accents and runs of whitespace; where
  tokens touch, ours keeps the text as written and matches the reference; the original does not."""
  from official.nlp.data import squad_lib
  cases = [
      # (block, span text, the span's original tokens (ORQA's split), reference answer)
      ("Mary was born in  London\tin 1900.", "London\tin 1900", ["London", "in", "1900"],
       "london in 1900"),
      ("The Caf\u00e9 opened in JUNE.", "Caf\u00e9", ["Caf\u00e9"], "Cafe\u0301"),
      ("in 1875, the king", "1875,", ["1875", ","], "1875"),
      ("the U.S. army", "U.S.", ["U", ".", "S", "."], "U.S."),
      ("John's book", "John's", ["John", "'", "s"], "John's"),
  ]
  expect_same = [True, True, True, False, False]
  for (block, piece, orig_tokens, reference), same in zip(cases, expect_same):
    first, last = _span(tok, block, piece)
    ours = tok.span_text(tf.constant([block]), [first], [last]).numpy()[0].decode("utf-8")
    assert ours == piece
    ids = tok.tokenize(tf.constant(block)).numpy()[first:last + 1]
    wp_text = " ".join(tok.convert_ids_to_tokens(ids)).replace(" ##", "").replace("##", "")
    original = squad_lib.get_final_text(wp_text, " ".join(orig_tokens), True)
    assert (answers_lib.normalize_answer(ours) == answers_lib.normalize_answer(original)) == same, (
        ours, original)
    assert answers_lib.exact_match(ours, [reference]), (ours, reference)
    if not same:
      assert not answers_lib.exact_match(original, [reference]), original
