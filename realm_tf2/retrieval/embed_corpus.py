"""Embeds every block of the retrieval corpus -> `block_emb` float32 [N, 128] -> `encoded/encoded.ckpt`.

Input layout is the document layout of original §1.2: `[CLS] title [SEP] body [SEP]`, at most 288,
title kept first (`tokenization.bert_pack`). Blocks are **bucketed by packed length** (by default up
to `DEFAULT_MAX_BUCKETS` lengths chosen from the corpus by `choose_buckets`; or fixed ones, e.g.
64/128/192/288) so a short block is not padded to 288 — transformer cost is ~linear-to-quadratic in
T, so on a corpus of mostly short blocks this is several times faster. One tf.data pipeline feeds
static-shape batches ([global_batch, bucket_len], the one part-filled batch padded with a repeated
row flagged invalid, as the original padded with doc 0; see `_batch_plan`); rows are scattered back
in corpus order.

The embedder is a `RealmEmbedder` (any callable model on the three inputs) or an exported embedder
SavedModel (path or loaded object, `projected` signature). Runs under an optional tf.distribute strategy.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import os
import time
import weakref

from absl import logging
import numpy as np
import tensorflow as tf

from realm_tf2 import accel
from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.retrieval import index as index_lib

DEFAULT_BUCKETS = (64, 128, 192, 288)
# `buckets="auto"`: `choose_buckets` picks at most this many lengths from the corpus itself.
AUTO_BUCKETS = "auto"
# Where each bucket is compiled (XLA, a strategy), the per-bucket penalty keeps the count lower;
# the non-XLA step traces once for all lengths, so more buckets only cut padding (docs/scaling.md).
DEFAULT_MAX_BUCKETS = 16
ENCODED_SUBDIR = "encoded"
ENCODED_CKPT_NAME = "encoded.ckpt"
# Beside encoded.ckpt: a ScaNN index of the same rows (`MipsIndex.save`), written by the standalone
# refresher so that trainers load it instead of rebuilding it.
INDEX_SUBDIR = "index"


# embedder -> {(global_batch, strategy id, xla): compiled step}; reused across refreshes/warm-ups of the
# same embedder object so its tf.function is traced once.
_STEP_CACHE = weakref.WeakKeyDictionary()
# `embed_blocks(xla=None)` compiles with XLA from this corpus size on (see its docstring).
XLA_MIN_BLOCKS = 2048


def _is_keras_embedder(embedder) -> bool:
  return not isinstance(embedder, str) and "projected" not in (getattr(embedder, "signatures", None)
                                                               or {})


def make_embed_fn(embedder):
  """Returns fn(features dict of int32 [B, T]) -> float32 [B, D] for an embedder of any kind.

  Args:
    embedder: a Keras model (e.g. `RealmEmbedder`), an export path (str), or a loaded SavedModel with a
      `projected` signature.
  """
  if isinstance(embedder, str):
    embedder = tf.saved_model.load(embedder)
  signatures = getattr(embedder, "signatures", None)
  if signatures is not None and "projected" in signatures:
    projected = signatures["projected"]
    return lambda f: projected(input_ids=f["input_ids"], input_mask=f["input_mask"],
                               segment_ids=f["segment_ids"])["default"]
  if callable(embedder):
    return lambda f: tf.cast(embedder(f, training=False), tf.float32)
  raise TypeError(f"cannot embed with {type(embedder).__name__}: need a Keras model or an embedder "
                  "SavedModel with a 'projected' signature")


def special_ids_from_embedder(embedder):
  """(cls_id, sep_id) from an embedder export's `tokenization_info` vocab (path or loaded object)."""
  if isinstance(embedder, str):
    embedder = tf.saved_model.load(embedder)
  info = embedder.signatures["tokenization_info"]()
  return special_ids_from_vocab(info["vocab_file"].numpy().decode("utf-8"))


def special_ids_from_vocab(vocab_file):
  vocab = {t: i for i, t in enumerate(tokenization.load_vocab(vocab_file))}
  missing = [t for t in ("[CLS]", "[SEP]") if t not in vocab]
  if missing:
    raise ValueError(f"{vocab_file}: vocab lacks {missing}")
  return vocab["[CLS]"], vocab["[SEP]"]


def packed_lengths(store, seq_len=tokenization.CANDIDATE_SEQ_LEN):
  """int64 [N]: length of `[CLS] title [SEP] body [SEP]` after greedy truncation to seq_len."""
  return np.minimum(store.title_lengths() + store.body_lengths(), seq_len - 3) + 3


def assign_buckets(lengths, buckets):
  """int [N] index into `buckets` (sorted lengths) of the smallest bucket >= length."""
  buckets = np.asarray(sorted(buckets))
  if lengths.size and lengths.max() > buckets[-1]:
    raise ValueError(f"length {lengths.max()} exceeds the largest bucket {buckets[-1]}")
  return np.searchsorted(buckets, lengths, side="left")


def plan_tokens(lengths, buckets, global_batch):
  """Token slots (bucket length x batch) of `_batch_plan` for these lengths and buckets.

  The plan sorts rows longest bucket first and runs batch i at the bucket of its first row, so the
  cost depends only on the batch heads h_i = i*B-th longest length: B * sum_i ceil_bucket(h_i).
  """
  heads = np.sort(np.asarray(lengths))[::-1][::global_batch]  # [ceil(N/B)]
  buckets = np.asarray(sorted(buckets))
  return int(global_batch * buckets[assign_buckets(heads, buckets)].sum())


def choose_buckets(lengths, global_batch, seq_len=tokenization.CANDIDATE_SEQ_LEN,
                   max_buckets=DEFAULT_MAX_BUCKETS, multiple=8, bucket_penalty_tokens=0):
  """Bucket lengths for this corpus that minimise the batch plan's token slots (exact).

  With the cost of `plan_tokens`, only the batch heads matter. Candidates are the heads rounded up
  to `multiple` (8: TPU-friendly shapes; capped at seq_len); a DP over the sorted distinct
  candidates v_1 < ... < v_m with head counts c_j picks at most `max_buckets` of them, always v_m:
    f[k][j] = min_i f[k-1][i] + v_j * (c_{i+1} + ... + c_j)   (v_j the k-th smallest bucket)
  in O(max_buckets * m^2) with m <= seq_len / multiple, and returns the k minimising
  B * f[k][m] + k * bucket_penalty_tokens. More buckets never cost more tokens, but where every shape is
  compiled (XLA, TPU) each is one more program per embedder, and the refresher compiles them again
  for every snapshot: the penalty is that compile expressed in tokens, so a small corpus gets few
  buckets and a large one up to `max_buckets`.
  (Hand-written: tf.data's bucket_by_sequence_length takes fixed boundaries and chooses none.)

  Args:
    lengths: int [N] packed block lengths (`packed_lengths`).
    global_batch: B of the plan.
    seq_len: Longest allowed bucket.
    max_buckets: K >= 1.
    multiple: Bucket lengths are multiples of this (or seq_len).
    bucket_penalty_tokens: Cost of one more bucket, in token slots (0 = only tokens count).
  Returns:
    Sorted tuple of at most K bucket lengths; the largest covers the longest block.
  """
  if max_buckets < 1:
    raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
  lengths = np.asarray(lengths)
  if lengths.size == 0:
    return (int(seq_len),)
  if lengths.max() > seq_len:
    raise ValueError(f"block length {lengths.max()} exceeds seq_len {seq_len}")
  heads = np.sort(lengths)[::-1][::global_batch]
  rounded = np.minimum(-(-heads // multiple) * multiple, seq_len)
  values, counts = np.unique(rounded, return_counts=True)  # v_1 < ... < v_m, c_j
  m = len(values)
  prefix = np.concatenate([[0], np.cumsum(counts)])  # prefix[j] = c_1 + ... + c_j
  inf = float("inf")
  # cost[k][j]: heads v_1..v_j covered by k buckets, the largest being v_j (j is 1-based).
  cost = np.full([max_buckets + 1, m + 1], inf)
  back = np.zeros([max_buckets + 1, m + 1], np.int64)
  cost[0][0] = 0.0
  for k in range(1, max_buckets + 1):
    for j in range(1, m + 1):
      for i in range(j):
        c = cost[k - 1][i] + float(values[j - 1]) * float(prefix[j] - prefix[i])
        if c < cost[k][j]:
          cost[k][j], back[k][j] = c, i
  total = global_batch * cost[:, m] + np.arange(max_buckets + 1) * float(bucket_penalty_tokens)
  k = int(np.argmin(total))
  chosen, j = [], m
  while k > 0:
    chosen.append(int(values[j - 1]))
    j, k = int(back[k][j]), k - 1
  return tuple(sorted(chosen))


def _batch_plan(which, buckets, global_batch):
  """[(bucket_len, rows int64 [global_batch], valid bool [global_batch])] covering every row once.

  Rows sorted by bucket, longest first (corpus order within a bucket), cut into batches of
  `global_batch`; each batch runs at the bucket of its first row, and only the last batch is
  part-filled (padded with its first row, flagged invalid: static batch shape for TPU). This
  computes the fewest tokens (bucket length x batch slots) of any static-shape plan: with N_j rows
  in bucket j or longer, any plan needs at least ceil(N_j / B) batches of length >= len_j, and its
  cost is B * sum_j (len_j - len_{j-1}) * (#batches of length >= len_j), a sum this plan meets
  term by term (the padding it saves on the refresh benchmark's corpus: docs/scaling.md).
  (Hand-written: tf.data's bucket_by_sequence_length leaves a part-filled batch in every bucket.)
  """
  which = np.asarray(which)
  order = np.argsort(-which, kind="stable").astype(np.int64)  # [N] longest bucket first
  plan = []
  for s in range(0, len(order), global_batch):
    rows = order[s:s + global_batch]
    bucket_len = int(buckets[which[rows[0]]])
    valid = np.arange(global_batch) < len(rows)  # [global_batch]
    rows = np.concatenate([rows, np.full(global_batch - len(rows), rows[0], np.int64)])
    plan.append((bucket_len, rows, valid))
  return plan


def _dataset(store, plan, global_batch, cls_id, sep_id, seq_len):
  """tf.data over the batch plan -> (features int32 [B, bucket_len], rows int32 [B], valid bool [B]).

  One pipeline for all buckets (the map is traced once; the bucket length is data).
  """

  def gen():
    # Host side only slices the flat arrays; packing happens in the tf.data graph (bert_pack).
    for bucket_len, r, v in plan:
      t = [store.title(i) for i in r]
      b = [store.body(i) for i in r]
      yield (np.concatenate(t), np.array([len(x) for x in t], np.int64),
             np.concatenate(b), np.array([len(x) for x in b], np.int64), r, v, bucket_len)

  sig = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([global_batch], tf.int64),
         tf.TensorSpec([None], tf.int32), tf.TensorSpec([global_batch], tf.int64),
         tf.TensorSpec([global_batch], tf.int64), tf.TensorSpec([global_batch], tf.bool),
         tf.TensorSpec([], tf.int32))

  def pack(t_flat, t_len, b_flat, b_len, r, v, bucket_len):
    title = tf.RaggedTensor.from_row_lengths(t_flat, t_len)  # [B, (t)]
    body = tf.RaggedTensor.from_row_lengths(b_flat, b_len)  # [B, (b)]
    # Truncate as at seq_len (title first), then keep only the bucket's length (all rows fit in it).
    feats = tokenization.bert_pack([title, body], seq_len, cls_id, sep_id)  # [B, seq_len]
    feats = {k: x[:, :bucket_len] for k, x in feats.items()}  # [B, bucket_len]
    return feats, tf.cast(r, tf.int32), v

  ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
  ds = ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # One private tf.data thread: packing is cheap next to the encoder, and tf.data's shared pool
  # competing with the compute threads slows some runs down by up to half (docs/scaling.md).
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  return ds.prefetch(2).with_options(options)


def embed_blocks(store, embedder, cls_id, sep_id, batch_size=128,
                 seq_len=tokenization.CANDIDATE_SEQ_LEN, buckets=AUTO_BUCKETS, strategy=None,
                 stats=None, xla=None, max_buckets=DEFAULT_MAX_BUCKETS, bucket_penalty_tokens=None,
                 cpu_accel="auto"):
  """Embeds all blocks of `store`.

  Args:
    store: `BlockStore` (N blocks).
    embedder: see `make_embed_fn`.
    cls_id, sep_id: special token ids.
    batch_size: Global batch (rounded up to a multiple of the replica count).
    seq_len: Candidate length (288); also the truncation length.
    buckets: Padded lengths (seq_len is always added as the largest), or "auto" (default):
      `choose_buckets` picks at most `max_buckets` lengths that minimise the padded tokens of this
      corpus. `(seq_len,)` disables bucketing.
    strategy: Optional tf.distribute strategy; the embed step runs in `strategy.run`.
    stats: Optional dict, filled with blocks, seconds, blocks_per_sec, `buckets` (rows per bucket by
      their own length; `_batch_plan` may run a few in a longer batch), `bucket_lengths`,
      `padded_tokens` and `real_tokens` (token slots of the plan vs. block lengths),
      first_batch_seconds and steady_blocks_per_sec (after the first batch).
    xla: Compile one XLA program per bucket (Keras embedders, no strategy). None = only where the
      CPU speed-ups of `realm_tf2.accel` do not apply (an accelerator, or `cpu_accel="off"`) and
      for corpora of at least `XLA_MIN_BLOCKS` blocks: the refresher embeds with a NEW embedder per
      snapshot, so each refresh pays the compiles again, which a small corpus does not win back. The threshold
      is a conservative choice, not a measured crossover (docs/scaling.md): large models gain
      from `xla=True` well below it.
    max_buckets: At most this many buckets with `buckets="auto"`.
    bucket_penalty_tokens: `choose_buckets`'s cost of one more bucket; None = two full-length
      batches where every bucket is compiled (XLA or a strategy), else 0.
    cpu_accel: Mode of `realm_tf2.accel` for the step without XLA ("auto", "on", "off"): a Keras
      embedder gets the CPU speed-ups (`accel.apply`) where `accel.is_enabled` allows.

  Returns:
    float32 [N, D] in corpus order.
  """
  start = time.time()
  n = store.num_blocks
  if n == 0:
    raise ValueError("cannot embed an empty retrieval corpus")
  replicas = strategy.num_replicas_in_sync if strategy is not None else 1
  global_batch = int(np.ceil(batch_size / replicas)) * replicas
  lengths = packed_lengths(store, seq_len)
  if xla is None:
    # On a CPU the step without XLA but with realm_tf2.accel is the faster one (docs/scaling.md).
    use_xla = n >= XLA_MIN_BLOCKS and not accel.is_enabled(cpu_accel, False, strategy)
  else:
    use_xla = bool(xla)
  if isinstance(buckets, str):
    if buckets != AUTO_BUCKETS:
      raise ValueError(f"buckets must be a sequence of lengths or {AUTO_BUCKETS!r}, got {buckets!r}")
    if bucket_penalty_tokens is None:
      # Each shape is one XLA compile (or one trace per replica under a strategy); the dynamic-T
      # tf.function traces once for all. Penalty: two full-length batches per bucket, a little
      # more than one compile costs in token slots (docs/scaling.md), erring towards fewer.
      compiled_per_shape = (use_xla and _is_keras_embedder(embedder)) or strategy is not None
      bucket_penalty_tokens = 2 * global_batch * seq_len if compiled_per_shape else 0
    buckets = choose_buckets(lengths, global_batch, seq_len, max_buckets,
                             bucket_penalty_tokens=bucket_penalty_tokens)
  buckets = tuple(sorted({int(b) for b in buckets if b < seq_len})) + (seq_len,)
  embed_fn = make_embed_fn(embedder)
  which = assign_buckets(lengths, buckets)
  if _is_keras_embedder(embedder):
    accel.apply_if_enabled(embedder, cpu_accel, use_xla, strategy)
  step = _get_step(embedder, embed_fn, global_batch, strategy, use_xla)
  out = None
  filled = np.zeros(n, np.int64)
  per_bucket = {int(b): int(np.sum(which == i)) for i, b in enumerate(buckets)}
  ds = _dataset(store, _batch_plan(which, buckets, global_batch), global_batch, cls_id, sep_id,
                seq_len)
  first_batch_done = None
  if strategy is None:
    for feats, r, v in ds:
      emb = step(feats).numpy()  # [B, D]
      r, v = r.numpy(), v.numpy()
      out = _scatter(out, n, emb[v], r[v], filled)
      first_batch_done = first_batch_done or (time.time(), int(v.sum()))
  else:
    # Rows travel with the features (-1 = padding) so each replica's slice stays aligned.
    ds = ds.map(lambda f, r, v: (f, tf.where(v, r, -1)))
    for feats, r in strategy.experimental_distribute_dataset(ds):
      emb, rows_g = step(feats, r)
      emb, rows_g = emb.numpy(), rows_g.numpy()  # [B, D], [B]
      keep = rows_g >= 0
      out = _scatter(out, n, emb[keep], rows_g[keep], filled)
      first_batch_done = first_batch_done or (time.time(), int(keep.sum()))
  if out is None or np.any(filled != 1):
    bad = np.nonzero(filled != 1)[0]
    raise RuntimeError(f"embedding covered {np.sum(filled == 1)} of {n} blocks exactly once; "
                       f"first bad rows {bad[:5].tolist()}")
  if stats is not None:
    end = time.time()
    secs = end - start
    # Steady state excludes the first batch (pipeline start-up and tracing on a new embedder).
    t1, n1 = first_batch_done
    stats.update(blocks=n, seconds=secs, blocks_per_sec=n / max(secs, 1e-9), buckets=per_bucket,
                 bucket_lengths=list(buckets), padded_tokens=plan_tokens(lengths, buckets, global_batch),
                 real_tokens=int(lengths.sum()),
                 first_batch_seconds=t1 - start,
                 steady_blocks_per_sec=(n - n1) / max(end - t1, 1e-9) if n > n1 else None)
  return out


def _get_step(embedder, embed_fn, global_batch, strategy, xla=True):
  """The (cached) compiled embedding step for this embedder / batch / strategy."""
  key = (global_batch, id(strategy), bool(xla))
  try:
    cache = _STEP_CACHE.setdefault(embedder, {})
  except TypeError:  # not weak-referenceable: no caching
    cache = {}
  if key in cache:
    return cache[key]
  if strategy is None:
    if xla and _is_keras_embedder(embedder):
      # XLA, one program per bucket length (static [B, T]; at most len(buckets) compiles per
      # embedder object; the refresher builds a new embedder per snapshot, so it compiles again).
      step = tf.function(lambda f: embed_fn(f), jit_compile=True)
    else:
      # No XLA (a small corpus, `xla=False`, or a SavedModel signature, whose graph is not ours to
      # compile): one trace for every bucket (dynamic T).
      spec = {k: tf.TensorSpec([global_batch, None], tf.int32)
              for k in ("input_ids", "input_mask", "segment_ids")}
      step = tf.function(lambda f: _embed_in_kernels_scope(embed_fn, f), input_signature=[spec])
  else:
    @tf.function
    def step(dist_feats, dist_rows):
      out = strategy.run(lambda f: _embed_in_kernels_scope(embed_fn, f), args=(dist_feats,))  # [B/R, D]
      # Concatenate the local replicas' results on the host (no cross-device collective needed,
      # which also keeps this safe when the caller's strategy runs other collectives).
      return (tf.concat(strategy.experimental_local_results(out), axis=0),  # [B, D]
              tf.concat(strategy.experimental_local_results(dist_rows), axis=0))  # [B]
  cache[key] = step
  return step


def _embed_in_kernels_scope(embed_fn, feats):
  """embed_fn(feats) traced inside `accel.kernels_scope()`: an embedder switched by `accel.apply`
  runs the C++ GELU and attention-softmax kernels at inference too (this graph is never exported)."""
  with accel.kernels_scope():
    return embed_fn(feats)


def _scatter(out, n, emb, rows, filled):
  if out is None:
    out = np.zeros([n, emb.shape[1]], np.float32)
  out[rows] = emb
  np.add.at(filled, rows, 1)
  return out


def write_encoded(parent_dir, block_emb, expected_rows=None):
  """Writes `parent_dir/encoded/encoded.ckpt` (key `block_emb`) atomically; returns the prefix.

  Staged beside `parent_dir/encoded` and renamed into place (`io_utils.atomic_dir`).

  Args:
    parent_dir: Usually an embedder export dir (`.../embedder`).
    block_emb: float32 [N, D].
    expected_rows: If given, N must equal it (the retrieval corpus size).
  """
  block_emb = np.asarray(block_emb, np.float32)
  if expected_rows is not None and block_emb.shape[0] != expected_rows:
    raise ValueError(f"block_emb has {block_emb.shape[0]} rows but the corpus has {expected_rows}")
  target = os.path.join(parent_dir, ENCODED_SUBDIR)
  created_parent = not tf.io.gfile.exists(parent_dir)
  try:
    with io_utils.atomic_dir(target) as staging:
      index_lib.write_block_emb_checkpoint(os.path.join(staging, ENCODED_CKPT_NAME), block_emb)
  except Exception:
    # A failed write (e.g. ENOSPC) must not leave an empty `<step>/` that looks like a snapshot.
    if created_parent and tf.io.gfile.exists(parent_dir):
      tf.io.gfile.rmtree(parent_dir)
    raise
  return os.path.join(target, ENCODED_CKPT_NAME)


def encoded_path(parent_dir):
  """`parent_dir/encoded/encoded.ckpt`."""
  return os.path.join(parent_dir, ENCODED_SUBDIR, ENCODED_CKPT_NAME)


def index_path(parent_dir):
  """`parent_dir/encoded/index`: the saved MIPS index of `encoded.ckpt`'s rows, if any."""
  return os.path.join(parent_dir, ENCODED_SUBDIR, INDEX_SUBDIR)


def embed_corpus(store, embedder, output_dir, cls_id=None, sep_id=None, vocab_file=None, **kwargs):
  """Embeds the corpus and writes `output_dir/encoded/encoded.ckpt`; returns (prefix, block_emb).

  Special ids come from `cls_id/sep_id`, else `vocab_file`, else the export's `tokenization_info`.
  `store` is a `BlockStore` or a retrieval-corpus glob. kwargs go to `embed_blocks`.
  """
  from realm_tf2.retrieval import block_store as block_store_lib  # pylint: disable=g-import-not-at-top
  if isinstance(store, str):
    store = block_store_lib.BlockStore.from_retrieval_corpus(store)
  if isinstance(embedder, str):
    embedder = tf.saved_model.load(embedder)
  if cls_id is None or sep_id is None:
    cls_id, sep_id = (special_ids_from_vocab(vocab_file) if vocab_file
                      else special_ids_from_embedder(embedder))
  emb = embed_blocks(store, embedder, cls_id, sep_id, **kwargs)
  prefix = write_encoded(output_dir, emb, expected_rows=store.num_blocks)
  logging.info("wrote %s: block_emb %s", prefix, emb.shape)
  return prefix, emb
