"""ORQA open-domain QA fine-tuning Task (reference §3.3–§3.5).

Device side (`compute_loss`, XLA): `OrqaModel` + `losses.orqa_loss`. Host side (eval only, via Model
Garden's `aggregate_logs` / `reduce_aggregated_logs`): predicted spans are projected back to the
ORIGINAL tokens of the block (`tokenize_with_original_mapping` token map, then
`squad_lib.get_final_text`), scored with SQuAD-normalised EM (regex mode for CuratedTrec), retrieval
recall@{1,5,20,100} with ORQA's `HasAnswer` (raw case-sensitive substring) on the block texts, and the
reader oracle. These land in metrics.jsonl through the driver's eval action.
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
from official.nlp.data import squad_lib
from realm_tf2 import io_utils
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.data import qa_pipeline
from realm_tf2.evaluation import answers as answers_lib
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import init_utils
from realm_tf2.modeling import knowledge_encoder
from realm_tf2.modeling import losses
from realm_tf2.modeling import orqa_model
from realm_tf2.retrieval import index as index_lib
from realm_tf2.tasks import base

RECALL_KS = (1, 5, 20, 100)


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
    retriever_module_path: Embedder export (contract §3) with `encoded/encoded.ckpt` (block_emb).
    reader_module_path: A `bert` export (or an ORQA `reader` export / training checkpoint); empty means
      a randomly initialised reader (tests only).
    block_records_path: `blocks.tfr`, or the knowledge-corpus directory holding it.
    num_block_records: Expected number of blocks (0 = whatever blocks.tfr holds).
    max_question_len / max_answers / max_answer_len: static shapes (cuts are counted, see qa_pipeline).
    is_regex: Regex answers (None = automatic: True for CuratedTrec).
    predict_output: If set, eval predictions are written there as JSONL.
    freeze_question_word_embeddings: Keep the question tower's wordpiece embeddings at their
      initial (retriever export) values; the rest of the tower still trains. Off by default (the
      original fine-tunes everything). The block index is fixed, computed with those same
      embeddings; on a small QA set, fine-tuning moves the vectors of the train questions' words
      (e.g. entity names) away from it while unseen names stay put, so the tower memorises the
      train entities instead of learning how questions differ from the sentences it was
      pre-trained on. Measured on a 100-person world (80 train persons, 20 held-out, ICT-trained
      tiny retriever): dev recall@1 0.48 without the freeze (1 run), 0.78-0.9 with it (5 runs); see
      tests/tasks/test_orqa_generalisation.py. Not a general win: on the demo world (300 entities,
      REALM-trained retriever, 1000 ORQA steps, one run each) it lowered dev recall@5 from 0.56 to
      0.35.
    reader_learning_rate_multiplier: The reader's learning rate (and weight decay) relative to the
      question tower's; 1.0 (default) is the original's single rate. Below 1 keeps a pre-trained
      reader close to its initialisation while the question tower adapts. Measured on the 100-person
      held-out world (reader initialised from the ICT-trained BERT): see
      tests/tasks/test_orqa_generalisation.py.
  """
  retriever_module_path: str = ""
  reader_module_path: str = ""
  block_records_path: str = ""
  num_block_records: int = 0
  max_question_len: int = 64
  max_answers: int = 10
  max_answer_len: int = 16
  is_regex: Optional[bool] = None
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
  """Returns the `encoded/encoded.ckpt` prefix; raises with one clear message when files are missing."""
  if not retriever_module_path:
    raise ValueError("--retriever_module_path is required (an embedder export with encoded/encoded.ckpt)")
  if not tf.io.gfile.exists(os.path.join(retriever_module_path, "saved_model.pb")):
    raise FileNotFoundError(f"--retriever_module_path {retriever_module_path}: no saved_model.pb")
  prefix = os.path.join(retriever_module_path, "encoded", "encoded.ckpt")
  if not tf.io.gfile.exists(prefix + ".index"):
    raise FileNotFoundError(f"--retriever_module_path {retriever_module_path}: missing {prefix}.index "
                            "(run the corpus embedding / refresh first)")
  return prefix


class OrqaTask(base.RealmBaseTask):
  """Open-domain QA fine-tuning with a fixed block index (ORQA / REALM fine-tuning)."""

  metric_names = ("retriever_loss", "reader_loss", "token_exact_match", "reader_oracle",
                  "retriever_any_correct")

  def __init__(self, params: OrqaTaskConfig, logging_dir: Optional[str] = None, name=None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self._corpus = None
    self._tokenizer = None
    # Plain namespace: attributes of a tf.Module would be wrapped (ListWrapper/DictWrapper) and tracked.
    self._host = types.SimpleNamespace(eval_examples={}, eval_split="dev", last_predictions=[])
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
    blocks_path = resolve_blocks_path(tc.block_records_path)
    texts = qa_pipeline.read_block_texts(blocks_path, tc.num_block_records or None)
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
    ids, lens, truncated = qa_pipeline.pretokenize_blocks(
        self.tokenizer, texts, tc.model.reader_seq_len - 3)
    if truncated:
      self.counters.add("blocks_truncated_for_reader", truncated)
    self._corpus = {"texts": texts, "block_emb": block_emb, "block_ids": ids, "block_len": lens}
    return self._corpus

  # --- Model Garden hooks -------------------------------------------------------------------------
  def build_model(self) -> orqa_model.OrqaModel:
    tc = self.task_config
    corpus = self.load_corpus()
    tok = self.tokenizer
    model = orqa_model.OrqaModel(tc.model, corpus["block_emb"], corpus["block_ids"],
                                 corpus["block_len"], tok.cls_id, tok.sep_id,
                                 vocab_size=tok.vocab_size)
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
    featurizer = qa_pipeline.QAFeaturizer(self.tokenizer, self.task_config.max_question_len,
                                          self.task_config.max_answers,
                                          self.task_config.max_answer_len)
    features = featurizer.featurize(examples)
    logging.info("%s: %s", path, featurizer.counters.report())
    batch = params.global_batch_size
    if input_context is not None:
      batch = input_context.get_per_replica_batch_size(params.global_batch_size)
    if not params.is_training:
      self._host.eval_examples[params.split] = examples
      self._host.eval_split = params.split
    return qa_pipeline.make_dataset(features, batch, params.is_training, params.seed)

  def _forward(self, model, inputs, training):
    outputs = model(inputs, training=training)
    loss_dict = losses.orqa_loss(outputs["retriever_logits"], outputs["retriever_correct"],
                                 outputs["reader_logits"], outputs["reader_correct"])
    preds = orqa_model.predictions(outputs)
    logs = {
        "retriever_loss": loss_dict["retriever_loss"],
        "reader_loss": loss_dict["reader_loss"],
        "token_exact_match": tf.reduce_mean(tf.cast(preds["exact_match"], tf.float32)),
        "reader_oracle": tf.reduce_mean(tf.cast(preds["reader_oracle"], tf.float32)),
        "retriever_any_correct": tf.reduce_mean(
            tf.cast(tf.reduce_any(outputs["retriever_correct"], -1), tf.float32)),
    }
    return loss_dict["loss"], logs, outputs, preds

  def compute_loss(self, model, inputs, training):
    loss, logs, _, _ = self._forward(model, inputs, training)
    return loss, logs

  def validation_step(self, inputs, model, metrics=None):
    loss, logs, outputs, preds = self._forward(model, inputs, training=False)
    logs = dict(logs)
    logs[self.loss] = loss
    self._update_metrics(metrics, logs)
    top = min(max(RECALL_KS), outputs["retrieved_ids"].shape[1])
    logs.update({
        "example_index": inputs["example_index"],
        "retrieved_ids": outputs["retrieved_ids"][:, :top],
        "block_start": outputs["block_start"],
        "pred_block_id": preds["pred_block_id"],
        "pred_start": preds["pred_start"],
        "pred_end": preds["pred_end"],
        "pred_score": preds["pred_score"],
        "pred_input_ids": tf.gather(outputs["reader_inputs"]["input_ids"], preds["pred_block"],
                                    batch_dims=1),
        "example_reader_oracle": preds["reader_oracle"],
        "example_token_em": preds["exact_match"],
    })
    return logs

  _PER_EXAMPLE = ("example_index", "retrieved_ids", "block_start", "pred_block_id", "pred_start",
                  "pred_end", "pred_score", "pred_input_ids", "example_reader_oracle",
                  "example_token_em")

  def aggregate_logs(self, state=None, step_outputs=None):
    state = state or {k: [] for k in self._PER_EXAMPLE}
    for k in self._PER_EXAMPLE:
      value = step_outputs[k]
      parts = value if isinstance(value, (tuple, list)) else [value]
      state[k].extend(np.asarray(p) for p in parts)
    return state

  def reduce_aggregated_logs(self, aggregated_logs, global_step=None):
    arrays = {k: np.concatenate(v) for k, v in aggregated_logs.items()}
    records = self.decode_predictions(arrays)
    self._host.last_predictions = records
    metrics = summarize_predictions(records, self.is_regex)
    if self.task_config.predict_output:
      write_predictions(records, self.task_config.predict_output)
    return metrics

  # --- host-side decoding -------------------------------------------------------------------------
  def decode_predictions(self, arrays: Dict[str, np.ndarray]) -> List[dict]:
    """Per-example device outputs -> prediction records (host side)."""
    examples = self._host.eval_examples.get(self._host.eval_split, [])
    texts = self.load_corpus()["texts"]
    keep = np.nonzero(arrays["example_index"] >= 0)[0]
    if len(keep) == 0:
      return []
    block_texts = [texts[int(arrays["pred_block_id"][i])] for i in keep]
    orig_tokens, _, token_maps = self.tokenizer.tokenize_with_original_mapping(
        tf.constant(block_texts, tf.string))
    orig_tokens = orig_tokens.numpy()
    token_maps = token_maps.numpy()
    records = []
    for j, i in enumerate(keep):
      ex = examples[int(arrays["example_index"][i])]
      answer = project_to_original(
          arrays["pred_input_ids"][i], int(arrays["pred_start"][i]), int(arrays["pred_end"][i]),
          int(arrays["block_start"][i]), [t.decode("utf-8") for t in orig_tokens[j]],
          token_maps[j], self.tokenizer, self.task_config.do_lower_case)
      retrieved = [int(r) for r in arrays["retrieved_ids"][i]]
      records.append({
          "question": ex.question,
          "prediction": answer,
          "answers": ex.answers,
          "block_index": int(arrays["pred_block_id"][i]),
          "block_text": block_texts[j],
          "score": float(arrays["pred_score"][i]),
          "correct": answers_lib.is_correct(answer, ex.answers, is_regex=self.is_regex),
          # Whether the block the answer was taken from holds a gold answer (HasAnswer, as recall@k):
          # tells a wrong block (the reader overrode retrieval) from a wrong span in the right block.
          "prediction_block_has_answer": answers_lib.has_answer(block_texts[j], ex.answers),
          "first_answer_rank": next(
              (r for r, b in enumerate(retrieved) if answers_lib.has_answer(texts[b], ex.answers)),
              -1),
          "reader_oracle": bool(arrays["example_reader_oracle"][i]),
          "token_exact_match": bool(arrays["example_token_em"][i]),
      })
    return records


def project_to_original(input_ids, start: int, end: int, block_start: int, orig_tokens: List[str],
                        token_map, tokenizer, do_lower_case: bool) -> str:
  """Predicted span (positions in the reader input) -> text over the block's original tokens.

  As ORQA (§3.3 Prediction): orig tokens [orig_start..orig_end] joined by spaces, wordpieces of the span
  joined by spaces (with SQuAD's "##" clean-up), then `squad_lib.get_final_text`. Returns "" if the
  span is not inside the block (possible only when no valid span exists).
  """
  ws, we = start - block_start, end - block_start
  if ws < 0 or we < ws or we >= len(token_map):
    return ""
  o_start, o_end = int(token_map[ws]), int(token_map[we])
  orig_text = " ".join(orig_tokens[o_start:o_end + 1])
  wp_text = " ".join(tokenizer.convert_ids_to_tokens(input_ids[start:end + 1]))
  wp_text = wp_text.replace(" ##", "").replace("##", "").strip()
  return squad_lib.get_final_text(wp_text, orig_text, do_lower_case)


def summarize_predictions(records: List[dict], is_regex: bool) -> Dict[str, float]:
  """EM, recall@k (HasAnswer on raw block text), reader oracle, and the share of predictions taken
  from a block that holds an answer (`prediction_block_has_answer`; compare with recall@1) over
  prediction records."""
  n = len(records)
  if n == 0:
    return {"exact_match": 0.0, "num_questions": 0.0}
  ranks = np.array([r["first_answer_rank"] for r in records])
  out = {"exact_match": float(np.mean([r["correct"] for r in records])),
         "token_exact_match": float(np.mean([r["token_exact_match"] for r in records])),
         "reader_oracle": float(np.mean([r["reader_oracle"] for r in records])),
         "prediction_block_has_answer": float(np.mean([r["prediction_block_has_answer"]
                                                       for r in records])),
         "num_questions": float(n)}
  for k in RECALL_KS:
    out[f"recall_at_{k}"] = float(np.mean((ranks >= 0) & (ranks < k)))
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
