"""File utilities: atomic gfile writes, JSONL reading with file/line errors, counters, shards, uids."""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import collections
import contextlib
import hashlib
import json
import os
import sys
import uuid

import tensorflow as tf

_INT63_MASK = (1 << 63) - 1


def staging_name(path):
  """`<path>.tmp-<uuid>`: where a file or directory is written before it is renamed to `path`
  (never all digits, so step-directory scanners ignore it)."""
  return f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex}"


@contextlib.contextmanager
def atomic_path(path):
  """Yields a staging path beside `path` for a writer that opens files itself (TFRecordWriter,
  SaveV2, ...); on success the staged file is renamed over `path`, on error it is deleted."""
  parent = os.path.dirname(path)
  if parent and not tf.io.gfile.exists(parent):
    tf.io.gfile.makedirs(parent)
  tmp = staging_name(path)
  try:
    yield tmp
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


@contextlib.contextmanager
def atomic_dir(target_dir):
  """Yields a new, empty staging directory beside `target_dir`, to be filled by the caller.

  On success the staging directory becomes `target_dir`: an existing `target_dir` is first renamed
  aside and deleted after, so readers see the old or the new directory, never a partial one. On
  error the staging directory is deleted and `target_dir` is untouched. The one directory writer of
  the project (exports, `encoded/`, index snapshots, init checkpoints).
  """
  target_dir = target_dir.rstrip("/")
  staging = staging_name(target_dir)
  tf.io.gfile.makedirs(staging)
  try:
    yield staging
    old = None
    if tf.io.gfile.exists(target_dir):
      old = staging_name(target_dir) + ".old"
      tf.io.gfile.rename(target_dir, old)
    try:
      tf.io.gfile.rename(staging, target_dir)
    except BaseException:
      if old is not None:
        tf.io.gfile.rename(old, target_dir)  # put the previous directory back
      raise
    if old is not None:
      tf.io.gfile.rmtree(old)
  finally:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)


@contextlib.contextmanager
def atomic_open(path, mode="w"):
  """Context manager yielding a gfile handle on a temp file in the same directory as `path`.

  On success the temp file is renamed over `path` (overwrite); on error it is deleted and `path`
  is left untouched. `mode` is "w" (text) or "wb" (bytes).
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
  with atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, mode) as f:
      f.write(b"" if mode == "wb" else "")  # gfile creates the file on the first write only
      yield f


def atomic_write_bytes(path, data):
  """Writes `data` (bytes) to `path` atomically (temp file + rename)."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path, text):
  """Writes `text` (str) to `path` atomically as UTF-8."""
  atomic_write_bytes(path, text.encode("utf-8"))


class Counters:
  """Counts read / written / skipped-by-reason items and formats the final report.

  Usage: `c.read += 1`, `c.written += 1`, `c.skip("bad_json")`, `c.add("tokens", 12)`;
  `print(c.report())` -> "read 10, written 8, skipped 2 (bad_json: 1, empty_body: 1)".
  """

  def __init__(self, name=None):
    self.name = name
    self.read = 0
    self.written = 0
    self.skipped = collections.Counter()
    self.extra = collections.Counter()

  def skip(self, reason, n=1):
    self.skipped[reason] += n

  def add(self, key, n=1):
    self.extra[key] += n

  @property
  def num_skipped(self):
    return sum(self.skipped.values())

  def report(self):
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
    text = f"read {self.read}, written {self.written}, skipped {self.num_skipped}"
    if reasons:
      text += f" ({reasons})"
    if self.extra:
      text += "; " + ", ".join(f"{k} {v}" for k, v in sorted(self.extra.items()))
    return f"{self.name}: {text}" if self.name else text

  def as_dict(self):
    return {"read": self.read, "written": self.written, "skipped": self.num_skipped,
            "skipped_by_reason": dict(self.skipped), **dict(self.extra)}

  def print_report(self, file=None):
    print(self.report(), file=file or sys.stdout, flush=True)


class BadLineError(ValueError):
  """Invalid input line; the message names the file and 1-based line number."""


def iter_jsonl(path, skip_bad_lines=False, counter=None):
  """Streams a JSONL file (gfile), yielding (line_no, obj) with 1-based line numbers.

  Blank lines are ignored. Non-UTF-8 or invalid JSON raises BadLineError naming file and line, or,
  with skip_bad_lines=True, is counted in `counter` (reasons "bad_utf8" / "bad_json") and skipped.
  Every non-blank line counts as read in `counter`.
  """
  with tf.io.gfile.GFile(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      if counter is not None:
        counter.read += 1
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        if skip_bad_lines:
          if counter is not None:
            counter.skip("bad_utf8")
          continue
        raise BadLineError(f"{path}:{line_no}: not valid UTF-8 ({e})") from e
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        if skip_bad_lines:
          if counter is not None:
            counter.skip("bad_json")
          continue
        raise BadLineError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from e
      yield line_no, obj


def list_shards(pattern):
  """Sorted list of files matching a glob pattern (or a comma-separated list of patterns).

  Raises FileNotFoundError if nothing matches.
  """
  files = []
  for p in str(pattern).split(","):
    p = p.strip()
    if p:
      files.extend(tf.io.gfile.glob(p))
  files = sorted(set(files))
  if not files:
    raise FileNotFoundError(f"no files match {pattern!r}")
  return files


def sha1_uid(title, body):
  """The original's document uid (original §1.4): int(sha1(f"{title} <sep> {body}"), 16)."""
  return int(hashlib.sha1(f"{title} <sep> {body}".encode("utf-8")).hexdigest(), 16)


def sha1_uid63(title, body):
  """`sha1_uid` reduced to its LOW 63 bits: a non-negative value that fits tf.train.Example int64.

  Collisions between distinct documents have probability ~N^2 / 2^64 (negligible for 13M blocks).
  """
  return sha1_uid(title, body) & _INT63_MASK


def uid_to_int63(uid):
  """Low 63 bits of a full sha1 uid (same reduction as `sha1_uid63`)."""
  return int(uid) & _INT63_MASK


NULL_DOC_UID = sha1_uid("", "")
NULL_DOC_UID63 = uid_to_int63(NULL_DOC_UID)
