"""Tiny ORQA worlds for tests.

* `build_world`: 4 hand-written blocks, 8 questions, train = dev = test (plumbing tests only, NOT a
  measure of generalisation), random tiny retriever export with block_emb.
* `generate_heldout_world` + `build_heldout_setup`: a templated person world whose dev questions are
  about entities no train question mentions; vocab and corpus built with the data_prep libraries.
"""
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


# --- Held-out world: dev questions are about entities that no train question mentions. ---------------

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
PERSON_TEMPLATES = ("{name} was born in {city} in {year} .",
                    "in {year} , {name} was born in the town of {city} .")
QUESTION_TEMPLATES = (("when was {name} born ?", "year"), ("where was {name} born ?", "city"))
# Four sentences per person (two facts, two fillers): ICT removes one sentence from its block, so
# with two-sentence documents every ICT block would be one sentence long while the index holds both;
# longer documents keep ICT blocks like the indexed ones.
PERSON4_TEMPLATES = (
    "{Name} was born in {City}. {Name} works as a {job}. {Name} was born in the year {year}. "
    "The hobby of {Name} is {hobby}.",
    "In {year}, {Name} was born. {Name} likes {hobby}. The birthplace of {Name} is {City}. "
    "By trade {Name} is a {job}.")
# Answers as the documents write them (ORQA's recall@k matches raw, case-sensitive text).
QUESTION4_TEMPLATES = (("when was {name} born ?", "year"), ("where was {name} born ?", "City"))
# Shared (non-unique) filler attributes for longer documents; never asked about.
_JOBS = ("farmer", "baker", "painter", "sailor", "teacher", "weaver")
_HOBBIES = ("chess", "music", "fishing", "poetry", "riding", "gardening")


def _words(rng, n, syllables, taken):
  """n distinct made-up words of `syllables` consonant-vowel pairs, none in `taken`."""
  out = []
  while len(out) < n:
    w = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
    if w not in taken:
      taken.add(w)
      out.append(w)
  return out


def generate_heldout_world(root, num_entities=32, num_dev_entities=8, seed=0,
                           templates=PERSON_TEMPLATES, questions=QUESTION_TEMPLATES,
                           num_cities=None, num_years=None):
  """Writes a templated person world: `knowledge.jsonl` (one document per person) and
  `qa/World.resplit.{train,dev,test}.jsonl`.

  Every person has a unique made-up name, a unique birth city and a unique birth year, so an answer
  string occurs in exactly one document: a correct prediction requires reading the block of the
  asked person. Persons are split by ENTITY: the dev (= test) questions are about the last
  `num_dev_entities` persons, which no train question mentions (disjoint entities and facts). Two
  document templates put the facts at different positions. Returns dict(knowledge, qa, train, dev).

  `num_cities` / `num_years` (optional): draw birth cities / years from pools of that size instead
  (shared between persons, as in real data, so the reader can learn what a city or a year looks
  like; an answer string then occurs in several documents). Templates may also use `{job}` and
  `{hobby}`: shared filler facts that no question asks about.
  """
  rng = np.random.RandomState(seed)
  taken = set()
  names = _words(rng, num_entities, 3, taken)
  cities = _words(rng, num_cities or num_entities, 2, taken)
  years = rng.choice(np.arange(1500, 2000), num_years or num_entities, replace=False)
  pool_rng = np.random.RandomState(seed + 1)  # separate stream: the default world stays unchanged
  if num_cities:
    cities = [cities[j] for j in pool_rng.randint(num_cities, size=num_entities)]
  if num_years:
    years = [years[j] for j in pool_rng.randint(num_years, size=num_entities)]
  os.makedirs(os.path.join(root, "qa"), exist_ok=True)
  docs, qa = [], {"train": [], "dev": []}
  for i, (name, city, year) in enumerate(zip(names, cities, years)):
    facts = {"name": name, "city": city, "year": str(year), "Name": name.capitalize(),
             "City": city.capitalize(), "job": _JOBS[pool_rng.randint(len(_JOBS))],
             "hobby": _HOBBIES[pool_rng.randint(len(_HOBBIES))]}
    docs.append({"title": name, "body": templates[rng.randint(len(templates))].format(**facts)})
    split = "dev" if i >= num_entities - num_dev_entities else "train"
    for template, relation in questions:
      qa[split].append({"question": template.format(name=name), "answer": [facts[relation]]})
  knowledge = os.path.join(root, "knowledge.jsonl")
  with open(knowledge, "w") as f:
    f.writelines(json.dumps(d) + "\n" for d in docs)
  qa["test"] = qa["dev"]
  for split, rows in qa.items():
    with open(os.path.join(root, "qa", f"World.resplit.{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return {"knowledge": knowledge, "qa": os.path.join(root, "qa"), "train": qa["train"],
          "dev": qa["dev"]}


def build_heldout_setup(root, bert_config, projection_size=16, **world_kwargs):
  """Held-out world -> vocab (`data_prep.build_vocab`, every word a token) -> knowledge corpus
  (`data_prep.build_knowledge_corpus`) -> random retriever export with `encoded/encoded.ckpt`
  (`embed_corpus.embed_corpus`). The export uses `bert_config` (the ORQA retriever restores it).

  Returns dict(world..., vocab, corpus, retriever, texts (block strings), block_emb [N, D]).
  """
  import realm_tf2  # noqa: F401
  from data_prep import build_knowledge_corpus
  from data_prep import build_vocab
  from realm_tf2 import tokenization
  from realm_tf2.export import embedder_export
  from realm_tf2.modeling import embedder
  from realm_tf2.retrieval import embed_corpus
  world = generate_heldout_world(root, **world_kwargs)
  vocab = os.path.join(root, "vocab.txt")
  # The vocab learns from the corpus and the TRAIN questions (as the demo's), so question words
  # such as "when" are whole tokens.
  questions = os.path.join(root, "vocab_questions.txt")
  with open(questions, "w") as f:
    f.writelines(r["question"] + "\n" for r in world["train"])
  build_vocab.build_vocab(f"{world['knowledge']},{questions}", vocab, 1000, lower_thresh=1)
  corpus = os.path.join(root, "corpus")
  build_knowledge_corpus.build_knowledge_corpus(world["knowledge"], vocab, corpus, num_shards=1,
                                                num_workers=1, max_block_length=64, verbose=False)
  tok = tokenization.RealmTokenizer(vocab)
  tf.keras.utils.set_random_seed(0)
  emb_model = embedder.RealmEmbedder(bert_config, projection_size=projection_size,
                                     vocab_size=tok.vocab_size)
  emb_model({k: tf.zeros([1, 8], tf.int32) for k in ("input_ids", "input_mask", "segment_ids")})
  retriever = os.path.join(root, "retriever")
  embedder_export.export_embedder(emb_model, vocab, True, retriever)
  _, block_emb = embed_corpus.embed_corpus(os.path.join(corpus, "realm", "blocks-*"), emb_model,
                                           retriever, vocab_file=vocab)
  texts = [r.numpy().decode("utf-8") for r in
           tf.data.TFRecordDataset(os.path.join(corpus, "blocks.tfr"))]
  return {**world, "vocab": vocab, "corpus": corpus, "retriever": retriever, "texts": texts,
          "block_emb": block_emb}
