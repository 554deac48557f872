"""Salient-span tagger: precision/recall on the hand-labelled gold sample, and unit cases."""
import json
import os

import pytest

from data_prep import span_tagger as st

GOLD = os.path.join(os.path.dirname(__file__), "tagger_gold.jsonl")


def _gold():
  with open(GOLD, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_gold_file_is_consistent():
  ex = _gold()
  assert len(ex) >= 100
  for e in ex:
    marked = e["marked"]
    for s, t in e["spans"]:
      assert "[" + e["text"][s:t] + "]" in marked


def test_builtin_precision_recall_floors():
  # Measured: precision 219/225 = 0.973, recall 219/226 = 0.969 (see module docstring).
  p, r, tp, pred, gold = st.precision_recall(st.get_tagger("builtin"), _gold())
  assert gold == 226
  assert p >= 0.95, (p, tp, pred)
  assert r >= 0.94, (r, tp, gold)


def test_dates_tagger_precision_recall_floors():
  # Measured: precision 68/68 = 1.0, recall 68/226 = 0.301 (it finds dates only).
  p, r, tp, pred, _ = st.precision_recall(st.get_tagger("dates"), _gold())
  assert p >= 0.97 and r >= 0.28, (p, r, tp, pred)


@pytest.mark.parametrize("sentence,expected", [
    ("He was born on 12 June 1875 in Paris.", ["12 June 1875", "Paris"]),
    ("It ended on June 12, 1875.", ["June 12, 1875"]),
    ("Trade grew in the 1870s and the 19th century.", ["1870s", "19th century"]),
    ("The war lasted 1914\u20131918.", ["1914", "1918"]),
    ("About 1500 people lived there.", []),
    ("The population was 1,500 in 1990.", ["1990"]),
    ("Paris is large.", []),  # single capitalised word at sentence start: skipped
    ("She studied at the University of Oxford's main library.", ["University of Oxford"]),
    ("The Battle of Hastings was fought by Dr. Harold Smith.", ["Battle of Hastings", "Harold Smith"]),
    ("In March 1875 it rained.", ["March 1875"]),
])
def test_builtin_cases(sentence, expected):
  spans = st.get_tagger("builtin").tag(sentence)
  assert [sentence[s:e] for s, e in spans] == expected


def test_unknown_and_spacy_taggers():
  with pytest.raises(ValueError, match="unknown tagger"):
    st.get_tagger("nope")
  try:
    import spacy  # noqa: F401
  except ImportError:
    with pytest.raises(ImportError, match="--tagger=builtin"):
      st.get_tagger("spacy")
