"""Tests of realm_tf2.io_utils."""
import hashlib

import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import io_utils


def _listdir(d):
  return sorted(tf.io.gfile.listdir(str(d)))


def test_atomic_writes(tmp_path):
  p = str(tmp_path / "sub" / "a.txt")
  io_utils.atomic_write_text(p, "h\u00e9llo\n")
  assert tf.io.gfile.GFile(p, "rb").read() == "h\u00e9llo\n".encode("utf-8")
  io_utils.atomic_write_bytes(p, b"\x00\x01")
  assert tf.io.gfile.GFile(p, "rb").read() == b"\x00\x01"
  assert _listdir(tmp_path / "sub") == ["a.txt"]  # no temp files left


def test_atomic_open_failure_keeps_old_file(tmp_path):
  p = str(tmp_path / "b.txt")
  io_utils.atomic_write_text(p, "old")
  with pytest.raises(RuntimeError):
    with io_utils.atomic_open(p, "w") as f:
      f.write("new partial")
      raise RuntimeError("boom")
  assert tf.io.gfile.GFile(p).read() == "old"
  assert _listdir(tmp_path) == ["b.txt"]


def _write(path, data):
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def test_iter_jsonl_errors_name_file_and_line(tmp_path):
  p = _write(tmp_path / "x.jsonl", b'{"a": 1}\n\n{"a": 2}\n{bad\n')
  gen = io_utils.iter_jsonl(p)
  assert next(gen) == (1, {"a": 1})
  assert next(gen) == (3, {"a": 2})
  with pytest.raises(io_utils.BadLineError, match=r"x\.jsonl:4: invalid JSON"):
    next(gen)
  p2 = _write(tmp_path / "y.jsonl", b'{"a": 1}\n"\xff\xfe"\n')
  with pytest.raises(io_utils.BadLineError, match=r"y\.jsonl:2: not valid UTF-8"):
    list(io_utils.iter_jsonl(p2))


def test_iter_jsonl_counted_skips(tmp_path):
  p = _write(tmp_path / "z.jsonl", b'{"a": 1}\n{bad\n"\xff"\n[1]\n')
  c = io_utils.Counters("prep")
  got = list(io_utils.iter_jsonl(p, skip_bad_lines=True, counter=c))
  assert got == [(1, {"a": 1}), (4, [1])]
  c.written = 1
  c.skip("not_an_object")
  assert c.read == 4
  assert c.report() == ("prep: read 4, written 1, skipped 3 "
                        "(bad_json: 1, bad_utf8: 1, not_an_object: 1)")
  assert c.as_dict()["skipped_by_reason"] == {"bad_json": 1, "bad_utf8": 1, "not_an_object": 1}


def test_counters_report_plain():
  c = io_utils.Counters()
  c.read, c.written = 10, 10
  assert c.report() == "read 10, written 10, skipped 0"
  c.add("tokens", 7)
  assert c.report() == "read 10, written 10, skipped 0; tokens 7"


def test_list_shards_sorted(tmp_path):
  for n in ["c-00001-of-00002", "c-00000-of-00002", "other"]:
    _write(tmp_path / n, b"")
  got = io_utils.list_shards(str(tmp_path / "c-*"))
  assert [p.split("/")[-1] for p in got] == ["c-00000-of-00002", "c-00001-of-00002"]
  both = io_utils.list_shards(f"{tmp_path}/other,{tmp_path}/c-00001*")
  assert [p.split("/")[-1] for p in both] == ["c-00001-of-00002", "other"]
  with pytest.raises(FileNotFoundError, match="no files match"):
    io_utils.list_shards(str(tmp_path / "nothing*"))


def test_sha1_uids():
  # sha1("Paris <sep> Paris is a city.") = 627d9d96...fbb7d883 (checked with `sha1sum`).
  full = io_utils.sha1_uid("Paris", "Paris is a city.")
  assert full == 0x627d9d966195370ef41ed98c5e5d6388fbb7d883
  assert io_utils.sha1_uid63("Paris", "Paris is a city.") == 0x5e5d6388fbb7d883 & ((1 << 63) - 1)
  assert io_utils.sha1_uid63("Paris", "Paris is a city.") == 6799700452389148803
  assert io_utils.NULL_DOC_UID == int(hashlib.sha1(b" <sep> ").hexdigest(), 16)
  assert 0 <= io_utils.NULL_DOC_UID63 < 2 ** 63
  assert io_utils.uid_to_int63(full) == io_utils.sha1_uid63("Paris", "Paris is a city.")


def test_atomic_open_with_nothing_written_creates_an_empty_file(tmp_path):
  path = str(tmp_path / "sub" / "empty.jsonl")
  with io_utils.atomic_open(path):
    pass
  assert open(path).read() == ""
  with io_utils.atomic_open(path, "wb"):
    pass
  assert open(path, "rb").read() == b""
