"""Servable QA model: the same answers as the evaluation path, and it loads and answers in a fresh
process importing only tensorflow + tensorflow_text."""
import copy
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import optimization
from realm_tf2.export import serving_export
from realm_tf2.tasks import orqa_task
from tests.tasks import orqa_world

_LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops)
assert "realm_tf2" not in sys.modules
m = tf.saved_model.load(sys.argv[1])
qs = json.loads(sys.argv[2])
out = m.signatures["serving_default"](question=tf.constant(qs))
print(json.dumps({"answer": [a.decode() for a in out["answer"].numpy()],
                  "score": out["score"].numpy().tolist(),
                  "block_index": out["block_index"].numpy().tolist(),
                  "block_text": [t.decode() for t in out["block_text"].numpy()],
                  "dtypes": {k: v.dtype.name for k, v in out.items()}}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A briefly trained tiny ORQA model (so answers differ between questions), its evaluation-path
  predictions on the dev questions and its serving export."""
  root = tmp_path_factory.mktemp("serving")
  world = orqa_world.build_world(str(root / "world"))
  tf.keras.utils.set_random_seed(2)
  task = orqa_task.OrqaTask(orqa_world.task_config(world))
  model = task.build_model()
  opt = optimization.create_optimizer(task.task_config.optimizer, 100)
  step = tf.function(lambda x: task.train_step(x, model, opt))
  batches = iter(task.build_inputs(task.task_config.train_data))
  for _ in range(40):
    step(next(batches))
  data = copy.deepcopy(task.task_config.validation_data)
  data.global_batch_size = 3  # a padded last batch, unlike the serving call
  state = None
  for batch in task.build_inputs(data):
    state = task.aggregate_logs(state, task.validation_step(batch, model))
  metrics = task.reduce_aggregated_logs(state)
  export_dir = serving_export.export_serving(model, task.load_corpus()["texts"], world["vocab"], True,
                                             str(root / "serving"), max_question_len=8)
  return {"world": world, "records": task.last_predictions, "metrics": metrics,
          "export_dir": export_dir, "task": task, "model": model}


@pytest.mark.slow  # tiny world + 40 training steps + export tracing: ~1 min on 2 cores
def test_serving_answers_equal_the_evaluation_predictions(served):
  records = served["records"]
  answers = [r["prediction"] for r in records]
  assert len(set(answers)) > 2, answers  # a model that tells the questions apart
  fn = tf.saved_model.load(served["export_dir"]).signatures["serving_default"]
  out = fn(question=tf.constant([r["question"] for r in records]))
  assert [a.decode("utf-8") for a in out["answer"].numpy()] == answers
  assert out["block_index"].numpy().tolist() == [r["block_index"] for r in records]
  texts = [t.decode("utf-8") for t in out["block_text"].numpy()]
  assert texts == [r["block_text"] for r in records]
  for got, r in zip(out["score"].numpy(), records):
    assert got == pytest.approx(r["score"], abs=1e-4)
  # The served answers score as the evaluation's official_exact_match (same strings).
  from realm_tf2.evaluation import metrics
  result = metrics.evaluate_predictions(
      [{"question": q, "answer": a} for q, a in orqa_world.QA],
      [{"question": r["question"], "prediction": a.decode("utf-8")}
       for r, a in zip(records, out["answer"].numpy())])
  assert result["accuracy"] == pytest.approx(served["metrics"]["official_exact_match"])


@pytest.mark.slow  # a fresh TF process
def test_serving_export_fresh_process(served):
  export_dir = served["export_dir"]
  assert tf.io.gfile.exists(os.path.join(export_dir, "assets", "vocab.txt"))
  questions = ["where was mary born?", "", "born " * 400, "Who built the city?"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _LOADER, export_dir, json.dumps(questions)],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["dtypes"] == {"answer": "string", "score": "float32", "block_index": "int64",
                           "block_text": "string"}
  assert len(out["answer"]) == 4
  for ans, idx, text in zip(out["answer"], out["block_index"], out["block_text"]):
    assert 0 <= idx < len(orqa_world.BLOCKS) and text == orqa_world.BLOCKS[idx]
    assert ans and ans in text  # the raw text of the predicted span
  by_question = {r["question"]: r for r in served["records"]}
  assert out["answer"][0] == by_question["where was mary born?"]["prediction"]
  assert out["block_index"][0] == by_question["where was mary born?"]["block_index"]


_SCANN_LOADER = _LOADER.replace("import tensorflow_text  # noqa: F401  (registers the TF Text ops)",
                                "import tensorflow_text  # noqa: F401\nimport scann  # noqa: F401")


@pytest.mark.slow  # a second export + a fresh TF process
def test_serving_with_scann_answers_as_brute_force(served, tmp_path):
  """`mips="scann"`: the SavedModel holds a ScaNN index and its ops (loading needs `import scann`);
  on this corpus (brute-force scoring, every block read) it answers as the portable default."""
  task, model = served["task"], served["model"]
  scann_dir = serving_export.export_serving(model, task.load_corpus()["texts"],
                                            served["world"]["vocab"], True, str(tmp_path / "scann"),
                                            max_question_len=8, mips="scann")
  assert model.mips_index is None  # the training model keeps exact search
  with open(os.path.join(served["export_dir"], "saved_model.pb"), "rb") as f:
    assert b"Scann" not in f.read()  # the default stays portable: no ScaNN op
  with open(os.path.join(scann_dir, "saved_model.pb"), "rb") as f:
    assert b"Scann" in f.read()
  questions = [r["question"] for r in served["records"]]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _SCANN_LOADER, scann_dir, json.dumps(questions)],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["answer"] == [r["prediction"] for r in served["records"]]
  assert out["block_index"] == [r["block_index"] for r in served["records"]]
  for got, r in zip(out["score"], served["records"]):
    assert got == pytest.approx(r["score"], abs=1e-4)
