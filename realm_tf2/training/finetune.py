"""ORQA fine-tuning runs (original §3.4): start-up checks, train / eval / predict, best exports.

`run_finetune.py` turns its flags into an experiment config and calls `run`. After every evaluation
that improves `exact_match` (token-level, the metric the original's
`BestSavedModelAndCheckpointExporter` watches), `model_dir/export/best/{retriever,reader}`
(contracts §3), `export/best/checkpoint` and `model_dir/export/serving` (the servable QA model) are
(re)written and `export/best/best_metric.txt` records "<step> <exact_match>". `predict` restores the
best checkpoint (else the latest), as the original's `orqa_predict.py`, and writes the predictions
JSONL plus its metrics as JSON.
"""
import json
import os
from typing import Optional

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.data import qa_pipeline
from realm_tf2.export import common as export_common
from realm_tf2.export import embedder_export
from realm_tf2.export import reader_export
from realm_tf2.export import serving_export
from realm_tf2.export import tfhub_encoder_export
from realm_tf2.tasks import orqa_task
from realm_tf2.training import driver
from realm_tf2.training import startup_checks
from realm_tf2.training import strategy as strategy_lib

TOOL = "run_finetune"
# The original's exporter keeps the checkpoint with the best token-level `exact_match` (original
# §3.4).
BEST_METRIC = "exact_match"
MODES = ("train", "eval", "predict", "train_and_eval")


def check_startup(params, mode: str, model_dir: Optional[str]):
  """Fails early with one clear message: missing files, misaligned block_emb, k > corpus."""
  tc = params.task
  problems = []
  if not model_dir:
    problems.append("--model_dir is required")
  try:
    orqa_task.check_retriever_export(tc.retriever_module_path)
  except (ValueError, FileNotFoundError) as e:
    problems.append(str(e))
  blocks = orqa_task.resolve_blocks_path(tc.block_records_path)
  if not blocks or not tf.io.gfile.exists(blocks):
    problems.append(f"--block_records_path: '{blocks}' does not exist")
  if tc.reader_module_path and not tf.io.gfile.exists(tc.reader_module_path):
    problems.append(f"--reader_module_path '{tc.reader_module_path}' does not exist")
  if blocks and tc.reader_include_title:
    titles = qa_pipeline.titles_path_of(blocks)
    if not tf.io.gfile.exists(titles):
      problems.append(f"task.reader_include_title: '{titles}' does not exist (titles.tfr, aligned "
                      "with blocks.tfr, as build_knowledge_corpus writes it)")
  problems += orqa_task.mips_problems(tc, None)
  if not tc.reader_learning_rate_multiplier > 0:
    problems.append(f"task.reader_learning_rate_multiplier={tc.reader_learning_rate_multiplier} "
                    "must be > 0 (1.0 = the question tower's rate)")
  splits = []
  if "train" in mode:
    splits.append(tc.train_data)
  if "eval" in mode or mode == "predict":
    splits.append(tc.validation_data)
  for data in splits:
    path = qa_pipeline.qa_file_path(data.data_root, data.dataset_name, data.split)
    if not tf.io.gfile.exists(path):
      problems.append(f"QA file '{path}' does not exist (--data_root/--dataset_name)")
  problems += startup_checks.check_seq_lens(tc.model, ["reader_seq_len"])
  inits = [("--reader_module_path", tc.reader_module_path),
           ("--retriever_module_path", tc.retriever_module_path)]
  if not problems:
    problems += startup_checks.check_model_size_matches(tc.model, inits)
  if not problems and tc.vocab_file and tf.io.gfile.exists(tc.vocab_file):
    vocab_size = len(tokenization.load_vocab(tc.vocab_file))
    problems += startup_checks.check_vocab_matches(vocab_size, inits)
  startup_checks.fail_if(TOOL, problems)


class BestExportAction:
  """Orbit eval action: when `metric_name` improved, export retriever/reader/checkpoint/serving.

  Args:
    task / model / global_step: the run's task, model and step variable.
    model_dir: run directory (`export/best`, `export/serving` go below it).
    export_serving: also write `export/serving`.
    metric_name: eval metric to maximise (default: the original's token-level `exact_match`).
    export_reader_hub: also write `export/best/reader_encoder_hub`.
  Attributes: best (float or None; read back from `best_metric.txt` on resume).
  """

  def __init__(self, task: orqa_task.OrqaTask, model, global_step, model_dir: str,
               export_serving: bool = True, metric_name: str = BEST_METRIC,
               export_reader_hub: bool = False):
    self._task = task
    self._model = model
    self._global_step = global_step
    self._model_dir = model_dir
    self._export_serving = export_serving
    self._export_reader_hub = export_reader_hub
    self._metric = metric_name
    self._best_dir = export_common.best_export_dir(model_dir)
    self._best_file = os.path.join(self._best_dir, "best_metric.txt")
    self.best = None
    if tf.io.gfile.exists(self._best_file):
      with tf.io.gfile.GFile(self._best_file) as f:
        self.best = float(f.read().split()[1])

  def __call__(self, output):
    value = output.get(self._metric)
    if value is None:
      logging.warning("eval output has no '%s'; no best export", self._metric)
      return
    value = float(value)
    if self.best is not None and value <= self.best:
      return
    step = int(self._global_step.numpy())
    export_best(self._task, self._model, self._model_dir, step)
    if self._export_serving:
      export_serving_model(self._task, self._model, self._model_dir)
    if self._export_reader_hub:
      tfhub_encoder_export.export_tfhub_encoder(os.path.join(self._best_dir, "reader"),
                                                os.path.join(self._best_dir, "reader_encoder_hub"))
    io_utils.atomic_write_text(self._best_file, f"{step} {value}\n")
    self.best = value
    print(f"[best] step {step} {self._metric}={value:.4g} -> {self._best_dir}", flush=True)


def export_best(task: orqa_task.OrqaTask, model, model_dir: str, step: int):
  """Writes `export/best/{retriever (+ encoded.ckpt), reader, checkpoint/model.ckpt-<step>}`."""
  tc = task.task_config
  best_dir = export_common.best_export_dir(model_dir)
  embedder_export.export_embedder(
      model.retriever, task.vocab_file, tc.do_lower_case, os.path.join(best_dir, "retriever"),
      encoded_checkpoint=orqa_task.check_retriever_export(tc.retriever_module_path))
  reader_export.export_reader(model.reader, task.vocab_file, tc.do_lower_case,
                              os.path.join(best_dir, "reader"))
  with io_utils.atomic_dir(os.path.join(best_dir, "checkpoint")) as tmp:
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, f"model.ckpt-{step}"))


def export_serving_model(task: orqa_task.OrqaTask, model, model_dir: str) -> str:
  """`model_dir/export/serving` (the servable QA model) from `model`, retrieving with
  `task.export_serving_mips`; returns its path."""
  tc = task.task_config
  return serving_export.export_serving(
      model, task.load_corpus()["texts"], task.vocab_file, tc.do_lower_case,
      os.path.join(model_dir, export_common.EXPORT_SUBDIR, "serving"),
      max_question_len=tc.max_question_len, reader_beam_size=model.reader_beam_size,
      mips=tc.export_serving_mips, scann_settings=tc.scann.as_dict())


def best_checkpoint(model_dir: str) -> Optional[str]:
  """Prefix of the checkpoint `export_best` wrote (`export/best/checkpoint/model.ckpt-N`) or None.

  `export_best` writes it with `tf.train.Checkpoint.write`, which keeps no `checkpoint` state file,
  so `tf.train.latest_checkpoint` cannot find it: the prefix is read off the `.index` file's name.
  """
  best = os.path.join(export_common.best_export_dir(model_dir), "checkpoint")
  indexes = tf.io.gfile.glob(os.path.join(best, "model.ckpt-*.index"))
  if not indexes:
    return None

  def step_of(path):
    return int(os.path.basename(path)[len("model.ckpt-"):-len(".index")])
  return max(indexes, key=step_of)[:-len(".index")]


def predict_metrics_path(predictions_path: str) -> str:
  """Where `predict` writes the metrics of `predictions_path`: `<name>.metrics.json` beside it."""
  root, ext = os.path.splitext(predictions_path)
  return (root if ext == ".jsonl" else predictions_path) + ".metrics.json"


def predict(params, task: orqa_task.OrqaTask, model_dir: str,
            metrics_output: Optional[str] = None) -> dict:
  """Restores the best (else latest) checkpoint, predicts the eval split, writes the predictions
  (`task.predict_output`, default `model_dir/predictions.jsonl`) and their metrics as one JSON
  object (the eval metrics plus "predictions", "checkpoint") to `metrics_output` (default
  `predict_metrics_path` of the predictions); returns the metrics."""
  model = task.build_model()
  ckpt = best_checkpoint(model_dir) or tf.train.latest_checkpoint(model_dir)
  if ckpt is None:
    startup_checks.fail_if(TOOL, [f"--mode=predict: no checkpoint in {model_dir} or "
                                  f"{export_common.best_export_dir(model_dir)}/checkpoint"])
  tf.train.Checkpoint(model=model).read(ckpt).expect_partial()
  logging.info("predict: restored %s", ckpt)
  step_fn = tf.function(lambda x: task.validation_step(x, model))
  state = None
  for batch in task.build_inputs(params.task.validation_data):
    state = task.aggregate_logs(state, step_fn(batch))
  metrics = task.reduce_aggregated_logs(state)
  out = params.task.predict_output or os.path.join(model_dir, "predictions.jsonl")
  orqa_task.write_predictions(task.last_predictions, out)
  result = {"predictions": out, "checkpoint": ckpt, **metrics}
  io_utils.atomic_write_text(metrics_output or predict_metrics_path(out),
                             json.dumps(result, sort_keys=True) + "\n")
  print(json.dumps(result), flush=True)
  return result


def run(params, mode: str, model_dir: str, export_serving: bool = True,
        export_reader_hub: bool = False, num_virtual_cpus: int = 0,
        metrics_output: Optional[str] = None):
  """One `run_finetune.py` invocation on a built experiment config.

  Args:
    params: `finetune_experiments.orqa_experiment()` with the run's overrides applied.
    mode: one of `MODES`.
    model_dir: run directory.
    export_serving / export_reader_hub: extra exports at every best export.
    num_virtual_cpus: CPUs to mirror over with the mirrored strategy on a CPU-only host.
    metrics_output: predict mode: where the metrics JSON goes (see `predict`).
  Returns:
    The predict metrics (mode predict), else the last eval logs (or None).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
  check_startup(params, mode, model_dir)
  task = orqa_task.OrqaTask(params.task, logging_dir=model_dir)
  try:
    corpus = task.load_corpus()  # checks block_emb rows == blocks and beam sizes <= corpus
  except ValueError as e:
    startup_checks.fail_if(TOOL, [str(e)])
  startup_checks.fail_if(TOOL, orqa_task.mips_problems(params.task, len(corpus["texts"])))
  if mode == "predict":
    return predict(params, task, model_dir, metrics_output)
  strategy = strategy_lib.get_strategy(params.runtime.distribution_strategy,
                                       params.runtime.tpu or "", num_virtual_cpus=num_virtual_cpus)
  trainer = driver.build_trainer(params, task, strategy, model_dir, train="train" in mode,
                                 evaluate="eval" in mode)
  best = BestExportAction(task, trainer.model, trainer.global_step, model_dir, export_serving,
                          export_reader_hub=export_reader_hub)
  _, eval_logs = driver.run_experiment(params, task, model_dir, mode, strategy,
                                       params.task.train_data.global_batch_size,
                                       eval_actions=[best], trainer=trainer)
  if task.counters.report():
    logging.info("%s", task.counters.report())
  return eval_logs
