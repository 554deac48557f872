"""IndexHolder / IndexRefresher: consistency under concurrent reads, staleness, fault isolation.

Mechanics use a stand-in embedder (a tf.Module with one variable `scale`) whose "embedding" of block i
is `scale * e_i`: a snapshot is consistent iff its index rows and its query embedder carry the same
scale, which equals the training step the checkpoint was saved at.
"""
import realm_tf2  # noqa: F401

import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher as refresher_lib

N, D = 12, 4
BASE = np.eye(N, D, dtype=np.float32) + 0.01 * np.arange(N * D, dtype=np.float32).reshape(N, D)


class StandInEmbedder(tf.Module):

  def __init__(self, value=0.0):
    super().__init__()
    self.scale = tf.Variable(float(value))


def stand_in_embed(embedder, store):
  del store
  return BASE * embedder.scale.numpy()


def _store():
  return block_store_lib.BlockStore.from_arrays([[1]] * N, [[2, 3]] * N)


class Trainer:
  """Writes training checkpoints `ckpt-<step>` holding model/embedder/scale = step."""

  def __init__(self, model_dir):
    self.embedder = StandInEmbedder()
    self.ckpt = tf.train.Checkpoint(model=tf.train.Checkpoint(embedder=self.embedder))
    self.manager = tf.train.CheckpointManager(self.ckpt, model_dir, max_to_keep=10)
    self.step = 0

  def save(self, step):
    self.step = step
    self.embedder.scale.assign(float(step))
    return self.manager.save(checkpoint_number=step)


def _refresher(holder, model_dir, **kwargs):
  kwargs.setdefault("embed_fn", stand_in_embed)
  return refresher_lib.IndexRefresher(holder, model_dir, _store(), embedder_factory=StandInEmbedder,
                                      poll_interval_secs=0.02, **kwargs)


def _assert_consistent(snap):
  scale = float(snap.query_embedder.scale.numpy())
  assert scale == snap.step
  np.testing.assert_allclose(snap.index.embeddings, BASE * snap.step)


def test_holder_swap_get_and_version_order():
  holder = refresher_lib.IndexHolder()
  assert holder.get() is None and holder.version == 0
  s1 = refresher_lib.IndexSnapshot(1, 10, 0.0, None, None)
  assert holder.swap(s1) is None and holder.get() is s1
  with pytest.raises(ValueError, match="not newer"):
    holder.swap(refresher_lib.IndexSnapshot(1, 20, 0.0, None, None))
  assert holder.wait_for_version(1, timeout=0.01) and not holder.wait_for_version(2, timeout=0.01)


def test_consumer_never_blocks_and_sees_consistent_versions(tmp_path):
  model_dir = str(tmp_path)
  trainer = Trainer(model_dir)
  holder = refresher_lib.IndexHolder()

  def slow_embed(embedder, store):
    time.sleep(0.6)  # a refresh takes much longer than a read
    return stand_in_embed(embedder, store)

  refresher = _refresher(holder, model_dir, embed_fn=slow_embed, current_step_fn=lambda: trainer.step)
  trainer.save(1)
  refresher.start()
  assert holder.wait_for_version(1, timeout=30)
  reads, max_latency, seen, errors = [0], [0.0], [], []
  stop = threading.Event()

  def consumer():
    try:
      last = 0
      while not stop.is_set():
        t0 = time.perf_counter()
        snap = holder.get()
        max_latency[0] = max(max_latency[0], time.perf_counter() - t0)
        _assert_consistent(snap)
        assert snap.version >= last
        if snap.version != last:
          seen.append((snap.version, snap.step))
        last = snap.version
        reads[0] += 1
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  thread = threading.Thread(target=consumer)
  thread.start()
  for step in (2, 3, 4):
    trainer.save(step)
    assert holder.wait_for_version(step, timeout=30)
    deadline = time.time() + 30
    while (not seen or seen[-1][0] < step) and time.time() < deadline and not errors:
      time.sleep(0.01)
  stop.set()
  thread.join()
  refresher.stop(timeout=10)
  assert not refresher.is_alive() and not errors
  assert [v for v, _ in seen] == sorted(v for v, _ in seen) and seen[-1] == (4, 4)
  assert holder.get().step == 4 and refresher.failures == 0 and refresher.refreshes == 4
  ids, scores = holder.get().index.search(np.eye(1, D, dtype=np.float32), 1)
  assert ids[0, 0] == 0 and np.isclose(scores[0, 0], BASE[0, 0] * 4)
  # Reads kept flowing during 3 refreshes of >= 0.6 s each, and none waited for one (0.2 s is slack
  # for a busy CI machine; a blocked read would take >= 0.6 s).
  assert reads[0] > 10 and max_latency[0] < 0.2, (reads[0], max_latency[0])
  trainer.step = 9
  assert refresher.staleness()["steps"] == 5 and 0 <= refresher.staleness()["minutes"] < 5


def test_bad_checkpoint_keeps_last_good_and_retries_next(tmp_path):
  model_dir = str(tmp_path)
  trainer = Trainer(model_dir)
  holder = refresher_lib.IndexHolder()
  refresher = _refresher(holder, model_dir)
  trainer.save(1)
  assert refresher.poll_once() and holder.get().step == 1
  # (a) corrupt files of ckpt-2
  path = trainer.save(2)
  for f in tf.io.gfile.glob(path + ".*"):
    with open(f, "wb") as fh:
      fh.write(b"garbage")
  assert not refresher.poll_once()
  assert refresher.failures == 1 and "ckpt-2" in refresher.last_error and holder.get().step == 1
  assert not refresher.poll_once() and refresher.failures == 1  # not retried
  # (b) a checkpoint without the embedder in its object graph
  other = tf.train.Checkpoint(something=tf.Variable(1.0))
  other.write(os.path.join(model_dir, "ckpt-3"))
  tf.train.CheckpointManager(other, model_dir, max_to_keep=10, checkpoint_name="ckpt")
  tf.compat.v1.train.update_checkpoint_state(model_dir, os.path.join(model_dir, "ckpt-3"))
  assert not refresher.poll_once() and refresher.failures == 2
  assert "model/embedder" in refresher.last_error and holder.get().version == 1
  # The next good checkpoint is picked up.
  trainer.save(4)
  assert refresher.poll_once() and holder.get().step == 4 and holder.get().version == 2
  _assert_consistent(holder.get())


def test_exception_while_embedding_is_counted(tmp_path):
  model_dir = str(tmp_path)
  trainer = Trainer(model_dir)
  holder = refresher_lib.IndexHolder()

  def flaky(embedder, store):
    if embedder.scale.numpy() == 2:
      raise RuntimeError("device lost")
    return stand_in_embed(embedder, store)

  refresher = _refresher(holder, model_dir, embed_fn=flaky)
  refresher.start()
  trainer.save(1)
  assert holder.wait_for_version(1, timeout=30)
  trainer.save(2)
  deadline = time.time() + 30
  while refresher.failures == 0 and time.time() < deadline:
    time.sleep(0.02)
  assert refresher.failures == 1 and "device lost" in refresher.last_error
  assert holder.get().step == 1 and refresher.is_alive()
  trainer.save(3)
  assert holder.wait_for_version(2, timeout=30) and holder.get().step == 3
  refresher.stop(timeout=10)
  assert refresher.stats()["failures"] == 1 and refresher.stats()["refreshes"] == 2


def test_internal_snapshot_dir_keeps_newest(tmp_path):
  model_dir = str(tmp_path / "run")
  trainer = Trainer(model_dir)
  holder = refresher_lib.IndexHolder()
  refresher = _refresher(holder, model_dir, snapshot_dir=str(tmp_path / "snaps"), keep_snapshots=2)
  for step in (1, 2, 3):
    trainer.save(step)
    assert refresher.poll_once()
  assert sorted(os.listdir(tmp_path / "snaps")) == ["2", "3"]
  got = index_lib.read_block_emb_checkpoint(str(tmp_path / "snaps" / "3" / "encoded" / "encoded.ckpt"))
  np.testing.assert_allclose(got, BASE * 3)


# ----------------------------------------------------------------------------- external mode


class _ExportEmbedder(tf.Module):
  """Minimal embedder SavedModel: projected(...) -> {"default": [B, D]} of constant `value`."""

  def __init__(self, value):
    super().__init__()
    self.value = tf.Variable(float(value))

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 3)
  def projected(self, input_ids, input_mask, segment_ids):
    del input_mask, segment_ids
    b = tf.shape(input_ids)[0]
    return {"default": tf.fill([b, D], self.value)}


def _write_external_snapshot(model_dir, step, with_encoded=True):
  emb_dir = os.path.join(model_dir, "export", "encoded", str(step), "embedder")
  module = _ExportEmbedder(step)
  tf.saved_model.save(module, emb_dir, signatures={"projected": module.projected})
  if with_encoded:
    embed_corpus.write_encoded(emb_dir, BASE * step)
  return emb_dir


def test_external_mode_partial_and_vanishing_snapshots(tmp_path):
  model_dir = str(tmp_path)
  holder = refresher_lib.IndexHolder()
  deleting = {"on": False}

  def index_factory(emb):
    if deleting["on"]:  # the snapshot directory disappears while it is being read
      tf.io.gfile.rmtree(os.path.join(model_dir, "export", "encoded", "9"))
    return index_lib.BruteForceIndex().build(emb)

  refresher = refresher_lib.IndexRefresher(holder, model_dir, _store(), mode="external",
                                           index_factory=index_factory)
  assert not refresher.poll_once()  # nothing yet
  _write_external_snapshot(model_dir, 5)
  assert refresher.poll_once() and holder.get().step == 5
  snap = holder.get()
  np.testing.assert_allclose(snap.index.embeddings, BASE * 5)
  q = embed_corpus.make_embed_fn(snap.query_embedder)(
      {k: tf.ones([2, 3], tf.int32) for k in ("input_ids", "input_mask", "segment_ids")})
  np.testing.assert_allclose(q.numpy(), np.full([2, D], 5.0))
  # Partial snapshot: no encoded.ckpt.
  _write_external_snapshot(model_dir, 7, with_encoded=False)
  assert not refresher.poll_once() and refresher.failures == 1
  assert "partial snapshot" in refresher.last_error and holder.get() is snap
  # Deleted mid-read.
  _write_external_snapshot(model_dir, 9)
  deleting["on"] = True
  assert not refresher.poll_once() and refresher.failures == 2 and holder.get() is snap
  deleting["on"] = False
  # The in-memory snapshot survives its directory being deleted; readers keep working.
  tf.io.gfile.rmtree(os.path.join(model_dir, "export", "encoded", "5"))
  assert snap.index.search(np.eye(1, D, dtype=np.float32), 1)[0][0, 0] == 0
  # Wrong row count.
  emb_dir = _write_external_snapshot(model_dir, 10)
  embed_corpus.write_encoded(emb_dir, BASE[:5])
  assert not refresher.poll_once() and "corpus has 12" in refresher.last_error
  _write_external_snapshot(model_dir, 11)
  assert refresher.poll_once() and holder.get().step == 11 and holder.get().version == 2


def test_internal_mode_from_embedder_exports_with_default_embedding(tmp_path):
  model_dir = str(tmp_path)
  holder = refresher_lib.IndexHolder()
  refresher = refresher_lib.IndexRefresher(holder, model_dir, _store(), source="export",
                                           cls_id=2, sep_id=3, embed_kwargs={"batch_size": 5})
  for step in (4, 6):
    module = _ExportEmbedder(step)
    tf.saved_model.save(module, os.path.join(model_dir, "export", str(step), "embedder"),
                        signatures={"projected": module.projected})
  assert refresher.poll_once() and holder.get().step == 6  # newest export only
  np.testing.assert_allclose(holder.get().index.embeddings, np.full([N, D], 6.0))
  assert not refresher.poll_once()


class TwoTowerTrainer(Trainer):
  """Also saves a separate document tower `model/doc_embedder` whose scale is `doc_scale(step)`."""

  def __init__(self, model_dir, doc_scale):
    super().__init__(model_dir)
    self.doc_embedder = StandInEmbedder()
    self.doc_scale = doc_scale
    self.ckpt = tf.train.Checkpoint(model=tf.train.Checkpoint(embedder=self.embedder,
                                                              doc_embedder=self.doc_embedder))
    self.manager = tf.train.CheckpointManager(self.ckpt, model_dir, max_to_keep=10)

  def save(self, step):
    self.doc_embedder.scale.assign(float(self.doc_scale(step)))
    return super().save(step)


def test_separate_document_tower_embeds_the_corpus(tmp_path):
  """With `share_embedders=False` the corpus is embedded by the document tower and queries by the
  query tower: a checkpoint in which only the document tower changed changes block_emb."""
  model_dir = str(tmp_path)
  trainer = TwoTowerTrainer(model_dir, doc_scale=lambda step: 100 + (step > 5))
  holder = refresher_lib.IndexHolder()
  r = _refresher(holder, model_dir, checkpoint_doc_embedder_path=("model", "doc_embedder"))
  trainer.save(5)
  assert r.poll_once()
  snap = holder.get()
  assert float(snap.query_embedder.scale.numpy()) == 5.0  # the query tower
  np.testing.assert_allclose(snap.index.embeddings, BASE * 100)  # the document tower
  trainer.embedder.scale.assign(5.0)
  trainer.step = 6
  trainer.doc_embedder.scale.assign(101.0)
  trainer.manager.save(checkpoint_number=6)  # query tower unchanged, document tower moved
  assert r.poll_once()
  np.testing.assert_allclose(holder.get().index.embeddings, BASE * 101)
  assert float(holder.get().query_embedder.scale.numpy()) == 5.0
