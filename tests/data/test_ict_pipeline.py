"""ICT pipeline: layouts, sentence removal rate, single-sentence drop counting."""
import realm_tf2  # noqa: F401
import numpy as np
import tensorflow as tf

from realm_tf2.data import ict_pipeline
from realm_tf2.data import pipeline_stats

CLS, SEP = 2, 3


def _record(title, tokens, starts):
  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
  return tf.train.Example(features=tf.train.Features(feature={
      "title_ids": ints(title), "token_ids": ints(tokens), "sentence_starts": ints(starts)
  })).SerializeToString()


def test_ict_layout_removal_rate_and_skips(tmp_path):
  path = str(tmp_path / "examples.tfr")
  # Block: 3 sentences [10 11] [20 21 22] [30]; a 1-sentence block [40 41]; an empty block.
  with tf.io.TFRecordWriter(path) as w:
    for _ in range(200):
      w.write(_record([7, 8], [10, 11, 20, 21, 22, 30], [0, 2, 5]))
    w.write(_record([9], [40, 41], [0]))
    w.write(_record([9], [], []))
  cfg = ict_pipeline.IctInputConfig(query_seq_len=8, block_seq_len=12, seed=1, deterministic=True,
                                    repeat=False, shuffle_buffer=0)
  stats = pipeline_stats.PipelineStats()
  ds = ict_pipeline.build_ict_dataset(path, CLS, SEP, batch_size=10, cfg=cfg, stats=stats)
  batches = list(ds.as_numpy_iterator())
  ex = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert ex["query_input_ids"].shape[1:] == (8,) and ex["block_input_ids"].shape[1:] == (12,)
  sentences = {10: [10, 11], 20: [20, 21, 22], 30: [30]}
  n_masked = 0
  for q, qm, b, bs, m in zip(ex["query_input_ids"], ex["query_input_mask"], ex["block_input_ids"],
                             ex["block_segment_ids"], ex["mask_query"]):
    if q[1] == 40:
      continue
    sent = sentences[int(q[1])]
    np.testing.assert_array_equal(q[:len(sent) + 2], [CLS] + sent + [SEP])
    assert qm.sum() == len(sent) + 2
    full = [10, 11, 20, 21, 22, 30]
    body = [t for t in full if t not in sent] if m else full
    expected = [CLS, 7, 8, SEP] + body + [SEP]
    np.testing.assert_array_equal(b[:len(expected)], expected)
    assert b[len(expected):].sum() == 0
    np.testing.assert_array_equal(bs[:len(expected)], [0] * 4 + [1] * (len(body) + 1))
    n_masked += int(m)
  rate = n_masked / 200
  assert 0.82 <= rate <= 0.97, rate
  counts = stats.counts
  assert counts["records"] == 202
  assert stats.skipped.get("empty_block") == 1
  single = stats.skipped.get("single_sentence_block", 0)
  assert counts["examples"] + stats.as_metrics()["skipped_total"] == 202
  # batch 10 with drop_remainder: every example counted as emitted is in a batch or the remainder.
  assert len(ex["query_input_ids"]) == counts["examples"] // 10 * 10
  assert single in (0, 1)
