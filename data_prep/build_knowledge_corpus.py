r"""Builds the knowledge corpus: REALM retrieval-corpus shards AND ORQA blocks, row-aligned.

  python -m data_prep.build_knowledge_corpus --input='wiki/*.json' --vocab_file=vocab.txt \
      --output_dir=corpus --num_shards=50

Input: JSONL `{"title", "body"}` (`"text"` accepted), WikiExtractor `--json` output, or `.txt`
(one document per line); glob or comma-separated list, read in sorted-file, line order.
Processing (original §3.1): ORQA title filter (List of / Index of / Outline of /
(disambiguation), counted), rule-based sentence splitting (data_prep.sentence_splitter), greedy
blocking to `--max_block_length` wordpieces including [CLS]/[SEP]/[SEP] (common.Blocker).
Output (layout in realm_tf2/data/corpus_format.py):
  blocks.tfr, titles.tfr, examples.tfr (ORQA, uncompressed), realm/blocks-NNNNN-of-MMMMM (GZIP),
  corpus_info.json, report.json (the final counts report, also printed). Row i of every view is
  block i, in input order (deterministic, unlike ORQA's
  imap_unordered); `doc_uid` = sha1_uid63(title, block text).

Streaming scheme for the shards: the number of blocks is unknown until the input is consumed, so
pass 1 streams blocks into the three ORQA files (sequential writes, bounded memory); pass 2 reads
them back in lock-step and writes exactly `--num_shards` REALM shards of contiguous chunks of
ceil(total / num_shards) blocks (original §1.8). Pass 2 only re-reads records, it does
not re-tokenise. Every file is written under a temporary name and renamed when complete.

Parallelism: documents are tokenised and blocked in `--num_workers` spawned processes, in chunks of
`--chunk_size` documents, with at most 2 × workers chunks in flight; results are consumed in input
order.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import json
import os

from absl import app
from absl import flags
import tensorflow as tf

from data_prep import beam_runner
from data_prep import common
from realm_tf2 import io_utils
from realm_tf2.data import corpus_format as cf

FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a script, so data_prep modules import together)."""
  flags.DEFINE_string("input", None, "Input file(s): glob or comma-separated list (JSONL, "
                      "WikiExtractor --json, or .txt one document per line).")
  flags.DEFINE_enum("input_format", "auto", list(common.INPUT_FORMATS), "Input format.")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocab (one token per line).")
  flags.DEFINE_bool("do_lower_case", True, "BERT uncased normalisation.")
  flags.DEFINE_string("output_dir", None, "Output directory (local or gs://).")
  flags.DEFINE_integer("num_shards", 8, "Number of REALM retrieval-corpus shards.")
  flags.DEFINE_integer("max_block_length", 288, "Max wordpieces of [CLS] title [SEP] block [SEP].")
  flags.DEFINE_bool("skip_bad_lines", False, "Count and skip invalid lines instead of failing.")
  flags.DEFINE_bool("title_filter", True, "Drop List of / Index of / Outline of / disambiguation.")
  flags.DEFINE_integer("num_workers", common.default_num_workers(), "Worker processes (<=1: in-process).")
  flags.DEFINE_integer("chunk_size", 64, "Documents per work chunk.")
  beam_runner.define_flags()
  for name in beam_runner.FLAG_NAMES:
    flags.declare_key_flag(name)  # listed by --help of this CLI


def _init_worker(vocab_file, do_lower_case, max_block_length):
  from realm_tf2.tokenization import RealmTokenizer  # pylint: disable=g-import-not-at-top
  return common.Blocker(RealmTokenizer(vocab_file, do_lower_case), max_block_length)


def _process_chunk(blocker, docs):
  """Worker: [(title, body)] -> ([(text bytes, title bytes, examples.tfr bytes)], Counters)."""
  counters = io_utils.Counters()
  out = []
  for blocks in blocker.block_documents(docs, counters):
    if blocks:
      counters.add("documents_blocked")
    for b in blocks:
      ex = cf.orqa_example(b.title_ids, b.token_ids, b.sentence_starts, b.uid)
      # deterministic=True: proto map order would otherwise differ between processes.
      out.append((b.text.encode("utf-8"), b.title.encode("utf-8"),
                  ex.SerializeToString(deterministic=True)))
  return out, counters


def _realm_records(tmp_paths):
  """Pass 2: REALM records rebuilt from the (tmp) ORQA files, in lock-step."""
  blocks = cf.iter_records([tmp_paths[cf.BLOCKS_FILE]])
  titles = cf.iter_records([tmp_paths[cf.TITLES_FILE]])
  examples = cf.iter_records([tmp_paths[cf.EXAMPLES_FILE]])
  for i, (text, title, ser) in enumerate(zip(blocks, titles, examples)):
    ex = cf._example_to_py(ser, cf.ORQA_EXAMPLE_FEATURES)  # pylint: disable=protected-access
    yield cf.realm_example(title, text, ex["title_ids"], ex["token_ids"], ex["doc_uid"],
                           i).SerializeToString(deterministic=True)


def build_knowledge_corpus(input_pattern, vocab_file, output_dir, num_shards=8, do_lower_case=True,
                           max_block_length=288, skip_bad_lines=False, title_filter=True,
                           num_workers=1, chunk_size=64, input_format="auto", verbose=True,
                           beam=False, runner="DirectRunner", beam_options=()):
  """Runs the whole build (see module docstring). Returns the io_utils.Counters.

  With `beam`, the per-document work runs as an Apache Beam pipeline on `runner` (one input file per
  work item, see `data_prep.beam_runner`); the outputs are identical to a local build."""
  counters = io_utils.Counters("build_knowledge_corpus")
  tf.io.gfile.makedirs(output_dir)
  join = os.path.join
  writers = {name: cf.AtomicRecordWriter(join(output_dir, name))
             for name in (cf.BLOCKS_FILE, cf.TITLES_FILE, cf.EXAMPLES_FILE)}
  progress = common.Progress("build_knowledge_corpus", counters) if verbose else None
  try:
    init_args = (vocab_file, do_lower_case, max_block_length)
    results = common.process_documents(
        input_pattern, counters, _init_worker, init_args, _process_chunk, chunk_size=chunk_size,
        input_format=input_format, skip_bad_lines=skip_bad_lines, title_filter=title_filter,
        num_workers=num_workers, beam=beam, runner=runner, beam_options=beam_options,
        beam_tmp_dir=join(output_dir, ".beam_tmp"))
    for records, worker_counters in results:
      common.merge_counters(counters, worker_counters)
      for text, title, ex in records:
        writers[cf.BLOCKS_FILE].write(text)
        writers[cf.TITLES_FILE].write(title)
        writers[cf.EXAMPLES_FILE].write(ex)
        counters.written += 1
      if progress:
        progress.update()
    for w in writers.values():
      w.close()  # flush: pass 2 reads the temp files back
    total = counters.written
    cf.write_contiguous_shards(
        _realm_records({k: w.tmp for k, w in writers.items()}), total,
        join(output_dir, cf.REALM_SUBDIR, cf.REALM_SHARD_PREFIX), num_shards, "GZIP")
    for w in writers.values():
      w.commit()
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  info = {"vocab_file": vocab_file, "do_lower_case": bool(do_lower_case),
          "max_block_length": max_block_length, "title_filter": bool(title_filter),
          "num_blocks": counters.written, "num_shards": num_shards,
          "realm_corpus_pattern": cf.realm_corpus_pattern(output_dir),
          "counts": counters.as_dict()}
  io_utils.atomic_write_text(join(output_dir, cf.CORPUS_INFO_FILE), json.dumps(info, indent=1) + "\n")
  common.write_report(join(output_dir, common.REPORT_FILE), common.counters_report(counters))
  if progress:
    progress.update(force=True)
  return counters


def main(argv):
  del argv
  counters = build_knowledge_corpus(
      FLAGS.input, FLAGS.vocab_file, FLAGS.output_dir, FLAGS.num_shards, FLAGS.do_lower_case,
      FLAGS.max_block_length, FLAGS.skip_bad_lines, FLAGS.title_filter, FLAGS.num_workers,
      FLAGS.chunk_size, FLAGS.input_format, beam=FLAGS.beam, runner=FLAGS.runner,
      beam_options=FLAGS.beam_options)
  counters.print_report()


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "vocab_file", "output_dir"])
  app.run(main)
