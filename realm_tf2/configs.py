"""Configuration dataclasses shared by every mode (ICT, REALM, ORQA).

Built on Model Garden's `hyperparams.Config` so they load from YAML (`--config_file`, repeatable) and
`--params_override`. Nested defaults use `dataclasses.field(default_factory=...)` (a plain instance
default breaks on Python >= 3.11).

Model *shape* lives in `ModelConfig` under `task.model`, the same path for every mode, so one size file
(`configs/sizes/{tiny,small,base}.yaml`) applies to ICT, REALM and ORQA alike. Both BERT towers (the
retriever/embedder and the knowledge-augmented encoder/reader) share `task.model.bert` as architecture.
"""
import dataclasses
from typing import Optional

from official.modeling.hyperparams import base_config


@dataclasses.dataclass
class BertConfig(base_config.Config):
  """Architecture of a BERT tower (google-research/bert `modeling.BertConfig` semantics).

  Attributes:
    vocab_size: Rows of the word-embedding table. 0 means "the number of lines of the vocab file".
    hidden_size: Width H of every layer.
    num_layers: Transformer layers.
    num_attention_heads: Heads per layer; must divide hidden_size.
    intermediate_size: Feed-forward inner width.
    hidden_activation: "gelu" is BERT's tanh-approximate gelu.
    dropout_rate: Dropout on hidden states.
    attention_dropout_rate: Dropout on attention probabilities.
    max_position_embeddings: Maximum sequence length the position table supports (512 for BERT).
    type_vocab_size: Segment types (2 for BERT).
    initializer_range: Stddev of the truncated-normal initializer.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_activation: str = "gelu"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02


@dataclasses.dataclass
class ModelConfig(base_config.Config):
  """Shapes and heads of the REALM / ORQA models (original §1.1, §1.2, §3.2, §3.3).

  Attributes:
    bert: Architecture of both BERT towers.
    projection_size: Retriever embedding width (dense after the pooled [CLS]).
    embedder_layer_norm_epsilon: 1e-12 for released REALM embedders, 1e-3 for ICT-derived ones.
    embedder_dropout_rate: Dropout after the projection LayerNorm, training only.
    embedder_pooling: "cls" (the original: BERT's pooler over [CLS]) or "mean" (mean of the last
      layer over the real tokens, for encoders trained with mean pooling, e.g. sentence-transformers).
    share_embedders: One embedder for queries and documents (REALM default).
    num_candidates: k, retrieved documents per REALM query, including the null document.
    max_masks: Masked tokens predicted per REALM query.
    query_seq_len / candidate_seq_len / joint_seq_len: REALM layouts (96 / 288 / 384).
    ict_query_seq_len / ict_block_seq_len: ICT layouts (64 / 288).
    reader_seq_len: ORQA reader input length (320).
    span_hidden_size: ORQA span MLP width.
    max_span_width: Longest answer span in wordpieces.
    reader_layer_norm_epsilon: Keras default 1e-3, as the original span head.
    retriever_beam_size: ORQA blocks retrieved for the retriever loss (train/eval).
    reader_beam_size: ORQA blocks read by the reader.
  """
  bert: BertConfig = dataclasses.field(default_factory=BertConfig)
  projection_size: int = 128
  embedder_layer_norm_epsilon: float = 1e-12
  embedder_dropout_rate: float = 0.1
  embedder_pooling: str = "cls"
  share_embedders: bool = True
  num_candidates: int = 8
  max_masks: int = 10
  query_seq_len: int = 96
  candidate_seq_len: int = 288
  joint_seq_len: int = 384
  ict_query_seq_len: int = 64
  ict_block_seq_len: int = 288
  reader_seq_len: int = 320
  span_hidden_size: int = 256
  max_span_width: int = 10
  reader_layer_norm_epsilon: float = 1e-3
  retriever_beam_size: int = 5000
  reader_beam_size: int = 5


@dataclasses.dataclass
class ScannConfig(base_config.Config):
  """ScaNN index settings; None = chosen from the corpus size by `index.scann_settings_for` (tree
  with ~sqrt(N) leaves from 100k rows, asymmetric hashing from 20k, exact reordering).

  Attributes:
    num_leaves / num_leaves_to_search / training_sample_size: the partitioning tree (0 = no tree).
    dimensions_per_block / anisotropic_quantization_threshold: asymmetric hashing.
    reorder: candidates re-scored exactly (0 = none).
    scoring: "ah" (asymmetric hashing) or "brute_force".
  """
  num_leaves: Optional[int] = None
  num_leaves_to_search: Optional[int] = None
  training_sample_size: Optional[int] = None
  dimensions_per_block: Optional[int] = None
  anisotropic_quantization_threshold: Optional[float] = None
  reorder: Optional[int] = None
  scoring: Optional[str] = None


@dataclasses.dataclass
class OptimizerConfig(base_config.Config):
  """BERT's AdamWeightDecay recipe (original §1.1).

  Attributes:
    learning_rate: Peak learning rate (REALM 3e-5, ICT 1e-4, ORQA 1e-5).
    num_warmup_steps: None means the original rule min(10000, max(100, train_steps // 10)).
    weight_decay_rate: Decoupled weight decay, not applied to LayerNorm parameters or biases.
    beta_1 / beta_2 / epsilon: Adam moments (bias correction: `bias_correction` below).
    clip_norm: Global gradient-norm clip.
    bias_correction: Apply Adam's bias correction (lr·sqrt(1−β2^t)/(1−β1^t) at step t). Off in the
      original, whose early updates are therefore (1−β1^t)/sqrt(1−β2^t) times larger (≈6.6x at
      step 12, 3x at step 100): hidden by BERT's 10k-step warm-up, too large for short runs with
      short warm-ups, which should turn it on (the demo and real-data run configs do).
  """
  learning_rate: float = 3e-5
  num_warmup_steps: Optional[int] = None
  weight_decay_rate: float = 0.01
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-6
  clip_norm: float = 1.0
  bias_correction: bool = False


def default_warmup_steps(num_train_steps: int) -> int:
  """The original rule: min(10000, max(100, int(num_train_steps / 10)))."""
  return min(10000, max(100, int(num_train_steps / 10)))
