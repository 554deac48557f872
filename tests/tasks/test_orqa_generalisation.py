"""ORQA fine-tuning on HELD-OUT dev questions (issue 6): dev entities never appear in train questions.

The world (`orqa_world.generate_heldout_world`): one four-sentence templated document per made-up
person (unique names; birth cities and years from shared pools, as real data has them). The
pipeline is the paper's, at toy scale: ICT warm-starts the retriever on the knowledge corpus (all
blocks, no questions), the corpus is embedded into a fixed index, then ORQA fine-tunes the question
tower and a reader on the train persons' questions. A correct dev answer needs the question tower to
find the block of a person no train question named, and the reader to pick the span of the asked
relation: generalisation, not memorisation.

Two ORQA runs share the ICT stage: one with a from-scratch reader (the retrieval test), one with the
reader's BERT from the ICT export at 0.1x the learning rate, as the paper starts the reader from a
pre-trained BERT (the EM tests).
"""
import copy
import os

import numpy as np
import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import configs
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.export import embedder_export
from realm_tf2.retrieval import embed_corpus
from realm_tf2.tasks import ict_task
from realm_tf2.tasks import orqa_task
from tests.tasks import orqa_world

NUM_ENTITIES, NUM_DEV_ENTITIES = 100, 20
NUM_CITIES, NUM_YEARS = 20, 40
PROJECTION = 64
BERT = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=64, dropout_rate=0.0, attention_dropout_rate=0.0)
ICT_STEPS, ORQA_STEPS, PRETRAINED_READER_STEPS, BATCH = 1500, 1200, 800, 32
# ICT warms up over 300 steps, not 20. `realm_tf2.optimization` is BERT's Adam without bias
# correction (as the original), whose early updates are (1 - 0.9^t) / sqrt(1 - 0.999^t) times a
# bias-corrected Adam's (about 6.6x near step 12, 4.5x at step 50); BERT warms up for 10k steps.
# A short warm-up left dev EM widely spread between runs (docs/history.md).
ICT_WARMUP = 300


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("heldout"))
  return orqa_world.build_heldout_setup(
      root, BERT, projection_size=PROJECTION, num_entities=NUM_ENTITIES,
      num_dev_entities=NUM_DEV_ENTITIES, templates=orqa_world.PERSON4_TEMPLATES,
      questions=orqa_world.QUESTION4_TEMPLATES,
      num_cities=NUM_CITIES, num_years=NUM_YEARS)


def _names(rows):
  return {r["question"].split()[2] for r in rows}


def test_heldout_world_is_disjoint_and_answers_are_in_the_persons_block(setup):
  train, dev = setup["train"], setup["dev"]
  assert len(train) == 2 * (NUM_ENTITIES - NUM_DEV_ENTITIES) and len(dev) == 2 * NUM_DEV_ENTITIES
  assert not _names(train) & _names(dev)  # disjoint entities
  assert not {r["question"] for r in train} & {r["question"] for r in dev}
  texts = setup["texts"]
  assert len(texts) == NUM_ENTITIES
  tok = tokenization.RealmTokenizer(setup["vocab"])
  for r in train + dev:
    (answer,) = r["answer"]
    (block,) = [t for t in texts if r["question"].split()[2].capitalize() in t]  # one per person
    assert answer in block, r  # raw text, as ORQA's HasAnswer (recall@k) matches it
    # Every name, city and year is one wordpiece, so the answer is a width-1 span.
    assert len(tok.tokenize_np([answer])[0]) == 1
  # Cities and years come from pools: an answer string is not a block id.
  assert len({r["answer"][0] for r in train + dev}) <= NUM_CITIES + NUM_YEARS


def _ict_retriever(setup):
  """ICT on the corpus's own `examples.tfr`, then the corpus embedded with the trained tower."""
  mc = configs.ModelConfig(bert=BERT, projection_size=PROJECTION, ict_query_seq_len=16,
                           ict_block_seq_len=32, embedder_dropout_rate=0.0)
  tc = ict_task.IctTaskConfig(model=mc, vocab_file=setup["vocab"], jit_compile=False,
                              optimizer=configs.OptimizerConfig(learning_rate=1e-3,
                                                                num_warmup_steps=ICT_WARMUP))
  tc.train_data.input_path = os.path.join(setup["corpus"], "examples.tfr")
  tc.train_data.global_batch_size = BATCH
  task = ict_task.IctTask(tc)
  tf.keras.utils.set_random_seed(0)
  model = task.build_model()
  opt = optimization.create_optimizer(tc.optimizer, ICT_STEPS)
  step = tf.function(lambda x: task.train_step(x, model, opt))
  it = iter(task.build_inputs(tc.train_data))
  accuracy = [float(step(next(it))["accuracy"]) for _ in range(ICT_STEPS)]
  export = os.path.join(os.path.dirname(setup["corpus"]), "ict_retriever")
  embedder_export.export_embedder(model, setup["vocab"], True, export)
  embed_corpus.embed_corpus(os.path.join(setup["corpus"], "realm", "blocks-*"), model, export,
                            vocab_file=setup["vocab"])
  return export, float(np.mean(accuracy[-50:]))


def _orqa_task(setup, retriever):
  n = len(setup["texts"])
  mc = configs.ModelConfig(bert=BERT, projection_size=PROJECTION, reader_seq_len=40,
                           retriever_beam_size=n, reader_beam_size=5, max_span_width=2,
                           span_hidden_size=32, embedder_dropout_rate=0.0)
  tc = orqa_task.OrqaTaskConfig(
      model=mc, vocab_file=setup["vocab"], retriever_module_path=retriever,
      block_records_path=setup["corpus"], max_question_len=16, max_answers=1, max_answer_len=2,
      jit_compile=False, freeze_question_word_embeddings=True,
      optimizer=configs.OptimizerConfig(learning_rate=1e-3, num_warmup_steps=20))
  tc.train_data.data_root = tc.validation_data.data_root = setup["qa"]
  tc.train_data.dataset_name = tc.validation_data.dataset_name = "World"
  tc.train_data.global_batch_size = BATCH
  tc.validation_data.global_batch_size = 16
  return orqa_task.OrqaTask(tc)


@pytest.fixture(scope="module")
def ict_retriever(setup):
  """(ICT embedder export with the corpus's block_emb, ICT in-batch accuracy of the last 50 steps)."""
  return _ict_retriever(setup)


def _finetune(setup, ict_retriever, steps, pretrained_reader):
  """ORQA fine-tuning from the ICT retriever; returns dict(ict_accuracy, before, after, train,
  frozen_ok). `pretrained_reader`: the reader's BERT starts from the ICT export (the product path
  `reader_module_path` = an embedder export) and trains at 0.1x the question tower's rate."""
  retriever, ict_accuracy = ict_retriever
  task = _orqa_task(setup, retriever)
  if pretrained_reader:
    task.task_config.reader_module_path = retriever
    task.task_config.reader_learning_rate_multiplier = 0.1
  tf.keras.utils.set_random_seed(1)
  model = task.build_model()

  def evaluate(split):
    data = copy.deepcopy(task.task_config.validation_data)
    data.split = split
    state = None
    for batch in task.build_inputs(data):
      state = task.aggregate_logs(state, {k: v.numpy() for k, v in
                                          task.validation_step(batch, model).items()})
    return task.reduce_aggregated_logs(state)

  before = evaluate("dev")
  # The from-scratch reader spends a few hundred steps or more on the when/where symmetry, so its
  # decay horizon is twice the run (the learning rate ends at half its peak); the pretrained
  # reader's run decays to 0 as usual.
  decay_steps = steps if pretrained_reader else 2 * steps
  opt = optimization.create_optimizer(task.task_config.optimizer, decay_steps,
                                      variable_lr_schedules=task.variable_lr_schedules(model))
  embeddings = model.retriever.encoder.get_embedding_table()
  initial = embeddings.numpy()
  step = tf.function(lambda x: task.train_step(x, model, opt))
  it = iter(task.build_inputs(task.task_config.train_data))
  for _ in range(steps):
    step(next(it))
  result = dict(ict_accuracy=ict_accuracy, before=before, after=evaluate("dev"),
                train=evaluate("train"),
                frozen_ok=bool(np.array_equal(embeddings.numpy(), initial)))
  print(f"held-out ORQA, pretrained_reader={pretrained_reader} (dev before, dev after, train after):",
        _summary(result))
  return result


@pytest.fixture(scope="module")
def finetuned(setup, ict_retriever):
  """Random-init reader (the retriever test)."""
  return _finetune(setup, ict_retriever, ORQA_STEPS, pretrained_reader=False)


@pytest.fixture(scope="module")
def finetuned_pretrained_reader(setup, ict_retriever):
  """Reader's BERT from the ICT export, 0.1x learning rate (the EM test)."""
  return _finetune(setup, ict_retriever, PRETRAINED_READER_STEPS, pretrained_reader=True)


def _summary(r):
  return {k: (round(float(r["before"][k]), 3), round(float(r["after"][k]), 3),
              round(float(r["train"][k]), 3))
          for k in ("official_exact_match", "exact_match", "recall_at_1", "recall_at_5")}


@pytest.mark.slow
def test_finetuned_question_tower_retrieves_unseen_persons(finetuned):
  """ICT + ORQA with frozen question word embeddings: dev recall@1 rises by >= 0.3 to >= 0.4 and
  dev recall@5 reaches >= 0.75 (from 0.25-0.4), on persons no train question names.

  Without the freeze the tower memorises the train persons (train recall@1 1.0, dev far lower).
  The bounds sit below the lower of the two modes seen over runs; ICT alone stays far under them
  (the runs: docs/history.md, "ORQA on held-out persons").
  """
  assert finetuned["ict_accuracy"] > 0.9, finetuned["ict_accuracy"]  # in-batch, batch 32
  assert finetuned["frozen_ok"]  # the word embeddings did not move
  assert finetuned["before"]["official_exact_match"] <= 0.2, _summary(finetuned)
  before, after = finetuned["before"]["recall_at_1"], finetuned["after"]["recall_at_1"]
  assert after >= 0.4 and after - before >= 0.3, _summary(finetuned)
  assert finetuned["after"]["recall_at_5"] >= 0.75, _summary(finetuned)
  assert finetuned["train"]["official_exact_match"] >= 0.4, _summary(finetuned)


@pytest.mark.slow
def test_pretrained_reader_reads_unseen_persons_blocks(finetuned_pretrained_reader):
  """The product path for a pretrained reader: `reader_module_path` = the ICT embedder export and
  `reader_learning_rate_multiplier` = 0.1. The reader has no when/where plateau, so train EM is
  ~1.0 and dev EM is carried by dev retrieval (docs/history.md has the runs).
  """
  r = finetuned_pretrained_reader
  assert r["before"]["official_exact_match"] <= 0.2, _summary(r)
  assert r["train"]["official_exact_match"] >= 0.9, _summary(r)
  assert r["after"]["official_exact_match"] >= 0.5, _summary(r)


@pytest.mark.slow
def test_finetuning_raises_heldout_dev_em_to_0_8(finetuned_pretrained_reader):
  """Issue 6: dev EM before fine-tuning <= 0.2, after >= 0.8 on questions about unseen persons.

  Dev EM follows dev recall@1, the question tower's generalisation: retrieval already separates the
  train questions' blocks, so the reader alone rarely picks the right block (the runs behind the
  bound: docs/history.md, "ORQA on held-out persons").
  """
  r = finetuned_pretrained_reader
  assert r["before"]["official_exact_match"] <= 0.2
  assert r["after"]["official_exact_match"] >= 0.8, _summary(r)
