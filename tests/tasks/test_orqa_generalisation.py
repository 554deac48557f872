"""ORQA fine-tuning on HELD-OUT dev questions (issue 6): dev entities never appear in train questions.

The world (`orqa_world.generate_heldout_world`): one templated document per made-up person, unique
names, birth cities and birth years, so every answer occurs verbatim in exactly one block. The reader
reads ALL blocks (reader_beam_size = retriever_beam_size = number of blocks, allowed for a tiny corpus),
so a correct dev answer needs the reader to find the block of the asked (unseen-in-training) entity and
the span of the asked relation: generalisation, not memorisation.
"""
import copy
import json

import numpy as np
import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import configs
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.tasks import orqa_task
from tests.tasks import orqa_world

NUM_ENTITIES, NUM_DEV_ENTITIES = 24, 6
BERT = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                          intermediate_size=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return orqa_world.build_heldout_setup(str(tmp_path_factory.mktemp("heldout")), BERT,
                                        num_entities=NUM_ENTITIES,
                                        num_dev_entities=NUM_DEV_ENTITIES)


def _names(rows):
  return {r["question"].split()[2] for r in rows}


def test_heldout_world_is_disjoint_and_answers_are_verbatim(setup):
  train, dev = setup["train"], setup["dev"]
  assert len(train) == 2 * (NUM_ENTITIES - NUM_DEV_ENTITIES) and len(dev) == 2 * NUM_DEV_ENTITIES
  assert not _names(train) & _names(dev)  # disjoint entities
  assert not {r["question"] for r in train} & {r["question"] for r in dev}
  texts = setup["texts"]
  assert len(texts) == NUM_ENTITIES and setup["block_emb"].shape == (NUM_ENTITIES, 16)
  tok = tokenization.RealmTokenizer(setup["vocab"])
  for r in train + dev:
    (answer,) = r["answer"]
    holders = [t for t in texts if f" {answer} " in f" {t} "]
    assert len(holders) == 1 and r["question"].split()[2] in holders[0].split(), r
    # Every name, city and year is one wordpiece, so the answer is a width-1 span.
    assert len(tok.tokenize_np([answer])[0]) == 1


def _task(setup, lr, batch):
  n = len(setup["texts"])
  mc = configs.ModelConfig(bert=BERT, projection_size=16, reader_seq_len=32, retriever_beam_size=n,
                           reader_beam_size=n, max_span_width=2, span_hidden_size=32)
  tc = orqa_task.OrqaTaskConfig(
      model=mc, vocab_file=setup["vocab"], retriever_module_path=setup["retriever"],
      block_records_path=setup["corpus"], max_question_len=8, max_answers=1, max_answer_len=2,
      jit_compile=False, optimizer=configs.OptimizerConfig(learning_rate=lr, num_warmup_steps=20))
  tc.train_data.data_root = tc.validation_data.data_root = setup["qa"]
  tc.train_data.dataset_name = tc.validation_data.dataset_name = "World"
  tc.train_data.global_batch_size = batch
  tc.validation_data.global_batch_size = 16
  return orqa_task.OrqaTask(tc)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "Not reached yet: with hidden 32 x 2 layers, lr 1e-3, batch 8, 300 steps dev EM stays 0.0 and "
    "train EM <= 0.13. Also measured (2026-11-23): hidden 64 x 2, 600 steps: train 0.64, dev 0.0 "
    "(memorised); 80 entities, 1200 steps: train 0.11, dev 0.0; an unseen RELATION of seen "
    "entities as dev instead: train 0.52, dev 0.0. A from-scratch reader does not learn to match "
    "the question's name in the block. Measured outside this test: with an ICT-trained retriever "
    "(in-process ICT on a 100-person world of 2-sentence documents, projection 64, reader beam 5 "
    "over all blocks, 600 ORQA steps): dev recall@5 0.05 -> 0.88 but recall@1 0.2 and dev EM 0.1; "
    "train EM stalls at 0.5 (the reader confuses when/where); 300 persons: dev recall@5 0.34, EM "
    "0.02. The same reader alone on synthetic ids (batch 32, constant lr 1e-3) sits at ln 2 for "
    "~250 steps, then solves when/where (dev 1.0); with 4 distractor blocks per question it "
    "reaches train 0.97, dev 0.52."))
def test_finetuning_raises_heldout_dev_em(setup):
  """Dev EM before fine-tuning <= 0.2, after >= 0.8 on questions about unseen entities."""
  tf.keras.utils.set_random_seed(1)
  task = _task(setup, lr=1e-3, batch=8)
  model = task.build_model()
  assert model.reader_beam_size == len(setup["texts"])

  def evaluate(split):
    data = copy.deepcopy(task.task_config.validation_data)
    data.split = split
    state = None
    for batch in task.build_inputs(data):
      state = task.aggregate_logs(state, {k: v.numpy() for k, v in
                                          task.validation_step(batch, model).items()})
    return task.reduce_aggregated_logs(state)["exact_match"]

  before = evaluate("dev")
  assert before <= 0.2
  steps = 300
  opt = optimization.create_optimizer(task.task_config.optimizer, steps)
  step = tf.function(lambda x: task.train_step(x, model, opt))
  it = iter(task.build_inputs(task.task_config.train_data))
  for _ in range(steps):
    step(next(it))
  after = evaluate("dev")
  assert after >= 0.8, (before, after, evaluate("train"))
