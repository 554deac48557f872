r"""Pre-training: ORQA's Inverse Cloze Task (`--mode=ict`) and REALM with live retrieval (`--mode=realm`).

Typical order on a new corpus (see README):
  1. python -m data_prep.build_knowledge_corpus --input=docs.jsonl --vocab_file=vocab.txt --output_dir=K
     python -m data_prep.build_pretrain_corpus --input=docs.jsonl --output_dir=P
  2. ICT warm start of the retriever (writes export/<step>/embedder with encoded/encoded.ckpt):
     python run_pretrain.py --mode=ict --model_dir=ict --examples_path=K/examples.tfr \
       --retrieval_corpus_path='K/realm/blocks-*' --vocab_file=vocab.txt --config_file=configs/runs/ict.yaml
  3. REALM (initial index = the ICT export's encoded.ckpt; refreshed in the background from this run's
     checkpoints every --refresh_every_steps):
     python run_pretrain.py --mode=realm --model_dir=realm --pretrain_corpus_path='P/*' \
       --retrieval_corpus_path='K/realm/blocks-*' --embedder_hub_module_handle=ict/export/<step>/embedder \
       --bert_hub_module_handle=<bert export or converted BERT> --vocab_file=vocab.txt

Outputs in --model_dir: checkpoints, TensorBoard, metrics.jsonl (loss, mlm_accuracy, retrieval_utility,
index_version, staleness_steps/minutes, refreshes, pipeline skips, examples/s), export/<step>/{embedder,bert},
export/best (best eval retrieval_utility), TRAINING_DONE at the end.
"""
import json
import os
import time
import uuid

import realm_tf2  # noqa: F401
from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.export import bert_export
from realm_tf2.export import common as export_common
from realm_tf2.export import embedder_export
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import hub_init
from realm_tf2.modeling import init_utils
from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher as refresher_lib
from realm_tf2.tasks import ict_task
from realm_tf2.tasks import pretrain_experiments
from realm_tf2.tasks import realm_task
from realm_tf2.training import driver
from realm_tf2.training import flags as flags_lib
from realm_tf2.training import startup_checks
from realm_tf2.training import strategy as strategy_lib

FLAGS = flags.FLAGS
flags_lib.define_common_flags()
flags.DEFINE_enum("mode", None, ["ict", "realm"], "ict: retriever warm start; realm: REALM pre-training.")
flags.DEFINE_string("retrieval_corpus_path", None,
                    "Glob of the REALM retrieval corpus shards (index rows). ICT: embedded at the end.")
flags.DEFINE_string("pretrain_corpus_path", None, "REALM: glob of the GZIP pre-training shards.")
flags.DEFINE_string("embedder_hub_module_handle", None,
                    "REALM: initial embedder (ICT export dir, converter output or checkpoint). If it has "
                    "encoded/encoded.ckpt that is the initial index; otherwise the corpus is embedded. "
                    "A TF Hub BERT encoder (dir, gs:// or URL) initialises only its BERT (projection fresh).")
flags.DEFINE_string("bert_hub_module_handle", None,
                    "Knowledge-augmented encoder init (REALM) / BERT init of the ICT tower: a `bert` "
                    "export, converter output dir, checkpoint, or a TF2 TF Hub BERT encoder (dir, gs:// "
                    "or URL; weights transferred, its vocab used unless --vocab_file is given).")
flags.DEFINE_string("examples_path", None, "ICT: ORQA examples.tfr (or --blocks_dir).")
flags.DEFINE_string("titles_path", None, "ICT: ORQA titles.tfr (accepted; titles come from examples.tfr).")
flags.DEFINE_string("blocks_dir", None, "ICT: an ORQA blocks directory holding examples.tfr.")
flags.DEFINE_string("eval_examples_path", None, "ICT: held-out examples.tfr for evaluation.")
flags.DEFINE_integer("num_candidates", None, "REALM: documents per query incl. the null document (8).")
flags.DEFINE_integer("batch_size", None, "Global batch size.")
flags.DEFINE_enum("refresh", "internal", ["internal", "external"],
                  "internal: a background thread re-embeds the corpus from this run's checkpoints; "
                  "external: load export/encoded/<step>/ written by `python -m realm_tf2.retrieval.refresh`.")
flags.DEFINE_integer("refresh_every_steps", None,
                     "Checkpoint interval (= how often the refresher gets new weights); default from config.")
flags.DEFINE_float("refresh_poll_secs", 2.0, "How often the refresher looks for a new checkpoint.")
flags.DEFINE_integer("export_every_steps", None, "Write export/<step>/{embedder,bert} every N steps "
                     "(default: the checkpoint interval).")
flags.DEFINE_integer("seed", None, "Seed of the input pipelines' randomness.")
flags.DEFINE_bool("deterministic", None, "Deterministic input order (reproducible runs).")
flags.DEFINE_integer("num_eval_shards", None, "REALM: first N sorted pre-training shards held out (5).")
flags.DEFINE_enum("run_mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")

_COMMON_PATHS = dict(flags_lib.COMMON_FLAG_PATHS)
_COMMON_PATHS.pop("init_checkpoint", None)


def _flag(name):
  return FLAGS[name].value if FLAGS[name].present or FLAGS[name].value is not None else None


def _data_overrides(prefixes, mapping):
  out = {}
  for flag_name, key in mapping.items():
    value = _flag(flag_name)
    if value is not None:
      for p in prefixes:
        out[f"{p}.{key}"] = value
  return out


def _hub_overrides(handles):
  """Init sources from the *_hub_module_handle flags; TF Hub encoders (dir, gs://, URL) also bring
  their vocab / do_lower_case unless --vocab_file / --do_lower_case are given (hub_init.flag_overrides)."""
  return hub_init.flag_overrides(handles, FLAGS["vocab_file"].present, FLAGS["do_lower_case"].present)


def build_ict_params():
  examples = FLAGS.examples_path or (os.path.join(FLAGS.blocks_dir, "examples.tfr")
                                     if FLAGS.blocks_dir else None)
  extra = {}
  if examples:
    extra["task.train_data.input_path"] = examples
    extra["task.validation_data.input_path"] = FLAGS.eval_examples_path or examples
  extra.update(_hub_overrides({"task.bert_init": FLAGS.bert_hub_module_handle}))
  if FLAGS.refresh_every_steps:
    extra["trainer.checkpoint_interval"] = FLAGS.refresh_every_steps
  if FLAGS.batch_size:
    extra["task.train_data.global_batch_size"] = FLAGS.batch_size
    extra["task.validation_data.global_batch_size"] = FLAGS.batch_size
  extra.update(_data_overrides(["task.train_data", "task.validation_data"],
                               {"seed": "seed", "deterministic": "deterministic"}))
  return flags_lib.build_params(pretrain_experiments.ict_experiment(), _COMMON_PATHS, extra)


def build_realm_params():
  extra = {}
  if FLAGS.pretrain_corpus_path:
    extra["task.train_data.input_path"] = FLAGS.pretrain_corpus_path
    extra["task.validation_data.input_path"] = FLAGS.pretrain_corpus_path
  extra.update(_hub_overrides({"task.embedder_init": FLAGS.embedder_hub_module_handle,
                               "task.bert_init": FLAGS.bert_hub_module_handle}))
  for flag_name, path in (("retrieval_corpus_path", "task.retrieval_corpus_path"),
                          ("num_candidates", "task.model.num_candidates"),
                          ("refresh_every_steps", "trainer.checkpoint_interval")):
    if _flag(flag_name) is not None:
      extra[path] = _flag(flag_name)
  if FLAGS.batch_size:
    extra["task.train_data.global_batch_size"] = FLAGS.batch_size
    extra["task.validation_data.global_batch_size"] = FLAGS.batch_size
  extra.update(_data_overrides(["task.train_data", "task.validation_data"],
                               {"seed": "seed", "deterministic": "deterministic",
                                "num_eval_shards": "num_eval_shards"}))
  return flags_lib.build_params(pretrain_experiments.realm_experiment(), _COMMON_PATHS, extra)


class ExportAction:
  """Orbit action: writes `export/<step>/{embedder[,bert]}` every `every` steps (and at the end)."""

  def __init__(self, model_dir, global_step, every, embedder_fn, bert_fn, vocab_file, do_lower_case,
               total_steps):
    self.model_dir, self.global_step, self.every = model_dir, global_step, max(1, int(every))
    self.embedder_fn, self.bert_fn = embedder_fn, bert_fn
    self.vocab_file, self.do_lower_case, self.total = vocab_file, do_lower_case, total_steps
    self.last = -1
    self.exported = []
    self.failures = 0

  def write_towers(self, directory, encoded_checkpoint=None):
    """`directory/embedder` (+ `directory/bert`), each an atomic SavedModel export."""
    embedder_export.export_embedder(self.embedder_fn(), self.vocab_file, self.do_lower_case,
                                    os.path.join(directory, "embedder"), encoded_checkpoint)
    if self.bert_fn is not None:
      bert_export.export_bert(self.bert_fn(), self.vocab_file, self.do_lower_case,
                              os.path.join(directory, "bert"))

  def export(self, step, encoded_checkpoint=None):
    """Writes `export/<step>/{embedder[,bert]}` atomically as a whole: both sub-exports go to a
    staging directory that is renamed into place, so a failure leaves no `<step>/` at all."""
    out = export_common.step_export_dir(self.model_dir, step)
    staging = f"{out}.tmp-{uuid.uuid4().hex[:8]}"  # not a step number: refreshers ignore it
    try:
      self.write_towers(staging, encoded_checkpoint)
      if tf.io.gfile.exists(out):  # a re-export of the same step (after a resume)
        tf.io.gfile.rmtree(out)
      tf.io.gfile.rename(staging, out)
    finally:
      if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    self.last = step
    self.exported.append(step)
    return out

  def __call__(self, output):
    del output
    step = int(self.global_step.numpy())
    if step != self.last and (step // self.every > self.last // self.every or step >= self.total):
      try:
        self.export(step)
      except (OSError, tf.errors.OpError) as e:
        # A periodic export is not worth the run: log, count, keep training (the next export
        # retries; the refresher keeps serving the last good index). The final export still raises.
        self.failures += 1  # `last` unchanged: the next loop (or the final export) retries
        logging.error("export of step %d failed (%d failures so far), training continues: %s", step,
                      self.failures, e)


class BestExportAction:
  """Eval action: copies the newest step export to `export/best` when eval `metric` improves."""

  def __init__(self, export_action, metric):
    self.export_action, self.metric, self.best = export_action, metric, -float("inf")

  def __call__(self, output):
    value = output.get(self.metric) if output else None
    if value is None:
      return
    value = float(np.asarray(value))
    if value > self.best:
      previous, self.best = self.best, value
      step = int(self.export_action.global_step.numpy())
      best = export_common.best_export_dir(self.export_action.model_dir)
      tmp = best + ".tmp"
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
      # Export the current weights straight into the best directory (atomic per sub-export).
      try:
        self.export_action.write_towers(best)
        io_utils.atomic_write_text(os.path.join(best, "best_metric.json"),
                                   json.dumps({"step": step, self.metric: value}))
      except (OSError, tf.errors.OpError) as e:
        self.best = previous  # not exported: a later evaluation with the same value retries
        self.export_action.failures += 1
        logging.error("export/best at step %d failed, training continues: %s", step, e)


def _strategy(params):
  return strategy_lib.get_strategy(params.runtime.distribution_strategy, params.runtime.tpu or "",
                                   FLAGS.num_virtual_cpus)


def _special_ids(vocab_file):
  tok = tokenization.RealmTokenizer(vocab_file)
  return tok.cls_id, tok.sep_id


def run_ict(params, model_dir):
  strategy = _strategy(params)
  task = ict_task.IctTask(params.task)
  trainer = driver.build_trainer(params, task, strategy, model_dir, train="train" in FLAGS.run_mode,
                                 evaluate="eval" in FLAGS.run_mode)
  every = FLAGS.export_every_steps or params.trainer.checkpoint_interval
  exporter = ExportAction(model_dir, trainer.global_step, every, lambda: trainer.model, None,
                          params.task.vocab_file, params.task.do_lower_case, params.trainer.train_steps)
  driver.run_experiment(params, task, model_dir, FLAGS.run_mode, strategy,
                        params.task.train_data.global_batch_size, train_actions=[],
                        extra_metrics_fn=lambda: task.stats.as_metrics("pipeline/"), trainer=trainer)
  # Final export: the embedder with encoded/encoded.ckpt of the whole retrieval corpus (§3.2).
  step = int(trainer.global_step.numpy())
  out = exporter.export(step)
  if FLAGS.retrieval_corpus_path:
    store = block_store_lib.BlockStore.from_retrieval_corpus(FLAGS.retrieval_corpus_path)
    cls_id, sep_id = _special_ids(params.task.vocab_file)
    emb = embed_corpus.embed_blocks(store, trainer.model, cls_id, sep_id,
                                    seq_len=params.task.model.candidate_seq_len)
    embed_corpus.write_encoded(os.path.join(out, "embedder"), emb, expected_rows=store.num_blocks)
    print(f"[ict] exported {out}/embedder with encoded.ckpt of {store.num_blocks} blocks", flush=True)
  print(f"[ict] pipeline: {task.stats.report()}", flush=True)
  return out


def initial_snapshot(params, store, new_embedder, cls_id, sep_id):
  """Snapshot version 1: the init embedder export + its encoded.ckpt, or the corpus embedded now."""
  source = params.task.embedder_init
  if source and tf.io.gfile.exists(os.path.join(source, "saved_model.pb")):
    ckpt = export_common.encoded_checkpoint_path(source)
    if tf.io.gfile.exists(ckpt + ".index"):
      emb = index_lib.read_block_emb_checkpoint(ckpt)
      if emb.shape[0] != store.num_blocks:
        raise ValueError(f"{ckpt}: {emb.shape[0]} rows but the retrieval corpus has {store.num_blocks}")
      print(f"[realm] initial index: {ckpt} ({emb.shape[0]} blocks)", flush=True)
      return refresher_lib.IndexSnapshot(1, 0, time.time(), tf.saved_model.load(source),
                                         index_lib.BruteForceIndex().build(emb), source=ckpt)
  embedder = new_embedder()
  if source:
    init_utils.init_embedder(embedder, source)
  t0 = time.time()
  emb = embed_corpus.embed_blocks(store, embedder, cls_id, sep_id,
                                  seq_len=params.task.model.candidate_seq_len)
  print(f"[realm] initial index: embedded {store.num_blocks} blocks in {time.time() - t0:.1f}s "
        f"({'from ' + source if source else 'random embedder'})", flush=True)
  return refresher_lib.IndexSnapshot(1, 0, time.time(), embedder,
                                     index_lib.BruteForceIndex().build(emb), source=source or "random")


def run_realm(params, model_dir):
  strategy = _strategy(params)
  driver.set_seeds(params)  # the initial index embedder is random without an init: seed it too
  task = realm_task.RealmTask(params.task)
  store = block_store_lib.BlockStore.from_retrieval_corpus(params.task.retrieval_corpus_path)
  cls_id, sep_id = _special_ids(params.task.vocab_file)
  m = params.task.model
  vocab_size = ict_task.vocab_size_of(params.task)

  def new_embedder():
    return embedder_lib.RealmEmbedder(m.bert, m.projection_size, m.embedder_layer_norm_epsilon,
                                      m.embedder_dropout_rate, vocab_size=vocab_size)

  if m.num_candidates - 1 > store.num_blocks:
    startup_checks.fail_if("run_pretrain", [
        f"task.model.num_candidates={m.num_candidates} (k-1={m.num_candidates - 1} retrieved documents) "
        f"is larger than the retrieval corpus ({store.num_blocks} blocks)"])
  try:
    snapshot = initial_snapshot(params, store, new_embedder, cls_id, sep_id)
  except ValueError as e:  # e.g. block_emb rows != corpus blocks
    startup_checks.fail_if("run_pretrain", [str(e)])
  holder = refresher_lib.IndexHolder(snapshot)
  task.set_retrieval(holder, store)
  trainer = driver.build_trainer(params, task, strategy, model_dir, train="train" in FLAGS.run_mode,
                                 evaluate="eval" in FLAGS.run_mode)
  start_step = driver.latest_step(model_dir)
  refresher = refresher_lib.IndexRefresher(
      holder, model_dir, store, mode=FLAGS.refresh, source="checkpoint",
      embedder_factory=new_embedder, cls_id=cls_id, sep_id=sep_id,
      embed_kwargs={"seq_len": m.candidate_seq_len},
      current_step_fn=lambda: int(trainer.global_step.numpy()),
      poll_interval_secs=FLAGS.refresh_poll_secs,
      min_step=start_step - 1 if start_step else 0)  # resume: re-index from the restored checkpoint
  every = FLAGS.export_every_steps or params.trainer.checkpoint_interval
  exporter = ExportAction(model_dir, trainer.global_step, every, lambda: trainer.model.embedder,
                          lambda: trainer.model.bert, params.task.vocab_file, params.task.do_lower_case,
                          params.trainer.train_steps)
  best = BestExportAction(exporter, "retrieval_utility")

  def extra_metrics():
    snap = holder.get()
    step = int(trainer.global_step.numpy())
    out = {"index_version": snap.version, "index_snapshot_step": snap.step,
           "staleness_steps": step - snap.step, "staleness_minutes": (time.time() - snap.wall_time) / 60,
           "refreshes": refresher.refreshes, "refresh_failures": refresher.failures,
           "export_failures": exporter.failures}
    out.update(task.stats.as_metrics("pipeline/"))
    return out

  refresher.start()
  try:
    driver.run_experiment(params, task, model_dir, FLAGS.run_mode, strategy,
                          params.task.train_data.global_batch_size, train_actions=[exporter],
                          eval_actions=[best], extra_metrics_fn=extra_metrics, trainer=trainer)
  finally:
    refresher.stop(timeout=600)
  step = int(trainer.global_step.numpy())
  if exporter.last != step:
    exporter.export(step)
  io_utils.atomic_write_text(os.path.join(model_dir, "TRAINING_DONE"), f"{step}\n")
  print(f"[realm] done at step {step}; refresher {refresher.stats()}", flush=True)
  print(f"[realm] pipeline: {task.stats.report()}", flush=True)


def _local(path):
  return None if not path or "://" in path and not path.startswith("gs://") else path


def check_startup(params):
  """Missing inputs, sequence lengths over the position table, a non-positive retriever rate
  multiplier, vocab != init embedding rows:
  one message listing every problem, before any model is built (realm_tf2.training.startup_checks)."""
  t, m = params.task, params.task.model
  if FLAGS.mode == "ict":
    files = [("--examples_path", t.train_data.input_path),
             ("--retrieval_corpus_path", FLAGS.retrieval_corpus_path)]
    inits = [("--bert_hub_module_handle", _local(t.bert_init)),
             ("--init_checkpoint", _local(t.init_checkpoint))]
    lens = ["ict_query_seq_len", "ict_block_seq_len", "candidate_seq_len"]
  else:
    files = [("--pretrain_corpus_path", t.train_data.input_path),
             ("--retrieval_corpus_path", t.retrieval_corpus_path)]
    inits = [("--embedder_hub_module_handle", _local(t.embedder_init)),
             ("--bert_hub_module_handle", _local(t.bert_init))]
    lens = ["query_seq_len", "candidate_seq_len", "joint_seq_len"]
  problems = startup_checks.check_files([("--vocab_file", t.vocab_file)] + files + inits)
  problems += startup_checks.check_seq_lens(m, lens)
  if FLAGS.mode == "realm" and not t.retriever_learning_rate_multiplier > 0:  # NaN too
    problems.append(f"task.retriever_learning_rate_multiplier={t.retriever_learning_rate_multiplier} "
                    "must be > 0 (to freeze the retriever use task.retriever_warmup_steps)")
  if not problems and t.vocab_file:
    problems += startup_checks.check_vocab_matches(ict_task.vocab_size_of(t), inits)
  startup_checks.fail_if("run_pretrain", problems)


def main(argv):
  del argv
  if not FLAGS.mode:
    raise app.UsageError("--mode=ict or --mode=realm is required (see --help)")
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required")
  try:
    params = build_ict_params() if FLAGS.mode == "ict" else build_realm_params()
  except (KeyError, ValueError, TypeError, AttributeError) as e:  # unknown/ill-typed config keys
    raise SystemExit(f"run_pretrain: bad configuration: {e}") from None
  if FLAGS.mode == "ict":
    if not params.task.train_data.input_path:
      raise app.UsageError("ICT needs --examples_path or --blocks_dir")
    check_startup(params)
    run_ict(params, FLAGS.model_dir)
  else:
    for name, value in (("--pretrain_corpus_path", params.task.train_data.input_path),
                        ("--retrieval_corpus_path", params.task.retrieval_corpus_path),
                        ("--vocab_file", params.task.vocab_file)):
      if not value:
        raise app.UsageError(f"REALM needs {name}")
    check_startup(params)
    run_realm(params, FLAGS.model_dir)


if __name__ == "__main__":
  app.run(main)
