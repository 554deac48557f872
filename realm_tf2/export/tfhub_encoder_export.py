r"""Hub-format (TF2 encoder API) export of a realm-tf2 BERT, e.g. the ORQA reader or the REALM `bert`.

Writes what Model Garden's `official/nlp/tools/export_tfhub.py --export_type=model[_with_mlm]` writes, so
users can fine-tune our encoder in their own code with `hub.KerasLayer(path, trainable=True)`:
  a Keras SavedModel called with {input_word_ids, input_mask, input_type_ids} int32 [B,T] returning
  {pooled_output [B,H], sequence_output [B,T,H], encoder_outputs [L x [B,T,H]], default (= pooled)},
  with a `vocab_file` asset and a `do_lower_case` variable; with `--with_mlm` (and an MLM head in the
  source) also an `.mlm` sub-object taking `masked_lm_positions` and returning `mlm_logits`.

Model Garden's `export_tfhub_lib.export_model` restores from a *Model Garden* checkpoint layout
(`encoder=` / `checkpoint_items`); our sources are SavedModel exports (flat variable lists) and task
checkpoints, so the weights are moved by canonical name (`hub_init.transfer_to_encoder`) and the Keras
model is assembled exactly like `export_tfhub_lib._create_model` does.

  python -m realm_tf2.export.tfhub_encoder_export --source=orqa/export/best/reader \
      --export_dir=/tmp/reader_encoder_hub
  python -m realm_tf2.export.tfhub_encoder_export --source=orqa/ckpt-1000 \
      --config_file=configs/sizes/base.yaml --vocab_file=vocab.txt --export_dir=...

Sources: any realm-tf2 SavedModel export (`bert`, `reader`, `embedder`/`retriever`: its BERT), a
converter output, or (with `--config_file` for the architecture and `--vocab_file`) a training run
directory / checkpoint prefix (the first tower of `init_utils.BERT_ENCODER_ROOTS`: bert, then reader).
"""
import os
import shutil
from typing import Optional

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tf_keras
from official.modeling import activations
from official.nlp.modeling import models

from realm_tf2 import configs
from realm_tf2 import io_utils
from realm_tf2.modeling import bert as bert_lib
from realm_tf2.modeling import hub_init
from realm_tf2.modeling import init_utils


def bert_config_from_architecture(arch, base: Optional[configs.BertConfig] = None) -> configs.BertConfig:
  """`configs.BertConfig` with the sizes of `hub_init.infer_bert_architecture` (rest from `base`)."""
  cfg = configs.BertConfig() if base is None else base.replace()
  return cfg.replace(**{k: arch[k] for k in ("vocab_size", "hidden_size", "num_layers",
                                              "num_attention_heads", "intermediate_size",
                                              "max_position_embeddings", "type_vocab_size")})


def build_hub_keras_model(encoder, with_mlm_config: Optional[configs.BertConfig] = None):
  """The Keras model `export_tfhub_lib._create_model` builds, around our built `BertEncoderV2`.

  Returns:
    (core_model, pretrainer or None). `core_model.mlm` is set when `with_mlm_config` is given.
  """
  inputs = dict(encoder.inputs)  # BertEncoderV2: dict of KerasTensors keyed by the hub input names
  outputs = dict(encoder(inputs))
  outputs["default"] = outputs["pooled_output"]
  core_model = tf_keras.Model(inputs=inputs, outputs=outputs)
  pretrainer = None
  if with_mlm_config is not None:
    activation = (activations.gelu if with_mlm_config.hidden_activation == "gelu"
                  else tf_keras.activations.get(with_mlm_config.hidden_activation))
    pretrainer = models.BertPretrainerV2(
        encoder_network=encoder, mlm_activation=activation,
        mlm_initializer=tf_keras.initializers.TruncatedNormal(
            stddev=with_mlm_config.initializer_range))
    mlm_inputs = dict(pretrainer.inputs)
    mlm_model = tf_keras.Model(inputs=mlm_inputs, outputs=pretrainer(mlm_inputs))
    core_model._auto_track_sub_layers = False  # pylint: disable=protected-access  (as Model Garden)
    core_model.mlm = mlm_model
  return core_model, pretrainer


def export_tfhub_encoder(source: str, export_dir: str, with_mlm: bool = False,
                         bert_config: Optional[configs.BertConfig] = None,
                         vocab_file: Optional[str] = None,
                         do_lower_case: Optional[bool] = None) -> str:
  """Writes a TF Hub-format encoder SavedModel from one of our exports or checkpoints (atomically).

  Args:
    source: realm-tf2 SavedModel export dir, or (with `bert_config` and `vocab_file`) a run dir /
      checkpoint prefix.
    export_dir: Output directory (replaced atomically if it exists).
    with_mlm: Also export the `.mlm` sub-object (source must have an MLM head, i.e. a `bert` export).
    bert_config: Architecture; required for checkpoints, optional for exports (sizes are inferred
      from the variables; activation/initializer taken from it).
    vocab_file / do_lower_case: Override the source's tokenization_info (required for checkpoints).
  Returns:
    export_dir.
  Raises:
    ValueError: unusable source, missing vocab, or `with_mlm` without an MLM head.
  """
  is_export = tf.io.gfile.exists(os.path.join(source.rstrip("/"), "saved_model.pb"))
  if is_export:
    src = hub_init.load_hub_encoder(source)
    cfg = bert_config_from_architecture(src.architecture, bert_config)
    vocab_file = vocab_file or src.vocab_file
    do_lower_case = src.do_lower_case if do_lower_case is None else do_lower_case
    if with_mlm and not src.has_mlm_head:
      raise ValueError(f"{source}: no MLM head (cls/predictions/...) to export with --with_mlm; use a "
                       "`bert` export")
  else:
    if bert_config is None or not vocab_file:
      raise ValueError(f"{source} is a checkpoint: --config_file (architecture) and --vocab_file are "
                       "required")
    cfg, src = bert_config, None
  if not vocab_file or not tf.io.gfile.exists(vocab_file):
    raise ValueError(f"{source}: no vocab file found (got {vocab_file!r}); pass --vocab_file")
  encoder = bert_lib.build_bert_encoder(cfg, name="bert_encoder")
  core_model, pretrainer = build_hub_keras_model(encoder, cfg if with_mlm else None)
  if src is not None:
    hub_init.transfer_to_encoder(encoder, src, masked_lm=pretrainer.masked_lm if pretrainer else None,
                                 source=source)
  else:
    init_utils.init_bert_encoder(encoder, source)
    if pretrainer is not None:
      raise ValueError("--with_mlm needs a `bert` SavedModel export as --source, not a checkpoint")

  # Same attributes as export_tfhub_lib.export_model (the vocab travels with the encoder).
  core_model.vocab_file = tf.saved_model.Asset(_staged_vocab(vocab_file))
  core_model.do_lower_case = tf.Variable(bool(do_lower_case if do_lower_case is not None else True),
                                         trainable=False)
  try:
    with io_utils.atomic_dir(export_dir) as tmp_dir:
      core_model.save(tmp_dir, include_optimizer=False, save_format="tf")
  finally:
    shutil.rmtree(_STAGE.pop(vocab_file, ""), ignore_errors=True)
  logging.info("Wrote TF Hub-format encoder %s (%s)", export_dir, hub_init.infer_bert_architecture(
      {hub_init.canonical_name(v.name): tuple(v.shape) for v in encoder.variables}))
  return export_dir


_STAGE = {}


def _staged_vocab(vocab_file: str) -> str:
  """The asset keeps its base name; stage non-`vocab.txt` (or gs://) files as a local vocab.txt."""
  if os.path.basename(vocab_file) == "vocab.txt" and "://" not in vocab_file:
    return vocab_file
  import tempfile  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="realm_tf2_hubvocab_")
  tf.io.gfile.copy(vocab_file, os.path.join(tmp, "vocab.txt"), overwrite=True)
  _STAGE[vocab_file] = tmp
  return os.path.join(tmp, "vocab.txt")


def _define_flags():
  flags.DEFINE_string("source", None, "Our export (bert/reader/embedder) or a run dir/checkpoint.")
  flags.DEFINE_string("export_dir", None, "Output directory of the hub-format encoder.")
  flags.DEFINE_bool("with_mlm", False, "Also export `.mlm` (source must be a `bert` export).")
  flags.DEFINE_multi_string("config_file", None, "YAML with task.model.bert (needed for checkpoints).")
  flags.DEFINE_string("vocab_file", None, "Vocab (default: the export's tokenization_info).")
  flags.DEFINE_bool("do_lower_case", None, "Default: the export's tokenization_info, else True.")
  flags.mark_flags_as_required(["source", "export_dir"])


def _bert_config_from_files(paths) -> Optional[configs.BertConfig]:
  if not paths:
    return None
  from official.modeling.hyperparams import params_dict  # pylint: disable=g-import-not-at-top
  from realm_tf2.tasks import finetune_experiments  # pylint: disable=g-import-not-at-top
  params = finetune_experiments.orqa_experiment()
  for path in paths:
    params = params_dict.override_params_dict(params, path, is_strict=True)
  return params.task.model.bert


def main(argv):
  del argv
  fl = flags.FLAGS
  cfg = _bert_config_from_files(fl.config_file)
  if cfg is not None and not cfg.vocab_size and fl.vocab_file:
    cfg = cfg.replace(vocab_size=sum(1 for _ in tf.io.gfile.GFile(fl.vocab_file)))
  out = export_tfhub_encoder(fl.source, fl.export_dir, fl.with_mlm, cfg, fl.vocab_file, fl.do_lower_case)
  print(f"[tfhub_encoder_export] wrote {out}", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
