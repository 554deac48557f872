"""Inverse Cloze Task input pipeline (original §3.2) from ORQA's `examples.tfr`.

Per block (`title_ids`, `token_ids`, `sentence_starts`), all in the tf.data graph:
  pick a sentence uniformly (stateless random keyed by seed + record index) -> query
  `[CLS] q[:Q-2] [SEP]` (Q=64, segments 0) -> with probability `mask_rate` (0.9) remove the sentence
  from the block -> block `[CLS] title [SEP] block [SEP]` (288; title kept first) -> an example whose
  sentence was removed from a 1-sentence block is dropped and COUNTED (`single_sentence_block`), as
  are blocks without tokens (`empty_block`) -> batch(drop_remainder).

Output features (per example): query_input_ids/query_input_mask/query_segment_ids int32 [Q];
block_input_ids/block_input_mask/block_segment_ids int32 [B]; mask_query int32 [] (1 if removed).
"""
import dataclasses
from typing import Optional

import realm_tf2  # noqa: F401
from absl import logging
import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.data import pipeline_stats

ICT_FEATURES = {
    "title_ids": tf.io.VarLenFeature(tf.int64),
    "token_ids": tf.io.VarLenFeature(tf.int64),
    "sentence_starts": tf.io.VarLenFeature(tf.int64),
}
_OK, _SINGLE_SENTENCE, _EMPTY_BLOCK, _BAD_STARTS = 0, 1, 2, 3
SKIP_REASONS = ("ok", "single_sentence_block", "empty_block", "sentence_starts_out_of_range")


@dataclasses.dataclass
class IctInputConfig:
  """Settings of the ICT pipeline.

  Attributes:
    query_seq_len / block_seq_len: 64 / 288.
    mask_rate: Probability of removing the query sentence from its block (0.9).
    seed: Seed of the stateless randomness.
    deterministic: Fixed order (no sloppy parallelism, seeded shuffle).
    shuffle_buffer: Record shuffle buffer (0 = none).
    repeat: Loop forever (training) or once (eval).
    filter_batch: Records per batch of the skip-counting stage.
  """
  query_seq_len: int = 64
  block_seq_len: int = 288
  mask_rate: float = 0.9
  seed: int = 0
  deterministic: bool = False
  shuffle_buffer: int = 1000
  repeat: bool = True
  filter_batch: int = 64


def ict_example(record, index, cls_id, sep_id, cfg: IctInputConfig):
  """Graph stage: one parsed `examples.tfr` record -> features + `skip_code`."""
  tokens = tf.cast(record["token_ids"], tf.int32)  # [T]
  title = tf.cast(record["title_ids"], tf.int32)  # [t]
  starts = tf.cast(record["sentence_starts"], tf.int32)  # [S]
  num_tokens = tf.size(tokens)
  num_sentences = tf.size(starts)
  ends = tf.concat([starts[1:], [num_tokens]], 0)  # [S]
  seed = tf.stack([tf.cast(cfg.seed, tf.int64), tf.cast(index, tf.int64)])
  pick = tf.random.stateless_uniform([], seed, 0, tf.maximum(num_sentences, 1), dtype=tf.int32)
  pad1 = lambda t: tf.concat([t, [0]], 0)  # noqa: E731  (index 0 of an empty vector reads 0)
  s, e = tf.gather(pad1(starts), pick), tf.gather(pad1(ends), pick)
  mask_query = tf.random.stateless_uniform(
      [], tf.stack([seed[0] + 1, seed[1]]), dtype=tf.float32) < cfg.mask_rate
  query = tokens[s:e][:cfg.query_seq_len - 2]
  block = tf.cond(mask_query, lambda: tf.concat([tokens[:s], tokens[e:]], 0), lambda: tokens)
  q = tokenization.bert_pack([query], cfg.query_seq_len, cls_id, sep_id)
  b = tokenization.bert_pack([title, block], cfg.block_seq_len, cls_id, sep_id)
  # Sentence starts must be increasing offsets inside the block (a corrupt record is counted).
  bad_starts = (tf.reduce_any(starts < 0) | tf.reduce_any(starts >= tf.maximum(num_tokens, 1)) |
                tf.reduce_any(starts[1:] <= starts[:-1]))
  code = tf.where((num_tokens == 0) | (num_sentences == 0), _EMPTY_BLOCK,
                  tf.where(bad_starts, _BAD_STARTS,
                           tf.where(mask_query & (num_sentences <= 1), _SINGLE_SENTENCE, _OK)))
  return {
      "query_input_ids": q["input_ids"], "query_input_mask": q["input_mask"],
      # ORQA feeds zeros as query segment ids.
      "query_segment_ids": tf.zeros_like(q["segment_ids"]),
      "block_input_ids": b["input_ids"], "block_input_mask": b["input_mask"],
      "block_segment_ids": b["segment_ids"],
      "mask_query": tf.cast(mask_query, tf.int32),
      "skip_code": tf.cast(code, tf.int32),
  }


def build_ict_dataset(examples_path: str, cls_id: int, sep_id: int, batch_size: int,
                      cfg: IctInputConfig, stats: pipeline_stats.PipelineStats,
                      input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
  """ICT training/eval dataset.

  Args:
    examples_path: ORQA `examples.tfr` (uncompressed TFRecord; glob/comma list allowed).
    cls_id, sep_id: Special ids of the vocab.
    batch_size: Per-replica batch (drop_remainder=True).
    cfg: `IctInputConfig`.
    stats: Receives `records`, `examples` and skips by reason.
    input_context: Per-host sharding (by record: ORQA has a single examples file).
  Returns:
    Dataset of dicts of int32 tensors with static shapes.
  """
  files = io_utils.list_shards(examples_path)
  ds = tf.data.TFRecordDataset(files)
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if cfg.repeat:
    ds = ds.repeat()
  if cfg.shuffle_buffer and cfg.repeat:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed)
  ds = ds.enumerate()

  def parse(index, serialized):
    record = tf.io.parse_single_example(serialized, ICT_FEATURES)
    record = {k: tf.sparse.to_dense(v) for k, v in record.items()}
    out = ict_example(record, index, cls_id, sep_id, cfg)
    out["record_index"] = tf.cast(index, tf.int64)
    return out

  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=cfg.deterministic)
  # A malformed record (e.g. float `token_ids`) fails inside parse; tf.data cannot branch on that, so
  # it is dropped here (the parse error is logged) and counted from its index gap in `count`.
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(cfg.filter_batch)

  def count(codes, indices):
    codes = codes.numpy()
    bad = stats.observe_record_indices(indices.numpy())
    missing = stats.settled_missing()
    if missing:
      logging.warning("ICT input %s: %d more record(s) never arrived, counted as "
                      "skipped/malformed_record (tf.data logged the parse error)", examples_path,
                      missing)
    stats.add("records", len(codes) + bad)
    for code, reason in enumerate(SKIP_REASONS):
      if code:
        stats.skip(reason, int(np.sum(codes == code)))
    stats.add("examples", int(np.sum(codes == _OK)))
    return codes == _OK

  def drop_counted(batch):
    keep = tf.py_function(count, [batch["skip_code"], batch["record_index"]], tf.bool)
    keep = tf.ensure_shape(keep, [None])
    return {k: tf.boolean_mask(v, keep) for k, v in batch.items()
            if k not in ("skip_code", "record_index")}

  ds = ds.map(drop_counted, num_parallel_calls=1)
  ds = ds.unbatch().batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = cfg.deterministic
  return ds.with_options(options).prefetch(2)


def make_input_config(model_config, **kwargs) -> IctInputConfig:
  """`IctInputConfig` with lengths from a `configs.ModelConfig`."""
  return IctInputConfig(query_seq_len=model_config.ict_query_seq_len,
                        block_seq_len=model_config.ict_block_seq_len, **kwargs)
