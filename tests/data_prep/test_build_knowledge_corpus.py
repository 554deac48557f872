"""build_knowledge_corpus: hand-worked blocking, limits, alignment, uids, bad input."""
import hashlib
import json
import os

import numpy as np
import pytest

from data_prep import build_knowledge_corpus as bkc
from realm_tf2 import io_utils
from realm_tf2.data import corpus_format as cf
from realm_tf2.tokenization import RealmTokenizer

# Wordpiece counts with the tiny vocab (every word is one wordpiece, "." is one):
S1 = "The king was born in Paris."       # 7
S2 = "He wrote a book."                  # 5
S3 = "The city was founded in 1875."     # 7
S4 = "Mary was the queen."               # 5
S5 = ("John and Mary and the king and the queen and the city and the river and London and "
      "Paris.")                           # 20: over-long for budget 16
S6 = "He wrote a book."                  # 5
DOC = {"title": "Paris", "body": " ".join([S1, S2, S3, S4, S5]) + "\n" + S6}
# max_block_length 20, title "paris" = 1 wp -> budget 20 - 3 - 1 = 16 wordpieces per block:
# [S1 S2] = 12 (S3 would make 19); [S3 S4] = 12; S5 alone, truncated to its first 16 wordpieces;
# [S6] = 5.
EXPECTED_TEXTS = [
    S1 + " " + S2, S3 + " " + S4,
    "John and Mary and the king and the queen and the city and the river and", S6]


def _uid(title, body):
  return int(hashlib.sha1(f"{title} <sep> {body}".encode()).hexdigest(), 16) & ((1 << 63) - 1)


def _write_jsonl(path, rows):
  with open(path, "wb") as f:
    for r in rows:
      f.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())
  return str(path)


def _build(tmp_path, rows, vocab, **kw):
  os.makedirs(tmp_path, exist_ok=True)
  inp = _write_jsonl(tmp_path / "in.jsonl", rows)
  out = str(tmp_path / "out")
  kw.setdefault("max_block_length", 20)
  c = bkc.build_knowledge_corpus(inp, vocab, out, num_shards=kw.pop("num_shards", 3),
                                 verbose=False, **kw)
  return c, out


def test_hand_worked_blocks_alignment_and_uids(tmp_path, tiny_vocab_file):
  other = {"title": "London", "body": "London is a city. It is on a river."}
  c, out = _build(tmp_path, [DOC, other], tiny_vocab_file)
  tok = RealmTokenizer(tiny_vocab_file)
  orqa = list(cf.iter_orqa_blocks(out))
  texts = [b.decode() for b, _, _ in orqa]
  assert texts == EXPECTED_TEXTS + ["London is a city. It is on a river."]
  assert [t.decode() for _, t, _ in orqa] == ["Paris"] * 4 + ["London"]
  assert [list(e["sentence_starts"]) for _, _, e in orqa] == [[0, 7], [0, 7], [0], [0], [0, 5]]
  assert c.written == 5 and c.extra["truncated_sentences"] == 1
  assert c.extra["truncated_wordpieces"] == 4
  realm = list(cf.iter_realm_corpus(cf.realm_corpus_pattern(out)))
  assert len(tf_glob(cf.realm_corpus_pattern(out))) == 3
  assert len(realm) == len(orqa)
  for i, (r, (text, title, ex)) in enumerate(zip(realm, orqa)):
    assert r["block_index"] == i
    assert r["body"] == text and r["title"] == title
    np.testing.assert_array_equal(r["body_token_ids"], ex["token_ids"])
    np.testing.assert_array_equal(r["title_token_ids"], ex["title_ids"])
    # ids are exactly the tokenisation of the stored text, and the block fits with specials
    np.testing.assert_array_equal(ex["token_ids"], tok.tokenize_np([text.decode()])[0])
    assert 3 + len(ex["title_ids"]) + len(ex["token_ids"]) <= 20
    assert r["doc_uid"] == ex["doc_uid"] == _uid(title.decode(), text.decode())
  assert realm[0]["doc_uid"] == _uid("Paris", S1 + " " + S2)  # stable across runs/machines
  info = cf.read_corpus_info(out)
  assert info["num_blocks"] == 5 and info["max_block_length"] == 20


def tf_glob(p):
  import tensorflow as tf
  return tf.io.gfile.glob(p)


def test_every_block_fits_288(tmp_path, tiny_vocab_file):
  words = "the king of paris wrote a book in 1875 and the queen".split()
  rng = np.random.RandomState(0)
  docs = []
  for d in range(6):
    sents = [" ".join(rng.choice(words, rng.randint(3, 60))).capitalize() + "." for _ in range(30)]
    docs.append({"title": "Doc %d" % d, "body": " ".join(sents)})
  c, out = _build(tmp_path, docs, tiny_vocab_file, max_block_length=288, num_shards=2)
  lengths = [3 + len(e["title_ids"]) + len(e["token_ids"]) for _, _, e in cf.iter_orqa_blocks(out)]
  assert c.written == len(lengths) > 6
  assert max(lengths) <= 288
  # greedy: a block plus the first sentence of the next block of the same doc would overflow
  assert np.mean(lengths) > 200


def test_bad_input(tmp_path, tiny_vocab_file):
  rows = [
      {"title": "Paris", "body": "The king was born in Paris."},
      b"{broken json\n",
      b"\xff\xfe not utf8\n",
      {"body": "no title"},
      {"title": "Empty", "body": "  \n "},
      {"title": "List of kings", "body": "The king."},
      {"title": "Paris (disambiguation)", "body": "The city."},
      {"title": "No body"},
      {"title": 3, "body": "x"},
      {"title": "Long", "body": "the " * 250000 + "."},  # a 1 MB single "sentence"
  ]
  with pytest.raises(io_utils.BadLineError, match=r"in.jsonl:2: invalid JSON"):
    _build(tmp_path, rows, tiny_vocab_file)
  assert not tf_glob(str(tmp_path / "out" / "*.tfr"))  # nothing half-written
  c, out = _build(tmp_path, rows, tiny_vocab_file, skip_bad_lines=True, max_block_length=288)
  assert c.read == 10
  assert dict(c.skipped) == {"bad_json": 1, "bad_utf8": 1, "missing_title": 1, "empty_body": 1,
                             "title_list_of": 1, "title_disambiguation": 1, "missing_body": 1,
                             "bad_field_type": 1}
  assert c.written == 2 and c.extra["truncated_sentences"] == 1
  assert c.read == c.num_skipped + c.extra["documents_blocked"]  # nothing dropped uncounted
  with open(os.path.join(out, "report.json")) as f:  # the final report, as a file
    assert json.load(f) == {"tool": "build_knowledge_corpus", **c.as_dict()}
  blocks = list(cf.iter_orqa_blocks(out))
  long_block = blocks[1][2]
  assert len(long_block["token_ids"]) == 288 - 3 - len(long_block["title_ids"])


def test_wikiextractor_input(tmp_path, tiny_vocab_file):
  rows = [{"id": "1", "url": "u", "title": "A &amp; B", "text": "The king &amp; the queen."}]
  c, out = _build(tmp_path, rows, tiny_vocab_file)
  (text, title, _), = list(cf.iter_orqa_blocks(out))
  assert (text, title) == (b"The king & the queen.", b"A & B")


@pytest.mark.slow
def test_parallel_workers_match_in_process(tmp_path, tiny_vocab_file):
  docs = [DOC] + [{"title": f"T{i}", "body": f"The city {i}. It was founded in 1875."}
                  for i in range(40)]
  _, out1 = _build(tmp_path / "a", docs, tiny_vocab_file, num_workers=1)
  _, out2 = _build(tmp_path / "b", docs, tiny_vocab_file, num_workers=2, chunk_size=4)
  for name in (cf.BLOCKS_FILE, cf.TITLES_FILE, cf.EXAMPLES_FILE):
    assert open(os.path.join(out1, name), "rb").read() == open(os.path.join(out2, name), "rb").read()
