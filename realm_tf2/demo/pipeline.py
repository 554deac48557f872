"""The main job end to end: world → vocab → corpora → ICT → REALM (≥2 index refreshes) → ORQA → eval →
exports → answers through the serving SavedModel. Used by `run_demo.py` and `notebooks/realm_demo.ipynb`.

Every stage runs the project's real CLI as a subprocess (so the README's commands are exercised),
streams its progress lines, logs its full output to `<output_dir>/logs/<stage>.log` and, when it
succeeds, writes `<output_dir>/stages/<stage>.json` (command, elapsed seconds, results). A re-run
reuses a finished stage when its command is unchanged and no earlier stage was re-run; `skip_to`
reuses every stage before the named one (they must be finished) and re-runs the rest.

This module imports no TensorFlow at module level: the parent process only orchestrates, the heavy
work happens in the stage subprocesses (TensorFlow is imported lazily for the final answers).
"""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("world", "vocab", "knowledge_corpus", "pretrain_corpus", "ict", "realm", "orqa",
          "evaluate", "answer")
SIZES = ("tiny", "demo", "mini", "small", "base")

# Progress lines worth streaming from the stage subprocesses; everything else goes only to the log.
_NOISE = re.compile(r"(cuInit|cuda_|TF-TRT|oneDNN|rebuild TensorFlow|absl::InitializeLog|"
                    r"^WARNING: All log messages|^[WI]\d{4} |^[WI]\d{4}|tensorflow/core/|xla/|"
                    r"DeprecationWarning|warnings.warn|UserWarning|^INFO:tensorflow|^\s*$|"
                    r"^\s+'[\w/.]+': |^\s*(output|[{}])|restoring or initializing|Customized init)")


class StageError(RuntimeError):
  """A stage failed (non-zero exit or a failed check); the message names the stage and its log."""


@dataclasses.dataclass
class DemoConfig:
  """Settings of one demo run (defaults: the README's main command on this 2-core machine).

  Attributes:
    output_dir: Run directory (world/, vocab.txt, corpus/, pretrain/, ict/, realm/, orqa/, logs/,
      stages/, summary.json).
    seed: World generator and input-pipeline seed.
    num_entities: World size (one knowledge document per entity, ~2.7 QA pairs per entity).
    size: configs/sizes/<size>.yaml (ignored with `init_from`: the converted model's size is used).
    vocab_file: Use this vocab instead of building one.
    init_from: Output dir of `data_prep.convert_checkpoint` (`bert/`, `bert_ckpt/config.json`):
      initialises the ICT tower and the REALM encoder; its vocab is used.
    ict_steps / realm_steps / orqa_steps: Training steps of each stage.
    ict_batch_size / realm_batch_size / orqa_batch_size: Global batch sizes.
    refresh_every_steps: REALM checkpoint interval (= index refresh cadence).
    vocab_size: `build_vocab --vocab_size`.
    max_block_length: `build_knowledge_corpus --max_block_length` (wordpieces incl. specials).
    num_samples: Dev questions answered through the serving model at the end.
    xla: Compile the training steps with XLA (slow to compile on CPU; on for TPU/GPU).
    retrieval: REALM stage's `run_pretrain.py --retrieval`: "host" (input pipeline, stale snapshot)
      or "device" (in the train step, `task.device_retrieval.pick_with`).
    extra_overrides: {stage: "a.b=1,..."} extra --params_override per training stage.
    python: Interpreter of the stage subprocesses.
  """
  output_dir: str = "./runs/demo"
  seed: int = 0
  num_entities: int = 600
  size: str = "mini"
  vocab_file: str = ""
  init_from: str = ""
  ict_steps: int = 1500
  realm_steps: int = 1500
  orqa_steps: int = 1250
  ict_batch_size: int = 32
  realm_batch_size: int = 8
  orqa_batch_size: int = 8
  refresh_every_steps: int = 250
  vocab_size: int = 4000
  max_block_length: int = 96
  num_samples: int = 5
  xla: bool = False
  retrieval: str = "host"
  extra_overrides: Dict[str, str] = dataclasses.field(default_factory=dict)
  python: str = sys.executable


def _print(msg: str, printer: Callable[[str], None]):
  printer(msg)


class Demo:
  """Runs the stages of one `DemoConfig`; `run()` returns the summary dict (also `summary.json`)."""

  def __init__(self, config: DemoConfig, printer: Callable[[str], None] = None,
               stream: bool = True):
    self.c = config
    self.out = os.path.abspath(config.output_dir)
    self.printer = printer or (lambda s: print(s, flush=True))
    self.stream = stream
    self.results: Dict[str, dict] = {}
    self._rerun_from_here = False

  # ---- paths -------------------------------------------------------------------------------
  def path(self, *parts) -> str:
    return os.path.join(self.out, *parts)

  @property
  def world_dir(self):
    return self.path("world")

  @property
  def vocab_path(self):
    return self.path("vocab.txt")

  @property
  def corpus_dir(self):
    return self.path("corpus")

  @property
  def retrieval_glob(self):
    return self.path("corpus", "realm", "blocks-*")

  @property
  def data_root(self):
    return self.path("world", "qa")

  def size_args(self) -> List[str]:
    if self.c.init_from:
      return [f"--config_file={self.path('init_size.yaml')}"]
    if self.c.size not in SIZES:
      raise ValueError(f"--size={self.c.size}: expected one of {SIZES}")
    return [f"--config_file={os.path.join(REPO_ROOT, 'configs', 'sizes', self.c.size + '.yaml')}"]

  def _overrides(self, stage: str, base: Sequence[str]) -> List[str]:
    parts = list(base)
    if self.c.extra_overrides.get(stage):
      parts.append(self.c.extra_overrides[stage])
    return [f"--params_override={','.join(parts)}"] if parts else []

  # ---- subprocess runner ---------------------------------------------------------------------
  def run_cli(self, stage: str, args: Sequence[str], log_name: Optional[str] = None) -> str:
    """Runs `python <args>` in the repo root, streaming progress lines; returns the full output."""
    os.makedirs(self.path("logs"), exist_ok=True)
    log_path = self.path("logs", f"{log_name or stage}.log")
    cmd = [self.c.python] + list(args)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               PYTHONUNBUFFERED="1", TF_USE_LEGACY_KERAS="1")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    self.printer(f"  $ {' '.join(_short(a) for a in cmd[1:])}")
    lines = []
    with open(log_path, "a") as log:
      log.write("$ " + " ".join(cmd) + "\n")
      proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1)
      for line in proc.stdout:
        log.write(line)
        lines.append(line)
        if self.stream and not _NOISE.search(line):
          self.printer("  | " + line.rstrip()[:200])
      rc = proc.wait()
    output = "".join(lines)
    if rc != 0:
      tail = "".join(lines[-40:])
      raise StageError(f"stage '{stage}' failed (exit {rc}); full log: {log_path}\n{tail}")
    return output

  # ---- stage bookkeeping ---------------------------------------------------------------------
  def _marker(self, stage):
    return self.path("stages", f"{stage}.json")

  def _load_marker(self, stage):
    try:
      with open(self._marker(stage)) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def _write_marker(self, stage, record):
    os.makedirs(self.path("stages"), exist_ok=True)
    tmp = self._marker(stage) + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, self._marker(stage))

  def _stage(self, stage: str, fingerprint: dict, fn: Callable[[], dict], force: bool,
             clean: Sequence[str] = ()):
    """Runs (or reuses) one stage; `fn` returns its result dict."""
    idx = STAGES.index(stage) + 1
    old = self._load_marker(stage)
    reuse = (old is not None and not force and not self._rerun_from_here
             and old.get("fingerprint") == fingerprint)
    if reuse:
      self.printer(f"\n=== [{idx}/{len(STAGES)}] {stage}: reused (finished in "
                   f"{old['elapsed_s']:.0f}s earlier; delete {self._marker(stage)} to re-run)")
      self.results[stage] = old
      return old["result"]
    self._rerun_from_here = True  # everything after a re-run stage is re-run too
    self.printer(f"\n=== [{idx}/{len(STAGES)}] {stage} ===")
    for d in clean:
      if os.path.exists(d):
        shutil.rmtree(d)
    t0 = time.time()
    result = fn()
    elapsed = time.time() - t0
    record = {"stage": stage, "elapsed_s": elapsed, "fingerprint": fingerprint, "result": result,
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    self._write_marker(stage, record)
    self.results[stage] = record
    self.printer(f"=== {stage} done in {_fmt_secs(elapsed)}")
    return result

  # ---- the stages ------------------------------------------------------------------------------
  def stage_world(self):
    self.run_cli("world", ["-m", "realm_tf2.world.generator", f"--output_dir={self.world_dir}",
                           f"--num_entities={self.c.num_entities}", f"--seed={self.c.seed}"])
    with open(self.path("world", "world.json")) as f:
      manifest = json.load(f)
    return {"num_entities": manifest["num_entities"], "num_questions": manifest["num_questions"],
            "num_knowledge_docs": manifest["num_knowledge_docs"]}

  def stage_vocab(self):
    source = self._vocab_source()
    if source:
      shutil.copyfile(source, self.vocab_path + ".tmp")
      os.replace(self.vocab_path + ".tmp", self.vocab_path)
      self.printer(f"  copied {source}")
    else:
      # The TRAIN questions join the vocab's text (never dev/test): question words ("which", "how")
      # do not occur in the corpora, and a vocab that splits them into letters hurts a tiny model.
      questions = self.path("vocab_questions.txt")
      rows = _read_jsonl(os.path.join(self.data_root, "World.resplit.train.jsonl"))
      with open(questions + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(r["question"] + "\n" for r in rows)
      os.replace(questions + ".tmp", questions)
      self.run_cli("vocab", ["-m", "data_prep.build_vocab",
                             f"--input={self.world_dir}/knowledge.jsonl,{self.world_dir}/pretrain.jsonl,"
                             f"{questions}",
                             f"--output={self.vocab_path}", f"--vocab_size={self.c.vocab_size}",
                             "--lower_thresh=2"])
    if self.c.init_from:
      self._write_init_size()
    with open(self.vocab_path) as f:
      return {"vocab_size": sum(1 for line in f if line.strip()), "source": source or "build_vocab"}

  def _vocab_source(self):
    if self.c.vocab_file:
      return self.c.vocab_file
    if self.c.init_from:
      for p in ("bert/assets/vocab.txt", "vocab.txt", "embedder/assets/vocab.txt"):
        if os.path.exists(os.path.join(self.c.init_from, p)):
          return os.path.join(self.c.init_from, p)
      raise StageError(f"--init_from={self.c.init_from}: no bert/assets/vocab.txt (expected the "
                       "output dir of data_prep.convert_checkpoint)")
    return ""

  def _write_init_size(self):
    cfg_path = os.path.join(self.c.init_from, "bert_ckpt", "config.json")
    if not os.path.exists(cfg_path):
      raise StageError(f"--init_from={self.c.init_from}: missing bert_ckpt/config.json")
    with open(cfg_path) as f:
      bert = json.load(f)["bert"]
    lines = ["# Written by run_demo.py from " + cfg_path, "task:", "  model:", "    bert:"]
    lines += [f"      {k}: {json.dumps(v)}" for k, v in sorted(bert.items())]
    with open(self.path("init_size.yaml"), "w") as f:
      f.write("\n".join(lines) + "\n")

  def stage_knowledge_corpus(self):
    self.run_cli("knowledge_corpus", [
        "-m", "data_prep.build_knowledge_corpus", f"--input={self.world_dir}/knowledge.jsonl",
        f"--vocab_file={self.vocab_path}", f"--output_dir={self.corpus_dir}", "--num_shards=2",
        "--num_workers=1", f"--max_block_length={self.c.max_block_length}"])
    with open(self.path("corpus", "corpus_info.json")) as f:
      info = json.load(f)
    return {"num_blocks": info["num_blocks"], "counts": info["counts"]}

  def stage_pretrain_corpus(self):
    self.run_cli("pretrain_corpus", [
        "-m", "data_prep.build_pretrain_corpus", f"--input={self.world_dir}/pretrain.jsonl",
        f"--output_dir={self.path('pretrain')}", "--num_shards=4", "--num_workers=1"])
    with open(self.path("pretrain", "report.json")) as f:  # the builder's final counts report
      return {"records": json.load(f)["written"]}

  def stage_ict(self):
    model_dir = self.path("ict")
    args = ["run_pretrain.py", "--mode=ict", f"--model_dir={model_dir}",
            f"--examples_path={self.corpus_dir}/examples.tfr",
            f"--retrieval_corpus_path={self.retrieval_glob}", f"--vocab_file={self.vocab_path}",
            *self.size_args(), f"--config_file={_cfg('demo_ict.yaml')}",
            f"--num_train_steps={self.c.ict_steps}", f"--batch_size={self.c.ict_batch_size}",
            f"--seed={self.c.seed}", "--run_mode=train", f"--xla={str(self.c.xla).lower()}"]
    if self.c.init_from:
      args.append(f"--bert_hub_module_handle={os.path.join(self.c.init_from, 'bert')}")
    args += self._overrides("ict", [f"task.model.candidate_seq_len={self.c.max_block_length}"])
    self.run_cli("ict", args)
    step = _latest_step_dir(os.path.join(model_dir, "export"))
    embedder = os.path.join(model_dir, "export", str(step), "embedder")
    _require(os.path.join(embedder, "encoded", "encoded.ckpt.index"), "ict")
    return {"export": embedder, "step": step, **_train_stats(os.path.join(model_dir, "metrics.jsonl"),
                                                            ("accuracy", "training_loss"))}

  def stage_realm(self, ict_export: str):
    model_dir = self.path("realm")
    args = ["run_pretrain.py", "--mode=realm", f"--model_dir={model_dir}",
            f"--pretrain_corpus_path={self.path('pretrain')}/pretrain-*",
            f"--retrieval_corpus_path={self.retrieval_glob}", f"--embedder_hub_module_handle={ict_export}",
            f"--vocab_file={self.vocab_path}", *self.size_args(), f"--config_file={_cfg('demo_realm.yaml')}",
            f"--num_train_steps={self.c.realm_steps}", f"--batch_size={self.c.realm_batch_size}",
            f"--refresh_every_steps={self.c.refresh_every_steps}", "--refresh_poll_secs=0.5",
            f"--seed={self.c.seed}", f"--xla={str(self.c.xla).lower()}",
            f"--retrieval={self.c.retrieval}"]
    if self.c.init_from:
      args.append(f"--bert_hub_module_handle={os.path.join(self.c.init_from, 'bert')}")
    # A randomly initialised encoder first learns to read with the retriever frozen at the ICT warm
    # start (see configs/runs/demo_realm.yaml); a converted BERT can read already.
    warmup = 0 if self.c.init_from else (5 * self.c.realm_steps) // 6
    args += self._overrides("realm", [f"task.model.candidate_seq_len={self.c.max_block_length}",
                                      f"trainer.validation_interval={self.c.realm_steps}",
                                      f"task.retriever_warmup_steps={warmup}"])
    self.run_cli("realm", args)
    metrics = _read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    train = [r for r in metrics if r["split"] == "train"]
    evals = [r for r in metrics if r["split"] == "eval"]
    versions = [int(r.get("index_version", 0)) for r in train]
    refreshes = max([int(r.get("refreshes", 0)) for r in train] or [0])
    if refreshes < 2 or len(set(versions)) < 2:
      raise StageError(
          f"stage 'realm': expected at least two index refreshes with the index version changing in "
          f"{model_dir}/metrics.jsonl, got refreshes={refreshes}, index_version per record={versions}. "
          "Use more --realm_steps or a smaller --refresh_every_steps.")
    step = _latest_step_dir(os.path.join(model_dir, "export"))
    result = {"step": step, "refreshes": refreshes, "index_versions": sorted(set(versions)),
              "bert_export": os.path.join(model_dir, "export", str(step), "bert"),
              # The final export's embedder carries the corpus embedded by the final retriever.
              "retriever": os.path.join(model_dir, "export", str(step), "embedder"),
              "retrieval_utility_first_loop": train[0].get("retrieval_utility"),
              "retrieval_utility_last_loop": train[-1].get("retrieval_utility"),
              "retrieval_utility_eval": evals[-1].get("retrieval_utility") if evals else None,
              **_train_stats(os.path.join(model_dir, "metrics.jsonl"), ("mlm_accuracy", "training_loss"))}
    return result

  def _orqa_args(self, retriever, reader):
    return ["run_finetune.py", f"--model_dir={self.path('orqa')}", *self.size_args(),
            f"--config_file={_cfg('demo_orqa.yaml')}", f"--vocab_file={self.vocab_path}",
            f"--retriever_module_path={retriever}", f"--reader_module_path={reader}",
            f"--block_records_path={self.corpus_dir}", f"--data_root={self.data_root}",
            "--dataset_name=World", f"--batch_size={self.c.orqa_batch_size}",
            f"--xla={str(self.c.xla).lower()}"]

  def stage_orqa(self, retriever, reader):
    args = self._orqa_args(retriever, reader) + [
        "--mode=train_and_eval", f"--num_train_steps={self.c.orqa_steps}"]
    interval = max(1, min(250, self.c.orqa_steps // 3))
    args += self._overrides("orqa", [f"trainer.validation_interval={interval}",
                                     f"trainer.checkpoint_interval={interval}"])
    self.run_cli("orqa", args)
    metrics_path = self.path("orqa", "metrics.jsonl")
    evals = [r for r in _read_jsonl(metrics_path) if r["split"] == "eval"]
    if not evals:
      raise StageError(f"stage 'orqa': no eval record in {metrics_path}")
    _require(self.path("orqa", "export", "serving", "saved_model.pb"), "orqa")
    # exact_match is token-level (the metric the best export follows), official_exact_match the
    # normalised answer-string match.
    return {"evals": [{k: r.get(k) for k in ("step", "exact_match", "official_exact_match",
                                             "recall_at_5")} for r in evals],
            **_train_stats(metrics_path, ("exact_match", "training_loss"))}

  def stage_evaluate(self, retriever, reader):
    preds = self.path("predictions.dev.jsonl")
    predict_json = self.path("predict.dev.json")
    self.run_cli("evaluate", self._orqa_args(retriever, reader) + [
        "--mode=predict", f"--predict_output={preds}", f"--metrics_output={predict_json}"] +
                 self._overrides("orqa", []), "evaluate_predict")
    _require(predict_json, "evaluate")
    with open(predict_json) as f:
      predict_metrics = json.load(f)
    eval_json = self.path("eval.dev.json")
    self.run_cli("evaluate", ["-m", "realm_tf2.evaluate",
                              f"--references={self.data_root}/World.resplit.dev.jsonl",
                              f"--predictions={preds}", f"--output_file={eval_json}",
                              # Shows whether wrong answers are memorised training answers.
                              f"--train_references={self.data_root}/World.resplit.train.jsonl"],
                 "evaluate_em")
    with open(eval_json) as f:
      em = json.load(f)
    # The dev split chose the checkpoint (predict reads the best-by-dev-EM one, as ORQA does), so the
    # test split, never used for any choice, is the unbiased estimate; reported beside dev.
    test_preds, test_json = self.path("predictions.test.jsonl"), self.path("eval.test.json")
    self.run_cli("evaluate", self._orqa_args(retriever, reader) + [
        "--mode=predict", "--eval_split=test", f"--predict_output={test_preds}"] +
                 self._overrides("orqa", []), "evaluate_predict_test")
    self.run_cli("evaluate", ["-m", "realm_tf2.evaluate",
                              f"--references={self.data_root}/World.resplit.test.jsonl",
                              f"--predictions={test_preds}", f"--output_file={test_json}"],
                 "evaluate_em_test")
    with open(test_json) as f:
      test_em = json.load(f)
    return {"predict": predict_metrics, "evaluate": em, "predictions": preds,
            "test_evaluate": test_em}

  def stage_answer(self):
    serving = self.path("orqa", "export", "serving")
    dev = _read_jsonl(os.path.join(self.data_root, "World.resplit.dev.jsonl"))[: self.c.num_samples]
    answers = answer_with_serving(serving, [d["question"] for d in dev])
    rows = []
    for d, a in zip(dev, answers):
      rows.append({"question": d["question"], "gold": d["answer"], **a})
      mark = "✓" if _normalize(a["answer"]) in {_normalize(g) for g in d["answer"]} else "✗"
      self.printer(f"\n  Q: {d['question']}\n  A: {a['answer']!r} {mark} (gold {d['answer']}, "
                   f"score {a['score']:.2f})\n  evidence [block {a['block_index']}]: "
                   f"{a['block_text'][:300]}")
    with open(self.path("answers.json"), "w") as f:
      json.dump(rows, f, indent=1)
    return {"answers": rows}

  # ---- orchestration ---------------------------------------------------------------------------
  def run(self, skip_to: str = "", force: bool = False) -> dict:
    if skip_to and skip_to not in STAGES:
      raise ValueError(f"--skip_to={skip_to}: expected one of {STAGES}")
    os.makedirs(self.out, exist_ok=True)
    t_start = time.time()
    skip_idx = STAGES.index(skip_to) if skip_to else -1
    c = self.c

    def force_of(stage):
      i = STAGES.index(stage)
      if i < skip_idx:
        if self._load_marker(stage) is None:
          raise StageError(f"--skip_to={skip_to}: earlier stage '{stage}' has not finished in {self.out}")
        return False
      return force or i == skip_idx

    def st(stage, fingerprint, fn, clean=()):
      if STAGES.index(stage) < skip_idx:
        rec = self._load_marker(stage)
        if rec is None:
          raise StageError(f"--skip_to={skip_to}: earlier stage '{stage}' has not finished in {self.out}")
        self.printer(f"\n=== {stage}: reused (--skip_to={skip_to})")
        self.results[stage] = rec
        return rec["result"]
      return self._stage(stage, fingerprint, fn, force_of(stage), clean)

    size = c.init_from or c.size
    st("world", {"n": c.num_entities, "seed": c.seed}, self.stage_world)
    st("vocab", {"vocab_file": c.vocab_file, "init_from": c.init_from, "size": c.vocab_size},
       self.stage_vocab)
    st("knowledge_corpus", {"max_block_length": c.max_block_length}, self.stage_knowledge_corpus,
       [self.corpus_dir])
    st("pretrain_corpus", {}, self.stage_pretrain_corpus, [self.path("pretrain")])
    ict = st("ict", {"size": size, "steps": c.ict_steps, "batch": c.ict_batch_size, "xla": c.xla,
                     "extra": c.extra_overrides.get("ict")}, self.stage_ict, [self.path("ict")])
    realm = st("realm", {"size": size, "steps": c.realm_steps, "batch": c.realm_batch_size,
                         "refresh": c.refresh_every_steps, "xla": c.xla,
                         "extra": c.extra_overrides.get("realm"),
                         # host mode keeps the fingerprint of runs made before the flag existed
                         **({"retrieval": c.retrieval} if c.retrieval != "host" else {})},
               lambda: self.stage_realm(ict["export"]), [self.path("realm")])
    orqa_fp = {"size": size, "steps": c.orqa_steps, "batch": c.orqa_batch_size, "xla": c.xla,
               "extra": c.extra_overrides.get("orqa")}
    orqa = st("orqa", orqa_fp, lambda: self.stage_orqa(realm["retriever"], realm["bert_export"]),
              [self.path("orqa")])
    ev = st("evaluate", orqa_fp, lambda: self.stage_evaluate(realm["retriever"], realm["bert_export"]))
    st("answer", {"n": c.num_samples}, self.stage_answer)
    del orqa, ev
    summary = self.summary(time.time() - t_start)
    tmp = self.path("summary.json.tmp")
    with open(tmp, "w") as f:
      json.dump(summary, f, indent=1, sort_keys=True)
    os.replace(tmp, self.path("summary.json"))
    self.printer("\n" + format_summary(summary))
    return summary

  def summary(self, wall_s: float) -> dict:
    r = {k: v["result"] for k, v in self.results.items()}
    ev = r.get("evaluate", {})
    predict = ev.get("predict") or {}
    evaluated = ev.get("evaluate") or {}
    # Dev EM = the evaluate CLI's `accuracy` (normalised exact match over all dev references).
    em = evaluated.get("accuracy", predict.get("official_exact_match"))
    stage_secs = {k: round(v["elapsed_s"], 1) for k, v in self.results.items()}
    return {
        "output_dir": self.out,
        "config": {k: v for k, v in dataclasses.asdict(self.c).items() if k != "python"},
        "dev_exact_match": em,
        "dev_recall_at_5": predict.get("recall_at_5"),
        "dev_recall_at_1": predict.get("recall_at_1"),
        # Predictions taken from a block holding the answer: below recall@1, the reader's span score
        # moved answers away from a right top block.
        "dev_prediction_block_has_answer": predict.get("prediction_block_has_answer"),
        "dev_exact_match_in_training_eval": predict.get("official_exact_match"),
        # The original's token-level exact_match (reader span == a gold span), same predictions.
        "dev_token_exact_match": predict.get("exact_match"),
        # Same checkpoint on the test split (not used to choose it).
        "test_exact_match": (ev.get("test_evaluate") or {}).get("accuracy"),
        "test_num_questions": (ev.get("test_evaluate") or {}).get("num_references"),
        "dev_num_questions": evaluated.get("num_references"),
        # Wrong dev answers that are some training question's answer (memorisation, not reading).
        "dev_wrong_answers_from_train": (evaluated.get("train_overlap") or {}).get(
            "wrong_prediction_train_answer_fraction"),
        "retrieval_utility_before_realm": r["realm"]["retrieval_utility_first_loop"],
        "retrieval_utility_after_realm": r["realm"]["retrieval_utility_last_loop"],
        "retrieval_utility_eval_after_realm": r["realm"]["retrieval_utility_eval"],
        "steps_per_sec": {s: r[s].get("steps_per_sec") for s in ("ict", "realm", "orqa")},
        "train_steps": {s: r[s].get("steps") for s in ("ict", "realm", "orqa")},
        "index_refreshes": r["realm"]["refreshes"],
        "index_versions": r["realm"]["index_versions"],
        "num_blocks": r["knowledge_corpus"]["num_blocks"],
        "stage_seconds": stage_secs,
        "total_seconds": round(sum(stage_secs.values()), 1),
        "wall_seconds_this_invocation": round(wall_s, 1),
        "sample_answers": r.get("answer", {}).get("answers", []),
    }


def format_summary(s: dict) -> str:
  """The final table printed by run_demo.py."""
  def f(x, fmt="{:.3f}"):
    return "n/a" if x is None else fmt.format(x)
  rows = [
      ("dev exact match (best checkpoint, normalised answers)", f(s["dev_exact_match"])),
      ("test exact match (same checkpoint)", f(s.get("test_exact_match"))),
      ("dev token-level exact match (ORQA's exact_match)", f(s.get("dev_token_exact_match"))),
      ("dev recall@5", f(s["dev_recall_at_5"])),
      ("dev recall@1", f(s.get("dev_recall_at_1"))),
      ("dev answers taken from a block with the answer", f(s.get("dev_prediction_block_has_answer"))),
      ("wrong dev answers that are training answers", f(s.get("dev_wrong_answers_from_train"))),
      ("retrieval_utility before REALM (first loop)", f(s["retrieval_utility_before_realm"])),
      ("retrieval_utility after REALM (last loop)", f(s["retrieval_utility_after_realm"])),
      ("retrieval_utility after REALM (eval)", f(s["retrieval_utility_eval_after_realm"])),
      ("index refreshes during REALM", str(s["index_refreshes"])),
  ]
  for stage in ("ict", "realm", "orqa"):
    rows.append((f"{stage} steps/s ({s['train_steps'][stage]} steps)",
                 f(s["steps_per_sec"][stage], "{:.2f}")))
  for stage, secs in s["stage_seconds"].items():
    rows.append((f"  time: {stage}", _fmt_secs(secs)))
  rows.append(("total time (all stages)", _fmt_secs(s["total_seconds"])))
  width = max(len(k) for k, _ in rows)
  lines = ["=" * (width + 14), "REALM demo summary  (" + s["output_dir"] + ")", "-" * (width + 14)]
  lines += [f"{k:<{width}}  {v}" for k, v in rows]
  lines.append("=" * (width + 14))
  return "\n".join(lines)


def answer_with_serving(serving_dir: str, questions: Sequence[str]) -> List[dict]:
  """Answers `questions` with the QA serving SavedModel (`serving_default(question)`)."""
  import realm_tf2  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  model = tf.saved_model.load(serving_dir)
  out = model.signatures["serving_default"](question=tf.constant(list(questions)))
  res = []
  for i in range(len(questions)):
    res.append({"answer": out["answer"][i].numpy().decode("utf-8"),
                "score": float(out["score"][i].numpy()),
                "block_index": int(out["block_index"][i].numpy()),
                "block_text": out["block_text"][i].numpy().decode("utf-8")})
  return res


# ---- helpers -------------------------------------------------------------------------------------
def _cfg(name):
  return os.path.join(REPO_ROOT, "configs", "runs", name)


def _short(arg: str) -> str:
  return arg if len(arg) < 160 else arg[:157] + "..."


def _fmt_secs(s: float) -> str:
  return f"{int(s // 60)}m{s % 60:04.1f}s"


def _normalize(s: str) -> str:
  return " ".join(s.lower().split())


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _require(path, stage):
  if not os.path.exists(path):
    raise StageError(f"stage '{stage}': expected output {path} is missing")


def _latest_step_dir(export_dir):
  steps = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
  if not steps:
    raise StageError(f"no export/<step> directory in {export_dir}")
  return max(steps)


def _train_stats(metrics_path, keys):
  """steps/s (median over loops after the first, which includes tracing) and last values of `keys`."""
  train = [r for r in _read_jsonl(metrics_path) if r["split"] == "train"]
  rates = sorted(r["steps_per_sec"] for r in train[1:] if r.get("steps_per_sec")) or \
      [r["steps_per_sec"] for r in train if r.get("steps_per_sec")]
  out = {"steps": train[-1]["step"] if train else 0,
         "steps_per_sec": rates[len(rates) // 2] if rates else None}
  for k in keys:
    out[k] = train[-1].get(k) if train else None
  return out
