r"""Builds the REALM pre-training corpus: sentences + salient spans (original §1.3).

  python -m data_prep.build_pretrain_corpus --input='wiki/*.json' --output_dir=pretrain \
      --knowledge_corpus_dir=corpus --tagger=builtin --num_shards=50

Each output record is a tf.train.Example (realm_tf2/data/corpus_format.PRETRAIN_FEATURES) with
`title`, `text`, sentence and salient-span UTF-8 byte offsets, and `doc_uid`:

* With `--knowledge_corpus_dir` (a build_knowledge_corpus output, built from the SAME input): the
  documents are blocked exactly as that corpus was (vocab, casing, max_block_length and title filter
  are read from its corpus_info.json), one record per block, `text` = the block text, `doc_uid` =
  the block's uid, so the REALM pipeline can remove trivial retrievals (original §1.4). The block
  uids are checked, in lock-step and in bounded memory, against the knowledge corpus's
  `examples.tfr`; disagreements are counted (`uid_mismatch`) and reported.
* Without it: one record per document, `text` = the document body, `doc_uid` = sha1_uid63(title,
  body); documents are not title-filtered unless --title_filter.

Masking spans: `--masking=salient` uses `--tagger` (builtin | dates | spacy, data_prep/span_tagger.py)
on each sentence; `--masking=random` (ablation) takes one random span of 1–3 words per sentence
(seeded by --seed and the record uid, so reruns are identical). A record with no span is not
written and is counted (`no_valid_span`), as the original generator would skip it.

Sharding: pass 1 streams records into one temporary GZIP file; pass 2 copies them into exactly
`--num_shards` shards `pretrain-NNNNN-of-MMMMM` of contiguous chunks (bounded memory). The final
counts report is printed and written to `<output_dir>/report.json` (so read the shards with the
glob `<output_dir>/pretrain-*`).
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import os
import random
import re

from absl import app
from absl import flags
import tensorflow as tf

from data_prep import beam_runner
from data_prep import common
from data_prep import sentence_splitter
from data_prep import span_tagger
from realm_tf2 import io_utils
from realm_tf2.data import corpus_format as cf

FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a script, so data_prep modules import together)."""
  flags.DEFINE_string("input", None, "Input file(s): glob or comma list (JSONL/WikiExtractor/.txt).")
  flags.DEFINE_enum("input_format", "auto", list(common.INPUT_FORMATS), "Input format.")
  flags.DEFINE_string("output_dir", None, "Output directory (local or gs://).")
  flags.DEFINE_integer("num_shards", 8, "Number of output shards.")
  flags.DEFINE_enum("tagger", "builtin", list(span_tagger.TAGGERS), "Salient span tagger.")
  flags.DEFINE_enum("masking", "salient", ["salient", "random"],
                    "salient: tagger spans; random: one random 1-3 word span per sentence (ablation).")
  flags.DEFINE_string("knowledge_corpus_dir", None, "Optional build_knowledge_corpus output built "
                      "from the same input: records become its blocks, doc_uid = block uid.")
  flags.DEFINE_bool("title_filter", False, "Apply ORQA's title filter (always on, as recorded in "
                    "corpus_info.json, with --knowledge_corpus_dir).")
  flags.DEFINE_bool("skip_bad_lines", False, "Count and skip invalid lines instead of failing.")
  flags.DEFINE_integer("seed", 0, "Seed of --masking=random.")
  flags.DEFINE_integer("num_workers", common.default_num_workers(), "Worker processes (<=1: in-process).")
  flags.DEFINE_integer("chunk_size", 64, "Documents per work chunk.")
  beam_runner.define_flags()
  for name in beam_runner.FLAG_NAMES:
    flags.declare_key_flag(name)  # listed by --help of this CLI

_WORD_RE = re.compile(r"\w+", re.UNICODE)


class _State:

  def __init__(self, tagger_name, masking, seed, blocking):
    self.tagger = span_tagger.get_tagger(tagger_name) if masking == "salient" else None
    self.masking, self.seed = masking, seed
    self.blocker = None
    if blocking:
      from realm_tf2.tokenization import RealmTokenizer  # pylint: disable=g-import-not-at-top
      self.blocker = common.Blocker(RealmTokenizer(blocking["vocab_file"], blocking["do_lower_case"]),
                                    blocking["max_block_length"])


def _init_worker(tagger_name, masking, seed, blocking):
  return _State(tagger_name, masking, seed, blocking)


def random_word_span(sentence, rng):
  """One span of 1-3 consecutive words (char offsets), or None for a sentence without words."""
  words = [m.span() for m in _WORD_RE.finditer(sentence)]
  if not words:
    return None
  k = min(rng.randint(1, 3), len(words))
  i = rng.randrange(0, len(words) - k + 1)
  return (words[i][0], words[i + k - 1][1])


def _record(state, title, text, sentence_spans, uid, counters):
  """Tags the sentences of `text`; returns a serialized Example or None (no span)."""
  sentences = [text[s:e] for s, e in sentence_spans]
  spans = []
  if state.masking == "salient":
    for (s0, _), tags in zip(sentence_spans, state.tagger.tag_batch(sentences)):
      spans.extend((s0 + a, s0 + b) for a, b in tags)
  else:
    rng = random.Random(state.seed * 1000003 + uid)
    for (s0, _), sent in zip(sentence_spans, sentences):
      span = random_word_span(sent, rng)
      if span:
        spans.append((s0 + span[0], s0 + span[1]))
  if not spans:
    counters.skip("no_valid_span")
    return None
  counters.add("spans", len(spans))
  counters.add("sentences", len(sentence_spans))
  # Sentences and spans are each sorted & non-overlapping; convert both in one linear pass.
  offsets = sentence_splitter.char_to_byte_offsets(
      text, [o for sp in sentence_spans for o in sp] + [o for sp in spans for o in sp])
  n = 2 * len(sentence_spans)
  sent_b = list(zip(offsets[0:n:2], offsets[1:n:2]))
  span_b = list(zip(offsets[n::2], offsets[n + 1::2]))
  ex = cf.pretrain_example(title, text, sent_b, span_b, uid)
  return ex.SerializeToString(deterministic=True)  # byte-identical across processes/runs


def _process_chunk(state, docs):
  """Worker: [(title, body)] -> ([(uid, serialized Example or None)], Counters)."""
  counters = io_utils.Counters()
  out = []
  if state.blocker is not None:
    for blocks in state.blocker.block_documents(docs, counters):
      for b in blocks:
        out.append((b.uid, _record(state, b.title, b.text, b.sentence_char_spans, b.uid, counters)))
  else:
    for title, body in docs:
      uid = io_utils.sha1_uid63(title, body)
      spans = sentence_splitter.split_sentences(body)
      if not spans:
        counters.skip("no_sentences")
        continue
      out.append((uid, _record(state, title, body, spans, uid, counters)))
  return out, counters


def _knowledge_uids(corpus_dir):
  for ser in cf.iter_records([os.path.join(corpus_dir, cf.EXAMPLES_FILE)]):
    yield cf._example_to_py(ser, cf.ORQA_EXAMPLE_FEATURES)["doc_uid"]  # pylint: disable=protected-access


def build_pretrain_corpus(input_pattern, output_dir, num_shards=8, tagger="builtin",
                          masking="salient", knowledge_corpus_dir=None, title_filter=False,
                          skip_bad_lines=False, seed=0, num_workers=1, chunk_size=64,
                          input_format="auto", verbose=True, beam=False, runner="DirectRunner",
                          beam_options=()):
  """Runs the build (see module docstring). Returns the io_utils.Counters.

  With `beam`, the per-document work runs as an Apache Beam pipeline on `runner` (one input file per
  work item, see `data_prep.beam_runner`); the outputs are identical to a local build."""
  if masking == "salient":
    span_tagger.get_tagger(tagger)  # fail early (e.g. spaCy missing), before spawning workers
  counters = io_utils.Counters("build_pretrain_corpus")
  blocking = None
  known_uids = None
  if knowledge_corpus_dir:
    info = cf.read_corpus_info(knowledge_corpus_dir)
    blocking = {k: info[k] for k in ("vocab_file", "do_lower_case", "max_block_length")}
    title_filter = info.get("title_filter", True)
    known_uids = _knowledge_uids(knowledge_corpus_dir)
  tf.io.gfile.makedirs(output_dir)
  tmp = cf.AtomicRecordWriter(os.path.join(output_dir, "pass1.tfrecord.gz"), "GZIP")
  progress = common.Progress("build_pretrain_corpus", counters) if verbose else None
  try:
    init_args = (tagger, masking, seed, blocking)
    results = common.process_documents(
        input_pattern, counters, _init_worker, init_args, _process_chunk, chunk_size=chunk_size,
        input_format=input_format, skip_bad_lines=skip_bad_lines, title_filter=title_filter,
        num_workers=num_workers, beam=beam, runner=runner, beam_options=beam_options,
        beam_tmp_dir=os.path.join(output_dir, ".beam_tmp"))
    for records, worker_counters in results:
      common.merge_counters(counters, worker_counters)
      for uid, ser in records:
        if known_uids is not None:
          if next(known_uids, None) != uid:
            counters.add("uid_mismatch")
        if ser is not None:
          tmp.write(ser)
          counters.written += 1
      if progress:
        progress.update()
    if known_uids is not None and next(known_uids, None) is not None:
      counters.add("uid_mismatch")  # the knowledge corpus has more blocks than this input gave
    tmp.close()
    cf.write_contiguous_shards(cf.iter_records([tmp.tmp], "GZIP"), counters.written,
                               os.path.join(output_dir, cf.PRETRAIN_SHARD_PREFIX), num_shards, "GZIP")
  finally:
    tmp.abort()
  common.write_report(os.path.join(output_dir, common.REPORT_FILE),
                      common.counters_report(counters))
  if progress:
    progress.update(force=True)
  return counters


def main(argv):
  del argv
  counters = build_pretrain_corpus(
      FLAGS.input, FLAGS.output_dir, FLAGS.num_shards, FLAGS.tagger, FLAGS.masking,
      FLAGS.knowledge_corpus_dir, FLAGS.title_filter, FLAGS.skip_bad_lines, FLAGS.seed,
      FLAGS.num_workers, FLAGS.chunk_size, FLAGS.input_format, beam=FLAGS.beam,
      runner=FLAGS.runner, beam_options=FLAGS.beam_options)
  counters.print_report()
  if counters.extra.get("uid_mismatch"):
    raise SystemExit("block uids disagree with --knowledge_corpus_dir: was it built from the same "
                     "input with the same flags?")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output_dir"])
  app.run(main)
