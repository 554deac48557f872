"""Gold (block, span) lists of regular-expression answers (CuratedTrec), precomputed on the host.

The original refuses to train on CuratedTrec: its answers are regular expressions, which neither its
`HasAnswer` nor its `ReaderInputs` gold spans can match (original §3.4). Here, once per question,
every answer pattern is matched on the ORIGINAL text of each block (`re.search` anywhere, not
anchored: the positives are the pattern's occurrences in the corpus; the EM metric keeps the
original's anchored `re.match` on the prediction) and each occurrence becomes a gold span:

* Occurrences are taken at every wordpiece start of a block that the pattern matches
  (`pattern.match(text, start)`, the regex's own choice of end), so overlapping occurrences count,
  as ORQA's overlapping wordpiece occurrences do.
* A match must cover whole wordpieces. One that ends inside a wordpiece ("Paris" in "Parisville"
  when "parisville" is one wordpiece) is dropped and counted (`regex_match_ends_inside_wordpiece`):
  the reader cannot select it, and its prediction text would be a different string. Occurrences
  that begin inside a wordpiece are counted (`regex_match_starts_inside_wordpiece`) and dropped.
* Empty matches are ignored; an invalid pattern never matches (as in the EM metric) and is counted.
* With the reader title option the text is `title\\nbody` and the block's wordpieces have a [SEP]
  between both parts: spans after it move by one, spans across it are dropped (counted).
* Spans past the block's kept wordpieces (`block_len`) are dropped (counted).

The result is a padded int32 [G, 3] array of (corpus row, first, last) positions among the row's
`block_ids` (inclusive), -1 padded, plus the count; `orqa_model.gold_span_correctness` consumes it
in the step (static shapes). G is bounded: past it the spans of further rows are dropped (first
one span per row, so as many distinct rows as possible stay positives) and counted.

Prefilter: every match of a pattern contains one of its literal substrings (`required_literals`,
from the parsed pattern), so only blocks holding one, in case-folded text, are searched with the
regex. The literals are ASCII; case folding plus dotless i -> i makes the test a superset of what
Python's IGNORECASE matches for ASCII characters (K/k and the Kelvin sign, s and long s, i/I and
both Turkish i). Written by hand: no library finds the occurrences of a Python regex as wordpiece
spans.
"""
import bisect
import collections
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import realm_tf2  # noqa: F401

from realm_tf2 import io_utils
from realm_tf2.evaluation import answers as answers_lib

try:  # Python >= 3.11
  from re import _constants as _sre_constants  # pylint: disable=g-import-not-at-top
  from re import _parser as _sre_parse  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover  (Python 3.10)
  import sre_constants as _sre_constants  # pylint: disable=g-import-not-at-top,deprecated-module
  import sre_parse as _sre_parse  # pylint: disable=g-import-not-at-top,deprecated-module

# Case folding that keeps every ASCII IGNORECASE match: casefold() maps the Kelvin sign to k and
# long s to s; the dotless i (which re.IGNORECASE matches with i) needs this extra step.
_FOLD_EXTRA = {0x131: "i"}
_SEPARATOR = "\x00"
_REPEATS = (_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT) + tuple(
    getattr(_sre_constants, name) for name in ("POSSESSIVE_REPEAT",)
    if hasattr(_sre_constants, name))


def fold(text: str) -> str:
  """The case folding of the prefilter (see the module docstring)."""
  return text.casefold().translate(_FOLD_EXTRA)


def _best(a: Optional[List[str]], b: Optional[List[str]]) -> Optional[List[str]]:
  """The more selective of two literal sets (longer shortest literal; fewer alternatives)."""
  if not b:
    return a
  if not a:
    return b
  key = lambda c: (min(len(x) for x in c), -len(c))
  return b if key(b) > key(a) else a


def _sequence_literals(items) -> Optional[List[str]]:
  best, run = None, []
  for op, av in items:
    if op is _sre_constants.LITERAL and av < 128:
      run.append(chr(av))
      continue
    if run:
      best = _best(best, [fold("".join(run))])
      run = []
    if op is _sre_constants.SUBPATTERN:
      best = _best(best, _sequence_literals(av[-1]))
    elif op in _REPEATS and av[0] >= 1:
      best = _best(best, _sequence_literals(av[2]))
    elif op is _sre_constants.BRANCH:
      alternatives = [_sequence_literals(branch) for branch in av[1]]
      if all(alternatives):
        best = _best(best, sorted({x for alt in alternatives for x in alt}))
  if run:
    best = _best(best, [fold("".join(run))])
  return best


def required_literals(pattern: str) -> Optional[List[str]]:
  """Case-folded ASCII strings of which every match of `pattern` contains at least one, or None
  when none can be told (then every block is searched with the regex).

  E.g. "(Jim|James) Morrison" -> [" morrison"]; "Bolsheviks?" -> ["bolshevik"]; "\\d+" -> None.
  """
  try:
    parsed = _sre_parse.parse(pattern, 0)
  except (re.error, TypeError, ValueError, OverflowError, RecursionError):
    return None
  return _sequence_literals(parsed)


def _char_offsets(text: str, byte_starts: np.ndarray, byte_ends: np.ndarray):
  """Byte offsets into `text`'s UTF-8 -> character offsets (what `re` positions are)."""
  data = text.encode("utf-8")
  if len(data) == len(text):
    return byte_starts.astype(np.int64), byte_ends.astype(np.int64)
  lead = (np.frombuffer(data, np.uint8) & 0xC0) != 0x80  # [bytes] first byte of a character
  chars_before = np.concatenate([[0], np.cumsum(lead)])  # [bytes + 1]
  return chars_before[byte_starts], chars_before[byte_ends]


class RegexGoldFinder:
  """Finds the gold spans of regex answers over a fixed corpus.

  Args:
    tokenizer: the `RealmTokenizer` the blocks' reader wordpieces were made with.
    texts: N block texts, exactly what the wordpieces tokenize (with the title option,
      `qa_pipeline.reader_text(title, body)`).
    block_len: int [N] reader wordpieces kept per block (`block_ids` row lengths).
    block_sep_pos: int [N] position of the title/body [SEP] in each row (-1 = none) or None.
    max_gold_spans: G, spans kept per question.
  Attributes:
    counters: `io_utils.Counters` of everything dropped or truncated (see the module docstring).
  """

  def __init__(self, tokenizer, texts: Sequence[str], block_len, block_sep_pos=None,
               max_gold_spans: int = 256):
    self.tokenizer = tokenizer
    self.texts = list(texts)
    self.block_len = np.asarray(block_len, np.int64)
    n = len(self.texts)
    self.block_sep_pos = (np.full([n], -1, np.int64) if block_sep_pos is None
                          else np.asarray(block_sep_pos, np.int64))
    self.max_gold_spans = int(max_gold_spans)
    self.counters = io_utils.Counters("regex_gold")
    folded = [fold(t) for t in self.texts]
    # One string for the prefilter: str.find scans it in C; separators keep literals in one block.
    self._folded = _SEPARATOR.join(folded)
    self._starts = np.cumsum([0] + [len(f) + 1 for f in folded])[:-1].tolist()  # [N]
    self._offsets: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

  def candidate_rows(self, pattern: str) -> Iterable[int]:
    """Rows that may match `pattern`: those holding one of its required literals, or all rows."""
    literals = required_literals(pattern)
    if not literals:
      return range(len(self.texts))
    rows = set()
    for lit in literals:
      pos = self._folded.find(lit)
      while pos != -1:
        row = bisect.bisect_right(self._starts, pos) - 1
        rows.add(row)
        nxt = row + 1
        if nxt >= len(self._starts):
          break
        pos = self._folded.find(lit, self._starts[nxt])  # one hit per row is enough
    return sorted(rows)

  def matching_rows(self, patterns: Sequence[str]) -> List[Tuple[int, "re.Pattern"]]:
    """(row, compiled pattern) for every block a pattern matches somewhere (`search`)."""
    out = []
    for pattern in patterns:
      compiled = answers_lib.compile_pattern(pattern)
      if compiled is None:
        self.counters.skip("regex_invalid_pattern")
        continue
      for row in self.candidate_rows(pattern):
        if compiled.search(self.texts[row]) is not None:
          out.append((row, compiled))
    return out

  def _tokenize_rows(self, rows: Iterable[int], batch_size: int = 2048):
    """Caches the character offsets of the wordpieces of `rows`."""
    todo = sorted({r for r in rows if r not in self._offsets})
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      pieces = self.tokenizer.tokenize_with_offsets_np([self.texts[r] for r in chunk])
      for row, (_, byte_starts, byte_ends) in zip(chunk, pieces):
        self._offsets[row] = _char_offsets(self.texts[row], byte_starts, byte_ends)

  def _spans_in_row(self, row: int, compiled) -> List[Tuple[int, int]]:
    """Gold (first, last) positions among the row's `block_ids` of one pattern."""
    text = self.texts[row]
    starts, ends = self._offsets[row]
    first_of_start = {}
    for i, s in enumerate(starts.tolist()):
      first_of_start.setdefault(s, i)
    last_of_end = {e: i for i, e in enumerate(ends.tolist())}
    for m in compiled.finditer(text):
      if m.end() > m.start() and m.start() not in first_of_start:
        self.counters.skip("regex_match_starts_inside_wordpiece")
    sep = int(self.block_sep_pos[row])
    spans = []
    for start_char, i in first_of_start.items():
      m = compiled.match(text, start_char)
      if m is None or m.end() <= start_char:
        continue
      j = last_of_end.get(m.end())
      if j is None:
        self.counters.skip("regex_match_ends_inside_wordpiece")
        continue
      if sep >= 0:  # text wordpieces -> block_ids positions (the [SEP] at `sep` has no text)
        if i < sep <= j:
          self.counters.skip("regex_match_across_title_and_body")
          continue
        if i >= sep:
          i, j = i + 1, j + 1
      if j >= self.block_len[row]:
        self.counters.skip("regex_span_past_kept_wordpieces")
        continue
      spans.append((i, j))
    return spans

  def gold_spans(self, patterns_per_question: Sequence[Sequence[str]]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Padded gold triples of every question.

    Args:
      patterns_per_question: Q lists of answer patterns.
    Returns:
      gold_spans int32 [Q, G, 3] (row, first, last; -1 padded), gold_count int32 [Q].
    """
    matches = [self.matching_rows(p) for p in patterns_per_question]
    self._tokenize_rows(row for m in matches for row, _ in m)
    q = len(patterns_per_question)
    g = self.max_gold_spans
    out = np.full([q, g, 3], -1, np.int32)
    counts = np.zeros([q], np.int32)
    for k, question_matches in enumerate(matches):
      by_row = collections.defaultdict(set)
      for row, compiled in question_matches:
        by_row[row].update(self._spans_in_row(row, compiled))
      # Round robin over rows (first span of every row, then second ...): truncation keeps as many
      # distinct positive rows as possible.
      per_row = [[(row, i, j) for i, j in sorted(spans)] for row, spans in sorted(by_row.items())]
      ordered = [t for rank in range(max((len(s) for s in per_row), default=0))
                 for s in per_row if rank < len(s) for t in [s[rank]]]
      self.counters.add("regex_questions")
      if not ordered:
        self.counters.add("regex_questions_without_gold_span")
      if len(ordered) > g:
        self.counters.add("regex_questions_gold_truncated")
        self.counters.skip("regex_gold_spans_over_max_gold_spans", len(ordered) - g)
        ordered = ordered[:g]
      self.counters.add("regex_gold_spans", len(ordered))
      if ordered:
        out[k, :len(ordered)] = ordered
      counts[k] = len(ordered)
    return out, counts
