"""ORQA model/task: packing, correctness, loss zeroing, batch = singles, eval plumbing, fine-tuning."""
import numpy as np
import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.data import qa_pipeline
from realm_tf2.modeling import orqa_model
from realm_tf2.tasks import orqa_task
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


def test_packing_and_correctness_match_numpy(task_and_model):
  task, model = task_and_model
  inputs = _features(task, orqa_world.QA[:3])
  out = model(inputs, training=False)
  corpus = task.load_corpus()
  packed = {k: v.numpy() for k, v in out["reader_inputs"].items()}
  starts, ends = out["starts"].numpy(), out["ends"].numpy()
  q_ids, q_len = inputs["question_ids"].numpy(), inputs["question_len"].numpy()
  a_ids, a_len = inputs["answer_ids"].numpy(), inputs["answer_len"].numpy()
  for b in range(3):
    for k, row in enumerate(out["retrieved_ids"].numpy()[b]):
      ref = tokenization.pack_reader_inputs_np(
          q_ids[b, :q_len[b]], corpus["block_ids"][row, :corpus["block_len"][row]],
          np.zeros(corpus["block_len"][row]), task.tokenizer.cls_id, task.tokenizer.sep_id, 32)
      for key in ("input_ids", "input_mask", "segment_ids", "block_mask"):
        np.testing.assert_array_equal(packed[key][b, k], ref[key], err_msg=key)
      # Hand check: span (s, e) correct iff its tokens equal an answer and lie in the block.
      ids, bm = ref["input_ids"], ref["block_mask"]
      expected = np.zeros(len(starts), bool)
      for j, (s, e) in enumerate(zip(starts, ends)):
        for a in range(2):
          n = a_len[b, a]
          if n and e - s + 1 == n and bm[s:e + 1].all() and (ids[s:e + 1] == a_ids[b, a, :n]).all():
            expected[j] = True
      np.testing.assert_array_equal(out["reader_correct"].numpy()[b, k], expected)
      text_has = any(
          len(x) and " ".join(map(str, x)) in " ".join(map(str, corpus["block_ids"][row, :corpus["block_len"][row]]))
          for x in [a_ids[b, a, :a_len[b, a]] for a in range(2)])
      assert out["retriever_correct"].numpy()[b, k] == text_has
  # "where was john born?" -> Paris is in block 0 exactly once.
  assert out["reader_correct"].numpy()[0].sum() == 1


def test_loss_is_zero_without_correct_blocks(task_and_model):
  task, model = task_and_model
  inputs = _features(task, [("where was john born?", ["zebra"]), ("who?", [])])
  out = model(inputs, training=False)
  assert not out["retriever_correct"].numpy().any()
  loss, logs = task.compute_loss(model, inputs, training=False)
  assert float(loss) == 0.0
  assert float(logs["retriever_loss"]) == 0.0 and float(logs["reader_loss"]) == 0.0


def test_batch_equals_single_questions(task_and_model):
  task, model = task_and_model
  from realm_tf2.modeling import losses
  pairs = orqa_world.QA[:4]
  def per_example(inputs):
    out = model(inputs, training=False)
    return losses.orqa_loss(out["retriever_logits"], out["retriever_correct"],
                            out["reader_logits"], out["reader_correct"])["per_example_loss"].numpy()
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


def test_eval_predictions_and_metrics(task_and_model, world):
  task, model = task_and_model
  ds = task.build_inputs(task.task_config.validation_data)
  state = None
  for batch in ds:
    logs = {k: v.numpy() for k, v in task.validation_step(batch, model).items()}
    state = task.aggregate_logs(state, logs)
  metrics = task.reduce_aggregated_logs(state)
  recs = task.last_predictions
  assert len(recs) == len(orqa_world.QA) and metrics["num_questions"] == len(orqa_world.QA)
  for r in recs:
    assert r["block_text"] == orqa_world.BLOCKS[r["block_index"]]
    # Original tokens joined by single spaces ("in 1900 ." for "in 1900.").
    assert r["prediction"].replace(" ", "") in r["block_text"].replace(" ", "")
  # Recall by ORQA's case-sensitive HasAnswer over all 4 blocks: "the king"/"the queen" never match.
  assert metrics["recall_at_5"] == pytest.approx(6 / 8)
  assert metrics["exact_match"] == pytest.approx(np.mean([r["correct"] for r in recs]))
  from realm_tf2.evaluation import answers as answers_lib
  for r in recs:
    assert r["prediction_block_has_answer"] == answers_lib.has_answer(r["block_text"], r["answers"])
  assert metrics["prediction_block_has_answer"] == pytest.approx(
      np.mean([r["prediction_block_has_answer"] for r in recs]))


def test_project_to_original(world):
  tok = tokenization.RealmTokenizer(world["vocab"])
  text = "Mary was born in London in 1900."
  orig, wp, tmap = tok.tokenize_with_original_mapping(tf.constant([text]))
  q = tok.tokenize_np(["where?"])[0]
  packed = tokenization.pack_reader_inputs_np(q, wp[0].numpy(), tmap[0].numpy(), tok.cls_id,
                                              tok.sep_id, 32)
  orig = [t.decode() for t in orig[0].numpy()]
  start = packed["block_start"] + list(tmap[0].numpy()).index(orig.index("London"))
  n_wp = int(np.sum(tmap[0].numpy() == orig.index("London")))
  got = orqa_task.project_to_original(packed["input_ids"], start, start + n_wp - 1,
                                      packed["block_start"], orig, tmap[0].numpy(), tok, True)
  assert got == "London"
  assert orqa_task.project_to_original(packed["input_ids"], 0, 0, packed["block_start"], orig,
                                       tmap[0].numpy(), tok, True) == ""


# Fine-tuning EM on held-out dev questions (issue 6) lives in test_orqa_generalisation.py: this
# world has dev = train questions, so it can only show memorisation.
