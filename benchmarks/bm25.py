r"""Okapi BM25 retrieval baseline over the ORQA blocks of a knowledge corpus.

  python -m benchmarks.bm25 --knowledge_dir=K --data_root=D --dataset_name=DictQA \
      [--splits=dev,test] [--k1=0.9] [--b=0.4]

`K` is a `data_prep.build_knowledge_corpus` output; its `blocks.tfr` / `titles.tfr` are read as
`realm_tf2.data.qa_pipeline.read_block_texts` reads them (row i = block i). Prints one JSON object
per split: `{"benchmark": "bm25", "split", "questions", "recall@1", "recall@5", "recall@20", ...}`.

* Document of row i: `title_i + " " + block_i` (the title is part of what the retriever sees, as in
  ORQA's `[CLS] title [SEP] block [SEP]`).
* Tokenisation (documents and questions alike): lower-case, then the maximal runs of Unicode word
  characters (`re.findall(r"\w+", text.lower())`), so punctuation is stripped and separates words;
  no stemming, no stop words.
* Scoring: Okapi BM25 with Anserini's defaults k1 = 0.9, b = 0.4 and Lucene's idf
  `log(1 + (N - df + 0.5) / (df + 0.5))`; term weight `idf * tf * (k1 + 1) / (tf + k1 * (1 - b +
  b * dl / avgdl))` (Lucene 8+ drops the constant `k1 + 1`, which does not change the ranking;
  Lucene also rounds document lengths to one byte, which this does not). A question term repeated
  n times counts n times (a Lucene BooleanQuery of its terms). Ties: lower row first.
* Recall@k (ORQA's retrieval recall): a question counts if any of its top-k blocks' TEXT (not
  title) holds an answer by ORQA's HasAnswer rule (`realm_tf2.evaluation.answers.has_answer`:
  case-sensitive raw substring).

Hand-written because no dependency of the project offers BM25; SciPy sparse products do the work.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import os
import re
import sys
from typing import Dict, List, Sequence

if __name__ == "__main__":
  # Run as a file: make `benchmarks` importable (and keep this directory's data_prep.py from
  # shadowing the data_prep package).
  _HERE = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
  sys.path.insert(0, os.path.dirname(_HERE))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from benchmarks import common as bench_common  # noqa: E402
from realm_tf2.data import corpus_format as cf  # noqa: E402
from realm_tf2.data import qa_pipeline  # noqa: E402
from realm_tf2.evaluation import answers as answers_lib  # noqa: E402

FLAGS = flags.FLAGS

_WORD = re.compile(r"\w+", re.UNICODE)


def define_flags():
  """Defines the CLI flags (only when run as a script)."""
  flags.DEFINE_string("knowledge_dir", None, "build_knowledge_corpus output (blocks.tfr, ...).")
  flags.DEFINE_string("data_root", None, "Directory of {dataset_name}.resplit.{split}.jsonl.")
  flags.DEFINE_string("dataset_name", "DictQA", "QA dataset name.")
  flags.DEFINE_list("splits", ["dev", "test"], "Splits to evaluate.")
  flags.DEFINE_float("k1", 0.9, "BM25 k1 (Anserini default 0.9).")
  flags.DEFINE_float("b", 0.4, "BM25 b (Anserini default 0.4).")
  flags.DEFINE_list("recall_at", ["1", "5", "20"], "k values of recall@k.")


def tokenize(text: str) -> List[str]:
  """Lower-cased maximal runs of word characters (punctuation stripped)."""
  return _WORD.findall(text.lower())


class BM25Index:
  """BM25 over a fixed list of documents.

  Args:
    documents: N document strings (row i = document i).
    k1, b: BM25 parameters.
  """

  def __init__(self, documents: Sequence[str], k1: float = 0.9, b: float = 0.4):
    self.k1, self.b = float(k1), float(b)
    self.vocab: Dict[str, int] = {}
    rows, cols, tfs = [], [], []
    lengths = np.zeros([len(documents)], np.float64)  # [N]
    for i, doc in enumerate(documents):
      counts: Dict[int, int] = {}
      toks = tokenize(doc)
      lengths[i] = len(toks)
      for t in toks:
        j = self.vocab.setdefault(t, len(self.vocab))
        counts[j] = counts.get(j, 0) + 1
      rows.extend([i] * len(counts))
      cols.extend(counts.keys())
      tfs.extend(counts.values())
    n, v = len(documents), len(self.vocab)
    self.num_docs = n
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    tf = np.asarray(tfs, np.float64)
    df = np.bincount(cols, minlength=v).astype(np.float64)  # [V]
    self.idf = np.log1p((n - df + 0.5) / (df + 0.5))  # [V]
    avgdl = lengths.mean() if n else 1.0
    norm = self.k1 * (1.0 - self.b + self.b * lengths[rows] / max(avgdl, 1e-9))
    weights = self.idf[cols] * tf * (self.k1 + 1.0) / (tf + norm)
    # [V, N]: one row per term, so a batch of query term counts [Q, V] @ this = scores [Q, N].
    self.term_doc = sparse.csr_matrix((weights, (cols, rows)), shape=(v, n))

  def query_matrix(self, questions: Sequence[str]) -> sparse.csr_matrix:
    """Term counts of the questions, float [Q, V] (unknown words dropped)."""
    rows, cols = [], []
    for i, q in enumerate(questions):
      for t in tokenize(q):
        j = self.vocab.get(t)
        if j is not None:
          rows.append(i)
          cols.append(j)
    data = np.ones([len(rows)], np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(questions), len(self.vocab)))

  def scores(self, questions: Sequence[str]) -> np.ndarray:
    """BM25 scores, float64 [Q, N]."""
    return (self.query_matrix(questions) @ self.term_doc).toarray()

  def retrieve(self, questions: Sequence[str], k: int, batch_size: int = 256) -> np.ndarray:
    """Row ids of the k best documents per question, best first, int32 [Q, k] (k ≤ N)."""
    k = min(k, self.num_docs)
    out = np.zeros([len(questions), k], np.int32)
    for start in range(0, len(questions), batch_size):
      s = self.scores(questions[start:start + batch_size])  # [q, N]
      # Stable sort of -score: equal scores keep the lower row first.
      out[start:start + len(s)] = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return out


def recall_at_k(retrieved: np.ndarray, block_texts: Sequence[str],
                answer_lists: Sequence[Sequence[str]], ks: Sequence[int]) -> Dict[int, float]:
  """Fraction of questions with an answer (ORQA HasAnswer) in the text of a top-k block.

  Args:
    retrieved: int [Q, K] row ids, best first, K ≥ max(ks).
    block_texts: N block texts (not titles).
    answer_lists: Q answer lists.
    ks: cut-offs.
  """
  if len(retrieved) != len(answer_lists):
    raise ValueError(f"{len(retrieved)} retrieval rows for {len(answer_lists)} questions")
  if len(answer_lists) == 0:
    return {k: 0.0 for k in ks}
  hits = np.array([[answers_lib.has_answer(block_texts[r], ans) for r in row]
                   for row, ans in zip(retrieved, answer_lists)], bool)  # [Q, K]
  first = np.where(hits.any(1), hits.argmax(1), hits.shape[1])  # [Q] rank of first hit
  return {k: float(np.mean(first < k)) for k in ks}


def read_knowledge_texts(knowledge_dir: str):
  """(block texts, titles) of `knowledge_dir`, row-aligned."""
  texts = qa_pipeline.read_block_texts(os.path.join(knowledge_dir, cf.BLOCKS_FILE))
  titles = qa_pipeline.read_block_texts(os.path.join(knowledge_dir, cf.TITLES_FILE))
  if len(texts) != len(titles):
    raise ValueError(f"{knowledge_dir}: {len(texts)} blocks but {len(titles)} titles")
  return texts, titles


def evaluate(knowledge_dir: str, data_root: str, dataset_name: str, splits: Sequence[str],
             k1: float = 0.9, b: float = 0.4, ks: Sequence[int] = (1, 5, 20)) -> List[Dict]:
  """BM25 recall@ks of each split's questions. Returns one record per split."""
  texts, titles = read_knowledge_texts(knowledge_dir)
  index = BM25Index([f"{t} {x}" for t, x in zip(titles, texts)], k1, b)
  out = []
  for split in splits:
    examples = qa_pipeline.read_qa_file(qa_pipeline.qa_file_path(data_root, dataset_name, split))
    retrieved = index.retrieve([e.question for e in examples], max(ks))
    rec = recall_at_k(retrieved, texts, [e.answers for e in examples], ks)
    out.append({"benchmark": "bm25", "dataset_name": dataset_name, "split": split,
                "questions": len(examples), "blocks": len(texts), "k1": k1, "b": b,
                **{f"recall@{k}": v for k, v in rec.items()}})
  return out


def main(argv):
  del argv
  ks = [int(k) for k in FLAGS.recall_at]
  for rec in evaluate(FLAGS.knowledge_dir, FLAGS.data_root, FLAGS.dataset_name, FLAGS.splits,
                      FLAGS.k1, FLAGS.b, ks):
    bench_common.emit(rec)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["knowledge_dir", "data_root"])
  app.run(main)
