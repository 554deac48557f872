"""Standalone refresher: export -> versioned encoded snapshot -> IndexRefresher(external) loads it."""
import realm_tf2  # noqa: F401

import os

from absl import app
from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import tokenization
from realm_tf2.retrieval import refresh
from realm_tf2.retrieval import refresher as refresher_lib
from tests.retrieval import helpers


def _run(argv):
  fv = flags.FlagValues()  # a private flag set: the module defines no global flags at import
  refresh.define_flags(fv)
  fv(["refresh"] + argv)
  return refresh.main([], fv)


def test_parse_buckets():
  assert refresh.parse_buckets(["auto"]) == "auto"
  assert refresh.parse_buckets(["64", " 128", "288"]) == (64, 128, 288)
  for bad in (["64", "x"], ["0"], [], ["auto", "64"]):
    with pytest.raises(app.UsageError, match="--buckets"):
      refresh.parse_buckets(bad)
  with pytest.raises(app.UsageError, match="--max_buckets"):  # checked before any corpus is read
    _run(["--model_dir=/nonexistent/run", "--retrieval_corpus=/nonexistent/blocks-*",
          "--max_buckets=0"])


@pytest.mark.slow  # two full refresh runs through the SavedModel export (> 20 s on 2 cores)
def test_refresh_once_then_external_refresher(tmp_path, tiny_vocab_file):
  from realm_tf2.export import embedder_export
  model_dir = str(tmp_path / "run")
  titles, bodies = helpers.random_blocks(9, seed=5, max_body=200)
  pattern = helpers.write_corpus(str(tmp_path / "corpus"), titles, bodies, num_shards=2)
  embedder = helpers.tiny_embedder(seed=1)
  embedder_export.export_embedder(embedder, tiny_vocab_file, True,
                                  os.path.join(model_dir, "export", "3", "embedder"))
  # An incomplete export (no saved_model.pb) with a higher step is ignored.
  tf.io.gfile.makedirs(os.path.join(model_dir, "export", "8", "embedder"))
  common = [f"--model_dir={model_dir}", f"--retrieval_corpus={pattern}", "--batch_size=4",
            "--poll_interval_secs=0.05"]
  assert _run(common + ["--once", "--keep=2"]) == 0
  snap = os.path.join(model_dir, "export", "encoded", "3")
  assert sorted(os.listdir(os.path.join(model_dir, "export", "encoded"))) == ["3"]
  assert open(os.path.join(snap, "global_step.txt")).read().strip() == "3"
  emb = tf.train.load_checkpoint(
      os.path.join(snap, "embedder", "encoded", "encoded.ckpt")).get_tensor("block_emb")
  feats = [tokenization.pack_candidate_np(t, b, helpers.CLS_ID, helpers.SEP_ID)
           for t, b in zip(titles, bodies)]
  want = embedder({k: tf.constant(np.stack([f[k] for f in feats])) for k in feats[0]},
                  training=False).numpy()
  np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4)
  # The copied export still works as an embedder SavedModel.
  loaded = tf.saved_model.load(os.path.join(snap, "embedder"))
  assert "projected" in loaded.signatures

  # The training process picks the snapshot up in external mode and retrieves with it.
  holder = refresher_lib.IndexHolder()
  r = refresher_lib.IndexRefresher(holder, model_dir, mode="external")
  assert r.poll_once() and holder.get().step == 3
  queries = np.random.default_rng(0).normal(size=(4, emb.shape[1])).astype(np.float32)
  ids, _ = holder.get().index.search(queries, 3)
  np.testing.assert_array_equal(ids, np.argsort(-(queries @ emb.T), axis=1)[:, :3])

  # A newer export gets its own snapshot; --keep=1 prunes the older one.
  refresh.copy_tree(os.path.join(model_dir, "export", "3", "embedder"),
                    os.path.join(model_dir, "export", "5", "embedder"))
  assert _run(common + ["--once", "--keep=1", "--buckets=64,128,288"]) == 0
  assert sorted(os.listdir(os.path.join(model_dir, "export", "encoded"))) == ["5"]
  assert r.poll_once() and holder.get().step == 5 and holder.get().version == 2

  # With TRAINING_DONE and nothing new, the watcher exits at once.
  open(os.path.join(model_dir, "TRAINING_DONE"), "w").close()
  assert _run(common) == 0
