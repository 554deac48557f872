"""prepare_qa: validation, normalisation, dedupe, hash resplit, regex checks."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data_prep import prepare_qa
from realm_tf2 import io_utils


def _write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return path


def _read(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _dev_by_fingerprint(questions):
  # Independent check of the rule: to_hash_bucket_fast(s, n) == Fingerprint64(s) % n, and
  # tf.fingerprint gives Fingerprint64 as 8 little-endian bytes.
  fp = tf.fingerprint(tf.constant(questions)).numpy()
  values = [int.from_bytes(bytes(row), "little") for row in fp]
  return [v % 100000 % 10 == 0 for v in values]


def test_resplit_counts_and_membership(tmp_path):
  questions = [f"who wrote book number {i}?" for i in range(60)]
  train = _write(tmp_path / "WebQuestions-train.txt",
                 [{"question": q, "answer": [f"author {i}"]} for i, q in enumerate(questions)])
  test = _write(tmp_path / "WebQuestions-test.txt",
                [{"question": "what is  the capital\tof France ?", "answer": ["Paris"]}])
  out = prepare_qa.prepare_qa("WebQuestions", str(tmp_path / "out"), str(train), str(test))
  expected_dev = [q for q, d in zip(questions, _dev_by_fingerprint(questions)) if d]
  assert 0 < len(expected_dev) < 60
  dev = _read(tmp_path / "out" / "WebQuestions.resplit.dev.jsonl")
  tr = _read(tmp_path / "out" / "WebQuestions.resplit.train.jsonl")
  te = _read(tmp_path / "out" / "WebQuestions.resplit.test.jsonl")
  assert [ex["question"] for ex in dev] == expected_dev
  assert out["dev"] == len(expected_dev) and out["train"] == 60 - len(expected_dev)
  assert len(tr) == out["train"] and out["test"] == 1
  assert te == [{"question": "what is the capital of France ?", "answer": ["Paris"]}]
  np.testing.assert_array_equal(prepare_qa.is_dev_question(questions),
                                _dev_by_fingerprint(questions))
  with open(tmp_path / "out" / "WebQuestions.report.json") as f:  # the final report, as a file
    report = json.load(f)
  assert [report[k] for k in ("train", "dev", "test")] == [out["train"], out["dev"], out["test"]]
  assert report["train_file"]["read"] == 60 and report["train_file"]["written"] == 60
  assert report["test_file"]["written"] == 1 and report["dataset_name"] == "WebQuestions"


def test_dedupe_and_merge(tmp_path):
  train = _write(tmp_path / "t.jsonl", [
      {"question": "q one", "answer": ["a"]},
      {"question": "q  one ", "answer": ["a"]},          # identical after normalisation: dropped
      {"question": "q one", "answer": ["b", "a"]},       # same question, new answer: merged
      {"question": "q two", "answer": "single"},         # string answer wrapped
  ])
  c = io_utils.Counters()
  exs = prepare_qa.read_qa_file(str(train), False, c)
  assert exs == [{"question": "q one", "answer": ["a", "b"]},
                 {"question": "q two", "answer": ["single"]}]
  assert c.read == 4 and c.skipped["duplicate_example"] == 1
  assert c.extra["merged_duplicate_question"] == 1 and c.extra["answer_string_wrapped"] == 1


def test_bad_lines_error_and_counted_skips(tmp_path):
  bad = _write(tmp_path / "bad.jsonl", [
      {"question": "ok", "answer": ["x"]},
      "{not json",
      {"question": "", "answer": ["x"]},
      {"question": "no answer"},
      {"question": "bad type", "answer": [1]},
      {"question": "empty answers", "answer": [" "]},
      "[1, 2]",
  ])
  with pytest.raises(io_utils.BadLineError, match=r"bad.jsonl:2: invalid JSON"):
    prepare_qa.read_qa_file(str(bad), False, io_utils.Counters())
  c = io_utils.Counters()
  exs = prepare_qa.read_qa_file(str(bad), False, c, skip_bad_lines=True)
  assert [e["question"] for e in exs] == ["ok"]
  assert dict(c.skipped) == {"bad_json": 1, "empty_question": 1, "missing_answer": 1,
                             "bad_answer_type": 1, "no_answers": 1, "not_an_object": 1}


def test_curated_trec_regex_validation(tmp_path):
  f = _write(tmp_path / "CuratedTrec-train.txt", [
      {"question": "how tall?", "answer": ["(?:29|twenty-nine)\\s+thousand"]},
      {"question": "when?", "answer": ["19[0-9"]},
  ])
  with pytest.raises(io_utils.BadLineError, match=r"CuratedTrec-train.txt:2: answer regex"):
    prepare_qa.read_qa_file(str(f), True, io_utils.Counters())
  c = io_utils.Counters()
  exs = prepare_qa.read_qa_file(str(f), True, c, skip_bad_lines=True)
  # Regex answers keep their inner whitespace escapes untouched.
  assert exs == [{"question": "how tall?", "answer": ["(?:29|twenty-nine)\\s+thousand"]}]
  assert c.skipped["bad_regex"] == 1
  assert prepare_qa.find_input(str(tmp_path), "CuratedTrec", "train").endswith("CuratedTrec-train.txt")
