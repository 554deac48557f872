"""Answer matching with ORQA's exact semantics (original §3.3, §3.5).

Pure Python on purpose: these run on the host over decoded strings (prediction files, retrieved block
texts), never inside a TPU step, and must reproduce ORQA's `eval_utils` / `orqa_ops.has_answer`
byte for byte. No library offers these exact semantics, hence hand-written.
"""
import re
import string
import unicodedata
from typing import Iterable, List, Optional, Sequence, Union

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE


def normalize_answer(s: str) -> str:
  """ORQA/SQuAD answer normalisation, in ORQA's order.

  1. `unicodedata.normalize("NFD")` (so composed/decomposed accents compare equal; accents are kept),
  2. lowercase, 3. drop every char of `string.punctuation`, 4. `\\b(a|an|the)\\b` -> " ",
  5. collapse whitespace (split/join, which also strips).
  """
  s = unicodedata.normalize("NFD", s)
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCTUATION)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def _as_list(references: Union[str, Iterable[str]]) -> Sequence[str]:
  if isinstance(references, str):
    return [references]
  return list(references)


def exact_match(prediction: str, references: Union[str, Iterable[str]]) -> bool:
  """max over references of normalize(prediction) == normalize(reference); False for no references."""
  pred = normalize_answer(prediction)
  return any(pred == normalize_answer(ref) for ref in _as_list(references))


def compile_pattern(pattern: str) -> Optional["re.Pattern"]:
  """`pattern` compiled with ORQA's flags (IGNORECASE | UNICODE | MULTILINE), or None if invalid."""
  try:
    return re.compile(pattern, _REGEX_FLAGS)
  except (re.error, TypeError, ValueError, OverflowError, RecursionError):
    return None


def compile_patterns(patterns: Iterable[str]) -> List["re.Pattern"]:
  """The valid patterns of `patterns`, compiled (for matching many predictions against them)."""
  return [c for c in (compile_pattern(p) for p in patterns) if c is not None]


def regex_match_one(prediction: str, pattern: str) -> bool:
  """ORQA regex mode: `re.compile(p, I|U|M).match(raw prediction)`; invalid regex -> False.

  `match` anchors at the start of the prediction but not at its end, and the prediction is NOT
  normalised.
  """
  compiled = compile_pattern(pattern)
  return compiled is not None and compiled.match(prediction) is not None


def regex_match(prediction: str, patterns: Union[str, Iterable[str]]) -> bool:
  """True if any pattern matches the raw prediction (see `regex_match_one`)."""
  return any(regex_match_one(prediction, p) for p in _as_list(patterns))


def is_correct(prediction: str, references: Union[str, Iterable[str]], is_regex: bool = False) -> bool:
  """ORQA `is_correct`: regex mode for CuratedTrec-style references, else normalised EM."""
  if is_regex:
    return regex_match(prediction, references)
  return exact_match(prediction, references)


def has_answer(text: str, answers: Union[str, Iterable[str]], is_regex: bool = False) -> bool:
  """ORQA's `HasAnswer` op: case-sensitive raw substring test of any answer in the block text.

  Empty answers are ignored (an empty string is a substring of everything, which would make every
  block "correct"). Regex mode (CuratedTrec, which the original never retrieved for): a pattern
  `search`es the raw text anywhere (`regex_search`).
  """
  if is_regex:
    return regex_search(text, answers)
  return any(a and a in text for a in _as_list(answers))


def regex_search(text: str, patterns: Union[str, Iterable[str], Sequence["re.Pattern"]]) -> bool:
  """Regex `HasAnswer`: some pattern (compiled with ORQA's flags, or already compiled) matches a
  non-empty part of the raw text anywhere; an invalid pattern never matches."""
  for p in _as_list(patterns):
    compiled = p if isinstance(p, re.Pattern) else compile_pattern(p)
    if compiled is not None and any(m.end() > m.start() for m in compiled.finditer(text)):
      return True
  return False


def has_answer_normalized(text: str, answers: Union[str, Iterable[str]]) -> bool:
  """Normalised variant: normalize_answer(answer) occurs in normalize_answer(text) on word boundaries.

  E.g. "The Ostava River" is found in "...on the ostava river." but "ava" is not found in "Ostava".
  Answers that normalise to "" (only punctuation/articles) are ignored.
  """
  norm_text = " " + normalize_answer(text) + " "
  for a in _as_list(answers):
    norm_a = normalize_answer(a)
    if norm_a and (" " + norm_a + " ") in norm_text:
      return True
  return False
