r"""Scores a QA prediction file against an ORQA-format reference file (original §3.5).

  python -m realm_tf2.evaluate --references=REF.jsonl --predictions=PRED.jsonl \
      [--is_regex] [--answer_field=answer] [--output_file=metrics.json] \
      [--train_references=TRAIN.jsonl]

REF lines: {"question": str, "answer": [str, ...]} (regular expressions with --is_regex, CuratedTrec).
PRED lines: {"question": str, "prediction": str, ...}. Both files are keyed by the exact question
string, as the original's `evaluate_predictions.py` (a question listed twice counts once, its last
line wins; counted in `num_duplicate_references` / `num_duplicate_predictions`); a missing
prediction counts as wrong; accuracy = correct / #distinct reference questions. Prints ONE JSON
object on stdout and exits 0. A malformed line (bad JSON, bad UTF-8, missing/ill-typed field) is an
error naming file and line (exit code 2); blank lines are not records and are counted in
`num_blank_lines`.

With --train_references (the training split, same format as REF) the output also has `train_overlap`:
test-train answer/question overlap (Lewis et al., 2021), accuracy on the overlapping and the
non-overlapping questions, and how many (wrong) predictions are training answers, a sign of a reader
that memorises instead of reading (`metrics.train_overlap`).
"""
import json
import sys
from typing import Iterator, Tuple

from absl import app
from absl import flags

import realm_tf2  # noqa: F401
from realm_tf2.evaluation import metrics

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Defines the CLI flags on `flag_values`. Called only when run as a script (or by tests on a private
  FlagValues), so importing this module never adds global flags (run_finetune defines --is_regex)."""
  flags.DEFINE_string("references", None, "ORQA-format reference JSONL (question + answer list).",
                      flag_values=flag_values)
  flags.DEFINE_string("predictions", None, "Prediction JSONL with 'question' and 'prediction'.",
                      flag_values=flag_values)
  flags.DEFINE_bool("is_regex", False, "References are regular expressions (CuratedTrec): re.match on "
                    "the raw prediction, case-insensitive; an invalid regex never matches.",
                    flag_values=flag_values)
  flags.DEFINE_enum("answer_field", "answer", list(metrics.ANSWER_FIELDS),
                    "Reference field with the answers.", flag_values=flag_values)
  flags.DEFINE_string("train_references", None,
                      "Optional: the training split (same format as --references); adds `train_overlap` "
                      "(test-train overlap, and how many predictions are training answers).",
                      flag_values=flag_values)
  flags.DEFINE_string("output_file", None, "Optional: also write the JSON result here (atomically).",
                      flag_values=flag_values)


def iter_jsonl_records(path: str, blank_counter: list) -> Iterator[Tuple[str, object]]:
  """Yields ("path:line", parsed object) for every non-blank line; raises naming file:line on bad input."""
  import tensorflow as tf  # Lazy: keeps `--help` fast.
  with tf.io.gfile.GFile(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      where = f"{path}:{line_no}"
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise metrics.EvaluationInputError(f"{where}: not valid UTF-8 ({e})") from None
      if not text.strip():
        blank_counter[0] += 1
        continue
      try:
        yield where, json.loads(text)
      except json.JSONDecodeError as e:
        raise metrics.EvaluationInputError(f"{where}: invalid JSON ({e})") from None


def evaluate_files(references_path: str, predictions_path: str, is_regex: bool = False,
                   answer_field: str = "answer", train_references_path: str = "") -> dict:
  """Library form of the CLI: reads the files and returns `metrics.evaluate_predictions`'s dict, plus
  `train_overlap` (`metrics.train_overlap`) when `train_references_path` is given."""
  import tensorflow as tf
  for p in (references_path, predictions_path) + ((train_references_path,) if train_references_path
                                                   else ()):
    if not tf.io.gfile.exists(p):
      raise metrics.EvaluationInputError(f"{p}: file not found")
  blanks = [0]
  predictions = list(iter_jsonl_records(predictions_path, blanks))
  references = list(iter_jsonl_records(references_path, blanks))  # read once, scored twice
  result = metrics.evaluate_predictions(references, predictions, is_regex=is_regex,
                                        answer_field=answer_field)
  if train_references_path:
    overlap = metrics.train_overlap(references, predictions,
                                    iter_jsonl_records(train_references_path, blanks),
                                    is_regex=is_regex, answer_field=answer_field)
    result["train_overlap"] = {"train_references": train_references_path, **overlap}
  result["num_blank_lines"] = blanks[0]
  result["references"] = references_path
  result["predictions"] = predictions_path
  return result


def main(argv, flag_values=FLAGS):
  fv = flag_values
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not fv.references or not fv.predictions:
    raise app.UsageError("--references and --predictions are required.")
  try:
    result = evaluate_files(fv.references, fv.predictions, fv.is_regex, fv.answer_field,
                            fv.train_references or "")
  except metrics.EvaluationInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  line = json.dumps(result, sort_keys=True)
  if fv.output_file:
    from realm_tf2 import io_utils  # Lazy: imports TensorFlow.
    io_utils.atomic_write_text(fv.output_file, line + "\n")
  print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main)
