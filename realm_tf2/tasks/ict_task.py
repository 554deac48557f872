"""Inverse Cloze Task (ORQA retriever pre-training, original §3.2) as a Model Garden Task."""
import dataclasses
from typing import Dict, Optional, Tuple

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf
import tf_keras

from official.core import config_definitions as cfg
from official.core import task_factory
from realm_tf2 import tokenization
from realm_tf2.data import ict_pipeline
from realm_tf2.data import pipeline_stats
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import init_utils
from realm_tf2.modeling import knowledge_encoder
from realm_tf2.modeling import losses
from realm_tf2.tasks import base


@dataclasses.dataclass
class IctDataConfig(cfg.DataConfig):
  """ICT data: `input_path` = ORQA `examples.tfr` (the block titles are in its `title_ids`)."""
  input_path: str = ""
  global_batch_size: int = 4096
  is_training: bool = True
  seed: Optional[int] = 0
  deterministic: bool = False
  shuffle_buffer_size: int = 1000


@dataclasses.dataclass
class IctTaskConfig(base.RealmTaskConfig):
  """ICT task.

  Attributes:
    train_data / validation_data: `IctDataConfig`s.
    mask_rate: Probability of removing the query sentence from its block (0.9).
    bert_init: Optional BERT source for the tower (a `bert` export, converter output, or checkpoint).
  """
  train_data: IctDataConfig = dataclasses.field(default_factory=IctDataConfig)
  validation_data: IctDataConfig = dataclasses.field(
      default_factory=lambda: IctDataConfig(is_training=False))
  mask_rate: float = 0.9
  bert_init: str = ""


def vocab_size_of(task_config) -> int:
  """`bert.vocab_size`, or the vocab file's line count when it is 0."""
  if task_config.model.bert.vocab_size:
    return int(task_config.model.bert.vocab_size)
  if not task_config.vocab_file:
    raise ValueError("task.model.bert.vocab_size is 0 and task.vocab_file is empty")
  return len(tokenization.load_vocab(task_config.vocab_file))


@task_factory.register_task_cls(IctTaskConfig)
class IctTask(base.RealmBaseTask):
  """ICT: one `RealmEmbedder` embeds queries and blocks; in-batch negatives across all replicas.

  Inputs (per replica): query_* int32 [b,64], block_* int32 [b,288], mask_query int32 [b].
  Metrics: loss, accuracy, masked_accuracy, unmasked_accuracy, actual_mask_ratio.
  """

  metric_names = ("accuracy", "masked_accuracy", "unmasked_accuracy", "actual_mask_ratio")

  def __init__(self, params, logging_dir=None, name=None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.stats = pipeline_stats.PipelineStats("ict_train")
    self.eval_stats = pipeline_stats.PipelineStats("ict_eval")

  def build_model(self) -> tf_keras.Model:
    return embedder_lib.embedder_from_config(self.task_config.model,
                                             vocab_size_of(self.task_config))

  def initialize(self, model: tf_keras.Model):
    source = self.task_config.bert_init or self.task_config.init_checkpoint
    if not source:
      logging.info("ICT: no bert_init; the tower starts from random weights")
      return
    cfg_ = self.task_config
    donor = lambda: knowledge_encoder.KnowledgeAugmentedEncoder(  # noqa: E731
        cfg_.model.bert, vocab_size=vocab_size_of(cfg_))
    init_utils.init_bert_encoder(model.encoder, source, donor_fns=(donor,))

  def build_inputs(self, params: IctDataConfig, input_context=None):
    tok_ids = _special_ids(self.task_config.vocab_file)
    input_cfg = ict_pipeline.make_input_config(
        self.task_config.model, mask_rate=self.task_config.mask_rate, seed=params.seed or 0,
        deterministic=params.deterministic, shuffle_buffer=params.shuffle_buffer_size,
        repeat=params.is_training)
    batch = (input_context.get_per_replica_batch_size(params.global_batch_size)
             if input_context else params.global_batch_size)
    stats = self.stats if params.is_training else self.eval_stats
    return ict_pipeline.build_ict_dataset(params.input_path, *tok_ids, batch, input_cfg, stats,
                                          input_context)

  def compute_loss(self, model, inputs, training) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    query = {"input_ids": inputs["query_input_ids"], "input_mask": inputs["query_input_mask"],
             "segment_ids": inputs["query_segment_ids"]}
    block = {"input_ids": inputs["block_input_ids"], "input_mask": inputs["block_input_mask"],
             "segment_ids": inputs["block_segment_ids"]}
    q_emb = model(query, training=training)  # [b, D]
    b_emb = model(block, training=training)  # [b, D]
    out = losses.ict_loss(q_emb, b_emb)
    correct = tf.cast(tf.equal(tf.argmax(out["logits"], -1, output_type=tf.int32), out["labels"]),
                      tf.float32)  # [b]
    masked = tf.cast(inputs["mask_query"], tf.float32)  # [b]
    logs = {
        "accuracy": out["accuracy"],
        "masked_accuracy": tf.math.divide_no_nan(tf.reduce_sum(correct * masked),
                                                 tf.reduce_sum(masked)),
        "unmasked_accuracy": tf.math.divide_no_nan(tf.reduce_sum(correct * (1 - masked)),
                                                   tf.reduce_sum(1 - masked)),
        "actual_mask_ratio": tf.reduce_mean(masked),
    }
    return out["loss"], logs


def _special_ids(vocab_file: str):
  vocab = tokenization.load_vocab(vocab_file)
  return vocab.index("[CLS]"), vocab.index("[SEP]")
