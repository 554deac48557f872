"""Maximum-inner-product search (MIPS) indexes over the block embeddings.

REALM scores a query against every block by a raw inner product (embeddings are not normalised), and
retrieves the top k. Two implementations of one `MipsIndex` interface:

* `BruteForceIndex`: exact, pure TensorFlow (matmul + `tf.math.top_k`), chunked over rows with a running
  top-k merge so memory is bounded by `[query_batch, chunk_rows]`; optional bfloat16 scoring with exact
  float32 re-scoring of the candidates; a sharded variant that spreads the rows over the replicas of a
  `tf.distribute` strategy (the TPU-capable path). `search_tensors` works inside `tf.function`/XLA.
* `ScannIndex`: ScaNN 1.4.2 (tree + asymmetric hashing + exact reordering), settings chosen from N by the
  rules of ScaNN's `docs/algorithms.md` (see `scann_settings_for`). Backend `pybind` (NumPy, host side)
  or `tf` (ScaNN's CPU-only TF custom ops, usable in a CPU graph, saved as variables).

Host API: `search(query_emb [B,D], k) -> (ids int32 np [B,k], scores float32 np [B,k])`, sorted by
descending score. `save(dir)` writes `index_meta.json` plus the payload; `load_index(dir)` dispatches.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import abc
import json
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils

_META = "index_meta.json"
_EMB_CKPT = "emb.ckpt"
BLOCK_EMB_KEY = "block_emb"


# ----------------------------------------------------------------------------- checkpoint helpers


def write_block_emb_checkpoint(prefix, emb):
  """Writes `emb` as a TF checkpoint with the single key `block_emb` (the original `encoded.ckpt`).

  `tf.train.Checkpoint` would name the tensor `block_emb/.ATTRIBUTES/VARIABLE_VALUE`; the contract is
  `tf.train.load_checkpoint(prefix).get_tensor("block_emb")`, so the raw SaveV2 op is used, as a TF1
  `Saver([var])` would. Also writes the `checkpoint` state file so the directory form loads too.
  Not atomic by itself: callers write into a staging directory and rename it.

  Args:
    prefix: Checkpoint prefix, e.g. `<dir>/encoded.ckpt`.
    emb: float32 [N, D].
  """
  emb = np.asarray(emb, dtype=np.float32)
  if emb.ndim != 2:
    raise ValueError(f"block_emb must be rank 2 [N, D], got shape {emb.shape} for {prefix}")
  tf.io.gfile.makedirs(os.path.dirname(prefix) or ".")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[BLOCK_EMB_KEY], shape_and_slices=[""],
                    tensors=[tf.constant(emb)])
  state = f'model_checkpoint_path: "{os.path.basename(prefix)}"\n' \
          f'all_model_checkpoint_paths: "{os.path.basename(prefix)}"\n'
  with tf.io.gfile.GFile(os.path.join(os.path.dirname(prefix), "checkpoint"), "w") as f:
    f.write(state)


def read_block_emb_checkpoint(path):
  """Reads `block_emb` float32 [N, D] from a checkpoint prefix or its directory."""
  try:
    reader = tf.train.load_checkpoint(path)
    emb = reader.get_tensor(BLOCK_EMB_KEY)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f"cannot read '{BLOCK_EMB_KEY}' from checkpoint {path}: {e}") from e
  if emb.ndim != 2:
    raise ValueError(f"{path}: '{BLOCK_EMB_KEY}' has shape {emb.shape}, expected [N, D]")
  return emb.astype(np.float32, copy=False)


def _write_meta(directory, meta):
  with tf.io.gfile.GFile(os.path.join(directory, _META), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)


def _read_meta(directory):
  path = os.path.join(directory, _META)
  if not tf.io.gfile.exists(path):
    raise ValueError(f"not an index directory (no {_META}): {directory}")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- pure TF top-k


def merge_top_k(scores_a, ids_a, scores_b, ids_b, k):
  """Top k of the union of two candidate lists.

  Args:
    scores_a, scores_b: float32 [B, ka], [B, kb].
    ids_a, ids_b: int32 [B, ka], [B, kb].
    k: static int <= ka + kb.

  Returns:
    (scores float32 [B, k], ids int32 [B, k]) sorted by descending score.
  """
  scores = tf.concat([scores_a, scores_b], axis=1)  # [B, ka+kb]
  ids = tf.concat([ids_a, ids_b], axis=1)  # [B, ka+kb]
  top_scores, pos = tf.math.top_k(scores, k=k, sorted=True)  # [B, k]
  return top_scores, tf.gather(ids, pos, batch_dims=1)


def chunked_top_k(query, emb_chunks, num_rows, k, row_offset=0, score_dtype=tf.float32,
                  num_candidates=None, emb_chunks_f32=None):
  """Exact (or bf16-then-exact) MIPS top-k with a running merge over row chunks; XLA-compatible.

  Written by hand because neither TF nor TFRS' `BruteForce` bounds memory: they score all [B, N] at once.

  Args:
    query: float32 [B, D].
    emb_chunks: [C, R, D] rows split into C chunks of R (zero-padded past num_rows), in score_dtype.
    num_rows: Number of real rows (int or scalar tensor); padded rows never win.
    k: Static number of results.
    row_offset: Added to the returned ids (global id of row 0 of this shard).
    score_dtype: tf.float32 (exact) or tf.bfloat16 (fast pass; then exact rescore).
    num_candidates: Candidates kept from the bf16 pass (>= k); defaults to max(4k, k+16).
    emb_chunks_f32: float32 [C, R, D] used for the exact rescore when score_dtype is bfloat16.

  Returns:
    (ids int32 [B, k], scores float32 [B, k]), descending.
  """
  num_chunks = emb_chunks.shape[0]
  rows_per_chunk = emb_chunks.shape[1]
  batch = tf.shape(query)[0]
  exact = score_dtype == tf.float32
  kk = k if exact else (num_candidates or max(4 * k, k + 16))
  kk = min(kk, num_chunks * rows_per_chunk)
  kc = min(kk, rows_per_chunk)
  q = tf.cast(query, score_dtype)  # [B, D]
  num_rows = tf.cast(num_rows, tf.int32)

  def body(c, best_scores, best_ids):
    chunk = emb_chunks[c]  # [R, D]
    scores = tf.cast(tf.matmul(q, chunk, transpose_b=True), tf.float32)  # [B, R]
    local_ids = c * rows_per_chunk + tf.range(rows_per_chunk, dtype=tf.int32)  # [R]
    scores = tf.where(local_ids[tf.newaxis, :] < num_rows, scores, -np.inf)  # [B, R]
    chunk_scores, pos = tf.math.top_k(scores, k=kc, sorted=False)  # [B, kc]
    chunk_ids = tf.gather(local_ids, pos)  # [B, kc]
    best_scores, best_ids = merge_top_k(best_scores, best_ids, chunk_scores, chunk_ids, kk)
    return c + 1, best_scores, best_ids

  init_scores = tf.fill([batch, kk], tf.constant(-np.inf, tf.float32))  # [B, kk]
  init_ids = tf.fill([batch, kk], tf.constant(-1, tf.int32))  # [B, kk]
  _, best_scores, best_ids = tf.while_loop(
      lambda c, *_: c < num_chunks, body, (tf.constant(0), init_scores, init_ids),
      maximum_iterations=num_chunks)
  if not exact:
    # Exact float32 rescore of the bf16 candidates.
    flat = tf.reshape(emb_chunks_f32, [-1, emb_chunks_f32.shape[-1]])  # [C*R, D]
    cand = tf.gather(flat, tf.maximum(best_ids, 0))  # [B, kk, D]
    exact_scores = tf.einsum("bd,bkd->bk", tf.cast(query, tf.float32), cand)  # [B, kk]
    exact_scores = tf.where(best_ids >= 0, exact_scores, -np.inf)
    best_scores, pos = tf.math.top_k(exact_scores, k=k, sorted=True)  # [B, k]
    best_ids = tf.gather(best_ids, pos, batch_dims=1)  # [B, k]
  return best_ids + tf.cast(row_offset, tf.int32), best_scores


def _split_chunks(emb, rows_per_chunk, num_chunks=None):
  """[N, D] -> [C, R, D] zero-padded (host side)."""
  n, d = emb.shape
  if num_chunks is None:
    num_chunks = max(1, math.ceil(n / rows_per_chunk))
  padded = np.zeros([num_chunks * rows_per_chunk, d], dtype=emb.dtype)
  padded[:n] = emb
  return padded.reshape(num_chunks, rows_per_chunk, d)


# ----------------------------------------------------------------------------- interface


class MipsIndex(abc.ABC):
  """Interface of a MIPS index over N rows of width D.

  Build with `build(emb [N, D])` (returns self); query with `search(query_emb [B, D], k)` ->
  (ids int32 [B, k], scores float32 [B, k]) NumPy arrays sorted by descending inner product;
  `save(dir)` / `load(dir)` round trip (`load_index(dir)` picks the class from `index_meta.json`).
  """

  kind = "abstract"

  @abc.abstractmethod
  def build(self, emb):
    """Indexes `emb` float32 [N, D]; returns self."""

  @abc.abstractmethod
  def search(self, query_emb, k):
    """Returns (ids int32 [B, k], scores float32 [B, k]) for query_emb float32 [B, D]."""

  @property
  @abc.abstractmethod
  def num_rows(self):
    """N, the number of indexed rows."""

  @abc.abstractmethod
  def save(self, directory):
    """Writes the index atomically into `directory`."""

  @classmethod
  @abc.abstractmethod
  def load(cls, directory):
    """Reads an index written by `save`."""


def _check_query(query_emb, dim, k, num_rows):
  q = np.asarray(query_emb, dtype=np.float32)
  if q.ndim != 2 or q.shape[1] != dim:
    raise ValueError(f"query_emb must be [B, {dim}], got {q.shape}")
  if not 1 <= k <= num_rows:
    raise ValueError(f"k must be in [1, num_rows={num_rows}], got {k}")
  return q


# ----------------------------------------------------------------------------- brute force


class BruteForceIndex(MipsIndex):
  """Exact MIPS by TF matmul + top-k, chunked over rows and batched over queries.

  Args:
    rows_per_chunk: Rows scored per step of the running top-k merge (memory ~ query_batch x this).
    query_batch_size: Queries per host call of the compiled search function.
    use_bfloat16: Score in bfloat16 then re-score `num_candidates` candidates exactly in float32.
    num_candidates: Candidates kept by the bf16 pass (default max(4k, k+16)).
    strategy: Optional `tf.distribute.Strategy`; rows are sharded over its replicas, each replica
      scores its shard and takes its top k, then the per-replica lists are all-gathered and merged.
    jit_compile: Compile the search function with XLA.

  Shapes: emb [N, D] float32 -> chunks [C, R, D]; query [B, D]; results [B, k].
  """

  kind = "brute_force"

  def __init__(self, rows_per_chunk=65536, query_batch_size=1024, use_bfloat16=False,
               num_candidates=None, strategy=None, jit_compile=False):
    self.rows_per_chunk = int(rows_per_chunk)
    self.query_batch_size = int(query_batch_size)
    self.use_bfloat16 = bool(use_bfloat16)
    self.num_candidates = num_candidates
    self.strategy = strategy
    self.jit_compile = jit_compile
    self._emb = None  # np float32 [N, D] (host copy, for save)
    self._fns = {}

  @property
  def num_rows(self):
    return 0 if self._emb is None else self._emb.shape[0]

  @property
  def dim(self):
    return self._emb.shape[1]

  @property
  def embeddings(self):
    """The indexed rows, float32 [N, D] (NumPy)."""
    return self._emb

  def build(self, emb):
    emb = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))
    if emb.ndim != 2 or emb.shape[0] == 0:
      raise ValueError(f"emb must be a non-empty [N, D] matrix, got {emb.shape}")
    self._emb = emb
    self._fns = {}
    n = emb.shape[0]
    if self.strategy is None:
      rows = min(self.rows_per_chunk, n)
      chunks = _split_chunks(emb, rows)
      self._chunks_f32 = tf.constant(chunks)  # [C, R, D]
      self._chunks = (tf.cast(self._chunks_f32, tf.bfloat16) if self.use_bfloat16
                      else self._chunks_f32)
    else:
      replicas = self.strategy.num_replicas_in_sync
      shard_rows = math.ceil(n / replicas)
      rows = min(self.rows_per_chunk, shard_rows)
      chunks_per_shard = math.ceil(shard_rows / rows)
      shard_rows = chunks_per_shard * rows  # equal static shard shapes on every replica
      self._shard_rows = shard_rows
      shards = []
      for r in range(replicas):
        part = emb[r * shard_rows:(r + 1) * shard_rows]
        shards.append((_split_chunks(part, rows, chunks_per_shard), part.shape[0], r * shard_rows))

      def value_fn(ctx):
        chunks, real, offset = shards[ctx.replica_id_in_sync_group]
        f32 = tf.constant(chunks)
        return {"f32": f32, "scored": tf.cast(f32, tf.bfloat16) if self.use_bfloat16 else f32,
                "num_rows": tf.constant(real, tf.int32), "offset": tf.constant(offset, tf.int32)}

      self._shards = self.strategy.experimental_distribute_values_from_function(value_fn)
    return self

  def search_tensors(self, query, k):
    """Graph-side search of the unsharded index (usable in tf.function / XLA).

    Args:
      query: float32 [B, D] tensor.
      k: static int.
    Returns:
      (ids int32 [B, k], scores float32 [B, k]) tensors.
    """
    if self.strategy is not None:
      raise ValueError("search_tensors is for the unsharded index; use sharded_top_k in a replica fn")
    return chunked_top_k(query, self._chunks, self.num_rows, k,
                         score_dtype=tf.bfloat16 if self.use_bfloat16 else tf.float32,
                         num_candidates=self.num_candidates, emb_chunks_f32=self._chunks_f32)

  def _search_fn(self, k):
    if k in self._fns:
      return self._fns[k]
    if self.strategy is None:
      fn = tf.function(lambda q: self.search_tensors(q, k), jit_compile=self.jit_compile,
                       reduce_retracing=True)
    else:
      strategy = self.strategy

      def replica_fn(q, shard):
        return sharded_top_k(q, shard["scored"], shard["num_rows"], k, shard["offset"],
                             use_bfloat16=self.use_bfloat16, num_candidates=self.num_candidates,
                             emb_chunks_f32=shard["f32"])

      @tf.function(reduce_retracing=True)
      def fn(q):
        ids, scores = strategy.run(replica_fn, args=(q, self._shards))
        # Every replica holds the same merged result after the all-gather; take the first.
        return (strategy.experimental_local_results(ids)[0],
                strategy.experimental_local_results(scores)[0])
    self._fns[k] = fn
    return fn

  def search(self, query_emb, k):
    q = _check_query(query_emb, self.dim, k, self.num_rows)
    fn = self._search_fn(k)
    ids, scores = [], []
    for start in range(0, q.shape[0], self.query_batch_size):
      i, s = fn(tf.constant(q[start:start + self.query_batch_size]))
      ids.append(i.numpy())
      scores.append(s.numpy())
    if not ids:
      return np.zeros([0, k], np.int32), np.zeros([0, k], np.float32)
    return np.concatenate(ids).astype(np.int32), np.concatenate(scores).astype(np.float32)

  def save(self, directory):
    def write(staging):
      write_block_emb_checkpoint(os.path.join(staging, _EMB_CKPT), self._emb)
      _write_meta(staging, {"kind": self.kind, "num_rows": self.num_rows, "dim": self.dim,
                            "rows_per_chunk": self.rows_per_chunk,
                            "use_bfloat16": self.use_bfloat16})
    with io_utils.atomic_dir(directory) as staging:
      write(staging)

  @classmethod
  def load(cls, directory, strategy=None, **kwargs):
    meta = _read_meta(directory)
    if meta.get("kind") != cls.kind:
      raise ValueError(f"{directory}: index kind is {meta.get('kind')!r}, expected {cls.kind!r}")
    emb = read_block_emb_checkpoint(os.path.join(directory, _EMB_CKPT))
    if emb.shape != (meta["num_rows"], meta["dim"]):
      raise ValueError(f"{directory}: embeddings {emb.shape} disagree with {_META} "
                       f"({meta['num_rows']}, {meta['dim']})")
    kwargs.setdefault("rows_per_chunk", meta.get("rows_per_chunk", 65536))
    kwargs.setdefault("use_bfloat16", meta.get("use_bfloat16", False))
    return cls(strategy=strategy, **kwargs).build(emb)

  @classmethod
  def from_checkpoint(cls, path, **kwargs):
    """Builds from an `encoded.ckpt` (key `block_emb`)."""
    return cls(**kwargs).build(read_block_emb_checkpoint(path))


def sharded_top_k(query, shard_chunks, shard_num_rows, k, shard_offset, use_bfloat16=False,
                  num_candidates=None, emb_chunks_f32=None):
  """Replica-context MIPS over a row-sharded index: local top-k, all-gather, global merge.

  Call inside `strategy.run` (e.g. inside a TPU training step); every replica returns the same result.

  Args:
    query: float32 [B, D], the same queries on every replica.
    shard_chunks: [C, R, D] this replica's rows (float32, or bfloat16 with use_bfloat16).
    shard_num_rows: Real rows in this shard (scalar int32).
    k: Static int.
    shard_offset: Global id of this shard's row 0 (scalar int32).
    use_bfloat16, num_candidates, emb_chunks_f32: See `chunked_top_k`.

  Returns:
    (ids int32 [B, k] global row ids, scores float32 [B, k]).
  """
  ids, scores = chunked_top_k(query, shard_chunks, shard_num_rows, k, row_offset=shard_offset,
                              score_dtype=tf.bfloat16 if use_bfloat16 else tf.float32,
                              num_candidates=num_candidates, emb_chunks_f32=emb_chunks_f32)
  ctx = tf.distribute.get_replica_context()
  all_ids = ctx.all_gather(ids, axis=1)  # [B, replicas * k]
  all_scores = ctx.all_gather(scores, axis=1)  # [B, replicas * k]
  top_scores, pos = tf.math.top_k(all_scores, k=k, sorted=True)  # [B, k]
  return tf.gather(all_ids, pos, batch_dims=1), top_scores


# ----------------------------------------------------------------------------- ScaNN


def scann_settings_for(num_rows, **overrides):
  """ScaNN settings from N (the rules of thumb of ScaNN's docs/algorithms.md), overridable.

  * N < 20k: brute force (float32) scoring.
  * N < 100k: asymmetric hashing (2 dims/block, AVQ threshold 0.2) + exact reorder.
  * otherwise: tree with ~sqrt(N) leaves, then the same AH + reorder.
  Dot product, never spherical (REALM scores are raw inner products).
  """
  s = {"num_leaves": 0, "num_leaves_to_search": 0, "training_sample_size": 0,
       "dimensions_per_block": 2, "anisotropic_quantization_threshold": 0.2,
       "reorder": 0, "scoring": "brute_force"}
  if num_rows >= 20000:
    # Without a tree there is no residual quantisation, so AH alone ranks tightly clustered data
    # coarsely; a wide exact reorder keeps recall@8 >= 0.95 (tests/retrieval/test_index.py, on
    # clustered synthetic data).
    s["scoring"] = "ah"
    s["reorder"] = 1000
  if num_rows >= 100000:
    s["reorder"] = 250
    leaves = int(round(math.sqrt(num_rows)))
    s["num_leaves"] = leaves
    s["num_leaves_to_search"] = max(16, int(math.ceil(leaves * 0.05)))
    s["training_sample_size"] = min(num_rows, 250000)
  for key, value in overrides.items():
    if key not in s:
      raise ValueError(f"unknown ScaNN setting {key!r}; known: {sorted(s)}")
    s[key] = value
  return s


class ScannIndex(MipsIndex):
  """Approximate MIPS with ScaNN 1.4.2 (dot product).

  Args:
    settings: Dict of overrides for `scann_settings_for(N)` (e.g. num_leaves_to_search, reorder).
    backend: "pybind" (NumPy searcher, `search` on the host; saved with ScaNN's own serializer) or
      "tf" (ScaNN TF custom ops; `search_tensors` works in a CPU tf.function; saved as the nine
      variables of `ScannState`). The TF ops have a CPU kernel only and cannot run in a TPU/XLA step.
    training_threads: 0 = all cores.
    parallel: Use multi-threaded batched search.

  Shapes: emb [N, D]; query [B, D]; results [B, k]. The default neighbour count baked in at build is
  `max_k`; `search(k)` overrides it per call (k <= reorder when reordering).
  """

  kind = "scann"

  def __init__(self, settings=None, backend="pybind", training_threads=0, parallel=True, max_k=100):
    if backend not in ("pybind", "tf"):
      raise ValueError(f"backend must be 'pybind' or 'tf', got {backend!r}")
    self.overrides = dict(settings or {})
    self.backend = backend
    self.training_threads = training_threads
    self.parallel = parallel
    self.max_k = max_k
    self.settings = None
    self._searcher = None
    self._num_rows = 0
    self._dim = 0

  @property
  def num_rows(self):
    return self._num_rows

  @property
  def dim(self):
    return self._dim

  def _configure(self, builder, n):
    s = self.settings
    if s["num_leaves"]:
      builder = builder.tree(num_leaves=s["num_leaves"],
                             num_leaves_to_search=s["num_leaves_to_search"],
                             training_sample_size=s["training_sample_size"] or n)
    if s["scoring"] == "ah":
      builder = builder.score_ah(s["dimensions_per_block"],
                                 anisotropic_quantization_threshold=s[
                                     "anisotropic_quantization_threshold"])
      if s["reorder"]:
        builder = builder.reorder(s["reorder"])
    elif s["scoring"] == "brute_force":
      builder = builder.score_brute_force()
    else:
      raise ValueError(f"unknown scoring {s['scoring']!r}")
    return builder

  def build(self, emb):
    import scann  # pylint: disable=g-import-not-at-top  (heavy; only when ScaNN is used)
    emb = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))
    if emb.ndim != 2 or emb.shape[0] == 0:
      raise ValueError(f"emb must be a non-empty [N, D] matrix, got {emb.shape}")
    n, d = emb.shape
    self.settings = scann_settings_for(n, **self.overrides)
    self._num_rows, self._dim = n, d
    k = min(self.max_k, n)
    if self.backend == "pybind":
      b = scann.scann_ops_pybind.builder(emb, k, "dot_product")
      b.set_n_training_threads(self.training_threads)
      self._searcher = self._configure(b, n).build()
    else:
      from scann import scann_ops  # pylint: disable=g-import-not-at-top
      b = scann_ops.builder(emb, k, "dot_product")
      b.set_n_training_threads(self.training_threads)
      self._searcher = self._configure(b, n).build()
    return self

  def set_search_params(self, num_leaves_to_search=None, reorder=None):
    """Search-time overrides (no rebuild): leaves searched per query, candidates exactly re-scored."""
    if num_leaves_to_search is not None:
      self.settings["num_leaves_to_search"] = int(num_leaves_to_search)
    if reorder is not None:
      self.settings["reorder"] = int(reorder)
    return self

  def _search_args(self, k):
    s = self.settings
    return dict(final_num_neighbors=k,
                pre_reorder_num_neighbors=max(s["reorder"], k) if s["reorder"] else None,
                leaves_to_search=s["num_leaves_to_search"] if s["num_leaves"] else None)

  def search(self, query_emb, k):
    q = _check_query(query_emb, self._dim, k, self._num_rows)
    if self.backend == "pybind":
      search = (self._searcher.search_batched_parallel if self.parallel
                else self._searcher.search_batched)
      ids, scores = search(q, **self._search_args(k))
      ids, scores = np.asarray(ids), np.asarray(scores)
    else:
      ids, scores = self.search_tensors(tf.constant(q), k)
      ids, scores = ids.numpy(), scores.numpy()
    return ids.astype(np.int32), scores.astype(np.float32)

  def state_module(self):
    """The searcher's state as a `scann_ops.ScannState` (a tf.Module of variables; backend "tf").

    Track it in a SavedModel and pass it to `search_tensors(..., state=)`: the SavedModel then holds
    the whole index (loading it needs `import scann`, which registers ScaNN's ops).
    """
    if self.backend != "tf":
      raise ValueError("state_module needs backend='tf' (ScaNN TF ops)")
    return self._searcher.serialize_to_module()

  def search_tensors(self, query, k, state=None):
    """TF-op search (backend "tf" only; CPU graph): query float32 [B, D] -> (ids int32 [B, k'],
    scores float32 [B, k']).

    k' <= k is dynamic: ScaNN returns fewer columns when its partitions hold fewer than k rows
    (missing results within k' have index 0 and a NaN distance).

    Args:
      query: float32 [B, D].
      k: results per query.
      state: None (the searcher built here) or a `state_module()` tracked by a SavedModel: the
        searcher is then re-created in the graph from its variables (ScaNN's kernel builds it at the
        first run of the traced function and keeps it).
    """
    if self.backend != "tf":
      raise ValueError("search_tensors needs backend='tf' (ScaNN TF ops)")
    searcher = self._searcher
    if state is not None:
      from scann import scann_ops  # pylint: disable=g-import-not-at-top
      searcher = scann_ops.ScannSearcher(state.recreate_handle())
    search = searcher.search_batched_parallel if self.parallel else searcher.search_batched
    res = search(query, **self._search_args(k))
    return tf.cast(res.indices, tf.int32), tf.cast(res.distances, tf.float32)

  def save(self, directory):
    meta = {"kind": self.kind, "backend": self.backend, "num_rows": self._num_rows,
            "dim": self._dim, "settings": self.settings, "max_k": self.max_k}

    def write(staging):
      if self.backend == "pybind":
        # ScaNN's serializer uses local files; stage locally, then copy through gfile (gs:// works).
        local = tempfile.mkdtemp(prefix="scann-save-")
        try:
          self._searcher.serialize(local, relative_path=True)
          tf.io.gfile.makedirs(os.path.join(staging, "scann"))
          for name in os.listdir(local):
            tf.io.gfile.copy(os.path.join(local, name), os.path.join(staging, "scann", name))
        finally:
          shutil.rmtree(local, ignore_errors=True)
      else:
        module = self._searcher.serialize_to_module()
        tf.train.Checkpoint(scann=module).write(os.path.join(staging, "scann_state", "ckpt"))
      _write_meta(staging, meta)
    with io_utils.atomic_dir(directory) as staging:
      write(staging)

  @classmethod
  def load(cls, directory, **kwargs):
    import scann  # pylint: disable=g-import-not-at-top
    meta = _read_meta(directory)
    if meta.get("kind") != cls.kind:
      raise ValueError(f"{directory}: index kind is {meta.get('kind')!r}, expected {cls.kind!r}")
    self = cls(backend=meta["backend"], max_k=meta.get("max_k", 100), **kwargs)
    self.settings = meta["settings"]
    self._num_rows, self._dim = meta["num_rows"], meta["dim"]
    if self.backend == "pybind":
      local = tempfile.mkdtemp(prefix="scann-load-")
      try:
        src = os.path.join(directory, "scann")
        for name in tf.io.gfile.listdir(src):
          tf.io.gfile.copy(os.path.join(src, name), os.path.join(local, name), overwrite=True)
        self._searcher = scann.scann_ops_pybind.load_searcher(local)
      finally:
        shutil.rmtree(local, ignore_errors=True)
    else:
      from scann import scann_ops  # pylint: disable=g-import-not-at-top
      # ScannState's variables have validate_shape=False; restore into placeholders of any shape.
      reader = tf.train.load_checkpoint(os.path.join(directory, "scann_state", "ckpt"))
      names = ["scann_config", "serialized_partitioner", "datapoint_to_token", "ah_codebook",
               "hashed_dataset", "int8_dataset", "int8_multipliers", "dp_norms", "dataset"]
      tensors = [reader.get_tensor(f"scann/{n}/.ATTRIBUTES/VARIABLE_VALUE") for n in names]
      module = scann_ops.ScannState(tensors)
      self._searcher = scann_ops.searcher_from_module(module)
      self._module = module
    return self


_KINDS = {BruteForceIndex.kind: BruteForceIndex, ScannIndex.kind: ScannIndex}


def load_index(directory, **kwargs):
  """Loads any index saved by `MipsIndex.save`, dispatching on `index_meta.json`."""
  kind = _read_meta(directory).get("kind")
  if kind not in _KINDS:
    raise ValueError(f"{directory}: unknown index kind {kind!r}")
  return _KINDS[kind].load(directory, **kwargs)


def build_index(emb, kind="brute_force", **kwargs):
  """Convenience: `build_index(emb, "scann", settings={...})`."""
  if kind not in _KINDS:
    raise ValueError(f"unknown index kind {kind!r}; known: {sorted(_KINDS)}")
  return _KINDS[kind](**kwargs).build(emb)


MIPS_CHOICES = ("brute_force", "scann", "auto")
# `mips="auto"` builds ScaNN from this many rows on, where `scann_settings_for` adds its partitioning
# tree: there ScaNN answered 15x the queries of exact search at recall@8 1.0, while below it (no tree)
# it was no faster at 50k rows and exact search already serves thousands of queries a second
# (benchmarks/mips.py, docs/scaling.md "MIPS: brute force or ScaNN").
AUTO_SCANN_MIN_ROWS = 100000


def resolve_mips(mips: str, num_rows: int) -> str:
  """The index kind `mips` ("brute_force" | "scann" | "auto") means for `num_rows` rows."""
  if mips not in MIPS_CHOICES:
    raise ValueError(f"mips must be one of {MIPS_CHOICES}, got {mips!r}")
  if mips == "auto":
    return ScannIndex.kind if num_rows >= AUTO_SCANN_MIN_ROWS else BruteForceIndex.kind
  return mips


class IndexFactory:
  """Builds (or loads) the `MipsIndex` of the kind `mips` resolves to for a corpus size.

  Args:
    mips: "brute_force", "scann" or "auto" (`resolve_mips`).
    scann_settings: Overrides of `scann_settings_for(N)` (None values are left to it).
    scann_backend: `ScannIndex` backend: "pybind" (host search) or "tf" (ScaNN's TF ops, for
      searching inside a CPU graph, e.g. ORQA's step).

  Call: `factory(block_emb float32 [N, D])` -> a built index.
  """

  def __init__(self, mips: str = "brute_force", scann_settings=None, scann_backend="pybind"):
    resolve_mips(mips, 0)  # validates the name
    self.mips = mips
    self.scann_settings = {k: v for k, v in dict(scann_settings or {}).items() if v is not None}
    self.scann_backend = scann_backend

  def kind_for(self, num_rows: int) -> str:
    return resolve_mips(self.mips, num_rows)

  def __call__(self, emb):
    if self.kind_for(int(np.shape(emb)[0])) == ScannIndex.kind:
      return ScannIndex(settings=self.scann_settings, backend=self.scann_backend).build(emb)
    return BruteForceIndex().build(emb)

  def load_or_build(self, directory, emb):
    """The index saved in `directory` (by `MipsIndex.save`) when it is of the kind this factory
    builds for `emb` and has its shape, else a new one built from `emb`."""
    if directory and tf.io.gfile.exists(os.path.join(directory, _META)):
      meta = _read_meta(directory)
      if (meta.get("kind") == self.kind_for(emb.shape[0]) and meta.get("num_rows") == emb.shape[0]
          and meta.get("dim") == emb.shape[1]):
        return load_index(directory)
    return self(emb)
