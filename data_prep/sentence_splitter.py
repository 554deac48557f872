"""Rule-based English sentence splitter for encyclopedic text (no downloads).

Why rule-based: the original ORQA preprocessing used NLTK punkt (`english.pickle`, original §3.1),
which needs a model download that this project must never do at run time, and NLTK is not a
dependency. Encyclopedic prose (Wikipedia, news) is regular enough that a handful of rules gets
almost all boundaries right:

* A candidate boundary is a run of terminal punctuation (`.`, `!`, `?`, `…`), optionally followed by
  closing quotes/brackets, then whitespace, then a token that starts with an upper-case letter, a
  digit, or an opening quote/bracket. A lower-case continuation ("e.g. the", "approx. five") never
  splits.
* A period does NOT end a sentence when the word before it is a known abbreviation that is almost
  always followed by more of the same sentence (titles "Dr.", "St.", "Gen.", months "Jan.",
  "No.", "vs.", "e.g." ...), a single capital letter (initials "J. R. R. Tolkien"), or a dotted
  acronym ("U.S.", "U.K.").
* Decimals ("3.14"), version numbers and URLs never split because there is no whitespace after the
  period.
* Line breaks are hard boundaries (WikiExtractor puts one paragraph or heading per line).

Known misses: a sentence that really ends in an abbreviation or an initial followed by a capitalised
word ("... in the U.S. The ...") is not split; a sentence starting with a lower-case word after a
period ("... end. iPhone sales ...") is not split.

Spans are `(start, limit)` offsets into the input (characters, or bytes with `split_bytes`),
covering each sentence without the surrounding whitespace.
"""
import re
from typing import List, Sequence, Tuple

# Abbreviations (lower-cased, without the final period) after which a period is not a boundary.
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft gen col lt sgt capt cmdr adm maj gov sen rep rev hon pres
fr br sr messrs mme mlle msgr rt
jan feb mar apr jun jul aug sep sept oct nov dec
no nos vol vols pp p fig figs ch sec art ed eds est approx ca cf vs viz al e.g i.e c
op cit ibid inc ltd co corp bros dept univ assn ave blvd rd hwy
""".split())

_TERMINAL = r"(?:[.!?\u2026]+)"
_CLOSERS = "\"'\u201d\u2019)\\]\u00bb"
_OPENERS = "\"'\u201c\u2018(\\[\u00ab"
# terminal punctuation + optional closers, whitespace (no newline), then the next sentence's start.
_BOUNDARY_RE = re.compile(
    _TERMINAL + "[" + _CLOSERS + "]*" + r"(?P<ws>[ \t\u00a0]+)(?=[" + _OPENERS + r"]*[^\W_a-z])",
    re.UNICODE)
_LINE_RE = re.compile(r"[^\r\n]+")
_WORD_BEFORE_RE = re.compile(r"([\w.\-']+)\.$", re.UNICODE)


def _is_abbreviation_end(text: str, period_pos: int) -> bool:
  """True if the period at `period_pos` closes an abbreviation/initial (no sentence boundary)."""
  start = max(0, period_pos - 40)
  m = _WORD_BEFORE_RE.search(text[start:period_pos + 1])
  if not m:
    return False
  word = m.group(1)
  if word.endswith("."):  # "..." ellipsis: the run ended earlier; treat as terminal.
    return False
  low = word.lower()
  if low in ABBREVIATIONS:
    return True
  if len(word) == 1 and word.isalpha() and word.isupper():
    return True  # an initial: "J. R. R. Tolkien"
  if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word):
    return True  # a dotted acronym: "U.S.", "e.g."
  return False


def split_sentences(text: str) -> List[Tuple[int, int]]:
  """Splits `text` into sentences.

  Args:
    text: a unicode string (a document or paragraph).

  Returns:
    A list of `(start, limit)` character offsets, in order, non-overlapping, each sentence stripped
    of leading/trailing whitespace. Empty text gives `[]`.
  """
  spans = []
  for line in _LINE_RE.finditer(text):
    line_start = line.start()
    segment = line.group(0)
    cur = 0
    for m in _BOUNDARY_RE.finditer(segment):
      ws_start = m.start("ws")
      # Position of the last terminal char (skip the closers back to the punctuation).
      p = ws_start - 1
      while p >= 0 and segment[p] in _CLOSERS:
        p -= 1
      if segment[p] == "." and (p == 0 or segment[p - 1] != ".") and _is_abbreviation_end(segment, p):
        continue
      spans.append((line_start + cur, line_start + ws_start))
      cur = m.end("ws")
    spans.append((line_start + cur, line_start + len(segment)))
  out = []
  for s, e in spans:  # strip whitespace, drop empty pieces (whitespace-only lines)
    while s < e and text[s].isspace():
      s += 1
    while e > s and text[e - 1].isspace():
      e -= 1
    if e > s:
      out.append((s, e))
  return out


def char_to_byte_spans(text: str, spans: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
  """Converts sorted, non-overlapping character spans of `text` to UTF-8 byte spans (linear time)."""
  out = []
  pos_char, pos_byte = 0, 0
  for s, e in spans:
    if s < pos_char:
      raise ValueError("spans must be sorted and non-overlapping: %r" % (spans,))
    bs = pos_byte + len(text[pos_char:s].encode("utf-8"))
    be = bs + len(text[s:e].encode("utf-8"))
    out.append((bs, be))
    pos_char, pos_byte = e, be
  return out


def char_to_byte_offsets(text: str, offsets: Sequence[int]) -> List[int]:
  """Maps arbitrary (unsorted) character offsets of `text` to UTF-8 byte offsets."""
  if text.isascii():
    return list(offsets)
  cum = [0]
  for ch in text:
    cum.append(cum[-1] + len(ch.encode("utf-8")))
  return [cum[o] for o in offsets]


def split_sentences_text(text: str) -> List[str]:
  """Convenience: the sentence strings."""
  return [text[s:e] for s, e in split_sentences(text)]


def split_bytes(text: str) -> List[Tuple[int, int]]:
  """Sentences of `text` as UTF-8 byte spans of `text.encode('utf-8')`."""
  return char_to_byte_spans(text, split_sentences(text))
