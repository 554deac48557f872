"""BERT AdamWeightDecay (no bias correction, decoupled decay, global clip) and its lr schedule."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
import tensorflow as tf

from realm_tf2 import configs
from realm_tf2 import optimization


def _np_adamw(params, grads_seq, lr, names, wd=0.01, b1=0.9, b2=0.999, eps=1e-6, clip=1.0,
              bias_correction=False):
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  p = {k: v.copy() for k, v in params.items()}
  for t, grads in enumerate(grads_seq, start=1):
    step_lr = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) if bias_correction else lr
    norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    scale = clip / max(norm, clip)
    for k in p:
      g = grads[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      update = m[k] / (np.sqrt(v2[k]) + eps)
      if not any(s in names[k] for s in ("LayerNorm", "layer_norm", "bias")):
        update = update + wd * p[k]
      p[k] = p[k] - step_lr * update
  return p


@pytest.mark.parametrize("bias_correction", [False, True])
def test_two_steps_match_numpy_adamw(bias_correction):
  params = {"kernel": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
            "bias": np.array([0.3, -0.7], np.float32),
            "gamma": np.array([1.0, 2.0], np.float32)}
  names = {"kernel": "dense/kernel", "bias": "dense/bias", "gamma": "encoder/layer_norm/gamma"}
  tf_vars = {k: tf.Variable(v, name=names[k]) for k, v in params.items()}
  grads_seq = [{"kernel": np.array([[3.0, -1.0], [0.5, 2.0]], np.float32),  # norm > 1: clipped
                "bias": np.array([1.0, -2.0], np.float32),
                "gamma": np.array([0.5, 0.5], np.float32)},
               {"kernel": np.array([[0.1, 0.2], [-0.1, 0.0]], np.float32),  # norm < 1: untouched
                "bias": np.array([0.05, 0.0], np.float32),
                "gamma": np.array([0.0, -0.3], np.float32)}]
  lr = 0.1
  opt = optimization.AdamWeightDecay(learning_rate=lr, weight_decay_rate=0.01, global_clipnorm=1.0,
                                     bias_correction=bias_correction)

  @tf.function(jit_compile=True)
  def apply(grads):
    opt.apply_gradients([(grads[k], tf_vars[k]) for k in ("kernel", "bias", "gamma")])

  for grads in grads_seq:
    apply({k: tf.constant(g) for k, g in grads.items()})
  expected = _np_adamw(params, grads_seq, lr, names, bias_correction=bias_correction)
  for k in params:
    # The Adam part runs in TF's fused ApplyAdam kernel, whose vectorised float32 sqrt/divide differ
    # from NumPy's by ~1e-5 of an update (updates here are ~0.3-0.6).
    np.testing.assert_allclose(tf_vars[k].numpy(), expected[k], rtol=1e-5, atol=2e-5)
  # No bias correction (the original): first-step Adam update magnitude is 0.1/sqrt(0.001) ~ 3.16,
  # not ~1; with it, exactly the bias-corrected Adam step (~1·lr).
  one = tf.Variable([0.0], name="x/bias")
  opt2 = optimization.AdamWeightDecay(learning_rate=1.0, global_clipnorm=None,
                                      bias_correction=bias_correction)
  opt2.apply_gradients([(tf.constant([0.5]), one)])
  first = (np.sqrt(0.001) / 0.1 if bias_correction else 1.0) * 0.1 * 0.5 / (np.sqrt(0.001) * 0.5 + 1e-6)
  assert float(one.numpy()[0]) == pytest.approx(-first, rel=1e-5)
  # Exclusion is by name regex.
  assert opt.do_weight_decay("encoder/transformer/layer_0/intermediate/kernel:0")
  assert not opt.do_weight_decay("cls/predictions/transform/LayerNorm/beta:0")
  assert not opt.do_weight_decay("reader/layer_normalization/gamma:0")
  assert not opt.do_weight_decay("cls/predictions/output_bias/bias:0")


def test_schedule_values():
  sched = optimization.WarmupPolynomialDecay(1e-3, num_train_steps=100, num_warmup_steps=10)
  for step, lr in [(0, 0.0), (5, 5e-4), (9, 9e-4), (10, 9e-4), (50, 5e-4), (99, 1e-5), (100, 0.0),
                   (150, 0.0)]:
    assert float(sched(step)) == pytest.approx(lr, abs=1e-9), step


def test_create_optimizer_default_warmup_and_clip():
  cfg = configs.OptimizerConfig(learning_rate=3e-5)
  opt = optimization.create_optimizer(cfg, num_train_steps=200000)
  assert opt._learning_rate.num_warmup_steps == 10000
  assert opt.global_clipnorm == 1.0
  assert optimization.create_optimizer(cfg, 500)._learning_rate.num_warmup_steps == 100
  cfg2 = configs.OptimizerConfig(learning_rate=1e-5, num_warmup_steps=7)
  assert optimization.create_optimizer(cfg2, 50)._learning_rate.num_warmup_steps == 7
  assert float(opt._learning_rate(5000)) == pytest.approx(1.5e-5)
  assert not opt.bias_correction  # the original's default
  assert optimization.create_optimizer(configs.OptimizerConfig(bias_correction=True), 50).bias_correction
