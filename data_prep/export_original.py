r"""Writes our trained weights back under the ORIGINAL REALM / ORQA variable names.

  python -m data_prep.export_original --source=DIR --format=realm|orqa --output_dir=OUT \
      [--vocab_file=...] [--embedder_layer_norm_epsilon=E] [--retriever_variant=auto|realm|ict] \
      [--nowrite_unused_mlm_heads] [--encoded_checkpoint=PREFIX]

The way back of `data_prep.convert_checkpoint --source_format=realm|orqa`: the output is exactly the
layout that command reads (original §4.1, §4.2).

--source (each is an object-based TF2 checkpoint; a SavedModel's variables are one too):
  realm  a step export `model_dir/export/<step>/` or a converter output dir (`embedder/`, `bert/`
         SavedModels); a converter output dir with `embedder_ckpt/`, `bert_ckpt/` only; a REALM
         training checkpoint `model_dir/ckpt-N` (or `model_dir`: its latest), object graph
         `model/embedder`, `model/bert`.
  orqa   an ORQA best export `model_dir/export/best/` or a converter output dir (`retriever/`,
         `reader/`); `retriever_ckpt/`, `reader_ckpt/`; an ORQA training checkpoint (object graph
         `model/retriever`, `model/reader`), e.g. `model_dir/export/best/checkpoint/model.ckpt-N`.

--output_dir:
  realm  OUT/embedder/variables/variables.{index,data-*}: `module/module/module/bert/...`,
         `module/module/dense/{kernel,bias}`, `module/module/LayerNorm/{gamma,beta}` (+ the unused
         `module/module/module/cls/predictions/...`, below); OUT/bert/variables/variables.*:
         `bert/...`, `cls/predictions/...`; OUT/{embedder,bert}/assets/vocab.txt;
         OUT/embedder/encoded/encoded.ckpt (`block_emb`) when the source export has one.
  orqa   OUT/model.ckpt.{index,data-*}, OUT/checkpoint, OUT/vocab.txt. Retriever, REALM-derived:
         `module/module/module/module/bert/...`, `module/module/module/{dense,LayerNorm}`; or
         ICT-derived: `module/module/bert/...`, `module/{dense,layer_normalization}`. Reader:
         `reader/module/bert/...`, `reader/{dense,dense_1,layer_normalization}`. And `global_step`.
  both   OUT/export_report.json: what was read, written, assumed and left out.

How: the object graph of a checkpoint records each variable's full Keras name. Inside a tower the
names are mapped with `data_prep.checkpoint_names` run backwards: the BERT encoder through Model
Garden's name table (`keras_encoder_suffix`); Q/K/V kernels [H, heads, H/heads] -> [H, H], their
biases [heads, H/heads] -> [H] and the attention output [heads, H/heads, H] -> [H, H] by inverting
`keras_encoder_shape`; the MLM head and the projection / span heads through the tower specs
(`REALM_EMBEDDER`, `PLAIN_BERT`, `ORQA_RETRIEVER_FROM_*`, `ORQA_READER`), whose Keras names are read
off a tiny instance of our own model class. Every variable of a tower must map (else an error names
it); optimizer slots are not read. The result is a TF1-style name-keyed checkpoint (`SaveV2` over
the plain names: no `/.ATTRIBUTES/VARIABLE_VALUE`, no object graph), written atomically.

Hugging Face 4.x (`load_tf_weights_in_realm`, transformers 4.16-4.57) lists the TF variables,
rewrites their prefixes (`module/module/module/bert/` and `module/module/{dense,LayerNorm}` ->
embedder `realm/`, `cls/{dense,LayerNorm}`; plain `bert/`, `cls/` -> knowledge-augmented encoder or
the reader of `RealmForOpenQA`; `module/module/module/module/bert/`,
`module/module/module/{dense,LayerNorm}` -> fine-tuned embedder; `reader/module/bert/`,
`reader/{dense,dense_1,layer_normalization}` -> reader `realm/`, `qa_outputs/{dense_intermediate,
dense_output,layer_normalization}`), maps `kernel` (stored [in, out], transposed by the loader) and
`gamma` to weights, `beta` and `output_bias` to biases, `*_embeddings` to embedding weights, and
skips optimizer slots and `global_step`. Our output has exactly these names and shapes, and no
optimizer slots. HF knows only the REALM-derived retriever layout (not the ICT one) and applies one
`layer_norm_eps` (1e-12) to the embedder's BERT and projection LayerNorms.

Assumed or left out, always reported:
* LayerNorm epsilon is no variable; the original layouts imply it (`LayerNorm` 1e-12: REALM embedder
  and REALM-derived retriever; `layer_normalization` 1e-3: ICT retriever, reader). Ours comes from
  --embedder_layer_norm_epsilon, the converter's `<tower>_ckpt/config.json`, or the run's
  `params.yaml` (beside --source or up to three directories above). For orqa,
  --retriever_variant=auto writes the ICT-derived layout when it is 1e-3. A REALM embedder trained
  with 1e-3 has no exact slot: a warning says readers will apply 1e-12.
* The original embedder and reader modules carry an MLM head that no forward pass uses; our towers
  have none. With --write_unused_mlm_heads (default) one is written with BERT's initialisation
  (truncated normal 0.02 kernel, zero biases, unit gamma; fixed seed) so that graph code restoring
  every module variable finds all names. convert_checkpoint skips these names; HF loads them into
  its unused `cls` modules.
* A separate document tower (`model/doc_embedder`, share_embedders=False) has no slot in the
  original layout: the query tower is exported as `embedder` and a warning names the left-out tower.
* `do_lower_case` lives in the original TF1 graph, not in variables; readers default to True.
"""
import dataclasses
import functools
import json
import os
import re
import uuid
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
from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2.export import common as export_common
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import knowledge_encoder as ke_lib
from realm_tf2.modeling import reader as reader_lib
from tensorflow.core.protobuf import trackable_object_graph_pb2

FORMATS = ("realm", "orqa")
RETRIEVER_VARIANTS = ("auto", "realm", "ict")
REPORT_NAME = "export_report.json"
ORQA_CHECKPOINT_NAME = "model.ckpt"
READER_EPSILON = 1e-3  # `reader/layer_normalization`: Keras default (original §3.3)

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT_MARK = "/.OPTIMIZER_SLOT/"  # slots of v1 optimizers; v2 optimizers keep them under optimizer/
_SAVED_MODEL_VARIABLES = "model_variables/"  # `export.common.ExportModule.model_variables`
_DOC_TOWER = "model/doc_embedder/"
_WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
_MLM_PREFIX = "cls/predictions/"
_PARAMS_LEVELS = 3

# Towers per format: (name: export dir, `<name>_ckpt` dir and `model/<name>` object path; kind).
_TOWERS = {"realm": (("embedder", "embedder"), ("bert", "bert")),
           "orqa": (("retriever", "embedder"), ("reader", "reader"))}


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------------
# Reading object-based checkpoints by variable name.


class ObjectCheckpoint:
  """Variables of an object-based TF2 checkpoint, by object path and full variable name.

  Args:
    prefix: Checkpoint prefix (`.../ckpt-5`, `<export>/variables/variables`).
  Raises:
    FileNotFoundError if `prefix.index` does not exist; ValueError naming `prefix` if it cannot be
    read or has no object graph (a name-based TF1 checkpoint).
  """

  def __init__(self, prefix: str):
    self.prefix = prefix
    if not tf.io.gfile.exists(prefix + ".index"):
      raise FileNotFoundError(f"no checkpoint at '{prefix}' ({prefix}.index does not exist)")
    try:
      self._reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
      raise ValueError(f"cannot read checkpoint '{prefix}': {_first_line(e)}") from e
    if not self._reader.has_tensor(_OBJECT_GRAPH_KEY):
      raise ValueError(f"checkpoint '{prefix}' has no object graph: it is a name-based (TF1) "
                       "checkpoint, not one of ours (original names need no export)")
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(self._reader.get_tensor(_OBJECT_GRAPH_KEY))
    self.full_names: Dict[str, str] = {}  # checkpoint key -> full variable name
    for node in graph.nodes:
      for attr in node.attributes:
        key = attr.checkpoint_key
        if key.endswith(_VALUE_SUFFIX) and _SLOT_MARK not in key:
          self.full_names[key] = attr.full_name

  def has_object(self, object_path: str) -> bool:
    return any(k.startswith(object_path) for k in self.full_names)

  def variables_under(self, object_path: str) -> Dict[str, str]:
    """Full variable name -> checkpoint key of every variable under `object_path` (`model/bert/`).

    Raises ValueError naming the checkpoint if there is none or two share a name.
    """
    out = {}
    for key, name in self.full_names.items():
      if key.startswith(object_path):
        if name in out:
          raise ValueError(f"{self.prefix}: two variables under '{object_path}' are named '{name}'")
        out[name] = key
    if not out:
      top = sorted({k.split("/")[0] for k in self.full_names})
      raise ValueError(f"{self.prefix}: no variables under object path '{object_path}' "
                       f"(top-level objects: {top})")
    return out

  def get(self, key: str) -> np.ndarray:
    return np.asarray(self._reader.get_tensor(key))

  def step(self) -> Optional[int]:
    """The checkpoint's `global_step`, else the `-N` suffix of its prefix, else None."""
    key = "global_step" + _VALUE_SUFFIX
    if self._reader.has_tensor(key):
      return int(self._reader.get_tensor(key))
    m = re.search(r"-(\d+)$", self.prefix)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------------
# Our Keras names of one model class.


@dataclasses.dataclass(frozen=True)
class TowerLayout:
  """Keras variable names of one model class, relative to the model's own name.

  Attributes:
    encoder_prefix: Prefix of its BertEncoderV2 variables (e.g. `encoder/`).
    heads: Head key of `checkpoint_names` (`<model attribute>/<variable attribute>`, e.g.
      `projection/kernel`) -> relative name.
    mlm: Canonical `cls/predictions/...` name -> relative name (knowledge-augmented encoder only).
  """
  encoder_prefix: str
  heads: Dict[str, str]
  mlm: Dict[str, str]


_HEAD_KEYS = {"embedder": tuple(names_lib.REALM_EMBEDDER.heads),
              "reader": tuple(names_lib.ORQA_READER.heads), "bert": ()}


@functools.lru_cache(maxsize=None)
def tower_layout(kind: str) -> TowerLayout:
  """Layout of "embedder" (`RealmEmbedder`), "bert" (`KnowledgeAugmentedEncoder`) or "reader"
  (`OrqaReader`), read off a tiny instance (names do not depend on sizes)."""
  tiny = configs.BertConfig(vocab_size=8, hidden_size=4, num_layers=1, num_attention_heads=1,
                            intermediate_size=4, max_position_embeddings=8)
  name = f"layout_{kind}"
  if kind == "embedder":
    model = embedder_lib.RealmEmbedder(tiny, projection_size=2, name=name)
  elif kind == "bert":
    model = ke_lib.KnowledgeAugmentedEncoder(tiny, name=name)
  elif kind == "reader":
    model = reader_lib.OrqaReader(tiny, span_hidden_size=2, max_span_width=2, seq_len=8, name=name)
  else:
    raise ValueError(f"unknown tower kind {kind!r}")

  def rel(variable):
    full = variable.name.split(":")[0]
    if not full.startswith(name + "/"):
      raise ValueError(f"{kind}: variable {full} is not below the model name '{name}'")
    return full[len(name) + 1:]

  word = names_lib.keras_encoder_suffix(_WORD_EMBEDDINGS)
  enc = [rel(v) for v in model.encoder.variables if rel(v).endswith(word)]
  if len(enc) != 1:
    raise ValueError(f"{kind}: expected one word-embedding variable, found {enc}")
  heads = {}
  for key in _HEAD_KEYS[kind]:
    layer_attr, var_attr = key.split("/")
    heads[key] = rel(getattr(getattr(model, layer_attr), var_attr))
  mlm = {}
  if kind == "bert":
    for canonical, path in names_lib.MLM_HEAD_NAMES.items():
      obj = model.masked_lm
      for attr in path:
        obj = getattr(obj, attr)
      mlm[canonical] = rel(obj)
  return TowerLayout(encoder_prefix=enc[0][:-len(word)], heads=heads, mlm=mlm)


# ------------------------------------------------------------------------------------------------
# Our tower -> canonical TF1 names.


def canonical_shape(keras_suffix: str, keras_shape: Tuple[int, ...], num_heads: int):
  """The TF1 shape that `keras_encoder_shape` (the converter's reshape) turns into `keras_shape`.

  Candidates: the shape itself and each merge of two adjacent dims. The smallest rank that maps
  forward onto `keras_shape` wins (TF1 BERT kernels are [in, out], biases [out]).
  """
  keras_shape = tuple(keras_shape)
  candidates = {keras_shape}
  for i in range(len(keras_shape) - 1):
    candidates.add(keras_shape[:i] + (keras_shape[i] * keras_shape[i + 1],) + keras_shape[i + 2:])
  fits = [s for s in candidates
          if tuple(names_lib.keras_encoder_shape(keras_suffix, s, num_heads) or s) == keras_shape]
  if not fits:
    raise ValueError(f"{keras_suffix}: no TF1 shape reshapes to {keras_shape} with {num_heads} "
                     "heads")
  return min(fits, key=len)


def tower_to_canonical(ckpt: ObjectCheckpoint, object_path: str, kind: str,
                       what: str) -> Dict[str, np.ndarray]:
  """Reads one tower under canonical names.

  Args:
    ckpt: The checkpoint.
    object_path: Object-graph prefix of the tower (`model/embedder/`, `model_variables/`, ...).
    kind: "embedder", "bert" or "reader" (`tower_layout`).
    what: Tower name for messages.
  Returns:
    Canonical TF1 BERT names (`bert/...`, TF1 shapes: kernels [in, out]), plus `cls/predictions/...`
    for "bert" and the head keys of `checkpoint_names` (`projection/kernel`, ...) for the others.
  Raises:
    KeyError / ValueError naming the checkpoint and the variable when a name is missing, a shape
    does not fit, or a variable of the tower has no original name.
  """
  names = ckpt.variables_under(object_path)
  layout = tower_layout(kind)
  word = layout.encoder_prefix + names_lib.keras_encoder_suffix(_WORD_EMBEDDINGS)
  roots = [n[:-len(word)] for n in names if n == word or n.endswith("/" + word)]
  if len(roots) != 1:
    raise ValueError(f"{what} ({ckpt.prefix}, {object_path}): expected one '.../{word}', found "
                     f"{len(roots)}; is this a {kind} tower?")
  root = roots[0]
  consumed = set()

  def take(rel_name):
    full = root + rel_name
    if full not in names:
      raise KeyError(f"{what} ({ckpt.prefix}): missing variable '{full}'")
    consumed.add(full)
    return ckpt.get(names[full])

  def encoder_rel(canonical):
    return layout.encoder_prefix + names_lib.keras_encoder_suffix(canonical)

  query = "bert/encoder/layer_{}/attention/self/query/kernel"
  num_layers = 0
  while root + encoder_rel(query.format(num_layers)) in names:
    num_layers += 1
  if num_layers == 0:
    raise ValueError(f"{what} ({ckpt.prefix}): no transformer layers below '{root}'")
  hidden = int(ckpt.get(names[root + word]).shape[1])
  query_shape = ckpt.get(names[root + encoder_rel(query.format(0))]).shape
  query_suffix = names_lib.keras_encoder_suffix(query.format(0))
  heads = [n for n in range(1, hidden + 1) if hidden % n == 0 and tuple(
      names_lib.keras_encoder_shape(query_suffix, (hidden, hidden), n)) == tuple(query_shape)]
  if len(heads) != 1:
    raise ValueError(f"{what} ({ckpt.prefix}): no head count fits the query kernel shape "
                     f"{tuple(query_shape)} (hidden {hidden})")

  out = {}
  for canonical in names_lib.bert_encoder_names(num_layers):
    value = take(encoder_rel(canonical))
    suffix = names_lib.keras_encoder_suffix(canonical)
    out[canonical] = value.reshape(canonical_shape(suffix, value.shape, heads[0]))
  for canonical, rel_name in layout.mlm.items():
    out[canonical] = take(rel_name)
  for key, rel_name in layout.heads.items():
    out[key] = take(rel_name)
  unmapped = sorted(set(names) - consumed)
  if unmapped:
    raise ValueError(f"{what} ({ckpt.prefix}): variables with no original name: {unmapped}")
  return out


# ------------------------------------------------------------------------------------------------
# Canonical -> original names.


def _unused_mlm_head(prefix: str, hidden: int, vocab_size: int) -> Dict[str, np.ndarray]:
  """BERT's initialisation of an MLM head that nothing runs (module docstring), fixed seed."""
  init = tf_keras.initializers.TruncatedNormal(stddev=0.02, seed=0)
  values = {"transform/dense/kernel": init([hidden, hidden]).numpy(),
            "transform/dense/bias": np.zeros([hidden], np.float32),
            "transform/LayerNorm/gamma": np.ones([hidden], np.float32),
            "transform/LayerNorm/beta": np.zeros([hidden], np.float32),
            "output_bias": np.zeros([vocab_size], np.float32)}
  if {_MLM_PREFIX + n for n in values} != set(names_lib.MLM_HEAD_NAMES):
    raise ValueError(f"checkpoint_names.MLM_HEAD_NAMES is not {sorted(values)}")
  return {prefix + n: v for n, v in values.items()}


def to_original(canonical: Dict[str, np.ndarray], spec: names_lib.TowerSpec,
                write_unused_mlm_head: bool) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """Renames a tower's canonical arrays with a `TowerSpec` (the converter's reading, inverted).

  Returns:
    (original name -> float32 array, names of the initialised unused MLM head).
  """
  out = {}
  for name, value in canonical.items():
    if name.startswith("bert/"):
      new = spec.bert_prefix + name[len("bert/"):]
    elif name.startswith(_MLM_PREFIX):
      if spec.mlm_prefix is None:
        raise ValueError(f"the tower spec of {spec.bert_prefix} has no MLM head slot")
      new = spec.mlm_prefix + name[len(_MLM_PREFIX):]
    else:
      new = spec.heads[name]
    out[new] = np.asarray(value, np.float32)
  filled = []
  if spec.mlm_prefix is None and write_unused_mlm_head:
    # The original module keeps its MLM head beside its `bert/` scope (original §4.1, §4.2).
    vocab_size, hidden = canonical[_WORD_EMBEDDINGS].shape
    head = _unused_mlm_head(spec.bert_prefix[:-len("bert/")] + _MLM_PREFIX, hidden, vocab_size)
    out.update(head)
    filled = sorted(head)
  return out, filled


# ------------------------------------------------------------------------------------------------
# Sources and their run metadata.


@dataclasses.dataclass
class TowerSource:
  """Where one of our towers is read from.

  Attributes:
    prefix: Checkpoint prefix.
    object_path: Object-graph prefix of the tower in it.
    vocab: vocab.txt of the export, if any.
    encoded: `encoded.ckpt` prefix of an embedder export, if any.
    config_json: The converter's `<tower>_ckpt/config.json`, if any.
  """
  prefix: str
  object_path: str
  vocab: Optional[str] = None
  encoded: Optional[str] = None
  config_json: Optional[str] = None


@dataclasses.dataclass
class Source:
  """A resolved --source: kind ("export", "converter_checkpoint", "training_checkpoint"), towers
  by name, the run's params.yaml if found."""
  kind: str
  towers: Dict[str, TowerSource]
  params_yaml: Optional[str]


def _existing(path: str, suffix: str = "") -> Optional[str]:
  return path if tf.io.gfile.exists(path + suffix) else None


def _find_params_yaml(start_dir: str) -> Optional[str]:
  """The run's `params.yaml`: in `start_dir` or up to three directories above it."""
  d = start_dir.rstrip("/")
  for _ in range(_PARAMS_LEVELS + 1):
    if tf.io.gfile.exists(os.path.join(d, "params.yaml")):
      return os.path.join(d, "params.yaml")
    if not os.path.dirname(d) or os.path.dirname(d) == d:
      break
    d = os.path.dirname(d)
  return None


def _latest_in(directory: str) -> Optional[str]:
  """The newest checkpoint of a `checkpoint` state file, else the only `*.index` in `directory`."""
  latest = tf.train.latest_checkpoint(directory)
  if latest:
    return latest
  indexes = tf.io.gfile.glob(os.path.join(directory, "*.index"))
  return indexes[0][:-len(".index")] if len(indexes) == 1 else None


def resolve_source(source: str, fmt: str) -> Source:
  """Finds the towers of `source` for `fmt` (module docstring); errors name the paths tried."""
  source = source.rstrip("/")
  names = [name for name, _ in _TOWERS[fmt]]
  if tf.io.gfile.isdir(source):
    exports = [name for name in names
               if tf.io.gfile.exists(os.path.join(source, name, "saved_model.pb"))]
    if exports:
      for name in names:
        if name not in exports:
          raise FileNotFoundError(f"--source '{source}': --format={fmt} needs the exports {names}; "
                                  f"{os.path.join(source, name, 'saved_model.pb')} is missing")
      towers = {}
      for name in names:
        d = os.path.join(source, name)
        towers[name] = TowerSource(
            os.path.join(d, "variables", "variables"), _SAVED_MODEL_VARIABLES,
            vocab=_existing(os.path.join(d, "assets", "vocab.txt")),
            encoded=_existing(export_common.encoded_checkpoint_path(d), ".index"),
            config_json=_existing(os.path.join(source, f"{name}_ckpt", "config.json")))
      return Source("export", towers, _find_params_yaml(source))
    ckpt_dirs = {name: os.path.join(source, f"{name}_ckpt") for name in names}
    if all(tf.io.gfile.isdir(d) for d in ckpt_dirs.values()):
      towers = {}
      for name, d in ckpt_dirs.items():
        prefix = _latest_in(d)
        if prefix is None:
          raise FileNotFoundError(f"--source '{source}': no checkpoint in {d}")
        towers[name] = TowerSource(prefix, "model/",
                                   config_json=_existing(os.path.join(d, "config.json")))
      return Source("converter_checkpoint", towers, _find_params_yaml(source))
    prefix = _latest_in(source)
    if prefix is None:
      raise FileNotFoundError(
          f"--source '{source}': found neither the exports {names}, nor converter checkpoints "
          f"{[n + '_ckpt' for n in names]}, nor a training checkpoint (a 'checkpoint' state file "
          "or a single *.index)")
  elif tf.io.gfile.exists(source + ".index"):
    prefix = source
  else:
    raise FileNotFoundError(f"--source '{source}' does not exist (neither a directory nor a "
                            "checkpoint prefix with a .index file)")
  # A training checkpoint: object graph `model/<tower>`.
  towers = {name: TowerSource(prefix, f"model/{name}/") for name in names}
  return Source("training_checkpoint", towers, _find_params_yaml(os.path.dirname(prefix)))


def _read_params(path: Optional[str]) -> dict:
  if not path:
    return {}
  with tf.io.gfile.GFile(path) as f:
    try:
      params = yaml.safe_load(f)
    except yaml.YAMLError as e:
      raise ValueError(f"{path}: not valid YAML: {_first_line(e)}") from e
  return params if isinstance(params, dict) else {}


def _resolve_epsilon(flag_value: Optional[float], tower: TowerSource, params: dict,
                     params_path: Optional[str], params_key: str) -> Tuple[Optional[float], str]:
  """(epsilon of a tower's head LayerNorm, where it came from); (None, "unknown") if unknown."""
  if flag_value is not None:
    return float(flag_value), "flag"
  if tower.config_json:
    with tf.io.gfile.GFile(tower.config_json) as f:
      try:
        cfg = json.load(f)
      except ValueError as e:
        raise ValueError(f"{tower.config_json}: not valid JSON: {e}") from e
    if "layer_norm_epsilon" in cfg:
      return float(cfg["layer_norm_epsilon"]), tower.config_json
  model = (params.get("task") or {}).get("model") or {}
  if params_key in model:
    return float(model[params_key]), params_path
  return None, "unknown"


def _resolve_vocab(flag_value: Optional[str], src: Source, params: dict, vocab_size: int) -> str:
  """--vocab_file, else an export's asset, else the run's `task.vocab_file`; checked against V."""
  candidates = [flag_value] + [t.vocab for t in src.towers.values()]
  candidates.append((params.get("task") or {}).get("vocab_file"))
  candidates = [c for c in candidates if c]
  for path in candidates:
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        rows = sum(1 for _ in f)
      if rows > vocab_size:
        raise ValueError(f"{path} has {rows} lines but word_embeddings has {vocab_size} rows")
      if rows < vocab_size:
        logging.warning("%s has %d lines, word_embeddings has %d rows", path, rows, vocab_size)
      return path
  raise FileNotFoundError(f"no vocab.txt found (tried {candidates}); pass --vocab_file")


def _same(value: Optional[float], reference: float) -> bool:
  return value is not None and abs(value - reference) <= 1e-6 * reference


# ------------------------------------------------------------------------------------------------
# Writing.


def write_name_keyed_checkpoint(prefix: str, arrays: Dict[str, np.ndarray]):
  """A TF1-style checkpoint whose keys are exactly the names of `arrays` (`SaveV2`, no graph)."""
  names = sorted(arrays)
  tf.io.gfile.makedirs(os.path.dirname(prefix))
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(arrays[n]) for n in names])


def _write_module_dir(out_dir: str, arrays: Dict[str, np.ndarray], vocab: str,
                      encoded: Optional[str]):
  """`out_dir/variables/variables.*`, `assets/vocab.txt` (+ `encoded/encoded.ckpt`), atomically."""
  with io_utils.atomic_dir(out_dir) as tmp:
    write_name_keyed_checkpoint(os.path.join(tmp, "variables", "variables"), arrays)
    tf.io.gfile.makedirs(os.path.join(tmp, "assets"))
    tf.io.gfile.copy(vocab, os.path.join(tmp, "assets", "vocab.txt"), overwrite=True)
    if encoded:
      export_common.copy_checkpoint(encoded, export_common.encoded_checkpoint_path(tmp))


def _write_orqa_checkpoint(output_dir: str, arrays: Dict[str, np.ndarray], vocab: str) -> str:
  """`output_dir/model.ckpt.*`, `vocab.txt` and the `checkpoint` state file.

  Staged in a temp dir inside `output_dir`, then renamed file by file with the `.index` last (a
  checkpoint is found through its `.index`; an older `.index` is removed first).
  """
  tmp = os.path.join(output_dir, f".{ORQA_CHECKPOINT_NAME}.tmp-{uuid.uuid4().hex}")
  final = os.path.join(output_dir, ORQA_CHECKPOINT_NAME)
  try:
    write_name_keyed_checkpoint(os.path.join(tmp, ORQA_CHECKPOINT_NAME), arrays)
    for old in tf.io.gfile.glob(final + ".index") + tf.io.gfile.glob(final + ".data-*"):
      tf.io.gfile.remove(old)
    staged = tf.io.gfile.glob(os.path.join(tmp, ORQA_CHECKPOINT_NAME + ".*"))
    for path in sorted(staged, key=lambda p: p.endswith(".index")):
      tf.io.gfile.rename(path, os.path.join(output_dir, os.path.basename(path)), overwrite=True)
    with tf.io.gfile.GFile(vocab, "rb") as f:
      io_utils.atomic_write_bytes(os.path.join(output_dir, "vocab.txt"), f.read())
    tf.compat.v1.train.update_checkpoint_state(output_dir, ORQA_CHECKPOINT_NAME)  # relative path
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
  return final


# ------------------------------------------------------------------------------------------------
# The export.


class _Report:
  """The report dict plus warnings that are logged as they are added."""

  def __init__(self, **fields):
    self.data = dict(fields, towers={}, not_exported={}, warnings=[])

  def warn(self, message: str):
    logging.warning("%s", message)
    self.data["warnings"].append(message)


def _export_realm(canonical, src: Source, output_dir: str, vocab: str, emb_eps, emb_eps_from,
                  write_unused_mlm_heads: bool, encoded_checkpoint: Optional[str], report: _Report):
  realm_eps = names_lib.EMBEDDER_EPSILON["realm"]
  if emb_eps is not None and not _same(emb_eps, realm_eps):
    report.warn(f"the embedder was trained with LayerNorm epsilon {emb_eps}; the REALM layout "
                f"(module/module/LayerNorm) implies {realm_eps}, which convert_checkpoint and "
                "Hugging Face apply, so their embeddings differ slightly from ours")
  encoded = encoded_checkpoint or src.towers["embedder"].encoded
  for tower, spec in (("embedder", names_lib.REALM_EMBEDDER), ("bert", names_lib.PLAIN_BERT)):
    arrays, filled = to_original(canonical[tower], spec, write_unused_mlm_heads)
    out_dir = os.path.join(output_dir, tower)
    _write_module_dir(out_dir, arrays, vocab, encoded if tower == "embedder" else None)
    report.data["towers"][tower] = {
        "checkpoint": os.path.join(out_dir, "variables", "variables"),
        "num_variables": len(arrays), "unused_mlm_head_initialised": filled,
        "source": src.towers[tower].prefix}
  report.data["towers"]["embedder"].update(
      layer_norm_epsilon=emb_eps, layer_norm_epsilon_from=emb_eps_from, encoded_checkpoint=encoded)


def _export_orqa(canonical, src: Source, output_dir: str, vocab: str, emb_eps, emb_eps_from,
                 params: dict, retriever_variant: str, write_unused_mlm_heads: bool,
                 step: Optional[int], report: _Report):
  variant = retriever_variant
  if variant == "auto":
    variant = "ict" if _same(emb_eps, names_lib.EMBEDDER_EPSILON["ict"]) else "realm"
  layout_eps = names_lib.EMBEDDER_EPSILON[variant]
  if emb_eps is not None and not _same(emb_eps, layout_eps):
    report.warn(f"the retriever was trained with LayerNorm epsilon {emb_eps}; the "
                f"{variant}-derived layout implies {layout_eps}, which convert_checkpoint applies")
  if variant == "ict":
    report.warn("the ICT-derived retriever layout is read by convert_checkpoint but not by Hugging "
                "Face's load_tf_weights_in_realm (use --retriever_variant=realm for that)")
  reader_eps, reader_eps_from = _resolve_epsilon(None, src.towers["reader"], params,
                                                 src.params_yaml, "reader_layer_norm_epsilon")
  if reader_eps is not None and not _same(reader_eps, READER_EPSILON):
    report.warn(f"the reader was trained with span LayerNorm epsilon {reader_eps}; the original "
                f"layout (reader/layer_normalization) implies {READER_EPSILON}")
  retriever_spec = {"realm": names_lib.ORQA_RETRIEVER_FROM_REALM,
                    "ict": names_lib.ORQA_RETRIEVER_FROM_ICT}[variant]
  retriever, filled_retriever = to_original(canonical["retriever"], retriever_spec,
                                            write_unused_mlm_heads)
  reader, filled_reader = to_original(canonical["reader"], names_lib.ORQA_READER,
                                      write_unused_mlm_heads)
  clash = sorted(set(retriever) & set(reader))
  if clash:
    raise ValueError(f"retriever and reader names collide: {clash}")
  arrays = {**retriever, **reader, "global_step": np.array(step or 0, np.int64)}
  report.data.update(checkpoint=_write_orqa_checkpoint(output_dir, arrays, vocab),
                     global_step=int(step or 0))
  report.data["towers"] = {
      "retriever": {"variant": variant, "num_variables": len(retriever),
                    "layer_norm_epsilon": emb_eps, "layer_norm_epsilon_from": emb_eps_from,
                    "unused_mlm_head_initialised": filled_retriever,
                    "source": src.towers["retriever"].prefix},
      "reader": {"num_variables": len(reader), "layer_norm_epsilon": reader_eps,
                 "layer_norm_epsilon_from": reader_eps_from,
                 "unused_mlm_head_initialised": filled_reader,
                 "source": src.towers["reader"].prefix}}


def _best_export_step(best_dir: str) -> Optional[int]:
  """Step of `export_best`'s `checkpoint/model.ckpt-<step>` beside the best exports, if any."""
  paths = tf.io.gfile.glob(os.path.join(best_dir, "checkpoint", "model.ckpt-*.index"))
  steps = [int(m.group(1)) for m in (re.search(r"-(\d+)\.index$", p) for p in paths) if m]
  return max(steps) if steps else None


def export_original(source: str, fmt: str, output_dir: str, vocab_file: Optional[str] = None,
                    embedder_layer_norm_epsilon: Optional[float] = None,
                    retriever_variant: str = "auto", write_unused_mlm_heads: bool = True,
                    encoded_checkpoint: Optional[str] = None) -> dict:
  """Writes the towers of `source` under the original names of `fmt` into `output_dir`.

  Args:
    source: One of our exports, converter outputs or training checkpoints (module docstring).
    fmt: "realm" or "orqa".
    output_dir: Target directory (created if needed).
    vocab_file: vocab.txt; default: the source export's asset, else the run's `task.vocab_file`.
    embedder_layer_norm_epsilon: Epsilon of the embedder / retriever projection LayerNorm;
      default: the converter config or the run's params.yaml.
    retriever_variant: orqa: "realm" / "ict" layout of the retriever; "auto" = "ict" iff the
      retriever epsilon is 1e-3.
    write_unused_mlm_heads: Also write the original modules' unused MLM heads (BERT init).
    encoded_checkpoint: realm: `block_emb` checkpoint prefix to include as
      `embedder/encoded/encoded.ckpt` (default: the source export's).
  Returns:
    The report also written to `output_dir/export_report.json`: towers, variables written, the
    epsilons and where they came from, initialised unused heads, left-out towers, warnings.
  """
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if retriever_variant not in RETRIEVER_VARIANTS:
    raise ValueError(f"--retriever_variant must be one of {RETRIEVER_VARIANTS}, "
                     f"got {retriever_variant!r}")
  src = resolve_source(source, fmt)
  report = _Report(format=fmt, source=source, source_kind=src.kind, output_dir=output_dir)
  ckpts, canonical = {}, {}
  for name, kind in _TOWERS[fmt]:
    tower = src.towers[name]
    if tower.prefix not in ckpts:
      ckpts[tower.prefix] = ObjectCheckpoint(tower.prefix)
    canonical[name] = tower_to_canonical(ckpts[tower.prefix], tower.object_path, kind, name)
  first = _TOWERS[fmt][0][0]
  first_ckpt = ckpts[src.towers[first].prefix]
  if fmt == "realm" and src.kind == "training_checkpoint" and first_ckpt.has_object(_DOC_TOWER):
    report.data["not_exported"]["doc_embedder"] = _DOC_TOWER
    report.warn(f"{first_ckpt.prefix} has a separate document tower ({_DOC_TOWER}, "
                "share_embedders=False); the original REALM layout has one embedder: the query "
                "tower is exported as 'embedder', the document tower is left out")

  params = _read_params(src.params_yaml)
  vocab = _resolve_vocab(vocab_file, src, params, int(canonical[first][_WORD_EMBEDDINGS].shape[0]))
  emb_eps, emb_eps_from = _resolve_epsilon(embedder_layer_norm_epsilon, src.towers[first], params,
                                           src.params_yaml, "embedder_layer_norm_epsilon")
  if emb_eps is None:
    report.warn(f"the {first} LayerNorm epsilon is unknown (no converter config.json, no run "
                "params.yaml found): the layout's own is assumed; pass "
                "--embedder_layer_norm_epsilon if it differs")
  report.data["vocab_file"] = vocab
  tf.io.gfile.makedirs(output_dir)
  if fmt == "realm":
    _export_realm(canonical, src, output_dir, vocab, emb_eps, emb_eps_from, write_unused_mlm_heads,
                  encoded_checkpoint, report)
  else:
    step = first_ckpt.step()
    if step is None and src.kind == "export":
      step = _best_export_step(source.rstrip("/"))
    if encoded_checkpoint:
      report.warn("--encoded_checkpoint is not used by --format=orqa (block_emb is no part of an "
                  "ORQA checkpoint; give it to convert_checkpoint --encoded_checkpoint)")
    _export_orqa(canonical, src, output_dir, vocab, emb_eps, emb_eps_from, params,
                 retriever_variant, write_unused_mlm_heads, step, report)
  io_utils.atomic_write_text(os.path.join(output_dir, REPORT_NAME),
                             json.dumps(report.data, indent=2) + "\n")
  return report.data


def summary(report: dict) -> str:
  """Printable lines of a report."""
  lines = [f"exported {report['source']} ({report['source_kind']}) as {report['format']} -> "
           f"{report['output_dir']}"]
  for tower, info in report["towers"].items():
    variant = f", {info['variant']}-derived layout" if "variant" in info else ""
    lines.append(f"  {tower}: {info['num_variables']} variables{variant}")
  lines += [f"  not exported: {name} ({path})" for name, path in report["not_exported"].items()]
  lines += [f"  warning: {w}" for w in report["warnings"]]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# CLI.

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("source", None, "Our export dir, converter output dir, training model_dir "
                      "or checkpoint prefix (see the module doc).")
  flags.DEFINE_enum("format", None, list(FORMATS), "Original layout to write.")
  flags.DEFINE_string("output_dir", None, "Where the original layout is written.")
  flags.DEFINE_string("vocab_file", None,
                      "vocab.txt; default: the source export's, else the run's.")
  flags.DEFINE_float("embedder_layer_norm_epsilon", None,
                     "Embedder / retriever projection LayerNorm epsilon; default: the converter "
                     "config.json or the run's params.yaml.")
  flags.DEFINE_enum("retriever_variant", "auto", list(RETRIEVER_VARIANTS),
                    "orqa: retriever layout; auto = ict iff the retriever epsilon is 1e-3.")
  flags.DEFINE_bool("write_unused_mlm_heads", True,
                    "Also write the original modules' unused MLM heads (BERT initialisation).")
  flags.DEFINE_string("encoded_checkpoint", None,
                      "realm: block_emb checkpoint prefix for embedder/encoded/encoded.ckpt "
                      "(default: the source export's).")
  flags.mark_flags_as_required(["source", "format", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  report = export_original(
      FLAGS.source, FLAGS.format, FLAGS.output_dir, vocab_file=FLAGS.vocab_file,
      embedder_layer_norm_epsilon=FLAGS.embedder_layer_norm_epsilon,
      retriever_variant=FLAGS.retriever_variant,
      write_unused_mlm_heads=FLAGS.write_unused_mlm_heads,
      encoded_checkpoint=FLAGS.encoded_checkpoint)
  print(summary(report))


if __name__ == "__main__":
  define_flags()
  app.run(main)
