"""REALM retrieval inside the train step (`task.retrieval=device`): MIPS over a block index held
on the accelerators, sharded over the replicas, and static-shape packing of the candidate and joint
inputs.

The host path (`data/pretrain_pipeline.RetrievalFeaturizer`) embeds the masked queries with a
snapshot embedder, searches the index, drops the record's own document, puts the null document first
and packs `candidate_*` [K, C] / `joint_*` [K, J] on the CPU. Here the same happens in the replica
function of the train step, on query embeddings of the LIVE query tower:

  query_emb [b, D] (stop-gradient), source_uid [b]
  -> all-gather over the R replicas: [R*b, D], [R*b]      (each replica serves the global batch)
  -> local top-m over this replica's shard of block_emb [S, D]    (m = K + extra_candidates)
  -> all-gather the local winners [R*b, R*m] -> global top-m       (identical on every replica)
  -> drop the source uid and repeated uids, keep the first K-1     (`select_candidates`)
  -> title/body ids of the kept rows from their owners (zeros elsewhere), all-reduce SUM
  -> this replica's slice [b, K-1, ...]; the null document at slot 0
  -> `[CLS] title [SEP] body [SEP]` [b, K, C] and `[CLS] query [SEP] body [SEP]` [b, K, J]
     (`pack_pair_dense`; the reader input has NO title, original §1.2)

Everything is int32 / float32 (bfloat16 `block_emb` optional) with static shapes, so under
TPUStrategy retrieval + forward + backward compile into one XLA program; with one replica the
whole function compiles with `jit_compile=True` on CPU too (tested). MirroredStrategy's `all_gather`
needs a `merge_call` and TF compiles cross-replica collectives only as NCCL (GPU) ops, so with R > 1
on CPUs this function must run outside `jit_compile=True` functions.

Semantics versus the host path, for the same query embedding and index: the host searches the top K
(K = num_candidates: K-1 kept + 1 spare for the trivial retrieval), SKIPS an example whose K results
repeat a uid or hold fewer than K-1 non-source blocks, else keeps the first K-1 non-source rows. A
device step cannot skip. It searches m = K + extra_candidates, masks the source uid and every uid
already seen in an earlier slot, and keeps the first K-1 survivors. Wherever the host keeps an
example this gives the same rows in the same order (its K-1 survivors all lie in the first K slots).
An example that still lacks survivors gets its empty slots packed as null documents with
`candidate_valid` 0 and `example_valid` 0; the task gives it loss weight 0 (the host skips it).

uids: the host compares 63-bit sha1 uids, which a tf.data graph cannot compute. Device mode uses
`graph_doc_uid`: SipHash (`tf.strings.to_hash_bucket_strong`) of the same bytes
`title + " <sep> " + text` into [0, 2^31 - 1), int32. The pipeline computes it per record
in-graph; `graph_uids_of_block_store` / `graph_uids_of_retrieval_corpus` compute it per block with
the same op. Collisions: a retrieved block falsely matches the source with probability
1 / (2^31 - 1) = 4.7e-10 per slot (~0.5 times in 10^8 examples x 10 slots), and of 13.35M blocks
~4e4 pairs share a uid, which matters only when both blocks of a pair are retrieved for one query.
Either event drops a valid candidate in favour of the next-ranked one, as removing the real source
does: the candidates stay distinct non-source documents, so this is harmless.

Sharding: replica r owns rows [r*S, (r+1)*S), S = ceil(N / R) rounded up to whole `rows_per_chunk`;
rows >= N are padding (score never wins, uid -1, no tokens). The per-replica arrays are
non-trainable `tf.Variable`s with `synchronization=ON_READ, aggregation=NONE`, created under the
strategy scope: per-replica variables in both MirroredStrategy and TPUStrategy (the mechanism of
Keras metrics; reads and assigns inside `strategy.run` touch the replica's own copy, and TPUStrategy
feeds each replica its own handle). A MirroredVariable holds one value everywhere (a full copy per
replica). They are filled by `strategy.run(assign)` with values from
`strategy.experimental_distribute_values_from_function`, keyed by the global replica id, so each
host of a pod loads only its local replicas' shards.
Per-replica constants or step arguments would also work, but a refresh would then force a retrace
or change the step's inputs. The store is a plain Python object, so a model holding it does not
checkpoint the index (as ORQA's `_Untracked`).
"""
import math
from typing import Dict, Optional

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from absl import logging
import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2.retrieval import index as index_lib

# SipHash key of `graph_doc_uid` (any fixed value; the pipeline and the store must agree).
UID_HASH_KEY = (0x5245414C4D2D7466, 0x322D646F632D7569)
UID_BUCKETS = 2**31 - 1
PAD_UID = -1  # uid of padding rows and of "no source"; graph uids are >= 0
# Score of padding rows. Finite on purpose: TPUStrategy's all_gather multiplies by a one-hot replica
# mask, and -inf * 0 is NaN.
_NEVER_WINS = float(np.finfo(np.float32).min)
_HOST_ROWS_PER_COPY = 65536  # rows densified per NumPy step when loading token arrays


# ----------------------------------------------------------------------------- uids


def graph_doc_uid(title, text):
  """int32 uid of a document from its raw bytes, computable in a tf.data graph.

  Hashes the bytes the host uid hashes (`title + " <sep> " + text`, original §1.4) with SipHash-2-4
  into [0, 2^31 - 1).

  Args:
    title, text: tf.string tensors of the same shape (or broadcastable scalars).
  Returns:
    int32 tensor of that shape.
  """
  joined = tf.strings.join([title, text], separator=" <sep> ")
  return tf.cast(tf.strings.to_hash_bucket_strong(joined, UID_BUCKETS, key=list(UID_HASH_KEY)),
                 tf.int32)


def graph_uids_of_block_store(block_store, batch_size: int = _HOST_ROWS_PER_COPY) -> np.ndarray:
  """int32 [N] `graph_doc_uid` of every block of a `BlockStore` that kept its raw texts.

  Raises:
    ValueError if the store was loaded without texts (`from_retrieval_corpus(keep_text=False)`); use
    `graph_uids_of_retrieval_corpus(pattern)` then, which streams the shards instead.
  """
  if block_store.texts is None:
    raise ValueError(f"BlockStore({block_store.source}) has no raw texts: device-mode uids hash "
                     "the title/body bytes; load it with keep_text=True or pass "
                     "graph_uids_of_retrieval_corpus(<retrieval corpus glob>)")
  tb, to, bb, bo = block_store.texts
  n = block_store.num_blocks
  out = np.zeros([n], np.int32)
  fn = tf.function(graph_doc_uid)
  for start in range(0, n, batch_size):
    rows = range(start, min(n, start + batch_size))
    titles = tf.constant([tb[to[i]:to[i + 1]].tobytes() for i in rows], tf.string)
    bodies = tf.constant([bb[bo[i]:bo[i + 1]].tobytes() for i in rows], tf.string)
    out[rows.start:rows.stop] = fn(titles, bodies).numpy()
  return out


def graph_uids_of_retrieval_corpus(pattern: str, batch_size: int = 4096) -> np.ndarray:
  """int32 [N] `graph_doc_uid` of every record of the REALM retrieval corpus (BlockStore row order).

  Streams the GZIP shards (sorted, as `BlockStore.from_retrieval_corpus`) without keeping any text.

  Raises:
    FileNotFoundError if nothing matches; ValueError naming the shard on a bad record.
  """
  spec = {"title": tf.io.FixedLenFeature([], tf.string),
          "body": tf.io.FixedLenFeature([], tf.string)}
  parts = []
  for path in io_utils.list_shards(pattern):
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(batch_size)
    ds = ds.map(lambda s: tf.io.parse_example(s, spec))
    ds = ds.map(lambda r: graph_doc_uid(r["title"], r["body"]))
    try:
      parts.extend(ds.as_numpy_iterator())
    except tf.errors.OpError as e:
      raise ValueError(f"{path}: bad retrieval-corpus record: {e}") from e
  return (np.concatenate(parts).astype(np.int32) if parts else np.zeros([0], np.int32))


# ----------------------------------------------------------------------------- packing


def _at_least_one_column(ids):
  """Pads a zero-width [..., 0] id array to [..., 1] so clipped gathers stay in range."""
  if ids.shape[-1] == 0:
    return tf.pad(ids, [[0, 0]] * (ids.shape.rank - 1) + [[0, 1]])
  return ids


def pack_pair_dense(first_ids, first_len, second_ids, second_len, seq_len: int, cls_id: int,
                    sep_id: int) -> Dict[str, tf.Tensor]:
  """`[CLS] first [SEP] second [SEP] 0...` from dense id arrays; static shapes, XLA/TPU-friendly.

  Truncation equals `tokenization.bert_pack([first, second], seq_len)`: budget seq_len - 3, filled
  greedily (as much of `first` as fits, then of `second`). Segment 0 on [CLS], first and the first
  [SEP]; 1 on second and the last [SEP]; mask 1 on real tokens. Also ORQA's reader layout
  (`orqa_model.pack_reader_inputs`: `first` = the question, never cut there, broadcast over blocks).
  Written by hand because `bert_pack` works on ragged tensors, which XLA cannot compile.

  Args:
    first_ids: int32 [..., L1] (positions >= first_len are ignored); first_len int32 [...].
    second_ids: int32 [..., L2]; second_len int32 [...]. Leading dims of the two pairs broadcast.
    seq_len: Output length T >= 3.
    cls_id, sep_id: Special ids.
  Returns:
    input_ids, input_mask, segment_ids, second_mask (1 on kept `second` tokens): int32 [..., T];
    first_kept, second_kept (tokens kept) and second_start (position of second's first token):
    int32 [...], all over the broadcast leading shape.
  """
  budget = seq_len - 3
  if budget < 0:
    raise ValueError(f"seq_len={seq_len} too short for two segments")
  first_ids = _at_least_one_column(tf.cast(first_ids, tf.int32))
  second_ids = _at_least_one_column(tf.cast(second_ids, tf.int32))
  first_len = tf.cast(first_len, tf.int32)
  second_len = tf.cast(second_len, tf.int32)
  a_keep = tf.clip_by_value(first_len, 0, budget) + tf.zeros_like(second_len)  # [...] broadcast
  b_keep = tf.clip_by_value(second_len, 0, budget - a_keep)  # [...]
  pos = tf.range(seq_len, dtype=tf.int32)  # [T]
  a_kept = a_keep[..., tf.newaxis]  # [..., 1]
  b_kept = b_keep[..., tf.newaxis]  # [..., 1]
  b_start = a_kept + 2  # [..., 1]
  rel_b = pos - b_start  # [..., T]: position inside `second`
  # `first` sits at positions 1..a_keep whatever the example: one static gather on the last axis.
  a_tok = tf.gather(first_ids, tf.clip_by_value(pos - 1, 0, first_ids.shape[-1] - 1),
                    axis=-1)  # [..., T] over first's leading dims
  second_full = second_ids + tf.zeros_like(b_keep)[..., tf.newaxis]  # [..., L2] broadcast
  b_tok = tf.gather(second_full, tf.clip_by_value(rel_b, 0, second_ids.shape[-1] - 1),
                    batch_dims=b_keep.shape.rank)  # [..., T]
  in_a = (pos >= 1) & (pos <= a_kept)  # [..., T]
  in_b = (rel_b >= 0) & (rel_b < b_kept)  # [..., T]
  is_sep = (pos == a_kept + 1) | (rel_b == b_kept)  # [..., T]
  ids = tf.where(pos == 0, cls_id, 0)  # [T]
  ids = tf.where(in_a, a_tok, ids)
  ids = tf.where(in_b, b_tok, ids)
  ids = tf.where(is_sep, sep_id, ids)  # [..., T]
  mask = pos < a_kept + b_kept + 3  # [..., T]
  segment = (rel_b >= 0) & mask  # [..., T]
  return {"input_ids": tf.cast(ids, tf.int32),
          "input_mask": tf.cast(mask, tf.int32),
          "segment_ids": tf.cast(segment, tf.int32),
          "second_mask": tf.cast(in_b, tf.int32),
          "first_kept": a_keep, "second_kept": b_keep, "second_start": a_keep + 2}


# ----------------------------------------------------------------------------- candidate choice


def select_candidates(rows, uids, row_valid, source_uid, num_kept: int) -> Dict[str, tf.Tensor]:
  """Drops the source document and repeated uids from a ranked list and keeps the first survivors.

  Args:
    rows: int32 [B, M] retrieved corpus rows, best first.
    uids: int32 [B, M] their uids.
    row_valid: bool [B, M], False for padding rows (never kept, never count as seen).
    source_uid: int32 [B] uid of each query's own document (`PAD_UID` = none).
    num_kept: Static number of rows to keep (K - 1).
  Returns:
    rows int32 [B, num_kept] (-1 where fewer survived), valid bool [B, num_kept];
    trivial_removed / duplicates_removed int32 [B]: source hits / repeats among the first
    num_kept + 1 slots (the host's top-K, where the host counts and skips them).
  """
  m = rows.shape[1]
  is_source = row_valid & tf.equal(uids, source_uid[:, tf.newaxis])  # [B, M]
  same = tf.equal(uids[:, :, tf.newaxis], uids[:, tf.newaxis, :])  # [B, M, M]
  slot = tf.range(m)
  earlier = slot[tf.newaxis, :] < slot[:, tf.newaxis]  # [M, M]: [i, j] = j before i
  repeat = tf.reduce_any(same & earlier & row_valid[:, tf.newaxis, :], axis=2) & row_valid  # [B, M]
  keep = row_valid & ~is_source & ~repeat  # [B, M]
  rank = tf.cumsum(tf.cast(keep, tf.int32), axis=1) - 1  # [B, M]
  target = tf.range(num_kept, dtype=tf.int32)[tf.newaxis, :, tf.newaxis]  # [1, n, 1]
  pick = keep[:, tf.newaxis, :] & tf.equal(rank[:, tf.newaxis, :], target)  # [B, n, M]
  valid = tf.reduce_any(pick, axis=2)  # [B, n]
  chosen = tf.reduce_sum(tf.where(pick, rows[:, tf.newaxis, :], 0), axis=2)  # [B, n]
  host_k = min(num_kept + 1, m)
  return {"rows": tf.where(valid, chosen, -1), "valid": valid,
          "trivial_removed": tf.reduce_sum(tf.cast(is_source[:, :host_k], tf.int32), axis=1),
          "duplicates_removed": tf.reduce_sum(tf.cast(repeat[:, :host_k], tf.int32), axis=1)}


def _shard_top_k(queries, emb, row_offset, num_rows: int, k: int, rows_per_chunk: int,
                 recall_target: Optional[float]):
  """Top-k of every query over one shard; rows >= num_rows (padding) never win.

  Args:
    queries: float32 [B, D].
    emb: [S, D] float32 or bfloat16 (scored in its own dtype), S a multiple of rows_per_chunk.
    row_offset: int32 scalar, global row of emb[0].
    num_rows: N, real rows of the whole corpus.
    k: static, <= S.
    rows_per_chunk: rows scored per step of a running top-k merge (memory ~ B x rows_per_chunk).
    recall_target: None -> exact `tf.math.top_k`; else `tf.math.approx_max_k` (fast on TPU, exact
      on CPU).
  Returns:
    (scores float32 [B, k], global rows int32 [B, k]), best first.
  """
  shard_rows, dim = emb.shape
  num_chunks = shard_rows // rows_per_chunk
  q = tf.cast(queries, emb.dtype)  # [B, D]

  def chunk_top(start):
    block = tf.slice(emb, [start, 0], [rows_per_chunk, dim])  # [R, D]
    scores = tf.cast(tf.matmul(q, block, transpose_b=True), tf.float32)  # [B, R]
    rows = row_offset + start + tf.range(rows_per_chunk, dtype=tf.int32)  # [R]
    scores = tf.where(rows[tf.newaxis, :] < num_rows, scores, _NEVER_WINS)  # [B, R]
    kc = min(k, rows_per_chunk)
    if recall_target is None:
      top, pos = tf.math.top_k(scores, k=kc)  # [B, kc]
    else:
      top, pos = tf.math.approx_max_k(scores, kc, recall_target=recall_target)  # [B, kc]
    return top, tf.gather(rows, pos)

  if num_chunks == 1:
    return chunk_top(0)
  batch = tf.shape(queries)[0]

  def body(c, best_scores, best_rows):
    scores, rows = chunk_top(c * rows_per_chunk)
    best_scores, best_rows = index_lib.merge_top_k(best_scores, best_rows, scores, rows, k)
    return c + 1, best_scores, best_rows

  init = (tf.constant(0), tf.fill([batch, k], _NEVER_WINS), tf.fill([batch, k], -1))
  _, scores, rows = tf.while_loop(lambda c, *_: c < num_chunks, body, init,
                                  maximum_iterations=num_chunks)
  return scores, rows


# ----------------------------------------------------------------------------- the store


def token_widths(block_store, candidate_seq_len: int, joint_seq_len: int):
  """(title_width, body_width) of the dense token arrays: the most either layout can ever use.

  Title: only the candidate layout reads it, first, with budget C - 3 -> min(longest title, C - 3).
  Body: the candidate reads <= C - 3 - title <= C - 3 tokens, the joint layout <= J - 3 - query
  <= J - 3 -> min(longest body, max(C, J) - 3). Anything longer is cut by both packers anyway.
  Both at least 1 (static shapes without zero-width arrays).
  """
  budget_c, budget_j = candidate_seq_len - 3, joint_seq_len - 3
  if budget_c < 0 or budget_j < 0:
    raise ValueError(f"candidate_seq_len={candidate_seq_len} / joint_seq_len={joint_seq_len} "
                     "must be >= 3")
  longest_title = int(block_store.title_lengths().max()) if block_store.num_blocks else 0
  longest_body = int(block_store.body_lengths().max()) if block_store.num_blocks else 0
  return (max(1, min(longest_title, budget_c)), max(1, min(longest_body, max(budget_c, budget_j))))


def _row_lengths(offsets, start, count, width):
  """int32 [count] lengths of CSR rows [start, start+count), cut at `width`; 0 past the end."""
  lens = np.zeros([count], np.int32)
  real = max(0, min(count, len(offsets) - 1 - start))
  lens[:real] = np.minimum(np.diff(offsets[start:start + real + 1]), width)
  return lens


def _dense_rows(flat, offsets, start, count, width):
  """int32 [count, width] ids of CSR rows [start, start+count), cut at `width`, zero-padded (rows
  past the end are padding)."""
  ids = np.zeros([count, width], np.int32)
  real = max(0, min(count, len(offsets) - 1 - start))
  cols = np.arange(width, dtype=np.int64)[np.newaxis, :]  # [1, W]
  for i in range(0, real if len(flat) else 0, _HOST_ROWS_PER_COPY):
    n = min(_HOST_ROWS_PER_COPY, real - i)
    off = offsets[start + i:start + i + n + 1]  # [n + 1]
    kept = np.minimum(np.diff(off), width)  # [n]
    idx = np.minimum(off[:-1, np.newaxis] + cols, len(flat) - 1)  # [n, W]
    ids[i:i + n] = np.where(cols < kept[:, np.newaxis], flat[idx], 0)
  return ids


class DeviceBlockStore:
  """The retrieval corpus on the accelerators: `block_emb` and token ids, row-sharded over replicas.

  Args:
    block_store: `BlockStore` (token ids; rows = `block_emb` rows).
    block_emb: float [N, D] block embeddings (e.g. `index.read_block_emb_checkpoint`).
    candidate_seq_len, joint_seq_len: C and J of the packed layouts.
    cls_id, sep_id: Special ids.
    block_uids: int32 [N] `graph_doc_uid` of every block; default
      `graph_uids_of_block_store(block_store)` (needs a store with texts).
    emb_dtype: tf.float32 or tf.bfloat16 storage (and scoring) dtype of `block_emb`.
    strategy: Strategy whose replicas shard the rows; default `tf.distribute.get_strategy()`.
    rows_per_chunk: Rows scored at once per replica (bounds the [R*b, rows] score matrix);
      default the whole shard.
    index_version, index_step: Initial bookkeeping values returned with every retrieval.

  Attributes:
    num_blocks N, dim D, num_replicas R, shard_rows S, title_width, body_width, emb_dtype.
  Per-replica variables (non-trainable, ON_READ): block_emb [S, D]; title_ids [S, title_width],
  title_len [S], body_ids [S, body_width], body_len [S], uids [S] (int32; padding: 0 / 0 / PAD_UID).
  Mirrored int32 scalars: index_version, index_step.
  """

  def __init__(self, block_store, block_emb, *, candidate_seq_len: int, joint_seq_len: int,
               cls_id: int, sep_id: int, block_uids=None, emb_dtype=tf.float32, strategy=None,
               rows_per_chunk: Optional[int] = None, index_version: int = 0, index_step: int = 0):
    emb = np.asarray(block_emb, np.float32)
    n = block_store.num_blocks
    if emb.ndim != 2 or emb.shape[0] != n or n == 0:
      raise ValueError(f"block_emb has shape {emb.shape}, expected [{n}, D] for the BlockStore "
                       f"({block_store.source}) with {n} blocks (N >= 1)")
    if emb_dtype not in (tf.float32, tf.bfloat16):
      raise ValueError(f"emb_dtype must be tf.float32 or tf.bfloat16, got {emb_dtype}")
    uids = (graph_uids_of_block_store(block_store) if block_uids is None
            else np.asarray(block_uids))
    if uids.shape != (n,) or (n and (uids.min() < 0 or uids.max() >= UID_BUCKETS)):
      raise ValueError(f"block_uids must be {n} graph_doc_uid values in [0, {UID_BUCKETS}), got "
                       f"shape {uids.shape}")
    self.strategy = strategy or tf.distribute.get_strategy()
    self.num_blocks, self.dim = n, emb.shape[1]
    self.num_replicas = self.strategy.num_replicas_in_sync
    self.candidate_seq_len, self.joint_seq_len = candidate_seq_len, joint_seq_len
    self.cls_id, self.sep_id = int(cls_id), int(sep_id)
    self.emb_dtype = emb_dtype
    self.title_width, self.body_width = token_widths(block_store, candidate_seq_len, joint_seq_len)
    shard = math.ceil(n / self.num_replicas)
    self.rows_per_chunk = min(rows_per_chunk or shard, shard)
    self.shard_rows = math.ceil(shard / self.rows_per_chunk) * self.rows_per_chunk
    s, r = self.shard_rows, self.num_replicas
    self._host_uids = np.concatenate([uids.astype(np.int32),
                                      np.full([s * r - n], PAD_UID, np.int32)])
    per_replica = dict(block_emb=([s, self.dim], emb_dtype),
                       title_ids=([s, self.title_width], tf.int32), title_len=([s], tf.int32),
                       body_ids=([s, self.body_width], tf.int32), body_len=([s], tf.int32),
                       uids=([s], tf.int32))
    self._vars = {}
    with self.strategy.scope():
      for name, (shape, dtype) in per_replica.items():
        self._vars[name] = tf.Variable(
            tf.zeros(shape, dtype), trainable=False, name=f"device_{name}",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.NONE)
      self.index_version = tf.Variable(int(index_version), trainable=False, dtype=tf.int32,
                                       name="device_index_version")
      self.index_step = tf.Variable(int(index_step), trainable=False, dtype=tf.int32,
                                    name="device_index_step")
    self._assign_fn = None
    st = block_store

    self._assign_shards({
        "title_ids": lambda rid: _dense_rows(st.title_ids, st.title_offsets, rid * s, s,
                                             self.title_width),
        "title_len": lambda rid: _row_lengths(st.title_offsets, rid * s, s, self.title_width),
        "body_ids": lambda rid: _dense_rows(st.body_ids, st.body_offsets, rid * s, s,
                                            self.body_width),
        "body_len": lambda rid: _row_lengths(st.body_offsets, rid * s, s, self.body_width),
        "uids": lambda rid: self._host_uids[rid * s:(rid + 1) * s],
    })
    self.assign_block_emb(emb)

  # --------------------------------------------------------------------------- loading

  def _assign_shards(self, shard_fns):
    """Assigns per-replica values: shard_fns[name](global replica id) -> np array of one shard."""
    def value_fn(ctx):
      rid = int(ctx.replica_id_in_sync_group)
      return {name: tf.cast(tf.constant(fn(rid)), self._vars[name].dtype)
              for name, fn in shard_fns.items()}

    values = self.strategy.experimental_distribute_values_from_function(value_fn)
    if self._assign_fn is None:
      def replica_assign(vals):
        for name, value in vals.items():
          self._vars[name].assign(value)

      # strategy.run in a tf.function: required by TPUStrategy, runs replicas in parallel elsewhere.
      self._assign_fn = tf.function(lambda vals: self.strategy.run(replica_assign, args=(vals,)))
    self._assign_fn(values)

  def assign_block_emb(self, new_emb, index_version: Optional[int] = None,
                       index_step: Optional[int] = None):
    """Swaps in refreshed block embeddings (call between train steps, in cross-replica context).

    Args:
      new_emb: float [N, D] in the store's row order (the host pads and shards it).
      index_version, index_step: New bookkeeping values (unchanged if None).
    """
    emb = np.asarray(new_emb, np.float32)
    if emb.shape != (self.num_blocks, self.dim):
      raise ValueError(f"new block_emb has shape {emb.shape}, expected "
                       f"({self.num_blocks}, {self.dim})")
    s = self.shard_rows

    def shard(rid):
      out = np.zeros([s, self.dim], np.float32)
      part = emb[rid * s:(rid + 1) * s]
      out[:len(part)] = part
      return out

    self._assign_shards({"block_emb": shard})
    if index_version is not None:
      self.index_version.assign(int(index_version))
    if index_step is not None:
      self.index_step.assign(int(index_step))

  # --------------------------------------------------------------------------- retrieval

  def retrieve_candidates(self, query_emb, source_uid, query_input_ids, query_input_mask,
                          num_candidates: int, extra_candidates: int = 2,
                          recall_target: Optional[float] = None) -> Dict[str, tf.Tensor]:
    """Replica-context retrieval + packing for this replica's b queries (see the module docstring).

    Call inside `strategy.run` (or with no strategy); all replicas must call it (collectives).

    Args:
      query_emb: float [b, D] masked-query embeddings (gradient stopped here).
      source_uid: int32 [b] `graph_doc_uid` of each record's document (`PAD_UID`: none).
      query_input_ids, query_input_mask: int32 [b, Q] packed masked queries `[CLS] q [SEP]`.
      num_candidates: K (static), including the null document at slot 0.
      extra_candidates: Searched beyond K, to refill slots lost to repeated uids.
      recall_target: None -> exact top-k; else `tf.math.approx_max_k` for the local top-k.
    Returns:
      block_rows int32 [b, K] (-1 = null document at slot 0, and empty slots);
      candidate_valid int32 [b, K] (slot 0 always 1); example_valid int32 [b] (all K valid: loss
      weight); candidate_input_ids / _mask / _segment_ids int32 [b, K, C];
      joint_input_ids / _mask / _segment_ids int32 [b, K, J]; trivial_removed, duplicates_removed
      int32 [b] (among the top K, as the host counts them); index_version, index_step int32 [b].
    """
    k = int(num_candidates)
    if k < 1:
      raise ValueError(f"num_candidates must be >= 1, got {k}")
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
      raise ValueError("retrieve_candidates must run in a replica context (inside strategy.run)")
    r = self.num_replicas
    if ctx.num_replicas_in_sync != r:
      raise ValueError(f"DeviceBlockStore was sharded for {r} replicas, called with "
                       f"{ctx.num_replicas_in_sync}")
    q = tf.cast(tf.stop_gradient(query_emb), tf.float32)  # [b, D]
    src = tf.cast(source_uid, tf.int32)  # [b]
    b = q.shape[0] if q.shape[0] is not None else tf.shape(q)[0]
    s = self.shard_rows
    if r > 1:
      replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
      q_all = ctx.all_gather(q, axis=0)  # [R*b, D]
      src_all = ctx.all_gather(src, axis=0)  # [R*b]
    else:
      replica = tf.constant(0, tf.int32)
      q_all, src_all = q, src
    offset = replica * s
    emb = tf.convert_to_tensor(self._vars["block_emb"])  # [S, D]
    uids = tf.convert_to_tensor(self._vars["uids"])  # [S]

    # Local top-m over this shard, then the global top-m of all shards' winners.
    m_local = min(k + int(extra_candidates), s)
    m = min(k + int(extra_candidates), r * m_local)
    scores, rows = _shard_top_k(q_all, emb, offset, self.num_blocks, m_local,
                                self.rows_per_chunk, recall_target)  # [R*b, m_local]
    row_uids = tf.gather(uids, tf.clip_by_value(rows - offset, 0, s - 1))  # [R*b, m_local]
    if r > 1:
      scores, rows, row_uids = ctx.all_gather([scores, rows, row_uids], axis=1)  # [R*b, R*m_local]
      scores, pos = tf.math.top_k(scores, k=m)  # [R*b, m]
      rows = tf.gather(rows, pos, batch_dims=1)  # [R*b, m]
      row_uids = tf.gather(row_uids, pos, batch_dims=1)  # [R*b, m]
    row_valid = (rows >= 0) & (rows < self.num_blocks)  # [R*b, m]
    chosen = select_candidates(rows, row_uids, row_valid, src_all, k - 1)  # [R*b, k-1]

    # Token rows of the kept blocks from their owners; the all-reduce delivers them everywhere.
    local = chosen["rows"] - offset  # [R*b, k-1]
    owned = (chosen["rows"] >= 0) & (local >= 0) & (local < s)  # [R*b, k-1]
    idx = tf.clip_by_value(local, 0, s - 1)
    payload = tf.concat([
        tf.gather(tf.convert_to_tensor(self._vars["title_ids"]), idx),  # [R*b, k-1, Lt]
        tf.gather(tf.convert_to_tensor(self._vars["body_ids"]), idx),  # [R*b, k-1, Lb]
        tf.gather(tf.convert_to_tensor(self._vars["title_len"]), idx)[..., tf.newaxis],
        tf.gather(tf.convert_to_tensor(self._vars["body_len"]), idx)[..., tf.newaxis],
    ], axis=-1)  # [R*b, k-1, Lt+Lb+2]
    payload = payload * tf.cast(owned, tf.int32)[..., tf.newaxis]
    if r > 1:
      payload = ctx.all_reduce(tf.distribute.ReduceOp.SUM, payload)

    # This replica's slice of the global batch.
    def mine(x):
      return x if r == 1 else tf.gather(x, replica * b + tf.range(b))

    payload = mine(payload)  # [b, k-1, W]
    kept_rows = mine(chosen["rows"])  # [b, k-1]
    kept_valid = mine(chosen["valid"])  # [b, k-1]
    lt, lb = self.title_width, self.body_width
    null = lambda x: tf.concat([tf.zeros_like(x[:, :1]), x], axis=1)  # noqa: E731  slot 0 = null
    title_ids = null(payload[..., :lt])  # [b, k, Lt]
    body_ids = null(payload[..., lt:lt + lb])  # [b, k, Lb]
    title_len = null(payload[..., lt + lb])  # [b, k]
    body_len = null(payload[..., lt + lb + 1])  # [b, k]
    candidates = pack_pair_dense(title_ids, title_len, body_ids, body_len, self.candidate_seq_len,
                                 self.cls_id, self.sep_id)  # [b, k, C]
    # Reader input: the query's tokens between [CLS] and [SEP], then the body; no title
    # (original §1.2).
    q_ids = tf.cast(query_input_ids, tf.int32)[:, 1:]  # [b, Q-1]
    q_len = tf.maximum(tf.reduce_sum(tf.cast(query_input_mask, tf.int32), axis=1) - 2, 0)  # [b]
    joint = pack_pair_dense(q_ids[:, tf.newaxis, :], q_len[:, tf.newaxis], body_ids, body_len,
                            self.joint_seq_len, self.cls_id, self.sep_id)  # [b, k, J]
    candidate_valid = tf.concat([tf.ones_like(kept_valid[:, :1]), kept_valid], axis=1)  # [b, k]
    ones = tf.ones_like(src)  # [b]
    out = {
        "block_rows": tf.concat([-tf.ones_like(kept_rows[:, :1]), kept_rows], axis=1),
        "candidate_valid": tf.cast(candidate_valid, tf.int32),
        "example_valid": tf.cast(tf.reduce_all(candidate_valid, axis=1), tf.int32),
        "trivial_removed": mine(chosen["trivial_removed"]),
        "duplicates_removed": mine(chosen["duplicates_removed"]),
        "index_version": ones * tf.convert_to_tensor(self.index_version),
        "index_step": ones * tf.convert_to_tensor(self.index_step),
    }
    for prefix, packed in (("candidate_", candidates), ("joint_", joint)):
      for key in ("input_ids", "input_mask", "segment_ids"):
        out[prefix + key] = packed[key]
    return out


# ----------------------------------------------------------------------------- refresh wiring


class BlockEmbeddings:
  """The index of a device-mode `IndexSnapshot`: just the block embeddings.

  In `task.retrieval=device` the search runs in the train step over the `DeviceBlockStore`; a
  refreshed snapshot only has to carry `embeddings` float32 [N, D] to the trainer, which assigns
  them between steps (`DeviceIndexSwap`). No host index is built (no second copy of `block_emb`).
  """

  kind = "device"

  def __init__(self, emb):
    emb = np.asarray(emb, np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
      raise ValueError(f"block embeddings must be a non-empty [N, D] matrix, got {emb.shape}")
    self.embeddings = emb

  @property
  def num_rows(self) -> int:
    return self.embeddings.shape[0]

  @property
  def dim(self) -> int:
    return self.embeddings.shape[1]


class BlockEmbeddingsFactory:
  """`index_factory` of device-mode refreshers and initial snapshots (the `index.IndexFactory`
  interface): wraps `block_emb` in `BlockEmbeddings`; an index saved beside an `encoded.ckpt` is
  not loaded (the accelerators search)."""

  def __call__(self, emb) -> BlockEmbeddings:
    return BlockEmbeddings(emb)

  def load_or_build(self, directory, emb) -> BlockEmbeddings:
    del directory
    return BlockEmbeddings(emb)


class DeviceIndexSwap:
  """Orbit train action: keeps a `DeviceBlockStore` at the newest snapshot of an `IndexHolder`.

  Runs in the training-loop thread after every train loop (between steps, as `assign_block_emb`
  requires): when the holder's version moved, assigns that snapshot's `index.embeddings` with its
  version and step. The refresher (thread or external process) keeps building the snapshots.

  Args:
    holder: `refresher.IndexHolder` whose snapshots carry `embeddings` (`BlockEmbeddings`, or a
      `BruteForceIndex`).
    device_store: The `DeviceBlockStore` the train step searches.
    load_query_tower: Optional `fn(snapshot)` run with every assigned snapshot, the current one
      included: loads the snapshot's query tower into the accelerator copy that picks the
      candidates (`task.device_retrieval.pick_with="snapshot"`).
  Attributes:
    version, step, wall_time: Of the snapshot assigned last; swaps: assignments so far.
  """

  def __init__(self, holder, device_store: DeviceBlockStore, load_query_tower=None):
    self.holder = holder
    self.device_store = device_store
    self.load_query_tower = load_query_tower
    snapshot = holder.get()
    if load_query_tower is not None:
      load_query_tower(snapshot)
    self.version = int(device_store.index_version.numpy())
    self.step = int(device_store.index_step.numpy())
    self.wall_time = float(getattr(snapshot, "wall_time", 0.0) or 0.0)
    self.swaps = 0

  def __call__(self, output=None) -> bool:
    """Assigns the holder's snapshot if it is newer than the store's; True if it did."""
    del output
    snapshot = self.holder.get()
    if snapshot is None or int(snapshot.version) <= self.version:
      return False
    emb = getattr(snapshot.index, "embeddings", None)
    if emb is None:
      raise ValueError(f"index snapshot version {snapshot.version} ({snapshot.source}) has no "
                       "embeddings to assign to the device index (device mode builds snapshots "
                       "with BlockEmbeddingsFactory)")
    if self.load_query_tower is not None:
      self.load_query_tower(snapshot)
    self.device_store.assign_block_emb(emb, index_version=int(snapshot.version),
                                       index_step=int(snapshot.step))
    self.version, self.step = int(snapshot.version), int(snapshot.step)
    self.wall_time = float(snapshot.wall_time or 0.0)
    self.swaps += 1
    logging.info("device index: assigned snapshot version %d (step %d)", self.version, self.step)
    return True
