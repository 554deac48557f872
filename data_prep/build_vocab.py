r"""Learns a BERT WordPiece vocabulary (vocab.txt) from a JSONL or plain-text corpus.

Usage:
  python -m data_prep.build_vocab --input='corpus/*.jsonl' --output=vocab.txt \
      --vocab_size=8000 [--lower_case] [--max_unique_words=2000000]

Input formats (`--input_format`, default `auto` = by file extension):
  * jsonl: one object per line with "title" and "body" (or "text", e.g. WikiExtractor --json);
    both title and body are used.
  * text: one document per line.

The vocabulary starts with the reserved tokens [PAD] [UNK] [CLS] [SEP] [MASK] ([PAD] = id 0),
followed by what TF Text's WordPiece learner produces (single characters, their ##-suffix forms,
then frequent (sub)words). The file is written atomically; the final report of counts is printed
and written as JSON to `<output>.report.json`.

Why not `tensorflow_text.tools.wordpiece_vocab.bert_vocab_from_dataset` directly: it keeps a Counter
of EVERY distinct word of the corpus (unbounded memory on Wikipedia-sized input) and takes a
tf.data dataset, so bad lines could not be reported by file/line. We use its own building blocks
instead: TF Text's `BasicTokenizer` for the word split (the same split `BertTokenizer` applies, so
the vocab matches tokenization) and `wordpiece_tokenizer_learner_lib.learn` for the learning, and
count words ourselves with a bounded counter (when it exceeds `--max_unique_words`, words at or
below a doubling count threshold are pruned — a lossy-counting approximation that only affects
rare words, which the learner discards anyway below its `lower_thresh`).
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import collections
import string
import sys

from absl import app
from absl import flags
import tensorflow as tf
from tensorflow_text.python.ops import bert_tokenizer as tf_text_bert
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

from data_prep import common
from realm_tf2 import io_utils

RESERVED_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def ascii_alphabet(lower_case=True):
  """Printable ASCII as whole-word tokens plus `##` continuations of letters and digits.

  BERT's released vocabularies contain every one of these, so text never seen while learning (a
  question word, a "?" the corpus lacks) still tokenizes into pieces instead of `[UNK]`. The TF Text
  learner only keeps characters it saw, hence this guarantee.
  """
  letters = string.ascii_lowercase if lower_case else string.ascii_letters
  singles = list(letters + string.digits + string.punctuation)
  return singles + ["##" + c for c in letters + string.digits]

FLAGS = flags.FLAGS
def define_flags(fv=flags.FLAGS):
  """Defines the CLI flags (only when run as a script, so importing this module adds no
  global flags that could clash with another CLI's in the same process)."""
  flags.DEFINE_string("input", None, "Input file glob(s), comma-separated (gfile; gs:// works).", flag_values=fv)
  flags.DEFINE_string("output", None, "Output vocab.txt path (written atomically).", flag_values=fv)
  flags.DEFINE_enum("input_format", "auto", ["auto", "jsonl", "text"],
                    "auto: *.jsonl / *.json -> jsonl, anything else -> text (one document a line).", flag_values=fv)
  flags.DEFINE_integer("vocab_size", 30522, "Maximum vocabulary size (incl. reserved tokens).", flag_values=fv)
  flags.DEFINE_bool("lower_case", True, "Uncased BERT normalisation (case fold, NFD, strip accents).", flag_values=fv)
  flags.DEFINE_integer("max_unique_words", 2_000_000,
                       "Bound on distinct words held in memory while counting.", flag_values=fv)
  flags.DEFINE_integer("max_docs", 0, "Stop after this many documents (0 = all).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 512, "Documents tokenized per TF call.", flag_values=fv)
  flags.DEFINE_integer("lower_thresh", 10, "Learner: lowest count threshold searched.", flag_values=fv)
  flags.DEFINE_integer("num_iterations", 4, "Learner: iterations per threshold.", flag_values=fv)
  flags.DEFINE_integer("max_token_length", 50, "Learner: words longer than this are ignored.", flag_values=fv)
  flags.DEFINE_integer("max_unique_chars", 1000, "Learner: alphabet size bound.", flag_values=fv)
  flags.DEFINE_bool("ensure_ascii", True,
                    "Always include printable ASCII (and ## letters/digits), as BERT's vocabs do, so unseen "
                    "words and punctuation split into pieces instead of [UNK].", flag_values=fv)
  flags.DEFINE_bool("skip_bad_lines", False,
                    "Count and skip invalid JSON / non-UTF-8 lines instead of failing.", flag_values=fv)


class BoundedWordCounter:
  """Word counter whose number of distinct keys stays <= max_unique (lossy pruning of rare words)."""

  def __init__(self, max_unique):
    if max_unique <= 0:
      raise ValueError("max_unique must be positive")
    self.max_unique = max_unique
    self.counts = collections.Counter()
    self.prune_threshold = 1
    self.num_pruned = 0

  def update(self, words):
    self.counts.update(words)
    while len(self.counts) > self.max_unique:
      before = len(self.counts)
      self.counts = collections.Counter(
          {w: c for w, c in self.counts.items() if c > self.prune_threshold})
      self.num_pruned += before - len(self.counts)
      self.prune_threshold *= 2


def iter_documents(path, input_format, counters, skip_bad_lines):
  """Yields document strings of one file; bad lines raise (file:line) or are counted."""
  fmt = input_format
  if fmt == "auto":
    fmt = "jsonl" if path.endswith((".jsonl", ".json", ".jsonl.gz")) else "text"
  if fmt == "jsonl":
    for line_no, obj in io_utils.iter_jsonl(path, skip_bad_lines=skip_bad_lines,
                                            counter=counters):
      if not isinstance(obj, dict):
        if skip_bad_lines:
          counters.skip("not_an_object")
          continue
        raise io_utils.BadLineError(f"{path}:{line_no}: expected a JSON object")
      title = obj.get("title", "")
      body = obj.get("body", obj.get("text"))
      if body is None:
        if skip_bad_lines:
          counters.skip("missing_body")
          continue
        raise io_utils.BadLineError(f"{path}:{line_no}: no 'body' or 'text' field")
      if not isinstance(title, str) or not isinstance(body, str):
        if skip_bad_lines:
          counters.skip("non_string_field")
          continue
        raise io_utils.BadLineError(f"{path}:{line_no}: 'title'/'body' must be strings")
      text = f"{title}\n{body}" if title else body
      if not text.strip():
        counters.skip("empty")
        continue
      yield text
  else:
    with tf.io.gfile.GFile(path, "rb") as f:
      for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        counters.read += 1
        try:
          yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
          if skip_bad_lines:
            counters.skip("bad_utf8")
            continue
          raise io_utils.BadLineError(f"{path}:{line_no}: not valid UTF-8 ({e})") from e


def count_words(paths, input_format="auto", lower_case=True, max_unique_words=2_000_000,
                max_docs=0, batch_size=512, skip_bad_lines=False, counters=None):
  """Streams documents, splits them with BERT's BasicTokenizer and counts words (bounded).

  Returns:
    (BoundedWordCounter, io_utils.Counters).
  """
  counters = counters or io_utils.Counters("build_vocab")
  basic = tf_text_bert.BasicTokenizer(lower_case=lower_case)
  counter = BoundedWordCounter(max_unique_words)
  num_docs = 0
  batch = []

  def flush():
    if batch:
      words = basic.tokenize(tf.constant(batch)).flat_values.numpy()
      counter.update(w.decode("utf-8", errors="replace") for w in words)
      counters.add("words", len(words))
      batch.clear()

  for path in paths:
    for doc in iter_documents(path, input_format, counters, skip_bad_lines):
      batch.append(doc)
      num_docs += 1
      counters.add("documents_used")
      if len(batch) >= batch_size:
        flush()
      if max_docs and num_docs >= max_docs:
        break
    if max_docs and num_docs >= max_docs:
      break
  flush()
  counters.add("pruned_rare_words", counter.num_pruned)
  return counter, counters


def learn_vocab(word_counts, vocab_size, lower_thresh=10, num_iterations=4, max_token_length=50,
                max_unique_chars=1000, ensure_ascii=True, lower_case=True):
  """Runs TF Text's WordPiece learner; returns the token list with RESERVED_TOKENS first.

  With `ensure_ascii`, missing `ascii_alphabet` tokens are appended (replacing the learner's last
  tokens when the vocab would exceed `vocab_size`)."""
  vocab = learner.learn(
      dict(word_counts), vocab_size, RESERVED_TOKENS, lower_thresh=lower_thresh,
      num_iterations=num_iterations, max_token_length=max_token_length,
      max_unique_chars=max_unique_chars)
  vocab = list(vocab)
  if vocab[:len(RESERVED_TOKENS)] != RESERVED_TOKENS:  # the learner puts reserved first; enforce.
    vocab = RESERVED_TOKENS + [t for t in vocab if t not in RESERVED_TOKENS]
  if ensure_ascii:
    have = set(vocab)
    missing = [t for t in ascii_alphabet(lower_case) if t not in have]
    if missing:
      keep = max(len(RESERVED_TOKENS), min(len(vocab), vocab_size - len(missing)))
      vocab = (vocab[:keep] + missing)[:max(vocab_size, len(RESERVED_TOKENS))]
  return vocab


def build_vocab(input_pattern, output, vocab_size, lower_case=True, input_format="auto",
                max_unique_words=2_000_000, max_docs=0, batch_size=512, skip_bad_lines=False,
                lower_thresh=10, num_iterations=4, max_token_length=50, max_unique_chars=1000,
                ensure_ascii=True):
  """Library entry point of the CLI. Returns (vocab list, io_utils.Counters)."""
  if vocab_size <= len(RESERVED_TOKENS):
    raise ValueError(f"vocab_size must exceed {len(RESERVED_TOKENS)}")
  paths = io_utils.list_shards(input_pattern)
  counter, counters = count_words(
      paths, input_format=input_format, lower_case=lower_case,
      max_unique_words=max_unique_words, max_docs=max_docs, batch_size=batch_size,
      skip_bad_lines=skip_bad_lines)
  if not counter.counts:
    raise ValueError(f"no words found in {input_pattern!r}: {counters.report()}")
  vocab = learn_vocab(counter.counts, vocab_size, lower_thresh=lower_thresh,
                      num_iterations=num_iterations, max_token_length=max_token_length,
                      max_unique_chars=max_unique_chars, ensure_ascii=ensure_ascii,
                      lower_case=lower_case)
  io_utils.atomic_write_text(output, "\n".join(vocab) + "\n")
  counters.written = len(vocab)
  counters.add("distinct_words", len(counter.counts))
  common.write_report(report_path(output), common.counters_report(counters))
  return vocab, counters


def report_path(output: str) -> str:
  """Where the final report of a vocab written to `output` goes: `<output>.report.json`."""
  return output + ".report.json"


def run_from_flags(fv=FLAGS):
  """Runs the CLI with the parsed flags in `fv` (the absl FLAGS when run as a script)."""
  if not fv.input or not fv.output:
    raise app.UsageError("--input and --output are required")
  try:
    _, counters = build_vocab(
        fv.input, fv.output, fv.vocab_size, lower_case=fv.lower_case,
        input_format=fv.input_format, max_unique_words=fv.max_unique_words,
        max_docs=fv.max_docs, batch_size=fv.batch_size,
        skip_bad_lines=fv.skip_bad_lines, lower_thresh=fv.lower_thresh,
        num_iterations=fv.num_iterations, max_token_length=fv.max_token_length,
        max_unique_chars=fv.max_unique_chars, ensure_ascii=fv.ensure_ascii)
  except (io_utils.BadLineError, FileNotFoundError) as e:
    print(f"build_vocab: error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {fv.output} ({counters.written} tokens)")
  print(counters.report())
  sys.stdout.flush()


def main(argv):
  del argv
  run_from_flags(FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
