"""Tests of data_prep.build_vocab (tiny corpus, in-process plus one CLI run)."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from data_prep import build_vocab
from realm_tf2 import io_utils
from realm_tf2 import tokenization

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORDS = ("the king of paris was born in june 1875 and wrote a book about the river city "
         "london queen mary founded capital running runner").split()


def _corpus(tmp_path, n=60):
  path = tmp_path / "corpus.jsonl"
  lines = []
  for i in range(n):
    body = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(25)) + ". Caf\u00e9!"
    lines.append(json.dumps({"title": f"Doc {i % 5}", "body": body}))
  lines.append(json.dumps({"title": "Wiki", "text": "The Queen wrote."}))  # WikiExtractor field
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def test_build_vocab_tiny_corpus(tmp_path):
  corpus = _corpus(tmp_path)
  out = str(tmp_path / "out" / "vocab.txt")
  vocab, counters = build_vocab.build_vocab(corpus, out, vocab_size=120, lower_thresh=2,
                                            ensure_ascii=False)
  lines = tf.io.gfile.GFile(out).read().splitlines()
  assert lines == vocab
  assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert 5 < len(lines) <= 120
  assert len(set(lines)) == len(lines)
  for w in ("the", "paris", "king", "june"):
    assert w in lines, w
  assert "Paris" not in lines  # lower-cased
  assert counters.read == 61 and counters.written == len(lines) and counters.num_skipped == 0
  tok = tokenization.RealmTokenizer(out)
  ids = tok.tokenize(tf.constant(["The King of Paris. caf\u00e9 QUEEN!"])).to_list()[0]
  assert tok.pad_id == 0 and tok.unk_id not in ids
  assert tok.convert_ids_to_tokens(ids)[:4] == ["the", "king", "of", "paris"]


def test_ascii_alphabet_guaranteed_so_unseen_text_is_not_unk(tmp_path):
  corpus = _corpus(tmp_path)
  out = str(tmp_path / "vocab.txt")
  vocab, _ = build_vocab.build_vocab(corpus, out, vocab_size=400, lower_thresh=2)
  assert len(vocab) <= 400 and len(set(vocab)) == len(vocab)
  for t in ("?", "#", "w", "##h", "##7", "paris", "the"):
    assert t in vocab, t
  tok = tokenization.RealmTokenizer(out)
  ids = tok.tokenize(tf.constant(["Which river? #42"])).to_list()[0]
  assert tok.unk_id not in ids  # "which", "river", "?" never occur in the corpus
  # A budget too small for the alphabet keeps the vocab within vocab_size.
  small, _ = build_vocab.build_vocab(corpus, out, vocab_size=20, lower_thresh=2)
  assert len(small) == 20 and small[:5] == build_vocab.RESERVED_TOKENS


def test_build_vocab_bad_line_errors_or_counts(tmp_path):
  corpus = tmp_path / "c.jsonl"
  corpus.write_text('{"title": "a", "body": "the king"}\n{oops\n{"title": "b"}\n')
  with pytest.raises(io_utils.BadLineError, match=r"c\.jsonl:2"):
    build_vocab.build_vocab(str(corpus), str(tmp_path / "v.txt"), vocab_size=50)
  _, counters = build_vocab.build_vocab(str(corpus), str(tmp_path / "v.txt"), vocab_size=50,
                                        skip_bad_lines=True, lower_thresh=1)
  assert counters.read == 3
  assert dict(counters.skipped) == {"bad_json": 1, "missing_body": 1}


def test_bounded_word_counter_prunes_rare_words():
  c = build_vocab.BoundedWordCounter(max_unique=3)
  c.update(["a", "a", "a", "b", "b", "c"])
  assert dict(c.counts) == {"a": 3, "b": 2, "c": 1}
  c.update(["d"])  # 4 distinct > 3: words with count <= 1 are pruned
  assert dict(c.counts) == {"a": 3, "b": 2}
  assert c.num_pruned == 2 and c.prune_threshold == 2


def test_cli_flags_documented_and_main_in_process(tmp_path):
  from absl import flags
  fv = flags.FlagValues()  # private: importing the module must not touch the global FLAGS
  build_vocab.define_flags(fv)
  helptext = fv.module_help(build_vocab)
  for name in ("--input", "--output", "--vocab_size", "--[no]lower_case", "--max_unique_words"):
    assert name in helptext, name
  assert "vocab_size" not in flags.FLAGS or flags.FLAGS["vocab_size"].help != fv["vocab_size"].help
  corpus = _corpus(tmp_path, n=20)
  out = str(tmp_path / "main_vocab.txt")
  fv(["build_vocab", f"--input={corpus}", f"--output={out}", "--vocab_size=100",
      "--lower_thresh=2"])
  build_vocab.run_from_flags(fv)
  with open(build_vocab.report_path(out)) as f:  # the final report, as a file
    report = json.load(f)
  assert report["tool"] == "build_vocab" and report["read"] == 21 and report["skipped"] == 0
  assert report["written"] == len(tf.io.gfile.GFile(out).read().splitlines())
  assert tf.io.gfile.GFile(out).read().splitlines()[0] == "[PAD]"


@pytest.mark.slow
def test_cli_subprocess(tmp_path):
  corpus = _corpus(tmp_path, n=20)
  out = str(tmp_path / "cli_vocab.txt")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  res = subprocess.run(
      [sys.executable, "-m", "data_prep.build_vocab", f"--input={corpus}", f"--output={out}",
       "--vocab_size=100", "--lower_thresh=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  with open(build_vocab.report_path(out)) as f:
    report = json.load(f)
  assert report["read"] == 21 and report["written"] > 0 and report["skipped"] == 0
  assert tf.io.gfile.GFile(out).read().splitlines()[0] == "[PAD]"
