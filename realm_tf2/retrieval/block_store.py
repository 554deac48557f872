"""`BlockStore`: the retrieval corpus as compact NumPy arrays (token ids, uids, optional raw text).

13M blocks as Python objects would cost tens of GB; here every field is one flat array plus int64
offsets (CSR layout), so the store is ~4 bytes per token + 8 bytes per block and field.

Row order = sorted shards, then record order (contracts §2) — the row order of `block_emb`.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2.data import corpus_format

# Batch-parse spec of the retrieval corpus (`corpus_format.REALM_CORPUS_FEATURES`), with the token
# lists as RaggedFeature so a whole batch parses in one op without sparse->dense padding.
_PARSE_SPEC = {
    "title": corpus_format.REALM_CORPUS_FEATURES["title"],
    "body": corpus_format.REALM_CORPUS_FEATURES["body"],
    "doc_uid": corpus_format.REALM_CORPUS_FEATURES["doc_uid"],
    "title_token_ids": tf.io.RaggedFeature(tf.int64),
    "body_token_ids": tf.io.RaggedFeature(tf.int64),
}


def _flat(lists):
  """list of 1-D arrays -> (flat int32 [T], offsets int64 [N+1])."""
  lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
  offsets = np.zeros(len(lists) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  flat = (np.concatenate(lists).astype(np.int32) if lists and offsets[-1] > 0
          else np.zeros([0], np.int32))
  return flat, offsets


class BlockStore:
  """The retrieval corpus in flat arrays.

  Attributes:
    title_ids: int32 [T_title] all title token ids, concatenated; `title_offsets` int64 [N+1].
    body_ids: int32 [T_body]; `body_offsets` int64 [N+1].
    uids: int64 [N] block uids (low 63 bits of the original's sha1 uid, `io_utils.sha1_uid63`).
    texts: optional (title_bytes, title_offsets, body_bytes, body_offsets) UTF-8 buffers, or None.
    num_blocks: N.
  """

  def __init__(self, title_ids, title_offsets, body_ids, body_offsets, uids, texts=None,
               source=None):
    self.title_ids = np.asarray(title_ids, np.int32)
    self.title_offsets = np.asarray(title_offsets, np.int64)
    self.body_ids = np.asarray(body_ids, np.int32)
    self.body_offsets = np.asarray(body_offsets, np.int64)
    self.uids = np.asarray(uids, np.int64)
    self.texts = texts
    self.source = source
    n = len(self.uids)
    for name, off, flat in (("title", self.title_offsets, self.title_ids),
                            ("body", self.body_offsets, self.body_ids)):
      if len(off) != n + 1 or off[0] != 0 or off[-1] != len(flat) or np.any(np.diff(off) < 0):
        raise ValueError(f"BlockStore({source}): inconsistent {name} offsets for {n} blocks")

  @property
  def num_blocks(self):
    return len(self.uids)

  # --------------------------------------------------------------------------- constructors

  @classmethod
  def from_arrays(cls, title_ids, body_ids, uids=None, titles=None, bodies=None):
    """From per-block token lists (tests, small corpora).

    Args:
      title_ids, body_ids: sequences of N int sequences.
      uids: optional int [N]; default `sha1_uid63(title, body)` when texts are given, else 0..N-1.
      titles, bodies: optional lists of N str.
    """
    if len(title_ids) != len(body_ids):
      raise ValueError(f"{len(title_ids)} titles but {len(body_ids)} bodies")
    t_flat, t_off = _flat([np.asarray(t, np.int64).reshape(-1) for t in title_ids])
    b_flat, b_off = _flat([np.asarray(b, np.int64).reshape(-1) for b in body_ids])
    texts = None
    if titles is not None and bodies is not None:
      texts = _pack_texts([t.encode("utf-8") for t in titles], [b.encode("utf-8") for b in bodies])
      if uids is None:
        uids = [io_utils.sha1_uid63(t, b) for t, b in zip(titles, bodies)]
    if uids is None:
      uids = np.arange(len(title_ids), dtype=np.int64)
    return cls(t_flat, t_off, b_flat, b_off, uids, texts, source="arrays")

  @classmethod
  def from_retrieval_corpus(cls, pattern, keep_text=False, batch_size=4096):
    """Loads GZIP TFRecord shards of the REALM retrieval corpus (contracts §2).

    Args:
      pattern: glob (or comma-separated globs) of the shards; sorted by name.
      keep_text: Also keep the raw UTF-8 title/body (for display; the uid needs them anyway and
        is always computed).
      batch_size: Records parsed per tf.data batch.
    Raises:
      FileNotFoundError if nothing matches; ValueError naming the shard on a bad record.
    """
    files = io_utils.list_shards(pattern)
    titles_tok, bodies_tok, uids = [], [], []
    t_bytes, b_bytes = [], []
    features = _PARSE_SPEC
    for path in files:
      ds = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(batch_size)
      ds = ds.map(lambda s: tf.io.parse_example(s, features))
      record = 0
      try:
        for batch in ds.as_numpy_iterator():
          t_tok, b_tok = batch["title_token_ids"], batch["body_token_ids"]
          for i in range(len(batch["title"])):
            titles_tok.append(t_tok[i])
            bodies_tok.append(b_tok[i])
          for t, b, u in zip(batch["title"], batch["body"], batch["doc_uid"]):
            # `doc_uid` is written by build_knowledge_corpus; recompute it for corpora without it.
            uids.append(int(u) if u >= 0 else io_utils.sha1_uid63(t.decode("utf-8"), b.decode("utf-8")))
            if keep_text:
              t_bytes.append(t)
              b_bytes.append(b)
          record += len(batch["title"])
      except (tf.errors.OpError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: bad retrieval-corpus record near record {record}: {e}") from e
    t_flat, t_off = _flat([np.asarray(x) for x in titles_tok])
    b_flat, b_off = _flat([np.asarray(x) for x in bodies_tok])
    texts = _pack_texts(t_bytes, b_bytes) if keep_text else None
    return cls(t_flat, t_off, b_flat, b_off, np.asarray(uids, np.int64), texts, source=pattern)

  # --------------------------------------------------------------------------- accessors

  def title(self, row):
    """int32 [n] title ids of one block."""
    return self.title_ids[self.title_offsets[row]:self.title_offsets[row + 1]]

  def body(self, row):
    """int32 [n] body ids of one block."""
    return self.body_ids[self.body_offsets[row]:self.body_offsets[row + 1]]

  def title_lengths(self):
    return np.diff(self.title_offsets)

  def body_lengths(self):
    return np.diff(self.body_offsets)

  def get_candidate_ids(self, rows):
    """uids int64 [...] of the blocks at `rows` (int [...]); raises IndexError on bad rows."""
    rows = np.asarray(rows)
    if rows.size and (rows.min() < 0 or rows.max() >= self.num_blocks):
      raise IndexError(f"row ids must be in [0, {self.num_blocks}), got min {rows.min()} "
                       f"max {rows.max()}")
    return self.uids[rows]

  def text(self, row):
    """(title str, body str) of one block; needs `keep_text=True`."""
    if self.texts is None:
      raise ValueError("BlockStore was loaded without raw texts (keep_text=False)")
    tb, to, bb, bo = self.texts
    return (tb[to[row]:to[row + 1]].tobytes().decode("utf-8"),
            bb[bo[row]:bo[row + 1]].tobytes().decode("utf-8"))

  def ragged(self):
    """(titles, bodies) as tf.RaggedTensor int32 [N, (n)] views of the flat arrays."""
    return (tf.RaggedTensor.from_row_splits(self.title_ids, self.title_offsets),
            tf.RaggedTensor.from_row_splits(self.body_ids, self.body_offsets))

  @property
  def nbytes(self):
    """Bytes held by all arrays (token ids, offsets, uids, texts)."""
    arrays = [self.title_ids, self.title_offsets, self.body_ids, self.body_offsets, self.uids]
    if self.texts is not None:
      arrays.extend(self.texts)
    return int(sum(a.nbytes for a in arrays))


def _pack_texts(titles, bodies):
  """lists of bytes -> (title uint8 [..], offsets int64 [N+1], body uint8 [..], offsets)."""
  def pack(items):
    lengths = np.fromiter((len(x) for x in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(items), dtype=np.uint8), offsets
  tb, to = pack(titles)
  bb, bo = pack(bodies)
  return tb, to, bb, bo
