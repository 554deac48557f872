"""Initialising models from our exports, converter outputs and training checkpoints.

One entry point per tower, each accepting any of these `source`s (gfile paths, so gs:// works):
  * a SavedModel export directory (`export/<step>/embedder`, `.../bert`, converter `DIR/embedder`):
    its `variables/variables` is an object-based checkpoint rooted at the export module;
  * a training run directory or checkpoint prefix (`model_dir`, `model_dir/ckpt-100`): Model
    Garden's `tf.train.Checkpoint(model=<task model>, optimizer=..., global_step=...)`;
  * any other object-based checkpoint holding the tower under one of the known roots.

Keras' own `load_weights` cannot do this: it needs the same root object, and our roots differ
(`model` for an ICT run whose task model IS the embedder, `model/embedder` for a REALM run,
`model` or a flat `model_variables` list inside an export module). So the root is found from the
checkpoint's keys and the tower is restored through a matching chain of `tf.train.Checkpoint`s, then
`assert_existing_objects_matched()` guarantees every variable of the tower was found (a partial or
mismatched source is an error, never a silent half-initialisation).

Public API:
  resolve_checkpoint(source) -> str                       # checkpoint prefix
  restore_tower(model, source, roots=None) -> str         # root path used ("model/embedder", ...)
  init_embedder(embedder, source) -> str                  # RealmEmbedder from ICT/REALM/ORQA sources
  init_knowledge_encoder(encoder, source) -> str          # KnowledgeAugmentedEncoder from bert sources
  init_bert_encoder(bert_encoder, source) -> str          # a bare BertEncoderV2 from any of them

Each `init_*` also accepts a TF Hub / Kaggle TF2 BERT encoder (path, gs:// or hub URL); its weights are
transferred by `hub_init.init_from_hub` (encoder, and the MLM head when both sides have one).
"""
import os
from typing import Any, Callable, Optional, Sequence

import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

from realm_tf2.modeling import hub_init

# Candidate roots, most specific first. The first with keys "<root>/encoder/..." is used.
EMBEDDER_ROOTS = ("model/embedder", "model/query_embedder", "model/retriever", "embedder",
                  "retriever", "model")
KNOWLEDGE_ENCODER_ROOTS = ("model/bert", "model/knowledge_encoder", "bert", "model")
BERT_ENCODER_ROOTS = tuple(f"{r}/encoder" for r in
                           ("model/bert", "model/reader", "model/embedder", "model/retriever",
                            "bert", "reader", "embedder", "retriever", "model"))
_FLAT_LIST_ROOT = "model_variables"  # export modules that track `list(model.variables)`


def resolve_checkpoint(source: str) -> str:
  """Returns the checkpoint prefix for an export dir, a run dir or a checkpoint prefix.

  Raises:
    FileNotFoundError: naming `source` if nothing loadable is there.
  """
  source = source.rstrip("/")
  if tf.io.gfile.isdir(source):
    if tf.io.gfile.exists(os.path.join(source, "saved_model.pb")):
      return os.path.join(source, "variables", "variables")
    latest = tf.train.latest_checkpoint(source)
    if latest:
      return latest
    raise FileNotFoundError(
        f"init source '{source}' is a directory without saved_model.pb or a checkpoint")
  if tf.io.gfile.exists(source + ".index"):
    return source
  raise FileNotFoundError(f"init source '{source}': no SavedModel, checkpoint dir or '{source}.index'")


def _keys(prefix: str) -> Sequence[str]:
  return [name for name, _ in tf.train.list_variables(prefix)]


def _nested_checkpoint(root: str, obj) -> tf.train.Checkpoint:
  """`tf.train.Checkpoint(a=tf.train.Checkpoint(b=obj))` for root "a/b"."""
  parts = root.split("/")
  for part in reversed(parts[1:]):
    obj = tf.train.Checkpoint(**{part: obj})
  return tf.train.Checkpoint(**{parts[0]: obj})


def _find_root(keys: Sequence[str], roots: Sequence[str], marker: str) -> Optional[str]:
  for root in roots:
    probe = f"{root}/{marker}" if marker else f"{root}/"
    if any(k.startswith(probe) for k in keys):
      return root
  return None


def restore_tower(model: tf.Module, source: str, roots: Sequence[str] = EMBEDDER_ROOTS,
                  marker: str = "encoder/") -> str:
  """Restores every variable of `model` from `source`; returns the root path that matched.

  Args:
    model: A built Keras model (weights must exist).
    source: Export dir, run dir or checkpoint prefix (see module docstring).
    roots: Candidate object paths of the tower inside the checkpoint, most specific first.
    marker: A child that must exist below the root ("encoder/" for our towers; "" for a bare root).

  Raises:
    ValueError: if no root matches or some variable of `model` is missing/mis-shaped in `source`.
  """
  prefix = resolve_checkpoint(source)
  keys = _keys(prefix)
  root = _find_root(keys, roots, marker)
  if root is not None:
    ckpt = _nested_checkpoint(root, model)
  elif any(k.startswith(_FLAT_LIST_ROOT + "/") for k in keys):
    # Export module tracking a flat variable list: positional, so the count must match exactly.
    n_src = len({k.split("/")[1] for k in keys if k.startswith(_FLAT_LIST_ROOT + "/")})
    if n_src != len(model.variables):
      raise ValueError(f"{source}: export holds {n_src} variables, model '{model.name}' has "
                       f"{len(model.variables)}; architectures differ")
    root = _FLAT_LIST_ROOT
    ckpt = tf.train.Checkpoint(**{_FLAT_LIST_ROOT: list(model.variables)})
  else:
    sample = ", ".join(sorted({k.split("/.ATTRIBUTES")[0].rsplit("/", 3)[0] for k in keys})[:8])
    raise ValueError(f"{source}: no tower found under any of {list(roots)}; checkpoint has e.g. {sample}")
  try:
    status = ckpt.read(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(f"cannot restore '{model.name}' from {source} (root '{root}'): {e}") from e
  logging.info("Initialised %s from %s (root %s)", model.name, prefix, root)
  return root


def init_embedder(embedder, source: str) -> str:
  """Initialises a `RealmEmbedder` from an ICT/REALM embedder export, ORQA retriever export,
  converter output, or an ICT/REALM/ORQA training checkpoint. Returns the matched root."""
  if hub_init.is_hub_encoder(source):  # TF Hub BERT: encoder only, projection stays fresh
    return hub_init.init_from_hub(embedder, source)
  return restore_tower(embedder, source, EMBEDDER_ROOTS)


def init_knowledge_encoder(encoder, source: str) -> str:
  """Initialises a `KnowledgeAugmentedEncoder` from a `bert` export (REALM or converted BERT) or a
  REALM training checkpoint. Returns the matched root."""
  if hub_init.is_hub_encoder(source):  # TF Hub BERT: encoder (+ MLM head if the export has `.mlm`)
    return hub_init.init_from_hub(encoder, source)
  return restore_tower(encoder, source, KNOWLEDGE_ENCODER_ROOTS)


def init_bert_encoder(bert_encoder, source: str, donor_fns: Sequence[Callable[[], Any]] = ()) -> str:
  """Initialises a bare `BertEncoderV2` (e.g. the ORQA reader's) from any of the sources above.

  Args:
    bert_encoder: The built encoder.
    source: Export dir, run dir or checkpoint prefix.
    donor_fns: For exports that track a flat variable list (no object paths): callables returning a
      freshly built model of a class such exports hold (e.g. `lambda: KnowledgeAugmentedEncoder(cfg)`
      for a `bert` export, `lambda: RealmEmbedder(cfg)` for an `embedder` export). Each is tried in
      turn: the first that restores completely (same variable count and shapes) gives its `.encoder`
      weights.
  """
  if hub_init.is_hub_encoder(source):
    return hub_init.init_from_hub(bert_encoder, source)
  try:
    return restore_tower(bert_encoder, source, BERT_ENCODER_ROOTS, marker="")
  except ValueError as e:
    if not donor_fns:
      raise
    errors = [str(e)]
  for donor_fn in donor_fns:
    donor = donor_fn()
    try:
      root = restore_tower(donor, source, ())
    except ValueError as e:
      errors.append(str(e))
      continue
    bert_encoder.set_weights(donor.encoder.get_weights())
    return f"{root} (via {type(donor).__name__})"
  raise ValueError(f"cannot initialise '{bert_encoder.name}' from {source}: " + "; ".join(errors))
