"""QA data pipeline: file validation, static-shape features with counted cuts, eval padding."""
import json

import numpy as np
import pytest

import realm_tf2  # noqa: F401
from realm_tf2 import tokenization
from realm_tf2.data import qa_pipeline


def test_read_qa_file_errors_name_line(tmp_path):
  path = tmp_path / "X.resplit.dev.jsonl"
  path.write_text(json.dumps({"question": "q1", "answer": ["a"]}) + "\n"
                  + json.dumps({"question": "q2", "answer": "not a list"}) + "\n")
  with pytest.raises(ValueError, match=r"X.resplit.dev.jsonl:2: field 'answer'"):
    qa_pipeline.read_qa_file(str(path))
  assert qa_pipeline.qa_file_path("/d", "X", "dev") == "/d/X.resplit.dev.jsonl"
  assert qa_pipeline.is_regex_dataset("CuratedTrec") and not qa_pipeline.is_regex_dataset("WebQuestions")


def test_featurize_shapes_and_counted_cuts(tiny_vocab_file):
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  f = qa_pipeline.QAFeaturizer(tok, max_question_len=3, max_answers=2, max_answer_len=2)
  feats = f.featurize([qa_pipeline.QAExample("who was the first king of paris", ["john", "the city river", "mary", "paris"]),
                       qa_pipeline.QAExample("the king", [])])
  assert feats["question_ids"].shape == (2, 3) and feats["answer_ids"].shape == (2, 2, 2)
  np.testing.assert_array_equal(feats["question_len"], [3, 2])
  np.testing.assert_array_equal(feats["question_ids"][0], tok.tokenize_np(["who was the"])[0])
  np.testing.assert_array_equal(feats["answer_len"], [[1, 1], [0, 0]])  # john, mary kept
  assert feats["answer_ids"][0, 1, 0] == tok.vocab.index("mary")
  assert f.counters.extra["question_truncated"] == 1
  assert f.counters.skipped["answer_too_long"] == 1
  assert f.counters.skipped["answer_over_max_answers"] == 1


def test_eval_dataset_is_padded_to_full_batches(tiny_vocab_file):
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  f = qa_pipeline.QAFeaturizer(tok, 4, 1, 2)
  feats = f.featurize([qa_pipeline.QAExample(f"q {i}", ["a"]) for i in range(5)])
  batches = list(qa_pipeline.make_dataset(feats, 4, is_training=False).as_numpy_iterator())
  assert [b["question_ids"].shape for b in batches] == [(4, 4), (4, 4)]
  np.testing.assert_array_equal(batches[1]["example_index"], [4, -1, -1, -1])


def test_pretokenize_blocks_are_the_span_text_wordpieces(tiny_vocab_file):
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  texts = ["John was born in PARIS.", "the king " * 20]
  ids, lens, truncated = qa_pipeline.pretokenize_blocks(tok, texts, 10)
  wp = tok.tokenize(texts)
  np.testing.assert_array_equal(ids[0, :lens[0]], wp[0].numpy())
  assert lens[1] == 10 and truncated == 1 and ids.dtype == np.int32
  # Position i of a block's ids is wordpiece i of `span_text`: "PARIS" is wordpiece 4.
  assert tok.convert_ids_to_tokens(ids[0, 4:5]) == ["paris"]
  assert tok.span_text(texts[:1], [4], [5]).numpy()[0] == b"PARIS."
