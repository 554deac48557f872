"""realm_tf2.export: signatures, dynamic T, fresh-process loading, hub.load / hub.KerasLayer, atomicity."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import realm_tf2  # noqa: F401
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from realm_tf2 import configs
from realm_tf2.export import bert_export
from realm_tf2.export import common
from realm_tf2.export import embedder_export
from realm_tf2.export import reader_export
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import knowledge_encoder as ke_lib
from realm_tf2.modeling import reader as reader_lib
from tests import tiny_fixtures

V = len(tiny_fixtures.tiny_vocab())
CFG = configs.BertConfig(vocab_size=V, hidden_size=32, num_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)
WIDTH = 3


def _feats(t, n=2, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, V, size=(n, t)).astype(np.int32)
  mask = np.ones((n, t), np.int32)
  mask[1, t - 2:] = 0
  seg = np.zeros((n, t), np.int32)
  seg[:, t // 2:] = 1
  block = np.zeros((n, t), np.int32)
  block[:, t // 2:t - 2] = 1
  return {"input_ids": ids * mask, "input_mask": mask, "segment_ids": seg * mask, "block_mask": block,
          "mlm_positions": np.array([[1, 2, t - 1]] * n, np.int32)}


LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    root = sys.argv[1]
    out = {}
    for t in (6, 11):
      x = dict(np.load(f"{root}/inputs_{t}.npz"))
      f = {k: tf.constant(x[k]) for k in ("input_ids", "input_mask", "segment_ids")}
      emb = tf.saved_model.load(f"{root}/export/7/embedder")
      out[f"emb_{t}"] = emb.signatures["projected"](**f)["default"].numpy()
      bert = tf.saved_model.load(f"{root}/export/7/bert")
      for k, v in bert.signatures["tokens"](**f).items():
        out[f"tokens_{k}_{t}"] = v.numpy()
      for k, v in bert.signatures["mlm"](mlm_positions=tf.constant(x["mlm_positions"]), **f).items():
        out[f"mlm_{k}_{t}"] = v.numpy()
      rd = tf.saved_model.load(f"{root}/export/best/reader")
      for k, v in rd.signatures["span_logits"](block_mask=tf.constant(x["block_mask"]), **f).items():
        out[f"span_{k}_{t}"] = v.numpy()
    info = emb.signatures["tokenization_info"]()
    out["vocab"] = np.array(open(info["vocab_file"].numpy().decode()).read())
    out["lower"] = info["do_lower_case"].numpy()
    out["bert_sigs"] = np.array(sorted(bert.signatures))
    assert "tf_keras" not in sys.modules and "realm_tf2" not in sys.modules, "imported more than TF"
    np.savez(f"{root}/outputs.npz", **out)
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_vocab_file):
  root = tmp_path_factory.mktemp("exports")
  models = {"embedder": embedder_lib.RealmEmbedder(CFG, projection_size=16),
            "bert": ke_lib.KnowledgeAugmentedEncoder(CFG),
            "reader": reader_lib.OrqaReader(CFG, span_hidden_size=8, max_span_width=WIDTH, seq_len=11)}
  step_dir = common.step_export_dir(str(root), 7)
  embedder_export.export_embedder(models["embedder"], tiny_vocab_file, True,
                                  os.path.join(step_dir, "embedder"))
  bert_export.export_bert(models["bert"], tiny_vocab_file, True, os.path.join(step_dir, "bert"))
  reader_export.export_reader(models["reader"], tiny_vocab_file, False,
                              os.path.join(common.best_export_dir(str(root)), "reader"))
  return dict(root=root, models=models)


@pytest.fixture(scope="module")
def fresh_results(exported):
  """Outputs of every signature computed in ONE fresh process importing only TF + TF Text."""
  root = exported["root"]
  for t in (6, 11):
    np.savez(root / f"inputs_{t}.npz", **_feats(t, seed=t))
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # as a user's process
  proc = subprocess.run([sys.executable, "-c", LOADER, str(root)], capture_output=True, text=True,
                        timeout=600, env=env, cwd=str(root))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(root / "outputs.npz"))


@pytest.fixture(scope="module")
def inprocess_results(exported):
  """Same outputs via tf.saved_model.load in this process (fast default-run check)."""
  root, out = exported["root"], {}
  emb = tf.saved_model.load(str(root / "export/7/embedder"))
  bert = tf.saved_model.load(str(root / "export/7/bert"))
  rd = tf.saved_model.load(str(root / "export/best/reader"))
  for t in (6, 11):
    x = _feats(t, seed=t)
    f = _tf(x)
    out[f"emb_{t}"] = emb.signatures["projected"](**f)["default"].numpy()
    for k, v in bert.signatures["tokens"](**f).items():
      out[f"tokens_{k}_{t}"] = v.numpy()
    for k, v in bert.signatures["mlm"](mlm_positions=tf.constant(x["mlm_positions"]), **f).items():
      out[f"mlm_{k}_{t}"] = v.numpy()
    for k, v in rd.signatures["span_logits"](block_mask=tf.constant(x["block_mask"]), **f).items():
      out[f"span_{k}_{t}"] = v.numpy()
  info = emb.signatures["tokenization_info"]()
  out["vocab"] = np.array(open(info["vocab_file"].numpy().decode()).read())
  out["lower"] = info["do_lower_case"].numpy()
  out["bert_sigs"] = np.array(sorted(bert.signatures))
  return out


def _tf(x, keys=("input_ids", "input_mask", "segment_ids")):
  return {k: tf.constant(x[k]) for k in keys}


def _check_outputs_equal_models(r, m, t):
  x = _feats(t, seed=t)
  np.testing.assert_allclose(r[f"emb_{t}"], m["embedder"](_tf(x), training=False).numpy(), atol=1e-5)
  assert r[f"emb_{t}"].shape == (2, 16) and r[f"emb_{t}"].dtype == np.float32
  out = m["bert"](_tf(x, ("input_ids", "input_mask", "segment_ids", "mlm_positions")), training=False)
  for k in ("pooled_output", "sequence_output"):
    np.testing.assert_allclose(r[f"tokens_{k}_{t}"], out[k].numpy(), atol=1e-5)
    np.testing.assert_allclose(r[f"mlm_{k}_{t}"], out[k].numpy(), atol=1e-5)
  np.testing.assert_allclose(r[f"mlm_mlm_logits_{t}"], out["mlm_logits"].numpy(), atol=1e-5)
  assert r[f"mlm_mlm_logits_{t}"].shape == (2, 3, V)
  # Reader: the export's run-time span list must equal OrqaReader.call at this static T.
  rd = m["reader"](_tf(x, ("input_ids", "input_mask", "segment_ids", "block_mask")), training=False)
  np.testing.assert_array_equal(r[f"span_starts_{t}"], rd["starts"].numpy())
  np.testing.assert_array_equal(r[f"span_ends_{t}"], rd["ends"].numpy())
  np.testing.assert_allclose(r[f"span_logits_{t}"], rd["logits"].numpy(), atol=1e-3)
  assert r[f"span_logits_{t}"].shape == (2, WIDTH * t - WIDTH * (WIDTH - 1) // 2)


@pytest.mark.parametrize("t", [6, 11])
def test_loaded_outputs_equal_models(exported, inprocess_results, t):
  _check_outputs_equal_models(inprocess_results, exported["models"], t)


@pytest.mark.slow
def test_fresh_process_outputs_equal_models(exported, fresh_results):
  for t in (6, 11):
    _check_outputs_equal_models(fresh_results, exported["models"], t)
  assert bool(fresh_results["lower"]) and list(fresh_results["bert_sigs"]) == ["mlm", "tokenization_info", "tokens"]


def test_span_order_and_invalid_spans(inprocess_results):
  r = inprocess_results
  starts, ends = r["span_starts_6"], r["span_ends_6"]
  # Widths 1,2,3; within a width starts 0..T-w (ORQA order): 6 + 5 + 4 spans.
  np.testing.assert_array_equal(starts, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2, 3])
  np.testing.assert_array_equal(ends - starts, [0] * 6 + [1] * 5 + [2] * 4)
  block = _feats(6, seed=6)["block_mask"]  # positions 3 only
  valid = block[:, starts] * block[:, ends]
  logits = r["span_logits_6"]
  assert (logits[valid == 0] < -5000).all() and (np.abs(logits[valid == 1]) < 100).all()


def test_tokenization_info(exported, inprocess_results, tiny_vocab_file):
  r = inprocess_results
  assert str(r["vocab"]) == open(tiny_vocab_file).read()
  assert bool(r["lower"])
  assert list(r["bert_sigs"]) == ["mlm", "tokenization_info", "tokens"]
  assert os.path.exists(exported["root"] / "export/7/embedder/assets/vocab.txt")


def test_hub_load_and_keras_layer(exported):
  root = exported["root"]
  x = _feats(6, seed=6)
  expected = exported["models"]["embedder"](_tf(x), training=False).numpy()
  module = hub.load(str(root / "export/7/embedder"))
  np.testing.assert_allclose(module.signatures["projected"](**_tf(x))["default"].numpy(), expected,
                             atol=1e-5)
  reader_info = hub.load(str(root / "export/best/reader")).signatures["tokenization_info"]()
  assert not bool(reader_info["do_lower_case"].numpy())

  # hub.KerasLayer inside a tiny tf_keras model (keyword inputs, output_key).
  inputs = {k: tf_keras.Input(shape=(None,), dtype=tf.int32, name=k)
            for k in ("input_ids", "input_mask", "segment_ids")}
  layer = hub.KerasLayer(str(root / "export/7/embedder"), signature="projected", output_key="default")
  emb = layer(inputs)
  score = tf_keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)(emb)
  model = tf_keras.Model(inputs, score)
  np.testing.assert_allclose(model(_tf(x)).numpy()[:, 0], expected.sum(-1), atol=1e-4)


def test_export_replaces_atomically(exported, tiny_vocab_file, tmp_path):
  target = str(tmp_path / "export/3/embedder")
  model = exported["models"]["embedder"]
  embedder_export.export_embedder(model, tiny_vocab_file, True, target)
  tf.io.gfile.makedirs(target + "/stale_marker")
  embedder_export.export_embedder(model, tiny_vocab_file, False, target)  # overwrite
  assert sorted(os.listdir(tmp_path / "export/3")) == ["embedder"]  # no tmp/old dirs left
  assert not os.path.exists(target + "/stale_marker")
  assert os.path.exists(os.path.join(target, "saved_model.pb"))


def test_encoded_checkpoint_is_included(exported, tiny_vocab_file, tmp_path):
  block_emb = np.arange(12, dtype=np.float32).reshape(3, 4)
  prefix = str(tmp_path / "enc/encoded.ckpt")
  tf.io.gfile.makedirs(str(tmp_path / "enc"))
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["block_emb"], shape_and_slices=[""],
                    tensors=[tf.constant(block_emb)])
  target = str(tmp_path / "export/4/embedder")
  embedder_export.export_embedder(exported["models"]["embedder"], tiny_vocab_file, True, target,
                                  encoded_checkpoint=prefix)
  got = tf.train.load_checkpoint(common.encoded_checkpoint_path(target)).get_tensor("block_emb")
  np.testing.assert_array_equal(got, block_emb)


def test_layout_helpers():
  assert common.step_export_dir("gs://b/m", 1200) == "gs://b/m/export/1200"
  assert common.best_export_dir("/m") == "/m/export/best"
  assert common.encoded_checkpoint_path("/m/export/5/embedder") == "/m/export/5/embedder/encoded/encoded.ckpt"


def test_missing_vocab_is_an_error(exported, tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    embedder_export.export_embedder(exported["models"]["embedder"], str(tmp_path / "nope.txt"), True,
                                    str(tmp_path / "e"))
