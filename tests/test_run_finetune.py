"""run_finetune.py end to end on the tiny world (CLI, metrics.jsonl, best + serving exports, predict)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.tasks import orqa_world

_SCRIPT = os.path.join(REPO_ROOT, "run_finetune.py")


def _run(args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT)
  return subprocess.run([sys.executable, _SCRIPT] + args, capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=REPO_ROOT)


def test_startup_check_names_missing_files(tmp_path):
  proc = _run([f"--model_dir={tmp_path}/m", f"--retriever_module_path={tmp_path}/nope",
               f"--block_records_path={tmp_path}/blocks.tfr", f"--data_root={tmp_path}",
               "--dataset_name=World", "--mode=train"])
  assert proc.returncode != 0
  assert "cannot start" in proc.stderr
  assert "nope: no saved_model.pb" in proc.stderr
  assert "blocks.tfr' does not exist" in proc.stderr
  assert "World.resplit.train.jsonl' does not exist" in proc.stderr


@pytest.mark.slow
def test_train_and_eval_then_predict(tmp_path):
  world = orqa_world.build_world(str(tmp_path / "world"))
  model_dir = str(tmp_path / "run")
  common = [f"--model_dir={model_dir}", "--config_file=configs/sizes/tiny.yaml",
            "--config_file=configs/runs/orqa_tiny.yaml", f"--vocab_file={world['vocab']}",
            f"--retriever_module_path={world['retriever']}", f"--block_records_path={world['corpus']}",
            f"--data_root={world['qa']}", "--dataset_name=World", "--reader_beam_size=4",
            "--params_override=task.model.projection_size=16,task.model.reader_seq_len=32,"
            "trainer.validation_interval=20,trainer.steps_per_loop=20"]
  proc = _run(common + ["--mode=train_and_eval", "--num_train_steps=40"])
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  evals = [r for r in records if r["split"] == "eval"]
  assert evals and all({"exact_match", "official_exact_match", "reader_oracle", "recall_at_5",
                        "validation_loss"} <= set(r) for r in evals)
  # The best export follows the original's metric, token-level exact_match.
  best_value = max(r["exact_match"] for r in evals)
  best = os.path.join(model_dir, "export", "best")
  for sub in ("retriever/saved_model.pb", "retriever/encoded/encoded.ckpt.index",
              "reader/saved_model.pb", "best_metric.txt"):
    assert os.path.exists(os.path.join(best, sub)), sub
  assert os.path.exists(os.path.join(model_dir, "export", "serving", "saved_model.pb"))
  best_step, best_metric = open(os.path.join(best, "best_metric.txt")).read().split()
  assert float(best_metric) == pytest.approx(best_value)
  out = str(tmp_path / "pred.jsonl")
  metrics_out = str(tmp_path / "predict_metrics.json")
  proc = _run(common + ["--mode=predict", f"--predict_output={out}",
                        f"--metrics_output={metrics_out}"])
  assert proc.returncode == 0, proc.stderr[-4000:]
  # Predict reads the best checkpoint (the one the serving export was written from), not the
  # latest: a demo run reported its final EM 0.545 although its best checkpoint had 0.591.
  with open(metrics_out) as f:
    predicted = json.load(f)
  assert predicted["checkpoint"] == f"{best}/checkpoint/model.ckpt-{best_step}"
  assert predicted["predictions"] == out
  preds = [json.loads(l) for l in open(out)]
  assert len(preds) == len(orqa_world.QA) == predicted["num_questions"]
  assert {"question", "prediction", "block_index", "block_text"} <= set(preds[0])
  assert predicted["official_exact_match"] == pytest.approx(
      sum(p["official_exact_match"] for p in preds) / len(preds))


@pytest.mark.slow
def test_scann_retrieval_and_scann_serving_export(tmp_path):
  """--mips=scann trains and evaluates (the non-XLA step), --export_serving_mips=scann writes a
  serving model holding ScaNN's index; --mips=scann with --xla is a start-up error."""
  world = orqa_world.build_world(str(tmp_path / "world"))
  model_dir = str(tmp_path / "run")
  common = [f"--model_dir={model_dir}", "--config_file=configs/sizes/tiny.yaml",
            "--config_file=configs/runs/orqa_tiny.yaml", f"--vocab_file={world['vocab']}",
            f"--retriever_module_path={world['retriever']}",
            f"--block_records_path={world['corpus']}",
            f"--data_root={world['qa']}", "--dataset_name=World", "--reader_beam_size=4",
            "--mips=scann", "--params_override=task.model.projection_size=16,"
            "task.model.reader_seq_len=32,trainer.validation_interval=10,trainer.steps_per_loop=10"]
  proc = _run(common + ["--mode=train", "--num_train_steps=10", "--xla"])
  assert proc.returncode != 0
  assert "cannot start" in proc.stderr and "no XLA lowering" in proc.stderr
  proc = _run(common + ["--mode=train_and_eval", "--num_train_steps=10",
                        "--export_serving_mips=scann"])
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  evals = [r for r in records if r["split"] == "eval"]
  assert evals and evals[-1]["num_questions"] == len(orqa_world.QA)
  with open(os.path.join(model_dir, "export", "serving", "saved_model.pb"), "rb") as f:
    assert b"Scann" in f.read()
