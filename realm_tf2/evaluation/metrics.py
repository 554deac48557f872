"""QA and retrieval metrics over decoded strings: accuracy by question join, recall@k (top_k_match).

ORQA semantics (original §3.3, §3.5):
- `evaluate_predictions` mirrors `evaluate_predictions.py`: references and predictions are both
  keyed by the exact question string (a question listed twice counts once, its last line wins), a
  missing prediction counts as wrong, accuracy = correct / #distinct reference questions.
- `top_k_match` = any retrieved block among the first k contains an answer (`HasAnswer`: raw,
  case-sensitive substring; for regex answers a pattern `search`es the raw text); a normalised
  variant is offered too. `ORQA_TOP_KS` are the original's eval cut-offs
  (`top_{5,10,50,100,500,1000,5000}_match`).
Host-side only (strings). The token-level metrics (`exact_match`, `reader_oracle`) are computed on
the device from `reader_correct` (`modeling.orqa_model.correct_at_prediction`).
"""
import math
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

import realm_tf2  # noqa: F401
from realm_tf2.evaluation import answers as answers_lib

ANSWER_FIELDS = ("answer", "answer_and_def_correct_predictions")
DEFAULT_KS = (1, 5, 10, 50, 100, 500, 1000, 5000)
ORQA_TOP_KS = (5, 10, 50, 100, 500, 1000, 5000)


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


def prediction_map(predictions: Union[Mapping[str, str], Iterable[Any]]) -> Tuple[Dict[str, str], int]:
  """Validated question -> prediction map, and how many predictions repeated a question (last wins).

  `predictions`: a mapping question -> prediction, or an iterable of `{"question", "prediction"}`
  records or `(where, record)` pairs.
  """
  pred_map: Dict[str, str] = {}
  num_duplicates = 0
  if isinstance(predictions, Mapping):
    for q, p in predictions.items():
      check_prediction({"question": q, "prediction": p}, f"predictions[{q!r}]")
    return dict(predictions), 0
  for i, item in enumerate(predictions):
    where, obj = item if isinstance(item, tuple) else (f"predictions[{i}]", item)
    question, prediction = check_prediction(obj, where)
    if question in pred_map:
      num_duplicates += 1
    pred_map[question] = prediction
  return pred_map, num_duplicates


def iter_references(references: Iterable[Any], answer_field: str = "answer",
                    name: str = "references") -> Iterator[Tuple[str, list]]:
  """Yields validated (question, answers) of records or `(where, record)` pairs (errors name `where`,
  else `name[i]`)."""
  for i, item in enumerate(references):
    where, obj = item if isinstance(item, tuple) else (f"{name}[{i}]", item)
    yield check_reference(obj, where, answer_field)


def reference_map(references: Iterable[Any], answer_field: str = "answer",
                  name: str = "references") -> Tuple[Dict[str, list], int]:
  """Validated question -> answers map, as the original's `evaluate_predictions.py` builds it (a
  question listed again replaces the earlier line's answers), and how many lines repeated one.
  Records or `(where, record)` pairs, as for `iter_references`."""
  ref_map: Dict[str, list] = {}
  num_duplicates = 0
  for question, refs in iter_references(references, answer_field, name):
    if question in ref_map:
      num_duplicates += 1
    ref_map[question] = refs
  return ref_map, num_duplicates


def evaluate_predictions(references: Iterable[Any],
                         predictions: Union[Mapping[str, str], Iterable[Any]],
                         is_regex: bool = False,
                         answer_field: str = "answer") -> Dict[str, Any]:
  """Scores predictions against references, joined by question string.

  Args:
    references: iterable of records `{"question": str, answer_field: [str, ...]}`, or of
      `(where, record)` pairs where `where` names the source (e.g. "ref.jsonl:12") for error
      messages. Keyed by question as in ORQA: a question listed twice is scored once, against the
      answers of its last line (counted in `num_duplicate_references`).
    predictions: a mapping question -> prediction, or an iterable of `{"question", "prediction"}`
      records (or `(where, record)` pairs). When a question is predicted twice the last one wins (as in
      ORQA) and the duplicate is counted in `num_duplicate_predictions`.
    is_regex: references are regular expressions (CuratedTrec); see `answers.regex_match`.
    answer_field: the reference field holding the answers.

  Returns:
    dict with `accuracy` (correct / #distinct reference questions, 0.0 when there are none),
    `num_correct`, `num_references` (distinct questions), `num_duplicate_references`,
    `num_predictions` (distinct questions), `num_missing_predictions`, `num_unused_predictions`
    (predicted questions absent from the references), `num_duplicate_predictions`, `is_regex`,
    `answer_field`.
  """
  ref_map, num_duplicate_refs = reference_map(references, answer_field)
  pred_map, num_duplicates = prediction_map(predictions)
  num_refs = num_correct = num_missing = 0
  for question, refs in ref_map.items():
    num_refs += 1
    if question not in pred_map:
      num_missing += 1
      continue
    if answers_lib.is_correct(pred_map[question], refs, is_regex=is_regex):
      num_correct += 1
  return {
      "accuracy": num_correct / num_refs if num_refs else 0.0,
      "num_correct": num_correct,
      "num_references": num_refs,
      "num_duplicate_references": num_duplicate_refs,
      "num_predictions": len(pred_map),
      "num_missing_predictions": num_missing,
      "num_unused_predictions": sum(1 for q in pred_map if q not in ref_map),
      "num_duplicate_predictions": num_duplicates,
      "is_regex": bool(is_regex),
      "answer_field": answer_field,
  }


def _safe_ratio(num: int, den: int) -> Optional[float]:
  """num / den, or None (JSON null) when den is 0."""
  return num / den if den else None


def train_overlap(references: Iterable[Any],
                  predictions: Union[Mapping[str, str], Iterable[Any]],
                  train_references: Iterable[Any],
                  is_regex: bool = False,
                  answer_field: str = "answer") -> Dict[str, Any]:
  """Test-train overlap of a QA evaluation (Lewis et al., 2021, "Question and Answer Test-Train
  Overlap in Open-Domain Question Answering Datasets"), plus how often a model answers with a
  training answer: a reader that memorises (entity -> answers seen in training) instead of reading
  gives wrong predictions that are mostly training answers.

  Written here because no library we depend on has it (the paper's code is a separate repository of
  scripts for fixed datasets).

  Args:
    references: evaluation references, as for `evaluate_predictions` (records or (where, record);
      keyed by question the same way).
    predictions: as for `evaluate_predictions` (joined by exact question string; last one wins).
    train_references: the training set's references, same format as `references`.
    is_regex: references are regular expressions (CuratedTrec). Then an answer "overlaps" when one of
      its patterns is a training pattern (identical string), and a prediction "is a training answer"
      when some training pattern matches it (`answers.regex_match`).
    answer_field: the reference field holding the answers (both files).

  Returns:
    dict with
      num_train_references, num_train_answers (distinct normalised answers / patterns),
      num_references, num_question_overlap (normalised question also in train),
      num_answer_overlap and answer_overlap_fraction (an answer also answers a train question),
      accuracy_answer_overlap / accuracy_no_answer_overlap (missing predictions count as wrong, as in
        `evaluate_predictions`),
      num_predicted, num_prediction_train_answer, prediction_train_answer_fraction (over references
        with a prediction),
      num_wrong_predictions, num_wrong_prediction_train_answer, wrong_prediction_train_answer_fraction
        (over references with a wrong prediction).
      Each fraction/accuracy is None (JSON null) when its denominator is 0.
  """
  pred_map, _ = prediction_map(predictions)

  def key(answer: str) -> str:
    return answer if is_regex else answers_lib.normalize_answer(answer)

  train_answers = set()
  train_questions = set()
  num_train = 0
  for question, refs in iter_references(train_references, answer_field, "train_references"):
    num_train += 1
    train_questions.add(answers_lib.normalize_answer(question))
    train_answers.update(key(a) for a in refs)
  # Regex mode: every training pattern compiled once (an invalid one never matches, as in scoring).
  compiled = answers_lib.compile_patterns(sorted(train_answers)) if is_regex else []

  def is_train_answer(prediction: str) -> bool:
    if is_regex:
      return any(p.match(prediction) is not None for p in compiled)
    return answers_lib.normalize_answer(prediction) in train_answers

  n = q_overlap = 0
  counts = {True: [0, 0], False: [0, 0]}  # answer overlap -> [references, correct]
  predicted = predicted_train = wrong = wrong_train = 0
  for question, refs in reference_map(references, answer_field)[0].items():
    n += 1
    q_overlap += answers_lib.normalize_answer(question) in train_questions
    overlap = any(key(a) in train_answers for a in refs)
    counts[overlap][0] += 1
    if question not in pred_map:
      continue
    prediction = pred_map[question]
    correct = answers_lib.is_correct(prediction, refs, is_regex=is_regex)
    counts[overlap][1] += correct
    from_train = is_train_answer(prediction)
    predicted += 1
    predicted_train += from_train
    if not correct:
      wrong += 1
      wrong_train += from_train
  return {
      "num_train_references": num_train,
      "num_train_answers": len(train_answers),
      "num_references": n,
      "num_question_overlap": q_overlap,
      "num_answer_overlap": counts[True][0],
      "answer_overlap_fraction": _safe_ratio(counts[True][0], n),
      "accuracy_answer_overlap": _safe_ratio(counts[True][1], counts[True][0]),
      "accuracy_no_answer_overlap": _safe_ratio(counts[False][1], counts[False][0]),
      "num_predicted": predicted,
      "num_prediction_train_answer": predicted_train,
      "prediction_train_answer_fraction": _safe_ratio(predicted_train, predicted),
      "num_wrong_predictions": wrong,
      "num_wrong_prediction_train_answer": wrong_train,
      "wrong_prediction_train_answer_fraction": _safe_ratio(wrong_train, wrong),
  }


def first_answer_rank(block_texts: Iterable[str], answers: Sequence[str],
                      normalized: bool = False, is_regex: bool = False) -> int:
  """0-based rank of the first block containing an answer, or -1 if none does. `block_texts` is
  consumed only up to the first hit (a generator saves looking up the rest). `is_regex`: answers
  are patterns, `answers.regex_search` on the raw text (compiled once here)."""
  if is_regex:
    compiled = answers_lib.compile_patterns(answers)
    test = lambda text, _: answers_lib.regex_search(text, compiled)
  else:
    test = answers_lib.has_answer_normalized if normalized else answers_lib.has_answer
  for rank, text in enumerate(block_texts):
    if test(text, answers):
      return rank
  return -1


def recall_at_k(retrieved_texts: Sequence[Sequence[str]],
                answers: Sequence[Sequence[str]],
                ks: Sequence[int] = DEFAULT_KS,
                normalized: bool = False, is_regex: bool = False) -> Dict[str, float]:
  """ORQA's `top_k_match`: fraction of questions with an answer-bearing block among the first k.

  Args:
    retrieved_texts: per question, the raw texts of its retrieved blocks, best first ([Q][R]).
    answers: per question, its answer strings ([Q][A]).
    ks: cut-offs; a question with fewer than k retrieved blocks uses all of them.
    normalized: use `has_answer_normalized` instead of ORQA's case-sensitive raw substring test.
    is_regex: answers are regular expressions (CuratedTrec): `answers.regex_search` on the raw text.

  Returns:
    {"top_{k}_match": float for each k, "num_questions": Q}; NaN recalls when Q == 0.
  """
  if len(retrieved_texts) != len(answers):
    raise ValueError(f"recall_at_k: {len(retrieved_texts)} retrieval lists vs {len(answers)} answer lists")
  ranks = [first_answer_rank(t, a, normalized, is_regex) for t, a in zip(retrieved_texts, answers)]
  out: Dict[str, float] = {f"top_{k}_match": v for k, v in match_at_k(ranks, ks).items()}
  out["num_questions"] = len(ranks)
  return out


def match_at_k(ranks: Sequence[int], ks: Sequence[int]) -> Dict[int, float]:
  """{k: fraction of questions whose first answer-bearing block has rank < k} from 0-based ranks
  (-1 = none retrieved; see `first_answer_rank`); NaN for no questions."""
  ranks = np.asarray(ranks, dtype=np.int64)  # [Q]
  out = {}
  for k in ks:
    if k <= 0:
      raise ValueError(f"match_at_k: k must be positive, got {k}")
    out[k] = float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else math.nan
  return out
