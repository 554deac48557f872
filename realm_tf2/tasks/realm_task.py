"""REALM pre-training (original §1.1) as a Model Garden Task.

The index is used only to CHOOSE the K candidates; the train step re-embeds the query and all K
candidates with the live embedder, so retrieval gets gradients through `log_softmax(scores)`,
exactly as the original. Where the candidates are chosen is `task.retrieval`:
  host    (default; the only mode for ScaNN) the input pipeline picks them with the stale snapshot's
          query embedder and index (`pretrain_pipeline.RetrievalFeaturizer`), as the original.
  device  the train step picks them: the snapshot's (or the live) query tower embeds the masked
          query in inference mode, `device_retrieval.DeviceBlockStore` searches `block_emb` held
          on the accelerators and packs the candidate/joint inputs, then the usual
          forward/backward. With one replica or on TPU it is one XLA program; with several
          MirroredStrategy replicas the search (whose collectives XLA compiles only on TPU) runs
          before the XLA-compiled forward/backward (`RealmTask.train_step`; docs/architecture.md
          "Device retrieval").
"""
import dataclasses
from typing import Dict, Optional, Tuple

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf
import tf_keras

from official.core import config_definitions as cfg
from official.core import task_factory
from official.modeling.hyperparams import base_config
from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2 import optimization
from realm_tf2 import tokenization
from realm_tf2.data import pipeline_stats
from realm_tf2.data import pretrain_pipeline
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import init_utils
from realm_tf2.modeling import knowledge_encoder
from realm_tf2.modeling import losses
from realm_tf2.retrieval import device_retrieval
from realm_tf2.tasks import base
from realm_tf2.tasks.ict_task import vocab_size_of


@dataclasses.dataclass
class RealmDataConfig(cfg.DataConfig):
  """REALM data: `input_path` = glob of the GZIP pre-training shards (contracts §2).

  The first `num_eval_shards` sorted shards are held out: training reads the rest, evaluation
  (`is_training=False`) reads only those.
  """
  input_path: str = ""
  global_batch_size: int = 512
  is_training: bool = True
  seed: Optional[int] = 0
  deterministic: bool = False
  shuffle_buffer_size: int = 1000
  num_eval_shards: int = 5
  retrieval_batch_size: int = 32


RETRIEVAL_MODES = ("host", "device")
PICK_WITH = ("snapshot", "live")
_EMB_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


@dataclasses.dataclass
class DeviceRetrievalConfig(base_config.Config):
  """Settings of `task.retrieval=device` (`device_retrieval.DeviceBlockStore`).

  Attributes:
    pick_with: Which query tower picks the candidates: "snapshot" (the query tower of the index's
      own snapshot, a non-trainable copy on the accelerators swapped in with every refresh: the
      original's semantics, query and documents from one snapshot) or "live" (the tower being
      trained, in inference mode, against the stale documents; no copy). Either way the live
      towers score the K candidates. How the choice changes learning: docs/scaling.md, "Device
      retrieval".
    extra_candidates: Rows searched beyond K, to refill slots of a dropped source or repeated uid.
    emb_dtype: "float32" or "bfloat16": how `block_emb` is stored and scored on the accelerators.
    rows_per_chunk: Rows scored at once per replica (bounds the [global batch, rows] score
      matrix); 0 = the whole shard.
    recall_target: 0 = exact top-k; else `tf.math.approx_max_k` with this recall (TPU).
  """
  pick_with: str = "snapshot"
  extra_candidates: int = 2
  emb_dtype: str = "float32"
  rows_per_chunk: int = 0
  recall_target: float = 0.0

  @property
  def tf_emb_dtype(self):
    if self.emb_dtype not in _EMB_DTYPES:
      raise ValueError(f"task.device_retrieval.emb_dtype must be one of {sorted(_EMB_DTYPES)}, "
                       f"got {self.emb_dtype!r}")
    return _EMB_DTYPES[self.emb_dtype]


@dataclasses.dataclass
class RealmPretrainTaskConfig(base.RealmTaskConfig):
  """REALM pre-training task.

  Attributes:
    train_data / validation_data: `RealmDataConfig`s.
    retrieval_corpus_path: Glob of the retrieval corpus shards (index rows).
    retrieval: Where the K candidates are chosen: "host" (input pipeline, stale snapshot embedder,
      any `mips`) or "device" (train step, exact or approximate top-k on the accelerators;
      `device_retrieval`); see the module docstring.
    device_retrieval: Settings of `retrieval="device"`.
    mips: Index the input pipeline searches: "brute_force" (exact), "scann", or "auto" (ScaNN from
      `index.AUTO_SCANN_MIN_ROWS` rows on); built with every snapshot, swapped with it.
    scann: ScaNN settings (None fields: chosen from the corpus size).
    embedder_init: Embedder source (ICT export / converter output / checkpoint); "" = random.
    bert_init: Knowledge-augmented encoder source (`bert` export / converter output / checkpoint).
    retriever_warmup_steps: Optimizer steps during which the retriever's learning rate is 0 (it
      stays at its init, e.g. the ICT warm start) while the encoder learns to read the retrieved
      documents; then the rate rises linearly over `retriever_ramp_steps` to
      `retriever_learning_rate_multiplier` times the encoder's (`optimization.DelayedLinearRamp`;
      the retriever's Adam moments track its gradients all along). 0 (the original) trains both
      from step 0. Use it when the encoder starts from random weights: the retriever otherwise
      collapses onto the null document before the encoder can read (the demo sets it).
    retriever_ramp_steps: Length of that linear release, in optimizer steps.
    retriever_learning_rate_multiplier: The retriever's rate relative to the encoder's after any
      warm-up; 1.0 = one rate, as the original; must be > 0. Below 1 when the encoder's rate is
      high for a trained retriever (e.g. a fresh MLM head, `configs/runs/real_realm.yaml`): a shared
      query/document tower moves the vectors of documents no query retrieved, and the next refresh
      swaps them into the index.
  """
  train_data: RealmDataConfig = dataclasses.field(default_factory=RealmDataConfig)
  validation_data: RealmDataConfig = dataclasses.field(
      default_factory=lambda: RealmDataConfig(is_training=False, shuffle_buffer_size=0))
  retrieval_corpus_path: str = ""
  retrieval: str = "host"
  device_retrieval: DeviceRetrievalConfig = dataclasses.field(default_factory=DeviceRetrievalConfig)
  mips: str = "auto"
  scann: configs.ScannConfig = dataclasses.field(default_factory=configs.ScannConfig)
  embedder_init: str = ""
  bert_init: str = ""
  retriever_warmup_steps: int = 0
  retriever_ramp_steps: int = 100
  retriever_learning_rate_multiplier: float = 1.0


class RealmPretrainModel(tf_keras.Model):
  """Holds the towers: `embedder` (queries and, when shared, documents), `doc_embedder`, `bert`.

  Args:
    model_config: `configs.ModelConfig`.
    vocab_size: Word-embedding rows (both towers).
  """

  def __init__(self, model_config, vocab_size: int, name: str = "realm", **kwargs):
    super().__init__(name=name, **kwargs)
    self.embedder, doc = embedder_lib.build_embedders(model_config, vocab_size)
    if doc is not self.embedder:
      self.doc_embedder = doc
    # Masked positions lie in the query part of the joint input (< query_seq_len - 1: the pipeline
    # skips records whose mask is at/after query_seq_len - 2, +1 for [CLS]), so the encoder's last
    # layer only computes those rows.
    self.bert = knowledge_encoder.KnowledgeAugmentedEncoder(
        model_config.bert, vocab_size=vocab_size,
        output_range=min(model_config.query_seq_len - 1, model_config.joint_seq_len))

  @property
  def document_embedder(self):
    return getattr(self, "doc_embedder", self.embedder)

  def call(self, inputs, training=None):
    """Returns {"retrieval_scores" [B,K], "mlm_logits" [B,K,M,V]} for a REALM batch."""
    query = {"input_ids": inputs["query_input_ids"], "input_mask": inputs["query_input_mask"],
             "segment_ids": inputs["query_segment_ids"]}
    cand_ids = inputs["candidate_input_ids"]  # [B, K, C]
    batch, k, c = cand_ids.shape[0] or tf.shape(cand_ids)[0], cand_ids.shape[1], cand_ids.shape[2]
    flat = lambda x, n: tf.reshape(x, [-1, n])  # noqa: E731
    candidates = {"input_ids": flat(cand_ids, c),
                  "input_mask": flat(inputs["candidate_input_mask"], c),
                  "segment_ids": flat(inputs["candidate_segment_ids"], c)}  # [B*K, C]
    q_emb = self.embedder(query, training=training)  # [B, D]
    d_emb = self.document_embedder(candidates, training=training)  # [B*K, D]
    d_emb = tf.reshape(d_emb, [-1, k, d_emb.shape[-1]])  # [B, K, D]
    scores = tf.einsum("bd,bkd->bk", q_emb, d_emb)  # [B, K]
    j = inputs["joint_input_ids"].shape[2]
    m = inputs["mlm_positions"].shape[1]
    positions = tf.reshape(tf.tile(inputs["mlm_positions"][:, None, :], [1, k, 1]), [-1, m])  # [B*K, M]
    joint = {"input_ids": flat(inputs["joint_input_ids"], j),
             "input_mask": flat(inputs["joint_input_mask"], j),
             "segment_ids": flat(inputs["joint_segment_ids"], j),
             "mlm_positions": positions}  # [B*K, J]
    logits = self.bert(joint, training=training)["mlm_logits"]  # [B*K, M, V]
    logits = tf.reshape(logits, [-1, k, m, logits.shape[-1]])  # [B, K, M, V]
    del batch
    return {"retrieval_scores": scores, "mlm_logits": logits}


# Device mode: counters summed over the train steps (`RealmTask.device_pipeline_metrics`): the
# pipeline's record/skip counts (`pipeline_counts`), then what the retrieval in the step counted.
DEVICE_COUNT_KEYS = pretrain_pipeline.DEVICE_COUNT_KEYS + (
    "examples", "skipped/too_few_candidates", "trivial_retrievals_removed",
    "duplicate_retrievals_removed")
_COUNTS_LOG = "device_counts"  # log key of one step's count vector (popped before the trainer)


@task_factory.register_task_cls(RealmPretrainTaskConfig)
class RealmTask(base.RealmBaseTask):
  """REALM marginal-MLM pre-training over K retrieved documents (candidate 0 = null document).

  Host retrieval (`task.retrieval=host`) is attached with `set_retrieval(holder, block_store)`
  before inputs are built: the pipeline reads `holder.get()` for every retrieval batch. Device
  retrieval (`task.retrieval=device`) with `set_device_retrieval(device_store, pick_embedder)`
  before the first step: the step retrieves (`retrieve`). training/pretrain.py does either.
  Metrics: loss, mlm_accuracy, retrieval_utility, null_doc_prob, top_doc_prob (the largest
  retrieval probability among the K: near 1, the softmax is saturated and the retriever's gradient,
  which scales with p(z|x)(1 - p(z|x)), near 0), index_version, index_step (means over the batch);
  device mode adds example_valid (share of examples with K candidates, the others weigh 0 in the
  loss), trivial_removed and duplicates_removed (per example, among the top K).
  """

  metric_names = ("mlm_accuracy", "retrieval_utility", "null_doc_prob", "top_doc_prob",
                  "index_version", "index_step")
  device_metric_names = ("example_valid", "trivial_removed", "duplicates_removed")

  def __init__(self, params, logging_dir=None, name=None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    if params.retrieval not in RETRIEVAL_MODES:
      raise ValueError(f"task.retrieval must be one of {RETRIEVAL_MODES}, got {params.retrieval!r}")
    self.stats = pipeline_stats.PipelineStats("realm_train")
    self.eval_stats = pipeline_stats.PipelineStats("realm_eval")
    self._holder = None
    self._store = None
    self._tokenizer = None
    self._device_store = None
    self._device_counts = None
    self._pick_embedder = None

  @property
  def device_mode(self) -> bool:
    return self.task_config.retrieval == "device"

  def set_retrieval(self, holder, block_store):
    """Attaches the `IndexHolder` and `BlockStore` the input pipeline retrieves from (host mode)."""
    if holder is None or block_store is None:
      raise ValueError("set_retrieval needs an IndexHolder and a BlockStore")
    self._holder, self._store = holder, block_store

  def set_device_retrieval(self, device_store: device_retrieval.DeviceBlockStore,
                           pick_embedder=None):
    """Attaches the accelerator-resident index the train step retrieves from (device mode).

    Args:
      device_store: The `DeviceBlockStore`.
      pick_embedder: `task.device_retrieval.pick_with="snapshot"`: the non-trainable query tower
        of the index's snapshot (built under the store's strategy, kept in step with the index by
        `DeviceIndexSwap`). Must be None with "live".
    Also creates the step counters (`device_pipeline_metrics`) under the store's strategy.
    """
    if not self.device_mode:
      raise ValueError("set_device_retrieval needs task.retrieval='device'")
    pick_with = self.task_config.device_retrieval.pick_with
    if pick_with not in PICK_WITH:
      raise ValueError(f"task.device_retrieval.pick_with must be one of {PICK_WITH}, got "
                       f"{pick_with!r}")
    if (pick_with == "snapshot") != (pick_embedder is not None):
      raise ValueError(f"task.device_retrieval.pick_with={pick_with!r}: pick_embedder must be "
                       + ("the snapshot's query tower" if pick_with == "snapshot" else "None"))
    self._device_store = device_store
    self._pick_embedder = pick_embedder
    with device_store.strategy.scope():
      self._device_counts = tf.Variable(
          tf.zeros([len(DEVICE_COUNT_KEYS)], tf.int32), trainable=False, name="device_counts",
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.SUM)

  @property
  def holder(self):
    return self._holder

  @property
  def device_store(self) -> Optional[device_retrieval.DeviceBlockStore]:
    return self._device_store

  def build_metrics(self, training: bool = True):
    names = self.metric_names + (self.device_metric_names if self.device_mode else ())
    return [tf_keras.metrics.Mean(name, dtype=tf.float32) for name in names]

  def build_model(self) -> tf_keras.Model:
    return RealmPretrainModel(self.task_config.model, vocab_size_of(self.task_config))

  def initialize(self, model: tf_keras.Model):
    cfg_ = self.task_config
    if cfg_.embedder_init:
      init_utils.init_embedder(model.embedder, cfg_.embedder_init)
      if model.document_embedder is not model.embedder:
        init_utils.init_embedder(model.document_embedder, cfg_.embedder_init)
    else:
      logging.info("REALM: no embedder_init; the embedder starts from random weights")
    if cfg_.bert_init:
      init_utils.init_knowledge_encoder(model.bert, cfg_.bert_init)
    else:
      logging.info("REALM: no bert_init; the knowledge-augmented encoder starts from random weights")

  def build_inputs(self, params: RealmDataConfig, input_context=None):
    if self._holder is None and not self.device_mode:
      raise ValueError("RealmTask.build_inputs: call set_retrieval(holder, block_store) first")
    if self._tokenizer is None:
      self._tokenizer = tokenization.RealmTokenizer(self.task_config.vocab_file,
                                                    self.task_config.do_lower_case)
    input_cfg = pretrain_pipeline.make_input_config(
        self.task_config.model, retrieval_batch_size=params.retrieval_batch_size,
        seed=params.seed or 0, deterministic=params.deterministic,
        shuffle_buffer=params.shuffle_buffer_size, repeat=params.is_training)
    files = pretrain_pipeline.split_shards(io_utils.list_shards(params.input_path),
                                           params.num_eval_shards, params.is_training)
    batch = (input_context.get_per_replica_batch_size(params.global_batch_size)
             if input_context else params.global_batch_size)
    if self.device_mode:
      return pretrain_pipeline.build_device_pretrain_dataset(
          params.input_path, self._tokenizer, batch, input_cfg, input_context, files=files)
    stats = self.stats if params.is_training else self.eval_stats
    return pretrain_pipeline.build_pretrain_dataset(
        params.input_path, self._tokenizer, self._holder, self._store, batch, input_cfg, stats,
        input_context, files=files)

  def variable_lr_schedules(self, model):
    """Per-variable learning-rate schedules for `optimization.create_optimizer` (driver)."""
    cfg_ = self.task_config
    multiplier = cfg_.retriever_learning_rate_multiplier
    if not multiplier > 0:  # NaN too
      raise ValueError("task.retriever_learning_rate_multiplier must be > 0 (to freeze the retriever "
                       f"use task.retriever_warmup_steps), got {multiplier}")
    if cfg_.retriever_warmup_steps <= 0 and multiplier == 1.0:
      return None
    retriever = list(model.embedder.trainable_variables)
    if model.document_embedder is not model.embedder:
      retriever += model.document_embedder.trainable_variables
    if cfg_.retriever_warmup_steps <= 0:
      return [(retriever, optimization.ConstantMultiplier(multiplier))]
    return [(retriever, optimization.DelayedLinearRamp(cfg_.retriever_warmup_steps,
                                                       cfg_.retriever_ramp_steps, multiplier))]

  # --- device retrieval ---------------------------------------------------------------------------
  def retrieve(self, model, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Device mode: picks and packs the K candidates of a replica's batch (replica context).

    The masked queries are embedded in inference mode by the snapshot's query tower or the live
    one (`task.device_retrieval.pick_with`; the search has no gradient either way), searched in the
    `DeviceBlockStore` and packed there.

    Args:
      model: `RealmPretrainModel`.
      inputs: a device-mode batch (`pretrain_pipeline.DEVICE_FEATURES`), int32 [b, ...].
    Returns:
      `inputs` plus the `DeviceBlockStore.retrieve_candidates` outputs: candidate_* [b, K, C],
      joint_* [b, K, J], block_rows / candidate_valid [b, K], example_valid, index_version,
      index_step, trivial_removed, duplicates_removed [b].
    """
    if self._device_store is None:
      raise ValueError("task.retrieval='device': call set_device_retrieval(device_store) before "
                       "the first step")
    settings = self.task_config.device_retrieval
    query = {"input_ids": inputs["query_input_ids"], "input_mask": inputs["query_input_mask"],
             "segment_ids": inputs["query_segment_ids"]}
    picker = self._pick_embedder if self._pick_embedder is not None else model.embedder
    query_emb = picker(query, training=False)  # [b, D]
    retrieved = self._device_store.retrieve_candidates(
        query_emb, inputs["source_uid"], inputs["query_input_ids"], inputs["query_input_mask"],
        self.task_config.model.num_candidates, extra_candidates=settings.extra_candidates,
        recall_target=settings.recall_target or None)
    return dict(inputs, **retrieved)

  def retrieval_in_compiled_step(self) -> bool:
    """Whether device retrieval runs inside the (XLA-compiled) forward/backward function.

    True without XLA, with one replica and on TPU (XLA compiles the cross-replica collectives
    there); False with several replicas of another strategy: TF compiles those collectives only as
    NCCL ops, so on CPUs (and GPUs) the search runs in the replica function before the compiled
    part.
    """
    strategy = tf.distribute.get_strategy()
    tpu = isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))
    return (not self.task_config.jit_compile or strategy.num_replicas_in_sync == 1 or tpu)

  def device_pipeline_metrics(self, prefix: str = "") -> Dict[str, float]:
    """Device mode: the summed step counters as `PipelineStats.as_metrics` names them (records,
    examples, `skipped/<reason>`, `skipped_total`, trivial/duplicate retrievals removed); {} before
    `set_device_retrieval`. Call in cross-replica context (reads the sum over replicas)."""
    if self._device_counts is None:
      return {}
    values = self._device_counts.read_value().numpy()
    out = {prefix + key: int(v) for key, v in zip(DEVICE_COUNT_KEYS, values)}
    out[prefix + "skipped_total"] = sum(int(v) for key, v in zip(DEVICE_COUNT_KEYS, values)
                                        if key.startswith("skipped/"))
    return out

  # --- steps --------------------------------------------------------------------------------------
  def train_step(self, inputs, model: tf_keras.Model, optimizer, metrics=None):
    if self.device_mode and not self.retrieval_in_compiled_step():
      inputs = self.retrieve(model, inputs)  # before the XLA program: retrieval_in_compiled_step
    logs = super().train_step(inputs, model, optimizer, metrics)
    counts = logs.pop(_COUNTS_LOG, None)
    if counts is not None:
      self._device_counts.assign_add(counts)
    return logs

  def validation_step(self, inputs, model: tf_keras.Model, metrics=None):
    logs = super().validation_step(inputs, model, metrics)
    logs.pop(_COUNTS_LOG, None)
    return logs

  def compute_loss(self, model, inputs, training) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    if self.device_mode and "candidate_input_ids" not in inputs:
      inputs = self.retrieve(model, inputs)
    out = model(inputs, training=training)
    scores = out["retrieval_scores"]  # [B, K]
    mlm_mask = inputs["mlm_mask"]  # [B, M]
    if self.device_mode:
      # An example without K distinct non-source candidates (the host skips it) weighs 0.
      mlm_mask = mlm_mask * tf.cast(inputs["example_valid"], mlm_mask.dtype)[:, tf.newaxis]
    result = losses.realm_marginal_loss(scores, out["mlm_logits"], inputs["mlm_targets"], mlm_mask)
    logs = {
        "mlm_accuracy": result["mlm_accuracy"],
        "retrieval_utility": result["retrieval_utility"],
        "null_doc_prob": tf.reduce_mean(tf.exp(result["candidate_log_probs"][:, 0])),
        "top_doc_prob": tf.reduce_mean(tf.exp(tf.reduce_max(result["candidate_log_probs"], -1))),
        "index_version": tf.reduce_mean(tf.cast(inputs["index_version"], tf.float32)),
        "index_step": tf.reduce_mean(tf.cast(inputs["index_step"], tf.float32)),
    }
    if self.device_mode:
      logs.update(self._device_logs(inputs))
    return result["loss"], logs

  def _device_logs(self, inputs) -> Dict[str, tf.Tensor]:
    """Per-batch device-retrieval metrics and this step's `DEVICE_COUNT_KEYS` vector."""
    valid = tf.cast(inputs["example_valid"], tf.int32)  # [b]
    trivial = tf.cast(inputs["trivial_removed"], tf.int32)  # [b]
    duplicates = tf.cast(inputs["duplicates_removed"], tf.int32)  # [b]
    pipeline = inputs.get("pipeline_counts")  # [b, P]
    pipeline = (tf.reduce_sum(tf.cast(pipeline, tf.int32), axis=0) if pipeline is not None
                else tf.zeros([len(pretrain_pipeline.DEVICE_COUNT_KEYS)], tf.int32))  # [P]
    step = tf.stack([tf.reduce_sum(valid), tf.reduce_sum(1 - valid), tf.reduce_sum(trivial),
                     tf.reduce_sum(duplicates)])  # [4]
    mean = lambda x: tf.reduce_mean(tf.cast(x, tf.float32))  # noqa: E731
    return {"example_valid": mean(valid), "trivial_removed": mean(trivial),
            "duplicates_removed": mean(duplicates), _COUNTS_LOG: tf.concat([pipeline, step], 0)}
