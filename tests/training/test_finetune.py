"""The ORQA run library behind run_finetune.py: best export bookkeeping and checkpoint lookup."""
import os

import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2.training import finetune


def test_best_export_follows_token_exact_match_and_survives_a_restart(tmp_path, monkeypatch):
  exported = []
  monkeypatch.setattr(finetune, "export_best",
                      lambda task, model, model_dir, step: exported.append(("best", step)))
  monkeypatch.setattr(finetune, "export_serving_model",
                      lambda task, model, model_dir: exported.append(("serving", None)))
  step = tf.Variable(0, dtype=tf.int64)
  action = finetune.BestExportAction(None, None, step, str(tmp_path))
  for value, at in ((0.25, 10), (0.5, 20), (0.5, 30), (0.4, 40)):
    step.assign(at)
    # official_exact_match moves the other way: it must not drive the choice (original §3.4).
    action({"exact_match": value, "official_exact_match": 1.0 - value})
  assert exported == [("best", 10), ("serving", None), ("best", 20), ("serving", None)]
  best_file = os.path.join(str(tmp_path), "export", "best", "best_metric.txt")
  assert open(best_file).read() == "20 0.5\n"
  action({"official_exact_match": 1.0})  # no exact_match in the output: nothing happens
  resumed = finetune.BestExportAction(None, None, step, str(tmp_path), export_serving=False)
  assert resumed.best == 0.5
  step.assign(50)
  resumed({"exact_match": 0.75})
  assert exported[-1] == ("best", 50) and open(best_file).read() == "50 0.75\n"


def test_best_checkpoint_and_predict_metrics_path(tmp_path):
  model_dir = str(tmp_path)
  assert finetune.best_checkpoint(model_dir) is None
  best = os.path.join(model_dir, "export", "best", "checkpoint")
  os.makedirs(best)
  for step in (5, 12, 9):
    open(os.path.join(best, f"model.ckpt-{step}.index"), "w").close()
  assert finetune.best_checkpoint(model_dir) == os.path.join(best, "model.ckpt-12")
  assert finetune.predict_metrics_path("/r/pred.dev.jsonl") == "/r/pred.dev.metrics.json"
  assert finetune.predict_metrics_path("/r/pred") == "/r/pred.metrics.json"


def test_run_rejects_an_unknown_mode():
  with pytest.raises(ValueError, match="mode must be one of"):
    finetune.run(None, "serve", "/tmp/x")
