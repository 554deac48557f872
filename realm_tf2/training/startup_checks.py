"""Start-up checks shared by run_pretrain.py and run_finetune.py: fail in seconds, with one message
listing every problem, instead of an exception deep in a stack trace minutes (or hours) later.

Each `check_*` returns a list of problem strings (empty = fine); `fail_if(tool, problems)` exits
with `"<tool>: cannot start:\\n  <problem>\\n  ..."` (non-zero exit through SystemExit).
"""
import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

from tensorflow.core.protobuf import trackable_object_graph_pb2
from realm_tf2 import io_utils

# Written by `data_prep.convert_checkpoint` next to its exports: the converted model's `task.model`
# (a `--config_file`) and the conversion report.
MODEL_CONFIG_FILE = "model_config.yaml"
CONVERSION_REPORT_FILE = "conversion_report.json"
# `task.model.bert` fields read from a BERT encoder's variable shapes
# (`hub_init.infer_bert_architecture`). The vocab size is `check_vocab_matches`' job (it also
# resolves vocab_size 0 from the vocab file).
SHAPE_FIELDS = ("hidden_size", "num_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size")
# Head fields of a converter `<tower>_ckpt/config.json`, per model class: task.model field -> key.
_HEAD_FIELDS = {
    "RealmEmbedder": (("projection_size", "projection_size"),
                      ("embedder_layer_norm_epsilon", "layer_norm_epsilon")),
    "OrqaReader": (("span_hidden_size", "span_hidden_size"),
                   ("reader_layer_norm_epsilon", "layer_norm_epsilon")),
}


def fail_if(tool: str, problems: Sequence[str]):
  """Raises SystemExit with all `problems` (one per line) if there are any."""
  problems = [p for p in problems if p]
  if problems:
    raise SystemExit(f"{tool}: cannot start:\n  " + "\n  ".join(problems))


def check_files(named_paths: Iterable[Tuple[str, Optional[str]]]) -> List[str]:
  """`(flag_name, path_or_glob)` pairs: every given path must exist / every glob must match."""
  problems = []
  for name, path in named_paths:
    if not path:
      continue
    if any(c in path for c in "*?[") or "," in path:
      try:
        io_utils.list_shards(path)
      except (ValueError, FileNotFoundError, tf.errors.OpError) as e:
        problems.append(f"{name}: '{path}' matches no file ({e})")
    elif not tf.io.gfile.exists(path):
      problems.append(f"{name}: '{path}' does not exist")
  return problems


def check_seq_lens(model_config, names: Sequence[str]) -> List[str]:
  """Each `task.model.<name>` must fit `bert.max_position_embeddings` (position table rows)."""
  limit = int(model_config.bert.max_position_embeddings)
  return [f"task.model.{n}={getattr(model_config, n)} exceeds task.model.bert.max_position_embeddings"
          f"={limit}" for n in names if int(getattr(model_config, n)) > limit]


def checkpoint_vocab_rows(source: str) -> Optional[int]:
  """Rows of the word-embedding table in an init source (export dir, run dir or prefix), if any."""
  from realm_tf2.modeling import init_utils  # pylint: disable=g-import-not-at-top
  prefix = init_utils.resolve_checkpoint(source)
  rows = set()
  for name, shape in tf.train.list_variables(prefix):
    if "word_embeddings" in name and "OPTIMIZER_SLOT" not in name and len(shape) == 2:
      rows.add(int(shape[0]))
  return max(rows) if rows else None


def check_vocab_matches(vocab_size: int, sources: Iterable[Tuple[str, Optional[str]]]) -> List[str]:
  """The model's vocab size must equal the embedding rows of every `(flag_name, init_source)`."""
  problems = []
  for name, source in sources:
    if not source:
      continue
    try:
      rows = checkpoint_vocab_rows(source)
    except (FileNotFoundError, ValueError, tf.errors.OpError) as e:
      problems.append(f"{name}: {e}")
      continue
    if rows is not None and rows != vocab_size:
      problems.append(f"{name}: '{source}' has a word-embedding table of {rows} rows but the vocab "
                      f"(--vocab_file / task.model.bert.vocab_size) has {vocab_size} entries")
  return problems


def _variable_names(reader) -> Dict[str, str]:
  """Checkpoint key -> the variable's name when saved, from the checkpoint's object graph.

  Object-based checkpoints (training runs, exports' `variables/variables`, TF Hub SavedModels) key
  tensors by object path (`model/encoder/_transformer_layers/0/...`, or `model_variables/3/...` in
  exports) but record each variable's own name (`bert/encoder/transformer/layer_0/...`) beside it.
  Name-based (TF1) checkpoints have no object graph: their keys are the names.
  """
  shapes = reader.get_variable_to_shape_map()
  if "_CHECKPOINTABLE_OBJECT_GRAPH" not in shapes:
    return {k: k for k in shapes}
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  names = {}
  for node in graph.nodes:
    for attr in node.attributes:
      if attr.checkpoint_key in shapes and attr.full_name:
        names[attr.checkpoint_key] = attr.full_name
  return names


def checkpoint_bert_architectures(source: str) -> List[Tuple[str, Dict[str, int]]]:
  """Architecture of every BERT encoder in an init source, read from its variable shapes.

  Args:
    source: Export dir, run dir, checkpoint prefix, converter `<tower>_ckpt` dir or a local TF Hub
      encoder (anything `init_utils.resolve_checkpoint` accepts).
  Returns:
    [(variable-name scope of the encoder, e.g. "bert/encoder", {field: value})], one entry per
    encoder (a REALM run holds two), fields `vocab_size` and `SHAPE_FIELDS`. Optimizer slots are
    ignored. Empty when no Model Garden BERT encoder is recognised.
  """
  from realm_tf2.modeling import hub_init  # pylint: disable=g-import-not-at-top
  from realm_tf2.modeling import init_utils  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(init_utils.resolve_checkpoint(source))
  shapes = reader.get_variable_to_shape_map()
  groups: Dict[str, Dict[str, Tuple[int, ...]]] = {}
  for key, name in _variable_names(reader).items():
    if key.startswith("optimizer/") or "OPTIMIZER_SLOT" in key:
      continue
    canonical = hub_init.canonical_name(name)
    if canonical is None or canonical.startswith("cls/"):
      continue
    scope = name.split(":")[0][:-len(canonical)].rstrip("/")
    groups.setdefault(scope, {})[canonical] = tuple(shapes[key])
  found = []
  for scope, group in sorted(groups.items()):
    try:
      found.append((scope, hub_init.infer_bert_architecture(group)))
    except (ValueError, KeyError):  # variables under an encoder-like name that are not a BERT
      continue
  return found


def converter_config(source: str) -> Optional[Tuple[str, dict]]:
  """The `<tower>_ckpt/config.json` data_prep.convert_checkpoint wrote for `source`, if any.

  Found for the `<tower>_ckpt` dir, its `ckpt` prefix, or the `<tower>` export beside it.
  Returns (path, config) with config {"model": class name, "bert": {...}, ...}, else None.
  """
  source = source.rstrip("/")
  for path in (os.path.join(source, "config.json"),
               os.path.join(os.path.dirname(source), "config.json"),
               source + "_ckpt/config.json"):
    if not tf.io.gfile.exists(path):
      continue
    try:
      with tf.io.gfile.GFile(path) as f:
        config = json.load(f)
    except ValueError as e:
      logging.warning("%s: not valid JSON (%s); the size check uses the variable shapes only", path, e)
      continue
    if isinstance(config, dict) and isinstance(config.get("bert"), dict) and "model" in config:
      return path, config
  return None


def _model_config_hint(source: str) -> str:
  """Names the converter's model_config.yaml for `source` (`<out>/<tower>`, `<out>/<tower>_ckpt`,
  `<out>/<tower>_ckpt/ckpt`), "" when `source` is not inside a converter output."""
  path = source.rstrip("/")
  for _ in range(3):
    candidate = os.path.join(path, MODEL_CONFIG_FILE)
    if (tf.io.gfile.exists(candidate) and
        tf.io.gfile.exists(os.path.join(path, CONVERSION_REPORT_FILE))):
      return f" (the converter wrote its size to {candidate}: pass --config_file={candidate})"
    path = os.path.dirname(path)
    if not path:
      break
  return ""


def _differs(config_value, source_value) -> bool:
  if isinstance(config_value, float) or isinstance(source_value, float):
    return not math.isclose(float(config_value), float(source_value), rel_tol=1e-6, abs_tol=0.0)
  return config_value != source_value


def model_size_mismatches(model_config, source: str) -> List[Tuple[str, object, object]]:
  """(config path, config value, source value) for every size field where `source` differs.

  Sizes come from the variable shapes of each BERT encoder in `source`
  (`checkpoint_bert_architectures`). A converter output's `config.json` adds `hidden_activation`,
  the head fields of its tower (`projection_size` / `embedder_layer_norm_epsilon` of an embedder,
  `span_hidden_size` / `reader_layer_norm_epsilon` of a reader), and the BERT sizes when no encoder
  is recognised in the variables.
  """
  bert = model_config.bert
  found = [arch for _, arch in checkpoint_bert_architectures(source)]
  conv = converter_config(source)
  source_fields: List[Tuple[str, object]] = []
  for arch in found:
    source_fields += [(f"bert.{f}", arch[f]) for f in SHAPE_FIELDS if f in arch]
  if conv is not None:
    _, config = conv
    if not found:
      source_fields += [(f"bert.{f}", config["bert"][f]) for f in SHAPE_FIELDS
                        if f in config["bert"]]
    if "hidden_activation" in config["bert"]:
      source_fields.append(("bert.hidden_activation", config["bert"]["hidden_activation"]))
    source_fields += [(field, config[key]) for field, key in _HEAD_FIELDS.get(config["model"], ())
                      if key in config]
  mismatches, seen = [], set()
  for path, value in source_fields:
    holder = bert if path.startswith("bert.") else model_config
    ours = getattr(holder, path.split(".")[-1])
    if _differs(ours, value) and (path, value) not in seen:
      seen.add((path, value))
      mismatches.append((path, ours, value))
  return mismatches


def check_model_size_matches(model_config,
                             sources: Iterable[Tuple[str, Optional[str]]]) -> List[str]:
  """The model built from `model_config` (`task.model`) must have the size of every init source.

  Args:
    model_config: `configs.ModelConfig` (`params.task.model`).
    sources: `(flag_name, init_source)` pairs; None/empty sources and http(s) hub URLs are skipped.
  Returns:
    One problem per mismatching source, naming the path, each differing field with the config's and
    the source's value, and the converter's model_config.yaml when one sits beside the source.
  """
  problems = []
  for name, source in sources:
    if not source or source.startswith(("http://", "https://")):
      continue
    try:
      mismatches = model_size_mismatches(model_config, source)
    except (FileNotFoundError, ValueError, tf.errors.OpError) as e:
      problems.append(f"{name}: {e}")
      continue
    if not mismatches:
      logging.info("%s: '%s' matches task.model", name, source)
      continue
    fields = "; ".join(f"task.model.{path}={ours!r} in the config but {theirs!r} in the checkpoint"
                       for path, ours, theirs in mismatches)
    problems.append(f"{name}: '{source}' does not match the model config: {fields}"
                    f"{_model_config_hint(source)}")
  return problems
