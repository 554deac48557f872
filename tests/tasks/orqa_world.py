"""A tiny ORQA world for tests: 4 blocks, 8 questions, a random tiny retriever export with block_emb."""
import json
import os

import numpy as np
import tensorflow as tf

from tests import tiny_fixtures

BLOCKS = ["John was born in Paris in 1875.",
          "Mary was born in London in 1900.",
          "The king wrote a book in 1999.",
          "The queen built the city in June."]
QA = [("where was john born?", ["Paris"]), ("when was john born?", ["1875"]),
      ("where was mary born?", ["London"]), ("when was mary born?", ["1900"]),
      ("who wrote a book?", ["the king"]), ("when was the book written?", ["1999"]),
      ("who built the city?", ["the queen"]), ("when was the city built?", ["June"])]
BERT = dict(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2, intermediate_size=37)
PROJECTION = 16


def model_config(**overrides):
  from realm_tf2 import configs
  kw = dict(bert=configs.BertConfig(**BERT), projection_size=PROJECTION, reader_seq_len=32,
            retriever_beam_size=4, reader_beam_size=4, max_span_width=3, span_hidden_size=16)
  kw.update(overrides)
  return configs.ModelConfig(**kw)


def build_world(root):
  """Writes vocab, blocks.tfr, QA files (train = dev = test) and a retriever export; returns paths."""
  import realm_tf2  # noqa: F401
  from realm_tf2 import tokenization
  from realm_tf2.export import embedder_export
  from realm_tf2.modeling import embedder
  from realm_tf2.retrieval import index
  os.makedirs(root, exist_ok=True)
  vocab = tiny_fixtures.write_tiny_vocab(os.path.join(root, "vocab.txt"))
  corpus = os.path.join(root, "corpus")
  os.makedirs(corpus, exist_ok=True)
  with tf.io.TFRecordWriter(os.path.join(corpus, "blocks.tfr")) as w:
    for b in BLOCKS:
      w.write(b.encode("utf-8"))
  qa = os.path.join(root, "qa")
  os.makedirs(qa, exist_ok=True)
  for split in ("train", "dev", "test"):
    with open(os.path.join(qa, f"World.resplit.{split}.jsonl"), "w") as f:
      for q, a in QA:
        f.write(json.dumps({"question": q, "answer": a}) + "\n")
  tf.keras.utils.set_random_seed(0)
  mc = model_config()
  tok = tokenization.RealmTokenizer(vocab)
  emb_model = embedder.RealmEmbedder(mc.bert, projection_size=PROJECTION, vocab_size=tok.vocab_size)
  feats = tokenization.pack_candidate(tok.tokenize(BLOCKS), tok.tokenize(BLOCKS), tok.cls_id,
                                      tok.sep_id, seq_len=32)
  block_emb = emb_model(feats, training=False).numpy()
  retriever = os.path.join(root, "retriever")
  staging = os.path.join(root, "encoded_staging")
  index.write_block_emb_checkpoint(os.path.join(staging, "encoded.ckpt"), block_emb)
  embedder_export.export_embedder(emb_model, vocab, True, retriever,
                                  encoded_checkpoint=os.path.join(staging, "encoded.ckpt"))
  return {"vocab": vocab, "corpus": corpus, "qa": qa, "retriever": retriever,
          "block_emb": block_emb}


def task_config(world, **model_overrides):
  from realm_tf2.tasks import orqa_task
  from realm_tf2 import configs
  tc = orqa_task.OrqaTaskConfig(
      model=model_config(**model_overrides), vocab_file=world["vocab"],
      retriever_module_path=world["retriever"], block_records_path=world["corpus"],
      max_question_len=8, max_answers=2, max_answer_len=4, jit_compile=False,
      optimizer=configs.OptimizerConfig(learning_rate=1e-3, num_warmup_steps=10))
  tc.train_data.data_root = tc.validation_data.data_root = world["qa"]
  tc.train_data.dataset_name = tc.validation_data.dataset_name = "World"
  tc.train_data.global_batch_size = tc.validation_data.global_batch_size = 4
  return tc
