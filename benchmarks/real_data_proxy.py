r"""Builds a real-data proxy benchmark from registry packages: a prose knowledge corpus + QA pairs.

Everything comes from Debian packages that the user downloads and extracts beforehand; this
script downloads nothing. From the directory the packages should be extracted into:

  mkdir -p proxy_src/debs && cd proxy_src/debs
  apt-get download dict-foldoc dict-gcide dict-jargon dict-elements dict-vera miscfiles \
      kgeography-data
  cd .. && for f in debs/*.deb; do dpkg-deb -x "$f" root; done

then, from the repository root (run it as a module: `benchmarks/` holds a `data_prep.py` that
would shadow the `data_prep` package if the script's directory came first on sys.path):

  python -m benchmarks.real_data_proxy --source_dir=proxy_src/root --output_dir=proxy \
      --vocab_file=vocab.txt

Sources (all read from `--source_dir`, the extraction root):
* Corpus (real prose, title + body):
  - FOLDOC, `usr/share/dictd/foldoc.{index,dict.dz}` (computing): a deterministic sample of
    `--foldoc_fraction` of its entries (md5 of the headword), to keep the corpus small enough to
    embed on a CPU in about two minutes.
  - GCIDE, `usr/share/dictd/gcide.{index,dict.dz}`: the entries labelled with a science or
    geography domain in their header (`(Chem.)`, `(Min.)`, `(Geography)`, ... `GCIDE_LABELS`) and
    the entries whose headword names an entity of the question sources (element, country or
    capital names), as an encyclopedia has an article per entity. Entries holding any text marked
    as taken from WordNet (`[WordNet 1.5]`) are dropped whole (`gcide_wordnet_derived`): WordNet is
    reserved for an independent check.
  Long entries are split into blocks of at most `--max_block_length` wordpieces (with [CLS] title
  [SEP] ... [SEP], the ORQA budget rule of data_prep.common.Blocker) at sentence boundaries; an
  entry keeps at most `--max_blocks_per_entry` blocks. One output document = one block, so
  `build_knowledge_corpus` with its default 288 budget keeps the rows of `docs.jsonl` as its rows.
* Questions (templated over structured facts; the structured files are NOT in the corpus):
  - acronym: `What does {A} stand for?` ← dict-vera (`vera.{index,dict.dz}`), all meanings of A.
  - element_symbol: `Which chemical element has the symbol {S}?`, element_number: `What is the
    atomic number of {e}?`, element_discoverer: `Who discovered {e}?`, element_year: `In what year
    was {e} discovered?` ← dict-elements (`elements.{index,dict.dz}`; discoverer and year are read
    from its "Discovered ... by NAME ... in YEAR" sentences).
  - capital: `What is the capital of {c}?` ← miscfiles `usr/share/misc/countries.gz` and the
    `<division><name>/<capital>` pairs of kgeography's `usr/share/kgeography/*.kgm` maps.
  Answer-support filter: a question is kept only if ONE block mentions its subject (in title or
  body, at word boundaries; acronyms and symbols case-sensitively, names case-insensitively) and
  holds an answer in its body (what ORQA's HasAnswer sees), case-insensitively at word
  boundaries. The answer list is the structured source's answers that some supporting block holds
  (e.g. only the meanings of an acronym that the corpus explains), followed by their surface forms
  in the supporting blocks (the same words in the corpus's casing), so that ORQA's case-sensitive
  HasAnswer can succeed. Answers longer than `--max_answer_wordpieces` are dropped first. Then at
  most `--max_questions_per_type` questions per type are kept (md5 order of the question). Every
  dropped candidate is counted by reason.
* Split (by subject, so no test question shares a subject with a train/dev one): bucket =
  `tf.strings.to_hash_bucket_fast(subject_key, 100000)` (data_prep.prepare_qa.is_dev_question's
  op); `bucket % 10 == 0` → dev (ORQA's resplit rule, applied to the subject key instead of the
  question text), `bucket % 10 in {1, 2}` → test, else train. subject_key = the acronym, the
  element's name for all four element types, the region's name for capitals.

Outputs in `--output_dir`: `docs.jsonl` (`{"title", "body"}`, the knowledge corpus and the default
REALM pre-training text), `pretrain_extra_jargon.jsonl` (the Jargon File's entries, a second real
prose source about many of the same computing entities; FOLDOC incorporates parts of the Jargon
File, so some text overlaps), `{Name}.resplit.{train,dev,test}.jsonl` (`{"question", "answer"}`),
`questions_meta.jsonl` (per question: type, subject, split, supporting block rows), `stats.json`.
The final line on stdout is one JSON object of statistics.

Memory: the dictd index of one source at a time and the candidate facts (a few tens of thousands
of short strings); entries are streamed through the gzip file in offset order and blocks are
written as they are made.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import collections
import gzip
import hashlib
import json
import os
import re
import sys
import unicodedata
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

if __name__ == "__main__":
  # Run as a file, this directory would come first on sys.path and its data_prep.py would shadow
  # the data_prep package.
  _HERE = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
  sys.path.insert(0, os.path.dirname(_HERE))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_prep import common  # noqa: E402
from data_prep import prepare_qa  # noqa: E402
from data_prep import sentence_splitter  # noqa: E402
from realm_tf2 import io_utils  # noqa: E402

FLAGS = flags.FLAGS

DICTD_DIR = "usr/share/dictd"
COUNTRIES_FILE = "usr/share/misc/countries.gz"
KGEOGRAPHY_DIR = "usr/share/kgeography"

# GCIDE domain labels of the selected slice (science and geography: where the element, capital and
# computing questions live, plus their neighbours as distractors).
GCIDE_LABELS = frozenset([
    "Chem.", "Old Chem.", "Min.", "Metal.", "Physics", "Astron.", "Geol.", "Geography",
    "Phys. Geog.", "Computers",
])
QUESTION_TYPES = ("acronym", "element_symbol", "element_number", "element_discoverer",
                  "element_year", "capital")


def define_flags():
  """Defines the CLI flags (only when run as a script, so the module imports in tests)."""
  flags.DEFINE_string("source_dir", None, "Root the Debian packages were extracted into "
                      "(dpkg-deb -x PKG ROOT), holding usr/share/dictd, usr/share/misc, ...")
  flags.DEFINE_string("output_dir", None, "Output directory.")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocab (block lengths, answer lengths).")
  flags.DEFINE_bool("do_lower_case", True, "Uncased WordPiece normalisation.")
  flags.DEFINE_string("dataset_name", "DictQA", "QA file prefix {Name}.resplit.{split}.jsonl.")
  flags.DEFINE_integer("max_block_length", 100, "Max wordpieces of [CLS] title [SEP] body [SEP].")
  flags.DEFINE_integer("max_blocks_per_entry", 2, "Blocks kept per dictionary entry (the first).")
  flags.DEFINE_float("foldoc_fraction", 0.6, "Fraction of FOLDOC entries kept (hash of the "
                     "headword, so the same entries every run); 1.0 keeps all.")
  flags.DEFINE_integer("max_answer_wordpieces", 10, "Longer answers are dropped.")
  flags.DEFINE_integer("max_questions_per_type", 800, "Cap per question type (hash order).")
  flags.DEFINE_integer("num_buckets", 100000, "Hash buckets of the split (ORQA: 100000).")


# --- dictd reading --------------------------------------------------------------------------------

_B64 = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def decode_dictd_number(s: str) -> int:
  """A dictd index offset/length: base64 digits, most significant first."""
  v = 0
  for ch in s:
    if ch not in _B64:
      raise ValueError(f"not a dictd base64 number: {s!r}")
    v = v * 64 + _B64[ch]
  return v


class DictEntry(NamedTuple):
  headwords: List[str]  # every index headword pointing at this text, in index order
  text: str


def read_dictd(index_path: str, dict_path: str, counters: io_utils.Counters
               ) -> Iterator[DictEntry]:
  """Streams the entries of a dictd dictionary (`.index` + gzip/dictzip `.dict.dz`) in file order.

  Index lines are `headword TAB offset TAB length` (base64). Several headwords may point at the
  same text (one entry). Metadata entries (`00-database-*`, `00database*`) are counted and skipped.
  A malformed index line raises an error naming file and line.
  """
  by_span: Dict[Tuple[int, int], List[str]] = collections.OrderedDict()
  with tf.io.gfile.GFile(index_path, "r") as f:
    for line_no, line in enumerate(f, start=1):
      line = line.rstrip("\n")
      if not line:
        continue
      parts = line.split("\t")
      if len(parts) < 3:
        raise io_utils.BadLineError(
            f"{index_path}:{line_no}: expected 'headword<TAB>offset<TAB>length'")
      try:
        span = (decode_dictd_number(parts[1]), decode_dictd_number(parts[2]))
      except ValueError as e:
        raise io_utils.BadLineError(f"{index_path}:{line_no}: {e}") from e
      by_span.setdefault(span, []).append(parts[0])
  with tf.io.gfile.GFile(dict_path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
    for (offset, length), headwords in sorted(by_span.items()):
      counters.read += 1
      if any(h.lower().startswith(("00-database", "00database")) for h in headwords):
        counters.skip("dictd_metadata")
        continue
      f.seek(offset)  # forward only: spans are sorted
      data = f.read(length)
      if len(data) != length:
        raise ValueError(f"{dict_path}: entry at offset {offset} is truncated")
      yield DictEntry(headwords, data.decode("utf-8", errors="replace"))


# --- cleaning of the prose sources ----------------------------------------------------------------

_WS = re.compile(r"\s+")
_BRACES = re.compile(r"\{([^{}]*)\}")
_FOLDOC_DATE = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")
_FOLDOC_CATEGORY = re.compile(r"^<[^<>]*>\s*")
_FOLDOC_EDITOR_QUERY = re.compile(r"\s*\[[^\[\]]*\?[^\[\]]*\]")  # "[Origin? Availability?]"


def _squash(s: str) -> str:
  return _WS.sub(" ", s).strip()


def _paragraphs(lines: Sequence[str]) -> List[str]:
  out, cur = [], []
  for line in lines:
    if line.strip():
      cur.append(line.strip())
    elif cur:
      out.append(" ".join(cur))
      cur = []
  if cur:
    out.append(" ".join(cur))
  return out


def clean_foldoc(entry: DictEntry) -> Optional[Tuple[str, str]]:
  """(title, body) of a FOLDOC entry, or None if nothing is left.

  The entry's unindented first lines are its headwords (title = the first; body starts with all of
  them joined by ", " and a colon, as a dictionary prints them); then the indented paragraphs with
  the leading `<category, ...>` tag, `{link}` braces, the editors' open queries in square
  brackets ("[Origin? Availability?]", "[What does it stand for?]"), the trailing `(YYYY-MM-DD)`
  revision date and the cross-reference lists (paragraphs starting "See ") removed.
  """
  lines = entry.text.split("\n")
  heads = []
  i = 0
  while i < len(lines) and not lines[i].strip():
    i += 1
  while i < len(lines) and lines[i].strip() and not lines[i][:1].isspace():
    heads.append(lines[i].strip())
    i += 1
  if not heads:
    heads = [entry.headwords[0]]
  paras = []
  for p in _paragraphs(lines[i:]):
    p = _FOLDOC_EDITOR_QUERY.sub("", _FOLDOC_CATEGORY.sub("", p))
    p = _squash(_BRACES.sub(r"\1", _BRACES.sub(r"\1", p)))
    if not p or _FOLDOC_DATE.match(p) or p.startswith("See "):
      continue
    paras.append(p)
  if not paras:
    return None
  return heads[0], _squash(", ".join(heads) + ": " + " ".join(paras))


# GCIDE writes accented letters as bracket codes: [=o] (macron), [`e] (grave), ['e] (acute),
# [^o] (circumflex/breve), [~n] (tilde), ["u] (diaeresis), [,c] (cedilla), [.a] (dot), and a few
# named codes.
_GCIDE_MARKS = {"=": "\u0304", "`": "\u0300", "'": "\u0301", "^": "\u0306", "~": "\u0303",
                '"': "\u0308", ",": "\u0327", ".": "\u0307"}
_GCIDE_NAMED = {"deg": "\u00b0", "ae": "\u00e6", "AE": "\u00c6", "oe": "\u0153", "OE": "\u0152",
                "frac12": "\u00bd", "frac14": "\u00bc", "frac34": "\u00be", "imac": "\u012b",
                "emac": "\u0113", "omac": "\u014d", "amac": "\u0101", "umac": "\u016b",
                "eth": "\u00f0", "thorn": "\u00fe", "min": "\u2032", "sec": "\u2033",
                "times": "\u00d7", "divide": "\u00f7", "pound": "\u00a3", "sect": "\u00a7",
                "para": "\u00b6", "cent": "\u00a2", "ntilde": "\u00f1", "uum": "\u00fc"}
_GCIDE_MARK = re.compile(r"\[([=`'^~\",.])([A-Za-z])\]")
_GCIDE_NAMED_RE = re.compile(r"\[([A-Za-z]+[0-9]*)\]")
_GCIDE_PRON = re.compile(r"\\[^\\\n]*\\(?:\s*\([^()\n]*(?:\n[^()\n]*)?\))?")
_GCIDE_CITATION = re.compile(r"\s--[A-Z][^\n]*")
_GCIDE_SENSE = re.compile(r"(?m)^\s*\d+\.\s")
_GCIDE_HEADER_LABEL = re.compile(r"\(([A-Z][A-Za-z]*\.?(?: [A-Z][a-z]*\.?)?)\)")


def gcide_labels(text: str) -> Set[str]:
  """Domain labels `(Chem.)`, `(Geography)`, ... within an entry's header (first 300 chars)."""
  return set(_GCIDE_HEADER_LABEL.findall(text[:300]))


def _drop_brackets(s: str) -> str:
  """Removes every [...] span, nested ones included (etymologies, source tags, unknown codes)."""
  out, depth = [], 0
  for ch in s:
    if ch == "[":
      depth += 1
    elif ch == "]" and depth:
      depth -= 1
    elif not depth:
      out.append(ch)
  return "".join(out)


def clean_gcide(entry: DictEntry) -> Optional[Tuple[str, str]]:
  """(title, body) of a GCIDE entry (title = `gcide_headword`), or None if nothing is left.

  Accent codes become Unicode letters (NFC); `\\Pro*nun"ci*a*tion\\` marks and a directly
  following `(pronunciation)` are removed, as are every [...] span (etymologies, `[1913 Webster]`
  source tags), quotation lines (indented 12+ spaces) and `--Author` citations, sense numbers
  ("1. ") and `{link}` braces. The body keeps the entry's own headword(s) and part of speech at its
  start. The caller drops entries containing WordNet-derived text before calling this.
  """
  text = _GCIDE_MARK.sub(lambda m: m.group(2) + _GCIDE_MARKS[m.group(1)], entry.text)
  text = _GCIDE_NAMED_RE.sub(lambda m: _GCIDE_NAMED.get(m.group(1), m.group(0)), text)
  text = unicodedata.normalize("NFC", text)
  text = _GCIDE_PRON.sub("", text)
  lines = [ln for ln in text.split("\n") if not ln.startswith(" " * 12)]
  text = "\n".join(lines)
  text = _GCIDE_CITATION.sub("", text)
  text = _drop_brackets(text)
  text = _GCIDE_SENSE.sub(" ", text)
  text = _BRACES.sub(r"\1", _BRACES.sub(r"\1", text))
  text = _squash(text.replace(" ,", ","))
  text = re.sub(r"^([^,]*?)\s*,\s*,", r"\1,", text)  # "Gold , , n." left by removed marks
  if len(text.split()) < 3:
    return None
  return gcide_headword(entry), text


def gcide_headword(entry: DictEntry) -> str:
  """The entry's own headword: the text before its first `\\pro*nun*ci*a*tion\\` mark.

  (The index also lists run-on phrases, e.g. "Gold leaf", under the entry of "Gold".)
  """
  head = _squash(entry.text.split("\\", 1)[0]) if "\\" in entry.text[:200] else ""
  head = unicodedata.normalize("NFC", _GCIDE_MARK.sub(
      lambda m: m.group(2) + _GCIDE_MARKS[m.group(1)], head))
  return head if head and len(head) <= 60 else entry.headwords[0].strip()


def clean_jargon(entry: DictEntry) -> Optional[Tuple[str, str]]:
  """(title, body) of a Jargon File entry: headword, then its paragraphs, `{link}` braces removed.

  The short pronunciation / part-of-speech line under the headword (e.g. ` //, n.`) is dropped.
  """
  lines = entry.text.split("\n")
  title = lines[0].strip() if lines and lines[0].strip() else entry.headwords[0]
  paras = [_squash(_BRACES.sub(r"\1", p)) for p in _paragraphs(lines[1:])]
  if paras and len(paras[0].split()) <= 5:
    paras = paras[1:]
  body = " ".join(p for p in paras if p)
  if len(body.split()) < 3:
    return None
  return title, _squash(f"{title}: {body}")


# --- structured facts ----------------------------------------------------------------------------

class Fact(NamedTuple):
  """One candidate question.

  qtype: one of QUESTION_TYPES; subject: the phrase a supporting block must mention;
  subject_case: match the subject case-sensitively; question: the question text; answers: the
  source's answers (any is correct); key: the subject key of the split.
  """
  qtype: str
  subject: str
  subject_case: bool
  question: str
  answers: Tuple[str, ...]
  key: str


_VERA_NOTE = re.compile(r"\s*\([^()]*\)\s*$")
_VERA_QUOTED = re.compile(r",?\s*\"[^\"]*\"\s*$")


def parse_vera_expansion(text: str) -> Optional[str]:
  """The expansion of a dict-vera entry text (`ACRONYM\\n  Expansion (notes), "variant"`).

  Trailing "(notes)" and quoted variants are removed, `[letters]` brackets keep their content.
  Returns None if fewer than two words remain.
  """
  lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
  if len(lines) < 2:
    return None
  exp = " ".join(lines[1:])
  for _ in range(3):
    exp = _VERA_QUOTED.sub("", exp)
    exp = _VERA_NOTE.sub("", exp)
  exp = _squash(exp.replace("[", "").replace("]", ""))
  if len(exp.split()) < 2 and "-" not in exp:
    return None
  return exp


def acronym_facts(entries: Iterable[DictEntry], counters: io_utils.Counters) -> List[Fact]:
  """One `acronym` fact per acronym: all its dict-vera expansions are accepted answers."""
  meanings: Dict[str, List[str]] = collections.OrderedDict()
  for e in entries:
    acro = e.text.split("\n", 1)[0].strip() or e.headwords[0]
    exp = parse_vera_expansion(e.text)
    if exp is None:
      counters.skip("acronym_no_expansion")
      continue
    if not re.search(r"\w", acro) or len(acro) < 2:
      counters.skip("acronym_too_short")
      continue
    meanings.setdefault(acro, [])
    if exp not in meanings[acro]:
      meanings[acro].append(exp)
  return [Fact("acronym", a, True, f"What does {a} stand for?", tuple(exps), a)
          for a, exps in meanings.items()]


class Element(NamedTuple):
  name: str
  symbol: str
  number: str
  discoverers: Tuple[str, ...]  # full names as written
  year: Optional[str]


_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_BY = re.compile(r"\bby ((?:Sir )?[A-Z][^,;()]*?)(?=,? in |,? of [A-Z]| via |[;()]|$)")


def parse_discovery(prose: str) -> Tuple[Tuple[str, ...], Optional[str]]:
  """(discoverer full names, year) from the first sentence of `prose` saying "discovered".

  Names are what follows "by" up to " in ", " of PLACE", " via " or the sentence end, split on ","
  and " and ", keeping parts whose last word is capitalised, with "Sir" dropped; the year is the
  sentence's first 4-digit year. Missing parts are () / None.
  """
  for sent in sentence_splitter.split_sentences_text(prose):
    if not re.search(r"\bdiscovered\b", sent, re.IGNORECASE):
      continue
    year = _YEAR.search(sent)
    names = ()
    by = _BY.search(sent.rstrip("."))
    if by:
      parts = re.split(r",| and ", by.group(1))
      names = tuple(p.strip(" .").replace("Sir ", "") for p in parts
                    if re.fullmatch(r"\s*(?:Sir )?[A-Z].*[A-Z][\w'-]*\.?\s*|\s*[A-Z][\w'-]*\s*", p))
    return names, year.group(1) if year else None
  return (), None


def parse_element(text: str) -> Optional[Element]:
  """An element of dict-elements (`name\\nSymbol: X\\nAtomic number: N\\n...prose`), or None."""
  lines = text.split("\n")
  name = lines[0].strip()
  fields = {}
  prose = []
  for ln in lines[1:]:
    m = re.match(r"^(Symbol|Atomic number|Atomic weight):\s*(\S+)", ln)
    if m:
      fields[m.group(1)] = m.group(2)
    else:
      prose.append(ln.strip())
  if not name or "Symbol" not in fields or "Atomic number" not in fields:
    return None
  discoverers, year = parse_discovery(_squash(" ".join(prose)))
  return Element(name.lower(), fields["Symbol"], fields["Atomic number"], discoverers, year)


def element_facts(elements: Sequence[Element]) -> List[Fact]:
  """element_symbol / element_number / element_discoverer / element_year facts."""
  facts = []
  for el in elements:
    cap = el.name[:1].upper() + el.name[1:]
    facts.append(Fact("element_symbol", el.symbol, True,
                      f"Which chemical element has the symbol {el.symbol}?", (el.name, cap),
                      el.name))
    facts.append(Fact("element_number", el.name, False,
                      f"What is the atomic number of {el.name}?", (el.number,), el.name))
    if el.discoverers:
      surnames = tuple(d.split()[-1] for d in el.discoverers)
      answers = tuple(dict.fromkeys(el.discoverers + surnames))
      facts.append(Fact("element_discoverer", el.name, False, f"Who discovered {el.name}?",
                        answers, el.name))
    if el.year:
      facts.append(Fact("element_year", el.name, False, f"In what year was {el.name} discovered?",
                        (el.year,), el.name))
  return facts


def read_countries(path: str, counters: io_utils.Counters) -> List[Tuple[str, str]]:
  """(country, capital) pairs of miscfiles `countries` (`UN:ISO2:ISO3:name:capital` lines)."""
  out = []
  with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
    for line_no, line in enumerate(f, start=1):
      line = line.decode("utf-8").rstrip("\n")
      if not line.strip() or line.startswith("#"):
        continue
      parts = line.split(":")
      if len(parts) < 5:
        raise io_utils.BadLineError(f"{path}:{line_no}: expected 5 ':'-separated fields")
      if not parts[4].strip():
        counters.skip("country_without_capital")
        continue
      out.append((parts[3].strip(), parts[4].strip()))
  return out


_KGM_DIVISION = re.compile(r"<division>(.*?)</division>", re.S)
_KGM_FIELD = "<{0}>(.*?)</{0}>"


def read_kgeography(pattern: str, counters: io_utils.Counters) -> List[Tuple[str, str]]:
  """(division, capital) pairs of every kgeography `.kgm` map matching `pattern`."""
  out = []
  for path in sorted(tf.io.gfile.glob(pattern)):
    with tf.io.gfile.GFile(path, "r") as f:
      text = f.read()
    for div in _KGM_DIVISION.findall(text):
      name = re.search(_KGM_FIELD.format("name"), div, re.S)
      cap = re.search(_KGM_FIELD.format("capital"), div, re.S)
      if re.search(_KGM_FIELD.format("ignore"), div) or not name:
        continue
      if not cap or not cap.group(1).strip():
        counters.skip("division_without_capital")
        continue
      out.append((_squash(name.group(1)), _squash(cap.group(1))))
  return out


def capital_facts(pairs: Iterable[Tuple[str, str]]) -> List[Fact]:
  """One `capital` fact per region name; capitals of same-named regions are all accepted."""
  caps: Dict[str, List[str]] = collections.OrderedDict()
  for region, capital in pairs:
    if region == capital:  # "What is the capital of Djibouti?" answers itself
      continue
    caps.setdefault(region, [])
    if capital not in caps[region]:
      caps[region].append(capital)
  return [Fact("capital", r, True, f"What is the capital of {r}?", tuple(c), r)
          for r, c in caps.items()]


# --- answer-support matching ---------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def phrase_pattern(phrase: str, case_sensitive: bool) -> "re.Pattern":
  """`phrase` at word boundaries (not inside a longer word), any whitespace between its words."""
  body = r"\s+".join(re.escape(p) for p in phrase.split())
  return re.compile(r"(?<!\w)" + body + r"(?!\w)", 0 if case_sensitive else re.IGNORECASE)


class SupportIndex:
  """Finds, per block, the facts whose subject it mentions and whose answer its body holds.

  Facts are indexed by the first lower-cased word of their subject, so one block costs one set
  lookup per distinct word plus regex checks on the few candidate facts.
  """

  def __init__(self, facts: Sequence[Fact]):
    self.facts = list(facts)
    self.by_word: Dict[str, List[int]] = collections.defaultdict(list)
    self.subject_re = []
    self.answer_re = []
    for i, f in enumerate(self.facts):
      words = _WORD.findall(f.subject.lower())
      self.by_word[words[0] if words else ""].append(i)
      self.subject_re.append(phrase_pattern(f.subject, f.subject_case))
      # Symbols-as-answers never occur; names, numbers and expansions match case-insensitively.
      self.answer_re.append([phrase_pattern(a, False) for a in f.answers])
    self.support: Dict[int, List[int]] = collections.defaultdict(list)
    self.surface: Dict[int, List[str]] = collections.defaultdict(list)

  def add_block(self, row: int, title: str, body: str):
    """Records row as support of every fact it supports."""
    full = f"{title} {body}"
    words = set(_WORD.findall(full.lower()))
    cands = set()
    for w in words:
      cands.update(self.by_word.get(w, ()))
    for i in sorted(cands):
      if not self.subject_re[i].search(full):
        continue
      found = []
      for pat in self.answer_re[i]:
        found.extend(m.group(0) for m in pat.finditer(body))
      if found:
        self.support[i].append(row)
        for s in found:
          s = _squash(s)
          if s not in self.surface[i]:
            self.surface[i].append(s)


# --- corpus building ------------------------------------------------------------------------------

def _hash_order(s: str) -> str:
  return hashlib.md5(s.encode("utf-8")).hexdigest()


def in_fraction(key: str, fraction: float) -> bool:
  """Deterministic sample: md5(key) as a number in [0, 1) is below `fraction`."""
  return int(_hash_order(key)[:8], 16) / float(1 << 32) < fraction


def split_of(keys: Sequence[str], num_buckets: int = 100000) -> List[str]:
  """"dev" | "test" | "train" per subject key: bucket % 10 == 0 → dev, in {1, 2} → test."""
  if not keys:
    return []
  buckets = tf.strings.to_hash_bucket_fast(tf.constant(list(keys), tf.string), num_buckets).numpy()
  dev = prepare_qa.is_dev_question(list(keys), num_buckets, 10)
  return ["dev" if d else ("test" if b % 10 in (1, 2) else "train") for b, d in zip(buckets, dev)]


class CorpusWriter:
  """Blocks (title, body) documents and writes one JSONL line per block; feeds the SupportIndex."""

  def __init__(self, f, blocker, support: SupportIndex, max_blocks_per_entry: int,
               counters: io_utils.Counters, batch_size: int = 256):
    self.f = f
    self.blocker = blocker
    self.support = support
    self.max_blocks = max_blocks_per_entry
    self.counters = counters
    self.batch_size = batch_size
    self.pending: List[Tuple[str, str, str]] = []
    self.rows = 0
    self.lengths: List[int] = []  # wordpieces per block incl. [CLS] title [SEP] [SEP]
    self.per_source = collections.Counter()

  def add(self, source: str, title: str, body: str):
    reason = common.title_filter_reason(title)
    if reason:  # build_knowledge_corpus would drop it and shift every later row
      self.counters.skip(reason)
      return
    self.pending.append((source, title, body))
    if len(self.pending) >= self.batch_size:
      self.flush()

  def flush(self):
    if not self.pending:
      return
    docs = [(t, b) for _, t, b in self.pending]
    for (source, _, _), blocks in zip(self.pending, self.blocker.block_documents(docs,
                                                                                  self.counters)):
      if len(blocks) > self.max_blocks:
        self.counters.add("blocks_dropped_entry_cap", len(blocks) - self.max_blocks)
        blocks = blocks[:self.max_blocks]
      for b in blocks:
        self.f.write(json.dumps({"title": b.title, "body": b.text}, ensure_ascii=False) + "\n")
        self.support.add_block(self.rows, b.title, b.text)
        self.lengths.append(3 + len(b.title_ids) + len(b.token_ids))
        self.per_source[source] += 1
        self.rows += 1
    self.pending = []


def _jsonl_text(rows: Iterable[Dict]) -> str:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _percentiles(values: Sequence[int]) -> Dict[str, float]:
  if not values:
    return {}
  v = np.asarray(values)
  return {"mean": round(float(v.mean()), 1), "p50": float(np.percentile(v, 50)),
          "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)),
          "max": int(v.max()), "total": int(v.sum())}


def build_proxy(source_dir: str, output_dir: str, vocab_file: str, do_lower_case: bool = True,
                dataset_name: str = "DictQA", max_block_length: int = 100,
                max_blocks_per_entry: int = 2, foldoc_fraction: float = 0.6,
                max_answer_wordpieces: int = 10, max_questions_per_type: int = 800,
                num_buckets: int = 100000) -> Dict:
  """Builds corpus, QA splits and the extra pre-training source. Returns the statistics dict."""
  from realm_tf2.tokenization import RealmTokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = RealmTokenizer(vocab_file, do_lower_case)
  blocker = common.Blocker(tokenizer, max_block_length)
  dictd = os.path.join(source_dir, DICTD_DIR)

  def dictd_entries(name, counters):
    return read_dictd(os.path.join(dictd, f"{name}.index"),
                      os.path.join(dictd, f"{name}.dict.dz"), counters)

  # 1. Candidate facts from the structured sources.
  fact_c = io_utils.Counters("facts")
  facts = acronym_facts(dictd_entries("vera", fact_c), fact_c)
  elements = []
  for e in dictd_entries("elements", fact_c):
    el = parse_element(e.text)
    if el is None:
      fact_c.skip("element_without_symbol_or_number")  # alias entries: "cuprum", "wolfram"
    else:
      elements.append(el)
  facts += element_facts(elements)
  places = read_countries(os.path.join(source_dir, COUNTRIES_FILE), fact_c)
  places += read_kgeography(os.path.join(source_dir, KGEOGRAPHY_DIR, "*.kgm"), fact_c)
  facts += capital_facts(places)
  facts = _drop_long_answers(facts, tokenizer, max_answer_wordpieces, fact_c)
  entity_names = {el.name for el in elements}
  entity_names |= {p.lower() for pair in places for p in pair}

  # 2. Corpus, streamed: FOLDOC, then the GCIDE slice; each block is checked for support.
  support = SupportIndex(facts)
  corpus_c = io_utils.Counters("corpus")
  docs_path = os.path.join(output_dir, "docs.jsonl")
  with io_utils.atomic_open(docs_path, "w") as f:
    f.write("")  # gfile creates the file on the first write, even an empty one
    writer = CorpusWriter(f, blocker, support, max_blocks_per_entry, corpus_c)
    for e in dictd_entries("foldoc", corpus_c):
      if not in_fraction(e.headwords[0], foldoc_fraction):
        corpus_c.skip("foldoc_outside_fraction")
        continue
      doc = clean_foldoc(e)
      if doc is None:
        corpus_c.skip("foldoc_empty_after_cleaning")
        continue
      writer.add("foldoc", *doc)
    for e in dictd_entries("gcide", corpus_c):
      selected = (bool(gcide_labels(e.text) & GCIDE_LABELS)
                  or gcide_headword(e).lower() in entity_names)
      if not selected:
        corpus_c.skip("gcide_outside_slice")
        continue
      if "WordNet" in e.text:
        corpus_c.skip("gcide_wordnet_derived")
        continue
      doc = clean_gcide(e)
      if doc is None:
        corpus_c.skip("gcide_empty_after_cleaning")
        continue
      writer.add("gcide", *doc)
    writer.flush()
  corpus_c.written = writer.rows

  # 3. Questions: keep the supported ones, cap per type in hash order, split by subject.
  qa_c = io_utils.Counters("questions")
  kept = []
  for i, fact in enumerate(support.facts):
    qa_c.read += 1
    if not support.support.get(i):
      qa_c.skip(f"unsupported_{fact.qtype}")
      continue
    kept.append(i)
  by_type = collections.defaultdict(list)
  for i in kept:
    by_type[support.facts[i].qtype].append(i)
  selected = []
  for qtype in QUESTION_TYPES:
    ids = sorted(by_type.get(qtype, []), key=lambda i: _hash_order(support.facts[i].question))
    if len(ids) > max_questions_per_type:
      qa_c.skip(f"over_type_cap_{qtype}", len(ids) - max_questions_per_type)
      ids = ids[:max_questions_per_type]
    selected.extend(ids)
  selected.sort()
  splits = split_of([support.facts[i].key for i in selected], num_buckets)
  out = {"train": [], "dev": [], "test": []}
  meta = []
  for i, split in zip(selected, splits):
    fact = support.facts[i]
    found = {a.lower() for a in support.surface[i]}
    supported = [a for a in fact.answers if _squash(a).lower() in found]
    qa_c.add("source_answers_not_in_corpus_dropped", len(fact.answers) - len(supported))
    answers = list(dict.fromkeys(supported + support.surface[i]))
    question = prepare_qa.normalize_whitespace(fact.question)
    out[split].append({"question": question, "answer": answers})
    meta.append({"question": question, "type": fact.qtype, "subject": fact.subject,
                 "key": fact.key, "split": split, "support_rows": support.support[i][:20],
                 "num_support_rows": len(support.support[i])})
  for split, exs in out.items():  # (a split may be empty: the file is still written)
    io_utils.atomic_write_text(os.path.join(output_dir, f"{dataset_name}.resplit.{split}.jsonl"),
                               _jsonl_text(exs))
  qa_c.written = sum(len(v) for v in out.values())
  io_utils.atomic_write_text(os.path.join(output_dir, "questions_meta.jsonl"), _jsonl_text(meta))

  # 4. Second pre-training source: the Jargon File.
  jargon_c = io_utils.Counters("pretrain_extra_jargon")
  with io_utils.atomic_open(os.path.join(output_dir, "pretrain_extra_jargon.jsonl"), "w") as f:
    f.write("")  # gfile creates the file on the first write, even an empty one
    for e in dictd_entries("jargon", jargon_c):
      doc = clean_jargon(e)
      if doc is None:
        jargon_c.skip("jargon_empty_after_cleaning")
        continue
      f.write(json.dumps({"title": doc[0], "body": doc[1]}, ensure_ascii=False) + "\n")
      jargon_c.written += 1

  answer_wp = [len(x) for x in tokenizer.tokenize_np(
      [m["answer"][0] for s in ("train", "dev", "test") for m in out[s]])] if meta else []
  per_type_split = collections.defaultdict(collections.Counter)
  for m in meta:
    per_type_split[m["type"]][m["split"]] += 1
  stats = {
      "benchmark": "real_data_proxy", "dataset_name": dataset_name,
      "blocks": writer.rows, "blocks_per_source": dict(writer.per_source),
      "block_wordpieces": _percentiles(writer.lengths),
      "questions": {s: len(v) for s, v in out.items()},
      "questions_per_type": {t: dict(c) for t, c in sorted(per_type_split.items())},
      "answer_wordpieces": _percentiles(answer_wp),
      "candidate_facts": len(facts),
      "counters": {"facts": fact_c.as_dict(), "corpus": corpus_c.as_dict(),
                   "questions": qa_c.as_dict(), "pretrain_extra_jargon": jargon_c.as_dict()},
  }
  io_utils.atomic_write_text(os.path.join(output_dir, "stats.json"), json.dumps(stats, indent=1))
  return stats


def _drop_long_answers(facts: List[Fact], tokenizer, max_wordpieces: int,
                       counters: io_utils.Counters) -> List[Fact]:
  """Removes answers longer than `max_wordpieces`; a fact left without answers is dropped."""
  all_answers = sorted({a for f in facts for a in f.answers})
  lengths = dict(zip(all_answers, (len(x) for x in tokenizer.tokenize_np(all_answers)))) \
      if all_answers else {}
  out = []
  for f in facts:
    answers = tuple(a for a in f.answers if 0 < lengths[a] <= max_wordpieces)
    if not answers:
      counters.skip(f"answer_too_long_{f.qtype}")
      continue
    out.append(f._replace(answers=answers))
  return out


def main(argv):
  del argv
  stats = build_proxy(FLAGS.source_dir, FLAGS.output_dir, FLAGS.vocab_file, FLAGS.do_lower_case,
                      FLAGS.dataset_name, FLAGS.max_block_length, FLAGS.max_blocks_per_entry,
                      FLAGS.foldoc_fraction, FLAGS.max_answer_wordpieces,
                      FLAGS.max_questions_per_type, FLAGS.num_buckets)
  print(json.dumps(stats), flush=True)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["source_dir", "output_dir", "vocab_file"])
  app.run(main)
