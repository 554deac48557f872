"""data_prep.export_original: ours -> original names -> convert_checkpoint -> the same model.

Tiny BERT (vocab ~170, hidden 32, 2 layers, 2 heads), random weights everywhere (LayerNorm
gammas and biases too, so a swapped or mis-shaped variable shows). Each source is written by our
own code (exporters, `tf.train.CheckpointManager`, `export_best`'s layout), exported under the
original names and converted back by `convert_checkpoint.convert`. The converted model must hold
bit-identical weights and give the original outputs to 1e-6 (exports compared with exports, Keras
towers with Keras towers: those two execution paths differ by float rounding).
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import realm_tf2  # noqa: F401
import tensorflow as tf
import yaml

from data_prep import convert_checkpoint
from data_prep import export_original
from realm_tf2 import configs
from realm_tf2 import optimization
from realm_tf2.export import bert_export
from realm_tf2.export import embedder_export
from realm_tf2.export import reader_export
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import knowledge_encoder as ke_lib
from realm_tf2.modeling import orqa_model
from realm_tf2.modeling import reader as reader_lib
from realm_tf2.tasks import realm_task
from tests import tiny_fixtures
from tests.conftest import REPO_ROOT

H, L, HEADS, INNER, POS, PROJ, SPAN_H, WIDTH = 32, 2, 2, 37, 64, 16, 8, 3
V = len(tiny_fixtures.tiny_vocab())
BERT = configs.BertConfig(vocab_size=V, hidden_size=H, num_layers=L, num_attention_heads=HEADS,
                          intermediate_size=INNER, max_position_embeddings=POS)
INPUTS = {
    "input_ids": np.array([[2, 7, 30, 3, 12, 40, 3, 0], [2, 9, 3, 55, 3, 0, 0, 0]], np.int32),
    "input_mask": np.array([[1] * 7 + [0], [1] * 5 + [0] * 3], np.int32),
    "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]], np.int32),
    "mlm_positions": np.array([[1, 4], [3, 0]], np.int32),
    "block_mask": np.array([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]], np.int32)}
FEATS = ("input_ids", "input_mask", "segment_ids")

# Original §4 names, written out for layer 0 (the other layers differ only in the index).
LAYER_0 = [
    "bert/encoder/layer_0/attention/self/query/kernel",
    "bert/encoder/layer_0/attention/self/query/bias",
    "bert/encoder/layer_0/attention/self/key/kernel",
    "bert/encoder/layer_0/attention/self/key/bias",
    "bert/encoder/layer_0/attention/self/value/kernel",
    "bert/encoder/layer_0/attention/self/value/bias",
    "bert/encoder/layer_0/attention/output/dense/kernel",
    "bert/encoder/layer_0/attention/output/dense/bias",
    "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
    "bert/encoder/layer_0/attention/output/LayerNorm/beta",
    "bert/encoder/layer_0/intermediate/dense/kernel",
    "bert/encoder/layer_0/intermediate/dense/bias",
    "bert/encoder/layer_0/output/dense/kernel",
    "bert/encoder/layer_0/output/dense/bias",
    "bert/encoder/layer_0/output/LayerNorm/gamma",
    "bert/encoder/layer_0/output/LayerNorm/beta"]
EMBEDDINGS_POOLER = [
    "bert/embeddings/word_embeddings", "bert/embeddings/token_type_embeddings",
    "bert/embeddings/position_embeddings", "bert/embeddings/LayerNorm/gamma",
    "bert/embeddings/LayerNorm/beta", "bert/pooler/dense/kernel", "bert/pooler/dense/bias"]
MLM = ["cls/predictions/transform/dense/kernel", "cls/predictions/transform/dense/bias",
       "cls/predictions/transform/LayerNorm/gamma", "cls/predictions/transform/LayerNorm/beta",
       "cls/predictions/output_bias"]
# HF `load_tf_weights_in_realm` (original §4.4): the prefixes its rules rewrite.
HF_PREFIXES = (
    "bert/", "cls/predictions/", "module/module/module/module/bert/",
    "module/module/module/module/cls/predictions/", "module/module/module/dense/",
    "module/module/module/LayerNorm/", "module/module/module/bert/",
    "module/module/module/cls/predictions/", "module/module/dense/", "module/module/LayerNorm/",
    "reader/module/bert/", "reader/module/cls/", "reader/dense/", "reader/dense_1/",
    "reader/layer_normalization/")


def bert_names(prefix=""):
  layers = [n.replace("layer_0", f"layer_{i}") for i in range(L) for n in LAYER_0]
  return {prefix + n for n in EMBEDDINGS_POOLER + layers}


def mlm_names(prefix=""):
  return {prefix + n for n in MLM}


def assert_hf_loadable(name):
  assert name.startswith(HF_PREFIXES), name
  leaf = name.split("/")[-1]
  assert leaf in ("kernel", "bias", "gamma", "beta", "output_bias") or leaf.endswith("_embeddings")
  assert not any(s in name for s in ("adam_m", "adam_v", ".ATTRIBUTES", "OPTIMIZER_SLOT")), name


def randomize(model, seed):
  rng = np.random.default_rng(seed)
  for v in model.variables:
    base = 1.0 if "gamma" in v.name else 0.0
    v.assign((base + rng.normal(0.0, 0.2, v.shape)).astype(np.float32))
  return model


def checkpoint_names(prefix):
  return {n for n, _ in tf.train.list_variables(str(prefix))}


def write_params_yaml(model_dir, vocab_file, **model):
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "params.yaml"), "w") as f:
    yaml.safe_dump({"task": {"vocab_file": vocab_file, "model": model}}, f)


def tensors(names):
  return {k: tf.constant(INPUTS[k]) for k in names}


def run_exports(embedder_dir=None, bert_dir=None, reader_dir=None):
  """Outputs of our SavedModel signatures on INPUTS."""
  out = {}
  if embedder_dir:
    m = tf.saved_model.load(str(embedder_dir))
    out["projected"] = m.signatures["projected"](**tensors(FEATS))["default"].numpy()
  if bert_dir:
    m = tf.saved_model.load(str(bert_dir))
    for k, v in m.signatures["tokens"](**tensors(FEATS)).items():
      out["tokens:" + k] = v.numpy()
    mlm = m.signatures["mlm"](**tensors(FEATS + ("mlm_positions",)))
    out["mlm_logits"] = mlm["mlm_logits"].numpy()
  if reader_dir:
    m = tf.saved_model.load(str(reader_dir))
    for k, v in m.signatures["span_logits"](**tensors(FEATS + ("block_mask",))).items():
      out["span:" + k] = v.numpy()
  return out


def run_keras(embedder=None, bert=None, reader=None):
  """The same outputs from Keras towers."""
  out = {}
  if embedder is not None:
    out["projected"] = embedder(tensors(FEATS), training=False).numpy()
  if bert is not None:
    r = bert(tensors(FEATS + ("mlm_positions",)), training=False)
    out["tokens:pooled_output"] = r["pooled_output"].numpy()
    out["tokens:sequence_output"] = r["sequence_output"].numpy()
    out["mlm_logits"] = r["mlm_logits"].numpy()
  if reader is not None:
    r = reader(tensors(FEATS + ("block_mask",)), training=False)
    for k in ("logits", "starts", "ends"):
      out["span:" + k] = r[k].numpy()
  return out


def converted_tower(converted_dir, tower):
  """The Keras tower restored from the converter's init checkpoint `<tower>_ckpt`."""
  ckpt_dir = os.path.join(str(converted_dir), f"{tower}_ckpt")
  with open(os.path.join(ckpt_dir, "config.json")) as f:
    model = convert_checkpoint.build_model_from_config(json.load(f))
  tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(ckpt_dir)).assert_consumed()
  return model


def assert_same_weights(got, want):
  """Same variables (names below the model name), bit-identical values."""
  strip = lambda v: v.name.split("/", 1)[1]  # noqa: E731
  assert [strip(v) for v in got.variables] == [strip(v) for v in want.variables]
  for a, b in zip(got.variables, want.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


def assert_same_outputs(got, want):
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].shape == want[k].shape, k
    # Invalid spans carry -10000: 1e-6 relative there, 1e-6 absolute everywhere else.
    np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=1e-6 if k == "span:logits" else 0,
                               err_msg=k)


# ------------------------------------------------------------------------------------------------
# REALM from a step export, through the CLI.


@pytest.fixture(scope="module")
def realm_from_step_export(tmp_path_factory, tiny_vocab_file):
  root = tmp_path_factory.mktemp("realm_export")
  step_dir = root / "model_dir" / "export" / "7"
  embedder = randomize(embedder_lib.RealmEmbedder(BERT, projection_size=PROJ), 0)
  bert = randomize(ke_lib.KnowledgeAugmentedEncoder(BERT), 1)
  block_emb = np.random.default_rng(2).normal(size=(5, PROJ)).astype(np.float32)
  encoded = str(root / "enc" / "encoded.ckpt")
  export_original.write_name_keyed_checkpoint(encoded, {"block_emb": block_emb})
  embedder_export.export_embedder(embedder, tiny_vocab_file, True, str(step_dir / "embedder"),
                                  encoded_checkpoint=encoded)
  bert_export.export_bert(bert, tiny_vocab_file, True, str(step_dir / "bert"))
  out = root / "original"
  cli = subprocess.run(
      [sys.executable, "-m", "data_prep.export_original", f"--source={step_dir}", "--format=realm",
       f"--output_dir={out}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert cli.returncode == 0, cli.stderr[-3000:]
  converted = root / "converted"
  convert_checkpoint.convert("realm", str(out), str(converted), num_attention_heads=HEADS)
  with open(out / export_original.REPORT_NAME) as f:
    report = json.load(f)
  return dict(step_dir=step_dir, out=out, converted=converted, block_emb=block_emb,
              embedder=embedder, bert=bert, report=report)


def test_realm_step_export_round_trip(realm_from_step_export):
  r = realm_from_step_export
  want = run_exports(r["step_dir"] / "embedder", r["step_dir"] / "bert")
  got = run_exports(r["converted"] / "embedder", r["converted"] / "bert")
  assert_same_outputs(got, want)
  assert got["mlm_logits"].shape == (2, 2, V) and got["projected"].shape == (2, PROJ)
  assert_same_weights(converted_tower(r["converted"], "embedder"), r["embedder"])
  assert_same_weights(converted_tower(r["converted"], "bert"), r["bert"])
  for d in (r["out"], r["converted"]):  # encoded.ckpt written, then carried over by the converter
    enc = tf.train.load_checkpoint(str(d / "embedder" / "encoded" / "encoded.ckpt"))
    np.testing.assert_array_equal(enc.get_tensor("block_emb"), r["block_emb"])
  assert "embedder" in r["report"]["towers"] and r["report"]["source_kind"] == "export"


def test_realm_names_are_the_released_ones(realm_from_step_export):
  out = realm_from_step_export["out"]
  emb = checkpoint_names(out / "embedder" / "variables" / "variables")
  assert emb == (bert_names("module/module/module/") | mlm_names("module/module/module/")
                 | {"module/module/dense/kernel", "module/module/dense/bias",
                    "module/module/LayerNorm/gamma", "module/module/LayerNorm/beta"})
  bert = checkpoint_names(out / "bert" / "variables" / "variables")
  assert bert == bert_names() | mlm_names()
  assert len(bert) == 5 + 16 * L + 2 + 5
  shapes = dict(tf.train.list_variables(str(out / "embedder" / "variables" / "variables")))
  prefix = "module/module/module/bert/encoder/"
  assert shapes["module/module/dense/kernel"] == [H, PROJ]  # [in, out]
  assert shapes[prefix + "layer_1/attention/self/key/kernel"] == [H, H]
  assert shapes[prefix + "layer_1/attention/self/key/bias"] == [H]
  assert shapes[prefix + "layer_0/attention/output/dense/kernel"] == [H, H]
  assert shapes[prefix + "layer_0/intermediate/dense/kernel"] == [H, INNER]
  assert shapes["module/module/module/cls/predictions/output_bias"] == [V]
  for name in emb | bert:
    assert_hf_loadable(name)
  vocab = "\n".join(tiny_fixtures.tiny_vocab()) + "\n"
  for tower in ("embedder", "bert"):
    assert (out / tower / "assets" / "vocab.txt").read_text() == vocab
  report = realm_from_step_export["report"]
  assert len(report["towers"]["embedder"]["unused_mlm_head_initialised"]) == 5
  # No params.yaml beside the step export: the epsilon is assumed, and said so.
  assert report["towers"]["embedder"]["layer_norm_epsilon_from"] == "unknown"
  assert any("epsilon is unknown" in w for w in report["warnings"])


def test_without_unused_mlm_heads(realm_from_step_export, tmp_path):
  out = tmp_path / "o"
  report = export_original.export_original(str(realm_from_step_export["step_dir"]), "realm",
                                           str(out), write_unused_mlm_heads=False)
  emb = checkpoint_names(out / "embedder" / "variables" / "variables")
  assert emb == bert_names("module/module/module/") | {
      "module/module/dense/kernel", "module/module/dense/bias", "module/module/LayerNorm/gamma",
      "module/module/LayerNorm/beta"}
  assert report["towers"]["embedder"]["unused_mlm_head_initialised"] == []


def read_all(prefix):
  reader = tf.train.load_checkpoint(str(prefix))
  return {n: reader.get_tensor(n) for n in checkpoint_names(prefix)}


def test_converter_outputs_export_back_identically(realm_from_step_export, tmp_path):
  """Original -> converted -> original again: the same arrays, from the exports or the `_ckpt`s."""
  converted = realm_from_step_export["converted"]
  only_ckpts = tmp_path / "only_ckpts"
  only_ckpts.mkdir()
  for tower in ("embedder", "bert"):
    os.symlink(converted / f"{tower}_ckpt", only_ckpts / f"{tower}_ckpt")
  for source, kind in ((converted, "export"), (only_ckpts, "converter_checkpoint")):
    out = tmp_path / f"again_{kind}"
    report = export_original.export_original(str(source), "realm", str(out),
                                             vocab_file=str(converted / "embedder" / "assets" /
                                                            "vocab.txt"))
    assert report["source_kind"] == kind
    assert report["towers"]["embedder"]["layer_norm_epsilon_from"].endswith("config.json")
    for tower in ("embedder", "bert"):
      first = read_all(realm_from_step_export["out"] / tower / "variables" / "variables")
      again = read_all(out / tower / "variables" / "variables")
      assert sorted(first) == sorted(again)
      for name in first:
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)


# ------------------------------------------------------------------------------------------------
# REALM from a training checkpoint with separate query / document towers.


def test_realm_training_checkpoint_separate_towers(tmp_path, tiny_vocab_file):
  model_config = configs.ModelConfig(bert=BERT, projection_size=PROJ, share_embedders=False)
  model = randomize(realm_task.RealmPretrainModel(model_config, vocab_size=V), 3)
  optimizer = optimization.AdamWeightDecay(learning_rate=1e-3)
  optimizer.build(model.trainable_variables)  # slots named like the weights (m/embedder/...)
  model_dir = tmp_path / "realm_run"
  write_params_yaml(str(model_dir), tiny_vocab_file, embedder_layer_norm_epsilon=1e-12)
  ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer,
                             global_step=tf.Variable(5, dtype=tf.int64))
  tf.train.CheckpointManager(ckpt, str(model_dir), max_to_keep=2).save(checkpoint_number=5)
  stored = tf.train.list_variables(str(model_dir / "ckpt-5"))
  assert sum(n.startswith("optimizer/") for n, _ in stored) > 100

  out, converted = tmp_path / "original", tmp_path / "converted"
  report = export_original.export_original(str(model_dir), "realm", str(out))
  assert report["source_kind"] == "training_checkpoint"
  assert report["not_exported"] == {"doc_embedder": "model/doc_embedder/"}
  assert any("document tower" in w for w in report["warnings"])
  assert report["towers"]["embedder"]["layer_norm_epsilon_from"] == str(model_dir / "params.yaml")
  assert report["vocab_file"] == tiny_vocab_file  # from params.yaml
  convert_checkpoint.convert("realm", str(out), str(converted), num_attention_heads=HEADS)
  embedder, bert = converted_tower(converted, "embedder"), converted_tower(converted, "bert")
  assert_same_weights(embedder, model.embedder)
  assert_same_weights(bert, model.bert)
  got = run_keras(embedder=embedder, bert=bert)
  assert_same_outputs(got, run_keras(embedder=model.embedder, bert=model.bert))
  # The document tower really differs, so it was the query tower that was exported.
  doc = model.doc_embedder(tensors(FEATS), training=False).numpy()
  assert np.abs(doc - got["projected"]).max() > 1e-2


# ------------------------------------------------------------------------------------------------
# ORQA from a best export and from a training checkpoint.


@pytest.fixture(scope="module")
def orqa_from_best_export(tmp_path_factory, tiny_vocab_file):
  root = tmp_path_factory.mktemp("orqa_export")
  best = root / "model_dir" / "export" / "best"
  retriever = randomize(embedder_lib.RealmEmbedder(BERT, projection_size=PROJ, name="retriever"), 4)
  reader = randomize(reader_lib.OrqaReader(BERT, span_hidden_size=SPAN_H, max_span_width=WIDTH,
                                           seq_len=12), 5)
  embedder_export.export_embedder(retriever, tiny_vocab_file, True, str(best / "retriever"))
  reader_export.export_reader(reader, tiny_vocab_file, True, str(best / "reader"))
  out = root / "original"
  report = export_original.export_original(str(best), "orqa", str(out))
  converted = root / "converted"
  conversion = convert_checkpoint.convert("orqa", str(out / "model.ckpt"), str(converted),
                                          num_attention_heads=HEADS, max_span_width=WIDTH,
                                          reader_seq_len=12)
  return dict(best=best, out=out, converted=converted, report=report, conversion=conversion,
              retriever=retriever, reader=reader)


def test_orqa_best_export_round_trip(orqa_from_best_export):
  r = orqa_from_best_export
  want = run_exports(embedder_dir=r["best"] / "retriever", reader_dir=r["best"] / "reader")
  got = run_exports(embedder_dir=r["converted"] / "retriever", reader_dir=r["converted"] / "reader")
  assert_same_outputs(got, want)
  assert (got["span:logits"] > -5000).sum() == 3 + 6  # the spans inside both block masks
  assert_same_weights(converted_tower(r["converted"], "retriever"), r["retriever"])
  assert_same_weights(converted_tower(r["converted"], "reader"), r["reader"])
  assert r["conversion"].towers["retriever"]["variant"] == "realm"
  assert r["report"]["towers"]["retriever"]["variant"] == "realm"


def test_orqa_names_are_the_fine_tuned_ones(orqa_from_best_export):
  out = orqa_from_best_export["out"]
  names = checkpoint_names(out / "model.ckpt")
  retriever = (bert_names("module/module/module/module/")
               | mlm_names("module/module/module/module/")
               | {"module/module/module/dense/kernel", "module/module/module/dense/bias",
                  "module/module/module/LayerNorm/gamma", "module/module/module/LayerNorm/beta"})
  reader = (bert_names("reader/module/") | mlm_names("reader/module/")
            | {"reader/dense/kernel", "reader/dense/bias", "reader/dense_1/kernel",
               "reader/dense_1/bias", "reader/layer_normalization/gamma",
               "reader/layer_normalization/beta"})
  assert names == retriever | reader | {"global_step"}
  shapes = dict(tf.train.list_variables(str(out / "model.ckpt")))
  assert shapes["reader/dense/kernel"] == [H, 2 * SPAN_H]
  assert shapes["reader/dense_1/kernel"] == [SPAN_H, 1]
  assert shapes["module/module/module/dense/kernel"] == [H, PROJ]
  for name in names - {"global_step"}:
    assert_hf_loadable(name)
  assert tf.train.latest_checkpoint(str(out)) == str(out / "model.ckpt")
  assert (out / "vocab.txt").exists()
  # The converter skips exactly the unused MLM heads and global_step.
  skipped = orqa_from_best_export["conversion"].skipped
  assert set(skipped) == (mlm_names("module/module/module/module/") | mlm_names("reader/module/")
                          | {"global_step"})


def test_orqa_training_checkpoint_ict_variant(tmp_path, tiny_vocab_file):
  model_config = configs.ModelConfig(
      bert=BERT, projection_size=PROJ, embedder_layer_norm_epsilon=1e-3, span_hidden_size=SPAN_H,
      max_span_width=WIDTH, reader_seq_len=12, retriever_beam_size=2, reader_beam_size=1)
  rng = np.random.default_rng(6)
  model = orqa_model.OrqaModel(model_config, rng.normal(size=(4, PROJ)), rng.integers(5, V, (4, 6)),
                               np.full([4], 6), cls_id=2, sep_id=3, vocab_size=V)
  randomize(model, 7)
  model_dir = tmp_path / "orqa_run"
  write_params_yaml(str(model_dir), tiny_vocab_file, embedder_layer_norm_epsilon=1e-3,
                    reader_layer_norm_epsilon=1e-3)
  # run_finetune.export_best's checkpoint: tf.train.Checkpoint(model=model), export/best/checkpoint.
  prefix = model_dir / "export" / "best" / "checkpoint" / "model.ckpt-9"
  tf.train.Checkpoint(model=model).write(str(prefix))

  out, converted = tmp_path / "original", tmp_path / "converted"
  report = export_original.export_original(str(prefix), "orqa", str(out))
  assert report["towers"]["retriever"]["variant"] == "ict" and report["global_step"] == 9
  assert tf.train.load_checkpoint(str(out / "model.ckpt")).get_tensor("global_step") == 9
  assert {"module/dense/kernel", "module/layer_normalization/gamma",
          "module/module/bert/encoder/layer_1/output/LayerNorm/beta",
          "module/module/cls/predictions/output_bias"} <= checkpoint_names(out / "model.ckpt")
  conversion = convert_checkpoint.convert("orqa", str(out / "model.ckpt"), str(converted),
                                          num_attention_heads=HEADS, max_span_width=WIDTH,
                                          reader_seq_len=12)
  assert conversion.towers["retriever"]["variant"] == "ict"
  assert conversion.towers["retriever"]["config"]["layer_norm_epsilon"] == 1e-3
  retriever, reader = converted_tower(converted, "retriever"), converted_tower(converted, "reader")
  assert_same_weights(retriever, model.retriever)
  assert_same_weights(reader, model.reader)
  got = run_keras(embedder=retriever, reader=reader)
  assert_same_outputs(got, run_keras(embedder=model.retriever, reader=model.reader))


# ------------------------------------------------------------------------------------------------
# Bad sources.


def test_missing_source_names_the_path(tmp_path):
  missing = tmp_path / "no_such_run"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    export_original.export_original(str(missing), "realm", str(tmp_path / "o"))


def test_step_export_without_bert_names_it(realm_from_step_export, tmp_path):
  partial = tmp_path / "export" / "3"
  partial.mkdir(parents=True)
  os.symlink(realm_from_step_export["step_dir"] / "embedder", partial / "embedder")
  with pytest.raises(FileNotFoundError, match=re.escape(str(partial / "bert"))):
    export_original.export_original(str(partial), "realm", str(tmp_path / "o"))
  assert not (tmp_path / "o").exists()


def test_unreadable_checkpoint_names_the_path(tmp_path):
  prefix = tmp_path / "run" / "ckpt-1"
  prefix.parent.mkdir()
  (tmp_path / "run" / "ckpt-1.index").write_bytes(b"not a checkpoint index")
  with pytest.raises(ValueError, match=re.escape(f"cannot read checkpoint '{prefix}'")):
    export_original.export_original(str(prefix), "orqa", str(tmp_path / "o"))


def test_original_name_checkpoint_is_rejected(orqa_from_best_export, tmp_path):
  # Our own output is name-based: nothing to map, and the error says why.
  with pytest.raises(ValueError, match="no object graph"):
    export_original.export_original(str(orqa_from_best_export["out"] / "model.ckpt"), "orqa",
                                    str(tmp_path / "o"))


def test_wrong_tower_kind_is_an_error(orqa_from_best_export, tmp_path):
  # A reader export where an embedder is expected: its span head has no embedder name.
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  os.symlink(orqa_from_best_export["best"] / "reader", mixed / "embedder")
  os.symlink(orqa_from_best_export["best"] / "reader", mixed / "bert")
  with pytest.raises(KeyError, match="embedder .*missing variable 'reader/layer_norm/gamma'"):
    export_original.export_original(str(mixed), "realm", str(tmp_path / "o"))
