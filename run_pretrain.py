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
export/best (best eval retrieval_utility), TRAINING_DONE at the end. The runs themselves are
`realm_tf2.training.pretrain.run_ict` / `run_realm`.
"""
import os

import realm_tf2  # noqa: F401
from absl import app
from absl import flags

from realm_tf2.modeling import hub_init
from realm_tf2.tasks import pretrain_experiments
from realm_tf2.training import flags as flags_lib
from realm_tf2.training import pretrain

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
flags.DEFINE_string("init_checkpoint", None,
                    "ICT: BERT init of the tower from a checkpoint (as --bert_hub_module_handle).")
flags.DEFINE_string("examples_path", None, "ICT: ORQA examples.tfr (or --blocks_dir).")
flags.DEFINE_string("blocks_dir", None, "ICT: an ORQA blocks directory holding examples.tfr.")
flags.DEFINE_string("eval_examples_path", None, "ICT: held-out examples.tfr for evaluation.")
flags.DEFINE_integer("num_candidates", None, "REALM: documents per query incl. the null document (8).")
flags.DEFINE_enum("mips", None, ["brute_force", "scann", "auto"],
                  "REALM: index the input pipeline searches (default from the config: auto = ScaNN "
                  "for large corpora, see realm_tf2.retrieval.index.AUTO_SCANN_MIN_ROWS); ScaNN "
                  "settings from YAML under task.scann.")
flags.DEFINE_enum("retrieval", None, ["host", "device"],
                  "REALM: where the candidates are chosen (default from the config: host). host: "
                  "the input pipeline, with the stale snapshot's query embedder and index (any "
                  "--mips); device: the train step, with the live query tower and block_emb held "
                  "on the accelerators (task.device_retrieval; see docs/architecture.md).")
flags.DEFINE_integer("batch_size", None, "Global batch size.")
flags.DEFINE_enum("refresh", "internal", ["internal", "external"],
                  "internal: a background thread re-embeds the corpus from this run's checkpoints; "
                  "external: load export/encoded/<step>/ written by `python -m realm_tf2.retrieval.refresh`.")
flags.DEFINE_integer("refresh_every_steps", None,
                     "Checkpoint interval (= how often the refresher gets new weights); default from config.")
flags.DEFINE_float("refresh_poll_secs", 2.0, "How often the refresher looks for a new checkpoint.")
flags.DEFINE_integer("export_every_steps", None, "REALM: write export/<step>/{embedder,bert} every N "
                     "steps (default: the checkpoint interval).")
flags.DEFINE_integer("seed", None, "Seed of the input pipelines' randomness.")
flags.DEFINE_bool("deterministic", None, "Deterministic input order (reproducible runs).")
flags.DEFINE_integer("num_eval_shards", None, "REALM: first N sorted pre-training shards held out (5).")
flags.DEFINE_enum("run_mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")

SHARED_FLAG_PATHS = dict(
    flags_lib.COMMON_FLAG_PATHS,
    batch_size=flags_lib.on_splits("global_batch_size"),
    seed=flags_lib.on_splits("seed"),
    deterministic=flags_lib.on_splits("deterministic"),
    refresh_every_steps="trainer.checkpoint_interval")
ICT_FLAG_PATHS = dict(SHARED_FLAG_PATHS, init_checkpoint="task.init_checkpoint")
REALM_FLAG_PATHS = dict(
    SHARED_FLAG_PATHS,
    pretrain_corpus_path=flags_lib.on_splits("input_path"),
    retrieval_corpus_path="task.retrieval_corpus_path",
    num_candidates="task.model.num_candidates",
    mips="task.mips",
    retrieval="task.retrieval",
    num_eval_shards=flags_lib.on_splits("num_eval_shards"))


def _hub_overrides(handles):
  """Init sources of the *_hub_module_handle flags; a TF Hub encoder also brings its vocab and
  do_lower_case unless --vocab_file / --do_lower_case are given (hub_init.flag_overrides)."""
  return hub_init.flag_overrides(handles, FLAGS["vocab_file"].present, FLAGS["do_lower_case"].present)


def build_params(mode: str):
  """Flags -> the validated ExperimentConfig of `mode`."""
  if mode == "ict":
    extra = _hub_overrides({"task.bert_init": FLAGS.bert_hub_module_handle})
    examples = FLAGS.examples_path or (os.path.join(FLAGS.blocks_dir, "examples.tfr")
                                       if FLAGS.blocks_dir else None)
    if examples:
      extra["task.train_data.input_path"] = examples
      extra["task.validation_data.input_path"] = FLAGS.eval_examples_path or examples
    return flags_lib.build_params(pretrain_experiments.ict_experiment(), ICT_FLAG_PATHS, extra)
  if FLAGS.init_checkpoint:
    raise app.UsageError("--init_checkpoint is ICT's; REALM takes --embedder_hub_module_handle and "
                         "--bert_hub_module_handle")
  extra = _hub_overrides({"task.embedder_init": FLAGS.embedder_hub_module_handle,
                          "task.bert_init": FLAGS.bert_hub_module_handle})
  return flags_lib.build_params(pretrain_experiments.realm_experiment(), REALM_FLAG_PATHS, extra)


def main(argv):
  del argv
  if not FLAGS.mode:
    raise app.UsageError("--mode=ict or --mode=realm is required (see --help)")
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required")
  try:
    params = build_params(FLAGS.mode)
  except (KeyError, ValueError, TypeError, AttributeError) as e:  # unknown/ill-typed config keys
    raise SystemExit(f"run_pretrain: bad configuration: {e}") from None
  if FLAGS.mode == "ict":
    required = (("--examples_path or --blocks_dir", params.task.train_data.input_path),)
  else:
    required = (("--pretrain_corpus_path", params.task.train_data.input_path),
                ("--retrieval_corpus_path", params.task.retrieval_corpus_path),
                ("--vocab_file", params.task.vocab_file))
  for name, value in required:
    if not value:
      raise app.UsageError(f"{FLAGS.mode} needs {name}")
  options = pretrain.PretrainOptions(
      run_mode=FLAGS.run_mode, refresh=FLAGS.refresh, refresh_poll_secs=FLAGS.refresh_poll_secs,
      export_every_steps=FLAGS.export_every_steps,
      retrieval_corpus_path=FLAGS.retrieval_corpus_path if FLAGS.mode == "ict" else None,
      num_virtual_cpus=FLAGS.num_virtual_cpus)
  pretrain.check_startup(params, FLAGS.mode, options)
  run = pretrain.run_ict if FLAGS.mode == "ict" else pretrain.run_realm
  run(params, FLAGS.model_dir, options)


if __name__ == "__main__":
  app.run(main)
