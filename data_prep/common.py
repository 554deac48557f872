"""Shared pieces of the data-preparation CLIs: document input, title filter, blocking, ordered
parallel map with bounded memory, progress lines, the final report file."""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import collections
import html
import json
import multiprocessing
import os
import re
import sys
import time
import traceback
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from data_prep import sentence_splitter
from realm_tf2 import io_utils

# ORQA's document filter (original §3.1): (counter reason, regex on the title).
TITLE_FILTERS = (
    ("title_list_of", re.compile(r"List of .+")),
    ("title_index_of", re.compile(r"Index of .+")),
    ("title_outline_of", re.compile(r"Outline of .+")),
    ("title_disambiguation", re.compile(r".*\(disambiguation\).*")),
)
INPUT_FORMATS = ("auto", "jsonl", "wikiextractor", "text")
# The final counts report of a builder, as JSON beside its output (`write_report`).
REPORT_FILE = "report.json"


class Document(NamedTuple):
  title: str
  body: str
  source: str  # "file:line", for messages


def title_filter_reason(title: str) -> Optional[str]:
  """The counter reason if `title` is dropped by ORQA's filter, else None."""
  for reason, pattern in TITLE_FILTERS:
    if pattern.fullmatch(title):
      return reason
  return None


def iter_documents(pattern: str, counters: io_utils.Counters, input_format: str = "auto",
                   skip_bad_lines: bool = False, apply_title_filter: bool = True
                   ) -> Iterator[Document]:
  """Streams documents from JSONL / WikiExtractor `--json` / plain-text files (glob, comma list).

  * jsonl: `{"title": str, "body": str}` (`"text"` accepted for `"body"`).
  * wikiextractor: `{"id", "url", "title", "text"}`; the text is HTML-unescaped (as ORQA did).
    `auto` picks this when a line has `url` and `text` but no `body`.
  * text (`*.txt` under auto): one document per non-empty line, title "".

  Counted skips (never silent): bad_json / bad_utf8 (only with skip_bad_lines, else BadLineError
  naming file:line), not_an_object, missing_title, missing_body, bad_field_type, empty_body, and the
  title filters of TITLE_FILTERS. `counters.read` counts every non-blank line.
  """
  if input_format not in INPUT_FORMATS:
    raise ValueError(f"--input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
  for path in io_utils.list_shards(pattern):
    fmt = input_format
    if fmt == "auto" and path.endswith(".txt"):
      fmt = "text"
    if fmt == "text":
      yield from _iter_text(path, counters, skip_bad_lines)
      continue
    for line_no, obj in io_utils.iter_jsonl(path, skip_bad_lines=skip_bad_lines, counter=counters):
      source = f"{path}:{line_no}"
      if not isinstance(obj, dict):
        _bad(counters, "not_an_object", source, "line is not a JSON object", skip_bad_lines)
        continue
      if "title" not in obj or obj["title"] is None:
        counters.skip("missing_title")
        continue
      wiki = fmt == "wikiextractor" or (fmt == "auto" and "url" in obj and "body" not in obj)
      body = obj.get("body", obj.get("text"))
      if body is None:
        counters.skip("missing_body")
        continue
      title = obj["title"]
      if not isinstance(title, str) or not isinstance(body, str):
        _bad(counters, "bad_field_type", source, "title/body must be strings", skip_bad_lines)
        continue
      if wiki:
        body = html.unescape(body)
        title = html.unescape(title)
      doc = _check(Document(title.strip(), body, source), counters, apply_title_filter)
      if doc is not None:
        yield doc


def _bad(counters, reason, source, message, skip_bad_lines):
  if not skip_bad_lines:
    raise io_utils.BadLineError(f"{source}: {message}")
  counters.skip(reason)


def _check(doc: Document, counters, apply_title_filter) -> Optional[Document]:
  if not doc.body.strip():
    counters.skip("empty_body")
    return None
  if apply_title_filter:
    reason = title_filter_reason(doc.title)
    if reason:
      counters.skip(reason)
      return None
  return doc


def _iter_text(path, counters, skip_bad_lines):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      counters.read += 1
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        if not skip_bad_lines:
          raise io_utils.BadLineError(f"{path}:{line_no}: not valid UTF-8 ({e})") from e
        counters.skip("bad_utf8")
        continue
      yield Document("", line.rstrip("\r\n"), f"{path}:{line_no}")


def chunked(items: Iterable, size: int) -> Iterator[list]:
  chunk = []
  for x in items:
    chunk.append(x)
    if len(chunk) >= size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


# --- blocking (original §3.1) --------------------------------------------------------------------


class Block(NamedTuple):
  """One knowledge block.

  title: str; text: sentences joined by one space; title_ids, token_ids: np.int32 [n];
  sentence_starts: wordpiece offset of each sentence in token_ids; sentence_char_spans: char spans
  of the sentences in `text`; uid: sha1_uid63(title, text).
  """
  title: str
  text: str
  title_ids: np.ndarray
  token_ids: np.ndarray
  sentence_starts: List[int]
  sentence_char_spans: List[Tuple[int, int]]
  uid: int


class Blocker:
  """Greedy ORQA blocking of documents into ≤ max_block_length wordpieces (with 3 specials).

  A sentence joins the current block if `3 + len(title_wp) + current_wp + sentence_wp <=
  max_block_length`, else the block is closed and a new one starts with it. Defined behaviours
  (all counted in the Counters passed to `block`):
  * over-long sentence (does not fit even alone): it becomes its own block, truncated to the
    budget at a wordpiece boundary (its text is cut at the byte end of the last kept wordpiece, so
    text and ids stay consistent and every block fits). The original kept the full text and
    truncated only at featurisation; the model saw the same tokens. (`truncated_sentences`,
    `truncated_wordpieces`)
  * a sentence with no wordpieces (e.g. only control characters): dropped (`empty_sentences`).
  * a title longer than max_block_length // 4 wordpieces: its ids are truncated (`title_truncated`).
  * a document yielding no block: skipped (`no_blocks`).

  Args:
    tokenizer: a `realm_tf2.tokenization.RealmTokenizer`.
    max_block_length: 288 in the original.
  """

  def __init__(self, tokenizer, max_block_length: int = 288):
    self.tokenizer = tokenizer
    self.max_block_length = max_block_length
    self.max_title_length = max_block_length // 4

  def _tokenize(self, texts: Sequence[str]) -> List[np.ndarray]:
    if not texts:
      return []
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    ids = self.tokenizer.tokenize(tf.constant(list(texts), dtype=tf.string))
    flat = ids.flat_values.numpy()
    splits = ids.row_splits.numpy()
    return [flat[splits[i]:splits[i + 1]] for i in range(len(texts))]

  def block_documents(self, docs: Sequence[Tuple[str, str]], counters: io_utils.Counters
                      ) -> List[List[Block]]:
    """Blocks several (title, body) documents (one batched tokenizer call). Returns blocks per doc."""
    sentences, titles, owners = [], [], []
    for d, (title, body) in enumerate(docs):
      titles.append(title)
      for s, e in sentence_splitter.split_sentences(body):
        sentences.append(body[s:e])
        owners.append(d)
    ids = self._tokenize(titles + sentences)
    title_ids, sent_ids = ids[:len(titles)], ids[len(titles):]
    per_doc = [[] for _ in docs]
    for sent, sid, d in zip(sentences, sent_ids, owners):
      per_doc[d].append((sent, sid))
    out = []
    for d, (title, _) in enumerate(docs):
      out.append(self._block_one(title, title_ids[d], per_doc[d], counters))
    return out

  def _block_one(self, title, title_ids, sentences, counters) -> List[Block]:
    if len(title_ids) > self.max_title_length:
      counters.add("title_truncated")
      title_ids = title_ids[:self.max_title_length]
    budget = self.max_block_length - 3 - len(title_ids)
    blocks, cur = [], []
    cur_len = 0
    for sent, sid in sentences:
      n = len(sid)
      if n == 0:
        counters.add("empty_sentences")
        continue
      if n > budget:
        if cur:
          blocks.append(self._make(title, title_ids, cur))
        sent, sid = self._truncate(sent, sid, budget, counters)
        blocks.append(self._make(title, title_ids, [(sent, sid)]))
        cur, cur_len = [], 0
        continue
      if cur and cur_len + n > budget:
        blocks.append(self._make(title, title_ids, cur))
        cur, cur_len = [], 0
      cur.append((sent, sid))
      cur_len += n
    if cur:
      blocks.append(self._make(title, title_ids, cur))
    if not blocks:
      counters.skip("no_blocks")
    return blocks

  def _truncate(self, sent, sid, budget, counters):
    counters.add("truncated_sentences")
    counters.add("truncated_wordpieces", len(sid) - budget)
    (ids, _, ends), = self.tokenizer.tokenize_with_offsets_np([sent])
    byte_end = int(ends[budget - 1])
    text = sent.encode("utf-8")[:byte_end].decode("utf-8", errors="ignore").rstrip()
    return text, np.asarray(ids[:budget], np.int32)

  @staticmethod
  def _make(title, title_ids, sents) -> Block:
    texts, starts, spans = [], [], []
    pos_wp = pos_char = 0
    for sent, sid in sents:
      starts.append(pos_wp)
      spans.append((pos_char, pos_char + len(sent)))
      texts.append(sent)
      pos_wp += len(sid)
      pos_char += len(sent) + 1
    text = " ".join(texts)
    token_ids = np.concatenate([sid for _, sid in sents]).astype(np.int32)
    return Block(title, text, np.asarray(title_ids, np.int32), token_ids, starts, spans,
                 io_utils.sha1_uid63(title, text))


# --- ordered parallel map -------------------------------------------------------------------------

_WORKER_STATE = {}


def _worker_init(init_fn, init_args):
  # An exception escaping a Pool initializer kills the worker and the Pool respawns it forever
  # (a silent hang); keep the error and raise it from the first task instead.
  try:
    _WORKER_STATE["state"] = init_fn(*init_args)
  except Exception:  # pylint: disable=broad-except
    _WORKER_STATE["init_error"] = traceback.format_exc()


def _worker_call(fn, chunk):
  if "init_error" in _WORKER_STATE:
    raise RuntimeError("worker initialisation failed:\n" + _WORKER_STATE["init_error"])
  return fn(_WORKER_STATE["state"], chunk)


def ordered_parallel_map(fn: Callable, init_fn: Callable, init_args: tuple, chunks: Iterable,
                         num_workers: int, max_pending: Optional[int] = None) -> Iterator:
  """Yields `fn(state, chunk)` for each chunk, in input order, `state = init_fn(*init_args)`.

  num_workers <= 1 runs in-process. Otherwise a 'spawn' process pool (TensorFlow is not fork-safe)
  with at most `max_pending` (default 2 × workers) chunks in flight, so memory stays bounded
  however long the input is (Pool.imap would read the whole input ahead).
  `fn` and `init_fn` must be module-level functions.
  """
  if num_workers <= 1:
    state = init_fn(*init_args)
    for chunk in chunks:
      yield fn(state, chunk)
    return
  max_pending = max_pending or 2 * num_workers
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(num_workers, initializer=_worker_init, initargs=(init_fn, init_args)) as pool:
    pending = collections.deque()
    for chunk in chunks:
      pending.append(pool.apply_async(_worker_call, (fn, chunk)))
      while len(pending) >= max_pending:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()


def process_documents(input_pattern: str, counters: io_utils.Counters, init_fn: Callable,
                      init_args: tuple, chunk_fn: Callable, *, chunk_size: int, input_format: str,
                      skip_bad_lines: bool, title_filter: bool, num_workers: int, beam: bool = False,
                      runner: str = "DirectRunner", beam_options=(), beam_tmp_dir: str = ""
                      ) -> Iterator:
  """Yields `(records, Counters)` of `chunk_fn(state, chunk)` over the documents, in input order.

  Locally: documents are read here (reading counts go to `counters`) and chunks are processed by
  `ordered_parallel_map`. With `beam`: `data_prep.beam_runner.map_files` (reading counts arrive in
  the yielded Counters instead). Either way the caller merges every yielded Counters.
  """
  if beam:
    from data_prep import beam_runner  # pylint: disable=g-import-not-at-top  (imports this module)
    return beam_runner.map_files(
        input_pattern, init_fn, init_args, chunk_fn, tmp_dir=beam_tmp_dir, chunk_size=chunk_size,
        input_format=input_format, skip_bad_lines=skip_bad_lines, title_filter=title_filter,
        runner=runner, beam_options=beam_options)
  docs = iter_documents(input_pattern, counters, input_format, skip_bad_lines,
                        apply_title_filter=title_filter)
  chunks = chunked(((d.title, d.body) for d in docs), chunk_size)
  return ordered_parallel_map(chunk_fn, init_fn, init_args, chunks, num_workers)


def default_num_workers() -> int:
  return max(1, (os.cpu_count() or 1))


class Progress:
  """Prints a progress line to stderr at most every `interval` seconds."""

  def __init__(self, name: str, counters: io_utils.Counters, interval: float = 10.0):
    self.name, self.counters, self.interval = name, counters, interval
    self.start = self.last = time.time()

  def update(self, force: bool = False):
    now = time.time()
    if force or now - self.last >= self.interval:
      self.last = now
      rate = self.counters.read / max(now - self.start, 1e-9)
      print(f"[{self.name}] {now - self.start:7.1f}s {self.counters.report()} ({rate:.0f} docs/s)",
            file=sys.stderr, flush=True)


def merge_counters(dst: io_utils.Counters, src: io_utils.Counters):
  """Adds `src`'s counts into `dst` (worker → main process)."""
  dst.read += src.read
  dst.written += src.written
  dst.skipped.update(src.skipped)
  dst.extra.update(src.extra)


def counters_report(counters: io_utils.Counters) -> dict:
  """The printed final report as a dict: {"tool", "read", "written", "skipped",
  "skipped_by_reason": {reason: n}, <extra counts>}."""
  return {"tool": counters.name, **counters.as_dict()}


def write_report(path: str, report: dict):
  """Writes a builder's final report as JSON to `path`, atomically (keys sorted, so equal counts
  give equal bytes)."""
  io_utils.atomic_write_text(path, json.dumps(report, indent=1, sort_keys=True) + "\n")
