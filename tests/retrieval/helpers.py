"""Shared helpers of the retrieval tests: a tiny corpus on disk and a tiny embedder."""
import realm_tf2  # noqa: F401

import os

import numpy as np
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2.data import corpus_format
from tests import tiny_fixtures

CLS_ID = tiny_fixtures.tiny_vocab().index("[CLS]")
SEP_ID = tiny_fixtures.tiny_vocab().index("[SEP]")
VOCAB_SIZE = len(tiny_fixtures.tiny_vocab())


def tiny_bert_config():
  return configs.BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=512, dropout_rate=0.0,
                            attention_dropout_rate=0.0)


def tiny_embedder(seed=0):
  from realm_tf2.modeling import embedder as embedder_lib
  tf.keras.utils.set_random_seed(seed) if hasattr(tf.keras.utils, "set_random_seed") else None
  tf.random.set_seed(seed)
  return embedder_lib.RealmEmbedder(tiny_bert_config(), projection_size=8)


def random_blocks(n, seed=0, max_title=6, max_body=300):
  """n blocks with varied lengths (some longer than 288, some tiny)."""
  rng = np.random.default_rng(seed)
  titles, bodies = [], []
  for i in range(n):
    tl = int(rng.integers(0, max_title))
    bl = int(rng.choice([rng.integers(0, 40), rng.integers(40, 150), rng.integers(150, max_body)]))
    titles.append(rng.integers(5, VOCAB_SIZE, tl))
    bodies.append(rng.integers(5, VOCAB_SIZE, bl))
  return titles, bodies


def write_corpus(directory, titles, bodies, num_shards=2, with_uid=True):
  """Writes GZIP shards `blocks-0000i-of-0000n` in contiguous chunks; returns the glob."""
  tf.io.gfile.makedirs(directory)
  n = len(titles)
  per = int(np.ceil(n / num_shards))
  opts = tf.io.TFRecordOptions(compression_type="GZIP")
  for s in range(num_shards):
    path = os.path.join(directory, f"blocks-{s:05d}-of-{num_shards:05d}")
    with tf.io.TFRecordWriter(path, opts) as w:
      for i in range(s * per, min(n, (s + 1) * per)):
        ex = corpus_format.realm_example(f"title {i}", f"body {i}", titles[i], bodies[i],
                                         doc_uid=1000 + i if with_uid else -1, block_index=i)
        w.write(ex.SerializeToString())
  return os.path.join(directory, "blocks-*")
