"""TF Hub interop (issue 9): TF Hub encoder -> our towers, and our exports -> hub.KerasLayer.

The TF Hub-format encoder is built offline with Model Garden's own exporter
(`official.nlp.tools.export_tfhub_lib.export_model`) from a tiny `bert_v2` encoder + checkpoint.
"""
import os
import subprocess
import sys

import pytest

import realm_tf2  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras

from realm_tf2 import configs
from realm_tf2.modeling import bert as bert_lib
from realm_tf2.modeling import embedder as embedder_lib
from realm_tf2.modeling import hub_init
from realm_tf2.modeling import init_utils
from realm_tf2.modeling import knowledge_encoder
from tests import tiny_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = len(tiny_fixtures.tiny_vocab())
# configs/sizes/tiny.yaml: hidden 32, 2 layers, 2 heads, intermediate 37 (max positions 512).
ARCH = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_attention_heads=2, intermediate_size=37)


def _bert_config(**kw):
  return configs.BertConfig(**{**ARCH, **kw})


def _make_hub_encoder(root, with_mlm=False, vocab_name="vocab.txt"):
  """Writes a TF Hub encoder with Model Garden's exporter; returns (export path, vocab path)."""
  from official.nlp.configs import encoders  # pylint: disable=g-import-not-at-top
  from official.nlp.modeling import models  # pylint: disable=g-import-not-at-top
  from official.nlp.tools import export_tfhub_lib  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(7)
  vocab = tiny_fixtures.write_tiny_vocab(os.path.join(root, vocab_name))
  ec = encoders.EncoderConfig(type="bert_v2", bert_v2=encoders.BertEncoderConfig(**ARCH))
  enc = encoders.build_encoder(ec)
  enc(enc.inputs)
  if with_mlm:
    pre = models.BertPretrainerV2(encoder_network=enc)
    pre(pre.inputs)
    # Non-trivial head weights, so a head that was not transferred is noticed.
    for v in pre.masked_lm.variables:
      if "cls/predictions" in v.name:
        v.assign(tf.random.normal(v.shape, stddev=0.3, seed=3))
    items = pre.checkpoint_items
  else:
    items = {"encoder": enc}
  ckpt = tf.train.Checkpoint(**items).save(os.path.join(root, "mg_ckpt", "ckpt"))
  out = os.path.join(root, "hub_mlm" if with_mlm else "hub_encoder")
  export_tfhub_lib.export_model(out, encoder_config=ec, model_checkpoint_path=ckpt, with_mlm=with_mlm,
                                vocab_file=vocab, do_lower_case=True)
  return out, vocab


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
  return _make_hub_encoder(str(tmp_path_factory.mktemp("hub")))[0]


@pytest.fixture(scope="module")
def hub_model(hub_dir):
  return hub_init.load_hub_encoder(hub_dir)


def _features(batch=3, seq=9, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, size=(batch, seq)).astype(np.int32)
  mask = np.ones((batch, seq), np.int32)
  mask[1, 6:] = 0  # padding in one row
  ids[mask == 0] = 0
  seg = np.zeros((batch, seq), np.int32)
  seg[:, 4:] = 1
  return {"input_ids": ids, "input_mask": mask, "segment_ids": seg}


def _tiny_ict_examples(path, num_blocks=12):
  """ORQA examples.tfr (title_ids, token_ids, sentence_starts) of random 3-sentence blocks."""
  rng = np.random.default_rng(0)
  vocab = tiny_fixtures.tiny_vocab()
  word_ids = [vocab.index(w) for w in tiny_fixtures.WORDS]
  feature = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))  # noqa: E731
  with tf.io.TFRecordWriter(path) as writer:
    for _ in range(num_blocks):
      lens = rng.integers(3, 7, size=3)
      starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
      ex = tf.train.Example(features=tf.train.Features(feature={
          "title_ids": feature(rng.choice(word_ids, 2)),
          "token_ids": feature(rng.choice(word_ids, int(lens.sum()))),
          "sentence_starts": feature(starts)}))
      writer.write(ex.SerializeToString())
  return path


def _hub_outputs(hub_model, feats):
  out = hub_model(feats["input_ids"], feats["input_mask"], feats["segment_ids"])
  return out["pooled_output"].numpy(), out["sequence_output"].numpy()


def test_detection_and_vocab(hub_dir, tmp_path):
  assert hub_init.is_hub_encoder(hub_dir)
  assert hub_init.is_hub_encoder("https://tfhub.dev/google/bert_uncased_L-2_H-128_A-2/1")
  assert not hub_init.is_hub_encoder(str(tmp_path))  # neither SavedModel nor URL
  vocab, lower = hub_init.find_hub_vocab(hub_dir)
  assert vocab == os.path.join(hub_dir, "assets", "vocab.txt") and lower is True
  with tf.io.gfile.GFile(vocab) as f:
    assert f.read().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  # A hub handle that is neither a path nor resolvable: clear error naming it.
  with pytest.raises(FileNotFoundError, match="no such path"):
    hub_init.resolve_handle(str(tmp_path / "missing"))
  assert hub_init.canonical_name("bert/encoder/transformer/layer_1/output/kernel:0") == \
      "transformer/layer_1/output/kernel"
  assert hub_init.canonical_name("bert/cls/predictions/output_bias/bias:0") == \
      "cls/predictions/output_bias/bias"
  assert hub_init.canonical_name("embedder/dense/kernel:0") is None


def test_transfer_into_all_towers_matches_hub(hub_dir, hub_model):
  assert hub_model.architecture == dict(ARCH, max_position_embeddings=512, type_vocab_size=2)
  feats = _features()
  hub_pooled, hub_seq = _hub_outputs(hub_model, feats)
  assert np.abs(hub_seq).max() > 0.1  # real outputs, not zeros

  kae = knowledge_encoder.KnowledgeAugmentedEncoder(_bert_config())
  before = kae(feats, training=False)["pooled_output"].numpy()
  assert "tfhub:" in init_utils.init_knowledge_encoder(kae, hub_dir)
  out = kae(feats, training=False)
  assert np.abs(before - hub_pooled).max() > 1e-3  # random init really differed
  np.testing.assert_allclose(out["pooled_output"].numpy(), hub_pooled, atol=1e-5)
  np.testing.assert_allclose(out["sequence_output"].numpy(), hub_seq, atol=1e-5)

  emb = embedder_lib.RealmEmbedder(_bert_config(), projection_size=16)
  init_utils.init_embedder(emb, hub_dir)
  enc_out = emb.encoder(bert_lib.to_encoder_inputs(feats), training=False)
  # The embedder's encoder computes its last layer for [CLS] only (output_range=1).
  np.testing.assert_allclose(enc_out["sequence_output"].numpy(), hub_seq[:, :1], atol=1e-5)
  np.testing.assert_allclose(enc_out["pooled_output"].numpy(), hub_pooled, atol=1e-5)

  bare = bert_lib.build_bert_encoder(_bert_config())
  bare(bert_lib.to_encoder_inputs(feats))
  init_utils.init_bert_encoder(bare, hub_dir)
  np.testing.assert_allclose(bare(bert_lib.to_encoder_inputs(feats))["pooled_output"].numpy(),
                             hub_pooled, atol=1e-5)


@pytest.mark.parametrize("override,field", [({"num_layers": 3}, "num_layers: hub 2 vs ours 3"),
                                            ({"num_attention_heads": 4},
                                             "num_attention_heads: hub 2 vs ours 4"),
                                            ({"vocab_size": VOCAB + 1},
                                             f"vocab_size: hub {VOCAB} vs ours {VOCAB + 1}")])
def test_mismatched_architecture_is_a_clear_error(hub_dir, hub_model, override, field):
  model = knowledge_encoder.KnowledgeAugmentedEncoder(_bert_config(**override))
  with pytest.raises(ValueError, match="does not match our BERT config") as e:
    hub_init.init_from_hub(model, hub_dir, hub=hub_model)
  assert field in str(e.value)


def test_ict_task_initialize_from_hub_flag_path(hub_dir, hub_model, tmp_path):
  """What `run_pretrain --mode=ict --bert_hub_module_handle=...` does: task.bert_init -> initialize."""
  from realm_tf2.tasks import ict_task  # pylint: disable=g-import-not-at-top
  vocab, _ = hub_init.find_hub_vocab(hub_dir)
  cfg = ict_task.IctTaskConfig(vocab_file=vocab, bert_init=hub_dir)
  cfg.model.bert.override({k: v for k, v in ARCH.items() if k != "vocab_size"})
  cfg.model.bert.vocab_size = 0  # taken from the hub's vocab file
  cfg.model.projection_size = 16
  task = ict_task.IctTask(cfg)
  model = task.build_model()
  task.initialize(model)
  feats = _features(seed=1)
  out = model.encoder(bert_lib.to_encoder_inputs(feats), training=False)
  hub_pooled, hub_seq = _hub_outputs(hub_model, feats)
  np.testing.assert_allclose(out["pooled_output"].numpy(), hub_pooled, atol=1e-5)
  np.testing.assert_allclose(out["sequence_output"].numpy(), hub_seq[:, :1], atol=1e-5)  # [CLS]


def test_our_bert_export_in_keras_layer(our_bert_export):
  """Our `bert` export as hub.KerasLayer(signature="tokens"/"mlm", output_key=...) in a user's model."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  ours, export, _ = our_bert_export
  feats = _features(seed=2)
  positions = np.array([[1, 2], [0, 5], [3, 8]], np.int32)
  want = ours({**feats, "mlm_positions": positions}, training=False)

  # hub.KerasLayer with signature + output_key inside a user's tf_keras model.
  ids, mask, seg = (tf_keras.Input([None], dtype=tf.int32, name=n)
                    for n in ("input_ids", "input_mask", "segment_ids"))
  pos = tf_keras.Input([None], dtype=tf.int32, name="mlm_positions")
  pooled = hub.KerasLayer(export, signature="tokens", output_key="pooled_output")(
      dict(input_ids=ids, input_mask=mask, segment_ids=seg))
  logits = hub.KerasLayer(export, signature="mlm", output_key="mlm_logits")(
      dict(input_ids=ids, input_mask=mask, segment_ids=seg, mlm_positions=pos))
  user = tf_keras.Model([ids, mask, seg, pos], [tf_keras.layers.Dense(3)(pooled), logits, pooled])
  _, got_logits, got_pooled = user([feats["input_ids"], feats["input_mask"], feats["segment_ids"],
                                    positions])
  np.testing.assert_allclose(got_pooled.numpy(), want["pooled_output"].numpy(), atol=1e-5)
  np.testing.assert_allclose(got_logits.numpy(), want["mlm_logits"].numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def our_bert_export(tmp_path_factory):
  from realm_tf2.export import bert_export  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("ours")
  vocab = tiny_fixtures.write_tiny_vocab(str(root / "vocab.txt"))
  tf_keras.utils.set_random_seed(11)
  ours = knowledge_encoder.KnowledgeAugmentedEncoder(_bert_config())
  return ours, bert_export.export_bert(ours, vocab, True, str(root / "export/5/bert")), vocab


@pytest.mark.slow  # a Keras SavedModel save + load: tens of seconds
def test_hub_format_encoder_export_roundtrip(our_bert_export, tmp_path):
  """`tfhub_encoder_export` of our `bert` export: hub.KerasLayer(trainable=True) in a user's model and
  hub_init (back into a fresh model of ours) both reproduce our outputs."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  from realm_tf2.export import tfhub_encoder_export  # pylint: disable=g-import-not-at-top
  ours, export, tiny_vocab_file = our_bert_export
  feats = _features(seed=2)
  want = ours(feats, training=False)
  out_dir = str(tmp_path / "encoder_hub")
  subprocess.run([sys.executable, "-m", "realm_tf2.export.tfhub_encoder_export", f"--source={export}",
                  f"--export_dir={out_dir}"], cwd=REPO, check=True, capture_output=True, timeout=300)
  hub_fmt = out_dir
  assert hub_init.is_hub_encoder(hub_fmt)
  layer = hub.KerasLayer(hub_fmt, trainable=True)
  word = tf_keras.Input([None], dtype=tf.int32, name="input_word_ids")
  m = tf_keras.Input([None], dtype=tf.int32, name="input_mask")
  t = tf_keras.Input([None], dtype=tf.int32, name="input_type_ids")
  out = layer(dict(input_word_ids=word, input_mask=m, input_type_ids=t))
  user2 = tf_keras.Model([word, m, t], [out["pooled_output"], out["sequence_output"], out["default"]])
  got = user2([feats["input_ids"], feats["input_mask"], feats["segment_ids"]])
  np.testing.assert_allclose(got[0].numpy(), want["pooled_output"].numpy(), atol=1e-5)
  np.testing.assert_allclose(got[1].numpy(), want["sequence_output"].numpy(), atol=1e-5)
  np.testing.assert_allclose(got[2].numpy(), got[0].numpy())
  assert len(layer.trainable_weights) == len(ours.encoder.trainable_weights)
  assert len(out["encoder_outputs"]) == 2
  vocab, lower = hub_init.find_hub_vocab(hub_fmt)
  with tf.io.gfile.GFile(vocab) as f1, tf.io.gfile.GFile(tiny_vocab_file) as f2:
    assert f1.read() == f2.read()
  assert lower is True

  # ...and back: the hub-format export initialises a fresh model of ours to the same outputs.
  back = knowledge_encoder.KnowledgeAugmentedEncoder(_bert_config())
  init_utils.init_knowledge_encoder(back, hub_fmt)
  np.testing.assert_allclose(back(feats, training=False)["sequence_output"].numpy(),
                             want["sequence_output"].numpy(), atol=1e-5)


@pytest.mark.slow  # Model Garden's with_mlm export: about a minute
def test_mlm_head_transferred(tmp_path):
  hub_path, _ = _make_hub_encoder(str(tmp_path), with_mlm=True)
  hub_model = hub_init.load_hub_encoder(hub_path)
  assert hub_model.has_mlm_head
  feats = _features(seed=4)
  positions = np.array([[1, 2], [0, 5], [3, 8]], np.int32)
  want = hub_model.loaded.mlm({"input_word_ids": feats["input_ids"], "input_mask": feats["input_mask"],
                               "input_type_ids": feats["segment_ids"],
                               "masked_lm_positions": positions}, training=False)
  kae = knowledge_encoder.KnowledgeAugmentedEncoder(_bert_config())
  init_utils.init_knowledge_encoder(kae, hub_path)
  got = kae({**feats, "mlm_positions": positions}, training=False)
  np.testing.assert_allclose(got["mlm_logits"].numpy(), want["mlm_logits"].numpy(), atol=1e-4)
  np.testing.assert_allclose(got["pooled_output"].numpy(), want["pooled_output"].numpy(), atol=1e-5)


@pytest.mark.slow  # run_pretrain subprocess (TF import + tiny world + 2 ICT steps)
def test_run_pretrain_ict_from_hub_flag(hub_dir, hub_model, tmp_path):
  """`run_pretrain --mode=ict --bert_hub_module_handle=<hub dir>` without --vocab_file: the hub vocab
  is used and, with learning rate 0, the checkpointed encoder equals the hub model."""
  examples = _tiny_ict_examples(str(tmp_path / "examples.tfr"))
  model_dir = str(tmp_path / "ict")
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "run_pretrain.py", "--mode=ict", f"--model_dir={model_dir}",
       f"--examples_path={examples}", f"--bert_hub_module_handle={hub_dir}",
       "--config_file=configs/sizes/tiny.yaml", "--num_train_steps=2", "--batch_size=4",
       "--learning_rate=0.0", "--num_warmup_steps=0", "--run_mode=train",
       "--params_override=task.model.ict_query_seq_len=16,task.model.ict_block_seq_len=32"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  enc = bert_lib.build_bert_encoder(_bert_config())
  feats = _features(seed=5)
  enc(bert_lib.to_encoder_inputs(feats))
  init_utils.init_bert_encoder(enc, model_dir)
  np.testing.assert_allclose(enc(bert_lib.to_encoder_inputs(feats))["sequence_output"].numpy(),
                             _hub_outputs(hub_model, feats)[1], atol=1e-5)
  params = open(os.path.join(model_dir, "params.yaml")).read()
  assert os.path.join(hub_dir, "assets", "vocab.txt") in params
