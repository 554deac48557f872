"""evaluate_predictions join semantics (keyed by question), recall@k on hand-computed cases."""
import math

import pytest

from realm_tf2.evaluation import metrics

REFS = [
    {"question": "q1", "answer": ["The Cat"]},
    {"question": "q2", "answer": ["1875", "12 June 1875"]},
    {"question": "q3", "answer": ["Quillon"]},
    {"question": "q4", "answer": ["x"]},
]


def test_join_by_question_missing_is_wrong():
  preds = [
      {"question": "q1", "prediction": "cat."},          # correct after normalisation
      {"question": "q2", "prediction": "12 june 1875"},  # correct (second reference)
      {"question": "q3", "prediction": "Quilon"},        # wrong
      {"question": "q9", "prediction": "x"},             # not a reference question
  ]                                                      # q4: missing -> wrong
  r = metrics.evaluate_predictions(REFS, preds)
  assert r["num_correct"] == 2
  assert r["num_references"] == 4
  assert r["accuracy"] == pytest.approx(0.5)
  assert r["num_missing_predictions"] == 1
  assert r["num_unused_predictions"] == 1
  assert r["num_predictions"] == 4


def test_mapping_predictions_and_last_duplicate_wins():
  r = metrics.evaluate_predictions(REFS, {"q4": "X"})
  assert r["num_correct"] == 1 and r["accuracy"] == pytest.approx(0.25)
  preds = [{"question": "q4", "prediction": "X"}, {"question": "q4", "prediction": "y"}]
  r = metrics.evaluate_predictions(REFS, preds)
  assert r["num_correct"] == 0 and r["num_duplicate_predictions"] == 1


def test_a_question_listed_twice_is_scored_once_with_its_last_answers():
  """As the original's evaluate_predictions.py: references are a dict keyed by question."""
  refs = [{"question": "q1", "answer": ["cat"]}, {"question": "q2", "answer": ["dog"]},
          {"question": "q1", "answer": ["mouse"]}]
  r = metrics.evaluate_predictions(refs, {"q1": "mouse", "q2": "dog"})
  assert r["num_references"] == 2 and r["num_duplicate_references"] == 1
  assert r["num_correct"] == 2 and r["accuracy"] == 1.0
  r = metrics.evaluate_predictions(refs, {"q1": "cat"})  # the first line's answer no longer counts
  assert r["num_correct"] == 0 and r["num_missing_predictions"] == 1 and r["accuracy"] == 0.0
  overlap = metrics.train_overlap(refs, {"q1": "mouse"}, [])
  assert overlap["num_references"] == 2


def test_regex_mode():
  refs = [{"question": "q", "answer": ["18[0-9]{2}", "(bad"]}]
  assert metrics.evaluate_predictions(refs, {"q": "1875 AD"}, is_regex=True)["accuracy"] == 1.0
  assert metrics.evaluate_predictions(refs, {"q": "in 1875"}, is_regex=True)["accuracy"] == 0.0
  # Without regex mode the pattern is a literal reference.
  assert metrics.evaluate_predictions(refs, {"q": "1875"}, is_regex=False)["accuracy"] == 0.0


def test_answer_field_and_errors_name_the_record():
  refs = [{"question": "q", "answer": ["a"], "answer_and_def_correct_predictions": ["b"]}]
  r = metrics.evaluate_predictions(refs, {"q": "b"}, answer_field="answer_and_def_correct_predictions")
  assert r["accuracy"] == 1.0
  with pytest.raises(metrics.EvaluationInputError, match=r"references\[0\].*'answer'.*list of strings"):
    metrics.evaluate_predictions([{"question": "q", "answer": "a"}], {})
  with pytest.raises(metrics.EvaluationInputError, match=r"f\.jsonl:7.*'prediction'"):
    metrics.evaluate_predictions(REFS, [("f.jsonl:7", {"question": "q1"})])
  assert metrics.evaluate_predictions([], {})["accuracy"] == 0.0


TRAIN = [
    {"question": "Q5", "answer": ["the cat"]},         # normalises like q1's "The Cat"
    {"question": "q6", "answer": ["Velesh", "1875"]},  # 1875 overlaps q2
    {"question": "q7", "answer": ["painter"]},
]


def test_train_overlap_hand_computed():
  preds = [
      {"question": "q1", "prediction": "Cat"},      # overlap, correct, a train answer
      {"question": "q2", "prediction": "painter"},  # overlap, wrong, a train answer
      {"question": "q3", "prediction": "Velesh."},  # no overlap, wrong, a train answer
      {"question": "q4", "prediction": "x"},        # no overlap, correct, not a train answer
  ]
  r = metrics.train_overlap(REFS + [{"question": "q5", "answer": ["y"]}], preds, TRAIN)
  assert r["num_train_references"] == 3 and r["num_train_answers"] == 4
  assert r["num_references"] == 5
  assert r["num_question_overlap"] == 1  # "q5" == normalised "Q5"
  assert r["num_answer_overlap"] == 2 and r["answer_overlap_fraction"] == pytest.approx(0.4)
  assert r["accuracy_answer_overlap"] == pytest.approx(0.5)     # q1 of {q1, q2}
  assert r["accuracy_no_answer_overlap"] == pytest.approx(1 / 3)  # q4 of {q3, q4, q5 (missing)}
  assert r["num_predicted"] == 4 and r["num_prediction_train_answer"] == 3
  assert r["prediction_train_answer_fraction"] == pytest.approx(0.75)
  assert r["num_wrong_predictions"] == 2 and r["num_wrong_prediction_train_answer"] == 2
  assert r["wrong_prediction_train_answer_fraction"] == 1.0


def test_train_overlap_empty_subsets_are_none_and_errors_name_the_record():
  r = metrics.train_overlap([{"question": "q", "answer": ["a"]}], {"q": "a"}, [])
  assert r["num_answer_overlap"] == 0 and r["accuracy_answer_overlap"] is None
  assert r["accuracy_no_answer_overlap"] == 1.0 and r["wrong_prediction_train_answer_fraction"] is None
  with pytest.raises(metrics.EvaluationInputError, match=r"train\.jsonl:3.*'answer'"):
    metrics.train_overlap(REFS, {}, [("train.jsonl:3", {"question": "q"})])


def test_train_overlap_regex_mode():
  refs = [{"question": "q", "answer": ["18[0-9]{2}"]}, {"question": "r", "answer": ["Velesh"]}]
  train = [{"question": "t", "answer": ["18[0-9]{2}", "pa?inter", "(bad"]}]  # invalid: never matches
  r = metrics.train_overlap(refs, {"q": "1999", "r": "painter"}, train, is_regex=True)
  assert r["num_answer_overlap"] == 1  # the identical pattern
  # "painter" matches the train pattern "pa?inter"; "1999" matches no train pattern.
  assert r["num_wrong_predictions"] == 2 and r["num_wrong_prediction_train_answer"] == 1


def test_recall_at_k_hand_computed():
  retrieved = [
      ["nothing here", "Quillon is a city", "Quillon again"],  # first hit at rank 1
      ["the cat sat", "x"],                                     # rank 0 for "cat"
      ["CAT", "dog"],                                           # case-sensitive: no hit
  ]
  answers = [["Quillon"], ["cat"], ["cat"]]
  r = metrics.recall_at_k(retrieved, answers, ks=(1, 2, 5))
  assert r["top_1_match"] == pytest.approx(1 / 3)
  assert r["top_2_match"] == pytest.approx(2 / 3)
  assert r["top_5_match"] == pytest.approx(2 / 3)
  assert r["num_questions"] == 3
  rn = metrics.recall_at_k(retrieved, answers, ks=(1,), normalized=True)
  assert rn["top_1_match"] == pytest.approx(2 / 3)   # "CAT" matches after normalisation
  assert metrics.first_answer_rank(retrieved[0], answers[0]) == 1
  assert metrics.first_answer_rank(["a"], ["b"]) == -1
  assert math.isnan(metrics.recall_at_k([], [], ks=(5,))["top_5_match"])
  assert metrics.match_at_k([1, 0, -1, 7], (1, 5, 8)) == {1: 0.25, 5: 0.5, 8: 0.75}
  with pytest.raises(ValueError):
    metrics.recall_at_k([["a"]], [], ks=(1,))
