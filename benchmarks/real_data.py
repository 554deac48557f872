r"""The real-data recipe as a benchmark: BM25 vs ICT→ORQA vs ICT→REALM→ORQA on a real corpus.

  python -m benchmarks.real_data --proxy_dir=/work/data/proxy --encoder_dir=<HF BERT dir> \
      --work_dir=/tmp/real --seeds=0,1,2

Runs, with the CLIs of the README section "From a pretrained BERT to a QA model on your corpus"
(each a subprocess; nothing here re-implements a stage):
  convert   data_prep.convert_checkpoint --source_format=hf_bert (once)
  corpus    data_prep.build_knowledge_corpus + build_pretrain_corpus (once)
  bm25      benchmarks.bm25 over the same blocks (once)
  per seed: ict → orqa(retriever = ICT export, reader = converted BERT)
            realm(from the ICT export and the converted BERT) → orqa(retriever and reader = REALM)
and for each ORQA run the dev split (evaluated during training; best checkpoint by EM) and the
test split (`run_finetune --mode=predict --eval_split=test` on that checkpoint).

`--proxy_dir` holds `docs.jsonl` and `{dataset}.resplit.{train,dev,test}.jsonl`
(`benchmarks/real_data_proxy.py` builds DictQA; any corpus in these formats works). Output: one
JSON object a line: the BM25 rows, one row per (variant, seed) with dev/test EM, recall@1/5/20 and
the wall seconds of each stage, and a `summary` row with the means over seeds and the differences
REALM − ICT.
"""
import json
import os
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
RUNS = os.path.join(REPO, "configs", "runs")
FLAGS = flags.FLAGS

flags.DEFINE_string("proxy_dir", None, "docs.jsonl + {dataset}.resplit.{train,dev,test}.jsonl.")
flags.DEFINE_string("dataset_name", "DictQA", "QA dataset name.")
flags.DEFINE_string("encoder_dir", None, "A Hugging Face BERT directory (data_prep.convert_checkpoint "
                    "--source_format=hf_bert).")
flags.DEFINE_string("work_dir", None, "Where every stage writes (reused: finished stages are skipped).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each runs ICT, ICT→ORQA, REALM, REALM→ORQA.")
flags.DEFINE_list("variants", ["ict_orqa", "ict_realm_orqa"], "Rows to run besides BM25.")
flags.DEFINE_multi_string("ict_override", [], "Extra --params_override for ICT (repeatable).")
flags.DEFINE_multi_string("realm_override", [], "Extra --params_override for REALM (repeatable).")
flags.DEFINE_multi_string("orqa_override", [], "Extra --params_override for ORQA (repeatable).")


def emit(record):
  print(json.dumps(record, sort_keys=True), flush=True)


def run(stage, args, log_dir):
  """Runs a CLI of the repo; its output goes to `log_dir/<stage>.log`; returns wall seconds."""
  os.makedirs(log_dir, exist_ok=True)
  start = time.time()
  with open(os.path.join(log_dir, f"{stage}.log"), "w") as log:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          check=False)
  if proc.returncode != 0:
    raise SystemExit(f"stage {stage} failed (exit {proc.returncode}); see {log_dir}/{stage}.log")
  return time.time() - start


def done(marker):
  return os.path.exists(marker)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def latest_step_dir(export_dir):
  steps = sorted(int(d) for d in os.listdir(export_dir) if d.isdigit())
  return os.path.join(export_dir, str(steps[-1]))


def overrides(values):
  return [f"--params_override={v}" for v in values]


def orqa_metrics(model_dir):
  """Dev metrics of the evaluation the best export was taken at (run_finetune picks it by the
  original's token-level `exact_match`) and test metrics of that checkpoint; EM = the normalised
  string match (`official_exact_match`)."""
  with open(os.path.join(model_dir, "export", "best", "best_metric.txt")) as f:
    best_step = int(f.read().split()[0])
  evals = [r for r in read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
           if r["split"] == "eval" and r["step"] == best_step]
  best = evals[-1]
  with open(os.path.join(model_dir, "test_metrics.json")) as f:
    test = json.load(f)
  out = {"dev_em": best["official_exact_match"], "dev_step": best_step,
         "test_em": test["official_exact_match"]}
  for k in (1, 5, 20):
    out[f"dev_recall@{k}"] = best.get(f"recall_at_{k}")
    out[f"test_recall@{k}"] = test.get(f"recall_at_{k}")
  return out


class Recipe:
  """The stages of one benchmark run in `work_dir` (finished stages are reused)."""

  def __init__(self, work_dir):
    self.w = work_dir
    self.logs = os.path.join(work_dir, "logs")
    self.seconds = {}

  def path(self, *parts):
    return os.path.join(self.w, *parts)

  @property
  def size_config(self):
    return f"--config_file={self.path('bert', 'model_config.yaml')}"

  @property
  def vocab(self):
    return self.path("bert", "bert", "assets", "vocab.txt")

  def convert(self):
    if not done(self.path("bert", "conversion_report.json")):
      self.seconds["convert"] = run("convert", [
          "-m", "data_prep.convert_checkpoint", "--source_format=hf_bert",
          f"--source={FLAGS.encoder_dir}", f"--output_dir={self.path('bert')}"], self.logs)

  def corpus(self):
    docs = os.path.join(FLAGS.proxy_dir, "docs.jsonl")
    if not done(self.path("K", "corpus_info.json")):
      self.seconds["knowledge_corpus"] = run("knowledge_corpus", [
          "-m", "data_prep.build_knowledge_corpus", f"--input={docs}", f"--vocab_file={self.vocab}",
          f"--output_dir={self.path('K')}", "--num_shards=4"], self.logs)
    if not done(self.path("P", "pretrain-00000-of-00004")):
      self.seconds["pretrain_corpus"] = run("pretrain_corpus", [
          "-m", "data_prep.build_pretrain_corpus", f"--input={docs}", f"--output_dir={self.path('P')}",
          f"--knowledge_corpus_dir={self.path('K')}", "--num_shards=4"], self.logs)

  def bm25(self):
    out = subprocess.run([sys.executable, "-m", "benchmarks.bm25", f"--knowledge_dir={self.path('K')}",
                          f"--data_root={FLAGS.proxy_dir}", f"--dataset_name={FLAGS.dataset_name}",
                          "--splits=dev,test"], cwd=REPO, capture_output=True, text=True, check=True)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    for r in rows:
      emit({"benchmark": "real_data", "row": "bm25", **r})
    return {r["split"]: r for r in rows}

  def ict(self, seed):
    model_dir = self.path(f"ict_s{seed}")
    if not done(os.path.join(model_dir, "export")):
      self.seconds[f"ict_s{seed}"] = run(f"ict_s{seed}", [
          "run_pretrain.py", "--mode=ict", f"--model_dir={model_dir}",
          f"--examples_path={self.path('K', 'examples.tfr')}",
          f"--retrieval_corpus_path={self.path('K', 'realm', 'blocks-*')}",
          f"--vocab_file={self.vocab}", f"--bert_hub_module_handle={self.path('bert', 'bert')}",
          self.size_config, f"--config_file={RUNS}/real_ict.yaml", f"--seed={seed}",
          "--run_mode=train", *overrides(FLAGS.ict_override)], self.logs)
    return os.path.join(latest_step_dir(os.path.join(model_dir, "export")), "embedder")

  def realm(self, seed, ict_embedder):
    model_dir = self.path(f"realm_s{seed}")
    if not done(os.path.join(model_dir, "TRAINING_DONE")):
      self.seconds[f"realm_s{seed}"] = run(f"realm_s{seed}", [
          "run_pretrain.py", "--mode=realm", f"--model_dir={model_dir}",
          f"--pretrain_corpus_path={self.path('P', 'pretrain-*')}",
          f"--retrieval_corpus_path={self.path('K', 'realm', 'blocks-*')}",
          f"--embedder_hub_module_handle={ict_embedder}",
          f"--bert_hub_module_handle={self.path('bert', 'bert')}", f"--vocab_file={self.vocab}",
          self.size_config, f"--config_file={RUNS}/real_realm.yaml", f"--seed={seed}",
          "--run_mode=train", *overrides(FLAGS.realm_override)], self.logs)
    export = latest_step_dir(os.path.join(model_dir, "export"))
    return os.path.join(export, "embedder"), os.path.join(export, "bert")

  def orqa(self, name, retriever, reader, seed):
    model_dir = self.path(name)
    common = [f"--model_dir={model_dir}", f"--retriever_module_path={retriever}",
              f"--reader_module_path={reader}", f"--block_records_path={self.path('K')}",
              f"--data_root={FLAGS.proxy_dir}", f"--dataset_name={FLAGS.dataset_name}",
              f"--vocab_file={self.vocab}", self.size_config, f"--config_file={RUNS}/real_orqa.yaml",
              *overrides(FLAGS.orqa_override)]
    if not done(os.path.join(model_dir, "export", "best")):
      self.seconds[name] = run(name, ["run_finetune.py", "--mode=train_and_eval", f"--seed={seed}",
                                      *common], self.logs)
    if not done(os.path.join(model_dir, "test_metrics.json")):
      self.seconds[name + "_test"] = run(name + "_test", [
          "run_finetune.py", "--mode=predict", "--eval_split=test",
          f"--predict_output={os.path.join(model_dir, 'test_predictions.jsonl')}",
          f"--metrics_output={os.path.join(model_dir, 'test_metrics.json')}", *common], self.logs)
    return orqa_metrics(model_dir)


def main(argv):
  del argv
  for name in ("proxy_dir", "encoder_dir", "work_dir"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  recipe = Recipe(FLAGS.work_dir)
  t0 = time.time()
  recipe.convert()
  recipe.corpus()
  bm25 = recipe.bm25()
  rows = {v: [] for v in FLAGS.variants}
  for seed in (int(s) for s in FLAGS.seeds):
    ict = recipe.ict(seed)
    variants = {}
    if "ict_orqa" in rows:
      variants["ict_orqa"] = recipe.orqa(f"orqa_ict_s{seed}", ict, recipe.path("bert", "bert"), seed)
    if "ict_realm_orqa" in rows:
      retriever, reader = recipe.realm(seed, ict)
      variants["ict_realm_orqa"] = recipe.orqa(f"orqa_realm_s{seed}", retriever, reader, seed)
    for variant, metrics in variants.items():
      rows[variant].append(metrics)
      emit({"benchmark": "real_data", "row": variant, "seed": seed, **metrics,
            "stage_seconds": {k: round(v, 1) for k, v in recipe.seconds.items()
                              if k.endswith(f"s{seed}") or k.endswith(f"s{seed}_test")}})
  summary = {"benchmark": "real_data", "row": "summary", "seeds": FLAGS.seeds,
             "bm25_dev_recall@5": bm25["dev"]["recall@5"], "bm25_test_recall@5": bm25["test"]["recall@5"],
             "total_seconds": round(time.time() - t0, 1),
             "once_seconds": {k: round(recipe.seconds[k], 1)
                              for k in ("convert", "knowledge_corpus", "pretrain_corpus")
                              if k in recipe.seconds}}
  for variant, results in rows.items():
    for key in ("dev_em", "test_em", "dev_recall@1", "dev_recall@5", "dev_recall@20", "test_recall@5"):
      values = [r[key] for r in results if r.get(key) is not None]
      if values:
        summary[f"{variant}/{key}_mean"] = round(statistics.mean(values), 4)
  for key in ("dev_em", "dev_recall@5", "test_em", "test_recall@5"):
    a, b = summary.get(f"ict_realm_orqa/{key}_mean"), summary.get(f"ict_orqa/{key}_mean")
    if a is not None and b is not None:
      summary[f"realm_minus_ict/{key}"] = round(a - b, 4)
  emit(summary)


if __name__ == "__main__":
  flags.mark_flags_as_required(["proxy_dir", "encoder_dir", "work_dir"])
  app.run(main)
