"""Storage faults: disk full (ENOSPC) while writing `encoded.ckpt` or a SavedModel export, and a
truncated checkpoint under the refresher -> clear error, no partial artefact visible, the trainer's
index stays on the last good snapshot. (Corrupt checkpoints, partial snapshots and snapshot
directories deleted mid-read are covered in tests/retrieval/test_refresher.py.)"""
import errno
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from realm_tf2.export import embedder_export
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher as refresher_lib
from realm_tf2 import configs
from tests.retrieval.test_refresher import BASE, Trainer, _assert_consistent, _refresher


def _enospc_after_partial_write(real_writer):
  """A writer that leaves a partial file where it was asked to write, then fails like a full disk."""
  def write(path, *args, **kwargs):
    del args, kwargs
    with tf.io.gfile.GFile(path + ".data-00000-of-00001", "wb") as f:
      f.write(b"\0" * 100)  # half-written
    raise OSError(errno.ENOSPC, "No space left on device", path)
  return write


def _listing(d):
  return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def test_enospc_writing_encoded_ckpt_leaves_no_partial_and_keeps_old(tmp_path, monkeypatch):
  parent = str(tmp_path / "embedder")
  good = embed_corpus.write_encoded(parent, BASE)  # a previous good encoded.ckpt
  before = _listing(parent)
  monkeypatch.setattr(index_lib, "write_block_emb_checkpoint",
                      _enospc_after_partial_write(index_lib.write_block_emb_checkpoint))
  with pytest.raises(OSError, match="No space left on device"):
    embed_corpus.write_encoded(parent, BASE * 2)
  assert _listing(parent) == before  # no staging dir, no half file
  np.testing.assert_allclose(index_lib.read_block_emb_checkpoint(good), BASE)


def _full_disk_save(obj, export_dir, *args, **kwargs):
  """`tf.saved_model.save` on a full disk: a partial saved_model.pb, then ENOSPC."""
  del obj, args, kwargs
  tf.io.gfile.makedirs(export_dir)
  with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
    f.write(b"partial")
  raise OSError(errno.ENOSPC, "No space left on device", export_dir)


def test_enospc_writing_export_leaves_no_partial_and_keeps_old(tmp_path, monkeypatch, tiny_vocab_file):
  bert = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                            intermediate_size=37)
  model = embedder_lib.RealmEmbedder(bert, 16, vocab_size=100)
  model({k: tf.ones([1, 4], tf.int32) for k in ("input_ids", "input_mask", "segment_ids")})
  out = str(tmp_path / "export" / "10" / "embedder")
  embedder_export.export_embedder(model, tiny_vocab_file, True, out)
  before = _listing(str(tmp_path / "export"))
  real_save = tf.saved_model.save

  monkeypatch.setattr(tf.saved_model, "save", _full_disk_save)
  with pytest.raises(OSError, match="No space left on device"):
    embedder_export.export_embedder(model, tiny_vocab_file, True, out)
  monkeypatch.setattr(tf.saved_model, "save", real_save)
  assert _listing(str(tmp_path / "export")) == before  # the old export is intact, nothing partial
  loaded = tf.saved_model.load(out)
  assert "projected" in loaded.signatures


def test_refresher_enospc_and_truncated_checkpoint_keep_last_good_index(tmp_path, monkeypatch, caplog):
  model_dir, snaps = str(tmp_path / "run"), str(tmp_path / "snaps")
  trainer = Trainer(model_dir)
  holder = refresher_lib.IndexHolder()
  refresher = _refresher(holder, model_dir, snapshot_dir=snaps)
  trainer.save(1)
  assert refresher.poll_once() and holder.get().step == 1
  # Disk full while the refresher writes its encoded.ckpt snapshot.
  real = index_lib.write_block_emb_checkpoint
  monkeypatch.setattr(index_lib, "write_block_emb_checkpoint", _enospc_after_partial_write(real))
  trainer.save(2)
  with caplog.at_level(logging.ERROR):
    assert not refresher.poll_once()
  assert "No space left on device" in refresher.last_error and refresher.failures == 1
  assert any("index refresh for step 2 failed" in r.getMessage() for r in caplog.records)
  assert holder.get().step == 1 and holder.get().version == 1  # still serving the last good index
  assert sorted(os.listdir(snaps)) == ["1"]  # no partial snapshot dir for step 2
  assert not [f for f in os.listdir(os.path.join(snaps, "1")) if f.startswith(".tmp")]
  monkeypatch.setattr(index_lib, "write_block_emb_checkpoint", real)
  # A truncated checkpoint (e.g. a copy cut short) is rejected the same way.
  path = trainer.save(3)
  data = tf.io.gfile.glob(path + ".data-*")[0]
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  assert not refresher.poll_once()
  assert refresher.failures == 2 and "ckpt-3" in refresher.last_error and holder.get().step == 1
  # Space back: the next checkpoint refreshes normally.
  trainer.save(4)
  assert refresher.poll_once() and holder.get().step == 4 and holder.get().version == 2
  _assert_consistent(holder.get())
  assert sorted(os.listdir(snaps)) == ["1", "4"]


def test_periodic_export_enospc_is_logged_and_training_continues(tmp_path, monkeypatch, caplog,
                                                                 tiny_vocab_file):
  """A full disk during a periodic `export/<step>` does not end the run: the failure is logged and
  counted (`export_failures` in metrics.jsonl), no partial `<step>/` is visible, and the next train
  loop retries; a failing FINAL export still raises."""
  from realm_tf2.training import export_actions  # pylint: disable=g-import-not-at-top
  bert = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                            intermediate_size=37)
  model = embedder_lib.RealmEmbedder(bert, 16, vocab_size=100)
  model({k: tf.ones([1, 4], tf.int32) for k in ("input_ids", "input_mask", "segment_ids")})
  step = tf.Variable(0, dtype=tf.int64)
  model_dir = str(tmp_path / "run")
  towers = export_actions.TowerExporter(lambda: model, None, tiny_vocab_file, do_lower_case=True)
  action = export_actions.ExportAction(model_dir, step, every=10, towers=towers, total_steps=30)
  real_save = tf.saved_model.save

  step.assign(10)
  action(None)
  assert action.exported == [10] and action.failures == 0
  monkeypatch.setattr(tf.saved_model, "save", _full_disk_save)
  step.assign(20)
  with caplog.at_level(logging.ERROR):
    action(None)  # no exception: training goes on
  assert action.failures == 1 and action.exported == [10]
  assert "export of step 20 failed" in caplog.text and "No space left on device" in caplog.text
  assert sorted(os.listdir(os.path.join(model_dir, "export"))) == ["10"]  # nothing partial
  step.assign(25)
  action(None)  # the next loop retries (still failing here)
  assert action.failures == 2
  monkeypatch.setattr(tf.saved_model, "save", real_save)
  action(None)  # disk freed: the retry succeeds
  assert action.exported == [10, 25]
  assert "projected" in tf.saved_model.load(os.path.join(model_dir, "export", "25", "embedder")).signatures
  monkeypatch.setattr(tf.saved_model, "save", _full_disk_save)
  step.assign(30)
  with pytest.raises(OSError, match="No space left"):
    action.export(30)  # the final export (run_ict / run_realm call export() directly) raises
  assert sorted(os.listdir(os.path.join(model_dir, "export"))) == ["10", "25"]
