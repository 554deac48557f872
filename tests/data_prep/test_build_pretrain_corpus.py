"""build_pretrain_corpus: byte offsets, spans, doc_uid = knowledge block uid, random masking."""
import json

import pytest

from data_prep import build_knowledge_corpus as bkc
from data_prep import build_pretrain_corpus as bpc
from realm_tf2.data import corpus_format as cf

DOCS = [
    {"title": "Paris", "body": "The city of Paris was founded in 1875. It is near the river.\n"
                               "Mary wrote a book in June 1900."},
    {"title": "Caf\u00e9", "body": "The caf\u00e9 opened in 1999 in London. it is small."},
    {"title": "Nothing", "body": "it is a small city."},  # no salient span
    {"title": "List of cities", "body": "Paris was founded in 1875."},
]


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return str(path)


def _spans(rec, kind):
  text = rec["text"]
  return [text[s:e].decode("utf-8") for s, e in zip(rec[kind + "_byte_start"], rec[kind + "_byte_limit"])]


def test_document_records_salient(tmp_path):
  inp = _write(tmp_path / "in.jsonl", DOCS)
  c = bpc.build_pretrain_corpus(inp, str(tmp_path / "out"), num_shards=2, verbose=False)
  recs = list(cf.iter_pretrain_corpus(cf.pretrain_corpus_pattern(str(tmp_path / "out"))))
  # no title filter without a knowledge corpus: "List of cities" kept; "Nothing" has no span
  assert [r["title"].decode() for r in recs] == ["Paris", "Caf\u00e9", "List of cities"]
  assert c.read == 4 and c.written == 3 and dict(c.skipped) == {"no_valid_span": 1}
  with open(tmp_path / "out" / "report.json") as f:  # the final report, as a file
    report = json.load(f)
  assert report["tool"] == "build_pretrain_corpus" and report["read"] == 4
  assert report["written"] == 3 and report["skipped_by_reason"] == {"no_valid_span": 1}
  assert report == {"tool": "build_pretrain_corpus", **c.as_dict()}
  assert _spans(recs[0], "sentence") == [
      "The city of Paris was founded in 1875.", "It is near the river.",
      "Mary wrote a book in June 1900."]
  # "Mary" is a single capitalised word at sentence start: skipped by design
  assert _spans(recs[0], "span") == ["Paris", "1875", "June 1900"]
  # non-ASCII text: offsets are UTF-8 bytes
  assert _spans(recs[1], "span") == ["1999", "London"]
  assert recs[1]["span_byte_start"].tolist() == [len("The caf\u00e9 opened in ".encode())] + [
      len("The caf\u00e9 opened in 1999 in ".encode())]
  assert c.extra["spans"] == 6


def test_records_are_knowledge_blocks(tmp_path, tiny_vocab_file):
  inp = _write(tmp_path / "in.jsonl", DOCS)
  kdir = str(tmp_path / "k")
  bkc.build_knowledge_corpus(inp, tiny_vocab_file, kdir, num_shards=1, max_block_length=40,
                             verbose=False)
  c = bpc.build_pretrain_corpus(inp, str(tmp_path / "p"), num_shards=1, knowledge_corpus_dir=kdir,
                                verbose=False)
  assert "uid_mismatch" not in c.extra
  blocks = {r["doc_uid"]: r for r in cf.iter_realm_corpus(cf.realm_corpus_pattern(kdir))}
  recs = list(cf.iter_pretrain_corpus(cf.pretrain_corpus_pattern(str(tmp_path / "p"))))
  # the block without a span ("it is a small city.") is counted, not written
  assert len(recs) == len(blocks) - c.skipped["no_valid_span"] >= 2
  assert c.skipped["no_valid_span"] == 1
  for r in recs:
    b = blocks[r["doc_uid"]]  # byte-identical to a retrieval block (trivial-retrieval removal)
    assert (b["title"], b["body"]) == (r["title"], r["text"])
    assert b"\n" not in r["text"]
  assert c.skipped["title_list_of"] == 1
  # a different input than the knowledge corpus was built from is detected
  other = _write(tmp_path / "other.jsonl", DOCS[1:])
  c2 = bpc.build_pretrain_corpus(other, str(tmp_path / "p2"), knowledge_corpus_dir=kdir,
                                 verbose=False)
  assert c2.extra["uid_mismatch"] >= 1
  with open(tmp_path / "p2" / "report.json") as f:
    assert json.load(f)["uid_mismatch"] == c2.extra["uid_mismatch"]


def test_random_masking_is_seeded(tmp_path):
  inp = _write(tmp_path / "in.jsonl", DOCS)
  runs = []
  for name in ("a", "b"):
    bpc.build_pretrain_corpus(inp, str(tmp_path / name), masking="random", seed=3, num_shards=1,
                              verbose=False)
    runs.append(list(cf.iter_pretrain_corpus(cf.pretrain_corpus_pattern(str(tmp_path / name)))))
  assert len(runs[0]) == 4  # every sentence with a word gets one span
  for ra, rb in zip(*runs):
    assert ra["span_byte_start"].tolist() == rb["span_byte_start"].tolist()
    spans = _spans(ra, "span")
    assert len(spans) == len(ra["sentence_byte_start"])
    assert all(1 <= len(s.split()) <= 3 for s in spans)
    for s, e in zip(ra["span_byte_start"], ra["span_byte_limit"]):  # inside one sentence
      assert any(ss <= s and e <= se for ss, se in zip(ra["sentence_byte_start"],
                                                     ra["sentence_byte_limit"]))


def test_random_word_span():
  import random
  rng = random.Random(0)
  for _ in range(50):
    s, e = bpc.random_word_span("one two three four", rng)
    assert 1 <= len("one two three four"[s:e].split()) <= 3
  assert bpc.random_word_span("...", rng) is None


def test_unknown_tagger_fails_early(tmp_path):
  with pytest.raises(ValueError, match="unknown tagger"):
    bpc.build_pretrain_corpus(_write(tmp_path / "in.jsonl", DOCS), str(tmp_path / "o"),
                              tagger="nope", verbose=False)
