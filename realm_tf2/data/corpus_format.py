"""On-disk formats of the knowledge corpus and the pre-training corpus: feature specs, writers, readers.

Shared by `data_prep/` (writers) and the retrieval / pipeline code (readers). contracts §2.

Knowledge corpus directory (`build_knowledge_corpus --output_dir=D`):

  D/blocks.tfr, D/titles.tfr      uncompressed TFRecord; record i = raw UTF-8 text / title of block i
  D/examples.tfr                  uncompressed TFRecord of tf.train.Example (ORQA_EXAMPLE_FEATURES)
  D/realm/blocks-NNNNN-of-MMMMM   GZIP TFRecord shards of tf.train.Example (REALM_CORPUS_FEATURES);
                                  sorted shards then record order = block order = row of block_emb
  D/corpus_info.json              vocab_file, do_lower_case, max_block_length, num_blocks, counts

All four views are row-aligned: REALM row i == ORQA record i; `block_index` = i, `doc_uid` =
`io_utils.sha1_uid63(title, block_text)` (the REALM uid of the block as a retrieval document,
original §1.4).

Pre-training corpus (`build_pretrain_corpus --output_dir=P`): GZIP TFRecord shards
`P/pretrain-NNNNN-of-MMMMM` of tf.train.Example (PRETRAIN_FEATURES), byte offsets into the UTF-8
`text`; `doc_uid` is the uid of the knowledge block the record is (when built with
`--knowledge_corpus_dir`) or of the (title, text) document otherwise.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import json
import math
import os
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils

BLOCKS_FILE = "blocks.tfr"
TITLES_FILE = "titles.tfr"
EXAMPLES_FILE = "examples.tfr"
REALM_SUBDIR = "realm"
REALM_SHARD_PREFIX = "blocks"
CORPUS_INFO_FILE = "corpus_info.json"
PRETRAIN_SHARD_PREFIX = "pretrain"

REALM_CORPUS_FEATURES = {
    "title": tf.io.FixedLenFeature([], tf.string),
    "body": tf.io.FixedLenFeature([], tf.string),
    "title_token_ids": tf.io.VarLenFeature(tf.int64),
    "body_token_ids": tf.io.VarLenFeature(tf.int64),
    "doc_uid": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "block_index": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}
ORQA_EXAMPLE_FEATURES = {
    "title_ids": tf.io.VarLenFeature(tf.int64),
    "token_ids": tf.io.VarLenFeature(tf.int64),
    "sentence_starts": tf.io.VarLenFeature(tf.int64),
    "doc_uid": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}
PRETRAIN_FEATURES = {
    "title": tf.io.FixedLenFeature([], tf.string),
    "text": tf.io.FixedLenFeature([], tf.string),
    "sentence_byte_start": tf.io.VarLenFeature(tf.int64),
    "sentence_byte_limit": tf.io.VarLenFeature(tf.int64),
    "span_byte_start": tf.io.VarLenFeature(tf.int64),
    "span_byte_limit": tf.io.VarLenFeature(tf.int64),
    "doc_uid": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _utf8(s) -> bytes:
  return s if isinstance(s, bytes) else s.encode("utf-8")


def realm_example(title, body, title_ids, body_ids, doc_uid: int, block_index: int) -> tf.train.Example:
  """REALM retrieval-corpus record (original §1.8, plus `doc_uid` and `block_index`)."""
  return tf.train.Example(features=tf.train.Features(feature={
      "title": _bytes([_utf8(title)]),
      "body": _bytes([_utf8(body)]),
      "title_token_ids": _ints(title_ids),
      "body_token_ids": _ints(body_ids),
      "doc_uid": _ints([doc_uid]),
      "block_index": _ints([block_index]),
  }))


def orqa_example(title_ids, token_ids, sentence_starts, doc_uid: int) -> tf.train.Example:
  """ORQA `examples.tfr` record (original §3.1, plus `doc_uid`)."""
  return tf.train.Example(features=tf.train.Features(feature={
      "title_ids": _ints(title_ids),
      "token_ids": _ints(token_ids),
      "sentence_starts": _ints(sentence_starts),
      "doc_uid": _ints([doc_uid]),
  }))


def pretrain_example(title, text, sentence_spans: Sequence[Tuple[int, int]],
                     salient_spans: Sequence[Tuple[int, int]], doc_uid: int) -> tf.train.Example:
  """Pre-training record (original §1.3); spans: UTF-8 byte offsets [start, limit) into `text`."""
  return tf.train.Example(features=tf.train.Features(feature={
      "title": _bytes([_utf8(title)]),
      "text": _bytes([_utf8(text)]),
      "sentence_byte_start": _ints([s for s, _ in sentence_spans]),
      "sentence_byte_limit": _ints([e for _, e in sentence_spans]),
      "span_byte_start": _ints([s for s, _ in salient_spans]),
      "span_byte_limit": _ints([e for _, e in salient_spans]),
      "doc_uid": _ints([doc_uid]),
  }))


def _parse(serialized, spec):
  """tf.io.parse_single_example with VarLen features densified (works in tf.data)."""
  parsed = tf.io.parse_single_example(serialized, spec)
  return {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
          for k, v in parsed.items()}


def parse_realm_example(serialized) -> Dict[str, tf.Tensor]:
  """Parses one REALM corpus record: title/body string scalars, *_token_ids int64 [n], uid, index."""
  return _parse(serialized, REALM_CORPUS_FEATURES)


def parse_orqa_example(serialized) -> Dict[str, tf.Tensor]:
  """Parses one `examples.tfr` record: title_ids, token_ids, sentence_starts int64 [n], doc_uid."""
  return _parse(serialized, ORQA_EXAMPLE_FEATURES)


def parse_pretrain_example(serialized) -> Dict[str, tf.Tensor]:
  """Parses one pre-training record: title/text strings, byte-offset vectors int64 [n], doc_uid."""
  return _parse(serialized, PRETRAIN_FEATURES)


def _example_to_py(serialized: bytes, spec) -> dict:
  """Host-side parse of a tf.train.Example into Python values (bytes / np.int64 arrays / int)."""
  ex = tf.train.Example.FromString(serialized)
  out = {}
  for key, feat_spec in spec.items():
    f = ex.features.feature.get(key)
    if isinstance(feat_spec, tf.io.VarLenFeature):
      out[key] = np.asarray(f.int64_list.value if f is not None else [], np.int64)
    elif feat_spec.dtype == tf.string:
      out[key] = f.bytes_list.value[0] if f is not None else b""
    else:
      out[key] = int(f.int64_list.value[0]) if f is not None else feat_spec.default_value
  return out


def shard_path(prefix: str, index: int, num_shards: int) -> str:
  """`<prefix>-NNNNN-of-MMMMM` (original §1.8)."""
  return "%s-%05d-of-%05d" % (prefix, index, num_shards)


def realm_corpus_pattern(corpus_dir: str) -> str:
  """Glob of the REALM retrieval-corpus shards in a knowledge-corpus directory."""
  return os.path.join(corpus_dir, REALM_SUBDIR, REALM_SHARD_PREFIX + "-*-of-*")


def pretrain_corpus_pattern(corpus_dir: str) -> str:
  """Glob of the pre-training shards in a pre-training corpus directory."""
  return os.path.join(corpus_dir, PRETRAIN_SHARD_PREFIX + "-*-of-*")


def iter_records(paths: Sequence[str], compression: str = "") -> Iterator[bytes]:
  """Serialized records of `paths` in order (host side, streaming)."""
  for path in paths:
    ds = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=8 << 20)
    for rec in ds.as_numpy_iterator():
      yield rec


def iter_realm_corpus(pattern: str) -> Iterator[dict]:
  """Python dicts of the REALM corpus in row order (sorted shards, then record order)."""
  for rec in iter_records(io_utils.list_shards(pattern), "GZIP"):
    yield _example_to_py(rec, REALM_CORPUS_FEATURES)


def iter_pretrain_corpus(pattern: str) -> Iterator[dict]:
  """Python dicts of the pre-training corpus in order."""
  for rec in iter_records(io_utils.list_shards(pattern), "GZIP"):
    yield _example_to_py(rec, PRETRAIN_FEATURES)


def iter_orqa_blocks(corpus_dir: str) -> Iterator[Tuple[bytes, bytes, dict]]:
  """(block_text, title, examples.tfr dict) triples of an ORQA block directory, in order."""
  join = os.path.join
  blocks = iter_records([join(corpus_dir, BLOCKS_FILE)])
  titles = iter_records([join(corpus_dir, TITLES_FILE)])
  examples = iter_records([join(corpus_dir, EXAMPLES_FILE)])
  for b, t, e in zip(blocks, titles, examples):
    yield b, t, _example_to_py(e, ORQA_EXAMPLE_FEATURES)


def read_corpus_info(corpus_dir: str) -> dict:
  """The `corpus_info.json` written by build_knowledge_corpus."""
  path = os.path.join(corpus_dir, CORPUS_INFO_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: is {corpus_dir} a build_knowledge_corpus output?")
  with tf.io.gfile.GFile(path, "r") as f:
    return json.load(f)


class AtomicRecordWriter:
  """A TFRecordWriter on `<path>.tmp-<uuid>`, renamed to `path` by `commit()` (deleted by `abort`)."""

  def __init__(self, path: str, compression: str = ""):
    parent = os.path.dirname(path)
    if parent:
      tf.io.gfile.makedirs(parent)
    self.path = path
    self.tmp = io_utils.staging_name(path)
    self._w = tf.io.TFRecordWriter(self.tmp, options=tf.io.TFRecordOptions(compression_type=compression))
    self.count = 0
    self._closed = False

  def write(self, record: bytes):
    self._w.write(record)
    self.count += 1

  def close(self):
    """Flushes and closes the temp file (it can then be read back before `commit`)."""
    if not self._closed:
      self._w.close()
      self._closed = True

  def commit(self):
    self.close()
    tf.io.gfile.rename(self.tmp, self.path, overwrite=True)

  def abort(self):
    self.close()
    if tf.io.gfile.exists(self.tmp):
      tf.io.gfile.remove(self.tmp)


def write_contiguous_shards(records: Iterable[bytes], total: int, prefix: str, num_shards: int,
                            compression: str = "GZIP") -> List[str]:
  """Writes `total` records into `num_shards` shards of contiguous chunks of ceil(total/num_shards).

  This is the original's layout (original §1.8). Streaming: one open shard at a time. Each shard is
  written atomically; stale shards of the same prefix with another shard count are removed first so
  the glob `<prefix>-*-of-*` only sees this corpus. Returns the shard paths.
  """
  if num_shards < 1:
    raise ValueError("num_shards must be >= 1")
  for old in tf.io.gfile.glob(prefix + "-*-of-*"):
    tf.io.gfile.remove(old)
  per = max(1, math.ceil(total / num_shards))
  paths = [shard_path(prefix, i, num_shards) for i in range(num_shards)]
  it = iter(records)
  written = 0
  for i, path in enumerate(paths):
    w = AtomicRecordWriter(path, compression)
    try:
      n = min(per, max(0, total - i * per))
      for _ in range(n):
        w.write(next(it))
      written += n
    except BaseException:
      w.abort()
      raise
    w.commit()
  if written != total:
    raise RuntimeError(f"wrote {written} records, expected {total}")
  return paths
