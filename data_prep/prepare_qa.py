r"""Validates, normalises, deduplicates and resplits open-domain QA data (original §3.5).

  python -m data_prep.prepare_qa --dataset_name=WebQuestions --input_dir=raw --output_dir=data

Input: JSONL lines `{"question": str, "answer": [str, ...]}` (a single answer string is accepted
and wrapped). `--input_dir` looks for `{Name}-train.{txt,jsonl}` and `{Name}-test.{txt,jsonl}` (for
NaturalQuestions the test file may also be `{Name}-dev.*`, as ORQA used the NQ dev set as test);
or give `--train_file` / `--test_file`.

Output: `{output_dir}/{Name}.resplit.{train,dev,test}.jsonl`:
* train → dev if `tf.strings.to_hash_bucket_fast(question, 100000) % 10 == 0` (the original
  create_data_splits.py rule, computed with the same TensorFlow op for exact parity), else train.
  The hash is of the question as written (after whitespace normalisation, a no-op on the released
  data).
* test = the test file, validated and normalised the same way (not resplit).
Normalisation: runs of whitespace → one space, stripped, in questions and (non-regex) answers;
CuratedTrec answers are regular expressions, only stripped, and must compile with
`re.IGNORECASE | re.UNICODE | re.MULTILINE` (the evaluation flags).
Deduplication within a file: an identical (question, answers) line is dropped
(`duplicate_example`); the same question with other answers is merged into the first occurrence,
answers unioned in order (`merged_duplicate_question`), since evaluation joins on the question.
Invalid lines raise an error naming file and line, or with --skip_bad_lines are counted and skipped
(reasons: bad_json, bad_utf8, not_an_object, missing_question, empty_question, missing_answer,
bad_answer_type, no_answers, bad_regex). Memory: one file's examples (QA sets are ≤ ~100k lines).
The final report (split sizes, counts per input file) is printed and written as JSON to
`{output_dir}/{Name}.report.json`.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import collections
import json
import os
import re
from typing import Dict, List, Optional

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from data_prep import common
from realm_tf2 import io_utils

DATASETS = ("NaturalQuestions", "WebQuestions", "CuratedTrec")
REGEX_DATASETS = ("CuratedTrec",)
REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE

FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a script, so data_prep modules import together)."""
  flags.DEFINE_enum("dataset_name", None, list(DATASETS), "Dataset name (output file prefix).")
  flags.DEFINE_string("input_dir", None, "Directory with {Name}-train.* and {Name}-test.* files.")
  flags.DEFINE_string("train_file", None, "Explicit train JSONL (overrides --input_dir).")
  flags.DEFINE_string("test_file", None, "Explicit test JSONL (overrides --input_dir).")
  flags.DEFINE_string("output_dir", None, "Output directory (data_root).")
  flags.DEFINE_bool("skip_bad_lines", False, "Count and skip invalid lines instead of failing.")
  flags.DEFINE_integer("num_buckets", 100000, "Hash buckets of the resplit (original: 100000).")
  flags.DEFINE_integer("dev_modulus", 10, "bucket % dev_modulus == 0 → dev (original: 10).")

_WS = re.compile(r"\s+", re.UNICODE)


def normalize_whitespace(s: str) -> str:
  return _WS.sub(" ", s).strip()


def is_dev_question(questions: List[str], num_buckets: int = 100000, modulus: int = 10) -> np.ndarray:
  """bool [n]: `to_hash_bucket_fast(q, num_buckets) % modulus == 0`, the original dev rule."""
  if not questions:
    return np.zeros([0], bool)
  buckets = tf.strings.to_hash_bucket_fast(tf.constant(questions, tf.string), num_buckets).numpy()
  return buckets % modulus == 0


def _fail(counters, reason, path, line_no, message, skip):
  if not skip:
    raise io_utils.BadLineError(f"{path}:{line_no}: {message}")
  counters.skip(reason)


def read_qa_file(path: str, is_regex: bool, counters: io_utils.Counters,
                 skip_bad_lines: bool = False) -> List[Dict]:
  """Validated, normalised, deduplicated examples of one file, in first-occurrence order."""
  examples: "collections.OrderedDict[str, Dict]" = collections.OrderedDict()
  for line_no, obj in io_utils.iter_jsonl(path, skip_bad_lines, counters):
    if not isinstance(obj, dict):
      _fail(counters, "not_an_object", path, line_no, "line is not a JSON object", skip_bad_lines)
      continue
    q = obj.get("question")
    if not isinstance(q, str):
      _fail(counters, "missing_question", path, line_no, "'question' must be a string",
            skip_bad_lines)
      continue
    q = normalize_whitespace(q)
    if not q:
      _fail(counters, "empty_question", path, line_no, "empty question", skip_bad_lines)
      continue
    if "answer" not in obj:
      _fail(counters, "missing_answer", path, line_no, "no 'answer' field", skip_bad_lines)
      continue
    answers = obj["answer"]
    if isinstance(answers, str):
      answers = [answers]
      counters.add("answer_string_wrapped")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
      _fail(counters, "bad_answer_type", path, line_no, "'answer' must be a list of strings",
            skip_bad_lines)
      continue
    answers = [a.strip() if is_regex else normalize_whitespace(a) for a in answers]
    answers = [a for a in answers if a]
    if not answers:
      _fail(counters, "no_answers", path, line_no, "no non-empty answer", skip_bad_lines)
      continue
    if is_regex:
      bad = _first_bad_regex(answers)
      if bad is not None:
        _fail(counters, "bad_regex", path, line_no, f"answer regex does not compile: {bad}",
              skip_bad_lines)
        continue
    answers = list(dict.fromkeys(answers))
    if q in examples:
      old = examples[q]["answer"]
      if old == answers:
        counters.skip("duplicate_example")
      else:
        counters.add("merged_duplicate_question")
        old.extend(a for a in answers if a not in old)
      continue
    examples[q] = {"question": q, "answer": answers}
  return list(examples.values())


def _first_bad_regex(answers) -> Optional[str]:
  for a in answers:
    try:
      re.compile(a, REGEX_FLAGS)
    except re.error as e:
      return f"{a!r} ({e})"
  return None


def _write_jsonl(path, examples):
  with io_utils.atomic_open(path, "w") as f:
    for ex in examples:
      f.write(json.dumps(ex, ensure_ascii=False) + "\n")


def find_input(input_dir: str, name: str, split: str) -> str:
  cands = [split] + (["dev"] if name == "NaturalQuestions" and split == "test" else [])
  for s in cands:
    for ext in ("jsonl", "txt", "json"):
      p = os.path.join(input_dir, f"{name}-{s}.{ext}")
      if tf.io.gfile.exists(p):
        return p
  raise FileNotFoundError(f"no {name}-{split}.{{jsonl,txt,json}} in {input_dir}")


def prepare_qa(dataset_name, output_dir, train_file, test_file, skip_bad_lines=False,
               num_buckets=100000, dev_modulus=10):
  """Writes the three resplit files. Returns {"train"|"dev"|"test": count, "counters": {...}}."""
  if dataset_name not in DATASETS:
    raise ValueError(f"dataset_name must be one of {DATASETS}")
  is_regex = dataset_name in REGEX_DATASETS
  train_c = io_utils.Counters(f"prepare_qa {dataset_name} train file")
  test_c = io_utils.Counters(f"prepare_qa {dataset_name} test file")
  train = read_qa_file(train_file, is_regex, train_c, skip_bad_lines)
  test = read_qa_file(test_file, is_regex, test_c, skip_bad_lines)
  dev_mask = is_dev_question([ex["question"] for ex in train], num_buckets, dev_modulus)
  dev = [ex for ex, d in zip(train, dev_mask) if d]
  train = [ex for ex, d in zip(train, dev_mask) if not d]
  out = {}
  for split, exs in (("train", train), ("dev", dev), ("test", test)):
    _write_jsonl(os.path.join(output_dir, f"{dataset_name}.resplit.{split}.jsonl"), exs)
    out[split] = len(exs)
  train_c.written = len(train) + len(dev)
  test_c.written = len(test)
  test_overlap = len({ex["question"] for ex in test} & {ex["question"] for ex in train + dev})
  train_c.add("train_test_question_overlap", test_overlap)
  out["counters"] = {"train_file": train_c, "test_file": test_c}
  common.write_report(report_path(output_dir, dataset_name), {
      "tool": "prepare_qa", "dataset_name": dataset_name,
      **{split: out[split] for split in ("train", "dev", "test")},
      **{name: common.counters_report(c) for name, c in out["counters"].items()}})
  return out


def report_path(output_dir: str, dataset_name: str) -> str:
  """`{output_dir}/{dataset_name}.report.json`: the final report of `prepare_qa`."""
  return os.path.join(output_dir, f"{dataset_name}.report.json")


def main(argv):
  del argv
  name = FLAGS.dataset_name
  train_file = FLAGS.train_file or find_input(FLAGS.input_dir, name, "train")
  test_file = FLAGS.test_file or find_input(FLAGS.input_dir, name, "test")
  out = prepare_qa(name, FLAGS.output_dir, train_file, test_file, FLAGS.skip_bad_lines,
                   FLAGS.num_buckets, FLAGS.dev_modulus)
  for c in out["counters"].values():
    c.print_report()
  print(f"prepare_qa {name}: train {out['train']}, dev {out['dev']}, test {out['test']} "
        f"→ {FLAGS.output_dir}", flush=True)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["dataset_name", "output_dir"])
  app.run(main)
