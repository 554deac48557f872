"""Initialising our BERT towers from a TF Hub / Kaggle TF2 BERT encoder (issue 9).

A TF Hub "encoder" (https://www.tensorflow.org/hub/common_saved_model_apis/text, as written by Model
Garden's `official/nlp/tools/export_tfhub_lib.export_model`) is a Keras SavedModel called with a dict
`{input_word_ids, input_mask, input_type_ids}` (int32 [B,T]) that returns `pooled_output` [B,H],
`sequence_output` [B,T,H], `encoder_outputs` (list of [B,T,H]) and `default`. It may carry the vocab as a
`vocab_file` asset plus a `do_lower_case` variable, and an `.mlm` sub-object (with the MLM head).

We do NOT train through `hub.KerasLayer`: its weights are TRANSFERRED into our `BertEncoderV2`-based
models, so training, XLA and TPU paths stay ours. Model Garden's encoders (`BertEncoder`,
`BertEncoderV2`) name their variables identically below the encoder's own name scope, e.g.
`<scope>/transformer/layer_0/self_attention/query/kernel:0`. Neither Keras' `load_weights` nor a
`tf.train.Checkpoint` can do this transfer (the hub's object graph is a Keras functional model whose
checkpoint keys are `layer_with_weights-N/...`, unrelated to our object graph), so the mapping is by
*canonical variable name* (the part after the scope, see `canonical_name`), with every shape checked and
a clear error naming the mismatching architecture field (layers, hidden, heads, vocab, ...).

Handles: a local directory, a gs:// path (read through tf.io.gfile) or a hub URL (`hub.resolve`, which
needs network or a TFHUB_CACHE_DIR already holding the model). Local paths never touch the network.

Public API:
  resolve_handle(handle) -> str                          # local/gs:// path of the SavedModel
  is_hub_encoder(source) -> bool                         # a hub URL or a non-realm-tf2 TF2 SavedModel
  find_hub_vocab(handle) -> (vocab_file or None, do_lower_case or None)
  load_hub_encoder(handle) -> HubEncoder                 # canonical name -> np.ndarray, vocab, callables
  transfer_to_encoder(encoder, hub, include_mlm_head=None) -> int
  init_from_hub(model, handle) -> str                    # BertEncoderV2 / RealmEmbedder / KnowledgeAugmentedEncoder / OrqaReader
  infer_bert_architecture(shapes) -> dict                # vocab_size, hidden_size, num_layers, ...
"""
import dataclasses
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from absl import logging
import numpy as np
import tensorflow as tf

from tensorflow.core.protobuf import saved_model_pb2

# First path component of every variable of a Model Garden BERT encoder (BertEncoder / BertEncoderV2).
_ENCODER_ROOTS = ("word_embeddings", "position_embedding", "type_embeddings", "embeddings",
                  "transformer", "pooler_transform")
_MLM_ROOT = ("cls", "predictions")
HUB_INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
_ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "intermediate_size",
                "max_position_embeddings", "type_vocab_size")


def canonical_name(name: str) -> Optional[str]:
  """`bert_encoder_v2_1/transformer/layer_0/.../kernel:0` -> `transformer/layer_0/.../kernel`.

  Returns the name from the first encoder-root component (or from `cls/predictions` for the MLM
  head) on, without the `:0` suffix; None for variables that belong to neither (e.g. `do_lower_case`).
  """
  parts = name.split(":")[0].split("/")
  for i in range(len(parts) - 1):
    if tuple(parts[i:i + 2]) == _MLM_ROOT:
      return "/".join(parts[i:])
  for i, part in enumerate(parts[:-1]):
    if part in _ENCODER_ROOTS:
      return "/".join(parts[i:])
  return None


def _is_url(handle: str) -> bool:
  return handle.startswith(("http://", "https://"))


def resolve_handle(handle: str) -> str:
  """Returns a path holding the SavedModel: local and gs:// paths as they are, URLs via `hub.resolve`.

  Raises:
    FileNotFoundError: for a missing path, or a URL that cannot be resolved (offline without cache).
  """
  if not handle:
    raise ValueError("empty TF Hub handle")
  if not _is_url(handle) and tf.io.gfile.exists(handle):
    return handle.rstrip("/")
  if not _is_url(handle):
    raise FileNotFoundError(f"TF Hub handle '{handle}': no such path (and not an http(s) hub URL)")
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  try:
    return hub.resolve(handle)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"cannot resolve TF Hub handle '{handle}' ({type(e).__name__}: {e}). Without network, download "
        "the model once and pass its local directory (or set TFHUB_CACHE_DIR to a cache holding it)."
    ) from e


def _signature_keys(path: str):
  proto = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return set().union(*[set(mg.signature_def.keys()) for mg in proto.meta_graphs])


def is_hub_encoder(source: str) -> bool:
  """True for a hub URL, a TF1 Hub module, or a TF2 SavedModel that is not a realm-tf2 export.

  realm-tf2 exports (embedder, bert, reader, converter outputs) all have a `tokenization_info`
  signature; a TF Hub encoder has none (its vocab is the `vocab_file` attribute). Checkpoints and run
  directories are not hub encoders. Cheap: parses `saved_model.pb` only, never loads the model.
  """
  if not source:
    return False
  if _is_url(source):  # tf.io.gfile has no http(s) filesystem
    return True
  source = source.rstrip("/")
  if not tf.io.gfile.exists(os.path.join(source, "saved_model.pb")):
    return False
  if tf.io.gfile.exists(os.path.join(source, "tfhub_module.pb")):
    return True  # TF1 Hub format: rejected with a conversion hint by load_hub_encoder.
  return "tokenization_info" not in _signature_keys(source)


def _read_do_lower_case(path: str) -> Optional[bool]:
  """The exporter's `do_lower_case` variable, read from the checkpoint without loading the model."""
  prefix = os.path.join(path, "variables", "variables")
  if not tf.io.gfile.exists(prefix + ".index"):
    return None
  reader = tf.train.load_checkpoint(prefix)
  for key in reader.get_variable_to_shape_map():
    if key.split("/")[0] == "do_lower_case":
      return bool(reader.get_tensor(key))
  return None


def _preprocessing_lower_case(path: str) -> Optional[bool]:
  """`lower_case` of a Model Garden preprocessing SavedModel's tokenizer (from keras_metadata.pb)."""
  meta = os.path.join(path, "keras_metadata.pb")
  if not tf.io.gfile.exists(meta):
    return None
  with tf.io.gfile.GFile(meta, "rb") as f:
    match = re.search(rb'"lower_case": (true|false)', f.read())
  return None if match is None else match.group(1) == b"true"


def find_hub_vocab(handle: str) -> Tuple[Optional[str], Optional[bool]]:
  """Finds the WordPiece vocab of a hub encoder without loading it.

  Looked up in order: the encoder's own `assets/vocab.txt` (the `vocab_file` asset of Model Garden
  exports and of the TF Hub BERTs); a sibling preprocessing SavedModel (a directory next to the
  encoder whose name contains "preprocess", holding `assets/vocab.txt`).

  Returns:
    (vocab_file path or None, do_lower_case or None when unknown).
  """
  path = resolve_handle(handle)
  own = os.path.join(path, "assets", "vocab.txt")
  if tf.io.gfile.exists(own):
    return own, _read_do_lower_case(path)
  parent = os.path.dirname(path.rstrip("/"))
  if parent and tf.io.gfile.isdir(parent):
    for name in sorted(tf.io.gfile.listdir(parent)):
      sibling = os.path.join(parent, name.rstrip("/"))
      vocab = os.path.join(sibling, "assets", "vocab.txt")
      if "preprocess" in name.lower() and tf.io.gfile.exists(vocab):
        return vocab, _preprocessing_lower_case(sibling)
  return None, None


def infer_bert_architecture(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, int]:
  """Architecture of a Model Garden BERT encoder from its canonical variable shapes.

  Args:
    shapes: canonical name (see `canonical_name`) -> shape.
  Returns:
    dict with the `_ARCH_FIELDS` keys (vocab_size, hidden_size, num_layers, num_attention_heads,
    intermediate_size, max_position_embeddings, type_vocab_size).
  Raises:
    ValueError: if the word embeddings or layer 0 are missing.
  """
  try:
    vocab, hidden = shapes["word_embeddings/embeddings"]
    q_kernel = shapes["transformer/layer_0/self_attention/query/kernel"]  # [H, heads, H/heads]
    inner = shapes["transformer/layer_0/intermediate/kernel"][1]  # [H, I]
  except KeyError as e:
    raise ValueError(f"not a BERT encoder: variable {e} missing (have e.g. {sorted(shapes)[:6]})") from e
  layers = {int(m.group(1)) for n in shapes for m in [re.match(r"transformer/layer_(\d+)/", n)] if m}
  return {"vocab_size": int(vocab), "hidden_size": int(hidden), "num_layers": len(layers),
          "num_attention_heads": int(q_kernel[1]), "intermediate_size": int(inner),
          "max_position_embeddings": int(shapes["position_embedding/embeddings"][0]),
          "type_vocab_size": int(shapes["type_embeddings/embeddings"][0])}


@dataclasses.dataclass
class HubEncoder:
  """A loaded TF Hub encoder.

  Attributes:
    path: Resolved SavedModel path.
    weights: canonical name -> np.ndarray (encoder incl. `pooler_transform`, and `cls/predictions/...`
      when the export has an MLM head).
    architecture: `infer_bert_architecture(weights)`.
    vocab_file / do_lower_case: From the export (or a sibling preprocessing model), None if absent.
    loaded: The `tf.saved_model.load` object (callable with the dict inputs; `.mlm` if present).
  """
  path: str
  weights: Dict[str, np.ndarray]
  architecture: Dict[str, int]
  vocab_file: Optional[str]
  do_lower_case: Optional[bool]
  loaded: object

  @property
  def has_mlm_head(self) -> bool:
    return any(n.startswith("cls/predictions/") for n in self.weights)

  def __call__(self, input_ids, input_mask, segment_ids):
    """Runs the hub model (training=False) on our feature names; returns its output dict."""
    return self.loaded({"input_word_ids": tf.cast(input_ids, tf.int32),
                        "input_mask": tf.cast(input_mask, tf.int32),
                        "input_type_ids": tf.cast(segment_ids, tf.int32)}, training=False)


def load_hub_encoder(handle: str) -> HubEncoder:
  """Loads a TF2 TF Hub BERT encoder and collects its weights by canonical name.

  Also reads realm-tf2 exports (`bert`, `embedder`, `reader`: their BERT variables keep the Model
  Garden names), which is how `tfhub_encoder_export` turns them into hub-format encoders.

  Raises:
    ValueError: for a TF1 Hub module, or a SavedModel whose variables are not a BERT encoder's.
  """
  path = resolve_handle(handle)
  if tf.io.gfile.exists(os.path.join(path, "tfhub_module.pb")):
    raise ValueError(
        f"{handle}: a TF1 Hub module (tfhub_module.pb); only TF2 SavedModel encoders can be "
        "transferred. Convert its variables with `python -m data_prep.convert_checkpoint "
        "--source_format=bert_tf1 --source=<dir>/variables/variables --output_dir=...` instead.")
  loaded = tf.saved_model.load(path)
  # Keras SavedModels (TF Hub encoders) restore `.variables`; realm-tf2 exports track `model_variables`.
  # Either way the restored variables keep their original names, which is what the mapping uses.
  variables = list(getattr(loaded, "variables", None) or getattr(loaded, "model_variables", None) or [])
  mlm = getattr(loaded, "mlm", None)
  if mlm is not None:
    variables += list(getattr(mlm, "variables", []))
  weights = {}
  for v in variables:
    key = canonical_name(v.name)
    if key is None:
      continue
    if key in weights and weights[key].shape != tuple(v.shape):
      raise ValueError(f"{handle}: two variables map to '{key}' with different shapes")
    weights[key] = v.numpy()
  if not weights:
    raise ValueError(f"{handle}: no BERT encoder variables found (variable names: "
                     f"{[v.name for v in variables][:8]}); is this a TF Hub BERT encoder?")
  arch = infer_bert_architecture({k: w.shape for k, w in weights.items()})
  vocab_file, lower = None, None
  asset = getattr(loaded, "vocab_file", None)
  if "tokenization_info" in getattr(loaded, "signatures", {}):  # a realm-tf2 export (contracts §3)
    info = loaded.signatures["tokenization_info"]()
    vocab_file = info["vocab_file"].numpy().decode("utf-8")
    lower = bool(info["do_lower_case"].numpy())
  elif asset is not None and hasattr(asset, "asset_path"):
    vocab_file = asset.asset_path.numpy().decode("utf-8")
    if hasattr(loaded, "do_lower_case"):
      lower = bool(loaded.do_lower_case.numpy())
  else:
    vocab_file, lower = find_hub_vocab(path)
  logging.info("Loaded TF Hub encoder %s: %s, mlm head: %s, vocab: %s", path, arch,
               any(k.startswith("cls/") for k in weights), vocab_file)
  return HubEncoder(path, weights, arch, vocab_file, lower, loaded)


def architecture_mismatch(ours: Mapping[str, int], hub: Mapping[str, int]) -> str:
  """"num_layers: hub 2 vs ours 3; ..." for every differing field ("" when they agree)."""
  return "; ".join(f"{f}: hub {hub[f]} vs ours {ours[f]}" for f in _ARCH_FIELDS
                   if ours.get(f) != hub.get(f))


def transfer_to_encoder(encoder, hub: HubEncoder, masked_lm=None, source: str = "") -> int:
  """Assigns the hub weights to a built `BertEncoderV2` (and optionally our `MaskedLM` head).

  Args:
    encoder: Built `BertEncoderV2` (weights exist).
    hub: `load_hub_encoder(...)`.
    masked_lm: Optional built `MaskedLM`; its `cls/predictions/...` variables are assigned when the hub
      model has an MLM head (otherwise they keep their initialisation, with a warning).
    source: Handle for messages.
  Returns:
    Number of variables assigned.
  Raises:
    ValueError: naming the architecture fields that differ (layers, hidden, heads, vocab, ...) or
      the first variable missing / mis-shaped in the hub model.
  """
  source = source or hub.path
  ours = {}
  for v in encoder.variables:
    key = canonical_name(v.name)
    if key is None or key in ours:
      raise ValueError(f"cannot map our encoder variable '{v.name}' to a canonical BERT name")
    ours[key] = v
  diff = architecture_mismatch(infer_bert_architecture({k: tuple(v.shape) for k, v in ours.items()}),
                               hub.architecture)
  if diff:
    raise ValueError(f"TF Hub encoder {source} does not match our BERT config ({diff}); set "
                     "task.model.bert (e.g. --config_file=configs/sizes/... or --params_override="
                     "task.model.bert.num_layers=...) to the hub model's architecture "
                     f"{hub.architecture}")
  targets = list(ours.items())
  if masked_lm is not None:
    head = {}
    for v in masked_lm.variables:
      key = canonical_name(v.name)
      if key and key.startswith("cls/predictions/"):
        head[key] = v
    if hub.has_mlm_head:
      targets += list(head.items())
    else:
      logging.warning("TF Hub encoder %s has no MLM head (.mlm); our MLM transform/bias stay freshly "
                      "initialised (the output projection is tied to the transferred embeddings)", source)
  for key, var in targets:
    if key not in hub.weights:
      raise ValueError(f"TF Hub encoder {source} has no variable '{key}' (needed for our '{var.name}')")
    value = hub.weights[key]
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"TF Hub encoder {source}: '{key}' has shape {value.shape}, ours "
                       f"'{var.name}' {tuple(var.shape)}")
    var.assign(value.astype(var.dtype.as_numpy_dtype))
  missing = sorted(set(hub.weights) - {k for k, _ in targets} -
                   ({k for k in hub.weights if k.startswith("cls/")} if masked_lm is None else set()))
  if missing:
    logging.warning("TF Hub encoder %s: variables not used: %s", source, missing)
  return len(targets)


def init_from_hub(model, handle: str, hub: Optional[HubEncoder] = None) -> str:
  """Transfers a TF Hub encoder into one of our towers.

  Args:
    model: A built `BertEncoderV2`, or a model with an `.encoder` (RealmEmbedder: projection stays
      fresh; OrqaReader: span head stays fresh; KnowledgeAugmentedEncoder: also `.masked_lm`).
    handle: Path / gs:// / hub URL.
    hub: An already loaded `HubEncoder` (to transfer one load into several towers).
  Returns:
    A description "tfhub:<path> (<n> variables)" for logs.
  """
  hub = hub or load_hub_encoder(handle)
  encoder = getattr(model, "encoder", model)
  masked_lm = getattr(model, "masked_lm", None)
  n = transfer_to_encoder(encoder, hub, masked_lm=masked_lm, source=handle)
  if encoder is not model and masked_lm is None:
    logging.info("%s: only the BERT encoder comes from the TF Hub model; the rest of '%s' keeps its "
                 "initialisation", handle, model.name)
  logging.info("Initialised %s from TF Hub encoder %s (%d variables)", model.name, hub.path, n)
  return f"tfhub:{hub.path} ({n} variables)"


def flag_overrides(handles: Mapping[str, Optional[str]], vocab_file_given: bool,
                   do_lower_case_given: bool) -> Dict[str, object]:
  """Config overrides for the `--*_hub_module_handle` flags of run_pretrain.py / run_finetune.py.

  Hub URLs are resolved to their (cached) local path once, here; when no `--vocab_file` is given, the
  vocab (and `do_lower_case`, unless given) of the first TF Hub encoder that has one is used, so
  `--bert_hub_module_handle=<TF Hub BERT>` alone brings its tokenizer.

  Args:
    handles: config path (e.g. "task.bert_init") -> handle or None.
    vocab_file_given / do_lower_case_given: Whether the user set those flags.
  Returns:
    dotted config path -> value.
  """
  out = {}
  vocab_taken = vocab_file_given
  for path, handle in handles.items():
    if not handle:
      continue
    if not is_hub_encoder(handle):
      out[path] = handle
      continue
    local = resolve_handle(handle)
    out[path] = local
    if not vocab_taken:
      vocab, lower = find_hub_vocab(local)
      if vocab:
        out["task.vocab_file"] = vocab
        if lower is not None and not do_lower_case_given:
          out["task.do_lower_case"] = lower
        vocab_taken = True
        logging.info("vocab from TF Hub encoder %s: %s (do_lower_case=%s)", handle, vocab, lower)
  return out
