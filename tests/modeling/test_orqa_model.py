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
             "block_start": tf.constant([2, 2], tf.int32),
             "read_sep_pos": tf.fill([2, 2], -1)}
  preds = {k: v.numpy() for k, v in orqa_model.predictions(outputs).items()}
  assert preds["pred_block"].tolist() == [1, 0] and preds["pred_block_id"].tolist() == [5, 1]
  assert preds["pred_start"].tolist() == [2, 0] and preds["pred_end"].tolist() == [3, 0]
  assert preds["pred_in_block"].tolist() == [True, False]
  assert preds["pred_first_wordpiece"].tolist() == [0, -1]
  assert preds["pred_last_wordpiece"].tolist() == [1, -1]
  np.testing.assert_allclose(preds["pred_score"], [3.0, -9990.0])
  # Title option: block 1 of question 0 is `title [SEP] body` with its [SEP] at block position 0
  # (reader position 2); the [SEP] has no text, so span (3, 3), block position 1, is the first
  # wordpiece of the text.
  body_logits = logits.copy()
  body_logits[0, 1, 3] = 5.0
  for sep, expected in ((-1, 1), (0, 0)):
    titled = dict(outputs, reader_logits=tf.constant(body_logits),
                  read_sep_pos=tf.constant([[-1, sep], [-1, -1]], tf.int32))
    got = orqa_model.predictions(titled)
    assert got["pred_first_wordpiece"].numpy().tolist() == [expected, -1]
    assert got["pred_last_wordpiece"].numpy().tolist() == [expected, -1]
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


def _retrieval_model(block_emb, beam, mips_index=None):
  """A tiny OrqaModel over `block_emb` [N, D] (its blocks' wordpieces are irrelevant here)."""
  from realm_tf2 import configs
  n, d = block_emb.shape
  mc = configs.ModelConfig(
      bert=configs.BertConfig(vocab_size=30, hidden_size=16, num_layers=1, num_attention_heads=2,
                              intermediate_size=16),
      projection_size=d, reader_seq_len=16, retriever_beam_size=beam, reader_beam_size=2,
      max_span_width=2, span_hidden_size=8)
  return orqa_model.OrqaModel(mc, block_emb, np.full([n, 4], 7, np.int32),
                              np.full([n], 4, np.int32), CLS, SEP, mips_index=mips_index)


def test_scann_and_brute_force_retrieve_the_same_rows():
  """ScaNN's TF ops (brute-force scoring below 20k rows) and the in-graph exact search return the
  same rows in the same order on well-separated scores, with the same exact logits."""
  from realm_tf2.retrieval import index as index_lib
  rng = np.random.RandomState(0)
  block_emb = rng.randn(300, 16).astype(np.float32)
  scann = index_lib.IndexFactory("scann", scann_backend="tf")(block_emb)
  assert scann.settings["scoring"] == "brute_force"
  model = _retrieval_model(block_emb, beam=20, mips_index=scann)
  question_emb = tf.constant(rng.randn(5, 16).astype(np.float32))
  ids, logits, valid = model.retrieve(question_emb, 20)  # the model's own: ScaNN
  exact_ids, exact_logits, exact_valid = model.retrieve(question_emb, 20, orqa_model.BRUTE_FORCE)
  np.testing.assert_array_equal(ids.numpy(), exact_ids.numpy())
  np.testing.assert_allclose(logits.numpy(), exact_logits.numpy(), rtol=1e-6)
  assert valid.numpy().all() and exact_valid.numpy().all()
  expected = np.argsort(-question_emb.numpy() @ block_emb.T, axis=1)[:, :20]
  np.testing.assert_array_equal(ids.numpy(), expected)


def test_scann_with_fewer_candidates_than_the_beam_marks_empty_slots():
  """A partitioning tree searching 1 of 30 leaves finds ~10 rows for a beam of 50: the rest are
  `retrieved_valid` False, logit INVALID_RETRIEVAL_LOGIT, never correct, sorted last."""
  from realm_tf2.retrieval import index as index_lib
  rng = np.random.RandomState(1)
  block_emb = rng.randn(300, 16).astype(np.float32)
  settings = dict(num_leaves=30, num_leaves_to_search=1, training_sample_size=300)
  scann = index_lib.ScannIndex(settings=settings, backend="tf").build(block_emb)
  model = _retrieval_model(block_emb, beam=50, mips_index=scann)
  question_emb = tf.constant(rng.randn(3, 16).astype(np.float32))
  ids, logits, valid = (t.numpy() for t in model.retrieve(question_emb, 50))
  assert ids.shape == (3, 50) and 0 < valid.sum() < 150
  for row_ids, row_logits, row_valid in zip(ids, logits, valid):
    k = row_valid.sum()
    assert row_valid[:k].all() and not row_valid[k:].any()  # empty slots last
    assert (row_logits[k:] == orqa_model.INVALID_RETRIEVAL_LOGIT).all()
    assert (np.diff(row_logits[:k]) <= 0).all() and len(set(row_ids[:k])) == k
  # Gold row 0 everywhere: an empty slot (id 0) is never correct.
  outputs = {"retrieved_ids": tf.constant(ids), "retrieved_valid": tf.constant(valid),
             "reader_inputs": {"block_mask": tf.ones([3, 2, 16], tf.int32)},
             "starts": tf.constant([0], tf.int32), "ends": tf.constant([0], tf.int32),
             "block_start": tf.zeros([3], tf.int32)}
  gold = tf.constant([[[0, 0, 0]]] * 3, tf.int32)  # [B, G=1, 3]
  correct = orqa_model.gold_span_correctness(model, outputs, gold)
  np.testing.assert_array_equal(correct["retriever_correct"].numpy(), (ids == 0) & valid)
