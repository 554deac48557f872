"""Malformed records in every input format of contracts §2: counted and reported by reason, or an
error naming the file and record; never a crash deep in a stack trace, never a silent drop.

Covered elsewhere (kept, not duplicated): knowledge JSONL incl. broken JSON / non-UTF-8 / missing and
wrong-typed fields / empty body (tests/data_prep/test_build_knowledge_corpus.py::test_bad_input),
QA JSONL (tests/data_prep/test_prepare_qa.py::test_bad_lines_error_and_counted_skips,
tests/data/test_qa_pipeline.py::test_read_qa_file_errors_name_line), predictions JSONL
(tests/evaluation/test_evaluate_cli.py::test_bad_line_names_file_and_line), JSONL reader
(tests/test_io_utils.py).
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2.data import ict_pipeline
from realm_tf2.data import pipeline_stats
from realm_tf2.data import qa_pipeline
from realm_tf2.retrieval import block_store as block_store_lib
from tests import tiny_fixtures
from tests.reliability import helpers as h


def _int64(v):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=v))


def _float(v):
  return tf.train.Feature(float_list=tf.train.FloatList(value=v))


def _bytes(v):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))


def _example(**features):
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def test_record_index_gaps_are_counted_once_and_reordering_is_not():
  stats = pipeline_stats.PipelineStats()
  assert stats.observe_record_indices([0, 1, 2]) == 0
  assert stats.observe_record_indices([5, 6]) == 2  # 3 and 4 never arrived
  assert stats.observe_record_indices([8, 7]) == 0  # out of order within a batch
  assert stats.observe_record_indices([10]) == 1  # 9 missing ...
  assert stats.observe_record_indices([9, 11]) == 0  # ... until it arrives late: un-counted
  assert stats.skipped == {"malformed_record": 2}
  # The pipelines warn once per record still missing `lag` records later: 9 (late) never, 3 and 4
  # once they are settled, 12 (genuinely dropped after a late arrival) as well.
  assert stats.settled_missing(lag=9) == 0  # next index 12: nothing below 3 is missing
  assert stats.observe_record_indices([13]) == 1  # 12 missing
  assert stats.settled_missing(lag=9) == 2  # 3, 4 (below 14 - 9 = 5)
  assert stats.settled_missing(lag=9) == 0  # each reported once
  assert stats.observe_record_indices([30]) == 16 and stats.settled_missing(lag=9) == 9  # 12, 14..21
  assert stats.skipped == {"malformed_record": 19}


def test_ict_examples_malformed_records_are_counted(tmp_path):
  vocab = tiny_fixtures.tiny_vocab()
  path = str(tmp_path / "examples.tfr")
  good = dict(title_ids=_int64([20, 21]), token_ids=_int64(list(range(20, 29))),
              sentence_starts=_int64([0, 3, 6]))
  records = [
      _example(**good),
      _example(title_ids=_int64([20]), token_ids=_float([1.5, 2.5]), sentence_starts=_int64([0])),
      _example(title_ids=_int64([20])),  # no token_ids / sentence_starts
      _example(**dict(good, sentence_starts=_int64([0, 50]))),  # start outside the block
      b"\x00not a proto",
      _example(**good),
  ]
  with tf.io.TFRecordWriter(path) as w:
    for r in records:
      w.write(r)
  h.write_vocab(str(tmp_path / "vocab.txt"))
  stats = pipeline_stats.PipelineStats("ict")
  cfg = ict_pipeline.IctInputConfig(query_seq_len=16, block_seq_len=32, mask_rate=0.0, seed=0,
                                    deterministic=True, shuffle_buffer=0, repeat=False)
  cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
  ds = ict_pipeline.build_ict_dataset(path, cls_id, sep_id, 1, cfg, stats)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == 2  # the two good records
  assert stats.skipped == {"malformed_record": 2, "empty_block": 1,
                           "sentence_starts_out_of_range": 1}
  assert stats.counts["records"] == 6 and stats.counts["examples"] == 2
  assert "malformed_record" in stats.report()


def test_retrieval_corpus_bad_records_name_the_shard(tmp_path):
  shard = str(tmp_path / "blocks-00000-of-00001")
  with tf.io.TFRecordWriter(shard, options="GZIP") as w:
    w.write(_example(title=_bytes([b"t"]), body=_bytes([b"b"]), title_token_ids=_int64([1]),
                     body_token_ids=_int64([2])))
    w.write(_example(title=_bytes([b"t"]), body=_bytes([b"b"]), title_token_ids=_float([1.0]),
                     body_token_ids=_int64([2])))
  with pytest.raises(ValueError, match="blocks-00000-of-00001"):
    block_store_lib.BlockStore.from_retrieval_corpus(shard)
  missing = str(tmp_path / "m-00000-of-00001")
  with tf.io.TFRecordWriter(missing, options="GZIP") as w:
    w.write(_example(title=_bytes([b"t"]), title_token_ids=_int64([1]), body_token_ids=_int64([2])))
  with pytest.raises(ValueError, match="m-00000-of-00001"):
    block_store_lib.BlockStore.from_retrieval_corpus(missing)


def test_orqa_blocks_non_utf8_names_record(tmp_path):
  path = h.write_blocks_tfr(str(tmp_path / "blocks.tfr"), ["ok", b"caf\xe9"])
  with pytest.raises(ValueError, match=r"blocks.tfr: record 1 is not valid UTF-8"):
    qa_pipeline.read_block_texts(path)


def test_pretrain_records_malformed_are_counted(tiny_vocab_file, tmp_path):
  from tests.data import test_pretrain_pipeline as tpp  # reuse its hand-made corpus and holder
  from realm_tf2 import tokenization
  from realm_tf2.data import pretrain_pipeline as pp
  tok = tokenization.RealmTokenizer(tiny_vocab_file)
  doc, sents = tpp.DOC, tpp.SENTS
  good = tpp._example("john", doc, sents, [tpp._span(doc, "paris")])
  text = _bytes([doc.encode()])
  records = [
      good,
      _example(title=_bytes([b"x"]), text=text, sentence_byte_start=_float([0.0]),  # wrong type
               sentence_byte_limit=_int64([5]), span_byte_start=_int64([0]),
               span_byte_limit=_int64([4])),
      _example(title=_bytes([b"x"]), sentence_byte_start=_int64([0]),  # no `text`
               sentence_byte_limit=_int64([5]), span_byte_start=_int64([0]),
               span_byte_limit=_int64([4])),
      tpp._example("x", doc, [(0, 10)], [(500, 504)]),  # span outside the text
      tpp._example("x", doc, [(900, 950)], [(900, 904)]),  # sentence past the end of the text
      tpp._example("x", "", [], []),  # empty text
      good,
  ]
  path = str(tmp_path / "pretrain-00000-of-00001")
  with tf.io.TFRecordWriter(path, options="GZIP") as w:
    for r in records:
      w.write(r)
  titles = ["paris", "mary", "book", "other"]
  store = block_store_lib.BlockStore.from_arrays(tok.tokenize_np(titles), tok.tokenize_np(titles),
                                                 titles=titles, bodies=titles)
  from realm_tf2.retrieval import index as index_lib
  index = index_lib.BruteForceIndex()
  index.build(np.array([[4., 0.], [3., 0.], [2., 0.], [1., 0.]], np.float32))
  holder = tpp.FixedHolder(tpp.Snapshot(1, 0, 0.0, lambda f: np.tile([[1., 0.]], [len(f["input_ids"]), 1]),
                                        index))
  cfg = pp.PretrainInputConfig(num_candidates=3, max_masks=4, query_seq_len=16, candidate_seq_len=20,
                               joint_seq_len=32, retrieval_batch_size=8, deterministic=True,
                               repeat=False, shuffle_buffer=0)
  stats = pipeline_stats.PipelineStats()
  out = list(pp.build_pretrain_dataset(path, tok, holder, store, batch_size=1, cfg=cfg,
                                       stats=stats).as_numpy_iterator())
  assert len(out) == 2
  skipped = stats.skipped
  # wrong type, missing `text`, span / sentence offsets past the end of the text -> malformed_record;
  # empty text -> no_valid_spans.
  assert skipped == {"malformed_record": 4, "no_valid_spans": 1}, skipped
  assert stats.counts["records"] == len(records)  # every record accounted for
  assert stats.counts["examples"] == 2
