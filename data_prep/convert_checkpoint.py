r"""Converts original REALM / ORQA / BERT checkpoints into realm-tf2 exports + init checkpoints.

  python -m data_prep.convert_checkpoint --source_format=FORMAT --source=PATH --output_dir=DIR \
      [--vocab_file=...] [--num_attention_heads=N | --bert_config_file=...] [--do_lower_case]

FORMAT (CONTRACTS §4, variable names of reference §4):
  realm     PATH = dir like `cc_news_pretrained` (embedder/variables/variables.*, bert/variables/variables.*)
            -> DIR/embedder (+ encoded/encoded.ckpt carried over), DIR/bert, DIR/{embedder,bert}_ckpt
  orqa      PATH = checkpoint prefix of a fine-tuned ORQA model (REALM- or ICT-derived retriever,
            detected from the names) -> DIR/retriever, DIR/reader, DIR/{retriever,reader}_ckpt
  bert_tf1  PATH = Google BERT TF1 checkpoint prefix (bert/..., cls/...) -> DIR/bert, DIR/bert_ckpt
  hf_bert   PATH = Hugging Face BERT dir (config.json, model.safetensors | pytorch_model.bin, vocab.txt)
            -> DIR/bert, DIR/bert_ckpt

Only variables are read (`tf.train.load_checkpoint`; no TF1 graph). Sizes come from the variable
shapes, the head count from --num_attention_heads, --bert_config_file / config.json, else 12.
Every Keras variable is assigned exactly once from a named source variable (shape-checked); a missing
source variable is an error naming it. Optimizer slots, global_step, unused heads and unknown names are
skipped and listed in the printed report and in DIR/conversion_report.json.

Init checkpoints are object-based: `tf.train.Checkpoint(model=m).read(DIR/<tower>_ckpt/ckpt)` with `m` a
`RealmEmbedder` / `KnowledgeAugmentedEncoder` / `OrqaReader` built from `DIR/<tower>_ckpt/config.json`
(see `build_model_from_config`).
"""
import json
import os
from typing import Dict, List, Optional

from absl import app
from absl import flags
from absl import logging
import numpy as np
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from data_prep import checkpoint_names as names_lib
from data_prep import checkpoint_sources
from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2.export import common as export_common
from realm_tf2.export import bert_export
from realm_tf2.export import embedder_export
from realm_tf2.export import reader_export
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import knowledge_encoder as ke_lib
from realm_tf2.modeling import reader as reader_lib

FORMATS = ("realm", "orqa", "bert_tf1", "hf_bert")
DEFAULT_NUM_HEADS = 12
# HF's "gelu" is the exact erf gelu; BERT/Model Garden's "gelu" is the tanh approximation
# (`realm_tf2.modeling.bert.get_activation` knows both names).
EXACT_GELU = "gelu_exact"
_TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class ConversionReport:
  """What was loaded and what was skipped (name -> reason), per source."""

  def __init__(self, source_format: str, source: str):
    self.source_format = source_format
    self.source = source
    self.towers: Dict[str, dict] = {}
    self.skipped: Dict[str, str] = {}

  def to_json(self) -> dict:
    return {"source_format": self.source_format, "source": self.source, "towers": self.towers,
            "skipped": dict(sorted(self.skipped.items()))}

  def summary(self) -> str:
    lines = [f"converted {self.source_format} checkpoint {self.source}"]
    for tower, info in self.towers.items():
      lines.append(f"  {tower}: {info['num_loaded']} source variables loaded -> {info['export_dir']}")
    lines.append(f"  skipped {len(self.skipped)} names:")
    for name, reason in sorted(self.skipped.items()):
      lines.append(f"    {name}: {reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Configs from shapes.


def read_json_config(path: str) -> dict:
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from e


def _activation_from_config(cfg: dict) -> str:
  act = cfg.get("hidden_act", "gelu")
  if act in _TANH_GELU_NAMES:
    return "gelu"
  return act


def infer_bert_config(source: checkpoint_sources.VariableSource, bert_prefix: str,
                      num_heads: Optional[int], json_config: Optional[dict] = None,
                      exact_gelu: bool = False) -> configs.BertConfig:
  """BertConfig from the variable shapes under `bert_prefix` (+ heads/activation from flags/config)."""
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
  activation = _activation_from_config(json_config)
  if exact_gelu and json_config.get("hidden_act", "gelu") == "gelu":
    activation = EXACT_GELU
  return configs.BertConfig(
      vocab_size=int(vocab_size), hidden_size=int(hidden), num_layers=num_layers,
      num_attention_heads=int(heads),
      intermediate_size=int(shape("bert/encoder/layer_0/intermediate/dense/kernel")[1]),
      hidden_activation=activation,
      dropout_rate=float(json_config.get("hidden_dropout_prob", 0.1)),
      attention_dropout_rate=float(json_config.get("attention_probs_dropout_prob", 0.1)),
      max_position_embeddings=int(shape("bert/embeddings/position_embeddings")[0]),
      type_vocab_size=int(shape("bert/embeddings/token_type_embeddings")[0]),
      initializer_range=float(json_config.get("initializer_range", 0.02)))


# ---------------------------------------------------------------------------------------------------
# Assignment.


class _Assigner:
  """Assigns source arrays to model variables, each variable exactly once, shape-checked."""

  def __init__(self, source: checkpoint_sources.VariableSource):
    self.source = source
    self.assigned: Dict[int, str] = {}  # id(variable) -> source name
    self.num_loaded = 0

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
    for var in encoder.variables:
      parts = var.name.split(":")[0].split("/")
      matches = [by_suffix["/".join(parts[i:])] for i in range(len(parts))
                 if "/".join(parts[i:]) in by_suffix]
      if len(matches) != 1:
        raise ValueError(f"cannot map encoder variable {var.name} to a BERT name (matches: {matches})")
      canonical = matches[0]
      suffix = names_lib.keras_encoder_suffix(canonical)
      src = bert_prefix + canonical[len("bert/"):]
      if src not in self.source:
        raise KeyError(f"{self.source.description}: missing expected variable '{src}'")
      new_shape = names_lib.keras_encoder_shape(suffix, self.source.shapes[src], num_heads)
      self.assign(var, src, new_shape)

  def assign_mlm(self, masked_lm, mlm_prefix: str):
    for canonical, path in names_lib.MLM_HEAD_NAMES.items():
      obj = masked_lm
      for attr in path:
        obj = getattr(obj, attr)
      self.assign(obj, mlm_prefix + canonical[len("cls/predictions/"):])

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
                what: str) -> int:
  assigner = _Assigner(source)
  assigner.assign_encoder(model.encoder, spec.bert_prefix, bert_config.num_layers,
                          bert_config.num_attention_heads)
  if spec.mlm_prefix is not None:
    assigner.assign_mlm(model.masked_lm, spec.mlm_prefix)
  assigner.assign_heads(model, {_HEAD_ATTRS[k]: v for k, v in spec.heads.items()})
  assigner.check_complete(model, what)
  return assigner.num_loaded


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
      if reason is None:
        hf = getattr(source, "hf_names", {}).get(name)
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


class _Converter:
  """Builds towers from a source and writes exports + init checkpoints."""

  def __init__(self, report, output_dir, vocab_file, do_lower_case, num_heads, json_config):
    self.report = report
    self.output_dir = output_dir
    self.vocab_file = vocab_file
    self.do_lower_case = do_lower_case
    self.num_heads = num_heads
    self.json_config = json_config

  def _finish(self, tower, model, config, num_loaded, export_fn, **export_kwargs):
    export_dir = os.path.join(self.output_dir, tower)
    export_fn(model, self.vocab_file, self.do_lower_case, export_dir, **export_kwargs)
    ckpt_dir = os.path.join(self.output_dir, f"{tower}_ckpt")
    _write_init_checkpoint(model, config, ckpt_dir)
    self.report.towers[tower] = {"num_loaded": num_loaded, "export_dir": export_dir,
                                 "init_checkpoint": os.path.join(ckpt_dir, "ckpt"), "config": config}

  def embedder(self, tower, source, spec, epsilon, encoded_checkpoint=None, exact_gelu=False):
    bert_config = infer_bert_config(source, spec.bert_prefix, self.num_heads, self.json_config,
                                    exact_gelu)
    _check_vocab(self.vocab_file, bert_config.vocab_size)
    proj = spec.heads["projection/kernel"]
    if proj not in source:
      raise KeyError(f"{source.description}: missing expected variable '{proj}'")
    projection_size = int(source.shapes[proj][1])
    model = embedder_lib.RealmEmbedder(bert_config, projection_size=projection_size,
                                       layer_norm_epsilon=epsilon, name=tower)
    n = _load_tower(model, source, spec, bert_config, tower)
    config = {"model": "RealmEmbedder", "bert": bert_config.as_dict(),
              "projection_size": projection_size, "layer_norm_epsilon": epsilon}
    self._finish(tower, model, config, n, embedder_export.export_embedder,
                 encoded_checkpoint=encoded_checkpoint)

  def bert(self, tower, source, spec, exact_gelu=False):
    bert_config = infer_bert_config(source, spec.bert_prefix, self.num_heads, self.json_config,
                                    exact_gelu)
    _check_vocab(self.vocab_file, bert_config.vocab_size)
    model = ke_lib.KnowledgeAugmentedEncoder(bert_config, name=tower)
    n = _load_tower(model, source, spec, bert_config, tower)
    config = {"model": "KnowledgeAugmentedEncoder", "bert": bert_config.as_dict()}
    self._finish(tower, model, config, n, bert_export.export_bert)

  def reader(self, tower, source, spec, max_span_width, seq_len):
    bert_config = infer_bert_config(source, spec.bert_prefix, self.num_heads, self.json_config)
    _check_vocab(self.vocab_file, bert_config.vocab_size)
    out_kernel = spec.heads["span_output/kernel"]
    if out_kernel not in source:
      raise KeyError(f"{source.description}: missing expected variable '{out_kernel}'")
    span_hidden = int(source.shapes[out_kernel][0])
    epsilon = 1e-3  # Keras default of the original span head (reference §3.3).
    seq_len = min(seq_len, bert_config.max_position_embeddings)
    model = reader_lib.OrqaReader(bert_config, span_hidden_size=span_hidden,
                                  max_span_width=max_span_width, layer_norm_epsilon=epsilon,
                                  seq_len=seq_len, name=tower)
    n = _load_tower(model, source, spec, bert_config, tower)
    config = {"model": "OrqaReader", "bert": bert_config.as_dict(), "span_hidden_size": span_hidden,
              "max_span_width": max_span_width, "layer_norm_epsilon": epsilon, "seq_len": seq_len}
    self._finish(tower, model, config, n, reader_export.export_reader)


def convert(source_format: str, source: str, output_dir: str, vocab_file: Optional[str] = None,
            num_attention_heads: Optional[int] = None, bert_config_file: Optional[str] = None,
            do_lower_case: Optional[bool] = None, max_span_width: int = 10,
            reader_seq_len: int = 320, encoded_checkpoint: Optional[str] = None) -> ConversionReport:
  """Converts `source` (see module docstring) into `output_dir`; returns the report (also written)."""
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
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config)
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
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config)
    conv.embedder("retriever", src, retriever_spec, names_lib.EMBEDDER_EPSILON[variant],
                  encoded_checkpoint=encoded_checkpoint)
    conv.reader("reader", src, names_lib.ORQA_READER, max_span_width, reader_seq_len)
    list_skipped(src, [retriever_spec, names_lib.ORQA_READER], report)
    report.towers["retriever"]["variant"] = variant
  elif source_format == "bert_tf1":
    src = checkpoint_sources.tf1_checkpoint_source(source)
    vocab = _first_existing(vocab_file, os.path.join(os.path.dirname(source), "vocab.txt"))
    if json_config is None:
      default_cfg = os.path.join(os.path.dirname(source), "bert_config.json")
      json_config = read_json_config(default_cfg) if tf.io.gfile.exists(default_cfg) else None
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config)
    conv.bert("bert", src, names_lib.PLAIN_BERT)
    list_skipped(src, [names_lib.PLAIN_BERT], report)
  else:  # hf_bert
    src = checkpoint_sources.hf_bert_source(source)
    cfg_path = bert_config_file or os.path.join(source, "config.json")
    if not tf.io.gfile.exists(cfg_path):
      raise FileNotFoundError(f"{cfg_path} not found (HF BERT directories carry config.json)")
    json_config = read_json_config(cfg_path)
    tok_cfg = os.path.join(source, "tokenizer_config.json")
    if do_lower_case is None and tf.io.gfile.exists(tok_cfg):
      lower = bool(read_json_config(tok_cfg).get("do_lower_case", True))
    if "layer_norm_eps" in json_config and abs(json_config["layer_norm_eps"] - 1e-12) > 1e-15:
      raise ValueError(f"{cfg_path}: layer_norm_eps={json_config['layer_norm_eps']} is not BERT's "
                       "1e-12, which Model Garden's BertEncoderV2 hard-codes")
    vocab = _first_existing(vocab_file, os.path.join(source, "vocab.txt"))
    conv = _Converter(report, output_dir, vocab, lower, num_attention_heads, json_config)
    conv.bert("bert", src, names_lib.PLAIN_BERT, exact_gelu=True)
    list_skipped(src, [names_lib.PLAIN_BERT], report)

  with tf.io.gfile.GFile(os.path.join(output_dir, "conversion_report.json"), "w") as f:
    json.dump(report.to_json(), f, indent=2)
  return report


# ---------------------------------------------------------------------------------------------------
# CLI.

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("source_format", None, list(FORMATS), "Layout of --source (see module doc).")
  flags.DEFINE_string("source", None, "Checkpoint prefix (orqa, bert_tf1) or directory (realm, hf_bert).")
  flags.DEFINE_string("output_dir", None, "Where exports and init checkpoints are written.")
  flags.DEFINE_string("vocab_file", None, "vocab.txt; default: the one inside/beside --source.")
  flags.DEFINE_integer("num_attention_heads", None, "Heads per layer (default: config, else 12).")
  flags.DEFINE_string("bert_config_file", None, "BERT JSON config (num_attention_heads, hidden_act).")
  flags.DEFINE_bool("do_lower_case", None, "Tokenizer lowercasing (default: HF tokenizer config, else True).")
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
