r"""Converts original REALM / ORQA / BERT checkpoints into realm-tf2 exports + init checkpoints.

  python -m data_prep.convert_checkpoint --source_format=FORMAT --source=PATH --output_dir=DIR \
      [--vocab_file=...] [--num_attention_heads=N | --bert_config_file=...] [--do_lower_case]

FORMAT (contracts §4, variable names of original §4):
  realm     PATH = dir like `cc_news_pretrained` (embedder/variables/variables.*, bert/variables/variables.*)
            -> DIR/embedder (+ encoded/encoded.ckpt carried over), DIR/bert, DIR/{embedder,bert}_ckpt
  orqa      PATH = checkpoint prefix of a fine-tuned ORQA model (REALM- or ICT-derived retriever,
            detected from the names) -> DIR/retriever, DIR/reader, DIR/{retriever,reader}_ckpt
  bert_tf1  PATH = Google BERT TF1 checkpoint prefix (bert/..., cls/...) -> DIR/bert, DIR/bert_ckpt
  hf_bert   PATH = Hugging Face BERT dir -> DIR/bert, DIR/bert_ckpt. Any of `BertModel`,
            `BertForMaskedLM`, `BertForPreTraining` (weights with or without the `bert.`
            prefix) or a sentence-transformers model (transformer module at the top or in the
            directory `modules.json` names, e.g. `0_Transformer/`); `config.json`;
            `model.safetensors`, or `pytorch_model.bin` when PyTorch is installed; `vocab.txt`, or
            only `tokenizer.json` (its WordPiece table is written to DIR/vocab.txt).
            `do_lower_case` from `tokenizer_config.json` / the `tokenizer.json` normalizer unless
            --[no]do_lower_case is given.

Only variables are read (`tf.train.load_checkpoint`; no TF1 graph). Sizes come from the variable
shapes (a config stating a different size is an error naming both), the head count from
--num_attention_heads, --bert_config_file / config.json, else 12; the activation from the config's
`hidden_act` (Hugging Face "gelu" is the exact erf GELU, ours "gelu_exact"; Google BERT's "gelu"
and HF's "gelu_new" / "gelu_pytorch_tanh" / "gelu_fast" are the tanh form, ours "gelu").
Every Keras variable is assigned exactly once from a named source variable (shape-checked); a
missing source variable is an error naming it. Exceptions: a source without the whole MLM head
(`cls/predictions/...`, e.g. a `BertModel` or a sentence encoder) or without the whole pooler gets
that part initialised as BERT initialises it (truncated normal(initializer_range) kernels, zero
biases, LayerNorm gamma 1 / beta 0; the MLM decoder is always the word-embedding table), with a
warning and an "initialised" entry in the report. Optimizer slots, global_step, unused heads and
unknown names are skipped and listed in the printed report and in DIR/conversion_report.json.

DIR/model_config.yaml holds the converted model's size (`task.model.bert`, and `projection_size` /
`embedder_layer_norm_epsilon` / `span_hidden_size` / `reader_layer_norm_epsilon` where the source
has them, `embedder_pooling` for a sentence-transformers model pooling with the mean or [CLS]);
pass it to run_pretrain.py / run_finetune.py as `--config_file` so the model built there matches
the weights.

Init checkpoints are object-based: `tf.train.Checkpoint(model=m).read(DIR/<tower>_ckpt/ckpt)` with `m` a
`RealmEmbedder` / `KnowledgeAugmentedEncoder` / `OrqaReader` built from `DIR/<tower>_ckpt/config.json`
(see `build_model_from_config`).
"""
import json
import os
import zlib
from typing import Dict, List, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras
import yaml

from data_prep import checkpoint_names as names_lib
from data_prep import checkpoint_sources
from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2.export import bert_export
from realm_tf2.export import embedder_export
from realm_tf2.export import reader_export
from realm_tf2.modeling import bert as bert_lib
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import knowledge_encoder as ke_lib
from realm_tf2.modeling import reader as reader_lib
from realm_tf2.training import startup_checks

FORMATS = ("realm", "orqa", "bert_tf1", "hf_bert")
DEFAULT_NUM_HEADS = 12
MODEL_CONFIG_FILE = startup_checks.MODEL_CONFIG_FILE  # where the start-up checks look for it
REPORT_FILE = startup_checks.CONVERSION_REPORT_FILE
# HF's "gelu" is the exact erf gelu; BERT/Model Garden's "gelu" is the tanh approximation
# (`realm_tf2.modeling.bert.get_activation` knows both names).
EXACT_GELU = "gelu_exact"
_TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Hugging Face `hidden_act` -> our `BertConfig.hidden_activation`; other names pass through.
HF_ACTIVATIONS = {"gelu": EXACT_GELU, "gelu_python": EXACT_GELU,
                  **{name: "gelu" for name in _TANH_GELU_NAMES}}
# `task.model.bert` fields written to model_config.yaml (what `--config_file` takes).
MODEL_CONFIG_BERT_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                            "intermediate_size", "hidden_activation", "dropout_rate",
                            "attention_dropout_rate", "max_position_embeddings", "type_vocab_size",
                            "initializer_range")
# Source-config keys (Google BERT / Hugging Face config.json) checked against the variable shapes.
_CONFIG_SIZE_KEYS = (("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"),
                     ("num_hidden_layers", "num_layers"),
                     ("intermediate_size", "intermediate_size"),
                     ("max_position_embeddings", "max_position_embeddings"),
                     ("type_vocab_size", "type_vocab_size"))


class ConversionReport:
  """What was loaded and what was skipped (name -> reason), per source."""

  def __init__(self, source_format: str, source: str):
    self.source_format = source_format
    self.source = source
    self.towers: Dict[str, dict] = {}
    self.skipped: Dict[str, str] = {}
    self.initialised: Dict[str, Dict[str, str]] = {}  # tower -> canonical name -> how
    self.vocab_file: Optional[str] = None
    self.vocab_from: Optional[str] = None  # tokenizer.json the vocab was extracted from
    self.model_config_file: Optional[str] = None
    self.model_config_conflicts: List[str] = []
    self.notes: List[str] = []

  def to_json(self) -> dict:
    return {"source_format": self.source_format, "source": self.source, "towers": self.towers,
            "initialised": self.initialised, "skipped": dict(sorted(self.skipped.items())),
            "vocab_file": self.vocab_file, "vocab_from": self.vocab_from,
            "model_config_file": self.model_config_file,
            "model_config_conflicts": self.model_config_conflicts, "notes": self.notes}

  def summary(self) -> str:
    lines = [f"converted {self.source_format} checkpoint {self.source}"]
    for tower, info in self.towers.items():
      lines.append(f"  {tower}: {info['num_loaded']} source variables loaded -> {info['export_dir']}")
    for tower, names in self.initialised.items():
      lines.append(f"  {tower}: {len(names)} variables not in the source, initialised as BERT "
                   "does:")
      lines.extend(f"    {name}: {how}" for name, how in names.items())
    if self.vocab_from:
      lines.append(f"  vocab {self.vocab_file} extracted from {self.vocab_from}")
    if self.model_config_file:
      lines.append(f"  model size -> {self.model_config_file} (pass it as --config_file)")
    for conflict in self.model_config_conflicts:
      lines.append(f"  WARNING: towers differ, {conflict}")
    lines.extend(f"  NOTE: {note}" for note in self.notes)
    lines.append(f"  skipped {len(self.skipped)} names:")
    for name, reason in sorted(self.skipped.items()):
      lines.append(f"    {name}: {reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Configs from shapes.


def read_json_config(path: str) -> dict:
  """A BERT JSON config (`bert_config.json`, HF `config.json`); errors name the file."""
  config = checkpoint_sources.read_json(path)
  if not isinstance(config, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
  return config


def hidden_activation(json_config: Optional[dict], hugging_face: bool,
                      where: str = "config") -> str:
  """Our `BertConfig.hidden_activation` for a source config's `hidden_act` (default "gelu").

  Args:
    json_config: The source's BERT config (Google `bert_config.json` or HF `config.json`), or None.
    hugging_face: True for Hugging Face configs, whose "gelu" is the exact erf GELU ("gelu_exact");
      Google BERT's "gelu" is the tanh approximation (ours "gelu"), as are HF's "gelu_new",
      "gelu_pytorch_tanh" and "gelu_fast".
    where: The config's path, for the error message.
  Raises:
    ValueError: naming `where` and the value when `bert.get_activation` does not know it.
  """
  act = (json_config or {}).get("hidden_act", "gelu")
  if not isinstance(act, str):
    raise ValueError(f"{where}: hidden_act={act!r} is not an activation name")
  if hugging_face:
    name = HF_ACTIVATIONS.get(act, act)
  else:  # Google BERT's "gelu" already is the tanh form
    name = "gelu" if act in _TANH_GELU_NAMES else act
  try:
    bert_lib.get_activation(name)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{where}: hidden_act={act!r} is not an activation realm-tf2 supports "
                     f"('gelu', 'gelu_exact' or a tf_keras activation name): {e}") from e
  return name


def _check_config_sizes(config: configs.BertConfig, json_config: Optional[dict], where: str):
  """A size stated in the source's JSON config must equal the one read from the variable shapes."""
  for key, field in _CONFIG_SIZE_KEYS:
    if json_config and key in json_config and int(json_config[key]) != getattr(config, field):
      raise ValueError(f"{where}: {key}={json_config[key]} but the checkpoint's variables have "
                       f"{field}={getattr(config, field)}")


def infer_bert_config(source: checkpoint_sources.VariableSource, bert_prefix: str,
                      num_heads: Optional[int], json_config: Optional[dict] = None,
                      exact_gelu: bool = False, config_path: str = "config") -> configs.BertConfig:
  """BertConfig from the variable shapes under `bert_prefix` (+ heads/activation from flags/config).

  Args:
    source: The variables.
    bert_prefix: Source prefix standing for the canonical `bert/`.
    num_heads: --num_attention_heads, else `json_config["num_attention_heads"]`, else 12.
    json_config: The source's BERT JSON config, if any; the sizes it states must match the shapes.
    exact_gelu: Read `hidden_act` as a Hugging Face config does ("gelu" = exact erf GELU).
    config_path: Path of `json_config`, for error messages.
  """
  def shape(canonical):
    name = bert_prefix + canonical[len("bert/"):]
    if name not in source:
      raise KeyError(f"{source.description}: missing expected variable '{name}'")
    return source.shapes[name]

  vocab_size, hidden = shape("bert/embeddings/word_embeddings")
  rel = [n[len(bert_prefix):] for n in source.shapes if n.startswith(bert_prefix)]
  num_layers = names_lib.count_layers("bert/" + n for n in rel)
  if num_layers == 0:
    raise KeyError(f"{source.description}: no '{bert_prefix}encoder/layer_N/...' variables")
  json_config = json_config or {}
  heads = num_heads or json_config.get("num_attention_heads") or DEFAULT_NUM_HEADS
  if hidden % heads:
    raise ValueError(f"hidden size {hidden} (from {bert_prefix}embeddings/word_embeddings) is not "
                     f"divisible by num_attention_heads={heads}; pass --num_attention_heads")
  activation = hidden_activation(json_config, hugging_face=exact_gelu, where=config_path)
  config = configs.BertConfig(
      vocab_size=int(vocab_size), hidden_size=int(hidden), num_layers=num_layers,
      num_attention_heads=int(heads),
      intermediate_size=int(shape("bert/encoder/layer_0/intermediate/dense/kernel")[1]),
      hidden_activation=activation,
      dropout_rate=float(json_config.get("hidden_dropout_prob", 0.1)),
      attention_dropout_rate=float(json_config.get("attention_probs_dropout_prob", 0.1)),
      max_position_embeddings=int(shape("bert/embeddings/position_embeddings")[0]),
      type_vocab_size=int(shape("bert/embeddings/token_type_embeddings")[0]),
      initializer_range=float(json_config.get("initializer_range", 0.02)))
  _check_config_sizes(config, json_config, config_path)
  return config


# ---------------------------------------------------------------------------------------------------
# Assignment.


def bert_initial_value(how: str, shape, stddev: float, name: str) -> np.ndarray:
  """BERT's initial value of a variable absent from the source.

  Args:
    how: "truncated_normal" (Keras' TruncatedNormal(stddev), as `build_bert_encoder` /
      `build_masked_lm` initialise kernels), "zeros" or "ones".
    shape: Variable shape.
    stddev: `initializer_range`.
    name: Canonical variable name; its CRC32 seeds the draw, so a conversion is reproducible and
      two kernels of the same shape differ.
  """
  if how == "truncated_normal":
    seed = zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
    return tf_keras.initializers.TruncatedNormal(stddev=stddev, seed=seed)(shape).numpy()
  if how in ("zeros", "ones"):
    return getattr(np, how)(shape, np.float32)
  raise ValueError(f"unknown initialisation {how!r}")


# How BERT initialises the parts a source may lack (google-research/bert `create_initializer`).
MLM_HEAD_INIT = {
    "cls/predictions/transform/dense/kernel": "truncated_normal",
    "cls/predictions/transform/dense/bias": "zeros",
    "cls/predictions/transform/LayerNorm/gamma": "ones",
    "cls/predictions/transform/LayerNorm/beta": "zeros",
    "cls/predictions/output_bias": "zeros",
}
POOLER_INIT = {"bert/pooler/dense/kernel": "truncated_normal", "bert/pooler/dense/bias": "zeros"}


class _Assigner:
  """Assigns source arrays to model variables, each variable exactly once, shape-checked.

  A part the source lacks entirely (the MLM head, the pooler) is initialised as BERT does instead
  and recorded in `initialised` (canonical name -> how); a part present only in pieces is an error.
  """

  def __init__(self, source: checkpoint_sources.VariableSource, initializer_range: float = 0.02):
    self.source = source
    self.initializer_range = initializer_range
    self.assigned: Dict[int, str] = {}  # id(variable) -> source name (or "initialised <name>")
    self.initialised: Dict[str, str] = {}  # canonical name -> how
    self.num_loaded = 0

  def _absent(self, source_names) -> bool:
    """True when none of `source_names` is in the source (the whole part is missing)."""
    return not any(n in self.source for n in source_names)

  def initialise(self, variable: tf.Variable, canonical: str, how: str):
    """Sets `variable` to BERT's initial value (`bert_initial_value`) and records it."""
    if id(variable) in self.assigned:
      raise ValueError(f"model variable {variable.name} assigned twice "
                       f"({self.assigned[id(variable)]} and initialised {canonical})")
    value = bert_initial_value(how, tuple(variable.shape), self.initializer_range, canonical)
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
    self.assigned[id(variable)] = f"initialised {canonical}"
    stddev = f"(stddev={self.initializer_range})" if how == "truncated_normal" else ""
    self.initialised[canonical] = how + stddev

  def assign(self, variable: tf.Variable, source_name: str, new_shape=None):
    value = self.source.get(source_name)
    if new_shape is not None:
      value = np.reshape(value, new_shape)
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f"{self.source.description}: '{source_name}' has shape {value.shape}, "
                       f"model variable {variable.name} needs {tuple(variable.shape)}")
    if id(variable) in self.assigned:
      raise ValueError(f"model variable {variable.name} assigned twice "
                       f"({self.assigned[id(variable)]} and {source_name})")
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
    self.assigned[id(variable)] = source_name
    self.num_loaded += 1

  def assign_encoder(self, encoder, bert_prefix: str, num_layers: int, num_heads: int):
    """Maps `<bert_prefix>...` onto a BertEncoderV2 via Model Garden's name table and reshapes."""
    by_suffix = {names_lib.keras_encoder_suffix(c): c for c in names_lib.bert_encoder_names(num_layers)}
    pooler_absent = self._absent(bert_prefix + c[len("bert/"):] for c in POOLER_INIT)
    for var in encoder.variables:
      parts = var.name.split(":")[0].split("/")
      matches = [by_suffix["/".join(parts[i:])] for i in range(len(parts))
                 if "/".join(parts[i:]) in by_suffix]
      if len(matches) != 1:
        raise ValueError(f"cannot map encoder variable {var.name} to a BERT name (matches: {matches})")
      canonical = matches[0]
      if pooler_absent and canonical in POOLER_INIT:
        self.initialise(var, canonical, POOLER_INIT[canonical])
        continue
      suffix = names_lib.keras_encoder_suffix(canonical)
      src = bert_prefix + canonical[len("bert/"):]
      if src not in self.source:
        raise KeyError(f"{self.source.description}: missing expected variable '{src}'")
      new_shape = names_lib.keras_encoder_shape(suffix, self.source.shapes[src], num_heads)
      self.assign(var, src, new_shape)

  def assign_mlm(self, masked_lm, mlm_prefix: str):
    """Loads the MLM head from `mlm_prefix...`, or initialises all of it when the source has none.

    The decoder needs nothing: our `MaskedLM` multiplies by the word-embedding table (tied).
    """
    sources = {c: mlm_prefix + c[len("cls/predictions/"):] for c in names_lib.MLM_HEAD_NAMES}
    absent = self._absent(sources.values())
    for canonical, path in names_lib.MLM_HEAD_NAMES.items():
      obj = masked_lm
      for attr in path:
        obj = getattr(obj, attr)
      if absent:
        self.initialise(obj, canonical, MLM_HEAD_INIT[canonical])
      else:
        self.assign(obj, sources[canonical])

  def assign_heads(self, model, heads: Dict[str, str]):
    """`heads`: "<model attribute>/<variable attribute>" -> source name."""
    for key, src in heads.items():
      layer_attr, var_attr = key.split("/")
      self.assign(getattr(getattr(model, layer_attr), var_attr), src)

  def check_complete(self, model, what: str):
    missing = [v.name for v in model.variables if id(v) not in self.assigned]
    if missing:
      raise ValueError(f"{what}: model variables left unassigned: {missing}")


_HEAD_ATTRS = {  # canonical head key (checkpoint_names) -> model attribute path
    "projection/kernel": "projection/kernel", "projection/bias": "projection/bias",
    "layer_norm/gamma": "layer_norm/gamma", "layer_norm/beta": "layer_norm/beta",
    "span_projection/kernel": "span_projection/kernel", "span_projection/bias": "span_projection/bias",
    "span_output/kernel": "span_output/kernel", "span_output/bias": "span_output/bias",
    "span_layer_norm/gamma": "span_layer_norm/gamma", "span_layer_norm/beta": "span_layer_norm/beta",
}


def _load_tower(model, source, spec: names_lib.TowerSpec, bert_config: configs.BertConfig,
                what: str) -> Tuple[int, Dict[str, str]]:
  """Fills every variable of `model`; returns (source variables loaded, {initialised name: how})."""
  assigner = _Assigner(source, bert_config.initializer_range)
  assigner.assign_encoder(model.encoder, spec.bert_prefix, bert_config.num_layers,
                          bert_config.num_attention_heads)
  if spec.mlm_prefix is not None:
    assigner.assign_mlm(model.masked_lm, spec.mlm_prefix)
  assigner.assign_heads(model, {_HEAD_ATTRS[k]: v for k, v in spec.heads.items()})
  assigner.check_complete(model, what)
  if assigner.initialised:
    parts = sorted({"pooler" if n.startswith("bert/pooler/") else "MLM head"
                    for n in assigner.initialised})
    logging.warning("%s: %s has no %s; initialised as BERT initialises it: %s", what,
                    source.description, " and no ".join(parts),
                    ", ".join(f"{n} = {h}" for n, h in assigner.initialised.items()))
  return assigner.num_loaded, assigner.initialised


def list_skipped(source: checkpoint_sources.VariableSource, specs: List[names_lib.TowerSpec],
                 report: ConversionReport, prefix_label: str = ""):
  """Records every source name that was not loaded, with the reason."""
  for name in source.names():
    if name in source.consumed:
      continue
    reason = names_lib.skip_reason(name)
    if reason is None:
      for spec in specs:
        for p, why in spec.ignored_prefixes.items():
          if name.startswith(p):
            reason = why
      hf = getattr(source, "hf_names", {}).get(name)
      if reason is None and hf:
        reason = names_lib.hf_skip_reason(hf)
      if reason is None:
        reason = "unknown name, not loaded" + (f" (HF {hf})" if hf and hf != name else "")
    report.skipped[prefix_label + name] = reason


# ---------------------------------------------------------------------------------------------------
# Writing.


def _write_init_checkpoint(model, config: dict, ckpt_dir: str):
  """Object-based `tf.train.Checkpoint(model=model)` at `ckpt_dir/ckpt` + config.json, atomically."""
  with io_utils.atomic_dir(ckpt_dir) as tmp:
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, "ckpt"))
    tf.compat.v1.train.update_checkpoint_state(tmp, "ckpt")  # relative path: stays valid after the rename
    with tf.io.gfile.GFile(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)


def build_model_from_config(config: dict):
  """Builds the (randomly initialised) model described by a `<tower>_ckpt/config.json`."""
  bert_config = configs.BertConfig(**config["bert"])
  kind = config["model"]
  if kind == "RealmEmbedder":
    return embedder_lib.RealmEmbedder(bert_config, projection_size=config["projection_size"],
                                      layer_norm_epsilon=config["layer_norm_epsilon"])
  if kind == "KnowledgeAugmentedEncoder":
    return ke_lib.KnowledgeAugmentedEncoder(bert_config)
  if kind == "OrqaReader":
    return reader_lib.OrqaReader(bert_config, span_hidden_size=config["span_hidden_size"],
                                 max_span_width=config["max_span_width"],
                                 layer_norm_epsilon=config["layer_norm_epsilon"],
                                 seq_len=config["seq_len"])
  raise ValueError(f"unknown model kind {kind!r}")


def _check_vocab(vocab_file: str, vocab_size: int):
  if not vocab_file or not tf.io.gfile.exists(vocab_file):
    raise FileNotFoundError(
        f"vocab file {vocab_file!r} not found; pass --vocab_file (needed for tokenization_info)")
  with tf.io.gfile.GFile(vocab_file) as f:
    n = sum(1 for _ in f)
  if n > vocab_size:
    raise ValueError(f"{vocab_file} has {n} lines but the checkpoint's word_embeddings has only "
                     f"{vocab_size} rows")
  if n < vocab_size:
    logging.warning("%s has %d lines, word_embeddings has %d rows", vocab_file, n, vocab_size)


def _first_existing(*paths):
  for p in paths:
    if p and tf.io.gfile.exists(p):
      return p
  return None


def _bert_fields(bert_config: configs.BertConfig) -> dict:
  """The architecture fields of `bert_config` (`MODEL_CONFIG_BERT_FIELDS`), as a plain dict."""
  return {f: getattr(bert_config, f) for f in MODEL_CONFIG_BERT_FIELDS}


class _Converter:
  """Builds towers from a source and writes exports + init checkpoints.

  Args:
    report: Filled in as towers are written.
    output_dir: DIR.
    vocab_file / do_lower_case: Tokenization stored in every export.
    num_heads: --num_attention_heads (None: from `json_config`, else 12).
    json_config: The source's BERT JSON config, or None.
    hugging_face: `json_config` is a Hugging Face config.json (its "gelu" is the exact GELU).
    config_path: Path of `json_config`, for error messages.
  """

  def __init__(self, report, output_dir, vocab_file, do_lower_case, num_heads, json_config,
               hugging_face=False, config_path="config"):
    self.report = report
    self.output_dir = output_dir
    self.vocab_file = vocab_file
    self.do_lower_case = do_lower_case
    self.num_heads = num_heads
    self.json_config = json_config
    self.hugging_face = hugging_face
    self.config_path = config_path or "config"
    # tower -> `task.model` fields of the tower (`bert` + its head's sizes), for model_config.yaml.
    self.model_fields: Dict[str, dict] = {}

  def _bert_config(self, source, spec) -> configs.BertConfig:
    bert_config = infer_bert_config(source, spec.bert_prefix, self.num_heads, self.json_config,
                                    exact_gelu=self.hugging_face, config_path=self.config_path)
    _check_vocab(self.vocab_file, bert_config.vocab_size)
    return bert_config

  def _finish(self, tower, model, config, loaded, export_fn, model_fields, **export_kwargs):
    num_loaded, initialised = loaded
    export_dir = os.path.join(self.output_dir, tower)
    export_fn(model, self.vocab_file, self.do_lower_case, export_dir, **export_kwargs)
    ckpt_dir = os.path.join(self.output_dir, f"{tower}_ckpt")
    _write_init_checkpoint(model, config, ckpt_dir)
    self.report.towers[tower] = {"num_loaded": num_loaded, "export_dir": export_dir,
                                 "init_checkpoint": os.path.join(ckpt_dir, "ckpt"), "config": config}
    if initialised:
      self.report.initialised[tower] = dict(initialised)
    self.model_fields[tower] = model_fields

  def embedder(self, tower, source, spec, epsilon, encoded_checkpoint=None):
    bert_config = self._bert_config(source, spec)
    proj = spec.heads["projection/kernel"]
    if proj not in source:
      raise KeyError(f"{source.description}: missing expected variable '{proj}'")
    projection_size = int(source.shapes[proj][1])
    model = embedder_lib.RealmEmbedder(bert_config, projection_size=projection_size,
                                       layer_norm_epsilon=epsilon, name=tower)
    loaded = _load_tower(model, source, spec, bert_config, tower)
    config = {"model": "RealmEmbedder", "bert": _bert_fields(bert_config),
              "projection_size": projection_size, "layer_norm_epsilon": epsilon}
    self._finish(tower, model, config, loaded, embedder_export.export_embedder,
                 {"bert": _bert_fields(bert_config), "projection_size": projection_size,
                  "embedder_layer_norm_epsilon": epsilon},
                 encoded_checkpoint=encoded_checkpoint)

  def bert(self, tower, source, spec):
    bert_config = self._bert_config(source, spec)
    model = ke_lib.KnowledgeAugmentedEncoder(bert_config, name=tower)
    loaded = _load_tower(model, source, spec, bert_config, tower)
    config = {"model": "KnowledgeAugmentedEncoder", "bert": _bert_fields(bert_config)}
    self._finish(tower, model, config, loaded, bert_export.export_bert,
                 {"bert": _bert_fields(bert_config)})

  def reader(self, tower, source, spec, max_span_width, seq_len):
    bert_config = self._bert_config(source, spec)
    out_kernel = spec.heads["span_output/kernel"]
    if out_kernel not in source:
      raise KeyError(f"{source.description}: missing expected variable '{out_kernel}'")
    span_hidden = int(source.shapes[out_kernel][0])
    epsilon = 1e-3  # Keras default of the original span head (original §3.3).
    seq_len = min(seq_len, bert_config.max_position_embeddings)
    model = reader_lib.OrqaReader(bert_config, span_hidden_size=span_hidden,
                                  max_span_width=max_span_width, layer_norm_epsilon=epsilon,
                                  seq_len=seq_len, name=tower)
    loaded = _load_tower(model, source, spec, bert_config, tower)
    config = {"model": "OrqaReader", "bert": _bert_fields(bert_config),
              "span_hidden_size": span_hidden, "max_span_width": max_span_width,
              "layer_norm_epsilon": epsilon, "seq_len": seq_len}
    self._finish(tower, model, config, loaded, reader_export.export_reader,
                 {"bert": _bert_fields(bert_config), "span_hidden_size": span_hidden,
                  "reader_layer_norm_epsilon": epsilon})


def model_config_dict(model_fields: Dict[str, dict], conflicts: Optional[List[str]] = None) -> dict:
  """`{"task": {"model": ...}}` for model_config.yaml from the towers' `task.model` fields.

  Both towers of a run share `task.model.bert`; the last tower's BERT (the knowledge encoder /
  reader) is written. Fields on which towers disagree are appended to `conflicts` as
  "field: tower_a value vs tower_b value".
  """
  merged: dict = {}
  owner: Dict[str, str] = {}
  for tower, fields in model_fields.items():
    for key, value in fields.items():
      items = value.items() if key == "bert" else [(None, value)]
      for sub, v in items:
        path = f"bert.{sub}" if sub else key
        if path in owner and merged[path] != v and conflicts is not None:
          conflicts.append(f"task.model.{path}: {owner[path]} {merged[path]!r} vs {tower} {v!r}")
        merged[path], owner[path] = v, tower
  model: dict = {"bert": {}}
  for path, v in merged.items():
    if path.startswith("bert."):
      model["bert"][path[len("bert."):]] = v
    else:
      model[path] = v
  return {"task": {"model": model}}


def write_model_config(output_dir: str, model_fields: Dict[str, dict],
                       report: ConversionReport) -> str:
  """Writes DIR/model_config.yaml (accepted by `--config_file`); returns its path."""
  conflicts: List[str] = []
  content = model_config_dict(model_fields, conflicts)
  for conflict in conflicts:
    logging.warning("towers differ (realm-tf2 shares task.model.bert between them): %s", conflict)
  report.model_config_conflicts = conflicts
  header = (f"# Size of the model data_prep.convert_checkpoint converted from {report.source}\n"
            f"# ({report.source_format}); pass it as --config_file to run_pretrain.py / "
            "run_finetune.py.\n")
  path = os.path.join(output_dir, MODEL_CONFIG_FILE)
  io_utils.atomic_write_text(path, header + yaml.safe_dump(content, sort_keys=False,
                                                           default_flow_style=False))
  report.model_config_file = path
  return path


def _check_hf_config(json_config: dict, cfg_path: str):
  """Rejects Hugging Face configs this BERT cannot express, naming the field and value."""
  if json_config.get("model_type", "bert") != "bert":
    raise ValueError(f"{cfg_path}: model_type={json_config['model_type']!r}; hf_bert reads BERT "
                     "models (model_type 'bert')")
  if json_config.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{cfg_path}: position_embedding_type="
                     f"{json_config['position_embedding_type']!r}; only 'absolute' is supported")
  if "layer_norm_eps" in json_config and abs(json_config["layer_norm_eps"] - 1e-12) > 1e-15:
    raise ValueError(f"{cfg_path}: layer_norm_eps={json_config['layer_norm_eps']} is not BERT's "
                     "1e-12, which Model Garden's BertEncoderV2 hard-codes")


def _hf_vocab(layout: checkpoint_sources.HfBertLayout, vocab_file: Optional[str], output_dir: str,
              report: ConversionReport) -> Optional[str]:
  """--vocab_file, else the directory's vocab.txt, else tokenizer.json's table -> DIR/vocab.txt."""
  if vocab_file or layout.vocab_txt:
    return vocab_file or layout.vocab_txt
  if not layout.tokenizer_json:
    raise FileNotFoundError(f"{layout.model_dir}: neither vocab.txt nor tokenizer.json found; pass "
                            "--vocab_file")
  tokens = checkpoint_sources.vocab_from_tokenizer_json(layout.tokenizer_json)
  path = os.path.join(output_dir, "vocab.txt")
  io_utils.atomic_write_text(path, "\n".join(tokens) + "\n")
  report.vocab_from = layout.tokenizer_json
  logging.info("vocab: %d tokens of %s written to %s", len(tokens), layout.tokenizer_json, path)
  return path


# sentence-transformers Pooling modes -> `task.model.embedder_pooling` (what our embedders can do).
_SENTENCE_POOLING = {("mean_tokens",): "mean", ("cls_token",): "cls"}


def _embedder_pooling(layout: checkpoint_sources.HfBertLayout,
                      report: ConversionReport) -> Optional[str]:
  """`task.model.embedder_pooling` matching a sentence encoder's Pooling module, noted in the report;
  None without a Pooling module or for modes our embedders do not have (noted too)."""
  modes = checkpoint_sources.sentence_pooling_modes(layout)
  if not modes:
    return None
  pooling = _SENTENCE_POOLING.get(tuple(modes))
  if pooling:
    report.notes.append(f"{layout.pooling_config_json}: the sentence encoder pools with "
                        f"{modes[0]}; model_config.yaml sets task.model.embedder_pooling: {pooling}")
    logging.info("%s", report.notes[-1])
  else:
    report.notes.append(f"{layout.pooling_config_json}: the sentence encoder pools with "
                        f"{'+'.join(modes)}, which realm-tf2 embedders do not offer (cls, mean); "
                        "task.model.embedder_pooling is left to the run's config")
    logging.warning("%s", report.notes[-1])
  return pooling


def convert(source_format: str, source: str, output_dir: str, vocab_file: Optional[str] = None,
            num_attention_heads: Optional[int] = None, bert_config_file: Optional[str] = None,
            do_lower_case: Optional[bool] = None, max_span_width: int = 10,
            reader_seq_len: int = 320, encoded_checkpoint: Optional[str] = None) -> ConversionReport:
  """Converts `source` (see module docstring) into `output_dir`; returns the report (also written).

  Writes `output_dir/<tower>` exports, `<tower>_ckpt` init checkpoints, `model_config.yaml` and
  `conversion_report.json` (and `vocab.txt` when the vocab came from a `tokenizer.json`).
  """
  if source_format not in FORMATS:
    raise ValueError(f"--source_format must be one of {FORMATS}, got {source_format!r}")
  json_config = read_json_config(bert_config_file) if bert_config_file else None
  report = ConversionReport(source_format, source)
  lower = True if do_lower_case is None else do_lower_case
  tf.io.gfile.makedirs(output_dir)

  if source_format == "realm":
    emb_src = checkpoint_sources.tf1_checkpoint_source(
        os.path.join(source, "embedder", "variables", "variables"))
    bert_src = checkpoint_sources.tf1_checkpoint_source(
        os.path.join(source, "bert", "variables", "variables"))
    vocab = _first_existing(vocab_file, os.path.join(source, "embedder", "assets", "vocab.txt"),
                            os.path.join(source, "bert", "assets", "vocab.txt"))
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config,
                      config_path=bert_config_file)
    encoded = os.path.join(source, "embedder", "encoded", "encoded.ckpt")
    encoded = encoded_checkpoint or (encoded if tf.io.gfile.exists(encoded + ".index") else None)
    conv.embedder("embedder", emb_src, names_lib.REALM_EMBEDDER, names_lib.EMBEDDER_EPSILON["realm"],
                  encoded_checkpoint=encoded)
    conv.bert("bert", bert_src, names_lib.PLAIN_BERT)
    list_skipped(emb_src, [names_lib.REALM_EMBEDDER], report, "embedder:")
    list_skipped(bert_src, [names_lib.PLAIN_BERT], report, "bert:")
    report.towers["embedder"]["encoded_checkpoint"] = encoded
  elif source_format == "orqa":
    src = checkpoint_sources.tf1_checkpoint_source(source)
    variant, retriever_spec = names_lib.detect_orqa_retriever(src.names())
    vocab = _first_existing(vocab_file, os.path.join(os.path.dirname(source), "vocab.txt"))
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config,
                      config_path=bert_config_file)
    conv.embedder("retriever", src, retriever_spec, names_lib.EMBEDDER_EPSILON[variant],
                  encoded_checkpoint=encoded_checkpoint)
    conv.reader("reader", src, names_lib.ORQA_READER, max_span_width, reader_seq_len)
    list_skipped(src, [retriever_spec, names_lib.ORQA_READER], report)
    report.towers["retriever"]["variant"] = variant
  elif source_format == "bert_tf1":
    src = checkpoint_sources.tf1_checkpoint_source(source)
    vocab = _first_existing(vocab_file, os.path.join(os.path.dirname(source), "vocab.txt"))
    cfg_path = bert_config_file
    if json_config is None:
      default_cfg = os.path.join(os.path.dirname(source), "bert_config.json")
      if tf.io.gfile.exists(default_cfg):
        json_config, cfg_path = read_json_config(default_cfg), default_cfg
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config,
                      config_path=cfg_path)
    conv.bert("bert", src, names_lib.PLAIN_BERT)
    list_skipped(src, [names_lib.PLAIN_BERT], report)
  else:  # hf_bert
    layout = checkpoint_sources.locate_hf_bert(source)
    src = checkpoint_sources.hf_bert_source(layout.model_dir)
    cfg_path = bert_config_file or layout.config_json
    if not cfg_path:
      raise FileNotFoundError(f"{layout.model_dir}: no config.json (Hugging Face model directories "
                              "carry one); pass --bert_config_file")
    json_config = read_json_config(cfg_path)
    _check_hf_config(json_config, cfg_path)
    if do_lower_case is None:
      found = checkpoint_sources.hf_do_lower_case(layout)
      lower = True if found is None else found
    vocab = _hf_vocab(layout, vocab_file, output_dir, report)
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config,
                      hugging_face=True, config_path=cfg_path)
    conv.bert("bert", src, names_lib.PLAIN_BERT)
    list_skipped(src, [names_lib.PLAIN_BERT], report)
    pooling = _embedder_pooling(layout, report)
    if pooling:
      conv.model_fields["bert"]["embedder_pooling"] = pooling

  report.vocab_file = conv.vocab_file
  write_model_config(output_dir, conv.model_fields, report)
  io_utils.atomic_write_text(os.path.join(output_dir, REPORT_FILE),
                             json.dumps(report.to_json(), indent=2))
  return report


# ---------------------------------------------------------------------------------------------------
# CLI.

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("source_format", None, list(FORMATS), "Layout of --source (see module doc).")
  flags.DEFINE_string("source", None, "Checkpoint prefix (orqa, bert_tf1) or directory (realm, hf_bert).")
  flags.DEFINE_string("output_dir", None, "Where exports and init checkpoints are written.")
  flags.DEFINE_string("vocab_file", None, "vocab.txt; default: the one inside/beside --source "
                      "(hf_bert: vocab.txt, else tokenizer.json's WordPiece table).")
  flags.DEFINE_integer("num_attention_heads", None, "Heads per layer (default: config, else 12).")
  flags.DEFINE_string("bert_config_file", None, "BERT JSON config (num_attention_heads, hidden_act).")
  flags.DEFINE_bool("do_lower_case", None, "Tokenizer lowercasing (default: HF "
                    "tokenizer_config.json / tokenizer.json normalizer, else True).")
  flags.DEFINE_integer("max_span_width", 10, "orqa: reader max span width.")
  flags.DEFINE_integer("reader_seq_len", 320, "orqa: reader sequence length stored in the config.")
  flags.DEFINE_string("encoded_checkpoint", None,
                      "Optional block_emb checkpoint prefix copied to <embedder>/encoded/encoded.ckpt.")
  flags.mark_flags_as_required(["source_format", "source", "output_dir"])
  flags.register_validator(
      "num_attention_heads", lambda v: v is None or v > 0, "--num_attention_heads must be positive")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  report = convert(FLAGS.source_format, FLAGS.source, FLAGS.output_dir, vocab_file=FLAGS.vocab_file,
                   num_attention_heads=FLAGS.num_attention_heads,
                   bert_config_file=FLAGS.bert_config_file, do_lower_case=FLAGS.do_lower_case,
                   max_span_width=FLAGS.max_span_width, reader_seq_len=FLAGS.reader_seq_len,
                   encoded_checkpoint=FLAGS.encoded_checkpoint)
  print(report.summary())


if __name__ == "__main__":
  define_flags()
  app.run(main)
