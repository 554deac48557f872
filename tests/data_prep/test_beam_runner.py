"""data_prep under Apache Beam (DirectRunner): the same outputs, byte for byte, as the local build,
for both corpus builders, and a bad input line gives the local build's clear error.

Marked `beam`: it needs the `beam` extra, which pins protobuf < 7, so CI runs it in its own venv
(scripts/run_beam_tests.sh); in a venv without Beam it is deselected (tests/conftest.py).
"""
import json
import os

import pytest
import tensorflow as tf

from data_prep import build_knowledge_corpus as bkc
from data_prep import build_pretrain_corpus as bpc
from realm_tf2 import io_utils

pytestmark = pytest.mark.beam

DOCS = [
    [{"title": "Paris", "body": "The king was born in Paris. He wrote a book in 1875."},
     {"title": "List of kings", "body": "Filtered by title."},
     {"title": "London", "body": "Mary was the queen. The city was founded in June 1900."}],
    [{"title": "John", "body": "John and Mary and the king and the queen and the city and the river "
                               "and London and Paris were born in 1999."},
     {"title": "Empty", "body": ""}],
    [{"title": "Mary", "body": "Mary wrote a book. The book was written in 1875 in London."}],
]


def _inputs(tmp_path):
  paths = []
  for i, rows in enumerate(DOCS):
    path = tmp_path / "in" / f"docs-{i}.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths.append(str(path))
  return ",".join(paths)


def _tree(root):
  """{relative path: bytes} of every output file (GZIP shards decompressed record by record)."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      if name == "corpus_info.json":
        info = json.load(open(path))
        info.pop("vocab_file", None)
        info.pop("realm_corpus_pattern", None)  # names the output dir
        out[rel] = json.dumps(info, sort_keys=True).encode()
      elif "-of-" in name:
        out[rel] = b"|".join(r.numpy() for r in tf.data.TFRecordDataset(path, "GZIP"))
      else:
        out[rel] = open(path, "rb").read()
  return out


def test_knowledge_and_pretrain_corpus_identical_under_beam(tmp_path, tiny_vocab_file):
  inputs = _inputs(tmp_path)
  kw = dict(num_shards=2, max_block_length=20, num_workers=1, chunk_size=1, verbose=False)
  local = bkc.build_knowledge_corpus(inputs, tiny_vocab_file, str(tmp_path / "k_local"), **kw)
  beam = bkc.build_knowledge_corpus(inputs, tiny_vocab_file, str(tmp_path / "k_beam"), beam=True,
                                    runner="DirectRunner", **kw)
  assert local.written == beam.written > 0
  assert local.as_dict() == beam.as_dict()  # same counted skips (title filter, empty body)
  assert beam.skipped["empty_body"] == 1 and sum(beam.skipped.values()) >= 2
  assert _tree(tmp_path / "k_local") == _tree(tmp_path / "k_beam")
  assert not os.path.exists(tmp_path / "k_beam" / ".beam_tmp")

  pkw = dict(num_shards=2, knowledge_corpus_dir=str(tmp_path / "k_local"), num_workers=1,
             chunk_size=2, verbose=False)
  p_local = bpc.build_pretrain_corpus(inputs, str(tmp_path / "p_local"), **pkw)
  p_beam = bpc.build_pretrain_corpus(inputs, str(tmp_path / "p_beam"), beam=True, **pkw)
  assert p_local.written == p_beam.written > 0 and not p_beam.extra.get("uid_mismatch")
  assert _tree(tmp_path / "p_local") == _tree(tmp_path / "p_beam")


def test_bad_line_under_beam_names_file_and_line(tmp_path, tiny_vocab_file):
  inputs = _inputs(tmp_path)
  bad = tmp_path / "in" / "docs-1.jsonl"
  bad.write_text(bad.read_text() + "{not json\n")
  with pytest.raises(io_utils.BadLineError, match=r"docs-1\.jsonl:3"):
    bkc.build_knowledge_corpus(inputs, tiny_vocab_file, str(tmp_path / "k"), beam=True,
                               verbose=False)
  counters = bkc.build_knowledge_corpus(inputs, tiny_vocab_file, str(tmp_path / "k2"), beam=True,
                                        skip_bad_lines=True, verbose=False)
  assert counters.skipped["bad_json"] == 1


def test_cli_beam_flag(tmp_path, tiny_vocab_file):
  """The README's `--beam` flag on the CLI (DirectRunner): same blocks as the library's local build."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  inputs = _inputs(tmp_path)
  bkc.build_knowledge_corpus(inputs, tiny_vocab_file, str(tmp_path / "local"), max_block_length=20,
                             verbose=False)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep.build_knowledge_corpus", f"--input={inputs}",
       f"--vocab_file={tiny_vocab_file}", f"--output_dir={tmp_path / 'cli'}", "--max_block_length=20",
       "--beam", "--runner=DirectRunner"], cwd=repo, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / "cli" / "report.json"))["written"] > 0
  assert (tmp_path / "cli" / "report.json").read_bytes() == (tmp_path / "local" /
                                                               "report.json").read_bytes()
  for name in ("blocks.tfr", "titles.tfr", "examples.tfr"):
    assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
