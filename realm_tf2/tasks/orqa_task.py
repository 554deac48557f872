"""ORQA open-domain QA fine-tuning Task (original §3.3–§3.5).

Device side (`compute_loss` / `validation_step`, XLA-able with exact retrieval): `OrqaModel`
(retrieve + read), the correctness of retrieved blocks and read spans
(`orqa_model.answer_correctness` on answer wordpieces; `orqa_model.gold_span_correctness` on the
gold (block, span) lists of regex answers, precomputed on the host by `data/regex_gold.py`),
`losses.orqa_loss`,
`orqa_model.predictions` and the token-level metrics.

Retrieval (`task.mips`, as REALM's: `index.resolve_mips`): "brute_force" (default; exact, in the
step, XLA/TPU), "scann" (ScaNN's TF ops give the candidates, CPU only) or "auto" (ScaNN from
`index.AUTO_SCANN_MIN_ROWS` blocks). ScaNN needs `jit_compile=false`, checked at start-up: its ops
have no XLA lowering and its candidates depend on the question embedding of the same step
(searching outside the compiled step would cost a second question-tower forward; on CPU, ScaNN's
only device, the step without XLA is the faster one anyway).

Host side (eval only, via Model Garden's `aggregate_logs` / `reduce_aggregated_logs`): the predicted
span is cut out of the raw block text (`RealmTokenizer.span_text`, the function the serving export
runs in-graph) and the metrics of the original's evaluation are computed over the real questions
(batch padding excluded), under the original's names:
  exact_match            reader_correct at the predicted (block, span): token-level (original
                         §3.3); the best export is chosen on it, as the original's exporter does
                         (original §3.4)
  official_exact_match   SQuAD-normalised string EM of the answer text (regex mode for CuratedTrec)
  reader_oracle          some span of the read blocks is correct
  top_{k}_match          an answer (`HasAnswer`: raw, case-sensitive substring; regex mode: a
                         pattern `search`es the raw text) in the top k retrieved blocks, k in 5,
                         10, 50, ..., 5000 up to the retriever beam
  recall_at_{1,5,20,100} the same test at this project's cut-offs
plus retriever_any_correct, prediction_block_has_answer, the losses and validation_loss. These land
in metrics.jsonl through the driver's eval action. Each question of the eval file counts once per
line, as in the original's in-graph evaluation; `realm_tf2.evaluate` scores a predictions file
keyed by question, as the original's `evaluate_predictions.py`.
"""
import dataclasses
import json
import os
import types
from typing import Dict, List, Optional

import numpy as np
import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

from official.core import config_definitions as cfg
from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.data import qa_pipeline
from realm_tf2.data import regex_gold
from realm_tf2.evaluation import answers as answers_lib
from realm_tf2.export import common as export_common
from realm_tf2.evaluation import metrics as metrics_lib
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import init_utils
from realm_tf2.modeling import knowledge_encoder
from realm_tf2.modeling import losses
from realm_tf2.modeling import orqa_model
from realm_tf2.retrieval import index as index_lib
from realm_tf2.tasks import base

RECALL_KS = (1, 5, 20, 100)
SERVING_MIPS_CHOICES = ("brute_force", "scann")


@dataclasses.dataclass
class QADataConfig(cfg.DataConfig):
  """One split of `{data_root}/{dataset_name}.resplit.{split}.jsonl`."""
  data_root: str = ""
  dataset_name: str = "WebQuestions"
  split: str = "train"
  global_batch_size: int = 1
  is_training: bool = True
  seed: Optional[int] = None


@dataclasses.dataclass
class OrqaTaskConfig(base.RealmTaskConfig):
  """ORQA fine-tuning.

  Attributes:
    retriever_module_path: Embedder export (contracts §3) with `encoded/encoded.ckpt` (block_emb);
      or either tower of a REALM run with separate towers (`export/<step>/embedder`, the query
      tower, or `.../doc_embedder`, the document tower: block_emb then comes from the `embedder`
      beside it, see `check_retriever_export`).
    reader_module_path: A `bert` export (or an ORQA `reader` export / training checkpoint); empty means
      a randomly initialised reader (tests only).
    block_records_path: `blocks.tfr`, or the knowledge-corpus directory holding it.
    num_block_records: Expected number of blocks (0 = whatever blocks.tfr holds).
    max_question_len / max_answers / max_answer_len: static shapes (cuts are counted, see qa_pipeline).
    is_regex: Regex answers (None = automatic: True for CuratedTrec). Training then takes as gold
      the occurrences of the patterns in the corpus (`data/regex_gold.py`; the original refuses
      CuratedTrec training).
    max_gold_spans: G, gold (block, span) triples kept per regex question (truncations counted).
    mips: Retrieval over the corpus: "brute_force" (exact, in the step; XLA/TPU), "scann" (ScaNN's
      TF ops, CPU only, needs jit_compile=false) or "auto" (ScaNN from `index.AUTO_SCANN_MIN_ROWS`
      blocks), as REALM's `task.mips`.
    scann: ScaNN settings (None fields: chosen from the corpus size), for `mips` and the serving
      export.
    export_serving_mips: Retrieval inside `export/serving`: "brute_force" (default; plain TF ops,
      portable) or "scann" (the SavedModel then holds ScaNN's index and ops: loading it needs
      `import scann`).
    reader_include_title: The reader reads `[CLS] question [SEP] title [SEP] body [SEP]` (titles
      from `titles.tfr` beside blocks.tfr), answers may come from the title; block texts (answer
      extraction, HasAnswer, serving) are then `title\nbody`. Off by default, as the original.
    predict_output: If set, eval predictions are written there as JSONL.
    freeze_question_word_embeddings: Keep the question tower's wordpiece embeddings at their
      retriever-export values (the rest of the tower trains). For small QA sets whose dev entities
      never occur in training questions: the fixed index was built with these embeddings, and
      fine-tuning would move only the train questions' names. Off by default, as the original.
    reader_learning_rate_multiplier: The reader's learning rate (and weight decay) relative to the
      question tower's; 1.0 is the original's single rate. Below 1 keeps a pre-trained reader
      close to its initialisation while the question tower adapts.
  """
  retriever_module_path: str = ""
  reader_module_path: str = ""
  block_records_path: str = ""
  num_block_records: int = 0
  max_question_len: int = 64
  max_answers: int = 10
  max_answer_len: int = 16
  is_regex: Optional[bool] = None
  max_gold_spans: int = 256
  mips: str = "brute_force"
  scann: configs.ScannConfig = dataclasses.field(default_factory=configs.ScannConfig)
  export_serving_mips: str = "brute_force"
  reader_include_title: bool = False
  predict_output: str = ""
  freeze_question_word_embeddings: bool = False
  reader_learning_rate_multiplier: float = 1.0
  train_data: QADataConfig = dataclasses.field(default_factory=QADataConfig)
  validation_data: QADataConfig = dataclasses.field(
      default_factory=lambda: QADataConfig(split="dev", is_training=False))


def resolve_blocks_path(path: str) -> str:
  """`path` itself, or `path/blocks.tfr` when `path` is a corpus directory."""
  if path and tf.io.gfile.isdir(path):
    return os.path.join(path, "blocks.tfr")
  return path


def check_retriever_export(retriever_module_path: str) -> str:
  """The `encoded/encoded.ckpt` prefix (block_emb) of a retriever source; one clear message when
  files are missing.

  The source is an embedder export with its own `encoded/encoded.ckpt`, or the DOCUMENT tower of a
  REALM run with separate towers (`export/<step>/doc_embedder`, which has none): block_emb is then
  `export/<step>/embedder/encoded/encoded.ckpt` beside it, the corpus as that same document tower
  embedded it. Either tower thus initialises the question tower over the same block index.
  """
  if not retriever_module_path:
    raise ValueError("--retriever_module_path is required (an embedder export with encoded/encoded.ckpt)")
  if not tf.io.gfile.exists(os.path.join(retriever_module_path, "saved_model.pb")):
    raise FileNotFoundError(f"--retriever_module_path {retriever_module_path}: no saved_model.pb")
  prefix = export_common.encoded_checkpoint_path(retriever_module_path)
  if tf.io.gfile.exists(prefix + ".index"):
    return prefix
  path = retriever_module_path.rstrip("/")
  if os.path.basename(path) == export_common.DOC_EMBEDDER_SUBDIR:
    sibling = export_common.encoded_checkpoint_path(os.path.join(os.path.dirname(path), "embedder"))
    if tf.io.gfile.exists(sibling + ".index"):
      return sibling
    raise FileNotFoundError(
        f"--retriever_module_path {retriever_module_path}: a document tower without "
        f"{prefix}.index, and no {sibling}.index of the query tower beside it (run the corpus "
        "embedding / refresh first)")
  raise FileNotFoundError(f"--retriever_module_path {retriever_module_path}: missing "
                          f"{prefix}.index (run the corpus embedding / refresh first)")


def mips_problems(task_config: OrqaTaskConfig, num_blocks: Optional[int]) -> List[str]:
  """Start-up problems of `task.mips` / `task.export_serving_mips` (num_blocks None: not known yet,
  only the names are checked)."""
  problems = []
  try:
    kind = index_lib.resolve_mips(task_config.mips, num_blocks or 0)
  except ValueError as e:
    return [f"task.mips: {e}"]
  if task_config.export_serving_mips not in SERVING_MIPS_CHOICES:
    problems.append(f"task.export_serving_mips must be one of {SERVING_MIPS_CHOICES}, got "
                    f"{task_config.export_serving_mips!r}")
  if num_blocks is not None and kind == index_lib.ScannIndex.kind and task_config.jit_compile:
    problems.append(
        f"task.mips={task_config.mips} searches the {num_blocks} blocks with ScaNN, whose TF ops "
        "are CPU-only kernels with no XLA lowering: set task.jit_compile=false (--noxla) or "
        "--mips=brute_force")
  return problems


class OrqaTask(base.RealmBaseTask):
  """Open-domain QA fine-tuning with a fixed block index (ORQA / REALM fine-tuning)."""

  # Per-question values averaged into the train metrics (and, over the real questions only, into
  # the eval metrics by `reduce_aggregated_logs`).
  metric_names = ("retriever_loss", "reader_loss", "exact_match", "reader_oracle",
                  "retriever_any_correct")

  def __init__(self, params: OrqaTaskConfig, logging_dir: Optional[str] = None, name=None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self._corpus = None
    self._tokenizer = None
    # Plain namespace: attributes of a tf.Module would be wrapped (ListWrapper/DictWrapper) and tracked.
    self._host = types.SimpleNamespace(eval_examples={}, eval_split="dev", last_predictions=[],
                                       gold_finder=None)
    self.counters = io_utils.Counters("orqa")

  @property
  def last_predictions(self) -> List[dict]:
    """Prediction records of the last `reduce_aggregated_logs` (eval / predict)."""
    return self._host.last_predictions

  # --- host-side resources ------------------------------------------------------------------------
  @property
  def vocab_file(self) -> str:
    cfg_vocab = self.task_config.vocab_file
    if cfg_vocab:
      return cfg_vocab
    asset = os.path.join(self.task_config.retriever_module_path, "assets", "vocab.txt")
    if tf.io.gfile.exists(asset):
      return asset
    raise ValueError("no vocab: set --vocab_file or use a retriever export with assets/vocab.txt")

  @property
  def tokenizer(self) -> tokenization.RealmTokenizer:
    if self._tokenizer is None:
      self._tokenizer = tokenization.RealmTokenizer(self.vocab_file, self.task_config.do_lower_case)
    return self._tokenizer

  @property
  def is_regex(self) -> bool:
    if self.task_config.is_regex is not None:
      return bool(self.task_config.is_regex)
    return qa_pipeline.is_regex_dataset(self.task_config.validation_data.dataset_name)

  def load_corpus(self):
    """Reads and checks blocks.tfr + block_emb; pre-tokenizes the blocks (cached)."""
    if self._corpus is not None:
      return self._corpus
    tc = self.task_config
    emb_prefix = check_retriever_export(tc.retriever_module_path)
    logging.info("block_emb: %s (question tower from %s)", emb_prefix, tc.retriever_module_path)
    blocks_path = resolve_blocks_path(tc.block_records_path)
    texts = qa_pipeline.read_block_texts(blocks_path, tc.num_block_records or None)
    titles = None
    if tc.reader_include_title:
      titles_path = qa_pipeline.titles_path_of(blocks_path)
      titles = qa_pipeline.read_block_texts(titles_path)
      if len(titles) != len(texts):
        raise ValueError(f"{titles_path} has {len(titles)} titles but {blocks_path} has "
                         f"{len(texts)} blocks; they must be aligned")
    block_emb = index_lib.read_block_emb_checkpoint(emb_prefix)
    if block_emb.shape[0] != len(texts):
      raise ValueError(f"{emb_prefix}: block_emb has {block_emb.shape[0]} rows but {blocks_path} "
                       f"has {len(texts)} blocks; they must be aligned")
    if block_emb.shape[1] != tc.model.projection_size:
      raise ValueError(f"{emb_prefix}: block_emb width {block_emb.shape[1]} != "
                       f"task.model.projection_size {tc.model.projection_size}")
    for name, k in (("retriever_beam_size", tc.model.retriever_beam_size),
                    ("reader_beam_size", tc.model.reader_beam_size)):
      if k > len(texts):
        logging.warning("%s=%d is larger than the corpus (%d blocks); using %d", name, k, len(texts),
                        len(texts))
    if tc.model.reader_beam_size > tc.model.retriever_beam_size:
      raise ValueError(f"reader_beam_size {tc.model.reader_beam_size} > retriever_beam_size "
                       f"{tc.model.retriever_beam_size}")
    if tc.max_question_len > tc.model.reader_seq_len - 4:
      raise ValueError(f"max_question_len {tc.max_question_len} leaves no room for a block in "
                       f"reader_seq_len {tc.model.reader_seq_len}")
    sep_pos = None
    if titles is None:
      ids, lens, truncated = qa_pipeline.pretokenize_blocks(
          self.tokenizer, texts, tc.model.reader_seq_len - 3)
    else:
      texts, ids, lens, sep_pos, truncated = qa_pipeline.pretokenize_blocks_with_titles(
          self.tokenizer, titles, texts, tc.model.reader_seq_len - 3, self.tokenizer.sep_id)
    if truncated:
      self.counters.add("blocks_truncated_for_reader", truncated)
    self._corpus = {"texts": texts, "block_emb": block_emb, "block_ids": ids, "block_len": lens,
                    "block_sep_pos": sep_pos}
    return self._corpus

  def gold_finder(self) -> regex_gold.RegexGoldFinder:
    """The regex gold-span finder over the corpus (cached; regex mode)."""
    if self._host.gold_finder is None:
      corpus = self.load_corpus()
      self._host.gold_finder = regex_gold.RegexGoldFinder(
          self.tokenizer, corpus["texts"], corpus["block_len"], corpus["block_sep_pos"],
          self.task_config.max_gold_spans)
    return self._host.gold_finder

  def build_mips_index(self, block_emb):
    """The ScaNN TF-op index `task.mips` asks for over `block_emb` [N, D], or None (exact search in
    the step). Raises ValueError on a combination `mips_problems` rejects."""
    tc = self.task_config
    problems = mips_problems(tc, int(block_emb.shape[0]))
    if problems:
      raise ValueError("; ".join(problems))
    factory = index_lib.IndexFactory(tc.mips, tc.scann.as_dict(), scann_backend="tf")
    if factory.kind_for(int(block_emb.shape[0])) != index_lib.ScannIndex.kind:
      return None
    logging.info("ORQA retrieval: ScaNN TF ops over %d blocks", block_emb.shape[0])
    return factory(block_emb)

  # --- Model Garden hooks -------------------------------------------------------------------------
  def build_model(self) -> orqa_model.OrqaModel:
    tc = self.task_config
    corpus = self.load_corpus()
    tok = self.tokenizer
    model = orqa_model.OrqaModel(tc.model, corpus["block_emb"], corpus["block_ids"],
                                 corpus["block_len"], tok.cls_id, tok.sep_id,
                                 vocab_size=tok.vocab_size, block_sep_pos=corpus["block_sep_pos"],
                                 mips_index=self.build_mips_index(corpus["block_emb"]))
    init_utils.init_embedder(model.retriever, tc.retriever_module_path)
    if tc.reader_module_path:
      init_reader(model.reader, tc.reader_module_path, tc.model, tok.vocab_size)
    else:
      logging.warning("No --reader_module_path: the reader starts from random weights.")
    if tc.freeze_question_word_embeddings:
      # A permanent freeze through Keras' own switch: the table leaves `trainable_variables`, so it
      # gets no gradient and no optimizer slots (a 0 lr multiplier would still pay for both).
      model.retriever.encoder.get_embedding_layer().trainable = False
    return model

  def variable_lr_schedules(self, model):
    """The reader's constant learning-rate multiplier (`reader_learning_rate_multiplier`), or None."""
    multiplier = self.task_config.reader_learning_rate_multiplier
    if multiplier == 1.0:
      return None
    return [(model.reader.trainable_variables, optimization.ConstantMultiplier(multiplier))]

  def build_inputs(self, params: QADataConfig, input_context: Optional[tf.distribute.InputContext] = None):
    path = qa_pipeline.qa_file_path(params.data_root, params.dataset_name, params.split)
    examples = qa_pipeline.read_qa_file(path, self.counters)
    if not examples:
      raise ValueError(f"{path}: no questions")
    gold_finder = self.gold_finder() if self.is_regex else None
    featurizer = qa_pipeline.QAFeaturizer(self.tokenizer, self.task_config.max_question_len,
                                          self.task_config.max_answers,
                                          self.task_config.max_answer_len, gold_finder=gold_finder)
    features = featurizer.featurize(examples)
    logging.info("%s: %s", path, featurizer.counters.report())
    if gold_finder is not None:
      logging.info("%s: %s", path, gold_finder.counters.report())
    batch = params.global_batch_size
    if input_context is not None:
      batch = input_context.get_per_replica_batch_size(params.global_batch_size)
    if not params.is_training:
      self._host.eval_examples[params.split] = examples
      self._host.eval_split = params.split
    return qa_pipeline.make_dataset(features, batch, params.is_training, params.seed)

  def _forward(self, model, inputs, training):
    """Model + correctness + loss + prediction; per-question values [B] under `metric_names`."""
    outputs = model(inputs, training=training)
    if "gold_spans" in inputs:  # regex answers: the precomputed gold (block, span) list
      correct = orqa_model.gold_span_correctness(model, outputs, inputs["gold_spans"])
    else:
      correct = orqa_model.answer_correctness(model, outputs, inputs["answer_ids"],
                                              inputs["answer_len"])
    loss_dict = losses.orqa_loss(outputs["retriever_logits"], correct["retriever_correct"],
                                 outputs["reader_logits"], correct["reader_correct"])
    preds = orqa_model.predictions(outputs)
    at_prediction = orqa_model.correct_at_prediction(preds, correct["reader_correct"])
    per_question = {
        "loss": loss_dict["per_example_loss"],
        "retriever_loss": loss_dict["per_example_retriever_loss"],
        "reader_loss": loss_dict["per_example_reader_loss"],
        "exact_match": tf.cast(at_prediction["exact_match"], tf.float32),
        "reader_oracle": tf.cast(at_prediction["reader_oracle"], tf.float32),
        "retriever_any_correct": tf.cast(tf.reduce_any(correct["retriever_correct"], -1),
                                         tf.float32),
    }  # each [B]
    return loss_dict["loss"], per_question, outputs, preds

  def compute_loss(self, model, inputs, training):
    loss, per_question, _, _ = self._forward(model, inputs, training)
    return loss, {k: tf.reduce_mean(per_question[k]) for k in self.metric_names}

  def validation_step(self, inputs, model, metrics=None):
    """Per-question outputs for `aggregate_logs`. Eval batches are padded (example_index -1), so no
    batch mean is reported from here: `reduce_aggregated_logs` averages over the real questions."""
    del metrics
    _, per_question, outputs, preds = self._forward(model, inputs, training=False)
    logs = {f"example_{k}": v for k, v in per_question.items()}
    logs.update({
        "example_index": inputs["example_index"],
        "retrieved_ids": outputs["retrieved_ids"],  # [B, R]
        "retrieved_valid": outputs["retrieved_valid"],  # [B, R]
        "pred_block_id": preds["pred_block_id"],
        "pred_first_wordpiece": preds["pred_first_wordpiece"],
        "pred_last_wordpiece": preds["pred_last_wordpiece"],
        "pred_score": preds["pred_score"],
    })
    return logs

  def aggregate_logs(self, state=None, step_outputs=None):
    """Keeps per-question rows of the real questions; retrieved blocks are reduced to the rank of
    the first one holding an answer (`HasAnswer` on the raw text, regex `search` in regex mode)
    right away."""
    state = state or {"rows": [], "num_retrieved": 0}
    examples = self._host.eval_examples.get(self._host.eval_split, [])
    texts = self.load_corpus()["texts"]
    values = {k: v if isinstance(v, (tuple, list)) else [v] for k, v in step_outputs.items()}
    for part in range(len(values["example_index"])):  # one part per replica
      arrays = {k: np.asarray(v[part]) for k, v in values.items()}
      state["num_retrieved"] = int(arrays["retrieved_ids"].shape[1])
      for i in np.nonzero(arrays["example_index"] >= 0)[0]:
        ex = examples[int(arrays["example_index"][i])]
        row = {k: arrays[k][i].item() for k in arrays
               if k not in ("retrieved_ids", "retrieved_valid")}
        retrieved = arrays["retrieved_ids"][i][arrays["retrieved_valid"][i]]  # empty slots dropped
        row["first_answer_rank"] = metrics_lib.first_answer_rank(
            (texts[b] for b in retrieved), ex.answers, is_regex=self.is_regex)
        state["rows"].append(row)
    return state

  def reduce_aggregated_logs(self, aggregated_logs, global_step=None):
    records, losses_by_name = self.decode_predictions(aggregated_logs["rows"])
    self._host.last_predictions = records
    metrics = summarize_predictions(records, aggregated_logs["num_retrieved"])
    metrics.update(losses_by_name)
    if self.task_config.predict_output:
      write_predictions(records, self.task_config.predict_output)
    return metrics

  # --- host-side decoding -------------------------------------------------------------------------
  def decode_predictions(self, rows: List[dict]):
    """Per-question rows of `aggregate_logs` -> (prediction records in file order, eval losses).

    The answer text is `RealmTokenizer.span_text` of the predicted block, the function the serving
    export runs in-graph, so served and evaluated answers are the same string.
    """
    examples = self._host.eval_examples.get(self._host.eval_split, [])
    texts = self.load_corpus()["texts"]
    rows = sorted(rows, key=lambda r: r["example_index"])
    block_texts = [texts[r["pred_block_id"]] for r in rows]
    answers = []
    for start in range(0, len(rows), 4096):  # bounded batches of strings
      chunk = rows[start:start + 4096]
      answers += [a.decode("utf-8") for a in self.tokenizer.span_text(
          tf.constant(block_texts[start:start + 4096], tf.string),
          [r["pred_first_wordpiece"] for r in chunk],
          [r["pred_last_wordpiece"] for r in chunk]).numpy()]
    records = []
    for row, block_text, answer in zip(rows, block_texts, answers):
      ex = examples[row["example_index"]]
      records.append({
          "question": ex.question,
          "prediction": answer,
          "answers": ex.answers,
          "block_index": row["pred_block_id"],
          "block_text": block_text,
          "score": row["pred_score"],
          "exact_match": bool(row["example_exact_match"]),
          "official_exact_match": answers_lib.is_correct(answer, ex.answers,
                                                         is_regex=self.is_regex),
          "reader_oracle": bool(row["example_reader_oracle"]),
          "retriever_any_correct": bool(row["example_retriever_any_correct"]),
          # Whether the block the answer was taken from holds a gold answer (HasAnswer, as
          # top_k_match): tells a wrong block (the reader overrode retrieval) from a wrong span.
          "prediction_block_has_answer": answers_lib.has_answer(block_text, ex.answers,
                                                                is_regex=self.is_regex),
          "first_answer_rank": row["first_answer_rank"],
      })
    num = max(len(rows), 1)
    losses_by_name = {"validation_loss": sum(r["example_loss"] for r in rows) / num,
                      "retriever_loss": sum(r["example_retriever_loss"] for r in rows) / num,
                      "reader_loss": sum(r["example_reader_loss"] for r in rows) / num}
    return records, losses_by_name


def summarize_predictions(records: List[dict], num_retrieved: int) -> Dict[str, float]:
  """The eval metrics (see the module docstring) over prediction records.

  Args:
    records: `OrqaTask.decode_predictions` records (one per eval line).
    num_retrieved: R, blocks retrieved per question (caps the `top_{k}_match` cut-offs).
  """
  n = len(records)
  if n == 0:
    return {"exact_match": 0.0, "official_exact_match": 0.0, "num_questions": 0.0}
  out = {key: float(np.mean([r[key] for r in records]))
         for key in ("exact_match", "official_exact_match", "reader_oracle",
                     "retriever_any_correct", "prediction_block_has_answer")}
  out["num_questions"] = float(n)
  ranks = [r["first_answer_rank"] for r in records]
  for k, value in metrics_lib.match_at_k(ranks, RECALL_KS).items():
    out[f"recall_at_{k}"] = value
  top_ks = [k for k in metrics_lib.ORQA_TOP_KS if k <= num_retrieved]
  for k, value in metrics_lib.match_at_k(ranks, top_ks).items():
    out[f"top_{k}_match"] = value
  return out


def write_predictions(records: List[dict], path: str):
  """Atomic JSONL write of prediction records."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  io_utils.atomic_write_text(path, text)


def init_reader(reader, source: str, model_config, vocab_size: int) -> str:
  """Initialises the ORQA reader: a full reader (ORQA export/checkpoint) or only its BERT (a `bert`
  export: the span head stays freshly initialised, as in the original; an `embedder` export, e.g.
  the ICT-trained retriever's, works the same way). A TF Hub BERT encoder (path / gs:// / URL)
  initialises the reader's BERT the same way."""
  if init_utils.hub_init.is_hub_encoder(source):
    return init_utils.hub_init.init_from_hub(reader, source)
  try:
    return init_utils.restore_tower(reader, source, ("model/reader", "reader"), marker="encoder/")
  except ValueError:
    pass
  return init_utils.init_bert_encoder(
      reader.encoder, source,
      donor_fns=(lambda: knowledge_encoder.KnowledgeAugmentedEncoder(model_config.bert,
                                                                     vocab_size=vocab_size),
                 lambda: embedder_lib.RealmEmbedder(model_config.bert,
                                                    projection_size=model_config.projection_size,
                                                    vocab_size=vocab_size)))
