"""real_data_proxy and bm25 on tiny synthetic inputs in the packages' raw formats.

The sources are written as the Debian packages lay them out (dictd `.index` + gzip `.dict.dz`,
miscfiles `countries.gz`, a kgeography `.kgm` map) under a temporary extraction root.
"""
import gzip
import json
import math
import os
import re

import numpy as np
import pytest

from benchmarks import bm25
from benchmarks import real_data_proxy as rdp
from data_prep import prepare_qa
from realm_tf2 import io_utils

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n):
  s = ""
  while True:
    s = _B64[n % 64] + s
    n //= 64
    if n == 0:
      return s


def write_dictd(root, name, entries):
  """entries: [(headwords, text)] → root/usr/share/dictd/name.{index,dict.dz}."""
  d = os.path.join(root, rdp.DICTD_DIR)
  os.makedirs(d, exist_ok=True)
  data, index = b"", []
  for heads, text in entries:
    raw = text.encode("utf-8")
    for h in heads:
      index.append((h, len(data), len(raw)))
    data += raw
  with gzip.open(os.path.join(d, f"{name}.dict.dz"), "wb") as f:
    f.write(data)
  with open(os.path.join(d, f"{name}.index"), "w", encoding="utf-8") as f:
    for h, off, ln in sorted(index):
      f.write(f"{h}\t{_b64(off)}\t{_b64(ln)}\n")


FOLDOC = [
    (["00-database-info"], "00-database-info\n  The Free On-line Dictionary of Computing\n"),
    (["central processing unit", "CPU"],
     "central processing unit\nCPU\n\n   <architecture> (CPU) The part of a {computer} which\n"
     "   controls all the other parts. [Origin?]\n\n   See also {ALU}.\n\n   (1999-01-01)\n\n"),
    (["ACME"], "ACME\n\n   <company> The ACME company makes widgets.\n\n"),
    (["XYZ"], "XYZ\n\n   <protocol> A network protocol.\n\n"),
    (["eXtended Yield Zone"],
     "eXtended Yield Zone\n\n   <storage> The eXtended Yield Zone stores things.\n\n"),
]
GCIDE = [
    (["Gold", "Gold leaf"],
     "Gold \\Gold\\ (g[=o]ld), n. [AS. gold; akin to D. goud.]\n   [1913 Webster]\n"
     "   1. (Chem.) A metallic element of atomic number 79. Symbol Au. It\n"
     "      was discovered by Cain in 1500. A caf['e] sells it.\n      [1913 Webster]\n\n"
     "            Gold is good.                         --Milton.\n      [1913 Webster]\n"),
    (["Paris"], "Paris \\Par\"is\\, n.\n   The chief city of France.\n   [1913 Webster]\n"),
    (["Lead"], "Lead \\Lead\\ n. (Chem.)\n   a soft heavy metal with atomic number 82 and\n"
     "   symbol Pb.\n\n   Syn: lead.\n        [WordNet 1.5]\n"),
    (["Watch"], "Watch \\Watch\\, n.\n   A small timepiece.\n   [1913 Webster]\n"),
]
VERA = [
    (["00databaseinfo"], "00-database-info\n  V.E.R.A.\n"),
    (["CPU"], "CPU\n       Central Processing Unit\n"),
    (["ACME"], "ACME\n       A Company Making Everything (org.)\n"),
    (["XYZ"], "XYZ\n       eXtended Yield Zone\n"),
]
ELEMENTS = [
    (["gold"], "gold\nSymbol: Au\nAtomic number: 79\nAtomic weight: 196.97\nYellow metal.\n"
     "Discovered by Tubal Cain in 1500.\n\n"),
    (["lead"], "lead\nSymbol: Pb\nAtomic number: 82\nAtomic weight: 207.2\nGrey metal.\n\n"),
    (["cuprum"], "cuprum\nRoman name for {copper}.\n\n"),
]
JARGON = [(["AFAIK"], "AFAIK\n //, n.\n\n    Abbrev. for \"As Far As I Know\".\n\n")]
KGM = """<?xml version="1.0" encoding="utf-8"?>
<map><name>World</name>
<division><name>Not a Nation</name><ignore>yes</ignore></division>
<division><name>Germany</name><capital>Berlin</capital></division>
<division><name>Atlantis</name></division>
</map>
"""


def write_sources(root):
  write_dictd(root, "foldoc", FOLDOC)
  write_dictd(root, "gcide", GCIDE)
  write_dictd(root, "vera", VERA)
  write_dictd(root, "elements", ELEMENTS)
  write_dictd(root, "jargon", JARGON)
  misc = os.path.join(root, os.path.dirname(rdp.COUNTRIES_FILE))
  os.makedirs(misc, exist_ok=True)
  with gzip.open(os.path.join(root, rdp.COUNTRIES_FILE), "wt", encoding="utf-8") as f:
    f.write("# UN:ISO2:ISO3:name:capital\n250:FR:FRA:France:Paris\n010:AQ:ATA:Antarctica:\n")
  kgm = os.path.join(root, rdp.KGEOGRAPHY_DIR)
  os.makedirs(kgm, exist_ok=True)
  with open(os.path.join(kgm, "world.kgm"), "w", encoding="utf-8") as f:
    f.write(KGM)


def write_vocab(path):
  """Word-level uncased vocab of every word in the sources (unknown words are one [UNK])."""
  texts = [t for src in (FOLDOC, GCIDE, VERA, ELEMENTS, JARGON) for _, t in src]
  words = sorted({w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower())})
  punct = list(".,:;()[]{}<>\"'?!-/\\*=")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + punct + words) + "\n")
  return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("src"))
  write_sources(root)
  out = str(tmp_path_factory.mktemp("proxy"))
  vocab = write_vocab(os.path.join(root, "vocab.txt"))
  stats = rdp.build_proxy(root, out, vocab, max_block_length=64, foldoc_fraction=1.0)
  return root, out, vocab, stats


def _jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(l) for l in f if l.strip()]


# --- parsing --------------------------------------------------------------------------------------

def test_dictd_numbers_and_entries(tmp_path):
  assert rdp.decode_dictd_number("A") == 0
  assert rdp.decode_dictd_number("BA") == 64
  assert rdp.decode_dictd_number(_b64(123456)) == 123456
  write_dictd(str(tmp_path), "foldoc", FOLDOC)
  c = io_utils.Counters()
  d = os.path.join(str(tmp_path), rdp.DICTD_DIR)
  entries = list(rdp.read_dictd(os.path.join(d, "foldoc.index"),
                                os.path.join(d, "foldoc.dict.dz"), c))
  # one entry per text, in file order; its headwords in index (sorted) order
  assert [e.headwords for e in entries] == [sorted(h) for h, _ in FOLDOC[1:]]
  assert c.skipped["dictd_metadata"] == 1 and c.read == 5
  with open(os.path.join(d, "foldoc.index"), "a") as f:
    f.write("broken line\n")
  with pytest.raises(io_utils.BadLineError, match=r"foldoc.index:\d+"):
    list(rdp.read_dictd(os.path.join(d, "foldoc.index"), os.path.join(d, "foldoc.dict.dz"), c))


def test_clean_foldoc():
  title, body = rdp.clean_foldoc(rdp.DictEntry(*FOLDOC[1]))
  assert title == "central processing unit"
  assert body == ("central processing unit, CPU: (CPU) The part of a computer which controls "
                  "all the other parts.")  # category, editor query, See also, date removed


def test_clean_gcide():
  entry = rdp.DictEntry(*GCIDE[0])
  assert rdp.gcide_headword(entry) == "Gold"
  assert "Chem." in rdp.gcide_labels(entry.text)
  title, body = rdp.clean_gcide(entry)
  assert title == "Gold"
  assert body == ("Gold, n. (Chem.) A metallic element of atomic number 79. Symbol Au. It was "
                  "discovered by Cain in 1500. A caf\u00e9 sells it.")  # quotation dropped


def test_parse_vera_and_elements():
  assert rdp.parse_vera_expansion("ACME\n   A Company Making Everything (org.)\n") == \
      "A Company Making Everything"
  assert rdp.parse_vera_expansion("4GT\n   4 GB [RAM] Tuning (RAM, GB)\n") == "4 GB RAM Tuning"
  assert rdp.parse_vera_expansion("X\n   Single\n") is None
  el = rdp.parse_element(ELEMENTS[0][1])
  assert el == rdp.Element("gold", "Au", "79", ("Tubal Cain",), "1500")
  assert rdp.parse_element(ELEMENTS[2][1]) is None
  assert rdp.parse_discovery("It was discovered in 1898 by Sir William Ramsay and M.W. Travers.") \
      == (("William Ramsay", "M.W. Travers"), "1898")


# --- the whole build ------------------------------------------------------------------------------

def test_corpus_rows_and_skips(built):
  _, out, _, stats = built
  docs = _jsonl(os.path.join(out, "docs.jsonl"))
  titles = [d["title"] for d in docs]
  assert titles == ["central processing unit", "ACME", "XYZ", "eXtended Yield Zone", "Gold",
                    "Paris"]
  assert all(set(d) == {"title", "body"} for d in docs)
  c = stats["counters"]["corpus"]["skipped_by_reason"]
  assert c["gcide_wordnet_derived"] == 1  # Lead: its text is WordNet's
  assert c["gcide_outside_slice"] == 1  # Watch: no selected label, not an entity name
  assert stats["blocks"] == len(docs) == stats["counters"]["corpus"]["written"]
  assert not any("WordNet" in d["body"] or "Pb" in d["body"] for d in docs)
  jargon = _jsonl(os.path.join(out, "pretrain_extra_jargon.jsonl"))
  assert jargon == [{"title": "AFAIK", "body": "AFAIK: Abbrev. for \"As Far As I Know\"."}]


def test_answer_support_filter(built):
  _, out, _, stats = built
  qa = {}
  for split in ("train", "dev", "test"):
    for ex in _jsonl(os.path.join(out, f"DictQA.resplit.{split}.jsonl")):
      qa[ex["question"]] = ex["answer"]
  assert qa == {
      # the source's casing first, then the corpus's surface form
      "What does CPU stand for?": ["Central Processing Unit", "central processing unit"],
      "What is the capital of France?": ["Paris"],
      "Which chemical element has the symbol Au?": ["gold", "Gold"],
      "What is the atomic number of gold?": ["79"],
      "Who discovered gold?": ["Cain"],
      "In what year was gold discovered?": ["1500"],
  }
  q = stats["counters"]["questions"]["skipped_by_reason"]
  # ACME: expansion nowhere; XYZ: subject and answer in different blocks.
  assert q["unsupported_acronym"] == 2
  assert q["unsupported_capital"] == 1  # Germany
  assert q["unsupported_element_symbol"] == 1 and q["unsupported_element_number"] == 1  # lead
  f = stats["counters"]["facts"]["skipped_by_reason"]
  assert f["country_without_capital"] == 1 and f["division_without_capital"] == 1
  assert f["element_without_symbol_or_number"] == 1
  meta = _jsonl(os.path.join(out, "questions_meta.jsonl"))
  docs = _jsonl(os.path.join(out, "docs.jsonl"))
  for m in meta:  # every kept question names a block holding an answer
    assert any(a in docs[r]["body"] for r in m["support_rows"] for a in qa[m["question"]])


def test_split_by_subject(built):
  _, out, _, _ = built
  meta = _jsonl(os.path.join(out, "questions_meta.jsonl"))
  keys = sorted({m["key"] for m in meta})
  expected = dict(zip(keys, rdp.split_of(keys)))
  for m in meta:
    assert m["split"] == expected[m["key"]]
  assert len({m["split"] for m in meta if m["key"] == "gold"}) == 1


def test_split_rule_is_orqa_hash():
  keys = [f"subject {i}" for i in range(300)]
  splits = rdp.split_of(keys)
  dev = prepare_qa.is_dev_question(keys)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  buckets = tf.strings.to_hash_bucket_fast(keys, 100000).numpy()
  for s, d, b in zip(splits, dev, buckets):
    assert s == ("dev" if d else "test" if b % 10 in (1, 2) else "train")
  assert {"train", "dev", "test"} == set(splits)


# --- BM25 -----------------------------------------------------------------------------------------

def test_bm25_scores_by_hand():
  docs = ["Apple banana", "apple, APPLE cherry!", "cherry date fig", "banana"]
  index = bm25.BM25Index(docs, k1=0.9, b=0.4)
  assert bm25.tokenize("apple, APPLE cherry!") == ["apple", "apple", "cherry"]
  avgdl = (2 + 3 + 3 + 1) / 4
  idf = math.log(1 + (4 - 2 + 0.5) / (2 + 0.5))

  def w(tf, dl):
    return idf * tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * dl / avgdl))

  np.testing.assert_allclose(index.scores(["apple"])[0], [w(1, 2), w(2, 3), 0, 0])
  # repeated query terms count twice
  np.testing.assert_allclose(index.scores(["apple apple"])[0], 2 * index.scores(["apple"])[0])
  ranked = index.retrieve(["apple", "cherry date", "unknown words"], k=3)
  assert ranked.dtype == np.int32 and ranked.shape == (3, 3)
  assert ranked[0, :2].tolist() == [1, 0]
  assert ranked[1, :2].tolist() == [2, 1]
  assert ranked[2].tolist() == [0, 1, 2]  # all zero: lower row first


def test_recall_uses_orqa_has_answer():
  texts = ["Paris is big", "the city of paris", "nothing"]
  retrieved = np.array([[2, 0, 1], [2, 1, 0], [0, 1, 2]])
  rec = bm25.recall_at_k(retrieved, texts, [["Paris"], ["Paris"], ["Rome"]], ks=(1, 2, 3))
  # q0: first hit at rank 2; q1: "paris" != "Paris" (case-sensitive) -> first hit rank 3; q2: none
  assert rec == {1: 0.0, 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}


@pytest.mark.slow
def test_end_to_end_knowledge_corpus_and_bm25(built, tmp_path):
  from data_prep import build_knowledge_corpus as bkc  # pylint: disable=g-import-not-at-top
  _, out, vocab, _ = built
  kdir = str(tmp_path / "knowledge")
  bkc.build_knowledge_corpus(os.path.join(out, "docs.jsonl"), vocab, kdir, num_shards=1,
                             verbose=False)
  texts, titles = bm25.read_knowledge_texts(kdir)
  docs = _jsonl(os.path.join(out, "docs.jsonl"))
  assert texts == [d["body"] for d in docs] and titles == [d["title"] for d in docs]
  records = bm25.evaluate(kdir, out, "DictQA", ["train", "dev", "test"], ks=(1, 5, 20))
  total = sum(r["questions"] for r in records)
  assert total == 6
  # Six blocks, k=20 covers them all and every question is supported: recall@20 = 1.
  assert all(r["recall@20"] == 1.0 for r in records if r["questions"])
