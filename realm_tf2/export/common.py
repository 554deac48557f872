"""Shared pieces of the SavedModel exports (contracts §3): layout, tokenization_info, atomic save.

An export is a plain `tf.Module` holding only the model's variables, the vocab `Asset` and
`tf.function` signatures. It is deliberately NOT a Keras SavedModel: loading it needs only TensorFlow
(no tf_keras, no realm_tf2, no Model Garden), via `tf.saved_model.load` or `hub.load`, and
`hub.KerasLayer(path, signature=..., output_key=...)` works because every signature takes keyword
inputs and returns a dict.
"""
import os
import shutil
import tempfile
from typing import Dict, Optional

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from realm_tf2 import io_utils

EXPORT_SUBDIR = "export"
BEST_SUBDIR = "best"
ENCODED_CKPT_RELPATH = os.path.join("encoded", "encoded.ckpt")
# `export/<step>/doc_embedder`: the document tower of a run with separate towers, beside `embedder`.
DOC_EMBEDDER_SUBDIR = "doc_embedder"


def step_export_dir(model_dir: str, step: int) -> str:
  """`model_dir/export/<step>`: holds `embedder/` and `bert/` (REALM)."""
  return os.path.join(model_dir, EXPORT_SUBDIR, str(int(step)))


def best_export_dir(model_dir: str) -> str:
  """`model_dir/export/best`: holds `retriever/` and `reader/` (ORQA) or the best REALM export."""
  return os.path.join(model_dir, EXPORT_SUBDIR, BEST_SUBDIR)


def encoded_checkpoint_path(embedder_export_dir: str) -> str:
  """`<embedder export>/encoded/encoded.ckpt` (the `block_emb` side file, contracts §3)."""
  return os.path.join(embedder_export_dir, ENCODED_CKPT_RELPATH)


def int_spec(rank: int, name: str) -> tf.TensorSpec:
  """int32 TensorSpec with unknown dims (any batch, any T)."""
  return tf.TensorSpec([None] * rank, tf.int32, name=name)


class _Untracked:
  """Plain holder: tf.Module does not track objects inside non-trackable attributes."""

  def __init__(self, obj):
    self.obj = obj


class ExportModule(tf.Module):
  """Base of the exported modules: tracks variables and the vocab asset.

  Args:
    model: A built tf_keras model; only its variables are tracked (not the Keras object itself).
    vocab_file: Path of vocab.txt, copied into the SavedModel's assets.
    do_lower_case: Whether the tokenizer lowercases.
  """

  def __init__(self, model, vocab_file: str, do_lower_case: bool):
    super().__init__()
    if not tf.io.gfile.exists(vocab_file):
      raise FileNotFoundError(f"vocab file '{vocab_file}' does not exist")
    # Only the variables are tracked (saved); the Keras object is held outside tf.Module's automatic
    # tracking so that no Keras SavedModel metadata or traced Keras call functions get written.
    self._holder = _Untracked(model)
    self.model_variables = list(model.variables)
    # The asset keeps its file name; stage it as `vocab.txt` like the original modules' assets/vocab.txt.
    self._staged_vocab_dir = None
    if os.path.basename(vocab_file) != "vocab.txt":
      self._staged_vocab_dir = tempfile.mkdtemp(prefix="realm_tf2_vocab_")
      staged = os.path.join(self._staged_vocab_dir, "vocab.txt")
      tf.io.gfile.copy(vocab_file, staged, overwrite=True)
      vocab_file = staged
    self.vocab_file = tf.saved_model.Asset(vocab_file)
    self._do_lower_case = bool(do_lower_case)

  @property
  def model(self):
    return self._holder.obj

  @tf.function(input_signature=[])
  def tokenization_info(self):
    """`{"vocab_file": string scalar (asset path), "do_lower_case": bool scalar}`."""
    return {"vocab_file": self.vocab_file.asset_path,
            "do_lower_case": tf.constant(self._do_lower_case)}


def copy_checkpoint(src_prefix: str, dst_prefix: str):
  """Copies all files of a checkpoint prefix (`.index`, `.data-*`)."""
  files = tf.io.gfile.glob(src_prefix + ".*")
  if not any(f.endswith(".index") for f in files):
    raise FileNotFoundError(f"no checkpoint at '{src_prefix}' ({src_prefix}.index missing)")
  tf.io.gfile.makedirs(os.path.dirname(dst_prefix))
  for f in files:
    tf.io.gfile.copy(f, dst_prefix + f[len(src_prefix):], overwrite=True)


def save_atomically(module: tf.Module, export_dir: str, signatures: Dict[str, object],
                    encoded_checkpoint: Optional[str] = None) -> str:
  """Saves `module` as a SavedModel into a temp dir beside `export_dir`, then renames it.

  Args:
    module: The export module.
    export_dir: Final directory.
    signatures: name -> concrete function.
    encoded_checkpoint: Optional checkpoint prefix (holding `block_emb`) copied to
      `export_dir/encoded/encoded.ckpt.*` before the rename, so the export appears complete at once.
  Returns:
    export_dir.
  """
  export_dir = export_dir.rstrip("/")
  try:
    with io_utils.atomic_dir(export_dir) as tmp_dir:
      tf.saved_model.save(module, tmp_dir, signatures=signatures,
                          options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
      if encoded_checkpoint:
        copy_checkpoint(encoded_checkpoint, encoded_checkpoint_path(tmp_dir))
  finally:
    staged = getattr(module, "_staged_vocab_dir", None)
    if staged:
      shutil.rmtree(staged, ignore_errors=True)
  return export_dir
