"""benchmarks/real_data.py runs the README's recipe block verbatim; on tiny data, end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import real_data
from tests.conftest import REPO_ROOT
from tests.data_prep import test_convert_checkpoint as conv

STAGES = ["convert_checkpoint", "build_knowledge_corpus", "build_pretrain_corpus", "ict", "realm",
          "orqa", "orqa_test"]


def test_readme_recipe_block_and_baseline():
  commands = real_data.recipe_commands(os.path.join(REPO_ROOT, "README.md"))
  assert [n for n in map(real_data.stage_name, commands) if n] == STAGES
  for c in commands:  # every command is a CLI of this repository
    if real_data.stage_name(c):
      assert c.startswith(("python -m data_prep.", "python run_pretrain.py", "python run_finetune.py"))
  baseline = dict(real_data.baseline_commands(commands))
  assert set(baseline) == {"orqa_ict", "orqa_test_ict"}
  for c in baseline.values():
    assert "$ICT/embedder" in c and "$W/bert/bert" in c and "--model_dir=$W/orqa_ict" in c
    assert "$REALM" not in c
  script = real_data.script_for(commands, {"W": "/tmp/x", "SEED": "3"}, {"convert_checkpoint"},
                                list(baseline.items()))
  assert "W=/tmp/x\n" in script and "SEED=3\n" in script
  assert "convert_checkpoint" not in script and "@@stage ict " in script
  assert script.rstrip().splitlines()[-1].startswith('echo "@@stage end')


def _tiny_world(d):
  """A tiny HF BERT (sentence-transformers layout) and a corpus of 24 one-block documents."""
  rng = np.random.default_rng(0)
  vocab = os.path.join(d, "vocab.txt")
  conv.tiny_fixtures.write_tiny_vocab(vocab)
  w = conv._bert_arrays(rng, mlm_prefix=None)  # pylint: disable=protected-access
  # BERT's 512 positions: the real-data run configs use sequences of up to 144.
  w["bert/embeddings/position_embeddings"] = rng.normal(0, 0.2, (512, conv.H)).astype(np.float32)
  enc = os.path.join(d, "encoder")
  conv.write_hf_dir(enc, conv._hf_bert_model_state(w),  # pylint: disable=protected-access
                    conv._hf_config("gelu", max_position_embeddings=512),  # pylint: disable=protected-access
                    vocab_file=vocab)
  conv.write_sentence_transformers_dir(enc, transformer_path="")
  data = os.path.join(d, "data")
  os.makedirs(data)
  words = ["paris", "london", "john", "mary", "river", "king", "queen", "book"]
  docs, qa = [], {"train": [], "dev": [], "test": []}
  for i in range(24):
    a, b = words[i % 8], words[(i * 3 + 1) % 8]
    title = f"{a} {i}"
    docs.append({"title": title, "body": f"The {a} {i} was founded by {b} in 1875. It is a city."})
    split = "dev" if i % 6 == 0 else ("test" if i % 6 == 1 else "train")
    qa[split].append({"question": f"who founded the {a} {i}?", "answer": [b]})
  with open(os.path.join(data, "docs.jsonl"), "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in docs)
  for split, rows in qa.items():
    with open(os.path.join(data, f"Tiny.resplit.{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(x) + "\n" for x in rows)
  return enc, data


@pytest.mark.slow  # the whole recipe (7 CLIs + the ICT->ORQA baseline) on a 2-layer/32-wide BERT
def test_recipe_runs_verbatim_on_tiny_data(tmp_path):
  enc, data = _tiny_world(str(tmp_path))
  work = str(tmp_path / "work")
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.real_data", f"--data_dir={data}", "--dataset_name=Tiny",
       f"--encoder_dir={enc}", f"--work_dir={work}", "--seeds=0"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=3000, check=False)
  log = os.path.join(work, "seed_0", "recipe.log")
  assert proc.returncode == 0, (proc.stderr[-3000:], open(log).read()[-5000:] if os.path.exists(log) else "")
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  by_row = {(r["row"], r.get("split", r.get("seed"))): r for r in rows}
  assert {("bm25", "dev"), ("bm25", "test"), ("ict_orqa", 0), ("ict_realm_orqa", 0),
          ("summary", None)} <= set(by_row)
  for variant in ("ict_orqa", "ict_realm_orqa"):
    r = by_row[(variant, 0)]
    assert 0.0 <= r["dev_em"] <= 1.0 and 0.0 <= r["test_em"] <= 1.0
    assert 0.0 <= r["dev_recall@5"] <= 1.0
  # The recipe's own outputs: the REALM export carries the corpus embedded by its final retriever.
  realm_exports = os.listdir(os.path.join(work, "seed_0", "realm", "export"))
  step = max(int(s) for s in realm_exports if s.isdigit())
  assert os.path.exists(os.path.join(work, "seed_0", "realm", "export", str(step), "embedder",
                                     "encoded", "encoded.ckpt.index"))
  report = json.load(open(os.path.join(work, "seed_0", "bert", "conversion_report.json")))
  assert report["initialised"]  # the head-less encoder got its MLM head initialised
