"""Opt-in CPU speed-ups for training and corpus re-embedding without XLA.

The models in `realm_tf2.modeling` are plain Model Garden / Keras compositions; on a TPU, a GPU or
under XLA they run as built. On a CPU without XLA, TensorFlow runs BERT's elementwise work (dropout
masks, GELU, LayerNorm, the attention softmax) as many memory-bound passes, and these pieces do the
same maths in fewer:

  dropout     16-bit keep masks instead of 32-bit floats (`packed_dropout`)
  layer_norm  LayerNorm with a closed-form float32 gradient (`float32_kernels`)
  gelu        BERT's tanh-GELU with a closed-form float32 gradient (`float32_kernels`)
  attention   one gradient for the attention softmax + its dropout (`fused_attention`)
  kernels     C++ versions of the GELU and softmax+dropout passes (`custom_kernels`,
              `cpu_kernels.cc`), built on first use; used only while tracing inside `kernels_scope()`

What each one buys on the CPU paths: docs/scaling.md ("Current numbers", a row per speed-up).

How it is applied, in one place: `apply(model)` switches the computation of an already built model
(`training/driver.py` for training, `retrieval/embed_corpus.py` for re-embedding), and the gradient /
embedding step is traced inside `kernels_scope()`; both only when `is_enabled(...)` says so: mode
"auto"/"on", no XLA, no accelerator. Nothing here changes a variable, a variable name or the object
graph, so checkpoints and exports of an accelerated model are those of the plain model (exports
are traced outside `kernels_scope()` and never contain the C++ ops).

Why the layers are switched in place rather than built through Model Garden's `EncoderScaffold` /
`TransformerScaffold` hooks: those build a different object graph than `BertEncoderV2` (other
attribute names), so a checkpoint written by an accelerated CPU run could not be restored into the
plain model on a TPU, and every converter would need a second name table.
"""
import realm_tf2  # noqa: F401
import tensorflow as tf
import tf_keras
from official.modeling import activations

from realm_tf2.accel import custom_kernels
from realm_tf2.accel import float32_kernels
from realm_tf2.accel import fused_attention
from realm_tf2.accel import packed_dropout

MODES = ("auto", "on", "off")
PIECES = ("dropout", "layer_norm", "gelu", "attention")

kernels_scope = custom_kernels.enabled


def _accelerator_present(strategy=None) -> bool:
  strategy = strategy or tf.distribute.get_strategy()
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return True
  return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def is_enabled(mode: str, jit_compile: bool, strategy=None) -> bool:
  """Whether the speed-ups apply: `mode` "on" or "auto", no XLA, no GPU/TPU.

  Args:
    mode: "auto" (default everywhere: on where it runs), "on" (same rule; kept explicit for
      configs), or "off".
    jit_compile: The step is XLA-compiled (XLA fuses the elementwise work itself, and the C++ ops
      have no XLA lowering).
    strategy: The distribution strategy (default: the current one).
  """
  if mode not in MODES:
    raise ValueError(f"cpu_accel must be one of {MODES}, got {mode!r}")
  return mode != "off" and not jit_compile and not _accelerator_present(strategy)


def _switch_gelu(model: tf_keras.layers.Layer) -> int:
  """Points every Activation / Dense layer computing Model Garden's tanh-GELU at
  `float32_kernels.gelu_tanh` (same function, closed-form gradient). Returns how many."""
  count = 0
  for sub in model._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
    if isinstance(sub, (tf_keras.layers.Activation, tf_keras.layers.Dense)) and (
        getattr(sub, "activation", None) is activations.gelu):
      sub.activation = float32_kernels.gelu_tanh
      count += 1
  return count


def apply(model: tf_keras.layers.Layer, pieces=PIECES) -> dict:
  """Switches the computation of a BUILT model to the CPU speed-ups named in `pieces`.

  Idempotent; variables, names and the object graph are unchanged. The fused attention needs the
  packed dropout masks, so "attention" implies "dropout".

  Args:
    model: Any built Keras layer/model holding BERT towers.
    pieces: Subset of `PIECES`.
  Returns:
    {piece: number of layers switched}.
  """
  unknown = set(pieces) - set(PIECES)
  if unknown:
    raise ValueError(f"unknown cpu_accel pieces {sorted(unknown)}; known: {PIECES}")
  counts = {}
  if "dropout" in pieces or "attention" in pieces:
    counts["dropout"] = packed_dropout.use_packed_dropout(model)
  if "attention" in pieces:
    counts["attention"] = fused_attention.use_fused_attention(model)
  if "layer_norm" in pieces:
    counts["layer_norm"] = float32_kernels.use_float32_layer_norm(model)
  if "gelu" in pieces:
    counts["gelu"] = _switch_gelu(model)
  return counts


def apply_if_enabled(model: tf_keras.layers.Layer, mode: str, jit_compile: bool,
                     strategy=None) -> bool:
  """`apply(model)` when `is_enabled(mode, jit_compile, strategy)`; returns whether it did."""
  if not is_enabled(mode, jit_compile, strategy):
    return False
  apply(model)
  return True
