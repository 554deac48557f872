"""Runs a data_prep builder's per-document work as an Apache Beam pipeline (`--beam`, `--runner`).

For corpora beyond one machine. The builders' per-document functions (`_init_worker` /
`_process_chunk` of build_knowledge_corpus and build_pretrain_corpus) run unchanged inside Beam
workers, one input file per work item: read the file's documents (`common.iter_documents`, with its
counted skips), cut them into chunks, process each chunk and write the pickled results to
`<tmp_dir>/part-<file index>` (atomically). After the pipeline, `map_files` streams those parts back
in input order, which is exactly the stream `common.ordered_parallel_map` yields, so the builders'
writers (row-aligned ORQA files, REALM shards, uid checks) run as they do locally and the outputs are
byte-identical to a local build (tested). The final write is sequential I/O over already-processed
records; the CPU-heavy tokenizing, blocking and tagging is what runs distributed.

Beam is optional: `pip install 'realm-tf2[beam]'` (Beam 2.77 installs beside TF 2.20 but pins
protobuf < 7, so it lives in its own extra). DirectRunner is the default runner; pass e.g.
`--runner=DataflowRunner --beam_options="--project=P --region=R --temp_location=gs://b/tmp
--setup_file=./setup.py"` (remote workers need this package: `--setup_file` stages it).
Input and `tmp_dir` paths go through tf.io.gfile, so gs:// works on remote workers.
"""
import os
import pickle
import re
import shlex
from typing import Callable, Iterator, Sequence

import tensorflow as tf

from data_prep import common
from realm_tf2 import io_utils

PART_PREFIX = "part-"
FLAG_NAMES = ("beam", "runner", "beam_options")


def define_flags():
  """--beam, --runner, --beam_options on the absl FLAGS (the builders' CLIs call this)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("beam", False, "Run the per-document work as an Apache Beam pipeline (needs "
                    "pip install 'realm-tf2[beam]'); outputs are identical to a local build.")
  flags.DEFINE_string("runner", "DirectRunner", "Beam runner with --beam (DirectRunner, "
                      "DataflowRunner, FlinkRunner, ...).")
  flags.DEFINE_string("beam_options", "", "Extra Beam pipeline options with --beam, one "
                      "shell-quoted string, e.g. \"--project=P --region=R --temp_location=gs://b/t\".")


def import_beam():
  """Returns the `apache_beam` module, or raises a clear error naming the extra to install."""
  try:
    import apache_beam  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("--beam needs Apache Beam: pip install 'realm-tf2[beam]' (or apache-beam)") from e
  return apache_beam


def part_path(tmp_dir: str, index: int) -> str:
  return os.path.join(tmp_dir, f"{PART_PREFIX}{index:06d}")


def process_file(state, chunk_fn: Callable, index: int, path: str, tmp_dir: str, chunk_size: int,
                 input_format: str, skip_bad_lines: bool, title_filter: bool) -> int:
  """One work item: file `path` -> `part_path(tmp_dir, index)`; returns the number of chunks.

  Each record of the part is a pickled `(records, Counters)` chunk result; the last one carries the
  file's reading counters (lines read, counted skips) with no records.
  """
  counters = io_utils.Counters()
  docs = common.iter_documents(path, counters, input_format, skip_bad_lines,
                               apply_title_filter=title_filter)
  chunks = 0
  with io_utils.atomic_path(part_path(tmp_dir, index)) as tmp:
    with tf.io.TFRecordWriter(tmp) as writer:
      for chunk in common.chunked(((d.title, d.body) for d in docs), chunk_size):
        writer.write(pickle.dumps(chunk_fn(state, chunk), protocol=pickle.HIGHEST_PROTOCOL))
        chunks += 1
      writer.write(pickle.dumps(([], counters), protocol=pickle.HIGHEST_PROTOCOL))
  return chunks


def _make_dofn(beam, init_fn, init_args, chunk_fn, tmp_dir, chunk_size, input_format, skip_bad_lines,
               title_filter):
  """The DoFn class is built here so this module imports without Beam."""

  class ProcessFileDoFn(beam.DoFn):
    """(index, path) -> part file; the builder state (tokenizer, tagger) is made once per worker."""

    def setup(self):
      self.state = init_fn(*init_args)

    def process(self, item):
      index, path = item
      chunks = process_file(self.state, chunk_fn, index, path, tmp_dir, chunk_size, input_format,
                            skip_bad_lines, title_filter)
      beam.metrics.Metrics.counter("data_prep", "files").inc()
      beam.metrics.Metrics.counter("data_prep", "chunks").inc(chunks)
      yield index

  return ProcessFileDoFn()


def map_files(input_pattern: str, init_fn: Callable, init_args: tuple, chunk_fn: Callable, *,
              tmp_dir: str, chunk_size: int = 64, input_format: str = "auto",
              skip_bad_lines: bool = False, title_filter: bool = True, runner: str = "DirectRunner",
              beam_options: Sequence[str] = ()) -> Iterator:
  """Runs `chunk_fn(init_fn(*init_args), chunk)` over every input file's documents with Beam.

  Yields `(records, Counters)` in input order (files in `io_utils.list_shards` order, documents in
  file order) after the pipeline has finished; `tmp_dir` (created, then removed) holds the parts.
  `beam_options`: extra pipeline options (a list, or one shell-quoted string).
  """
  beam = import_beam()
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  paths = io_utils.list_shards(input_pattern)
  if isinstance(beam_options, str):
    beam_options = shlex.split(beam_options)
  if tf.io.gfile.exists(tmp_dir):
    tf.io.gfile.rmtree(tmp_dir)  # parts of an interrupted earlier run
  tf.io.gfile.makedirs(tmp_dir)
  try:
    options = PipelineOptions(list(beam_options), runner=runner)
    try:
      with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "Files" >> beam.Create(list(enumerate(paths)))
             | "Spread" >> beam.Reshuffle()
             | "Process" >> beam.ParDo(_make_dofn(beam, init_fn, init_args, chunk_fn, tmp_dir,
                                                   chunk_size, input_format, skip_bad_lines,
                                                   title_filter)))
    except Exception as e:  # pylint: disable=broad-except
      # Runners wrap a worker's exception; surface a bad input line as the same clear error the
      # local build gives (file:line and what is wrong), not a runner stack trace.
      match = re.search(r"BadLineError: ([^\n]+)", str(e))
      if match:
        raise io_utils.BadLineError(match.group(1)) from e
      raise
    for index in range(len(paths)):
      part = part_path(tmp_dir, index)
      if not tf.io.gfile.exists(part):
        raise RuntimeError(f"Beam run finished but {part} (for {paths[index]}) is missing")
      for serialized in tf.data.TFRecordDataset(part).as_numpy_iterator():
        yield pickle.loads(serialized)
  finally:
    if tf.io.gfile.exists(tmp_dir):
      tf.io.gfile.rmtree(tmp_dir)
