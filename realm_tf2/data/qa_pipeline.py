"""ORQA open-domain QA data: QA JSONL files, the fixed block corpus, fixed-shape features.

Semantics of original §3.3 and §3.5.

Host side (once, before training):
  * `read_qa_file` validates `{"question": str, "answer": [str, ...]}` lines (errors name file:line:field).
  * `read_block_texts` reads `blocks.tfr` (uncompressed TFRecord of raw UTF-8 block strings).
  * `pretokenize_blocks` turns every block into reader wordpieces, padded to [N, Lb] + lengths, so
    the device step only gathers ids (no strings on device). They are the wordpieces whose byte
    offsets `RealmTokenizer.span_text` uses to cut answers out of the raw block text.
    `pretokenize_blocks_with_titles` does the same for the reader title option (`title [SEP] body`,
    block text `reader_text(title, body)`; titles from `titles.tfr`, aligned with blocks.tfr).
  * `QAFeaturizer` turns one question + answers into static-shape int32 arrays; for regex answers
    (CuratedTrec) into the question's gold (block, span) list (`regex_gold.RegexGoldFinder`).

The original fed one question per step with an unbounded question and ragged answers; TPUs need static
shapes, so questions are cut to `max_question_len` wordpieces and answers to `max_answers` x
`max_answer_len`. Every cut is counted (`QAFeaturizer.counters`) and reported, never silent.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import realm_tf2  # noqa: F401
import tensorflow as tf

from realm_tf2 import io_utils

SPLITS = ("train", "dev", "test")
REGEX_DATASETS = ("curatedtrec",)
# Between title and body in a block's text with the reader title option: whitespace, so the text's
# wordpieces are the title's then the body's (the [SEP] between them has no text).
TITLE_BODY_SEPARATOR = "\n"


def qa_file_path(data_root: str, dataset_name: str, split: str) -> str:
  """`{data_root}/{dataset_name}.resplit.{split}.jsonl` (contracts §2)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
  return os.path.join(data_root, f"{dataset_name}.resplit.{split}.jsonl")


def is_regex_dataset(dataset_name: str) -> bool:
  """CuratedTrec answers are regular expressions (original §3.5)."""
  return dataset_name.lower() in REGEX_DATASETS


@dataclasses.dataclass
class QAExample:
  """One question. `where` is "file:line" for messages."""
  question: str
  answers: List[str]
  where: str = ""


def read_qa_file(path: str, counters: Optional[io_utils.Counters] = None) -> List[QAExample]:
  """Reads a QA JSONL file; malformed lines raise ValueError naming file, line and field.

  A question with an empty answer list is kept (it can never be correct, as in ORQA) and counted
  as `no_answers`.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"QA file '{path}' does not exist")
  out = []
  for line_no, obj in io_utils.iter_jsonl(path):
    where = f"{path}:{line_no}"
    if not isinstance(obj, dict):
      raise ValueError(f"{where}: expected a JSON object")
    question = obj.get("question")
    if not isinstance(question, str):
      raise ValueError(f"{where}: field 'question' missing or not a string")
    answers = obj.get("answer")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
      raise ValueError(f"{where}: field 'answer' must be a list of strings")
    if counters is not None:
      counters.add("questions")
      if not answers:
        counters.add("no_answers")
    out.append(QAExample(question, list(answers), where))
  return out


def read_block_texts(blocks_path: str, num_block_records: Optional[int] = None) -> List[str]:
  """Reads `blocks.tfr` (raw UTF-8 strings). With `num_block_records`, exactly that many must exist."""
  if not tf.io.gfile.exists(blocks_path):
    raise FileNotFoundError(f"block records '{blocks_path}' do not exist")
  texts = []
  for i, rec in enumerate(tf.data.TFRecordDataset(blocks_path).as_numpy_iterator()):
    try:
      texts.append(rec.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ValueError(f"{blocks_path}: record {i} is not valid UTF-8 ({e})") from e
  if num_block_records is not None and num_block_records > 0 and len(texts) != num_block_records:
    raise ValueError(f"{blocks_path} holds {len(texts)} blocks but --num_block_records="
                     f"{num_block_records}")
  return texts


def pretokenize_blocks(tokenizer, texts: Sequence[str], max_len: int,
                       batch_size: int = 2048) -> Tuple[np.ndarray, np.ndarray, int]:
  """Reader wordpieces of every block: `tokenize_with_offsets` ids (= `tokenize`), the positions
  `RealmTokenizer.span_text` maps back to the raw text (see `modeling/orqa_model.py` for how this
  differs from ORQA's per-step `tokenize_with_original_mapping`).

  Args:
    tokenizer: `RealmTokenizer` of the reader.
    texts: N block strings.
    max_len: Lb, kept wordpieces per block (`reader_seq_len - 3` is the most that can ever be read).
  Returns:
    (ids int32 [N, Lb] zero-padded, lengths int32 [N], number of blocks truncated).
  """
  n = len(texts)
  ids = np.zeros([n, max_len], np.int32)
  lens = np.zeros([n], np.int32)
  truncated = 0
  for start in range(0, n, batch_size):
    chunk = tf.constant(list(texts[start:start + batch_size]), tf.string)
    wp, _, _ = tokenizer.tokenize_with_offsets(chunk)
    for j, row in enumerate(wp.numpy()):
      if len(row) > max_len:
        truncated += 1
      row = row[:max_len]
      ids[start + j, :len(row)] = row
      lens[start + j] = len(row)
  return ids, lens, truncated


def titles_path_of(blocks_path: str) -> str:
  """`titles.tfr` beside `blocks.tfr` (ORQA blocks, contracts §2: aligned by index)."""
  return os.path.join(os.path.dirname(blocks_path), "titles.tfr")


def reader_text(title: str, body: str) -> str:
  """A block's text with the reader title option: `title\nbody` (just `body` without a title)."""
  return f"{title}{TITLE_BODY_SEPARATOR}{body}" if title.strip() else body


def pretokenize_blocks_with_titles(tokenizer, titles: Sequence[str], bodies: Sequence[str],
                                   max_len: int, sep_id: int, batch_size: int = 2048):
  """Reader wordpieces `title [SEP] body` of every block (the reader title option).

  The wordpieces are those of `reader_text(title, body)` (as `pretokenize_blocks`, so
  `RealmTokenizer.span_text` cuts answers out of that text) with a [SEP] inserted after the
  title's; a block without title wordpieces has no [SEP].

  Args:
    tokenizer: `RealmTokenizer` of the reader.
    titles, bodies: N titles and block strings, aligned.
    max_len: Lb, kept wordpieces per block ([SEP] included).
    sep_id: the [SEP] id.
  Returns:
    (texts: N reader texts, ids int32 [N, Lb], lengths int32 [N], sep_pos int32 [N] (position of the
    [SEP] in the row, -1 = none), number of blocks truncated).
  """
  if len(titles) != len(bodies):
    raise ValueError(f"{len(titles)} titles but {len(bodies)} blocks; titles.tfr must be aligned "
                     "with blocks.tfr")
  texts = [reader_text(t, b) for t, b in zip(titles, bodies)]
  n = len(texts)
  ids = np.zeros([n, max_len], np.int32)
  lens = np.zeros([n], np.int32)
  sep_pos = np.full([n], -1, np.int32)
  truncated = 0
  for start in range(0, n, batch_size):
    text_wp = tokenizer.tokenize(tf.constant(texts[start:start + batch_size], tf.string)).numpy()
    title_wp = tokenizer.tokenize(
        tf.constant(list(titles[start:start + batch_size]), tf.string)).numpy()
    for j, (row, title) in enumerate(zip(text_wp, title_wp)):
      num_title = len(title)
      if num_title:
        if not np.array_equal(row[:num_title], title):  # whitespace always splits wordpieces
          raise ValueError(f"block {start + j}: the wordpieces of its text do not start with its "
                           "title's")
        row = np.concatenate([row[:num_title], [sep_id], row[num_title:]])
        sep_pos[start + j] = num_title
      if len(row) > max_len:
        truncated += 1
      row = row[:max_len]
      ids[start + j, :len(row)] = row
      lens[start + j] = len(row)
  return texts, ids, lens, sep_pos, truncated


class QAFeaturizer:
  """Question + answers -> static-shape int32 features.

  Args:
    tokenizer: `RealmTokenizer` (reader and retriever share the vocabulary in this package).
    max_question_len: Q, question wordpieces kept (the retriever input is `[CLS] q [SEP]`, Q+2).
    max_answers: A, answers kept per question.
    max_answer_len: L, wordpieces kept per answer; a longer answer is dropped (it could never match
      exactly), counted as `answer_too_long`.
    gold_finder: for regex answers, a `regex_gold.RegexGoldFinder` over the corpus: the answers are
      then patterns, not tokenized (answer_len 0), and the features carry their gold spans.

  Features (one example): question_ids [Q], question_len [], answer_ids [A, L], answer_len [A],
  example_index [] (row in the QA file; -1 for batch padding); with a gold_finder also
  gold_spans [G, 3] (corpus row, first, last wordpiece; -1 padded) and gold_count [].
  """

  def __init__(self, tokenizer, max_question_len: int = 64, max_answers: int = 10,
               max_answer_len: int = 16, gold_finder=None):
    self.tokenizer = tokenizer
    self.max_question_len = max_question_len
    self.max_answers = max_answers
    self.max_answer_len = max_answer_len
    self.gold_finder = gold_finder
    self.counters = io_utils.Counters("qa_features")

  def featurize(self, examples: Sequence[QAExample]) -> Dict[str, np.ndarray]:
    """Returns a dict of stacked arrays for all `examples` (leading dim = len(examples))."""
    n = len(examples)
    q_ids = np.zeros([n, self.max_question_len], np.int32)
    q_len = np.zeros([n], np.int32)
    a_ids = np.zeros([n, self.max_answers, self.max_answer_len], np.int32)
    a_len = np.zeros([n, self.max_answers], np.int32)
    questions = self.tokenizer.tokenize_np([e.question for e in examples])
    regex = self.gold_finder is not None
    flat_answers = [] if regex else [a for e in examples for a in e.answers]
    answer_wp = iter(self.tokenizer.tokenize_np(flat_answers))
    for i, (ex, q) in enumerate(zip(examples, questions)):
      if len(q) > self.max_question_len:
        self.counters.add("question_truncated")
      q = q[:self.max_question_len]
      q_ids[i, :len(q)] = q
      q_len[i] = len(q)
      kept = 0
      for _ in ([] if regex else ex.answers):
        wp = next(answer_wp)
        if len(wp) > self.max_answer_len:
          self.counters.skip("answer_too_long")
          continue
        if len(wp) == 0:
          self.counters.skip("answer_empty_wordpieces")
          continue
        if kept >= self.max_answers:
          self.counters.skip("answer_over_max_answers")
          continue
        a_ids[i, kept, :len(wp)] = wp
        a_len[i, kept] = len(wp)
        kept += 1
    features = {"question_ids": q_ids, "question_len": q_len, "answer_ids": a_ids,
                "answer_len": a_len, "example_index": np.arange(n, dtype=np.int32)}
    if regex:
      features["gold_spans"], features["gold_count"] = self.gold_finder.gold_spans(
          [e.answers for e in examples])
    return features


def pad_features(features: Dict[str, np.ndarray], multiple: int) -> Dict[str, np.ndarray]:
  """Pads the leading dim to a multiple of `multiple` with dummy rows (example_index -1, no answers,
  no gold spans)."""
  n = len(features["example_index"])
  extra = (-n) % multiple
  if extra == 0:
    return features
  out = {}
  for k, v in features.items():
    pad = np.zeros((extra,) + v.shape[1:], v.dtype)
    if k in ("example_index", "gold_spans"):
      pad -= 1
    out[k] = np.concatenate([v, pad])
  return out


def make_dataset(features: Dict[str, np.ndarray], batch_size: int, is_training: bool,
                 seed: Optional[int] = None) -> tf.data.Dataset:
  """tf.data over precomputed features with static batch shapes.

  Training: shuffled over the whole set, repeated, `drop_remainder=True`. Evaluation: one pass, padded
  to full batches (padding rows have example_index -1 and are ignored by the metrics).
  """
  if len(features["example_index"]) == 0:
    raise ValueError("no QA examples to build a dataset from")
  if not is_training:
    features = pad_features(features, batch_size)
  ds = tf.data.Dataset.from_tensor_slices(features)
  if is_training:
    ds = ds.shuffle(len(features["example_index"]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)
