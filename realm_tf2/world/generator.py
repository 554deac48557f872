r"""Generates the default knowledge world: a fictional, deterministic-by-seed, scalable corpus + QA.

  python -m realm_tf2.world.generator --output_dir=DIR [--num_entities=600] [--seed=0]

Writes (all through tf.io.gfile, each file atomically, streamed entity by entity):
  DIR/knowledge.jsonl      {"title", "body"}: one encyclopedic document per entity (knowledge corpus).
  DIR/pretrain.jsonl       {"title", "text"}: news-style articles restating the same facts in other
                           words, for salient-span pre-training (input of data_prep.build_pretrain_corpus).
  DIR/qa/World.resplit.{train,dev,test}.jsonl
                           {"question", "answer": [...]} (ORQA format, dataset name "World"); split by a
                           seeded hash of the question, 80/10/10, so splits are disjoint by question.
  DIR/facts.jsonl          {"question", "answer", "entity", "kind", "relation", "split"}: which entity
                           (= knowledge document title) each question is about, for analysis and tests.
  DIR/world.json           manifest: seed, sizes, paths, counts.
The entity graph (`entities.py`) is held in memory; text is rendered and written one entity at a
time (time and memory at 100k entities: docs/scaling.md). The country documents have 300-530 words
(several 288-wordpiece blocks each).
"""
import hashlib
import json
import random
import re
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging

import realm_tf2  # noqa: F401
from realm_tf2 import io_utils
from realm_tf2.world import entities as ent_lib
from realm_tf2.world import render

DATASET_NAME = "World"
GENERATOR_VERSION = 1  # bump when the output for a given (num_entities, seed) changes
DEFAULT_NUM_ENTITIES = 600
DEFAULT_SEED = 0
SPLITS = ("train", "dev", "test")
_WORD_RE = re.compile(r"[A-Za-z]+")


def split_of(question: str, seed: int) -> str:
  """Deterministic 80/10/10 split by a seeded SHA-1 of the question string."""
  bucket = int(hashlib.sha1(f"{seed}:{question}".encode("utf-8")).hexdigest(), 16) % 100
  return "train" if bucket < 80 else ("dev" if bucket < 90 else "test")


def qa_path(output_dir: str, split: str) -> str:
  return f"{output_dir}/qa/{DATASET_NAME}.resplit.{split}.jsonl"


def _dumps(obj) -> str:
  return json.dumps(obj, ensure_ascii=False) + "\n"


def generate_world(output_dir: str, num_entities: int = DEFAULT_NUM_ENTITIES,
                   seed: int = DEFAULT_SEED) -> Dict[str, Any]:
  """Builds the world and writes its files (see module docstring).

  Args:
    output_dir: directory (local or gs://); created if missing; existing files are replaced atomically.
    num_entities: total entities (>= 10); one knowledge document and one pre-training article each.
    seed: RNG seed; the same (num_entities, seed) gives byte-identical files.

  Returns:
    dict with paths (`knowledge`, `pretrain`, `qa_dir`, `qa` {split: path}, `facts`, `manifest`),
    `data_root`/`dataset_name` for ORQA flags, and counts: `num_entities`, `entity_counts` {kind: n},
    `num_knowledge_docs`, `num_pretrain_docs`, `num_questions` {split: n}, `num_distinct_words`
    (lowercased word types of the knowledge corpus), `max_doc_words`, `num_docs_over_250_words`,
    `num_duplicate_questions_skipped`.
  """
  output_dir = output_dir.rstrip("/")
  world = ent_lib.build_world(num_entities, seed, reserved_words=render.template_vocabulary())
  paths = {"knowledge": f"{output_dir}/knowledge.jsonl", "pretrain": f"{output_dir}/pretrain.jsonl",
           "facts": f"{output_dir}/facts.jsonl", "manifest": f"{output_dir}/world.json",
           "qa_dir": f"{output_dir}/qa", "qa": {s: qa_path(output_dir, s) for s in SPLITS}}
  words = set()
  max_words = long_docs = 0
  with io_utils.atomic_open(paths["knowledge"]) as f:
    for e in world.entities:
      doc = render.knowledge_document(world, e)
      doc_words = _WORD_RE.findall(doc["body"])
      words.update(w.lower() for w in doc_words)
      max_words = max(max_words, len(doc_words))
      long_docs += len(doc_words) > 250
      f.write(_dumps(doc))

  order = list(range(len(world.entities)))
  random.Random(f"{seed}:article-order").shuffle(order)  # articles are not aligned with documents
  with io_utils.atomic_open(paths["pretrain"]) as f:
    for i, eid in enumerate(order):
      f.write(_dumps(render.pretrain_article(world, world.entities[eid], i)))

  num_questions = {s: 0 for s in SPLITS}
  seen_questions = set()  # membership only
  duplicates = 0
  with io_utils.atomic_open(paths["qa"]["train"]) as f_train, \
      io_utils.atomic_open(paths["qa"]["dev"]) as f_dev, \
      io_utils.atomic_open(paths["qa"]["test"]) as f_test, \
      io_utils.atomic_open(paths["facts"]) as f_facts:
    qa_files = {"train": f_train, "dev": f_dev, "test": f_test}
    for e in world.entities:
      for relation, question, answers in render.questions(world, e):
        if question in seen_questions:
          duplicates += 1  # cannot happen with unique names; counted, never silent
          continue
        seen_questions.add(question)
        split = split_of(question, seed)
        num_questions[split] += 1
        qa_files[split].write(_dumps({"question": question, "answer": answers}))
        f_facts.write(_dumps({"question": question, "answer": answers, "entity": e.title,
                              "kind": e.kind, "relation": relation, "split": split}))

  result = {
      **paths,
      "data_root": paths["qa_dir"],
      "dataset_name": DATASET_NAME,
      "seed": seed,
      "generator_version": GENERATOR_VERSION,
      "num_entities": len(world.entities),
      "entity_counts": world.counts(),
      "num_knowledge_docs": len(world.entities),
      "num_pretrain_docs": len(order),
      "num_questions": num_questions,
      "num_distinct_words": len(words),
      "max_doc_words": max_words,
      "num_docs_over_250_words": long_docs,
      "num_duplicate_questions_skipped": duplicates,
  }
  io_utils.atomic_write_text(paths["manifest"], json.dumps(result, indent=2, sort_keys=True) + "\n")
  return result


def ensure_world(output_dir: str, num_entities: int = DEFAULT_NUM_ENTITIES,
                 seed: int = DEFAULT_SEED) -> Dict[str, Any]:
  """Returns the manifest of the world in `output_dir`, generating it unless one with the same
  (num_entities, seed, generator_version) and all its files is already there (for "create or reuse")."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  manifest_path = f"{output_dir.rstrip('/')}/world.json"
  if tf.io.gfile.exists(manifest_path):
    with tf.io.gfile.GFile(manifest_path) as f:
      try:
        manifest = json.load(f)
      except json.JSONDecodeError:
        manifest = {}
    files = [manifest.get(k) for k in ("knowledge", "pretrain", "facts")] + list(manifest.get("qa", {}).values())
    if (manifest.get("num_entities") == num_entities and manifest.get("seed") == seed
        and manifest.get("generator_version") == GENERATOR_VERSION and len(files) == 6
        and all(p and tf.io.gfile.exists(p) for p in files)):
      return manifest
  return generate_world(output_dir, num_entities, seed)


FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when run as a script, so importing generate_world never adds global absl flags
  # (run_demo and others define their own --output_dir / --seed).
  flags.DEFINE_string("output_dir", None, "Where to write the world (local path or gs://).")
  flags.DEFINE_integer("num_entities", DEFAULT_NUM_ENTITIES,
                       "Total entities (people, places, organisations, works); >= 10. 600 is the demo "
                       "default (a few hundred blocks); 100000 is a large-scale world.")
  flags.DEFINE_integer("seed", DEFAULT_SEED, "RNG seed; same seed and size give byte-identical output.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required.")
  result = generate_world(FLAGS.output_dir, FLAGS.num_entities, FLAGS.seed)
  logging.info("World written to %s", FLAGS.output_dir)
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
