"""data_prep.convert_checkpoint: every source format -> exports equal to a NumPy BERT on the same arrays.

One module-scoped fixture writes tiny checkpoints (2 layers, hidden 32, 2 heads, vocab ~160) under the
original variable names, converts them (bert_tf1 through the real CLI in a subprocess, the rest
in-process) and loads every export in ONE fresh process that imports only tensorflow + tensorflow_text.
The Hugging Face cases (4 heads) cover the layouts people have: `BertForPreTraining`, `BertModel`
(no `bert.` prefix, no MLM head, tokenizer.json only), `BertForMaskedLM` (no pooler) and a
sentence-transformers directory (modules.json -> 0_Transformer/, 1_Pooling/).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras
import yaml

from data_prep import checkpoint_names
from data_prep import checkpoint_sources
from data_prep import convert_checkpoint
from official.modeling.hyperparams import params_dict
from realm_tf2 import configs
from realm_tf2.modeling import bert as bert_lib
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.tasks import finetune_experiments
from realm_tf2.tasks import pretrain_experiments
from realm_tf2.training import startup_checks
from tests import tiny_fixtures
from tests.conftest import REPO_ROOT
from tests.export import np_reference as ref

H, L, HEADS, INNER, POS, PROJ, SPAN_H, WIDTH = 32, 2, 2, 37, 64, 16, 8, 3
HF_HEADS = 4
V = len(tiny_fixtures.tiny_vocab())


def _bert_arrays(rng, prefix="bert/", mlm_prefix="cls/predictions/"):
  w = {}
  for name in checkpoint_names.bert_encoder_names(L):
    leaf = name.split("/")[-1]
    if name.endswith("word_embeddings"):
      shape = (V, H)
    elif name.endswith("position_embeddings"):
      shape = (POS, H)
    elif name.endswith("token_type_embeddings"):
      shape = (2, H)
    elif "intermediate/dense" in name:
      shape = (H, INNER) if leaf == "kernel" else (INNER,)
    elif "output/dense" in name and "attention" not in name:
      shape = (INNER, H) if leaf == "kernel" else (H,)
    else:
      shape = (H, H) if leaf == "kernel" else (H,)
    scale = 1.0 if leaf == "gamma" else 0.0
    w[prefix + name[len("bert/"):]] = (scale + rng.normal(0, 0.2, shape)).astype(np.float32)
  if mlm_prefix:
    for name in checkpoint_names.MLM_HEAD_NAMES:
      rel = name[len("cls/predictions/"):]
      shape = (V,) if rel == "output_bias" else ((H, H) if rel.endswith("kernel") else (H,))
      w[mlm_prefix + rel] = rng.normal(0, 0.2, shape).astype(np.float32) + (1.0 if "gamma" in rel else 0)
  return w


def _head(rng, w, prefix, shapes):
  for name, shape in shapes.items():
    w[prefix + name] = rng.normal(0, 0.3, shape).astype(np.float32) + (1.0 if "gamma" in name else 0)


def _embedder_head(rng, w, dense, norm):
  _head(rng, w, "", {f"{dense}/kernel": (H, PROJ), f"{dense}/bias": (PROJ,),
                     f"{norm}/gamma": (PROJ,), f"{norm}/beta": (PROJ,)})


def _reader_arrays(rng, w):
  w.update(_bert_arrays(rng, "reader/module/bert/", "reader/module/cls/predictions/"))
  _head(rng, w, "reader/", {"dense/kernel": (H, 2 * SPAN_H), "dense/bias": (2 * SPAN_H,),
                            "dense_1/kernel": (SPAN_H, 1), "dense_1/bias": (1,),
                            "layer_normalization/gamma": (SPAN_H,),
                            "layer_normalization/beta": (SPAN_H,)})


def _with_optimizer_state(w):
  out = dict(w)
  for name in list(w)[:3]:
    out[name + "/adam_m"] = np.zeros_like(w[name])
    out[name + "/adam_v"] = np.zeros_like(w[name])
  out["global_step"] = np.array(1000, np.int64)
  return out


def write_tf1_checkpoint(prefix, arrays):
  """Writes a V2-format checkpoint with exactly these variable names (no graph, no Saver)."""
  tf.io.gfile.makedirs(os.path.dirname(prefix))
  names = sorted(arrays)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(arrays[n]) for n in names])


def _hf_state_dict(w):
  """Canonical TF1 arrays -> HF BertForPreTraining names ([out,in] Linear weights)."""
  out = {}
  for name, a in w.items():
    parts = name.split("/")
    hf = []
    for p in parts:
      hf.extend(["layer", p[len("layer_"):]] if p.startswith("layer_") else [p])
    leaf = hf[-1]
    if name == "cls/predictions/output_bias":
      out["cls.predictions.bias"] = a
      out["cls.predictions.decoder.bias"] = a
      continue
    if leaf.endswith("_embeddings"):
      out[".".join(hf) + ".weight"] = a
    elif leaf == "kernel":
      out[".".join(hf[:-1]) + ".weight"] = a.T
    elif leaf == "gamma":
      out[".".join(hf[:-1]) + ".weight"] = a
    elif leaf == "beta":
      out[".".join(hf[:-1]) + ".bias"] = a
    else:
      out[".".join(hf)] = a
  out["cls.predictions.decoder.weight"] = w["bert/embeddings/word_embeddings"]
  out["cls.seq_relationship.weight"] = np.zeros((2, H), np.float32)
  out["cls.seq_relationship.bias"] = np.zeros((2,), np.float32)
  return out


def _hf_bert_model_state(w):
  """`BertModel` names: no `bert.` prefix, no heads, plus the `position_ids` buffer."""
  out = {k[len("bert."):]: v for k, v in _hf_state_dict(w).items() if k.startswith("bert.")}
  out["embeddings.position_ids"] = np.arange(POS, dtype=np.float32)[None]
  return out


def _hf_masked_lm_state(w):
  """`BertForMaskedLM` names: `bert.` prefix and `cls.predictions.*`, no pooler (HF builds none)."""
  return {k: v for k, v in _hf_state_dict(w).items()
          if not k.startswith(("bert.pooler.", "cls.seq_relationship."))}


def _hf_config(hidden_act, **overrides):
  config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": hidden_act,
            "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": HF_HEADS,
            "intermediate_size": INNER, "vocab_size": V, "max_position_embeddings": POS,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": 0.02,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "position_embedding_type": "absolute"}
  config.update(overrides)
  return config


def _tokenizer_json(tokens, lowercase):
  """A Hugging Face fast-tokenizer file with a WordPiece table (specials also as added_tokens)."""
  return {"version": "1.0",
          "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(tokens)
                           if t in tiny_fixtures.SPECIAL],
          "normalizer": {"type": "BertNormalizer", "clean_text": True, "lowercase": lowercase},
          "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "vocab": {t: i for i, t in enumerate(tokens)}}}


def write_hf_dir(directory, state, config, vocab_file=None, tokenizer=None, tokenizer_config=None):
  """A Hugging Face model directory: model.safetensors, config.json and tokenizer files."""
  os.makedirs(directory, exist_ok=True)
  checkpoint_sources.write_safetensors(os.path.join(directory, "model.safetensors"), state)
  files = {"config.json": config, "tokenizer.json": tokenizer,
           "tokenizer_config.json": tokenizer_config}
  for name, content in files.items():
    if content is not None:
      with open(os.path.join(directory, name), "w") as f:
        json.dump(content, f)
  if vocab_file:
    tf.io.gfile.copy(vocab_file, os.path.join(directory, "vocab.txt"))


def write_sentence_transformers_dir(root, transformer_path="0_Transformer"):
  """modules.json (Transformer at `transformer_path`, mean Pooling at 1_Pooling, Normalize)."""
  os.makedirs(os.path.join(root, "1_Pooling"), exist_ok=True)
  modules = [{"idx": 0, "name": "0", "path": transformer_path,
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"},
             {"idx": 2, "name": "2", "path": "2_Normalize",
              "type": "sentence_transformers.models.Normalize"}]
  with open(os.path.join(root, "modules.json"), "w") as f:
    json.dump(modules, f)
  with open(os.path.join(root, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": H, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}, f)


_INIT_SHAPES = {"cls/predictions/transform/dense/kernel": (H, H),
                "cls/predictions/transform/dense/bias": (H,),
                "cls/predictions/transform/LayerNorm/gamma": (H,),
                "cls/predictions/transform/LayerNorm/beta": (H,),
                "cls/predictions/output_bias": (V,),
                "bert/pooler/dense/kernel": (H, H), "bert/pooler/dense/bias": (H,)}


def _with_bert_init(w, names):
  """`w` plus BERT's initial values of `names` (recomputed: the conversion is deterministic)."""
  hows = {**convert_checkpoint.MLM_HEAD_INIT, **convert_checkpoint.POOLER_INIT}
  out = dict(w)
  for name in names:
    out[name] = convert_checkpoint.bert_initial_value(hows[name], _INIT_SHAPES[name], 0.02, name)
  return out


LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    inputs = dict(np.load(sys.argv[2]))
    out = {}
    for spec in sys.argv[3:]:
      key, path = spec.split("=", 1)
      m = tf.saved_model.load(path)
      feats = {k: tf.constant(inputs[k]) for k in ("input_ids", "input_mask", "segment_ids")}
      if "tokens" in m.signatures:
        for k, v in m.signatures["tokens"](**feats).items():
          out[key + ":tokens:" + k] = v.numpy()
      info = m.signatures["tokenization_info"]()
      out[key + ":vocab"] = np.array(open(info["vocab_file"].numpy().decode()).read())
      out[key + ":lower"] = info["do_lower_case"].numpy()
      if "projected" in m.signatures:
        out[key + ":default"] = m.signatures["projected"](**feats)["default"].numpy()
      if "mlm" in m.signatures:
        r = m.signatures["mlm"](mlm_positions=tf.constant(inputs["mlm_positions"]), **feats)
        for k, v in r.items():
          out[key + ":" + k] = v.numpy()
      if "span_logits" in m.signatures:
        r = m.signatures["span_logits"](block_mask=tf.constant(inputs["block_mask"]), **feats)
        for k, v in r.items():
          out[key + ":" + k] = v.numpy()
    assert "tf_keras" not in sys.modules and "realm_tf2" not in sys.modules
    np.savez(sys.argv[1], **out)
""")


INPUTS = {
    "input_ids": np.array([[2, 7, 30, 3, 12, 40, 3, 0], [2, 9, 3, 55, 3, 0, 0, 0]], np.int32),
    "input_mask": np.array([[1] * 7 + [0], [1] * 5 + [0] * 3], np.int32),
    "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]], np.int32),
    "mlm_positions": np.array([[1, 4], [3, 0]], np.int32),
    "block_mask": np.array([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]], np.int32)}


def load_in_fresh_process(root, exports):
  """Runs every export's signatures in ONE fresh process importing only tensorflow + tensorflow_text."""
  np.savez(root / "inputs.npz", **INPUTS)
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # as a user's process
  proc = subprocess.run([sys.executable, "-c", LOADER, str(root / "outputs.npz"), str(root / "inputs.npz")]
                        + [f"{k}={v}" for k, v in exports.items()],
                        capture_output=True, text=True, timeout=600, env=env, cwd=str(root))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(root / "outputs.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_vocab_file):
  """realm, orqa (REALM-derived retriever) and hf_bert, converted in-process."""
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("convert")
  src, out = root / "src", root / "out"
  arrays = {}

  # realm: cc_news_pretrained-like directory.
  emb = _bert_arrays(rng, "module/module/module/bert/", "module/module/module/cls/predictions/")
  _embedder_head(rng, emb, "module/module/dense", "module/module/LayerNorm")
  realm_bert = _bert_arrays(rng)
  write_tf1_checkpoint(str(src / "realm/embedder/variables/variables"), emb)
  write_tf1_checkpoint(str(src / "realm/bert/variables/variables"), realm_bert)
  tf.io.gfile.makedirs(str(src / "realm/embedder/assets"))
  tf.io.gfile.copy(tiny_vocab_file, str(src / "realm/embedder/assets/vocab.txt"))
  block_emb = rng.normal(size=(5, PROJ)).astype(np.float32)
  write_tf1_checkpoint(str(src / "realm/embedder/encoded/encoded.ckpt"), {"block_emb": block_emb})
  arrays["realm_embedder"], arrays["realm_bert"], arrays["block_emb"] = emb, realm_bert, block_emb

  # orqa with a REALM-derived retriever, plus optimizer state.
  o = _bert_arrays(rng, "module/module/module/module/bert/", "module/module/module/module/cls/predictions/")
  _embedder_head(rng, o, "module/module/module/dense", "module/module/module/LayerNorm")
  _reader_arrays(rng, o)
  write_tf1_checkpoint(str(src / "orqa_realm/model.ckpt-300"), _with_optimizer_state(o))
  arrays["orqa_realm"] = o

  # hf_bert: hand-written safetensors, exact ("gelu") activation.
  hf = _bert_arrays(rng)
  (src / "hf").mkdir()
  checkpoint_sources.write_safetensors(str(src / "hf/model.safetensors"), _hf_state_dict(hf))
  with open(src / "hf/config.json", "w") as f:
    json.dump({"num_attention_heads": HEADS, "hidden_act": "gelu", "layer_norm_eps": 1e-12}, f)
  tf.io.gfile.copy(tiny_vocab_file, str(src / "hf/vocab.txt"))
  arrays["hf"] = hf

  vocab = tiny_fixtures.tiny_vocab()
  # hf_model: a BertModel (no prefix, no MLM head), "gelu_new" (tanh), only tokenizer.json (cased).
  arrays["hf_model"] = _bert_arrays(rng, mlm_prefix=None)
  write_hf_dir(str(src / "hf_model"), _hf_bert_model_state(arrays["hf_model"]),
               _hf_config("gelu_new"), tokenizer=_tokenizer_json(vocab, lowercase=False))
  # hf_mlm: a BertForMaskedLM (bert. prefix, cls.predictions, no pooler), exact gelu.
  arrays["hf_mlm"] = _bert_arrays(rng)
  write_hf_dir(str(src / "hf_mlm"), _hf_masked_lm_state(arrays["hf_mlm"]),
               _hf_config("gelu", architectures=["BertForMaskedLM"]), vocab_file=tiny_vocab_file,
               tokenizer_config={"do_lower_case": True})
  # hf_st: sentence-transformers: modules.json -> 0_Transformer/ (BertModel, vocab.txt), 1_Pooling/.
  arrays["hf_st"] = _bert_arrays(rng, mlm_prefix=None)
  write_hf_dir(str(src / "hf_st/0_Transformer"), _hf_bert_model_state(arrays["hf_st"]),
               _hf_config("gelu"), vocab_file=tiny_vocab_file,
               tokenizer_config={"do_lower_case": False})
  write_sentence_transformers_dir(str(src / "hf_st"))

  reports = {
      "realm": convert_checkpoint.convert("realm", str(src / "realm"), str(out / "realm"),
                                          num_attention_heads=HEADS),
      "orqa_realm": convert_checkpoint.convert(
          "orqa", str(src / "orqa_realm/model.ckpt-300"), str(out / "orqa_realm"),
          vocab_file=tiny_vocab_file, num_attention_heads=HEADS, max_span_width=WIDTH,
          reader_seq_len=12),
      "hf": convert_checkpoint.convert("hf_bert", str(src / "hf"), str(out / "hf")),
  }
  for key in ("hf_model", "hf_mlm", "hf_st"):
    reports[key] = convert_checkpoint.convert("hf_bert", str(src / key), str(out / key))
  results = load_in_fresh_process(root, {
      "realm_embedder": out / "realm/embedder", "realm_bert": out / "realm/bert",
      "orqa_realm_retriever": out / "orqa_realm/retriever",
      "orqa_realm_reader": out / "orqa_realm/reader", "hf": out / "hf/bert",
      "hf_model": out / "hf_model/bert", "hf_mlm": out / "hf_mlm/bert",
      "hf_st": out / "hf_st/bert"})
  return dict(arrays=arrays, reports=reports, inputs=INPUTS, out=out, src=src, results=results)


@pytest.fixture(scope="module")
def converted_slow(tmp_path_factory, tiny_vocab_file):
  """orqa with an ICT-derived retriever (in-process) and bert_tf1 through the CLI subprocess."""
  rng = np.random.default_rng(1)
  root = tmp_path_factory.mktemp("convert_slow")
  src, out = root / "src", root / "out"
  ict = _bert_arrays(rng, "module/module/bert/", None)
  _embedder_head(rng, ict, "module/dense", "module/layer_normalization")
  _reader_arrays(rng, ict)
  write_tf1_checkpoint(str(src / "orqa_ict/model.ckpt-7"), _with_optimizer_state(ict))
  # bert_tf1 with an NSP head, optimizer state and a bert_config.json beside it.
  b = _bert_arrays(rng)
  b_full = _with_optimizer_state(b)
  b_full["cls/seq_relationship/output_weights"] = np.zeros((2, H), np.float32)
  b_full["cls/seq_relationship/output_bias"] = np.zeros((2,), np.float32)
  write_tf1_checkpoint(str(src / "bert_tf1/bert_model.ckpt"), b_full)
  with open(src / "bert_tf1/bert_config.json", "w") as f:
    json.dump({"num_attention_heads": HEADS, "hidden_act": "gelu"}, f)

  cli = subprocess.run(
      [sys.executable, "-m", "data_prep.convert_checkpoint", "--source_format=bert_tf1",
       f"--source={src / 'bert_tf1/bert_model.ckpt'}", f"--output_dir={out / 'bert_tf1'}",
       f"--vocab_file={tiny_vocab_file}", "--nodo_lower_case"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert cli.returncode == 0, cli.stderr[-3000:]
  reports = {"orqa_ict": convert_checkpoint.convert(
      "orqa", str(src / "orqa_ict/model.ckpt-7"), str(out / "orqa_ict"), vocab_file=tiny_vocab_file,
      num_attention_heads=HEADS, max_span_width=WIDTH, reader_seq_len=12)}
  results = load_in_fresh_process(root, {
      "orqa_ict_retriever": out / "orqa_ict/retriever", "orqa_ict_reader": out / "orqa_ict/reader",
      "bert_tf1": out / "bert_tf1/bert"})
  return dict(arrays={"orqa_ict": ict, "bert_tf1": b}, reports=reports, inputs=INPUTS, out=out,
              results=results)

def _feats(inputs):
  return inputs["input_ids"], inputs["input_mask"], inputs["segment_ids"]


def _check_bert(results, key, w, inputs, act=ref.gelu_tanh, bert_prefix="bert/",
                cls_prefix="cls/predictions/", heads=HEADS):
  seq, pooled = ref.bert(w, *_feats(inputs), heads, act=act, prefix=bert_prefix)
  logits = ref.mlm_logits(w, seq, inputs["mlm_positions"], act=act, bert_prefix=bert_prefix,
                          cls_prefix=cls_prefix)
  # Padding positions are computed too (mask only affects attention), so compare everything.
  np.testing.assert_allclose(results[key + ":sequence_output"], seq, atol=1e-5)
  np.testing.assert_allclose(results[key + ":pooled_output"], pooled, atol=1e-5)
  np.testing.assert_allclose(results[key + ":tokens:sequence_output"], seq, atol=1e-5)
  np.testing.assert_allclose(results[key + ":tokens:pooled_output"], pooled, atol=1e-5)
  np.testing.assert_allclose(results[key + ":mlm_logits"], logits, atol=1e-5)
  assert results[key + ":mlm_logits"].shape == (2, 2, V)


def _check_embedder(results, key, w, inputs, bert_prefix, dense, norm, eps):
  _, pooled = ref.bert(w, *_feats(inputs), HEADS, prefix=bert_prefix)
  expected = ref.projection(w, pooled, dense, norm, eps)
  assert results[key + ":default"].shape == (2, PROJ)
  np.testing.assert_allclose(results[key + ":default"], expected, atol=1e-5)


def _check_reader(results, key, w, inputs):
  seq, _ = ref.bert(w, *_feats(inputs), HEADS, prefix="reader/module/bert/")
  logits, starts, ends = ref.span_logits(w, seq, inputs["block_mask"], WIDTH)
  np.testing.assert_array_equal(results[key + ":starts"], starts)
  np.testing.assert_array_equal(results[key + ":ends"], ends)
  np.testing.assert_allclose(results[key + ":logits"], logits, atol=1e-4)  # -1e4 offsets: rel 1e-8
  valid = logits > -5000
  np.testing.assert_allclose(results[key + ":logits"][valid], logits[valid], atol=1e-5)
  assert valid.sum() == 3 + 1  # block 0: spans (4,4),(5,5),(4,5); block 1: (3,3)


def test_realm_exports_match_numpy(converted, tiny_vocab_file):
  r, w, x = converted["results"], converted["arrays"], converted["inputs"]
  _check_embedder(r, "realm_embedder", w["realm_embedder"], x, "module/module/module/bert/",
                  "module/module/dense", "module/module/LayerNorm", 1e-12)
  _check_bert(r, "realm_bert", w["realm_bert"], x)
  vocab = open(tiny_vocab_file).read()
  assert str(r["realm_embedder:vocab"]) == vocab and str(r["realm_bert:vocab"]) == vocab
  assert bool(r["realm_embedder:lower"])
  # encoded.ckpt carried over.
  enc = converted["out"] / "realm/embedder/encoded/encoded.ckpt"
  np.testing.assert_array_equal(tf.train.load_checkpoint(str(enc)).get_tensor("block_emb"),
                                w["block_emb"])


def test_orqa_realm_variant_matches_numpy(converted):
  r, w, x = converted["results"], converted["arrays"], converted["inputs"]
  assert converted["reports"]["orqa_realm"].towers["retriever"]["variant"] == "realm"
  _check_embedder(r, "orqa_realm_retriever", w["orqa_realm"], x, "module/module/module/module/bert/",
                  "module/module/module/dense", "module/module/module/LayerNorm", 1e-12)
  _check_reader(r, "orqa_realm_reader", w["orqa_realm"], x)


@pytest.mark.slow
def test_orqa_ict_variant_matches_numpy(converted_slow):
  r, w, x = converted_slow["results"], converted_slow["arrays"], converted_slow["inputs"]
  report = converted_slow["reports"]["orqa_ict"]
  assert report.towers["retriever"]["variant"] == "ict"
  assert report.towers["retriever"]["config"]["layer_norm_epsilon"] == 1e-3
  size = yaml.safe_load(open(converted_slow["out"] / "orqa_ict/model_config.yaml"))["task"]["model"]
  assert size["embedder_layer_norm_epsilon"] == 1e-3 and size["projection_size"] == PROJ
  _check_embedder(r, "orqa_ict_retriever", w["orqa_ict"], x, "module/module/bert/",
                  "module/dense", "module/layer_normalization", 1e-3)
  _check_reader(r, "orqa_ict_reader", w["orqa_ict"], x)


@pytest.mark.slow
def test_bert_tf1_cli_matches_numpy(converted_slow):
  r, w, x = converted_slow["results"], converted_slow["arrays"], converted_slow["inputs"]
  _check_bert(r, "bert_tf1", w["bert_tf1"], x)
  assert not bool(r["bert_tf1:lower"])  # --nodo_lower_case
  report = json.load(open(converted_slow["out"] / "bert_tf1/conversion_report.json"))
  assert report["skipped"]["cls/seq_relationship/output_weights"].startswith("next-sentence head")
  assert report["skipped"]["global_step"] == "global_step"
  assert report["towers"]["bert"]["config"]["bert"]["num_attention_heads"] == HEADS  # bert_config.json
  size = yaml.safe_load(open(converted_slow["out"] / "bert_tf1/model_config.yaml"))["task"]["model"]
  assert size["bert"]["num_attention_heads"] == HEADS and size["bert"]["num_layers"] == L
  assert size["bert"]["hidden_activation"] == "gelu"  # Google BERT's "gelu" is the tanh form


def test_hf_bert_safetensors_matches_numpy_exact_gelu(converted):
  r, w, x = converted["results"], converted["arrays"], converted["inputs"]
  _check_bert(r, "hf", w["hf"], x, act=ref.gelu_exact)
  # The tanh approximation would be measurably different: the exact path is really used.
  seq_tanh, _ = ref.bert(w["hf"], *_feats(x), HEADS, act=ref.gelu_tanh)
  assert np.abs(r["hf:sequence_output"] - seq_tanh).max() > 1e-4


_MLM_NAMES = sorted(convert_checkpoint.MLM_HEAD_INIT)
_POOLER_NAMES = sorted(convert_checkpoint.POOLER_INIT)


@pytest.mark.parametrize("key,act,initialised", [
    ("hf_model", ref.gelu_tanh, _MLM_NAMES),  # BertModel, "gelu_new"
    ("hf_mlm", ref.gelu_exact, _POOLER_NAMES),  # BertForMaskedLM, "gelu"
    ("hf_st", ref.gelu_exact, _MLM_NAMES),  # sentence-transformers, "gelu"
])
def test_hf_layouts_match_numpy(converted, key, act, initialised):
  r, x = converted["results"], converted["inputs"]
  w = _with_bert_init(converted["arrays"][key], initialised)
  _check_bert(r, key, w, x, act=act, heads=HF_HEADS)
  # The other GELU would be measurably different: the configured one is really used.
  other = ref.gelu_exact if act is ref.gelu_tanh else ref.gelu_tanh
  seq_other, _ = ref.bert(w, *_feats(x), HF_HEADS, act=other)
  assert np.abs(r[key + ":tokens:sequence_output"] - seq_other).max() > 1e-4


def test_hf_missing_parts_are_initialised_and_reported(converted):
  reports, out = converted["reports"], converted["out"]
  assert sorted(reports["hf_model"].initialised["bert"]) == _MLM_NAMES
  assert sorted(reports["hf_mlm"].initialised["bert"]) == _POOLER_NAMES
  assert reports["hf"].initialised == {}  # BertForPreTraining has everything
  on_disk = json.load(open(out / "hf_model/conversion_report.json"))["initialised"]["bert"]
  assert on_disk == {
      "cls/predictions/transform/dense/kernel": "truncated_normal(stddev=0.02)",
      "cls/predictions/transform/dense/bias": "zeros",
      "cls/predictions/transform/LayerNorm/gamma": "ones",
      "cls/predictions/transform/LayerNorm/beta": "zeros",
      "cls/predictions/output_bias": "zeros"}
  n_bert = 5 + 16 * L + 2
  assert reports["hf_model"].towers["bert"]["num_loaded"] == n_bert
  assert reports["hf_mlm"].towers["bert"]["num_loaded"] == n_bert - 2 + 5
  assert reports["hf_model"].skipped == {"embeddings.position_ids": "buffer, not a weight"}
  # BERT's initialisation: truncated normal within 2 stddev, different draws per kernel.
  init = convert_checkpoint.bert_initial_value
  dense = init("truncated_normal", (H, H), 0.02, "cls/predictions/transform/dense/kernel")
  pooler = init("truncated_normal", (H, H), 0.02, "bert/pooler/dense/kernel")
  assert np.abs(dense).max() <= 0.04 and 0.012 < dense.std() < 0.022
  assert not np.allclose(dense, pooler)


def test_hf_tokenizer_files(converted, tiny_vocab_file):
  r, reports, out = converted["results"], converted["reports"], converted["out"]
  vocab = open(tiny_vocab_file).read()
  # tokenizer.json only: its WordPiece table became DIR/vocab.txt, cased from its normalizer.
  assert open(out / "hf_model/vocab.txt").read() == vocab
  assert str(r["hf_model:vocab"]) == vocab and not bool(r["hf_model:lower"])
  assert reports["hf_model"].vocab_from == str(converted["src"] / "hf_model/tokenizer.json")
  # tokenizer_config.json decides otherwise; vocab.txt inside 0_Transformer/.
  assert str(r["hf_st:vocab"]) == vocab and not bool(r["hf_st:lower"])
  assert bool(r["hf_mlm:lower"]) and reports["hf_mlm"].vocab_from is None
  assert any("mean_tokens" in n for n in reports["hf_st"].notes)
  size = yaml.safe_load(open(out / "hf_st/model_config.yaml"))["task"]["model"]
  assert size["embedder_pooling"] == "mean"  # from 1_Pooling/config.json
  size = yaml.safe_load(open(out / "hf_mlm/model_config.yaml"))["task"]["model"]
  assert "embedder_pooling" not in size  # not a sentence encoder


def _experiments():
  return {"ict": pretrain_experiments.ict_experiment(),
          "realm": pretrain_experiments.realm_experiment(),
          "orqa": finetune_experiments.orqa_experiment()}


@pytest.mark.parametrize("conversion,activation,sources,extra", [
    ("hf_model", "gelu", ["bert", "bert_ckpt"], {}),
    ("hf_mlm", "gelu_exact", ["bert"], {}),
    ("hf_st", "gelu_exact", ["bert"], {"embedder_pooling": "mean"}),
    ("realm", "gelu", ["embedder", "bert", "embedder_ckpt"],
     {"projection_size": PROJ, "embedder_layer_norm_epsilon": 1e-12}),
    ("orqa_realm", "gelu", ["retriever", "reader", "retriever_ckpt/ckpt"],
     {"projection_size": PROJ, "embedder_layer_norm_epsilon": 1e-12, "span_hidden_size": SPAN_H,
      "reader_layer_norm_epsilon": 1e-3}),
])
def test_model_config_yaml_is_a_config_file(converted, conversion, activation, sources, extra):
  out = converted["out"] / conversion
  path = str(out / "model_config.yaml")
  heads = HF_HEADS if conversion.startswith("hf") else HEADS
  for name, params in _experiments().items():
    # What `--config_file` does (flags.build_params): Model Garden's strict YAML override.
    params = params_dict.override_params_dict(params, path, is_strict=True)
    bert = params.task.model.bert
    assert (bert.vocab_size, bert.hidden_size, bert.num_layers, bert.num_attention_heads,
            bert.intermediate_size, bert.max_position_embeddings, bert.type_vocab_size) == (
                V, H, L, heads, INNER, POS, 2), name
    assert bert.hidden_activation == activation
    for field, value in extra.items():
      expected = value if isinstance(value, str) else pytest.approx(value)
      assert getattr(params.task.model, field) == expected, (name, field)
    # A run configured with the file passes the start-up size check against the converted towers.
    assert startup_checks.check_model_size_matches(
        params.task.model, [(f"--{s}", str(out / s)) for s in sources]) == [], name
  text = open(path).read()
  assert "packed_dropout" not in text and "float32_kernels" not in text


def test_size_mismatch_is_a_startup_error(converted, tmp_path):
  out = converted["out"]
  model = configs.ModelConfig(bert=configs.BertConfig(
      vocab_size=V, hidden_size=2 * H, num_layers=L, num_attention_heads=HF_HEADS,
      intermediate_size=INNER, max_position_embeddings=POS, hidden_activation="gelu"))
  export = str(out / "hf_mlm/bert")
  problems = startup_checks.check_model_size_matches(model, [("--bert_hub_module_handle", export),
                                                             ("--init_checkpoint", None)])
  assert len(problems) == 1
  assert problems[0].startswith(f"--bert_hub_module_handle: '{export}'")
  assert (f"task.model.bert.hidden_size={2 * H} in the config but {H} in the checkpoint"
          in problems[0])
  assert "task.model.bert.hidden_activation='gelu' in the config but 'gelu_exact'" in problems[0]
  assert f"--config_file={out / 'hf_mlm/model_config.yaml'}" in problems[0]
  with pytest.raises(SystemExit, match=f"hidden_size={2 * H} in the config but {H}"):
    startup_checks.fail_if("run_pretrain", problems)
  # A training checkpoint (object-based, with optimizer slots): sizes from its variable shapes.
  small = configs.BertConfig(vocab_size=V, hidden_size=H, num_layers=1, num_attention_heads=HEADS,
                             intermediate_size=INNER, max_position_embeddings=POS)
  embedder = embedder_lib.RealmEmbedder(small, projection_size=PROJ)
  optimizer = tf_keras.optimizers.Adam()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(embedder(bert_lib.dummy_features(), training=False))
  optimizer.apply_gradients(zip(tape.gradient(loss, embedder.trainable_variables),
                                embedder.trainable_variables))
  prefix = tf.train.Checkpoint(model=embedder, optimizer=optimizer).write(
      str(tmp_path / "run/ckpt-1"))
  model.bert.hidden_size = H
  model.bert.num_attention_heads = HEADS
  problems = startup_checks.check_model_size_matches(model, [("--init_checkpoint", prefix)])
  assert len(problems) == 1
  assert "task.model.bert.num_layers=2 in the config but 1 in the checkpoint" in problems[0]
  assert "hidden_activation" not in problems[0]  # not knowable from a plain checkpoint


def test_skipped_names_are_listed(converted):
  reports = converted["reports"]
  realm = reports["realm"].skipped
  assert realm["embedder:module/module/module/cls/predictions/output_bias"].startswith("MLM head")
  orqa = reports["orqa_realm"].skipped
  assert orqa["global_step"] == "global_step"
  assert sum(v == "optimizer slot" for v in orqa.values()) == 6
  assert orqa["reader/module/cls/predictions/output_bias"].startswith("MLM head of the reader")
  hf = reports["hf"].skipped
  assert set(hf) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                     "cls/seq_relationship/kernel", "cls/seq_relationship/bias"}
  # Everything else was loaded: 5 embeddings + 16/layer + 2 pooler (+5 MLM / +4 proj / +6 span head).
  n_bert = 5 + 16 * L + 2
  assert reports["realm"].towers["embedder"]["num_loaded"] == n_bert + 4
  assert reports["realm"].towers["bert"]["num_loaded"] == n_bert + 5
  assert reports["orqa_realm"].towers["reader"]["num_loaded"] == n_bert + 6
  assert reports["hf"].towers["bert"]["num_loaded"] == n_bert + 5


def test_init_checkpoints_load_into_models(converted):
  out, w, x = converted["out"], converted["arrays"], converted["inputs"]
  feats = {k: tf.constant(x[k]) for k in ("input_ids", "input_mask", "segment_ids")}
  for tower, check in (("orqa_realm/retriever", "emb"), ("realm/bert", "bert")):
    ckpt_dir = out / (tower + "_ckpt")
    config = json.load(open(ckpt_dir / "config.json"))
    model = convert_checkpoint.build_model_from_config(config)
    tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(str(ckpt_dir))).assert_consumed()
    if check == "emb":
      o = w["orqa_realm"]
      _, pooled = ref.bert(o, *_feats(x), HEADS, prefix="module/module/module/module/bert/")
      expected = ref.projection(o, pooled, "module/module/module/dense", "module/module/module/LayerNorm",
                                1e-12)
      np.testing.assert_allclose(model(feats, training=False).numpy(), expected, atol=1e-5)
    else:
      seq, _ = ref.bert(w["realm_bert"], *_feats(x), HEADS)
      np.testing.assert_allclose(model(feats, training=False)["sequence_output"].numpy(), seq, atol=1e-5)


def test_missing_variable_is_an_error_naming_it(tmp_path, tiny_vocab_file):
  w = _bert_arrays(np.random.default_rng(2))
  del w["bert/encoder/layer_1/attention/self/key/bias"]
  write_tf1_checkpoint(str(tmp_path / "broken/bert_model.ckpt"), w)
  with pytest.raises(KeyError, match="bert/encoder/layer_1/attention/self/key/bias"):
    convert_checkpoint.convert("bert_tf1", str(tmp_path / "broken/bert_model.ckpt"),
                               str(tmp_path / "out"), vocab_file=tiny_vocab_file,
                               num_attention_heads=HEADS)
  assert not tf.io.gfile.exists(str(tmp_path / "out/bert"))


def test_head_count_must_divide_hidden(converted, tmp_path):
  # Default of 12 heads does not divide hidden 32: a clear error, not a silent mis-shape.
  with pytest.raises(ValueError, match="num_attention_heads=12"):
    convert_checkpoint.convert("realm", str(converted["src"] / "realm"), str(tmp_path / "o"))


def test_wrong_shape_is_an_error(tmp_path, tiny_vocab_file):
  w = _bert_arrays(np.random.default_rng(1))
  w["bert/pooler/dense/bias"] = np.zeros((H + 1,), np.float32)
  write_tf1_checkpoint(str(tmp_path / "c/bert_model.ckpt"), w)
  with pytest.raises(ValueError, match=r"bert/pooler/dense/bias' has shape \(33,\)"):
    convert_checkpoint.convert("bert_tf1", str(tmp_path / "c/bert_model.ckpt"), str(tmp_path / "o"),
                               vocab_file=tiny_vocab_file, num_attention_heads=HEADS)


def test_orqa_without_retriever_is_detected():
  with pytest.raises(ValueError, match="neither a REALM-derived"):
    checkpoint_names.detect_orqa_retriever(["reader/dense/kernel", "global_step"])


@pytest.mark.parametrize("dtype,atol", [("F32", 0), ("F16", 1e-3), ("BF16", 1e-2)])
def test_safetensors_roundtrip(tmp_path, dtype, atol):
  a = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5]], np.float32)
  path = str(tmp_path / "t.safetensors")
  checkpoint_sources.write_safetensors(path, {"x": a, "y": a[0]}, dtype=dtype)
  header, start = checkpoint_sources.read_safetensors_header(path)
  assert header["x"]["shape"] == [2, 3] and header["x"]["dtype"] == dtype
  got = checkpoint_sources.read_safetensors_tensor(path, header["x"], start, "x")
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, a, rtol=atol, atol=0)


def test_hf_name_mapping():
  f = checkpoint_names.hf_to_canonical
  assert f("bert.encoder.layer.11.attention.self.query.weight") == (
      "bert/encoder/layer_11/attention/self/query/kernel", True)
  assert f("bert.embeddings.LayerNorm.weight") == ("bert/embeddings/LayerNorm/gamma", False)
  assert f("bert.embeddings.word_embeddings.weight") == ("bert/embeddings/word_embeddings", False)
  assert f("encoder.layer.0.output.LayerNorm.bias") == ("bert/encoder/layer_0/output/LayerNorm/beta", False)
  assert f("cls.predictions.bias") == ("cls/predictions/output_bias", False)
  assert f("cls.predictions.decoder.weight") == (None, False)
  assert f("bert.embeddings.position_ids") == (None, False)


def test_keras_suffix_and_reshape():
  s = checkpoint_names.keras_encoder_suffix("bert/encoder/layer_3/attention/output/dense/kernel")
  assert s == "transformer/layer_3/self_attention/attention_output/kernel"
  assert checkpoint_names.keras_encoder_shape(s, (768, 768), 12) == (12, 64, 768)
  q = checkpoint_names.keras_encoder_suffix("bert/encoder/layer_0/attention/self/query/bias")
  assert checkpoint_names.keras_encoder_shape(q, (768,), 12) == (12, 64)
  assert checkpoint_names.keras_encoder_suffix("bert/embeddings/LayerNorm/beta") == "embeddings/layer_norm/beta"


@pytest.mark.slow
def test_cli_help():
  proc = subprocess.run([sys.executable, "-m", "data_prep.convert_checkpoint", "--help"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl exits 1 after printing --help
  assert "--source_format" in proc.stdout and "hf_bert" in proc.stdout



def test_locate_hf_bert_layouts(tmp_path):
  w = _hf_bert_model_state(_bert_arrays(np.random.default_rng(3), mlm_prefix=None))
  # sentence-transformers with the transformer at the top level (modules.json path "").
  top = tmp_path / "top"
  write_hf_dir(str(top), w, _hf_config("gelu"), tokenizer=_tokenizer_json(["[PAD]", "a"], True))
  write_sentence_transformers_dir(str(top), transformer_path="")
  layout = checkpoint_sources.locate_hf_bert(str(top))
  assert layout.model_dir == str(top) and layout.vocab_txt is None
  assert layout.tokenizer_json == str(top / "tokenizer.json")
  assert checkpoint_sources.hf_do_lower_case(layout) is True  # the tokenizer.json normalizer
  assert checkpoint_sources.sentence_pooling_modes(layout) == ["mean_tokens"]
  # An older sentence-transformers save: 0_Transformer/ without modules.json, tokenizer at the top.
  old = tmp_path / "old"
  write_hf_dir(str(old / "0_Transformer"), w, _hf_config("gelu"))
  (old / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
  layout = checkpoint_sources.locate_hf_bert(str(old))
  assert layout.model_dir == str(old / "0_Transformer")
  assert layout.config_json == str(old / "0_Transformer/config.json")
  assert checkpoint_sources.hf_do_lower_case(layout) is False
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
    checkpoint_sources.locate_hf_bert(str(tmp_path / "empty"))


@pytest.mark.parametrize("edit,match", [
    (lambda t: t["model"]["vocab"].pop("a"), "id 1 is missing"),
    (lambda t: t["added_tokens"].append({"id": 1, "content": "[X]"}), "id 1 is given to both 'a'"),
    (lambda t: t["model"]["vocab"].update({"b\nc": 3}), "cannot be a vocab.txt line"),
    (lambda t: t["model"].update({"type": "BPE"}), "needs a WordPiece vocab"),
])
def test_tokenizer_json_vocab_errors(tmp_path, edit, match):
  tok = _tokenizer_json(["[PAD]", "a", "b"], True)
  assert _vocab_of(tmp_path / "ok.json", tok) == ["[PAD]", "a", "b"]
  edit(tok)
  with pytest.raises(ValueError, match=match):
    _vocab_of(tmp_path / "bad.json", tok)


def _vocab_of(path, tok):
  path.write_text(json.dumps(tok))
  return checkpoint_sources.vocab_from_tokenizer_json(str(path))


def test_pytorch_bin_without_torch_is_a_clear_error(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("PyTorch is installed: pytorch_model.bin is readable here")
  except ImportError:
    pass
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  (tmp_path / "config.json").write_text(json.dumps(_hf_config("gelu")))
  with pytest.raises(ImportError, match="pytorch_model.bin needs PyTorch"):
    convert_checkpoint.convert("hf_bert", str(tmp_path), str(tmp_path / "out"))


def test_hf_partial_mlm_head_is_an_error(tmp_path, tiny_vocab_file):
  state = _hf_masked_lm_state(_bert_arrays(np.random.default_rng(4)))
  del state["cls.predictions.transform.LayerNorm.bias"]
  write_hf_dir(str(tmp_path / "m"), state, _hf_config("gelu"), vocab_file=tiny_vocab_file)
  with pytest.raises(KeyError, match="cls/predictions/transform/LayerNorm/beta"):
    convert_checkpoint.convert("hf_bert", str(tmp_path / "m"), str(tmp_path / "out"))


@pytest.mark.parametrize("overrides,match", [
    ({"num_hidden_layers": L + 1}, f"num_hidden_layers={L + 1} but the checkpoint's variables have "
                                   f"num_layers={L}"),
    ({"hidden_act": "quick_gelu"}, "hidden_act='quick_gelu' is not an activation"),
    ({"model_type": "roberta"}, "model_type='roberta'"),
])
def test_hf_config_problems_name_the_field(tmp_path, tiny_vocab_file, overrides, match):
  state = _hf_bert_model_state(_bert_arrays(np.random.default_rng(5), mlm_prefix=None))
  config = {**_hf_config("gelu"), **overrides}
  write_hf_dir(str(tmp_path / "m"), state, config, vocab_file=tiny_vocab_file)
  with pytest.raises(ValueError, match=match):
    convert_checkpoint.convert("hf_bert", str(tmp_path / "m"), str(tmp_path / "out"))


def test_hidden_activation_names():
  hf = lambda act: convert_checkpoint.hidden_activation({"hidden_act": act}, hugging_face=True)
  assert [hf(a) for a in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")] == [
      "gelu_exact", "gelu", "gelu", "gelu", "relu"]
  assert convert_checkpoint.hidden_activation({"hidden_act": "gelu"}, hugging_face=False) == "gelu"
  assert convert_checkpoint.hidden_activation(None, hugging_face=True) == "gelu_exact"
