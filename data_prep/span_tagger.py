"""Salient-span taggers for REALM's salient span masking (original §1.3).

The original release has no tagger: its pre-training corpus came pre-annotated (paper: a BERT
CoNLL-2003 NER tagger plus a date regex). Nothing may be downloaded here, so the default is a
built-in rule tagger; a spaCy tagger is available when spaCy and a model are installed.

Interface: `SpanTagger.tag(sentence) -> [(start, limit), ...]`, sorted, non-overlapping character
offsets into the sentence. `get_tagger(name)` with name in `builtin | dates | spacy`.

`builtin` = `DateTagger` + `CapitalisedEntityTagger` (dates win where they overlap):

* Dates: full dates ("12 June 1875", "June 12, 1875", "12th June 1875"), month + year
  ("July 1687"), month + day ("June 12"), decades ("1870s", "'60s"), centuries ("19th century",
  "nineteenth-century"), and years 1000–2099 *in context* (after in/since/until/from/to/by/of/
  during/around/c./before/after/between/and/early/late/mid, inside "(1875" or after/before a dash,
  "1914–1918"), not followed by a counted noun ("1500 people", "1200 metres"), not part of a
  larger number ("1,500", "12000").
* Entities: maximal runs of capitalised words (also all-caps, hyphenated, initials "J.", "St.",
  short numbers after a capitalised word "Apollo 11") separated only by spaces, joined through
  connectors (of, of the, de, da, van, von, der, du, la, le, del, y, for, upon) when a capitalised
  word follows; leading function words/honorifics ("The", "In", "Dr.") and a trailing "'s" are
  stripped; month and weekday names are never entity words; a single capitalised word at sentence
  start is skipped (it is capitalised only by position), a multi-word run there is kept.

Precision and recall on `tests/data_prep/tagger_gold.jsonl` (110 hand-labelled encyclopedic
sentences, 226 gold spans, exact span match), as tests/data_prep/test_span_tagger.py computes them
(it asserts floors just below these):
  builtin: precision 0.973 (219/225), recall 0.969 (219/226); dates only: precision 1.000, recall
  0.301 (68/226: all 69 labelled dates but one, the 3-digit year "117", are found).
The gold was written before the tagger was run on it (it was not tuned on it), but by the same
person, so treat the numbers as optimistic for other text.
What it misses: single-word entities at sentence start ("Paris is ..."), titles of works that contain
lower-case words ("Pride and Prejudice" becomes two spans, "The Daily Universal Register" loses its
"The"), years without a context word, and lower-case entity parts ("iPhone"). What it wrongly adds:
capitalised common nouns and titles ("Earth" in "low Earth orbit", "Prime Minister of the United
Kingdom", "Academy Award for Best Picture" as one span instead of two).
"""
import abc
import re
from typing import List, Sequence, Tuple

Span = Tuple[int, int]

_MONTHS_FULL = ("January February March April May June July August September October November "
                "December").split()
_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
          r"|Jan\.|Feb\.|Mar\.|Apr\.|Jun\.|Jul\.|Aug\.|Sept?\.|Oct\.|Nov\.|Dec\.)")
_DAY = r"(?:3[01]|[12][0-9]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[0-9]{3}|20[0-9]{2})"
_YEAR_END = r"(?![0-9]|,[0-9]{3}|\.[0-9])"
_ORDINAL_WORDS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
                  "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth "
                  "twentieth twenty-first").split()
_CENTURY = (r"(?:[0-9]{1,2}(?:st|nd|rd|th)|(?:" + "|".join(
    w.replace("-", r"[- ]") for w in sorted(_ORDINAL_WORDS, key=len, reverse=True)) +
            r"))[- ][Cc]entur(?:y|ies)")

# Longest alternatives first: `re` takes the first alternative that matches at a position.
_DATE_RE = re.compile(
    r"(?<![\w])(?:"
    + _DAY + r"\s+" + _MONTH + r",?\s+" + _YEAR + _YEAR_END + "|"
    + _MONTH + r"\s+" + _DAY + r",?\s+" + _YEAR + _YEAR_END + "|"
    + _MONTH + r",?\s+" + _YEAR + _YEAR_END + "|"
    + _MONTH + r"\s+" + _DAY + r"(?![0-9])(?!,?\s*[0-9])" + "|"
    + _DAY + r"\s+" + _MONTH + "|"
    + r"(?:1[0-9]|20)[0-9]0s\b|'[0-9]0s\b|"
    + _CENTURY
    + r")", re.UNICODE | re.IGNORECASE)
_MONTH_CASE_RE = re.compile(_MONTH)  # month names must be capitalised (re.I above is for "Century")

_CONTEXT = (r"in|since|until|till|by|from|to|of|during|around|circa|c\.|ca\.|before|after|between|and|"
            r"through|early|late|mid|year|summer|winter|spring|autumn|fall|throughout|or")
_COUNTED = (r"people|men|women|soldiers|troops|metres|meters|km|kilometres|kilometers|miles|feet|ft|"
            r"m|inhabitants|residents|students|copies|km2|square|households|acres|hectares|tons|"
            r"tonnes|units|votes|seats|pages|words|cases|deaths|employees|members|workers|pupils|"
            r"passengers|species|years|rooms|cars|ships|aircraft|kg|pounds|dollars|euros")
_YEAR_CTX_RE = re.compile(
    r"(?:\b(?:" + _CONTEXT + r")\s+|\(|[\u2013\u2014-]|(?:mid|early|late)-)(?P<y>" + _YEAR + r")"
    + _YEAR_END + r"(?!\s+(?:" + _COUNTED + r")\b)", re.IGNORECASE)
_YEAR_BEFORE_DASH_RE = re.compile(r"(?<![\w,.])(?P<y>" + _YEAR + r")(?=[\u2013\u2014-]" + _YEAR + ")")


class SpanTagger(abc.ABC):
  """Finds salient spans in one sentence.

  Subclasses implement `tag`. Spans are character offsets `[start, limit)` into the sentence,
  sorted and non-overlapping.
  """

  name = "abstract"

  @abc.abstractmethod
  def tag(self, sentence: str) -> List[Span]:
    """Returns the salient spans of `sentence`."""

  def tag_batch(self, sentences: Sequence[str]) -> List[List[Span]]:
    """Tags several sentences (override for batched back-ends)."""
    return [self.tag(s) for s in sentences]


def _merge_spans(primary: List[Span], secondary: List[Span]) -> List[Span]:
  """Union of two span lists; a secondary span overlapping a primary one is dropped."""
  out = list(primary)
  for s, e in secondary:
    if all(e <= ps or s >= pe for ps, pe in primary):
      out.append((s, e))
  return sorted(out)


class DateTagger(SpanTagger):
  """Dates, decades, centuries and years in context (see module docstring)."""

  name = "dates"

  def tag(self, sentence: str) -> List[Span]:
    spans = []
    for m in _DATE_RE.finditer(sentence):
      text = m.group(0)
      if re.search(r"[A-Za-z]{3}", text) and not re.search(r"entur", text, re.I):
        if not _MONTH_CASE_RE.search(text):  # "may 5" / "march 1875" lower-case: not a date
          continue
      spans.append(m.span())
    years = [m.span("y") for m in _YEAR_CTX_RE.finditer(sentence)]
    years += [m.span("y") for m in _YEAR_BEFORE_DASH_RE.finditer(sentence)]
    return _merge_spans(spans, sorted(set(years)))


# --- named entities -------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+(?:['\u2019\-.&]\w+)*\.?", re.UNICODE)
_CONNECTORS = frozenset("of the de da di van von der den du la le del della y for upon al bin".split())
_HONORIFICS = frozenset("mr mrs ms dr prof mr. mrs. ms. dr. prof.".split())
_NON_ENTITY = frozenset(
    ("a an the in on at to of for by with from as and or but nor so yet if when while where after "
     "before during since until although though because however thus therefore also then there "
     "here this that these those its his her their our my your he she it they we you i one some "
     "most many several each every all both other another such no not only most few more "
     "between among about around within without under over into onto upon through throughout "
     "following according despite like unlike near following later earlier today currently").split()
) | frozenset(m.lower() for m in _MONTHS_FULL) | frozenset(
    "monday tuesday wednesday thursday friday saturday sunday".split())
_ABBREV_KEEP_PERIOD = frozenset("st. mt. ft. jr. sr. co. inc. ltd. bros. corp.".split())


def _tokens(sentence: str):
  """Word tokens with char offsets; a final period is kept only on initials and abbreviations."""
  out = []
  for m in _TOKEN_RE.finditer(sentence):
    s, e = m.span()
    tok = m.group(0)
    if tok.endswith(".") and not (
        (len(tok) == 2 and tok[0].isupper()) or tok.lower() in _ABBREV_KEEP_PERIOD):
      e -= 1
      tok = tok[:-1]
    if tok:
      out.append((tok, s, e))
  return out


def _is_cap(tok: str) -> bool:
  return tok[0].isupper() and tok.lower() not in _NON_ENTITY and tok != "I"


class CapitalisedEntityTagger(SpanTagger):
  """Named entities as capitalised multi-word runs (see module docstring)."""

  name = "entities"

  def __init__(self, blocked_spans_fn=None):
    self._blocked = blocked_spans_fn

  def tag(self, sentence: str, blocked: Sequence[Span] = ()) -> List[Span]:
    toks = _tokens(sentence)
    n = len(toks)

    def is_blocked(i):
      _, s, e = toks[i]
      return any(not (e <= bs or s >= be) for bs, be in blocked)

    def adjacent(i, j):  # only spaces between token i and j
      return sentence[toks[i][2]:toks[j][1]].strip() == ""

    def cap(i):
      tok = toks[i][0]
      return not is_blocked(i) and _is_cap(tok)

    spans = []
    i = 0
    while i < n:
      if not cap(i):
        i += 1
        continue
      start_tok = i
      j = i  # last token in the run
      while True:
        k = j + 1
        if k < n and adjacent(j, k) and not is_blocked(k):
          tok = toks[k][0]
          if cap(k):
            j = k
            continue
          if tok.isdigit() and len(tok) <= 3:
            j = k
            continue
          # connectors: "University of the West", "Leonardo da Vinci"
          m = k
          while m < n and toks[m][0] in _CONNECTORS and adjacent(m - 1, m):
            m += 1
          if m > k and m < n and adjacent(m - 1, m) and cap(m):
            j = m
            continue
        break
      run = list(range(start_tok, j + 1))
      i = j + 1
      while run and toks[run[0]][0].lower() in _HONORIFICS:
        run.pop(0)
      if not run:
        continue
      if run[0] == 0 and len(run) == 1:
        continue  # a single capitalised word at sentence start: capitalised only by position
      s, e = toks[run[0]][1], toks[run[-1]][2]
      text = sentence[s:e]
      if text.endswith(("'s", "\u2019s")):
        e -= 2
      spans.append((s, e))
    return spans


class BuiltinTagger(SpanTagger):
  """Dates + capitalised entities; dates win where the two overlap."""

  name = "builtin"

  def __init__(self):
    self._dates = DateTagger()
    self._entities = CapitalisedEntityTagger()

  def tag(self, sentence: str) -> List[Span]:
    dates = self._dates.tag(sentence)
    ents = self._entities.tag(sentence, blocked=dates)
    return _merge_spans(dates, ents)


class SpacyTagger(SpanTagger):
  """spaCy NER (entity types + DATE), used only when spaCy and the model are installed locally."""

  name = "spacy"
  LABELS = frozenset("PERSON NORP FAC ORG GPE LOC PRODUCT EVENT WORK_OF_ART LAW LANGUAGE DATE".split())

  def __init__(self, model: str = "en_core_web_sm"):
    try:
      import spacy  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("--tagger=spacy needs the `spacy` package (pip install spacy) and a locally "
                        "installed model such as %s; use --tagger=builtin otherwise." % model) from e
    try:
      self._nlp = spacy.load(model, disable=["parser", "lemmatizer"])
    except OSError as e:
      raise OSError("spaCy model %r is not installed (it is never downloaded at run time); install "
                    "it as a package or use --tagger=builtin." % model) from e

  def tag(self, sentence: str) -> List[Span]:
    return self.tag_batch([sentence])[0]

  def tag_batch(self, sentences):
    return [sorted((e.start_char, e.end_char) for e in doc.ents if e.label_ in self.LABELS)
            for doc in self._nlp.pipe(sentences)]


TAGGERS = ("builtin", "dates", "spacy")


def get_tagger(name: str) -> SpanTagger:
  """Returns the tagger called `name` (one of TAGGERS)."""
  if name == "builtin":
    return BuiltinTagger()
  if name == "dates":
    return DateTagger()
  if name == "spacy":
    return SpacyTagger()
  raise ValueError("unknown tagger %r; expected one of %s" % (name, ", ".join(TAGGERS)))


def precision_recall(tagger: SpanTagger, examples) -> Tuple[float, float, int, int, int]:
  """Exact-match span precision and recall over `examples` ({"text", "spans"} dicts).

  Returns (precision, recall, true_positives, predicted, gold).
  """
  tp = pred = gold = 0
  for ex in examples:
    g = {tuple(s) for s in ex["spans"]}
    p = set(tagger.tag(ex["text"]))
    tp += len(g & p)
    pred += len(p)
    gold += len(g)
  return (tp / pred if pred else 0.0), (tp / gold if gold else 0.0), tp, pred, gold
