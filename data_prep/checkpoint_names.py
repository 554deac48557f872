"""Variable-name maps from the original REALM / ORQA / BERT checkpoints onto our Keras models.

Every source format is first reduced to *canonical TF1 BERT names* (`bert/encoder/layer_0/...`,
`cls/predictions/...`, original §4), one tower at a time, by stripping the tower's prefix
(e.g. `module/module/module/bert/` -> `bert/`). Canonical names are then mapped onto Model Garden's
`BertEncoderV2` variable names with Model Garden's own table
(`tf1_bert_checkpoint_converter_lib.BERT_V2_NAME_REPLACEMENTS`) and its Q/K/V/attention-output
reshape rule (`_get_new_shape`).

We do NOT run that library's `convert()`: it writes an intermediate name-based V1 checkpoint through a
`tf.compat.v1.Session` for a single-tower model and then relies on `model.load_weights` name matching.
REALM/ORQA checkpoints hold two towers plus heads under nested `module/` scopes, and we want every
assignment explicit (each Keras variable assigned exactly once, shape-checked, each unused source name
listed), so a direct numpy mapping onto the variables of the built model is simpler and safer here.
"""
import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from official.nlp.tools import tf1_bert_checkpoint_converter_lib as mg_converter

# Substrings marking optimizer state / bookkeeping, skipped and listed (original §4.2, §4.4).
OPTIMIZER_PATTERNS = ("adam_m", "adam_v", "AdamWeightDecayOptimizer", "global_step")

# Names of one BERT transformer layer, relative to `bert/encoder/layer_N/`.
_LAYER_NAMES = (
    "attention/self/query/kernel", "attention/self/query/bias",
    "attention/self/key/kernel", "attention/self/key/bias",
    "attention/self/value/kernel", "attention/self/value/bias",
    "attention/output/dense/kernel", "attention/output/dense/bias",
    "attention/output/LayerNorm/gamma", "attention/output/LayerNorm/beta",
    "intermediate/dense/kernel", "intermediate/dense/bias",
    "output/dense/kernel", "output/dense/bias",
    "output/LayerNorm/gamma", "output/LayerNorm/beta",
)
_EMBEDDING_NAMES = (
    "bert/embeddings/word_embeddings",
    "bert/embeddings/token_type_embeddings",
    "bert/embeddings/position_embeddings",
    "bert/embeddings/LayerNorm/gamma",
    "bert/embeddings/LayerNorm/beta",
)
_POOLER_NAMES = ("bert/pooler/dense/kernel", "bert/pooler/dense/bias")
POOLER_NAMES = _POOLER_NAMES

# BERT MLM head (canonical name -> attribute path on Model Garden's `layers.MaskedLM`).
MLM_HEAD_NAMES = {
    "cls/predictions/transform/dense/kernel": ("dense", "kernel"),
    "cls/predictions/transform/dense/bias": ("dense", "bias"),
    "cls/predictions/transform/LayerNorm/gamma": ("layer_norm", "gamma"),
    "cls/predictions/transform/LayerNorm/beta": ("layer_norm", "beta"),
    "cls/predictions/output_bias": ("bias",),
}

_LAYER_RE = re.compile(r"^bert/encoder/layer_(\d+)/")


def bert_encoder_names(num_layers: int) -> List[str]:
  """All canonical TF1 names of a BERT encoder with `num_layers` layers (incl. pooler)."""
  names = list(_EMBEDDING_NAMES)
  for i in range(num_layers):
    names.extend(f"bert/encoder/layer_{i}/{n}" for n in _LAYER_NAMES)
  names.extend(_POOLER_NAMES)
  return names


def count_layers(canonical_names) -> int:
  """Number of transformer layers (max layer index + 1) among canonical names; 0 if none."""
  indices = [int(m.group(1)) for m in map(_LAYER_RE.match, canonical_names) if m]
  return max(indices) + 1 if indices else 0


def keras_encoder_suffix(canonical_name: str) -> str:
  """Canonical TF1 BERT name -> `BertEncoderV2` variable-name suffix (Model Garden's table).

  E.g. `bert/encoder/layer_0/attention/output/dense/kernel` ->
  `transformer/layer_0/self_attention/attention_output/kernel`.
  """
  if not canonical_name.startswith("bert/"):
    raise ValueError(f"not a BERT encoder name: {canonical_name}")
  name = canonical_name
  # Same sequential substring replacement as Model Garden's `_bert_name_replacement`, minus logging.
  for src, tgt in mg_converter.BERT_V2_NAME_REPLACEMENTS:
    if src in name:
      name = name.replace(src, tgt)
  return name


def keras_encoder_shape(keras_suffix: str, shape: Tuple[int, ...], num_heads: int):
  """Target shape of a variable (Q/K/V kernels [H, heads, H/heads], etc.), None if unchanged."""
  return mg_converter._get_new_shape(keras_suffix, tuple(shape), num_heads)  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class TowerSpec:
  """Where one tower's variables live in a source checkpoint.

  Attributes:
    bert_prefix: Source prefix that replaces the canonical `bert/` (e.g. `module/module/module/bert/`).
    mlm_prefix: Source prefix that replaces canonical `cls/predictions/`; None if the tower has no MLM
      head to load.
    heads: Head variables: canonical head key (e.g. `projection/kernel`) -> source variable name.
    ignored_prefixes: Source prefixes belonging to this tower that are deliberately not loaded,
      mapped to the reason reported for them.
  """
  bert_prefix: str
  mlm_prefix: Optional[str] = None
  heads: Dict[str, str] = dataclasses.field(default_factory=dict)
  ignored_prefixes: Dict[str, str] = dataclasses.field(default_factory=dict)


def _projection_heads(dense: str, layer_norm: str) -> Dict[str, str]:
  return {
      "projection/kernel": f"{dense}/kernel", "projection/bias": f"{dense}/bias",
      "layer_norm/gamma": f"{layer_norm}/gamma", "layer_norm/beta": f"{layer_norm}/beta",
  }


_UNUSED_EMBEDDER_MLM = "MLM head carried in the embedder module, unused for embeddings"

# Released REALM embedder module (`cc_news_pretrained/embedder`, original §4.1).
REALM_EMBEDDER = TowerSpec(
    bert_prefix="module/module/module/bert/",
    heads=_projection_heads("module/module/dense", "module/module/LayerNorm"),
    ignored_prefixes={"module/module/module/cls/": _UNUSED_EMBEDDER_MLM})
# Released REALM knowledge-augmented encoder (`cc_news_pretrained/bert`) and Google BERT TF1.
PLAIN_BERT = TowerSpec(bert_prefix="bert/", mlm_prefix="cls/predictions/",
                       ignored_prefixes={"cls/seq_relationship/": "next-sentence head, not used"})
# Fine-tuned ORQA retriever derived from REALM (original §4.2), LayerNorm eps 1e-12.
ORQA_RETRIEVER_FROM_REALM = TowerSpec(
    bert_prefix="module/module/module/module/bert/",
    heads=_projection_heads("module/module/module/dense", "module/module/module/LayerNorm"),
    ignored_prefixes={"module/module/module/module/cls/": _UNUSED_EMBEDDER_MLM})
# Fine-tuned ORQA retriever derived from ICT (original §4.2), Keras LayerNorm eps 1e-3.
ORQA_RETRIEVER_FROM_ICT = TowerSpec(
    bert_prefix="module/module/bert/",
    heads=_projection_heads("module/dense", "module/layer_normalization"),
    ignored_prefixes={"module/module/cls/": _UNUSED_EMBEDDER_MLM})
# Fine-tuned ORQA reader (original §3.3, §4.2).
ORQA_READER = TowerSpec(
    bert_prefix="reader/module/bert/",
    heads={
        "span_projection/kernel": "reader/dense/kernel",
        "span_projection/bias": "reader/dense/bias",
        "span_output/kernel": "reader/dense_1/kernel",
        "span_output/bias": "reader/dense_1/bias",
        "span_layer_norm/gamma": "reader/layer_normalization/gamma",
        "span_layer_norm/beta": "reader/layer_normalization/beta",
    },
    ignored_prefixes={"reader/module/cls/": "MLM head of the reader BERT, unused by span scoring"})

EMBEDDER_EPSILON = {"realm": 1e-12, "ict": 1e-3}


def detect_orqa_retriever(names) -> Tuple[str, TowerSpec]:
  """Picks the ORQA retriever variant ("realm" or "ict") from the checkpoint's variable names."""
  names = list(names)
  has = lambda prefix: any(n.startswith(prefix) for n in names)
  if has(ORQA_RETRIEVER_FROM_REALM.bert_prefix):
    return "realm", ORQA_RETRIEVER_FROM_REALM
  if has(ORQA_RETRIEVER_FROM_ICT.bert_prefix):
    return "ict", ORQA_RETRIEVER_FROM_ICT
  raise ValueError(
      "ORQA checkpoint has neither a REALM-derived retriever "
      f"({ORQA_RETRIEVER_FROM_REALM.bert_prefix}...) nor an ICT-derived one "
      f"({ORQA_RETRIEVER_FROM_ICT.bert_prefix}...)")


def skip_reason(name: str) -> Optional[str]:
  """Reason a source name is never loaded (optimizer state / bookkeeping), else None."""
  for p in OPTIMIZER_PATTERNS:
    if p in name:
      return "global_step" if p == "global_step" else "optimizer slot"
  return None


# ---- Hugging Face BERT names (reference: transformers `BertForPreTraining` state dict) ----

_HF_LEAF = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta"}


def hf_to_canonical(hf_name: str) -> Tuple[Optional[str], bool]:
  """HF BERT parameter name -> (canonical TF1 name or None if not a model weight, transpose?).

  `bert.encoder.layer.3.attention.self.query.weight` -> (`bert/encoder/layer_3/attention/self/query/kernel`,
  True): HF Linear weights are [out, in], TF kernels [in, out]. Embedding tables are not transposed,
  LayerNorm `weight`/`bias` become `gamma`/`beta`, `cls.predictions.bias` becomes `output_bias`.
  Names without a `bert.` prefix (a bare `BertModel`) are treated as the encoder.
  """
  name = hf_name
  if name.startswith(("embeddings.", "encoder.", "pooler.")):
    name = "bert." + name
  if name in ("cls.predictions.bias",):
    return "cls/predictions/output_bias", False
  if name.startswith("cls.predictions.decoder.") or name.endswith("position_ids"):
    return None, False  # Decoder is tied to the word embeddings (bias duplicated); buffers.
  parts = name.split(".")
  if not parts or parts[0] not in ("bert", "cls"):
    return None, False
  out = []
  i = 0
  while i < len(parts) - 1:
    if parts[i] == "layer" and i + 1 < len(parts) - 1 and parts[i + 1].isdigit():
      out.append(f"layer_{parts[i + 1]}")
      i += 2
      continue
    out.append(parts[i])
    i += 1
  leaf = parts[-1]
  if out and out[-1].endswith("_embeddings") and leaf == "weight":
    return "/".join(out), False
  if out and out[-1] == "LayerNorm":
    leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
    return "/".join(out + [leaf]), False
  if leaf not in _HF_LEAF:
    return None, False
  return "/".join(out + [_HF_LEAF[leaf]]), leaf == "weight"


def hf_skip_reason(hf_name: str) -> Optional[str]:
  """Why a Hugging Face tensor that is not a model weight here is not loaded, else None."""
  if hf_name.endswith((".position_ids", ".token_type_ids")):
    return "buffer, not a weight"
  if hf_name.startswith("cls.predictions.decoder."):
    return ("MLM decoder: ours is tied to the word embeddings, its bias is cls.predictions.bias")
  return None
