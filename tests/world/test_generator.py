"""The default knowledge world: determinism, answer grounding, distinct pre-training text, splits, scale."""
import json
import os
import re
import subprocess
import sys

import pytest

from realm_tf2.world import entities as ent_lib
from realm_tf2.world import generator
from realm_tf2.world import names as names_lib
from realm_tf2.world import render
from tests.conftest import REPO_ROOT

DATA_FILES = ("knowledge.jsonl", "pretrain.jsonl", "facts.jsonl", "qa/World.resplit.train.jsonl",
              "qa/World.resplit.dev.jsonl", "qa/World.resplit.test.jsonl")
_SENTENCE_SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")


def _read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


def _jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world20(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("world20"))
  return generator.generate_world(out, num_entities=20, seed=7)


@pytest.fixture(scope="module")
def world300(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("world300"))
  return generator.generate_world(out, num_entities=300, seed=0)


def test_same_seed_same_bytes(world20, tmp_path):
  again = generator.generate_world(str(tmp_path / "again"), num_entities=20, seed=7)
  first_dir = os.path.dirname(world20["knowledge"])
  for name in DATA_FILES:
    assert _read_bytes(os.path.join(first_dir, name)) == _read_bytes(os.path.join(str(tmp_path / "again"), name)), name
  strip = lambda r: {k: v for k, v in r.items() if k not in ("knowledge", "pretrain", "facts", "manifest",
                                                             "qa_dir", "qa", "data_root")}
  assert strip(again) == strip(world20)


def test_different_seed_differs(world20, tmp_path):
  other = generator.generate_world(str(tmp_path / "other"), num_entities=20, seed=8)
  assert _read_bytes(other["knowledge"]) != _read_bytes(world20["knowledge"])
  titles7 = {d["title"] for d in _jsonl(world20["knowledge"])}
  titles8 = {d["title"] for d in _jsonl(other["knowledge"])}
  assert len(titles7 & titles8) < 3


def test_every_answer_in_its_entity_document(world300):
  docs = {d["title"]: d["body"] for d in _jsonl(world300["knowledge"])}
  assert len(docs) == 300  # titles are unique
  facts = _jsonl(world300["facts"])
  assert len(facts) == sum(world300["num_questions"].values()) > 600
  for fact in facts:
    body = docs[fact["entity"]]
    assert fact["answer"], fact
    for answer in fact["answer"]:
      assert answer in body, (fact, body)
    assert fact["entity"].replace(" River", "") in fact["question"]


def test_qa_files_match_facts_and_splits_disjoint(world300):
  facts = {f["question"]: f for f in _jsonl(world300["facts"])}
  per_split = {}
  for split, path in world300["qa"].items():
    lines = _jsonl(path)
    assert all(set(l) == {"question", "answer"} for l in lines)
    assert all(isinstance(a, str) for l in lines for a in l["answer"])
    for l in lines:
      assert facts[l["question"]]["split"] == split
      assert facts[l["question"]]["answer"] == l["answer"]
    per_split[split] = {l["question"] for l in lines}
    assert len(per_split[split]) == len(lines) == world300["num_questions"][split] > 0
  assert not per_split["train"] & per_split["dev"]
  assert not per_split["train"] & per_split["test"]
  assert not per_split["dev"] & per_split["test"]
  total = sum(len(s) for s in per_split.values())
  assert 0.7 < len(per_split["train"]) / total < 0.9
  assert os.path.basename(world300["qa"]["dev"]) == "World.resplit.dev.jsonl"


def test_pretrain_text_restates_facts_without_copying_sentences(world300):
  knowledge = _jsonl(world300["knowledge"])
  pretrain = _jsonl(world300["pretrain"])
  assert len(pretrain) == 300 and all(set(p) == {"title", "text"} for p in pretrain)
  k_sents = {s for d in knowledge for s in _SENTENCE_SPLIT.split(d["body"])}
  p_sents = [s for p in pretrain for s in _SENTENCE_SPLIT.split(p["text"])]
  assert len(k_sents) > 500 and len(p_sents) > 500
  assert not k_sents.intersection(p_sents)
  # Titles do not reveal the entity of an article.
  titles = {d["title"] for d in knowledge}
  assert not any(p["title"] in titles for p in pretrain)
  # Every asked fact is also stated in the pre-training corpus: some article holds both the entity
  # name and the answer (the birth year for full dates, which the news text writes "June 12, 1875").
  texts = [p["text"] for p in pretrain]
  for fact in _jsonl(world300["facts"]):
    core = fact["answer"][0].split()[-1] if fact["relation"] == "birth" else fact["answer"][0]
    assert any(fact["entity"] in t and core in t for t in texts), fact


def test_sizes_scale(world20, world300):
  assert world20["num_entities"] == world20["num_knowledge_docs"] == world20["num_pretrain_docs"] == 20
  assert sum(world20["entity_counts"].values()) == 20
  assert set(world20["entity_counts"]) == {"country", "river", "city", "person", "organization", "work"}
  assert sum(world300["entity_counts"].values()) == 300
  q20, q300 = sum(world20["num_questions"].values()), sum(world300["num_questions"].values())
  assert 2 * 20 < q20 < 5 * 20 and 2 * 300 < q300 < 5 * 300
  assert world300["max_doc_words"] > world20["max_doc_words"]
  plan = ent_lib.plan_counts(100_000)
  assert sum(plan.values()) == 100_000 and plan["country"] == 158
  # Country documents list all their cities: ~140 cities x ~5 words >> one 288-wordpiece block.
  assert plan["city"] / plan["country"] > 100
  for n in range(ent_lib.MIN_ENTITIES, 120):
    small = ent_lib.plan_counts(n)
    assert sum(small.values()) == n and min(small.values()) >= 1 and small["person"] >= 2, (n, small)
  with pytest.raises(ValueError, match=">= 10"):
    ent_lib.plan_counts(5)


def test_names_are_invented_and_vocab_small(world300):
  reserved = set(render.template_vocabulary())
  docs = _jsonl(world300["knowledge"])
  name_words = set()
  for d in docs:
    for w in d["title"].split():
      if w.lower() not in reserved:
        name_words.add(w.lower())
  assert len(name_words) > 250
  syllables = "|".join(sorted(names_lib.SYLLABLES + names_lib.PLACE_ENDINGS + names_lib.COUNTRY_ENDINGS,
                              key=len, reverse=True))
  composed = re.compile(f"(?:{syllables})+")
  assert all(composed.fullmatch(w) for w in name_words), [w for w in name_words if not composed.fullmatch(w)]
  assert not name_words & reserved
  # A small closed vocabulary: names + template words.
  assert world300["num_distinct_words"] < 1000


def test_tokenizes_well_with_a_vocab_learned_from_it(world300, tmp_path):
  """A 1000-token WordPiece vocab learned from the world's two corpora covers them without [UNK].

  Measured (300 entities, seed 0, vocab learned from knowledge + pre-training text): 1.02 / 1.01
  wordpieces per word at 1000 tokens (1.54 / 1.50 at 500), 0 [UNK]; names are compounds of 48 syllables.
  """
  from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner
  from realm_tf2.tokenization import RealmTokenizer
  split_words = lambda s: re.findall(r"\w+|[^\w\s]", s)
  bodies = [d["body"] for d in _jsonl(world300["knowledge"])]
  texts = [p["text"] for p in _jsonl(world300["pretrain"])]
  counts = {}
  for b in bodies + texts:
    for w in split_words(b.lower()):
      counts[w] = counts.get(w, 0) + 1
  assert len(counts) < 1200  # measured 1021 word types (300 entities)
  vocab = learner.learn(counts, 1000, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], lower_thresh=2)
  assert len(vocab) <= 1020
  # A fresh path: TF lookup tables built from the same file name are shared within a process.
  vocab_file = str(tmp_path / "world_vocab_1000.txt")
  with open(vocab_file, "w") as f:
    f.write("\n".join(vocab) + "\n")
  tok = RealmTokenizer(vocab_file)
  unk = vocab.index("[UNK]")
  for corpus in (bodies, texts):
    ids = tok.tokenize_np(corpus)
    assert sum(int((x == unk).sum()) for x in ids) == 0
    ratio = sum(len(x) for x in ids) / sum(len(split_words(c)) for c in corpus)
    assert 1.0 <= ratio < 1.15, ratio


def test_helpers():
  assert render.date_dmy((1875, 6, 12)) == "12 June 1875"
  assert render.date_mdy((1875, 6, 12)) == "June 12, 1875"
  assert render.join_list(["A", "B", "C"]) == "A, B and C"
  assert names_lib.demonym("Ostrelia") == "Ostrelian"
  assert names_lib.demonym("Varnesh") == "Varneshi"
  assert names_lib.demonym("Zoristan") == "Zori"
  assert names_lib.indefinite_article("astronomer") == "an"
  assert generator.split_of("q", 0) == generator.split_of("q", 0)


@pytest.mark.slow
def test_cli_matches_library_across_hash_seeds(world20, tmp_path):
  out = str(tmp_path / "cli")
  env = dict(os.environ, PYTHONHASHSEED="12345", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "realm_tf2.world.generator", f"--output_dir={out}",
                         "--num_entities=20", "--seed=7"], capture_output=True, text=True,
                        cwd=REPO_ROOT, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(out, "world.json")) as f:  # the manifest the CLI writes
    assert json.load(f)["num_entities"] == 20
  first_dir = os.path.dirname(world20["knowledge"])
  for name in DATA_FILES:
    assert _read_bytes(os.path.join(out, name)) == _read_bytes(os.path.join(first_dir, name)), name


def test_ensure_world_reuses_or_regenerates(tmp_path):
  out = str(tmp_path / "w")
  first = generator.ensure_world(out, num_entities=12, seed=1)
  mtime = os.stat(first["knowledge"]).st_mtime_ns
  content = _read_bytes(first["knowledge"])
  again = generator.ensure_world(out, num_entities=12, seed=1)
  assert again == json.loads(json.dumps(first))        # read back from world.json
  assert os.stat(first["knowledge"]).st_mtime_ns == mtime  # not rewritten
  changed = generator.ensure_world(out, num_entities=12, seed=2)
  assert changed["seed"] == 2 and _read_bytes(changed["knowledge"]) != content
  os.remove(changed["facts"])                           # a missing file forces regeneration
  assert os.path.exists(generator.ensure_world(out, num_entities=12, seed=2)["facts"])
