"""ORQA model/task: packing, correctness, loss zeroing, batch = singles, eval plumbing, fine-tuning."""
import copy
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import optimization
from realm_tf2.data import qa_pipeline
from realm_tf2.evaluation import answers as answers_lib
from realm_tf2.modeling import orqa_model
from realm_tf2.tasks import orqa_task
from tests import tiny_fixtures
from tests.tasks import orqa_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return orqa_world.build_world(str(tmp_path_factory.mktemp("orqa_world")))


@pytest.fixture(scope="module")
def task_and_model(world):
  tf.keras.utils.set_random_seed(1)
  task = orqa_task.OrqaTask(orqa_world.task_config(world))
  return task, task.build_model()


def _features(task, pairs):
  feat = qa_pipeline.QAFeaturizer(task.tokenizer, 8, 2, 4).featurize(
      [qa_pipeline.QAExample(q, a) for q, a in pairs])
  return {k: tf.constant(v) for k, v in feat.items()}


def _expected_reader_input(question, block, seq_len):
  """`[CLS] q [SEP] block [SEP]` written out by hand (ORQA ReaderInputs), and its block mask."""
  block = list(block[:seq_len - 3 - len(question)])
  ids = [2] + list(question) + [3] + block + [3]
  mask = [0] * (len(question) + 2) + [1] * len(block) + [0]
  pad = seq_len - len(ids)
  return np.array(ids + [0] * pad), np.array(mask + [0] * pad)


def test_packing_and_correctness_match_hand_computation(task_and_model):
  task, model = task_and_model
  inputs = _features(task, orqa_world.QA[:3])
  out = model(inputs, training=False)
  correct = {k: v.numpy() for k, v in orqa_model.answer_correctness(
      model, out, inputs["answer_ids"], inputs["answer_len"]).items()}
  corpus = task.load_corpus()
  packed = {k: v.numpy() for k, v in out["reader_inputs"].items()}
  starts, ends = out["starts"].numpy(), out["ends"].numpy()
  q_ids, q_len = inputs["question_ids"].numpy(), inputs["question_len"].numpy()
  a_ids, a_len = inputs["answer_ids"].numpy(), inputs["answer_len"].numpy()
  for b in range(3):
    for k, row in enumerate(out["retrieved_ids"].numpy()[b]):
      block = corpus["block_ids"][row, :corpus["block_len"][row]]
      ids, bm = _expected_reader_input(q_ids[b, :q_len[b]], block, 32)
      np.testing.assert_array_equal(packed["input_ids"][b, k], ids)
      np.testing.assert_array_equal(packed["block_mask"][b, k], bm)
      # Hand check: span (s, e) correct iff its tokens equal an answer and lie in the block.
      expected = np.zeros(len(starts), bool)
      for j, (s, e) in enumerate(zip(starts, ends)):
        for a in range(2):
          n = a_len[b, a]
          if n and e - s + 1 == n and bm[s:e + 1].all() and (ids[s:e + 1] == a_ids[b, a, :n]).all():
            expected[j] = True
      np.testing.assert_array_equal(correct["reader_correct"][b, k], expected)
      text_has = any(
          len(x) and " ".join(map(str, x)) in " ".join(map(str, block))
          for x in [a_ids[b, a, :a_len[b, a]] for a in range(2)])
      assert correct["retriever_correct"][b, k] == text_has
  # "where was john born?" -> Paris is in block 0 exactly once.
  assert correct["reader_correct"][0].sum() == 1


def test_loss_is_zero_without_correct_blocks(task_and_model):
  task, model = task_and_model
  inputs = _features(task, [("where was john born?", ["zebra"]), ("who?", [])])
  out = model(inputs, training=False)
  correct = orqa_model.answer_correctness(model, out, inputs["answer_ids"], inputs["answer_len"])
  assert not correct["retriever_correct"].numpy().any()
  loss, logs = task.compute_loss(model, inputs, training=False)
  assert float(loss) == 0.0
  assert float(logs["retriever_loss"]) == 0.0 and float(logs["reader_loss"]) == 0.0


def test_batch_equals_single_questions(task_and_model):
  task, model = task_and_model
  from realm_tf2.modeling import losses
  pairs = orqa_world.QA[:4]
  def per_example(inputs):
    out = model(inputs, training=False)
    correct = orqa_model.answer_correctness(model, out, inputs["answer_ids"], inputs["answer_len"])
    loss = losses.orqa_loss(out["retriever_logits"], correct["retriever_correct"],
                            out["reader_logits"], correct["reader_correct"])
    return loss["per_example_loss"].numpy()
  batched = per_example(_features(task, pairs))
  singles = np.concatenate([per_example(_features(task, [p])) for p in pairs])
  assert np.all(batched > 0)
  np.testing.assert_allclose(batched, singles, atol=1e-5, rtol=0)


@pytest.mark.slow  # XLA compilation on CPU takes ~1 min.
def test_xla_gradient_step(task_and_model):
  task, model = task_and_model
  inputs = _features(task, orqa_world.QA[:2])
  fn = tf.function(task._forward_backward, jit_compile=True)
  grads, loss, _ = fn(model, inputs)
  names = [v.name for v in model.trainable_variables]
  assert all(n.startswith(("retriever/", "reader/")) for n in names)
  assert np.isfinite(float(loss))
  ret_grads = [g for g, v in zip(grads, model.trainable_variables) if v.name.startswith("retriever/")]
  assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in ret_grads)
  assert len(model.variables) == len(model.trainable_variables) + sum(
      1 for v in model.variables if not v.trainable)
  assert all("block_emb" not in v.name for v in model.variables)  # index is not checkpointed


def test_freeze_question_word_embeddings_keeps_them_and_trains_the_rest(task_and_model, world):
  task, model = task_and_model
  table = model.retriever.encoder.get_embedding_table()
  assert any(v is table for v in model.trainable_variables)  # off by default: everything trains
  cfg = orqa_world.task_config(world)
  cfg.freeze_question_word_embeddings = True
  cfg.optimizer.num_warmup_steps = 0  # a real update at the first step
  frozen_task = orqa_task.OrqaTask(cfg)
  model = frozen_task.build_model()  # a fresh model: the shared one stays untouched
  table = model.retriever.encoder.get_embedding_table()
  # Out of the trainable set (no gradient, no optimizer slots), still a model variable (checkpointed).
  assert not any(v is table for v in model.trainable_variables)
  assert any(v is table for v in model.variables)
  opt = optimization.create_optimizer(cfg.optimizer, 10)
  others = list(model.retriever.trainable_variables)
  before = table.numpy(), [v.numpy() for v in others]
  frozen_task.train_step(_features(frozen_task, orqa_world.QA[:2]), model, opt)
  np.testing.assert_array_equal(table.numpy(), before[0])
  assert any(not np.array_equal(v.numpy(), b) for v, b in zip(others, before[1]))
  assert opt._var_key(table) not in opt._index_dict  # pylint: disable=protected-access  # no moments


def test_reader_from_an_embedder_export_and_its_learning_rate_multiplier(world):
  """`reader_module_path` = an ICT/REALM embedder export: the reader's BERT is the export's BERT (the
  span head stays fresh). `reader_learning_rate_multiplier` scales the reader's update and nothing
  else: Adam here has no bias correction, so the update (weight decay included) is linear in lr."""
  deltas = {}
  for multiplier in (1.0, 0.25):
    cfg = orqa_world.task_config(world)
    cfg.reader_module_path = world["retriever"]
    cfg.reader_learning_rate_multiplier = multiplier
    cfg.optimizer.num_warmup_steps = 0
    task = orqa_task.OrqaTask(cfg)
    tf.keras.utils.set_random_seed(3)
    model = task.build_model()
    for mine, theirs in zip(model.reader.encoder.weights, model.retriever.encoder.weights):
      np.testing.assert_array_equal(mine.numpy(), theirs.numpy())  # both from the same export
    assert (task.variable_lr_schedules(model) is None) == (multiplier == 1.0)
    opt = optimization.create_optimizer(cfg.optimizer, 10,
                                        variable_lr_schedules=task.variable_lr_schedules(model))
    towers = (model.reader, model.retriever)
    before = [[v.numpy() for v in t.trainable_variables] for t in towers]
    tf.keras.utils.set_random_seed(4)
    task.train_step(_features(task, orqa_world.QA[:2]), model, opt)
    deltas[multiplier] = [np.concatenate([(v.numpy() - b).ravel() for v, b in
                                          zip(t.trainable_variables, bs)])
                          for t, bs in zip(towers, before)]
  reader_full, retriever_full = deltas[1.0]
  reader_slow, retriever_slow = deltas[0.25]
  assert np.abs(reader_full).max() > 1e-4
  # atol: the deltas are differences of O(1) float32 weights (spacing ~6e-8 near 1).
  np.testing.assert_allclose(reader_slow, 0.25 * reader_full, rtol=1e-4, atol=2e-7)
  np.testing.assert_allclose(retriever_slow, retriever_full, rtol=1e-4, atol=2e-7)


def _evaluate(task, model, batch_size):
  data = copy.deepcopy(task.task_config.validation_data)
  data.global_batch_size = batch_size
  state = None
  for batch in task.build_inputs(data):
    state = task.aggregate_logs(state, task.validation_step(batch, model))
  return task.reduce_aggregated_logs(state)


def test_eval_predictions_and_metrics(task_and_model, world):
  task, model = task_and_model
  # Batches of 3: the last of the 3 batches has a padding row, which no metric may see.
  metrics = _evaluate(task, model, 3)
  recs = task.last_predictions
  assert [r["question"] for r in recs] == [q for q, _ in orqa_world.QA]
  assert metrics["num_questions"] == len(orqa_world.QA)
  for r in recs:
    assert r["block_text"] == orqa_world.BLOCKS[r["block_index"]]
    assert r["prediction"] and r["prediction"] in r["block_text"]  # raw text of the span
    assert r["official_exact_match"] == answers_lib.exact_match(r["prediction"], r["answers"])
    assert r["prediction_block_has_answer"] == answers_lib.has_answer(r["block_text"], r["answers"])
  # The original's names: exact_match is token-level, official_exact_match the string EM.
  for name in ("exact_match", "official_exact_match", "reader_oracle", "retriever_any_correct",
               "prediction_block_has_answer"):
    assert metrics[name] == pytest.approx(np.mean([r[name] for r in recs])), name
  # Recall by ORQA's case-sensitive HasAnswer over all 4 blocks: "the king"/"the queen" never match.
  assert metrics["recall_at_5"] == pytest.approx(6 / 8)
  assert not any(k.startswith("top_") for k in metrics)  # top_5_match needs a beam of >= 5 blocks
  # Losses are the means over the 8 questions, as one unpadded batch gives them.
  loss, logs = task.compute_loss(model, _features(task, orqa_world.QA), training=False)
  assert metrics["validation_loss"] == pytest.approx(float(loss), rel=1e-5)
  assert metrics["reader_loss"] == pytest.approx(float(logs["reader_loss"]), rel=1e-5)
  assert metrics["exact_match"] == pytest.approx(float(logs["exact_match"]))


def test_summary_has_the_original_top_k_match_up_to_the_beam():
  recs = [{"exact_match": True, "official_exact_match": False, "reader_oracle": True,
           "retriever_any_correct": True, "prediction_block_has_answer": False,
           "first_answer_rank": rank} for rank in (0, 7, 60, -1)]
  out = orqa_task.summarize_predictions(recs, num_retrieved=100)
  assert {k: v for k, v in out.items() if k.startswith("top_")} == {
      "top_5_match": 0.25, "top_10_match": 0.5, "top_50_match": 0.5, "top_100_match": 0.75}
  assert out["recall_at_1"] == 0.25 and out["recall_at_20"] == 0.5
  assert out["exact_match"] == 1.0 and out["official_exact_match"] == 0.0


# Fine-tuning EM on held-out dev questions (issue 6) lives in test_orqa_generalisation.py: this
# world has dev = train questions, so it can only show memorisation.


def test_question_tower_from_either_tower_of_a_realm_export_with_separate_towers(world, tmp_path):
  """A REALM export with `share_embedders=False`: `embedder/` (query tower, with encoded.ckpt: the
  corpus as the document tower embedded it) and `doc_embedder/` (document tower, none). Either one
  initialises ORQA's question tower; block_emb is `embedder/encoded/encoded.ckpt` for both."""
  from realm_tf2.export import embedder_export
  from realm_tf2.modeling import embedder as embedder_lib
  from realm_tf2.retrieval import index as index_lib
  step_dir = tmp_path / "export" / "7"
  block_emb = world["block_emb"] + 1.0  # not the world's index: the test sees where it came from
  staging = str(tmp_path / "staging" / "encoded.ckpt")
  index_lib.write_block_emb_checkpoint(staging, block_emb)
  towers = {}
  for seed, name in ((11, "embedder"), (12, "doc_embedder")):
    tf.keras.utils.set_random_seed(seed)
    tower = embedder_lib.RealmEmbedder(orqa_world.model_config().bert,
                                       projection_size=orqa_world.PROJECTION,
                                       vocab_size=len(tiny_fixtures.tiny_vocab()))
    tower({k: tf.zeros([1, 4], tf.int32) for k in ("input_ids", "input_mask", "segment_ids")})
    embedder_export.export_embedder(tower, world["vocab"], True, str(step_dir / name),
                                    encoded_checkpoint=staging if name == "embedder" else None)
    towers[name] = tower
  assert not os.path.exists(step_dir / "doc_embedder" / "encoded")
  for name, tower in towers.items():
    cfg = orqa_world.task_config(world)
    cfg.retriever_module_path = str(step_dir / name)
    assert orqa_task.check_retriever_export(cfg.retriever_module_path) == str(
        step_dir / "embedder" / "encoded" / "encoded.ckpt")
    model = orqa_task.OrqaTask(cfg).build_model()
    np.testing.assert_array_equal(model.block_emb.numpy(), block_emb)
    for mine, theirs in zip(model.retriever.weights, tower.weights):
      np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
  # A lone document tower (no query tower beside it) is a clear start-up error.
  lone = tmp_path / "lone" / "doc_embedder"
  embedder_export.export_embedder(towers["doc_embedder"], world["vocab"], True, str(lone))
  with pytest.raises(FileNotFoundError, match="a document tower without"):
    orqa_task.check_retriever_export(str(lone))


def _train(task, model, steps, batch_pairs):
  cfg = task.task_config
  opt = optimization.create_optimizer(cfg.optimizer, 100)
  logs = [task.train_step(_features_of(task, batch_pairs), model, opt) for _ in range(steps)]
  return logs


def _features_of(task, pairs):
  """Features as `build_inputs` makes them (regex mode: gold spans instead of answer wordpieces)."""
  gold_finder = task.gold_finder() if task.is_regex else None
  feat = qa_pipeline.QAFeaturizer(task.tokenizer, 8, 2, 4, gold_finder=gold_finder).featurize(
      [qa_pipeline.QAExample(q, a) for q, a in pairs])
  return {k: tf.constant(v) for k, v in feat.items()}


def test_orqa_trains_and_evaluates_with_scann(world):
  cfg = orqa_world.task_config(world)
  cfg.mips = "scann"
  cfg.optimizer.num_warmup_steps = 0
  task = orqa_task.OrqaTask(cfg)
  tf.keras.utils.set_random_seed(5)
  model = task.build_model()
  assert model.mips_index is not None and model.mips_index.backend == "tf"
  before = [v.numpy() for v in model.retriever.trainable_variables]
  logs = _train(task, model, 3, orqa_world.QA[:4])
  assert all(np.isfinite(float(l["loss"])) for l in logs) and float(logs[0]["reader_loss"]) > 0
  assert any(not np.array_equal(v.numpy(), b)
             for v, b in zip(model.retriever.trainable_variables, before))
  metrics = _evaluate(task, model, 3)
  assert metrics["num_questions"] == len(orqa_world.QA)
  assert metrics["recall_at_5"] == pytest.approx(6 / 8)  # all 4 blocks retrieved, as brute force
  # XLA cannot compile ScaNN's ops: a clear error before any step.
  cfg.jit_compile = True
  with pytest.raises(ValueError, match="no XLA lowering: set task.jit_compile=false"):
    orqa_task.OrqaTask(cfg).build_model()
  assert orqa_task.mips_problems(cfg, None) == []  # unknown corpus size: names only
  cfg.mips = "auto"  # 4 blocks: brute force, XLA is fine
  assert orqa_task.mips_problems(cfg, 4) == []


REGEX_QA = [("where was john born?", ["Par[iI]s"]), ("when was mary born?", [r"19\d\d"]),
            ("who wrote a book?", ["(the )?king"]), ("what is missing?", ["zebra"])]


def _regex_world(world, tmp_path):
  qa = tmp_path / "regex_qa"
  qa.mkdir()
  for split in ("train", "dev", "test"):
    with open(qa / f"CuratedTrec.resplit.{split}.jsonl", "w") as f:
      for q, a in REGEX_QA:
        f.write(json.dumps({"question": q, "answer": a}) + "\n")
  cfg = orqa_world.task_config(world)
  cfg.train_data.data_root = cfg.validation_data.data_root = str(qa)
  cfg.train_data.dataset_name = cfg.validation_data.dataset_name = "CuratedTrec"
  cfg.optimizer.num_warmup_steps = 0
  return cfg


def test_regex_answers_train_with_gold_spans_and_recall_uses_regex(world, tmp_path):
  """CuratedTrec-style patterns on the tiny world (blocks: "John was born in Paris in 1875.",
  "Mary was born in London in 1900.", "The king wrote a book in 1999.", "The queen built the city in
  June."): the gold spans are the patterns' occurrences, by hand below."""
  task = orqa_task.OrqaTask(_regex_world(world, tmp_path))
  assert task.is_regex  # CuratedTrec
  tf.keras.utils.set_random_seed(6)
  model = task.build_model()
  data = copy.deepcopy(task.task_config.train_data)
  data.is_training = False
  batch = next(iter(task.build_inputs(data)))
  gold = [sorted(map(tuple, g[:c].tolist()))
          for g, c in zip(batch["gold_spans"].numpy(), batch["gold_count"].numpy())]
  # Wordpieces: 0 "john was born in paris in 1875 .", 1 "mary ... london in 1900 .",
  # 2 "the king wrote a book in 1999 .", 3 "the queen built the city in june ."
  assert gold == [[(0, 4, 4)], [(1, 6, 6), (2, 6, 6)], [(2, 0, 1), (2, 1, 1)], []]
  loss, logs = task.compute_loss(model, batch, training=False)
  assert float(logs["reader_loss"]) > 0 and float(logs["retriever_loss"]) > 0
  out = model(batch, training=False)
  correct = orqa_model.gold_span_correctness(model, out, batch["gold_spans"])
  retrieved = out["retrieved_ids"].numpy()
  np.testing.assert_array_equal(correct["retriever_correct"].numpy(),
                                [np.isin(retrieved[b], [r for r, _, _ in gold[b]])
                                 for b in range(4)])
  # reader_correct: exactly the gold spans, at their reader positions (block_start = q_len + 2).
  starts, ends = out["starts"].numpy(), out["ends"].numpy()
  block_start = out["block_start"].numpy()
  for b in range(4):
    expected = np.zeros_like(correct["reader_correct"].numpy()[b])
    for k, row in enumerate(retrieved[b]):
      for r, first, last in gold[b]:
        if r == row:
          expected[k] |= (starts == first + block_start[b]) & (ends == last + block_start[b])
    np.testing.assert_array_equal(correct["reader_correct"].numpy()[b], expected)
  before = float(logs["reader_loss"])
  opt = optimization.create_optimizer(task.task_config.optimizer, 100)
  for _ in range(5):
    task.train_step(batch, model, opt)
  _, after = task.compute_loss(model, batch, training=False)
  assert float(after["reader_loss"]) < before
  # Recall by regex search on the raw text: "Par[iI]s" is no substring of any block, yet block 0
  # matches it; "zebra" never does.
  metrics = _evaluate(task, model, 4)
  ranks = [r["first_answer_rank"] for r in task.last_predictions]
  assert [rank >= 0 for rank in ranks] == [True, True, True, False]
  assert metrics["recall_at_5"] == pytest.approx(3 / 4)
  for r in task.last_predictions:
    assert r["prediction_block_has_answer"] == answers_lib.has_answer(r["block_text"], r["answers"],
                                                                     is_regex=True)
    assert r["official_exact_match"] == answers_lib.regex_match(r["prediction"], r["answers"])


def _titled_world(world, tmp_path):
  """The tiny world with `titles.tfr`; the QA set asks for block 2's title ("war"), which no body
  holds."""
  corpus = tmp_path / "titled_corpus"
  corpus.mkdir()
  for name, records in (("blocks.tfr", orqa_world.BLOCKS),
                        ("titles.tfr", ["john", "mary", "war", "city"])):
    with tf.io.TFRecordWriter(str(corpus / name)) as w:
      for r in records:
        w.write(r.encode("utf-8"))
  cfg = orqa_world.task_config(world)
  cfg.block_records_path = str(corpus)
  return cfg


def test_reader_title_option_answers_from_the_title(world, tmp_path):
  question = [("what did the king write?", ["war"])]
  cfg = _titled_world(world, tmp_path)
  oracle = {}
  for include_title in (False, True):
    cfg.reader_include_title = include_title
    task = orqa_task.OrqaTask(cfg)
    tf.keras.utils.set_random_seed(7)
    model = task.build_model()
    inputs = _features_of(task, question)
    out = model(inputs, training=False)
    correct = orqa_model.answer_correctness(model, out, inputs["answer_ids"], inputs["answer_len"])
    oracle[include_title] = bool(correct["reader_correct"].numpy().any())
    assert bool(correct["retriever_correct"].numpy().any()) == include_title
  assert oracle == {False: False, True: True}
  # With the option: block 2 reads `war [SEP] the king ...`; segment 1 after the first [SEP],
  # block_mask 0 on the inner [SEP].
  corpus = task.load_corpus()
  assert corpus["texts"][2] == "war\nThe king wrote a book in 1999."
  k = list(out["retrieved_ids"].numpy()[0]).index(2)
  packed = {name: v.numpy()[0, k] for name, v in out["reader_inputs"].items()
            if v.shape.rank == 3}
  q_len = int(inputs["question_len"][0])
  body = task.tokenizer.tokenize_np([orqa_world.BLOCKS[2]])[0].tolist()
  war = task.tokenizer.tokenize_np(["war"])[0].tolist()
  n = q_len + 2 + 1 + 1 + len(body) + 1
  assert packed["input_ids"][q_len + 2:n].tolist() == war + [3] + body + [3]
  assert packed["segment_ids"][:n].tolist() == [0] * (q_len + 2) + [1] * (n - q_len - 2)
  assert packed["block_mask"][:n].tolist() == [0] * (q_len + 2) + [1, 0] + [1] * len(body) + [0]
  # Spans across the inner [SEP] are invalid; the title span's answer text is the title.
  starts, ends = out["starts"].numpy(), out["ends"].numpy()
  sep_at = q_len + 3
  crossing = (starts < sep_at) & (ends > sep_at)
  logits = out["reader_logits"].numpy()[0, k]
  assert (logits[crossing] < -5000).all()
  title_span = np.nonzero((starts == q_len + 2) & (ends == q_len + 2))[0][0]
  pinned = np.full_like(out["reader_logits"].numpy(), -1e4)
  pinned[0, k, title_span] = 1.0
  preds = orqa_model.predictions(dict(out, reader_logits=tf.constant(pinned)))
  answer = task.tokenizer.span_text(tf.constant([corpus["texts"][2]]),
                                    preds["pred_first_wordpiece"], preds["pred_last_wordpiece"])
  assert answer.numpy()[0].decode() == "war"
  body_span = np.nonzero((starts == sep_at + 2) & (ends == sep_at + 2))[0][0]  # "king"
  pinned[0, k, title_span] = -1e4
  pinned[0, k, body_span] = 1.0
  preds = orqa_model.predictions(dict(out, reader_logits=tf.constant(pinned)))
  answer = task.tokenizer.span_text(tf.constant([corpus["texts"][2]]),
                                    preds["pred_first_wordpiece"], preds["pred_last_wordpiece"])
  assert answer.numpy()[0].decode() == "king"


@pytest.mark.slow  # XLA compilation on CPU takes ~1 min.
def test_xla_gradient_step_with_titles_and_gold_spans(world, tmp_path):
  """The new in-graph pieces compile with jit_compile=True: the title option's masks and the gold
  (block, span) correctness of regex answers."""
  cfg = _titled_world(world, tmp_path)
  cfg.reader_include_title = True
  cfg.is_regex = True
  task = orqa_task.OrqaTask(cfg)
  model = task.build_model()
  inputs = _features_of(task, REGEX_QA[:2])
  assert int(inputs["gold_count"].numpy().sum()) > 0
  fn = tf.function(task._forward_backward, jit_compile=True)
  grads, loss, logs = fn(model, inputs)
  assert np.isfinite(float(loss)) and float(logs["reader_loss"]) > 0
  assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
