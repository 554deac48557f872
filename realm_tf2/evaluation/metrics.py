"""QA and retrieval metrics over decoded strings: accuracy by question join, recall@k, reader oracle.

ORQA semantics (reference §3.3, §3.5):
- `evaluate_predictions` mirrors `evaluate_predictions.py`: references and predictions are joined by
  the exact question string, a missing prediction counts as wrong, accuracy = correct / #references.
- `top_k_match` = any retrieved block among the first k contains an answer (`HasAnswer`: raw,
  case-sensitive substring); a normalised variant is offered too.
- `reader_oracle` = some candidate span among the read blocks is correct.
Host-side only (strings); device-side counterparts operate on the `*_correct` boolean tensors.
"""
import math
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

import realm_tf2  # noqa: F401
from realm_tf2.evaluation import answers as answers_lib

ANSWER_FIELDS = ("answer", "answer_and_def_correct_predictions")
DEFAULT_KS = (1, 5, 10, 50, 100, 500, 1000, 5000)


class EvaluationInputError(ValueError):
  """A reference or prediction record is malformed; the message names where (file:line or index)."""


def check_reference(obj: Any, where: str, answer_field: str = "answer") -> Tuple[str, list]:
  """Validates one reference record -> (question, answers). Raises EvaluationInputError naming `where`."""
  if not isinstance(obj, Mapping):
    raise EvaluationInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  question = obj.get("question")
  if not isinstance(question, str):
    raise EvaluationInputError(f"{where}: field 'question' missing or not a string")
  if answer_field not in obj:
    raise EvaluationInputError(f"{where}: field '{answer_field}' missing")
  refs = obj[answer_field]
  if not isinstance(refs, list) or not all(isinstance(a, str) for a in refs):
    raise EvaluationInputError(f"{where}: field '{answer_field}' must be a list of strings")
  return question, refs


def check_prediction(obj: Any, where: str) -> Tuple[str, str]:
  """Validates one prediction record -> (question, prediction)."""
  if not isinstance(obj, Mapping):
    raise EvaluationInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  question, prediction = obj.get("question"), obj.get("prediction")
  if not isinstance(question, str):
    raise EvaluationInputError(f"{where}: field 'question' missing or not a string")
  if not isinstance(prediction, str):
    raise EvaluationInputError(f"{where}: field 'prediction' missing or not a string")
  return question, prediction


def evaluate_predictions(references: Iterable[Any],
                         predictions: Union[Mapping[str, str], Iterable[Any]],
                         is_regex: bool = False,
                         answer_field: str = "answer") -> Dict[str, Any]:
  """Scores predictions against references, joined by question string.

  Args:
    references: iterable of records `{"question": str, answer_field: [str, ...]}` (one per question; a
      question listed twice is scored twice, as in ORQA), or of `(where, record)` pairs where `where`
      names the source (e.g. "ref.jsonl:12") for error messages.
    predictions: a mapping question -> prediction, or an iterable of `{"question", "prediction"}`
      records (or `(where, record)` pairs). When a question is predicted twice the last one wins (as in
      ORQA) and the duplicate is counted in `num_duplicate_predictions`.
    is_regex: references are regular expressions (CuratedTrec); see `answers.regex_match`.
    answer_field: the reference field holding the answers.

  Returns:
    dict with `accuracy` (correct / #references, 0.0 when there are none), `num_correct`,
    `num_references`, `num_predictions` (distinct questions), `num_missing_predictions`,
    `num_unused_predictions` (predicted questions absent from the references),
    `num_duplicate_predictions`, `is_regex`, `answer_field`.
  """
  pred_map: Dict[str, str] = {}
  num_duplicates = 0
  if isinstance(predictions, Mapping):
    for q, p in predictions.items():
      check_prediction({"question": q, "prediction": p}, f"predictions[{q!r}]")
    pred_map = dict(predictions)
  else:
    for i, item in enumerate(predictions):
      where, obj = item if isinstance(item, tuple) else (f"predictions[{i}]", item)
      question, prediction = check_prediction(obj, where)
      if question in pred_map:
        num_duplicates += 1
      pred_map[question] = prediction

  num_refs = num_correct = num_missing = 0
  seen_questions = set()
  for i, item in enumerate(references):
    where, obj = item if isinstance(item, tuple) else (f"references[{i}]", item)
    question, refs = check_reference(obj, where, answer_field)
    num_refs += 1
    seen_questions.add(question)
    if question not in pred_map:
      num_missing += 1
      continue
    if answers_lib.is_correct(pred_map[question], refs, is_regex=is_regex):
      num_correct += 1
  return {
      "accuracy": num_correct / num_refs if num_refs else 0.0,
      "num_correct": num_correct,
      "num_references": num_refs,
      "num_predictions": len(pred_map),
      "num_missing_predictions": num_missing,
      "num_unused_predictions": sum(1 for q in pred_map if q not in seen_questions),
      "num_duplicate_predictions": num_duplicates,
      "is_regex": bool(is_regex),
      "answer_field": answer_field,
  }


def first_answer_rank(block_texts: Sequence[str], answers: Sequence[str],
                      normalized: bool = False) -> int:
  """0-based rank of the first block containing an answer, or -1 if none does."""
  test = answers_lib.has_answer_normalized if normalized else answers_lib.has_answer
  for rank, text in enumerate(block_texts):
    if test(text, answers):
      return rank
  return -1


def recall_at_k(retrieved_texts: Sequence[Sequence[str]],
                answers: Sequence[Sequence[str]],
                ks: Sequence[int] = DEFAULT_KS,
                normalized: bool = False) -> Dict[str, float]:
  """ORQA's `top_k_match`: fraction of questions with an answer-bearing block among the first k.

  Args:
    retrieved_texts: per question, the raw texts of its retrieved blocks, best first ([Q][R]).
    answers: per question, its answer strings ([Q][A]).
    ks: cut-offs; a question with fewer than k retrieved blocks uses all of them.
    normalized: use `has_answer_normalized` instead of ORQA's case-sensitive raw substring test.

  Returns:
    {"top_{k}_match": float for each k, "num_questions": Q}; NaN recalls when Q == 0.
  """
  if len(retrieved_texts) != len(answers):
    raise ValueError(f"recall_at_k: {len(retrieved_texts)} retrieval lists vs {len(answers)} answer lists")
  ranks = np.array([first_answer_rank(t, a, normalized) for t, a in zip(retrieved_texts, answers)],
                   dtype=np.int64)  # [Q], -1 = never found
  out: Dict[str, float] = {}
  for k in ks:
    if k <= 0:
      raise ValueError(f"recall_at_k: k must be positive, got {k}")
    out[f"top_{k}_match"] = float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else math.nan
  out["num_questions"] = len(ranks)
  return out


def reader_oracle(candidate_spans: Sequence[Sequence[str]],
                  answers: Sequence[Sequence[str]],
                  is_regex: bool = False) -> float:
  """Fraction of questions where ANY candidate span (e.g. every span of the top-5 read blocks) is correct.

  This is ORQA's `reader_oracle` on strings (an upper bound for the reader); NaN for no questions.
  """
  if len(candidate_spans) != len(answers):
    raise ValueError(f"reader_oracle: {len(candidate_spans)} span lists vs {len(answers)} answer lists")
  if not answers:
    return math.nan
  hits = [any(answers_lib.is_correct(s, a, is_regex) for s in spans)
          for spans, a in zip(candidate_spans, answers)]
  return float(np.mean(hits))


def reader_oracle_from_correct(reader_correct: np.ndarray,
                               reader_beam_size: Optional[int] = None) -> float:
  """ORQA's token-level `reader_oracle` from a boolean `reader_correct` array [Q, N, S].

  A question counts when any span of its first `reader_beam_size` blocks (all when None) is correct.
  """
  correct = np.asarray(reader_correct, dtype=bool)
  if correct.ndim != 3:
    raise ValueError(f"reader_correct must be [Q, N, S], got shape {correct.shape}")
  if reader_beam_size is not None:
    correct = correct[:, :reader_beam_size, :]  # [Q, n, S]
  if correct.shape[0] == 0:
    return math.nan
  return float(np.mean(correct.any(axis=(1, 2))))
