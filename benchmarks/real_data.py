r"""The README's real-data recipe as a benchmark: BM25 vs ICT→ORQA vs ICT→REALM→ORQA.

  python -m benchmarks.real_data --data_dir=<proxy dir> --encoder_dir=<HF BERT dir> \
      --work_dir=/tmp/real --seeds=0,1,2 [--pretrain_text=<jsonl>]

For each seed this runs the bash block of the README section "From a pretrained BERT to a QA model
on your corpus" (read from README.md between `<!-- recipe:begin -->` and `<!-- recipe:end -->`, with
its variables E, D, N, T, W, SEED set from the flags), so the benchmark is the recipe, verbatim. The
recipe ends with ICT→REALM→ORQA; the baseline ICT→ORQA is the recipe's two ORQA commands again with
the retriever from the ICT export, the reader from the converted BERT and its own model_dir. The
conversion and corpus commands run for the first seed only (later seeds link to their outputs).
BM25 (`benchmarks/bm25.py`) runs over the same blocks.

Output, one JSON object a line: a `bm25` row per split; per (variant, seed) dev/test EM
(`official_exact_match`: normalised string match, at the checkpoint the best export holds),
dev/test recall@1/5/20 and the wall seconds of each recipe stage; a `summary` row with the means
over seeds, REALM − ICT differences, and the recipe's wall time per seed.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time

if __name__ == "__main__":
  _HERE = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
  sys.path.insert(0, os.path.dirname(_HERE))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
_STAGE_MARK = "@@stage"
_SHARED = ("bert", "K", "P")  # outputs of the once-only commands


def define_flags():
  flags.DEFINE_string("data_dir", None, "docs.jsonl and {dataset}.resplit.{train,dev,test}.jsonl.")
  flags.DEFINE_string("dataset_name", "DictQA", "QA dataset name.")
  flags.DEFINE_string("encoder_dir", None, "A Hugging Face BERT directory.")
  flags.DEFINE_string("pretrain_text", None, "Pre-training text JSONL (the recipe's T; default "
                      "<data_dir>/docs.jsonl).")
  flags.DEFINE_string("work_dir", None, "Where every seed's run is written (seed_<s>/).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  flags.DEFINE_string("readme", os.path.join(REPO, "README.md"), "Where the recipe block is read.")


def emit(record):
  print(json.dumps(record, sort_keys=True), flush=True)


def recipe_commands(readme_path):
  """The recipe block of README.md as a list of logical lines (continuations joined)."""
  with open(readme_path) as f:
    text = f.read()
  m = re.search(r"<!-- recipe:begin -->\s*```bash\n(.*?)```\s*<!-- recipe:end -->", text, re.S)
  if not m:
    raise ValueError(f"{readme_path}: no recipe block between <!-- recipe:begin/end --> markers")
  lines, current = [], ""
  for raw in m.group(1).splitlines():
    current += raw[:-1] + " " if raw.endswith("\\") else raw
    if not raw.endswith("\\"):
      if current.strip():
        lines.append(current.strip())
      current = ""
  return lines


def stage_name(command):
  """A short name for a recipe command (None for variable assignments)."""
  if re.match(r"^[A-Z_]+=", command):
    return None
  if "-m data_prep." in command:
    return command.split("-m data_prep.")[1].split()[0]
  mode = re.search(r"--mode=(\w+)", command).group(1)
  if "run_pretrain.py" in command:
    return mode
  return "orqa_test" if mode == "predict" else "orqa"


def baseline_commands(commands):
  """ICT→ORQA: the recipe's ORQA commands with the ICT retriever and the converted BERT reader."""
  out = []
  for c in commands:
    if stage_name(c) in ("orqa", "orqa_test"):
      c = (c.replace("$REALM/embedder", "$ICT/embedder").replace("$REALM/bert", "$W/bert/bert")
           .replace("$W/orqa", "$W/orqa_ict"))
      out.append((stage_name(c) + "_ict", c))
  return out


def script_for(commands, variables, skip_stages, baseline):
  """A bash script running the recipe (variables replaced), timing every stage."""
  body = ["set -euo pipefail"]
  for c in commands:
    assignment = re.match(r"^([A-Z_]+)=(\S*)", c)
    if assignment and assignment.group(1) in variables:
      body.append(f"{assignment.group(1)}={variables[assignment.group(1)]}")
      continue
    name = stage_name(c)
    if name in skip_stages:
      continue
    if name:
      body.append(f'echo "{_STAGE_MARK} {name} $(date +%s.%N)"')
    body.append(c)
  for name, c in baseline:
    body += [f'echo "{_STAGE_MARK} {name} $(date +%s.%N)"', c]
  body.append(f'echo "{_STAGE_MARK} end $(date +%s.%N)"')
  return "\n".join(body) + "\n"


def stage_seconds(log_path):
  marks = []
  with open(log_path) as f:
    for line in f:
      if line.startswith(_STAGE_MARK):
        _, name, t = line.split()
        marks.append((name, float(t)))
  return {a: round(tb - ta, 1) for (a, ta), (_, tb) in zip(marks, marks[1:])}


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def orqa_metrics(model_dir):
  """Dev metrics of the evaluation the best export was taken at and test metrics of that
  checkpoint; EM = the normalised string match (`official_exact_match`)."""
  with open(os.path.join(model_dir, "export", "best", "best_metric.txt")) as f:
    best_step = int(f.read().split()[0])
  best = [r for r in read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
          if r["split"] == "eval" and r["step"] == best_step][-1]
  with open(os.path.join(model_dir, "test_metrics.json")) as f:
    test = json.load(f)
  out = {"dev_em": best["official_exact_match"], "dev_step": best_step,
         "test_em": test["official_exact_match"]}
  for k in (1, 5, 20):
    out[f"dev_recall@{k}"] = best.get(f"recall_at_{k}")
    out[f"test_recall@{k}"] = test.get(f"recall_at_{k}")
  return out


def run_seed(commands, seed, first_work_dir):
  work = os.path.join(FLAGS.work_dir, f"seed_{seed}")
  os.makedirs(work, exist_ok=True)
  skip = set()
  if first_work_dir and first_work_dir != work:
    for d in _SHARED:
      if not os.path.exists(os.path.join(work, d)):
        os.symlink(os.path.join(first_work_dir, d), os.path.join(work, d))
    skip = {"convert_checkpoint", "build_knowledge_corpus", "build_pretrain_corpus"}
  variables = {"E": FLAGS.encoder_dir, "D": FLAGS.data_dir, "N": FLAGS.dataset_name,
               "T": FLAGS.pretrain_text or os.path.join(FLAGS.data_dir, "docs.jsonl"),
               "W": work, "SEED": str(seed)}
  script = script_for(commands, variables, skip, baseline_commands(commands))
  log = os.path.join(work, "recipe.log")
  with open(os.path.join(work, "recipe.sh"), "w") as f:
    f.write(script)
  with open(log, "w") as out:
    # `python` in the recipe is this interpreter (the venv's).
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", os.path.join(work, "recipe.sh")], cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT, check=False, env=env)
  if proc.returncode != 0:
    raise SystemExit(f"seed {seed}: the recipe failed (exit {proc.returncode}); see {log}")
  return work, stage_seconds(log)


def main(argv):
  del argv
  commands = recipe_commands(FLAGS.readme)
  first = None
  rows = {"ict_orqa": [], "ict_realm_orqa": []}
  recipe_seconds = []
  for seed in (int(s) for s in FLAGS.seeds):
    work, seconds = run_seed(commands, seed, first)
    if first is None:
      first = work
      bm25 = subprocess.run([sys.executable, "-m", "benchmarks.bm25",
                             f"--knowledge_dir={os.path.join(work, 'K')}",
                             f"--data_root={FLAGS.data_dir}", f"--dataset_name={FLAGS.dataset_name}",
                             "--splits=dev,test"], cwd=REPO, capture_output=True, text=True,
                            check=True)
      bm25_rows = {r["split"]: r for r in (json.loads(l) for l in bm25.stdout.splitlines()
                                           if l.startswith("{"))}
      for r in bm25_rows.values():
        emit({"benchmark": "real_data", "row": "bm25", **r})
    recipe = sum(v for k, v in seconds.items() if not k.endswith("_ict"))
    recipe_seconds.append(recipe)
    for variant, model_dir in (("ict_orqa", "orqa_ict"), ("ict_realm_orqa", "orqa")):
      metrics = orqa_metrics(os.path.join(work, model_dir))
      rows[variant].append(metrics)
      baseline = variant == "ict_orqa"
      emit({"benchmark": "real_data", "row": variant, "seed": seed, **metrics,
            "stage_seconds": {k: v for k, v in seconds.items()
                              if k.endswith("_ict") == baseline or k == "ict"}})
  summary = {"benchmark": "real_data", "row": "summary", "seeds": FLAGS.seeds,
             "bm25_dev_recall@5": bm25_rows["dev"]["recall@5"],
             "bm25_test_recall@5": bm25_rows["test"]["recall@5"],
             "recipe_seconds_per_seed": [round(s, 1) for s in recipe_seconds]}
  for variant, results in rows.items():
    for key in ("dev_em", "test_em", "dev_recall@1", "dev_recall@5", "dev_recall@20",
                "test_recall@5"):
      values = [r[key] for r in results if r.get(key) is not None]
      if values:
        summary[f"{variant}/{key}_mean"] = round(statistics.mean(values), 4)
  for key in ("dev_em", "dev_recall@5", "test_em", "test_recall@5"):
    a, b = summary.get(f"ict_realm_orqa/{key}_mean"), summary.get(f"ict_orqa/{key}_mean")
    if a is not None and b is not None:
      summary[f"realm_minus_ict/{key}"] = round(a - b, 4)
  emit(summary)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir", "encoder_dir", "work_dir"])
  app.run(main)
