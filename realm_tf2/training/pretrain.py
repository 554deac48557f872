"""Pre-training runs: ORQA's Inverse Cloze Task (`run_ict`) and REALM with live retrieval (`run_realm`).

`run_pretrain.py` only turns flags into an `ExperimentConfig` and a `PretrainOptions` and calls one of
these. What they add around `driver.run_experiment` (Model Garden Trainer + orbit):
  ICT    export/<step>/embedder every `export_every_steps`; at the end, the whole retrieval corpus
         embedded into `embedder/encoded/encoded.ckpt` (the initial REALM index, original §3.2).
  REALM  the first index snapshot (`initial_snapshot`), the `IndexHolder` the input pipeline reads,
         the `IndexRefresher` (thread, or loading the standalone refresher's snapshots), step and
         best exports, refresh metrics in metrics.jsonl, `TRAINING_DONE` at the end. With
         `task.retrieval=device` the snapshots carry only `block_emb`, the train step searches a
         `DeviceBlockStore`, and an orbit action assigns every new snapshot to it between loops.
"""
import dataclasses
import os
import time
from typing import Optional

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf
import tf_keras

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.export import common as export_common
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import init_utils
from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import device_retrieval
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib
from realm_tf2.retrieval import refresher as refresher_lib
from realm_tf2.tasks import ict_task
from realm_tf2.tasks import realm_task
from realm_tf2.training import driver
from realm_tf2.training import export_actions
from realm_tf2.training import startup_checks
from realm_tf2.training import strategy as strategy_lib

DONE_FILE = "TRAINING_DONE"


@dataclasses.dataclass
class PretrainOptions:
  """How a pre-training run is operated (what is not part of the experiment config).

  Attributes:
    run_mode: "train", "eval" or "train_and_eval".
    refresh: REALM: "internal" (a thread re-embeds the corpus from this run's checkpoints) or
      "external" (load `export/encoded/<step>/` written by `python -m realm_tf2.retrieval.refresh`).
    refresh_poll_secs: How often the refresher looks for a new checkpoint / snapshot.
    export_every_steps: Write `export/<step>/` this often (None = the checkpoint interval).
    retrieval_corpus_path: ICT: the corpus embedded into the final export's `encoded.ckpt`.
    num_virtual_cpus: With the "mirrored" strategy on a CPU: mirror over this many virtual CPUs.
  """
  run_mode: str = "train_and_eval"
  refresh: str = "internal"
  refresh_poll_secs: float = 2.0
  export_every_steps: Optional[int] = None
  retrieval_corpus_path: Optional[str] = None
  num_virtual_cpus: int = 0


def _strategy(params, options: PretrainOptions):
  return strategy_lib.get_strategy(params.runtime.distribution_strategy, params.runtime.tpu or "",
                                   options.num_virtual_cpus)


def _special_ids(vocab_file: str):
  tok = tokenization.RealmTokenizer(vocab_file)
  return tok.cls_id, tok.sep_id


def _local(path):
  return None if not path or "://" in path and not path.startswith("gs://") else path


def check_startup(params, mode: str, options: PretrainOptions):
  """Missing inputs, sequence lengths over the position table, a non-positive retriever rate
  multiplier, vocab != init embedding rows: one message listing every problem (SystemExit), before
  any model is built."""
  t, m = params.task, params.task.model
  if mode == "ict":
    files = [("--examples_path", t.train_data.input_path),
             ("--retrieval_corpus_path", options.retrieval_corpus_path)]
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
  if mode == "realm" and not t.retriever_learning_rate_multiplier > 0:  # NaN too
    problems.append(f"task.retriever_learning_rate_multiplier={t.retriever_learning_rate_multiplier} "
                    "must be > 0 (to freeze the retriever use task.retriever_warmup_steps)")
  if mode == "realm":
    problems += _device_retrieval_problems(t)
  if not problems:
    problems += startup_checks.check_model_size_matches(m, inits)
    if t.vocab_file:
      problems += startup_checks.check_vocab_matches(ict_task.vocab_size_of(t), inits)
  startup_checks.fail_if("run_pretrain", problems)


def _device_retrieval_problems(task_config) -> list:
  """Config problems of `task.retrieval` / `task.device_retrieval` (messages naming the field)."""
  problems = []
  if task_config.retrieval not in realm_task.RETRIEVAL_MODES:
    return [f"task.retrieval={task_config.retrieval!r} must be one of {realm_task.RETRIEVAL_MODES}"]
  if task_config.retrieval != "device":
    return problems
  if task_config.mips == index_lib.ScannIndex.kind:
    problems.append("task.mips=scann needs task.retrieval=host (device retrieval is an exact or "
                    "approximate top-k on the accelerators)")
  settings = task_config.device_retrieval
  if settings.pick_with not in realm_task.PICK_WITH:
    problems.append(f"task.device_retrieval.pick_with={settings.pick_with!r} must be one of "
                    f"{realm_task.PICK_WITH}")
  try:
    settings.tf_emb_dtype  # pylint: disable=pointless-statement
  except ValueError as e:
    problems.append(str(e))
  if settings.extra_candidates < 0 or settings.rows_per_chunk < 0:
    problems.append("task.device_retrieval.extra_candidates and rows_per_chunk must be >= 0")
  if not 0.0 <= settings.recall_target <= 1.0:
    problems.append(f"task.device_retrieval.recall_target={settings.recall_target} must be in "
                    "[0, 1] (0 = exact top-k)")
  return problems


def run_ict(params, model_dir: str, options: PretrainOptions) -> str:
  """ICT training; returns the final `export/<step>` directory (embedder + encoded.ckpt)."""
  strategy = _strategy(params, options)
  task = ict_task.IctTask(params.task)
  trainer = driver.build_trainer(params, task, strategy, model_dir,
                                 train="train" in options.run_mode,
                                 evaluate="eval" in options.run_mode)
  towers = export_actions.TowerExporter(lambda: trainer.model, None, params.task.vocab_file,
                                        params.task.do_lower_case)
  exporter = export_actions.ExportAction(
      model_dir, trainer.global_step, options.export_every_steps or params.trainer.checkpoint_interval,
      towers, params.trainer.train_steps)
  driver.run_experiment(params, task, model_dir, options.run_mode, strategy,
                        params.task.train_data.global_batch_size,
                        extra_metrics_fn=lambda: task.stats.as_metrics("pipeline/"), trainer=trainer)
  out = exporter.export(int(trainer.global_step.numpy()))  # ICT exports once, at the end
  if options.retrieval_corpus_path:
    # The whole retrieval corpus embedded with the final weights: REALM's initial index
    # (original §3.2).
    store = block_store_lib.BlockStore.from_retrieval_corpus(options.retrieval_corpus_path)
    encode_final_export(params, out, trainer.model, store)
  logging.info("ICT input pipeline: %s", task.stats.report())
  return out


def encode_final_export(params, export_dir: str, doc_embedder, store: block_store_lib.BlockStore):
  """Writes `export_dir/embedder/encoded/encoded.ckpt`: the whole corpus embedded by the final
  document tower, so the export is ready as ORQA's retriever (or the next run's initial index)."""
  cls_id, sep_id = _special_ids(params.task.vocab_file)
  emb = embed_corpus.embed_blocks(store, doc_embedder, cls_id, sep_id,
                                  seq_len=params.task.model.candidate_seq_len,
                                  cpu_accel=params.task.cpu_accel)
  embed_corpus.write_encoded(os.path.join(export_dir, "embedder"), emb,
                             expected_rows=store.num_blocks)
  logging.info("exported %s/embedder with encoded.ckpt of %d blocks", export_dir, store.num_blocks)


def new_embedder_fn(params):
  """() -> a fresh `RealmEmbedder` with the run's retriever architecture (snapshot embedders)."""
  vocab_size = ict_task.vocab_size_of(params.task)
  return lambda: embedder_lib.embedder_from_config(params.task.model, vocab_size)


def index_factory(params):
  """The index every snapshot of the run is searched with (`task.mips`, `task.scann`); device mode:
  the snapshots only carry `block_emb` (`device_retrieval.BlockEmbeddingsFactory`)."""
  if params.task.retrieval == "device":
    return device_retrieval.BlockEmbeddingsFactory()
  return index_lib.IndexFactory(params.task.mips, params.task.scann.as_dict())


def initial_snapshot(params, store: block_store_lib.BlockStore, new_embedder, cls_id: int,
                     sep_id: int) -> refresher_lib.IndexSnapshot:
  """Snapshot version 1: the init embedder export with its encoded.ckpt (and saved index), or the
  corpus embedded now (with the init weights, or a random embedder when there is no init)."""
  source = params.task.embedder_init
  factory = index_factory(params)
  if source and tf.io.gfile.exists(os.path.join(source, "saved_model.pb")):
    ckpt = export_common.encoded_checkpoint_path(source)
    if tf.io.gfile.exists(ckpt + ".index"):
      emb = index_lib.read_block_emb_checkpoint(ckpt)
      if emb.shape[0] != store.num_blocks:
        raise ValueError(f"{ckpt}: {emb.shape[0]} rows but the retrieval corpus has {store.num_blocks}")
      logging.info("REALM initial index: %s (%d blocks)", ckpt, emb.shape[0])
      index = factory.load_or_build(embed_corpus.index_path(source), emb)
      if params.task.retrieval == "device":
        # A Keras tower, whose weights `load_snapshot_query_tower` copies to the accelerators.
        query_embedder = new_embedder()
        init_utils.init_embedder(query_embedder, source)
      else:
        query_embedder = tf.saved_model.load(source)
      return refresher_lib.IndexSnapshot(1, 0, time.time(), query_embedder, index, source=ckpt)
  embedder = new_embedder()
  if source:
    init_utils.init_embedder(embedder, source)
  t0 = time.time()
  emb = embed_corpus.embed_blocks(store, embedder, cls_id, sep_id,
                                  seq_len=params.task.model.candidate_seq_len,
                                  cpu_accel=params.task.cpu_accel)
  logging.info("REALM initial index: embedded %d blocks in %.1fs (%s)", store.num_blocks,
               time.time() - t0, "from " + source if source else "random embedder")
  return refresher_lib.IndexSnapshot(1, 0, time.time(), embedder, factory(emb),
                                     source=source or "random")


def build_retrieval(params, store: block_store_lib.BlockStore):
  """(IndexHolder with the first snapshot, new_embedder fn, cls_id, sep_id); start-up errors
  (k larger than the corpus, block_emb rows != corpus blocks) exit with one clear message."""
  m = params.task.model
  cls_id, sep_id = _special_ids(params.task.vocab_file)
  new_embedder = new_embedder_fn(params)
  if m.num_candidates - 1 > store.num_blocks:
    startup_checks.fail_if("run_pretrain", [
        f"task.model.num_candidates={m.num_candidates} (k-1={m.num_candidates - 1} retrieved documents) "
        f"is larger than the retrieval corpus ({store.num_blocks} blocks)"])
  try:
    snapshot = initial_snapshot(params, store, new_embedder, cls_id, sep_id)
  except ValueError as e:
    startup_checks.fail_if("run_pretrain", [str(e)])
  return refresher_lib.IndexHolder(snapshot), new_embedder, cls_id, sep_id


def build_device_store(params, store: block_store_lib.BlockStore, snapshot, strategy, cls_id: int,
                       sep_id: int) -> device_retrieval.DeviceBlockStore:
  """The accelerator-resident index of `task.retrieval=device`, sharded over `strategy`'s replicas,
  holding `snapshot`'s embeddings; block uids hashed from the corpus shards."""
  settings = params.task.device_retrieval
  m = params.task.model
  t0 = time.time()
  uids = device_retrieval.graph_uids_of_retrieval_corpus(params.task.retrieval_corpus_path)
  device_store = device_retrieval.DeviceBlockStore(
      store, snapshot.index.embeddings, candidate_seq_len=m.candidate_seq_len,
      joint_seq_len=m.joint_seq_len, cls_id=cls_id, sep_id=sep_id, block_uids=uids,
      emb_dtype=settings.tf_emb_dtype, strategy=strategy,
      rows_per_chunk=settings.rows_per_chunk or None, index_version=snapshot.version,
      index_step=snapshot.step)
  logging.info("REALM device retrieval: %d blocks over %d replica(s), %d rows each (%s), "
               "title/body widths %d/%d, loaded in %.1fs", device_store.num_blocks,
               device_store.num_replicas, device_store.shard_rows, settings.emb_dtype,
               device_store.title_width, device_store.body_width, time.time() - t0)
  return device_store


def build_pick_embedder(params, strategy, new_embedder):
  """`task.device_retrieval.pick_with="snapshot"`: the non-trainable copy of the query tower, under
  `strategy` (its variables live on the accelerators), that picks the candidates; None with
  "live"."""
  if params.task.device_retrieval.pick_with != "snapshot":
    return None
  with strategy.scope():
    tower = new_embedder()
    tower.trainable = False
    _build_embedder(tower, params.task.model.query_seq_len)
  return tower


def _build_embedder(embedder, seq_len: int):
  """Creates a Keras embedder's variables (and applies any deferred checkpoint restore)."""
  ids = tf.zeros([1, seq_len], tf.int32)
  embedder({"input_ids": ids, "input_mask": ids, "segment_ids": ids}, training=False)


def load_snapshot_query_tower(tower, snapshot, seq_len: int):
  """Copies an `IndexSnapshot`'s query embedder weights into `tower` (between train loops).

  A Keras snapshot embedder (initial snapshot, internal refresher) is copied weight by weight; an
  embedder SavedModel (external refresher, `snapshot.source` = `export/encoded/<step>`) is restored
  from its directory.
  Raises:
    ValueError naming the snapshot if its embedder does not match the tower.
  """
  source = snapshot.query_embedder
  if isinstance(source, tf_keras.layers.Layer):
    if not source.built:
      _build_embedder(source, seq_len)
    weights = source.get_weights()
    if len(weights) != len(tower.weights):
      raise ValueError(f"snapshot {snapshot.version} ({snapshot.source}): its query embedder has "
                       f"{len(weights)} weights, the picking tower {len(tower.weights)}")
    tower.set_weights(weights)
    return
  for path in (snapshot.source, os.path.join(snapshot.source, "embedder")):
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      init_utils.init_embedder(tower, path)
      return
  raise ValueError(f"snapshot {snapshot.version}: no Keras embedder and no embedder export at "
                   f"{snapshot.source} to load the picking query tower from")


def run_realm(params, model_dir: str, options: PretrainOptions):
  """REALM pre-training with live retrieval and index refreshes; returns the final step."""
  strategy = _strategy(params, options)
  driver.set_seeds(params)  # the initial index embedder is random without an init: seed it too
  task = realm_task.RealmTask(params.task)
  store = block_store_lib.BlockStore.from_retrieval_corpus(params.task.retrieval_corpus_path)
  holder, new_embedder, cls_id, sep_id = build_retrieval(params, store)
  device_swap = None
  if task.device_mode:
    device_store = build_device_store(params, store, holder.get(), strategy, cls_id, sep_id)
    picker = build_pick_embedder(params, strategy, new_embedder)
    task.set_device_retrieval(device_store, picker)
    seq_len = params.task.model.query_seq_len
    device_swap = device_retrieval.DeviceIndexSwap(
        holder, device_store, load_query_tower=None if picker is None else (
            lambda snapshot: load_snapshot_query_tower(picker, snapshot, seq_len)))
  else:
    task.set_retrieval(holder, store)
  trainer = driver.build_trainer(params, task, strategy, model_dir,
                                 train="train" in options.run_mode,
                                 evaluate="eval" in options.run_mode)
  start_step = driver.latest_step(model_dir)
  refresher = refresher_lib.IndexRefresher(
      holder, model_dir, store, mode=options.refresh, source="checkpoint",
      embedder_factory=new_embedder, cls_id=cls_id, sep_id=sep_id,
      checkpoint_doc_embedder_path=(None if params.task.model.share_embedders
                                    else ("model", "doc_embedder")),
      index_factory=index_factory(params),
      embed_kwargs={"seq_len": params.task.model.candidate_seq_len,
                    "cpu_accel": params.task.cpu_accel},
      current_step_fn=lambda: int(trainer.global_step.numpy()),
      poll_interval_secs=options.refresh_poll_secs,
      min_step=start_step - 1 if start_step else 0)  # resume: re-index from the restored checkpoint
  towers = export_actions.TowerExporter(
      lambda: trainer.model.embedder, lambda: trainer.model.bert, params.task.vocab_file,
      params.task.do_lower_case,
      doc_embedder_fn=None if params.task.model.share_embedders else lambda: trainer.model.doc_embedder)
  exporter = export_actions.ExportAction(
      model_dir, trainer.global_step, options.export_every_steps or params.trainer.checkpoint_interval,
      towers, params.trainer.train_steps)
  best = export_actions.BestExportAction(exporter, "retrieval_utility")

  def extra_metrics():
    snap = holder.get()
    step = int(trainer.global_step.numpy())
    out = {"index_version": snap.version, "index_snapshot_step": snap.step,
           "index_is_scann": float(getattr(snap.index, "kind", "") == index_lib.ScannIndex.kind),
           "staleness_steps": step - snap.step, "staleness_minutes": (time.time() - snap.wall_time) / 60,
           "refreshes": refresher.refreshes, "refresh_failures": refresher.failures,
           "export_failures": exporter.failures}
    if device_swap is not None:
      # What the train steps searched (assigned between loops), not the holder's newest snapshot.
      out.update({"index_version": device_swap.version, "index_snapshot_step": device_swap.step,
                  "staleness_steps": step - device_swap.step,
                  "staleness_minutes": (time.time() - device_swap.wall_time) / 60,
                  "index_holder_version": snap.version, "device_index_swaps": device_swap.swaps})
      out.update(task.device_pipeline_metrics("pipeline/"))
      return out
    out.update(task.stats.as_metrics("pipeline/"))
    return out

  refresher.start()
  try:
    driver.run_experiment(params, task, model_dir, options.run_mode, strategy,
                          params.task.train_data.global_batch_size,
                          train_actions=[a for a in (device_swap, exporter) if a is not None],
                          eval_actions=[best], extra_metrics_fn=extra_metrics, trainer=trainer)
  finally:
    refresher.stop(timeout=600)
  step = int(trainer.global_step.numpy())
  if exporter.last != step:
    exporter.export(step)
  if "train" in options.run_mode:
    encode_final_export(params, export_common.step_export_dir(model_dir, step),
                        trainer.model.document_embedder, store)
  io_utils.atomic_write_text(os.path.join(model_dir, DONE_FILE), f"{step}\n")
  logging.info("REALM done at step %d; refresher %s; input pipeline %s", step, refresher.stats(),
               task.device_pipeline_metrics() if task.device_mode else task.stats.report())
  return step
