"""REALM pre-training input pipeline (original §1.3, §1.4, §1.2) as one tf.data graph.

The original ran this as separate gRPC "example generator" processes (original §1.5, §1.6). Here it
is a tf.data pipeline on the training host(s):

  GZIP TFRecord shards (per-host file sharding via `InputContext`)
  -> [graph, per record]  parse; pick one (salient span, sentence) pair uniformly (stateless random
     keyed by seed + record index); tokenize the sentence with byte offsets; [MASK] every wordpiece
     inside the span; targets of the first `max_masks`; skip reason code instead of dropping
  -> batch(retrieval_batch_size)
  -> [host, one `tf.py_function` per batch]  count skips; embed the masked queries with the CURRENT
     snapshot's query embedder (`IndexHolder.get()`, never blocks on a refresh); MIPS top-k; remove
     the record's own document (uid); prepend the null document; gather token ids from the
     `BlockStore`; pack candidate [k, Lc] and joint [k, Lj] inputs with the NumPy packers
  -> unbatch -> batch(per-replica batch, drop_remainder) -> prefetch.

Nothing is silently lost: every record that does not become an example is counted by reason in a
`PipelineStats` (`no_valid_spans`, `no_masked_token`, `mask_out_of_range`, `duplicate_retrievals`,
`too_few_candidates`). The retrieval stage is host Python because the index (ScaNN or NumPy/TF
brute force) and the snapshot swap live there; everything the device sees is int32 with static shapes.

Output features (per example; K=num_candidates, Q/C/J = query/candidate/joint lengths, M=max_masks):
  query_input_ids/query_input_mask/query_segment_ids            int32 [Q]
  candidate_input_ids/candidate_input_mask/candidate_segment_ids int32 [K, C]
  joint_input_ids/joint_input_mask/joint_segment_ids            int32 [K, J]
  mlm_positions/mlm_targets/mlm_mask                            int32 [M]
  retrieved_block_ids int32 [K] (corpus rows; -1 for the null document)
  index_version int32 [], index_step int32 []  (snapshot used for this example)

`task.retrieval=device` (`build_device_pretrain_dataset`): the host only reads, masks and batches;
the train step embeds the masked queries with the picking query tower (the snapshot's by default,
`task.device_retrieval.pick_with`) and retrieves and packs on the accelerator
(`retrieval/device_retrieval.py`). Same records, same masking, but no `py_function`, no
candidate_*/joint_*/retrieved_block_ids/index_* features. Instead, per example:
  source_uid int32 []  (`device_retrieval.graph_doc_uid` of the record's title and text)
  pipeline_counts int32 [len(DEVICE_COUNT_KEYS)]  (records read and skipped by reason since the
    previous example, this one included; the train step sums them, see `RealmTask`)
"""
import dataclasses
import hashlib
import threading
import time
import weakref
from typing import Callable, Dict, List, Optional

import realm_tf2  # noqa: F401
from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.data import pipeline_stats
from realm_tf2.retrieval import device_retrieval

# Skip reasons decided in the graph stage (code 0 = usable).
SKIP_REASONS = ("ok", "no_valid_spans", "no_masked_token", "mask_out_of_range")
_OK, _NO_VALID_SPANS, _NO_MASKED_TOKEN, _MASK_OUT_OF_RANGE = range(4)
# Device mode: what `pipeline_counts` counts, in this order (keys of `PipelineStats.as_metrics`).
DEVICE_COUNT_KEYS = ("records",) + tuple(f"skipped/{r}" for r in SKIP_REASONS[1:]) + (
    "skipped/malformed_record",)
DEVICE_FEATURES = ("query_input_ids", "query_input_mask", "query_segment_ids", "mlm_positions",
                   "mlm_targets", "mlm_mask", "source_uid", "pipeline_counts")

PRETRAIN_FEATURES = {
    "title": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "text": tf.io.FixedLenFeature([], tf.string),
    "sentence_byte_start": tf.io.VarLenFeature(tf.int64),
    "sentence_byte_limit": tf.io.VarLenFeature(tf.int64),
    "span_byte_start": tf.io.VarLenFeature(tf.int64),
    "span_byte_limit": tf.io.VarLenFeature(tf.int64),
}


@dataclasses.dataclass
class PretrainInputConfig:
  """Settings of the REALM input pipeline.

  Attributes:
    num_candidates: K, including the null document (8).
    max_masks: predicted masked tokens per query (10).
    query_seq_len / candidate_seq_len / joint_seq_len: 96 / 288 / 384.
    retrieval_batch_size: queries embedded and searched per `py_function` call (original 64).
    seed: Seed of the stateless randomness (span choice, shuffles).
    deterministic: Fixed order (no sloppy interleave, seeded shuffles) for reproducible runs.
    shuffle_buffer: Record shuffle buffer (0 = none).
    repeat: Loop over the shards forever (training) or read them once (eval).
  """
  num_candidates: int = 8
  max_masks: int = 10
  query_seq_len: int = 96
  candidate_seq_len: int = 288
  joint_seq_len: int = 384
  retrieval_batch_size: int = 32
  seed: int = 0
  deterministic: bool = False
  shuffle_buffer: int = 1000
  repeat: bool = True


def split_shards(files: List[str], num_eval_shards: int, is_training: bool) -> List[str]:
  """The first `num_eval_shards` sorted shards are held out for evaluation (original: 5)."""
  files = sorted(files)
  if num_eval_shards >= len(files):
    raise ValueError(f"{len(files)} pre-training shards but num_eval_shards={num_eval_shards}: "
                     "no shard left for training")
  return files[num_eval_shards:] if is_training else files[:num_eval_shards]


def shard_files(files: List[str], input_context: Optional[tf.distribute.InputContext]):
  """Per-host files: shard i of n takes files[i::n] (falls back to record sharding if too few)."""
  if input_context is None or input_context.num_input_pipelines <= 1:
    return files, None
  n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
  if len(files) >= n:
    return files[i::n], None
  return files, (n, i)


def _query_features(record, index, tokenizer, cfg: PretrainInputConfig):
  """Graph stage: masked query of one parsed record. Returns a dict incl. `skip_code`."""
  text = record["text"]
  sent_start = record["sentence_byte_start"]  # [S]
  sent_limit = record["sentence_byte_limit"]  # [S]
  span_start = record["span_byte_start"]  # [P]
  span_limit = record["span_byte_limit"]  # [P]
  # Map each span to the FIRST sentence wholly containing it; crossing spans are dropped
  # (original §1.3).
  contains = ((sent_start[None, :] <= span_start[:, None]) &
              (span_limit[:, None] <= sent_limit[None, :]) &
              (span_start[:, None] < span_limit[:, None]))  # [P, S]
  valid = tf.reduce_any(contains, axis=1)  # [P]
  first_sentence = tf.argmax(tf.cast(contains, tf.int32), axis=1, output_type=tf.int32)  # [P]
  valid_spans = tf.cast(tf.where(valid)[:, 0], tf.int32)  # [V]
  num_valid = tf.size(valid_spans)
  seed = tf.stack([tf.cast(cfg.seed, tf.int64), tf.cast(index, tf.int64)])
  pick = tf.random.stateless_uniform([], seed, minval=0, maxval=tf.maximum(num_valid, 1),
                                     dtype=tf.int32)
  # Gathers from a possibly empty vector (index 0 of an empty one reads a padding zero).
  safe = lambda t, i: tf.gather(tf.concat([t, tf.zeros([1], t.dtype)], 0), i)  # noqa: E731
  span = safe(valid_spans, pick)
  sentence = tf.where(num_valid > 0, safe(first_sentence, span), 0)
  s0 = safe(sent_start, sentence)
  s1 = safe(sent_limit, sentence)
  rel_start = safe(span_start, span) - s0
  rel_limit = safe(span_limit, span) - s0
  sentence_text = tf.strings.substr(text, s0, tf.maximum(s1 - s0, 0), unit="BYTE")

  ids, starts, ends = tokenizer.tokenize_with_offsets(sentence_text)  # [T] each
  ids = tf.cast(ids, tf.int32)
  masked = (starts >= rel_start) & (ends <= rel_limit) & (ends > starts)  # [T]
  positions = tf.cast(tf.where(masked)[:, 0], tf.int32)  # [N_masked]
  num_masked = tf.size(positions)
  last = tf.reduce_max(tf.concat([positions, [-1]], 0))
  code = tf.where(num_valid == 0, _NO_VALID_SPANS,
                  tf.where(num_masked == 0, _NO_MASKED_TOKEN,
                           tf.where(last >= cfg.query_seq_len - 2, _MASK_OUT_OF_RANGE, _OK)))
  masked_ids = tf.where(masked, tokenizer.mask_id, ids)
  query = tokenization.bert_pack([masked_ids[:cfg.query_seq_len - 2]], cfg.query_seq_len,
                                 tokenizer.cls_id, tokenizer.sep_id)
  m = cfg.max_masks
  pos = positions[:m]
  pad = m - tf.size(pos)
  out = {
      "query_input_ids": query["input_ids"],
      "query_input_mask": query["input_mask"],
      "query_segment_ids": query["segment_ids"],
      # +1 for [CLS]: valid in query and joint coordinates alike.
      "mlm_positions": tf.pad(pos + 1, [[0, pad]]),
      "mlm_targets": tf.pad(tf.gather(ids, pos), [[0, pad]]),
      "mlm_mask": tf.pad(tf.ones_like(pos), [[0, pad]]),
      "skip_code": tf.cast(code, tf.int32),
      "title": record["title"],
      "text": text,
  }
  for k in ("mlm_positions", "mlm_targets", "mlm_mask"):
    out[k] = tf.ensure_shape(out[k], [m])
  return out


# Eager calls of one Keras model from several threads are not safe on CPU in TF 2.20: with oneDNN on,
# an eager LayerNormalization (FusedBatchNormV3) run by 3 threads with changing batch sizes corrupts
# the heap within seconds ("free(): invalid pointer", the process aborts); a fixed batch size,
# TF_ENABLE_ONEDNN_OPTS=0 or a `tf.function` do not. The retrieval stage runs 2 `py_function` calls
# at once and the validation input shares the snapshot embedder, so a Keras embedder is always run
# as a graph function here (as the SavedModel `projected` signature already is), traced once per
# embedder object. Any other Python callable is serialised by a lock.
_GRAPH_FNS = weakref.WeakKeyDictionary()  # Keras embedder -> its tf.function
_GRAPH_FNS_LOCK = threading.Lock()
_OPAQUE_CALL_LOCK = threading.Lock()
_QUERY_KEYS = ("input_ids", "input_mask", "segment_ids")


def _graph_fn(model):
  """A `tf.function` over int32 [B, T] query inputs calling `model(features, training=False)`."""
  with _GRAPH_FNS_LOCK:
    fn = _GRAPH_FNS.get(model)
    if fn is None:
      model_ref = weakref.ref(model)  # the cache must not keep an old snapshot's embedder alive

      def call(input_ids, input_mask, segment_ids):
        feats = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
        return model_ref()(feats, training=False)

      # Batch sizes vary: after the second one the trace is relaxed to [None, T].
      fn = tf.function(call, reduce_retracing=True)
      _GRAPH_FNS[model] = fn
  return fn


def _embed_queries(query_embedder, feats: Dict[str, np.ndarray]) -> np.ndarray:
  """Embeds int32 query inputs with a snapshot embedder of any supported kind; thread-safe.

  Accepts a Keras model (run as a graph function, see `_graph_fn`), a loaded SavedModel with a
  `projected` signature, a concrete function with keyword inputs returning `{"default": ...}`, or
  any callable on a feature dict (called under a lock).
  """
  inputs = {k: tf.constant(v, tf.int32) for k, v in feats.items()}
  fn = query_embedder
  if hasattr(fn, "signatures") and "projected" in getattr(fn, "signatures", {}):
    fn = fn.signatures["projected"]
  if isinstance(fn, tf.types.experimental.ConcreteFunction) or hasattr(fn, "structured_input_signature"):
    out = fn(**inputs)
  elif isinstance(fn, tf_keras.layers.Layer) and set(inputs) == set(_QUERY_KEYS):
    out = _graph_fn(fn)(**inputs)
  else:
    with _OPAQUE_CALL_LOCK:
      try:
        out = fn(inputs, training=False)
      except TypeError:
        out = fn(inputs)
  if isinstance(out, dict):
    out = out["default"]
  return np.asarray(out, np.float32)


def _doc_uid(title: bytes, text: bytes) -> int:
  """uid of the record's source document: low 63 bits of sha1(f"{title} <sep> {text}") (original
  §1.4)."""
  digest = hashlib.sha1(title + b" <sep> " + text).hexdigest()
  return io_utils.uid_to_int63(int(digest, 16))


class RetrievalFeaturizer:
  """Host stage: retrieval + candidate/joint featurization for a batch of masked queries.

  Args:
    holder: `IndexHolder`-like object; `get()` returns a snapshot with `version`, `step`,
      `query_embedder`, `index` (`index.search(emb [B,D], k) -> (ids [B,k], scores [B,k])`).
    block_store: `BlockStore` of the retrieval corpus (rows = index rows).
    tokenizer_ids: (cls_id, sep_id).
    cfg: `PretrainInputConfig`.
    stats: `PipelineStats` receiving counts and skip reasons.
    mask_id: The [MASK] id. Given with `title_ids_fn`, a retrieved block with the record's title
      that contains the query's sentence (its wordpieces, masked ones as their targets or as
      wildcards past `max_masks`) is a trivial retrieval too, whatever the uids say: the sentence
      "originates from" that block (§1.4). This removes the source block when the pre-training text
      is the knowledge corpus but its records are whole documents and the blocks their chunks, where
      the uids differ. The title keeps another document that states the same sentence (a real
      candidate) in. Without them, only the uid test of the original applies.
    title_ids_fn: list of title bytes -> list of int wordpiece arrays (the corpus tokenizer's).
  """

  def __init__(self, holder, block_store, tokenizer_ids, cfg: PretrainInputConfig,
               stats: pipeline_stats.PipelineStats, mask_id: Optional[int] = None,
               title_ids_fn=None):
    self.holder = holder
    self.store = block_store
    self.cls_id, self.sep_id = tokenizer_ids
    self.mask_id = mask_id if title_ids_fn is not None else None
    self.title_ids_fn = title_ids_fn
    self.cfg = cfg
    self.stats = stats
    self._warned_no_trivial = False
    k, c, j = cfg.num_candidates, cfg.candidate_seq_len, cfg.joint_seq_len
    empty = np.zeros([0], np.int32)
    # The null document: empty title and body (candidate `[CLS][SEP][SEP]`, original §1.4).
    self._null_candidate = tokenization.bert_pack_np([empty, empty], c, self.cls_id, self.sep_id)
    self.output_spec = {
        "query_input_ids": [cfg.query_seq_len], "query_input_mask": [cfg.query_seq_len],
        "query_segment_ids": [cfg.query_seq_len],
        "candidate_input_ids": [k, c], "candidate_input_mask": [k, c], "candidate_segment_ids": [k, c],
        "joint_input_ids": [k, j], "joint_input_mask": [k, j], "joint_segment_ids": [k, j],
        "mlm_positions": [cfg.max_masks], "mlm_targets": [cfg.max_masks], "mlm_mask": [cfg.max_masks],
        "retrieved_block_ids": [k], "index_version": [], "index_step": [],
    }

  def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """numpy batch (with `skip_code`, `title`, `text`) -> dict of int32 [n_ok, ...] arrays."""
    cfg, k = self.cfg, self.cfg.num_candidates
    codes = batch["skip_code"]
    bad = self.stats.observe_record_indices(batch["record_index"]) if "record_index" in batch else 0
    missing = self.stats.settled_missing()
    if missing:
      logging.warning("pre-training input: %d more record(s) never arrived, counted as "
                      "skipped/malformed_record (tf.data logged the parse error)", missing)
    self.stats.add("records", len(codes) + max(bad, 0))
    for code, reason in enumerate(SKIP_REASONS):
      if code:
        self.stats.skip(reason, int(np.sum(codes == code)))
    ok = np.nonzero(codes == _OK)[0]
    out = {name: np.zeros([0] + shape, np.int32) for name, shape in self.output_spec.items()}
    if not len(ok):
      return out
    t0 = time.perf_counter()
    snapshot = self.holder.get()
    self.stats.observe_wait(time.perf_counter() - t0)
    self.stats.set_last(index_version=int(snapshot.version), index_step=int(snapshot.step),
                        index_wall_time=float(getattr(snapshot, "wall_time", 0.0) or 0.0))
    query = {"input_ids": batch["query_input_ids"][ok], "input_mask": batch["query_input_mask"][ok],
             "segment_ids": batch["query_segment_ids"][ok]}
    q_emb = _embed_queries(snapshot.query_embedder, query)  # [n, D]
    # k retrieved = (k-1) kept + 1 spare for the trivial retrieval (the null doc takes slot 0).
    ids, _ = snapshot.index.search(q_emb, min(k, self.store.num_blocks))  # [n, k]
    ids = np.asarray(ids, np.int64)
    rows: Dict[str, List[np.ndarray]] = {name: [] for name in self.output_spec}
    for i, r in enumerate(ok):
      doc_uid = _doc_uid(bytes(batch["title"][r]), bytes(batch["text"][r]))
      retrieved = ids[i]
      uids = self.store.uids[retrieved]
      if len(set(uids.tolist())) != len(uids):
        self.stats.skip("duplicate_retrievals")
        continue
      n_q = int(batch["query_input_mask"][r].sum())
      q_tokens = batch["query_input_ids"][r][1:n_q - 1]
      trivial = uids == doc_uid  # [k]
      if self.mask_id is not None:
        sentence, known = self._query_sentence(q_tokens, batch, r)
        by_content = np.array([not t and sentence_in_block(self.store.body(row), sentence, known)
                               for row, t in zip(retrieved, trivial)], bool)  # [k]
        if by_content.any():  # rare: tokenize the record's title only then
          title = self.title_ids_fn([bytes(batch["title"][r])])[0]
          by_content &= np.array([np.array_equal(self.store.title(row), title)
                                  for row in retrieved], bool)
        self.stats.add("trivial_retrievals_removed_by_content", int(by_content.sum()))
        trivial |= by_content
      kept = retrieved[~trivial][:k - 1]
      self.stats.add("trivial_retrievals_removed", int(np.sum(trivial)))
      if len(kept) < k - 1:
        self.stats.skip("too_few_candidates")
        continue
      cands = [self._null_candidate]
      joints = [tokenization.bert_pack_np([q_tokens, np.zeros([0], np.int32)], cfg.joint_seq_len,
                                          self.cls_id, self.sep_id)]
      for row in kept:
        body = self.store.body(row)
        cands.append(tokenization.bert_pack_np([self.store.title(row), body], cfg.candidate_seq_len,
                                               self.cls_id, self.sep_id))
        # Reader input: query + body, NO title (original §1.2, §6.2).
        joints.append(tokenization.bert_pack_np([q_tokens, body], cfg.joint_seq_len,
                                                self.cls_id, self.sep_id))
      for prefix, packs in (("candidate_", cands), ("joint_", joints)):
        for key in ("input_ids", "input_mask", "segment_ids"):
          rows[prefix + key].append(np.stack([p[key] for p in packs]))
      for key in ("query_input_ids", "query_input_mask", "query_segment_ids",
                  "mlm_positions", "mlm_targets", "mlm_mask"):
        rows[key].append(batch[key][r])
      rows["retrieved_block_ids"].append(np.concatenate([[-1], kept]).astype(np.int32))
      rows["index_version"].append(np.int32(snapshot.version))
      rows["index_step"].append(np.int32(snapshot.step))
    if rows["index_version"]:
      out = {name: np.stack(v).astype(np.int32) for name, v in rows.items()}
      self.stats.add("examples", len(rows["index_version"]))
    self._warn_if_never_trivial()
    return out

  def _query_sentence(self, q_tokens, batch, r):
    """The query's sentence wordpieces with the masked ones restored from the targets; `known` is
    False where a [MASK] has no target (past max_masks): a wildcard in `sentence_in_block`."""
    sentence = np.array(q_tokens, np.int64)
    for pos, target, real in zip(batch["mlm_positions"][r], batch["mlm_targets"][r],
                                 batch["mlm_mask"][r]):
      if real:
        sentence[pos - 1] = target  # positions count [CLS]
    return sentence, sentence != self.mask_id

  def _warn_if_never_trivial(self):
    counts = self.stats.counts
    if (not self._warned_no_trivial and counts.get("examples", 0) >= 1000
        and not counts.get("trivial_retrievals_removed", 0)):
      self._warned_no_trivial = True
      logging.warning("pre-training input: no retrieved block was the source of its query in the "
                      "first %d examples; the pre-training text seems disjoint from the knowledge "
                      "corpus, so no trivial retrieval will be removed (fine if that is intended)",
                      counts["examples"])


def sentence_in_block(body_ids: np.ndarray, sentence: np.ndarray, known: np.ndarray) -> bool:
  """Whether `sentence` occurs contiguously in `body_ids` (positions with known=False match any id).

  Args:
    body_ids: int [L] a block's body wordpieces.
    sentence: int [S] the query sentence's wordpieces.
    known: bool [S].
  """
  body_ids = np.asarray(body_ids)
  if len(sentence) == 0 or len(sentence) > len(body_ids):
    return False
  windows = np.lib.stride_tricks.sliding_window_view(body_ids, len(sentence))  # [L-S+1, S]
  return bool(np.any(np.all((windows == sentence) | ~known, axis=1)))


def _masked_queries(file_pattern, tokenizer, cfg: PretrainInputConfig, input_context, files,
                    with_source_uid: bool = False) -> tf.data.Dataset:
  """Records -> masked queries (`_query_features` + `record_index`), one element per record read;
  records tf.data could not parse are dropped here and show up as gaps in `record_index`.
  `with_source_uid` adds the record's `graph_doc_uid` (device mode)."""
  files = sorted(files if files is not None else io_utils.list_shards(file_pattern))
  files, record_shard = shard_files(files, input_context)
  ds = tf.data.Dataset.from_tensor_slices(files)
  if cfg.repeat and not cfg.deterministic:
    ds = ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)
  if cfg.repeat:
    ds = ds.repeat()
  ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                     cycle_length=min(len(files), 4), block_length=1,
                     num_parallel_calls=None if cfg.deterministic else tf.data.AUTOTUNE,
                     deterministic=cfg.deterministic)
  if record_shard is not None:
    ds = ds.shard(*record_shard)
  if cfg.shuffle_buffer and cfg.repeat:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed)
  ds = ds.enumerate()

  def graph_stage(index, serialized):
    record = tf.io.parse_single_example(serialized, PRETRAIN_FEATURES)
    record = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v)
              for k, v in record.items()}
    out = _query_features(record, index, tokenizer, cfg)
    out["record_index"] = tf.cast(index, tf.int64)
    if with_source_uid:
      out["source_uid"] = device_retrieval.graph_doc_uid(out["title"], out["text"])
    return out

  ds = ds.map(graph_stage, num_parallel_calls=tf.data.AUTOTUNE, deterministic=cfg.deterministic)
  # A malformed record (wrong feature type, missing `text`, sentence offsets past the end of the
  # text, invalid UTF-8 for the tokenizer) fails inside graph_stage; tf.data cannot branch on that,
  # so it is dropped here (the error is logged) and counted as `skipped/malformed_record` from its
  # index gap by the host stage (`PipelineStats.observe_record_indices`; device mode:
  # `_count_records`).
  ds = ds.ignore_errors(log_warning=True)
  return ds


def build_pretrain_dataset(file_pattern: str,
                           tokenizer: tokenization.RealmTokenizer,
                           holder,
                           block_store,
                           batch_size: int,
                           cfg: PretrainInputConfig,
                           stats: pipeline_stats.PipelineStats,
                           input_context: Optional[tf.distribute.InputContext] = None,
                           files: Optional[List[str]] = None) -> tf.data.Dataset:
  """The REALM pre-training dataset (see module docstring).

  Args:
    file_pattern: glob(s) of the GZIP pre-training shards (ignored if `files` is given).
    tokenizer: `RealmTokenizer` of the model's vocab.
    holder: `IndexHolder` (its current snapshot is read once per retrieval batch).
    block_store: `BlockStore` aligned with the index rows.
    batch_size: Per-replica batch (the caller derives it from the InputContext).
    cfg: `PretrainInputConfig`.
    stats: Receives counts/skips.
    input_context: Per-host file sharding.
    files: Explicit shard list (e.g. the held-out eval shards).
  Returns:
    A dataset of dicts of int32 tensors with a static batch dimension (`drop_remainder=True`).
  """
  ds = _masked_queries(file_pattern, tokenizer, cfg, input_context, files)
  ds = ds.batch(cfg.retrieval_batch_size)
  featurizer = RetrievalFeaturizer(holder, block_store, (tokenizer.cls_id, tokenizer.sep_id), cfg,
                                   stats, mask_id=tokenizer.mask_id,
                                   title_ids_fn=lambda titles: tokenizer.tokenize_np(
                                       [t.decode("utf-8", "replace") for t in titles]))
  names = list(featurizer.output_spec)
  in_names = ["skip_code", "record_index", "title", "text", "query_input_ids", "query_input_mask",
              "query_segment_ids", "mlm_positions", "mlm_targets", "mlm_mask"]

  def host_fn(*tensors):
    batch = {n: t.numpy() for n, t in zip(in_names, tensors)}
    out = featurizer(batch)
    return [out[n] for n in names]

  def retrieval_stage(batch):
    outs = tf.py_function(host_fn, [batch[n] for n in in_names], [tf.int32] * len(names))
    result = {}
    for name, t in zip(names, outs):
      result[name] = tf.ensure_shape(t, [None] + featurizer.output_spec[name])
    return result

  # One py_function call at a time keeps the host stage ordered (deterministic) and the snapshot
  # reads sequential; parallel calls would contend for the GIL anyway.
  ds = ds.map(retrieval_stage, num_parallel_calls=1 if cfg.deterministic else 2,
              deterministic=cfg.deterministic)
  ds = ds.unbatch()
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = cfg.deterministic
  ds = ds.with_options(options)
  return ds.prefetch(2)


def _count_records(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Adds `pipeline_counts` [len(DEVICE_COUNT_KEYS)] to every usable record: the records read and
  skipped (by reason, malformed ones from `record_index` gaps) since the previous usable record,
  itself included; zeros on skipped records (they are filtered out next). A record a parallel map
  delivers after a later one was counted missing when the gap appeared: it counts -1 malformed then.
  Summed over all examples, the counts are those of every record before the last example."""
  reasons = tf.range(1, len(SKIP_REASONS), dtype=tf.int32)  # [S-1] codes of the skip reasons

  def step(state, record):
    max_index, pending = state  # int64 [], int32 [C]
    index, code = record["record_index"], record["skip_code"]
    gap = tf.cast(tf.where(index > max_index, index - max_index - 1, -1), tf.int32)  # []
    delta = tf.concat([[1 + gap], tf.cast(tf.equal(reasons, code), tf.int32), [gap]], 0)  # [C]
    pending = pending + delta
    ok = tf.equal(code, _OK)
    out = dict(record, pipeline_counts=tf.where(ok, pending, tf.zeros_like(pending)))
    return (tf.maximum(max_index, index), tf.where(ok, tf.zeros_like(pending), pending)), out

  init = (tf.constant(-1, tf.int64), tf.zeros([len(DEVICE_COUNT_KEYS)], tf.int32))
  return ds.scan(init, step)


def build_device_pretrain_dataset(file_pattern: str,
                                  tokenizer: tokenization.RealmTokenizer,
                                  batch_size: int,
                                  cfg: PretrainInputConfig,
                                  input_context: Optional[tf.distribute.InputContext] = None,
                                  files: Optional[List[str]] = None) -> tf.data.Dataset:
  """The REALM dataset of `task.retrieval=device`: masked queries only (see module docstring).

  Args: as `build_pretrain_dataset`, without holder, block store and stats (retrieval and its
    counts happen in the train step; records and skips travel as `pipeline_counts`).
  Returns:
    A dataset of dicts of int32 tensors (`DEVICE_FEATURES`) with a static batch dimension
    (`drop_remainder=True`).
  """
  ds = _masked_queries(file_pattern, tokenizer, cfg, input_context, files, with_source_uid=True)
  ds = _count_records(ds)
  ds = ds.filter(lambda record: tf.equal(record["skip_code"], _OK))
  ds = ds.map(lambda record: {name: tf.cast(record[name], tf.int32) for name in DEVICE_FEATURES})
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = cfg.deterministic
  ds = ds.with_options(options)
  return ds.prefetch(2)


def make_input_config(model_config, **kwargs) -> PretrainInputConfig:
  """`PretrainInputConfig` with lengths/k taken from a `configs.ModelConfig`."""
  return PretrainInputConfig(num_candidates=model_config.num_candidates,
                             max_masks=model_config.max_masks,
                             query_seq_len=model_config.query_seq_len,
                             candidate_seq_len=model_config.candidate_seq_len,
                             joint_seq_len=model_config.joint_seq_len, **kwargs)


Featurizer = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
