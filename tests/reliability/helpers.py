"""Shared helpers of the reliability tests: tiny inputs written directly, subprocess runs, kill."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from tests import tiny_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
TINY_CONFIG = os.path.join(REPO, "configs/sizes/tiny.yaml")
# Dropout off so a resumed run is bit-comparable with an uninterrupted one (dropout RNG state is not
# part of a checkpoint).
NO_DROPOUT = ("task.model.bert.dropout_rate=0.0,task.model.bert.attention_dropout_rate=0.0,"
              "task.model.embedder_dropout_rate=0.0")


def env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)


def run(args, timeout=300):
  """Runs `python args...` in the repo; returns the CompletedProcess (never raises on failure)."""
  return subprocess.run([PY] + list(args), cwd=REPO, env=env(), capture_output=True, text=True,
                        timeout=timeout)


def write_vocab(path):
  return tiny_fixtures.write_tiny_vocab(path)


def _int64(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def write_ict_examples(path, vocab, num_blocks=24, seed=0):
  """ORQA `examples.tfr` of `num_blocks` random 3-sentence blocks over the tiny vocab."""
  rng = np.random.RandomState(seed)
  words = [vocab.index(w) for w in tiny_fixtures.WORDS]
  with tf.io.TFRecordWriter(path) as w:
    for _ in range(num_blocks):
      lens = rng.randint(3, 7, size=3)
      tokens = rng.choice(words, size=int(lens.sum()))
      starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
      ex = tf.train.Example(features=tf.train.Features(feature={
          "title_ids": _int64(rng.choice(words, size=2)), "token_ids": _int64(tokens),
          "sentence_starts": _int64(starts)}))
      w.write(ex.SerializeToString())
  return path


def metrics(model_dir, split="train"):
  """The run's metrics.jsonl records of `split` (all records with split=None)."""
  path = os.path.join(model_dir, "metrics.jsonl")
  with open(path) as f:
    return [r for r in map(json.loads, f) if split is None or r["split"] == split]


def start(args):
  return subprocess.Popen([PY] + list(args), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def kill(proc, sig=signal.SIGKILL, timeout=120):
  os.kill(proc.pid, sig)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def checkpoint_steps(model_dir):
  """Steps of the *committed* checkpoints: those the `checkpoint` state file lists.

  A `ckpt-N.index` file appears before the state file names it; a kill in between leaves an
  uncommitted checkpoint that a restart rightly ignores, so counting `.index` files would race.
  TF replaces the state file atomically, so a read never sees half of it.
  """
  path = os.path.join(model_dir, "checkpoint")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    text = f.read()
  return sorted({int(m) for m in re.findall(r'all_model_checkpoint_paths: ".*?ckpt-(\d+)"', text)})


def wait_for_new_checkpoint(proc, model_dir, after_step, timeout=240):
  """Polls until a checkpoint with step > `after_step` exists; returns its step."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    newer = [s for s in checkpoint_steps(model_dir) if s > after_step]
    if newer:
      return min(newer)
    if proc.poll() is not None:
      out = proc.stdout.read()
      raise AssertionError(f"process ended (rc={proc.returncode}) before a checkpoint after step "
                           f"{after_step}:\n{out[-4000:]}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"timeout waiting for a checkpoint after step {after_step}")


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def write_retrieval_corpus(path, num_blocks, vocab):
  """One GZIP shard of the REALM retrieval corpus (contracts §2) with `num_blocks` rows."""
  words = [vocab.index(w) for w in tiny_fixtures.WORDS]
  with tf.io.TFRecordWriter(path, options="GZIP") as w:
    for i in range(num_blocks):
      ex = tf.train.Example(features=tf.train.Features(feature={
          "title": _bytes([f"title {i}".encode()]), "body": _bytes([f"body {i}".encode()]),
          "title_token_ids": _int64(words[i:i + 2]), "body_token_ids": _int64(words[i:i + 5])}))
      w.write(ex.SerializeToString())
  return path


def write_fake_export(export_dir, vocab_rows, block_emb_rows=None, hidden=32, dim=16):
  """A directory shaped like an embedder/bert export for start-up checks only: `saved_model.pb`
  placeholder, `variables/variables` with a `word_embeddings` table of `vocab_rows` rows and, with
  `block_emb_rows`, `encoded/encoded.ckpt`. (The checks must reject it before loading the graph.)"""
  from realm_tf2.retrieval import embed_corpus
  os.makedirs(os.path.join(export_dir, "variables"), exist_ok=True)
  with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
    f.write(b"placeholder")
  module = tf.Module()
  module.word_embeddings = tf.Variable(tf.zeros([vocab_rows, hidden]))
  tf.train.Checkpoint(encoder=module).write(os.path.join(export_dir, "variables", "variables"))
  if block_emb_rows is not None:
    embed_corpus.write_encoded(export_dir, np.zeros([block_emb_rows, dim], np.float32))
  return export_dir


def write_blocks_tfr(path, texts):
  with tf.io.TFRecordWriter(path) as w:
    for t in texts:
      w.write(t if isinstance(t, bytes) else t.encode("utf-8"))
  return path


def write_qa(data_root, name="World", splits=("train", "dev", "test"), lines=None):
  os.makedirs(data_root, exist_ok=True)
  lines = lines or ['{"question": "who was born in paris", "answer": ["john"]}']
  for split in splits:
    with open(os.path.join(data_root, f"{name}.resplit.{split}.jsonl"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return data_root


PRETRAIN_DOCS = [
    ("john", "john was born in paris . he wrote a book in 1875 ."),
    ("mary", "mary was born in london . she founded the city in 1900 ."),
    ("king", "the king wrote a book . the queen was born in may ."),
    ("river", "the river is in paris . the city was built in march ."),
]
SALIENT = ("paris", "london", "1875", "1900", "book", "city", "may", "march")


def write_pretrain_corpus(directory, num_shards=2, copies=4):
  """GZIP pre-training shards (contracts §2) with sentence and salient-span byte offsets."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for s in range(num_shards):
    path = os.path.join(directory, f"pretrain-{s:05d}-of-{num_shards:05d}")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
      for c in range(copies):
        for title, text in PRETRAIN_DOCS:
          raw = text.encode()
          sents, start = [], 0
          for part in text.split(" . "):
            part = part.rstrip(" .") + " ."
            b = text.encode().index(part.encode(), start)
            sents.append((b, b + len(part.encode())))
            start = b + len(part.encode())
          spans = []
          for word in SALIENT:
            i = raw.find(f" {word} ".encode())
            if i >= 0:
              spans.append((i + 1, i + 1 + len(word)))
          ex = tf.train.Example(features=tf.train.Features(feature={
              "title": _bytes([f"{title}{s}{c}".encode()]), "text": _bytes([raw]),
              "sentence_byte_start": _int64([a for a, _ in sents]),
              "sentence_byte_limit": _int64([b for _, b in sents]),
              "span_byte_start": _int64([a for a, _ in spans]),
              "span_byte_limit": _int64([b for _, b in spans])}))
          w.write(ex.SerializeToString())
    paths.append(path)
  return paths
