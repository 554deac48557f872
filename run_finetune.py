r"""ORQA / REALM open-domain QA fine-tuning, evaluation and prediction (original §3.3–§3.5).

  python run_finetune.py --mode=train_and_eval --model_dir=/tmp/orqa \
    --config_file=configs/sizes/base.yaml --config_file=configs/runs/orqa.yaml \
    --retriever_module_path=<embedder export with encoded/encoded.ckpt> \
    --reader_module_path=<bert export> --block_records_path=<corpus dir or blocks.tfr> \
    --data_root=<dir with {Name}.resplit.{train,dev,test}.jsonl> --dataset_name=WebQuestions \
    --num_train_steps=68340

Modes: train, eval (latest checkpoint, dev), train_and_eval, predict (best checkpoint if any, else the
latest; writes --predict_output JSONL and its metrics to --metrics_output, by default beside it as
`<name>.metrics.json`). Flags -> config here; the run itself is `realm_tf2.training.finetune.run`
(best-by-`exact_match` exports of `export/best/{retriever,reader,checkpoint}` and `export/serving`).
"""
import realm_tf2  # noqa: F401
from absl import app
from absl import flags

from realm_tf2.modeling import hub_init
from realm_tf2.tasks import finetune_experiments
from realm_tf2.training import finetune
from realm_tf2.training import flags as flags_lib

FLAGS = flags.FLAGS

flags_lib.define_common_flags()
flags.DEFINE_enum("mode", "train_and_eval", list(finetune.MODES), "What to run.")
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
flags.DEFINE_string("metrics_output", None, "Predict mode: JSON file of the prediction metrics "
                    "(default: beside --predict_output, `<name>.metrics.json`).")
flags.DEFINE_bool("is_regex", None, "Regex answers (default: automatic, True for CuratedTrec). "
                  "Training takes the patterns' occurrences in the corpus as gold spans.")
flags.DEFINE_enum("mips", None, ["brute_force", "scann", "auto"],
                  "Retrieval over the corpus (default from the config: brute_force, exact and "
                  "XLA-compilable); scann = ScaNN's TF ops (CPU only, needs --noxla); auto = "
                  "ScaNN from realm_tf2.retrieval.index.AUTO_SCANN_MIN_ROWS blocks. Settings "
                  "under task.scann.")
flags.DEFINE_enum("export_serving_mips", None, ["brute_force", "scann"],
                  "Retrieval inside export/serving (default brute_force: plain TF, portable); "
                  "scann embeds a ScaNN index and its ops (loading needs `import scann`).")
flags.DEFINE_bool("reader_include_title", None,
                  "The reader reads `[CLS] question [SEP] title [SEP] body [SEP]` (titles.tfr "
                  "beside blocks.tfr); answers may come from the title. Off by default, as the "
                  "original.")
flags.DEFINE_enum("eval_split", None, ["dev", "test"], "Split evaluated / predicted (default dev).")
flags.DEFINE_integer("seed", None, "Seed of the training input order and of the weights that start fresh.")
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
    mips="task.mips",
    export_serving_mips="task.export_serving_mips",
    reader_include_title="task.reader_include_title",
    data_root=flags_lib.on_splits("data_root"),
    dataset_name=flags_lib.on_splits("dataset_name"),
    batch_size=flags_lib.on_splits("global_batch_size"),
    eval_split="task.validation_data.split",
    seed="task.train_data.seed",
)


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


def main(_):
  try:
    params = flags_lib.build_params(finetune_experiments.orqa_experiment(), FLAG_PATHS,
                                    hub_overrides())
  except (KeyError, ValueError, TypeError, AttributeError) as e:  # unknown/ill-typed config keys
    raise SystemExit(f"run_finetune: bad configuration: {e}") from None
  finetune.run(params, FLAGS.mode, FLAGS.model_dir, export_serving=FLAGS.export_serving,
               export_reader_hub=FLAGS.export_reader_hub, num_virtual_cpus=FLAGS.num_virtual_cpus,
               metrics_output=FLAGS.metrics_output)


if __name__ == "__main__":
  app.run(main)
