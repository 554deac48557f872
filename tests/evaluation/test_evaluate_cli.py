"""The evaluate CLI on tiny files: join semantics, JSON output, file:line errors."""
import json
import os
import subprocess
import sys

from absl import flags
import pytest

from realm_tf2 import evaluate
from realm_tf2.evaluation import metrics
from tests.conftest import REPO_ROOT


def _write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


@pytest.fixture
def files(tmp_path):
  ref = _write(tmp_path / "ref.jsonl", [
      json.dumps({"question": "Who founded the Quillon Guild?", "answer": ["Varenko Dralis"]}),
      json.dumps({"question": "When was Varenko Dralis born?", "answer": ["12 June 1875"]}),
      json.dumps({"question": "What is the capital of Ostrelia?", "answer": ["Quillon"]}),
      "",
  ])
  pred = _write(tmp_path / "pred.jsonl", [
      json.dumps({"question": "Who founded the Quillon Guild?", "prediction": "varenko dralis", "score": 1}),
      json.dumps({"question": "When was Varenko Dralis born?", "prediction": "1875"}),
      json.dumps({"question": "Unrelated?", "prediction": "Quillon"}),
  ])
  return ref, pred


def test_evaluate_files(files):
  ref, pred = files
  r = evaluate.evaluate_files(ref, pred)
  assert r["num_correct"] == 1 and r["num_references"] == 3
  assert r["accuracy"] == pytest.approx(1 / 3)
  assert r["num_missing_predictions"] == 1 and r["num_unused_predictions"] == 1
  assert r["num_blank_lines"] == 1


def test_bad_line_names_file_and_line(tmp_path, files):
  ref, _ = files
  bad = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "a", "prediction": "b"}), "{not json"])
  with pytest.raises(metrics.EvaluationInputError, match=r"bad\.jsonl:2: invalid JSON"):
    evaluate.evaluate_files(ref, bad)
  wrong = _write(tmp_path / "wrong.jsonl", [json.dumps({"question": "a", "answer": "b"})])
  with pytest.raises(metrics.EvaluationInputError, match=r"wrong\.jsonl:1: field 'answer'"):
    evaluate.evaluate_files(wrong, files[1])
  with open(tmp_path / "latin.jsonl", "wb") as f:
    f.write(b'{"question": "caf\xe9", "prediction": "x"}\n')
  with pytest.raises(metrics.EvaluationInputError, match=r"latin\.jsonl:1: not valid UTF-8"):
    evaluate.evaluate_files(ref, str(tmp_path / "latin.jsonl"))
  with pytest.raises(metrics.EvaluationInputError, match="file not found"):
    evaluate.evaluate_files(ref, str(tmp_path / "missing.jsonl"))


def test_cli_subprocess(tmp_path, files):
  ref, pred = files
  out = str(tmp_path / "m.json")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "realm_tf2.evaluate", f"--references={ref}",
                         f"--predictions={pred}", f"--output_file={out}"],
                        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result["accuracy"] == pytest.approx(1 / 3)
  with open(out) as f:
    assert json.loads(f.read()) == result


def test_cli_main_in_process_error_exit(tmp_path, files, capsys):
  _, pred = files
  bad = _write(tmp_path / "bad.jsonl", ["[1, 2"])
  fv = flags.FlagValues()   # private: no global flags from importing/using the CLI module
  evaluate.define_flags(fv)
  fv(["evaluate", f"--references={bad}", f"--predictions={pred}"])
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(["evaluate"], fv)
  assert exit_info.value.code == 2
  assert "bad.jsonl:1: invalid JSON" in capsys.readouterr().err
  ref, _ = files
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  out = str(tmp_path / "regex.json")
  fv(["evaluate", f"--references={ref}", f"--predictions={pred}", "--is_regex",
      f"--output_file={out}"])
  evaluate.main(["evaluate"], fv)
  with open(out) as f:
    result = json.load(f)
  # Regex mode: "Varenko Dralis" matches "varenko dralis" (IGNORECASE); "12 June 1875" does not match "1875".
  assert result["is_regex"] and result["num_correct"] == 1 and result["num_references"] == 3


def test_cli_train_references(tmp_path, files):
  ref, pred = files
  train = _write(tmp_path / "train.jsonl", [
      json.dumps({"question": "Who founded the Varenko Press?", "answer": ["1875"]}), ""])
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  out = str(tmp_path / "overlap.json")
  fv(["evaluate", f"--references={ref}", f"--predictions={pred}", f"--train_references={train}",
      f"--output_file={out}"])
  evaluate.main(["evaluate"], fv)
  with open(out) as f:
    result = json.load(f)
  overlap = result["train_overlap"]
  assert overlap["train_references"] == train and overlap["num_train_references"] == 1
  # The wrong prediction "1875" (gold "12 June 1875") is a training answer; no gold answer overlaps.
  assert overlap["num_wrong_predictions"] == 1 and overlap["num_wrong_prediction_train_answer"] == 1
  assert overlap["num_answer_overlap"] == 0 and overlap["accuracy_answer_overlap"] is None
  assert result["num_blank_lines"] == 2  # one in each file, the references counted once
  with pytest.raises(metrics.EvaluationInputError, match="file not found"):
    evaluate.evaluate_files(ref, pred, train_references_path=str(tmp_path / "none.jsonl"))


def test_importing_cli_defines_no_global_flags():
  assert "references" not in flags.FLAGS and "answer_field" not in flags.FLAGS
