r"""Standalone document-index refresher (`realm/refresh_doc_embeds.py` of original §1.7).

Watches `model_dir/export/<step>/embedder` (embedder exports written by the trainer), and for each new
newest export writes a versioned snapshot

  model_dir/export/encoded/<step>/embedder/...                 copy of the embedder export
  model_dir/export/encoded/<step>/embedder/encoded/encoded.ckpt  block_emb float32 [N, 128]

staged in `model_dir/export/encoded/<step>.tmp-<uuid>/` (`io_utils.atomic_dir`) and renamed into place when complete, so
readers (`IndexRefresher(mode="external")`) never see a partial snapshot. Keeps the newest
`--keep` snapshots. Exits when `model_dir/TRAINING_DONE` exists (after a last check), or after one
refresh with `--once`.

Differences from the original: the trainer's export is copied, not moved (the trainer's own
`export/<step>` stays intact); polling sleeps (`--poll_interval_secs`) instead of busy-waiting; blocks are
embedded in length buckets.

  python -m realm_tf2.retrieval.refresh --model_dir=gs://b/run --retrieval_corpus='gs://b/corpus/blocks-*'
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import yaml

from realm_tf2 import io_utils
from realm_tf2.export import common as export_common
from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher as refresher_lib

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS):
  """Defines this CLI's flags on `fv` (the absl FLAGS when run as a script); importing the module
  defines none, so it can be imported beside other CLIs."""
  d = dict(flag_values=fv)
  flags.DEFINE_string("model_dir", None,
                      "Training run directory (watches model_dir/export/<step>/embedder).", **d)
  flags.DEFINE_string("retrieval_corpus", None, "Glob of the GZIP TFRecord retrieval-corpus shards.",
                      **d)
  flags.DEFINE_integer("batch_size", 128,
                       "Global embedding batch size (original predict_batch_size 256).", **d)
  flags.DEFINE_list("buckets", ["auto"], "Padded lengths of the length buckets (e.g. 64,128,192,288), "
                    "or 'auto': at most --max_buckets lengths chosen from the corpus to minimise "
                    "padding (embed_corpus.choose_buckets).", **d)
  flags.DEFINE_integer("max_buckets", embed_corpus.DEFAULT_MAX_BUCKETS,
                       "With --buckets=auto: at most this many buckets (>= 1; under a "
                       "--distribution_strategy each bucket is one more compiled program).", **d)
  flags.DEFINE_integer("candidate_seq_len", 288,
                       "Document input length [CLS] title [SEP] body [SEP].", **d)
  flags.DEFINE_integer("keep", 3, "Keep the newest N snapshots in model_dir/export/encoded.", **d)
  flags.DEFINE_float("poll_interval_secs", 30.0, "Sleep between polls when there is no new export.",
                     **d)
  flags.DEFINE_integer("start_at_step", 0, "Ignore exports of earlier steps.", **d)
  flags.DEFINE_bool("once", False, "Refresh from the newest export once (waiting for one) and exit.",
                    **d)
  flags.DEFINE_float("max_wait_secs", 0.0, "With --once: give up after this long without an export "
                     "(0 = wait forever).", **d)
  flags.DEFINE_string("distribution_strategy", "off", "off | one_device | mirrored | tpu.", **d)
  flags.DEFINE_string("tpu", "", "TPU name/address for --distribution_strategy=tpu.", **d)
  flags.DEFINE_enum("mips", None, list(index_lib.MIPS_CHOICES),
                    "Index saved beside each encoded.ckpt for the trainer to load: scann saves a "
                    "ScaNN index, brute_force none (trainers build it), auto = scann from "
                    "index.AUTO_SCANN_MIN_ROWS blocks. Default: the run's task.mips in "
                    "model_dir/params.yaml (ScaNN settings from its task.scann), else auto.", **d)


def run_index_factory(model_dir, mips=None):
  """The `IndexFactory` of the training run: `task.mips` / `task.scann` of `model_dir/params.yaml`
  (written by the trainer at start), `mips` overriding the kind."""
  task = {}
  path = os.path.join(model_dir, "params.yaml")
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      task = (yaml.safe_load(f) or {}).get("task", {}) or {}
  return index_lib.IndexFactory(mips or task.get("mips") or "auto", task.get("scann"))


ENCODED_SUBDIR = "encoded"
DONE_FILE = "TRAINING_DONE"


def copy_tree(src, dst):
  """Recursive gfile copy (SavedModel directories; gs:// works)."""
  for root, _, files in tf.io.gfile.walk(src):
    rel = os.path.relpath(root, src)
    target = dst if rel == "." else os.path.join(dst, rel)
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)


def encoded_root(model_dir):
  return os.path.join(model_dir, "export", ENCODED_SUBDIR)


def newest_export(model_dir, after_step):
  """(step, embedder_dir) of the newest complete `export/<step>/embedder` newer than after_step."""
  found = refresher_lib.list_step_dirs(os.path.join(model_dir, "export"),
                                       required=os.path.join("embedder", "saved_model.pb"))
  found = [(s, os.path.join(p, "embedder")) for s, p in found if s > after_step]
  return found[-1] if found else None


def parse_buckets(values):
  """--buckets list -> "auto" or a tuple of positive ints; a clear UsageError otherwise."""
  values = [v.strip() for v in values if v.strip()]
  if values == [embed_corpus.AUTO_BUCKETS]:
    return embed_corpus.AUTO_BUCKETS
  try:
    buckets = tuple(int(v) for v in values)
  except ValueError:
    buckets = ()
  if not buckets or min(buckets) <= 0:
    raise app.UsageError(f"--buckets must be 'auto' or positive integers, got {','.join(values)!r}")
  return buckets


def _load(path, strategy):
  # Under a strategy the SavedModel's variables are created in its scope (mirrored / on TPU).
  if strategy is None:
    return tf.saved_model.load(path)
  with strategy.scope():
    return tf.saved_model.load(path)


def refresh_once(model_dir, store, step, embedder_dir, batch_size=128,
                 buckets=embed_corpus.AUTO_BUCKETS, seq_len=288, strategy=None, keep=3,
                 max_buckets=embed_corpus.DEFAULT_MAX_BUCKETS, index_factory=None):
  """Writes `export/encoded/<step>` for the embedder export at `embedder_dir`; returns (dir, stats).

  The snapshot holds the query tower (`embedder`, copied) with `encoded/encoded.ckpt`: the corpus
  embedded by the document tower (`export/<step>/doc_embedder` beside `embedder_dir` when the run has
  a separate one, else the embedder itself), and, when `index_factory` builds ScaNN for this corpus,
  the index in `encoded/index` (ScaNN's own serialisation), which trainers load instead of rebuilding.
  """
  root = encoded_root(model_dir)
  final = os.path.join(root, str(step))
  stats = {}
  with io_utils.atomic_dir(final) as staging:
    staged_embedder = os.path.join(staging, "embedder")
    copy_tree(embedder_dir, staged_embedder)
    doc_dir = os.path.join(os.path.dirname(embedder_dir.rstrip("/")),
                           export_common.DOC_EMBEDDER_SUBDIR)
    has_doc_tower = tf.io.gfile.exists(os.path.join(doc_dir, "saved_model.pb"))
    doc_embedder = _load(doc_dir if has_doc_tower else staged_embedder, strategy)
    _, emb = embed_corpus.embed_corpus(store, doc_embedder, staged_embedder, batch_size=batch_size,
                                       buckets=buckets, seq_len=seq_len, strategy=strategy,
                                       stats=stats, max_buckets=max_buckets)
    if index_factory is not None and index_factory.kind_for(emb.shape[0]) != "brute_force":
      index_factory(emb).save(embed_corpus.index_path(staged_embedder))
    with tf.io.gfile.GFile(os.path.join(staging, "global_step.txt"), "w") as f:
      f.write(f"{step}\n")
  refresher_lib.prune_step_dirs(root, keep)
  return final, stats


def main(argv, fv=FLAGS):
  """Runs the refresher with the parsed flags in `fv`; returns the exit code."""
  del argv
  FLAGS = fv  # noqa: N806  (the body reads the flags through this name)
  if not FLAGS.model_dir or not FLAGS.retrieval_corpus:
    raise app.UsageError("--model_dir and --retrieval_corpus are required")
  buckets = parse_buckets(FLAGS.buckets)
  if FLAGS.max_buckets < 1:
    raise app.UsageError(f"--max_buckets must be >= 1, got {FLAGS.max_buckets}")
  strategy = None
  if FLAGS.distribution_strategy not in ("off", ""):
    from realm_tf2.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
    strategy = strategy_lib.get_strategy(FLAGS.distribution_strategy, tpu=FLAGS.tpu)
  store = block_store_lib.BlockStore.from_retrieval_corpus(FLAGS.retrieval_corpus)
  logging.info("retrieval corpus: %d blocks, %.1f MB", store.num_blocks, store.nbytes / 1e6)
  last = FLAGS.start_at_step - 1
  existing = refresher_lib.list_step_dirs(encoded_root(FLAGS.model_dir))
  if existing:
    last = max(last, existing[-1][0])  # resume: never redo a snapshot that exists
  failures = 0
  started = time.time()
  while True:
    done = tf.io.gfile.exists(os.path.join(FLAGS.model_dir, DONE_FILE))
    found = newest_export(FLAGS.model_dir, last)
    if found is not None:
      step, embedder_dir = found
      last = step
      try:
        path, stats = refresh_once(FLAGS.model_dir, store, step, embedder_dir, FLAGS.batch_size,
                                   buckets, FLAGS.candidate_seq_len, strategy, FLAGS.keep,
                                   FLAGS.max_buckets, run_index_factory(FLAGS.model_dir, FLAGS.mips))
        print(json.dumps({"step": step, "snapshot": path, "blocks": stats["blocks"],
                          "blocks_per_sec": round(stats["blocks_per_sec"], 2),
                          "seconds": round(stats["seconds"], 2),
                          "buckets": stats["bucket_lengths"],
                          "padded_per_real_token": round(stats["padded_tokens"]
                                                         / max(stats["real_tokens"], 1), 3)}),
              flush=True)
        if FLAGS.once:
          return 0
      except Exception as e:  # pylint: disable=broad-except  (keep serving older snapshots)
        failures += 1
        logging.exception("refresh of step %d from %s failed (%d failures)", step, embedder_dir,
                          failures)
        if FLAGS.once:
          return 1
      continue
    if done:
      logging.info("%s exists; exiting after %d failures", DONE_FILE, failures)
      return 0
    if FLAGS.once and FLAGS.max_wait_secs and time.time() - started > FLAGS.max_wait_secs:
      logging.error("no export under %s/export after %.0fs", FLAGS.model_dir, FLAGS.max_wait_secs)
      return 1
    time.sleep(FLAGS.poll_interval_secs)


def run():
  define_flags()
  flags.mark_flags_as_required(["model_dir", "retrieval_corpus"])
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
