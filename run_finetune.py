r"""ORQA / REALM open-domain QA fine-tuning, evaluation and prediction (reference §3.3–§3.5).

  python run_finetune.py --mode=train_and_eval --model_dir=/tmp/orqa \
    --config_file=configs/sizes/base.yaml --config_file=configs/runs/orqa.yaml \
    --retriever_module_path=<embedder export with encoded/encoded.ckpt> \
    --reader_module_path=<bert export> --block_records_path=<corpus dir or blocks.tfr> \
    --data_root=<dir with {Name}.resplit.{train,dev,test}.jsonl> --dataset_name=WebQuestions \
    --num_train_steps=68340

Modes: train, eval (latest checkpoint, dev), train_and_eval, predict (best checkpoint if any, else the
latest; writes --predict_output JSONL). After every evaluation that improves `exact_match`,
`model_dir/export/best/{retriever,reader}` (CONTRACTS §3), `export/best/checkpoint` and
`model_dir/export/serving` (the servable QA model) are (re)written and `export/best/best_metric.txt`
records "<step> <exact_match>".
"""
import json
import os

import realm_tf2  # noqa: F401
from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2 import tokenization
from realm_tf2.export import common as export_common
from realm_tf2.export import embedder_export
from realm_tf2.export import reader_export
from realm_tf2.export import serving_export
from realm_tf2.export import tfhub_encoder_export
from realm_tf2.modeling import hub_init
from realm_tf2.tasks import finetune_experiments
from realm_tf2.tasks import orqa_task
from realm_tf2.training import driver
from realm_tf2.training import flags as flags_lib
from realm_tf2.training import startup_checks
from realm_tf2.training import strategy as strategy_lib

FLAGS = flags.FLAGS

flags_lib.define_common_flags()
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "predict", "train_and_eval"], "What to run.")
flags.DEFINE_string("retriever_module_path", None,
                    "Embedder export (projected + tokenization_info) with encoded/encoded.ckpt.")
flags.DEFINE_string("reader_module_path", None,
                    "A `bert` export (or an ORQA reader export) for the reader; an `embedder` export "
                    "also works (its BERT initialises the reader's, the span head starts fresh).")
flags.DEFINE_string("bert_hub_module_handle", None,
                    "Reader BERT from a TF2 TF Hub BERT encoder (dir, gs:// or URL; weights transferred, "
                    "span head fresh). Same role as --reader_module_path (give one of them).")
flags.DEFINE_string("embedder_hub_module_handle", None,
                    "Alias of --retriever_module_path. ORQA needs block_emb (encoded/encoded.ckpt) of a "
                    "trained embedder, so a TF Hub BERT is not enough here: run ICT from it first "
                    "(run_pretrain.py --mode=ict --bert_hub_module_handle=...) and pass its export.")
flags.DEFINE_string("block_records_path", None, "blocks.tfr, or the knowledge-corpus directory.")
flags.DEFINE_integer("num_block_records", None, "Expected number of blocks (checked).")
flags.DEFINE_string("data_root", None, "Directory of {dataset_name}.resplit.{train,dev,test}.jsonl.")
flags.DEFINE_string("dataset_name", None, "NaturalQuestions, WebQuestions, CuratedTrec, World, ...")
flags.DEFINE_integer("retriever_beam_size", None, "Blocks retrieved for the retriever loss (5000).")
flags.DEFINE_integer("reader_beam_size", None, "Blocks read by the reader (5).")
flags.DEFINE_integer("num_candidates", None, "Alias of --reader_beam_size.")
flags.DEFINE_integer("batch_size", None, "Questions per step (train and eval; the original used 1).")
flags.DEFINE_string("predict_output", None, "Predictions JSONL (predict mode; also written at eval).")
flags.DEFINE_bool("is_regex", None, "Regex answers (default: automatic, True for CuratedTrec).")
flags.DEFINE_enum("eval_split", None, ["dev", "test"], "Split evaluated / predicted (default dev).")
flags.DEFINE_bool("export_serving", True, "Write model_dir/export/serving at every best export.")
flags.DEFINE_bool("export_reader_hub", False,
                  "Also write export/best/reader_encoder_hub (the reader BERT as a TF Hub-format encoder, "
                  "for hub.KerasLayer(..., trainable=True)); a Keras SavedModel save, so off by default.")

FLAG_PATHS = dict(
    flags_lib.COMMON_FLAG_PATHS,
    retriever_module_path="task.retriever_module_path",
    reader_module_path="task.reader_module_path",
    block_records_path="task.block_records_path",
    num_block_records="task.num_block_records",
    retriever_beam_size="task.model.retriever_beam_size",
    reader_beam_size="task.model.reader_beam_size",
    num_candidates="task.model.reader_beam_size",
    predict_output="task.predict_output",
    is_regex="task.is_regex",
)


def _extra_overrides():
  out = {}
  for name, field in (("data_root", "data_root"), ("dataset_name", "dataset_name"),
                      ("batch_size", "global_batch_size")):
    if FLAGS[name].present:
      out[f"task.train_data.{field}"] = FLAGS[name].value
      out[f"task.validation_data.{field}"] = FLAGS[name].value
  if FLAGS["eval_split"].present:
    out["task.validation_data.split"] = FLAGS.eval_split
  return out


def hub_overrides():
  """--bert_hub_module_handle / --embedder_hub_module_handle -> reader / retriever paths (URLs resolved)."""
  out = {}
  pairs = (("bert_hub_module_handle", "reader_module_path", "task.reader_module_path"),
           ("embedder_hub_module_handle", "retriever_module_path", "task.retriever_module_path"))
  for hub_flag, path_flag, path in pairs:
    handle = FLAGS[hub_flag].value
    if not handle:
      continue
    if FLAGS[path_flag].value and FLAGS[path_flag].value != handle:
      raise app.UsageError(f"give only one of --{hub_flag} and --{path_flag}")
    if hub_flag == "embedder_hub_module_handle" and hub_init.is_hub_encoder(handle):
      raise app.UsageError(
          f"--embedder_hub_module_handle={handle} is a TF Hub BERT encoder, but the ORQA retriever needs "
          "a trained embedder with block_emb (encoded/encoded.ckpt). Run ICT from it first: "
          f"python run_pretrain.py --mode=ict --bert_hub_module_handle={handle} --examples_path=... "
          "--retrieval_corpus_path=... --model_dir=ict, then pass "
          "--retriever_module_path=ict/export/<step>/embedder")
    # The reader shares the retriever's tokenizer, so the hub vocab is not taken over (its size is
    # checked against ours when the weights are transferred).
    out.update(hub_init.flag_overrides({path: handle}, vocab_file_given=True, do_lower_case_given=True))
  return out


def check_startup(params, mode: str):
  """Fails early with one clear message: missing files, misaligned block_emb, k > corpus."""
  tc = params.task
  problems = []
  if not FLAGS.model_dir:
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
  if not tc.reader_learning_rate_multiplier > 0:
    problems.append(f"task.reader_learning_rate_multiplier={tc.reader_learning_rate_multiplier} must "
                    "be > 0 (1.0 = the question tower's rate)")
  splits = []
  if "train" in mode:
    splits.append(tc.train_data)
  if "eval" in mode or mode == "predict":
    splits.append(tc.validation_data)
  for data in splits:
    path = orqa_task.qa_pipeline.qa_file_path(data.data_root, data.dataset_name, data.split)
    if not tf.io.gfile.exists(path):
      problems.append(f"QA file '{path}' does not exist (--data_root/--dataset_name)")
  problems += startup_checks.check_seq_lens(tc.model, ["reader_seq_len"])
  if not problems and tc.vocab_file and tf.io.gfile.exists(tc.vocab_file):
    vocab_size = len(tokenization.load_vocab(tc.vocab_file))
    problems += startup_checks.check_vocab_matches(
        vocab_size, [("--reader_module_path", tc.reader_module_path),
                     ("--retriever_module_path", tc.retriever_module_path)])
  startup_checks.fail_if("run_finetune", problems)


class BestExportAction:
  """After each eval: if exact_match improved, export retriever/reader/checkpoint/serving (atomic)."""

  def __init__(self, task: orqa_task.OrqaTask, model, global_step, model_dir: str,
               export_serving: bool = True, metric_name: str = "exact_match",
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


def export_best(task, model, model_dir: str, step: int):
  tc = task.task_config
  best_dir = export_common.best_export_dir(model_dir)
  embedder_export.export_embedder(
      model.retriever, task.vocab_file, tc.do_lower_case, os.path.join(best_dir, "retriever"),
      encoded_checkpoint=orqa_task.check_retriever_export(tc.retriever_module_path))
  reader_export.export_reader(model.reader, task.vocab_file, tc.do_lower_case,
                              os.path.join(best_dir, "reader"))
  with io_utils.atomic_dir(os.path.join(best_dir, "checkpoint")) as tmp:
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, f"model.ckpt-{step}"))


def export_serving_model(task, model, model_dir: str) -> str:
  tc = task.task_config
  return serving_export.export_serving(
      model, task.load_corpus()["texts"], task.vocab_file, tc.do_lower_case,
      os.path.join(model_dir, export_common.EXPORT_SUBDIR, "serving"),
      max_question_len=tc.max_question_len, reader_beam_size=model.reader_beam_size)


def predict(params, task: orqa_task.OrqaTask, model_dir: str) -> dict:
  """Restores the best (else latest) checkpoint, predicts the eval split, writes predictions."""
  model = task.build_model()
  ckpt = best_checkpoint(model_dir) or _latest_model_checkpoint(model_dir)
  if ckpt is None:
    raise SystemExit(f"run_finetune --mode=predict: no checkpoint in {model_dir} or "
                     f"{export_common.best_export_dir(model_dir)}/checkpoint")
  tf.train.Checkpoint(model=model).read(ckpt).expect_partial()
  logging.info("predict: restored %s", ckpt)
  step_fn = tf.function(lambda x: task.validation_step(x, model))
  state = None
  for batch in task.build_inputs(params.task.validation_data):
    logs = {k: v.numpy() for k, v in step_fn(batch).items()}
    state = task.aggregate_logs(state, logs)
  metrics = task.reduce_aggregated_logs(state)
  out = params.task.predict_output or os.path.join(model_dir, "predictions.jsonl")
  orqa_task.write_predictions(task.last_predictions, out)
  print(json.dumps({"predictions": out, **metrics}), flush=True)
  return metrics


def best_checkpoint(model_dir: str):
  """Prefix of the checkpoint `export_best` wrote (`export/best/checkpoint/model.ckpt-<step>`), or None.

  `export_best` writes it with `tf.train.Checkpoint.write`, which keeps no `checkpoint` state file, so
  `tf.train.latest_checkpoint` cannot find it: the prefix is read off the `.index` file's name.
  """
  best = os.path.join(export_common.best_export_dir(model_dir), "checkpoint")
  indexes = tf.io.gfile.glob(os.path.join(best, "model.ckpt-*.index"))
  if not indexes:
    return None
  def step_of(path):
    return int(os.path.basename(path)[len("model.ckpt-"):-len(".index")])
  return max(indexes, key=step_of)[:-len(".index")]


def _latest_model_checkpoint(model_dir):
  latest = tf.train.latest_checkpoint(model_dir)
  return latest


def main(_):
  try:
    params = flags_lib.build_params(finetune_experiments.orqa_experiment(), FLAG_PATHS,
                                    {**_extra_overrides(), **hub_overrides()})
  except (KeyError, ValueError, TypeError, AttributeError) as e:  # unknown/ill-typed config keys
    raise SystemExit(f"run_finetune: bad configuration: {e}") from None
  check_startup(params, FLAGS.mode)
  model_dir = FLAGS.model_dir
  task = orqa_task.OrqaTask(params.task, logging_dir=model_dir)
  try:
    task.load_corpus()  # checks block_emb rows == blocks and beam sizes <= corpus
  except ValueError as e:
    startup_checks.fail_if("run_finetune", [str(e)])
  if FLAGS.mode == "predict":
    predict(params, task, model_dir)
    return
  strategy = strategy_lib.get_strategy(params.runtime.distribution_strategy, params.runtime.tpu or "",
                                       num_virtual_cpus=FLAGS.num_virtual_cpus)
  trainer = driver.build_trainer(params, task, strategy, model_dir, train="train" in FLAGS.mode,
                                 evaluate="eval" in FLAGS.mode)
  best = BestExportAction(task, trainer.model, trainer.global_step, model_dir, FLAGS.export_serving,
                          export_reader_hub=FLAGS.export_reader_hub)
  driver.run_experiment(params, task, model_dir, FLAGS.mode, strategy,
                        params.task.train_data.global_batch_size, eval_actions=[best],
                        trainer=trainer)
  if task.counters.report():
    logging.info("%s", task.counters.report())


if __name__ == "__main__":
  app.run(main)
