r"""The main job in one command: REALM + ORQA end to end on the embedded default world.

  python run_demo.py [--output_dir=./runs/demo] [--num_entities=600] [--size=mini] [--seed=0]
  bash scripts/run_demo.sh [same flags]          # the README command (creates/reuses .venv first)

Stages (each a subprocess of the project's own CLI, progress streamed, full logs in OUTPUT/logs/):
  world            python -m realm_tf2.world.generator         fictional knowledge world + QA splits
  vocab            python -m data_prep.build_vocab              (or --vocab_file / the vocab of --init_from)
  knowledge_corpus python -m data_prep.build_knowledge_corpus   retrieval corpus shards + ORQA blocks
  pretrain_corpus  python -m data_prep.build_pretrain_corpus    sentences + salient spans
  ict              run_pretrain.py --mode=ict                   retriever warm start + encoded.ckpt
  realm            run_pretrain.py --mode=realm                 live retrieval, background index
                                                                refreshes (>= 2 required, checked)
  encode           python -m realm_tf2.retrieval.refresh --once final retriever's block index
  orqa             run_finetune.py --mode=train_and_eval        fine-tuning, best + serving exports
  evaluate         run_finetune.py --mode=predict + python -m realm_tf2.evaluate   dev EM, recall@5
  answer           export/serving SavedModel                    sample dev questions + evidence block
Ends with a summary table, also written to OUTPUT/summary.json. Re-running reuses finished stages whose
settings did not change (OUTPUT/stages/<stage>.json); --skip_to=STAGE re-runs from STAGE on;
--force re-runs everything.

--init_from=DIR takes the output of `python -m data_prep.convert_checkpoint --source_format=hf_bert
--source=<HF BERT dir> --output_dir=DIR` (or bert_tf1/realm): its BERT initialises the ICT retriever
tower and the REALM knowledge-augmented encoder, its vocab replaces build_vocab, its size replaces --size.
"""
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realm_tf2.demo import pipeline  # noqa: E402  (no TensorFlow import: the stages are subprocesses)

_D = pipeline.DemoConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", _D.output_dir, "Run directory (reused by later runs).")
flags.DEFINE_integer("seed", _D.seed, "World and input-pipeline seed.")
flags.DEFINE_integer("num_entities", _D.num_entities, "World size (entities = knowledge documents).")
flags.DEFINE_enum("size", _D.size, list(pipeline.SIZES), "Model size: configs/sizes/<size>.yaml.")
flags.DEFINE_string("vocab_file", "", "Use this WordPiece vocab instead of building one.")
flags.DEFINE_string("init_from", "", "data_prep.convert_checkpoint output dir (bert/, bert_ckpt/): "
                    "initialises both BERT towers; its vocab and size are used.")
flags.DEFINE_integer("ict_steps", _D.ict_steps, "ICT training steps.")
flags.DEFINE_integer("realm_steps", _D.realm_steps, "REALM pre-training steps.")
flags.DEFINE_integer("orqa_steps", _D.orqa_steps, "ORQA fine-tuning steps.")
flags.DEFINE_integer("ict_batch_size", _D.ict_batch_size, "ICT global batch size.")
flags.DEFINE_integer("realm_batch_size", _D.realm_batch_size, "REALM global batch size.")
flags.DEFINE_integer("orqa_batch_size", _D.orqa_batch_size, "ORQA questions per step.")
flags.DEFINE_integer("refresh_every_steps", _D.refresh_every_steps,
                     "REALM checkpoint interval = index refresh cadence.")
flags.DEFINE_integer("vocab_size", _D.vocab_size, "build_vocab --vocab_size.")
flags.DEFINE_integer("max_block_length", _D.max_block_length,
                     "Knowledge-corpus block length in wordpieces (also the candidate/reader block length).")
flags.DEFINE_integer("num_samples", _D.num_samples, "Dev questions answered via the serving model.")
flags.DEFINE_bool("xla", _D.xla, "XLA-compile the training steps (long compile on CPU; use on TPU/GPU).")
flags.DEFINE_enum("retrieval", _D.retrieval, ["host", "device"],
                  "REALM stage: where the candidates are chosen (run_pretrain.py --retrieval).")
flags.DEFINE_string("ict_overrides", "", "Extra --params_override for the ICT stage ('a.b=1,...').")
flags.DEFINE_string("realm_overrides", "", "Extra --params_override for the REALM stage.")
flags.DEFINE_string("orqa_overrides", "", "Extra --params_override for ORQA fine-tuning/prediction.")
flags.DEFINE_enum("skip_to", "", [""] + list(pipeline.STAGES),
                  "Reuse the (finished) stages before this one and re-run from it on.")
flags.DEFINE_bool("force", False, "Re-run every stage even if finished with the same settings.")
flags.DEFINE_bool("quiet", False, "Do not stream the stages' progress lines (logs still written).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = pipeline.DemoConfig(
      output_dir=FLAGS.output_dir, seed=FLAGS.seed, num_entities=FLAGS.num_entities, size=FLAGS.size,
      vocab_file=FLAGS.vocab_file, init_from=FLAGS.init_from, ict_steps=FLAGS.ict_steps,
      realm_steps=FLAGS.realm_steps, orqa_steps=FLAGS.orqa_steps, ict_batch_size=FLAGS.ict_batch_size,
      realm_batch_size=FLAGS.realm_batch_size, orqa_batch_size=FLAGS.orqa_batch_size,
      refresh_every_steps=FLAGS.refresh_every_steps, vocab_size=FLAGS.vocab_size,
      max_block_length=FLAGS.max_block_length, num_samples=FLAGS.num_samples, xla=FLAGS.xla,
      retrieval=FLAGS.retrieval,
      extra_overrides={k: v for k, v in (("ict", FLAGS.ict_overrides), ("realm", FLAGS.realm_overrides),
                                         ("orqa", FLAGS.orqa_overrides)) if v})
  try:
    pipeline.Demo(config, stream=not FLAGS.quiet).run(skip_to=FLAGS.skip_to, force=FLAGS.force)
  except pipeline.StageError as e:
    print(f"\nrun_demo: FAILED: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
