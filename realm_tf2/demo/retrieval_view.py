"""Host-side look at what a retriever export retrieves: question → `projected` → top-k of `block_emb`.

Used by the notebook to compare the retrieval before (ICT export) and after REALM pre-training (the
final REALM retriever snapshot). Only exported artefacts are read: the embedder SavedModel
(contracts §3: `projected`, `tokenization_info`), its `encoded/encoded.ckpt` and the ORQA
`blocks.tfr`/`titles.tfr`.
"""
import os
from typing import List, Sequence

import realm_tf2  # noqa: F401
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (ops of the exported tokenizer assets)

from realm_tf2 import tokenization
from realm_tf2.retrieval import index as index_lib


def read_blocks(corpus_dir: str) -> List[str]:
  """`[title] body` strings of the ORQA blocks (row i = block i = row i of block_emb)."""
  def read(name):
    return [r.numpy().decode("utf-8")
            for r in tf.data.TFRecordDataset(os.path.join(corpus_dir, name))]
  return [f"[{t}] {b}" for t, b in zip(read("titles.tfr"), read("blocks.tfr"))]


def retrieve(embedder_dir: str, questions: Sequence[str], blocks: Sequence[str], k: int = 3,
             query_seq_len: int = 32) -> List[List[dict]]:
  """Top-`k` blocks per question by inner product with the export's `encoded/encoded.ckpt`.

  Args:
    embedder_dir: Embedder export with `encoded/encoded.ckpt`.
    questions: B question strings.
    blocks: Texts of the corpus rows (`read_blocks`).
    k: Blocks per question.
    query_seq_len: Packed question length T.

  Returns:
    For each question, k dicts {"block_index", "score", "text"}, best first.
  """
  model = tf.saved_model.load(embedder_dir)
  info = model.signatures["tokenization_info"]()
  tok = tokenization.RealmTokenizer(info["vocab_file"].numpy().decode("utf-8"),
                                    bool(info["do_lower_case"].numpy()))
  packed = [tokenization.bert_pack_np([ids], query_seq_len, tok.cls_id, tok.sep_id)
            for ids in tok.tokenize_np(list(questions))]
  feats = {key: tf.constant(np.stack([p[key] for p in packed]).astype(np.int32))
           for key in ("input_ids", "input_mask", "segment_ids")}  # each [B, T]
  query_emb = model.signatures["projected"](**feats)["default"].numpy()  # [B, D]
  block_emb = index_lib.read_block_emb_checkpoint(
      os.path.join(embedder_dir, "encoded", "encoded.ckpt"))  # [N, D]
  block_emb = np.asarray(block_emb)
  if block_emb.shape[0] != len(blocks):
    raise ValueError(f"{embedder_dir}: block_emb has {block_emb.shape[0]} rows, corpus {len(blocks)}")
  scores = query_emb @ block_emb.T  # [B, N]
  top = np.argsort(-scores, axis=1)[:, :k]  # [B, k]
  return [[{"block_index": int(j), "score": float(scores[i, j]), "text": blocks[j]} for j in row]
          for i, row in enumerate(top)]
