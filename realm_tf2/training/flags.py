"""absl flags shared by run_pretrain.py and run_finetune.py, and config assembly from them.

Precedence (lowest first): the experiment's defaults → each `--config_file` YAML in order →
`--params_override` → explicitly given original-style flags (`--num_train_steps`, `--learning_rate`, ...).
Unknown YAML keys are an error (strict override), so a typo fails at start-up, not hours later.

A flag maps to one config path or to several (a tuple: e.g. `--batch_size` sets the train and the
validation batch); only flags given on the command line override the config.
"""
from typing import Any, Dict, Mapping, Sequence, Union

import realm_tf2  # noqa: F401
from absl import flags
import tensorflow as tf

from official.modeling.hyperparams import params_dict

FLAGS = flags.FLAGS

DEFAULT_RECOVERY_MAX_TRIALS = 3

# Original flag name -> config path, shared by both scripts.
COMMON_FLAG_PATHS = {
    "num_train_steps": "trainer.train_steps",
    "learning_rate": "task.optimizer.learning_rate",
    "num_warmup_steps": "task.optimizer.num_warmup_steps",
    "save_checkpoints_steps": "trainer.checkpoint_interval",
    "keep_checkpoint_max": "trainer.max_to_keep",
    "iterations_per_loop": "trainer.steps_per_loop",
    "vocab_file": "task.vocab_file",
    "do_lower_case": "task.do_lower_case",
    "mixed_precision": "runtime.mixed_precision_dtype",
    "strategy": "runtime.distribution_strategy",
    "tpu": "runtime.tpu",
    "xla": "task.jit_compile",
    "cpu_accel": "task.cpu_accel",
}

BOTH_SPLITS = ("task.train_data", "task.validation_data")


def on_splits(field: str, splits: Sequence[str] = BOTH_SPLITS):
  """The config paths of `field` in the train and validation data configs."""
  return tuple(f"{split}.{field}" for split in splits)


def define_common_flags():
  """Defines the flags both scripts share (call once, at import of the script)."""
  flags.DEFINE_string("model_dir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard, exports.")
  flags.DEFINE_multi_string("config_file", None,
                            "YAML config(s) applied in order, e.g. configs/sizes/tiny.yaml "
                            "configs/runs/realm.yaml. Repeatable.")
  flags.DEFINE_string("params_override", None,
                      "YAML/JSON string or 'a.b=1,c.d=x' overrides applied after --config_file.")
  flags.DEFINE_string("tpu", None, "TPU name or grpc://ip:8470 ('local' on a TPU VM); implies --strategy=tpu.")
  flags.DEFINE_enum("strategy", None, ["off", "one_device", "mirrored", "multi_worker_mirrored", "tpu"],
                    "Distribution strategy (default from the config: 'off').")
  flags.DEFINE_integer("num_virtual_cpus", 0,
                       "With --strategy=mirrored on a CPU-only machine: mirror over this many virtual CPUs.")
  flags.DEFINE_integer("num_train_steps", None, "Training steps (original flag name).")
  flags.DEFINE_float("learning_rate", None, "Peak learning rate (original flag name).")
  flags.DEFINE_integer("num_warmup_steps", None,
                       "Warmup steps; default min(10000, max(100, num_train_steps/10)).")
  flags.DEFINE_integer("save_checkpoints_steps", None, "Checkpoint every N steps.")
  flags.DEFINE_integer("keep_checkpoint_max", None, "Checkpoints to keep.")
  flags.DEFINE_integer("iterations_per_loop", None, "Steps per host loop (orbit steps_per_loop).")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocab file.")
  flags.DEFINE_bool("do_lower_case", None, "Lower-case input text.")
  flags.DEFINE_enum("mixed_precision", None, ["float32", "bfloat16", "float16"], "Compute dtype policy.")
  flags.DEFINE_bool("xla", None, "Compile the train step with XLA (jit_compile=True).")
  flags.DEFINE_enum("cpu_accel", None, ["auto", "on", "off"],
                    "CPU speed-ups of realm_tf2.accel for training/re-embedding without XLA "
                    "(default from the config: auto).")


def _set_path(overrides: Dict[str, Any], path: str, value: Any):
  node = overrides
  keys = path.split(".")
  for key in keys[:-1]:
    node = node.setdefault(key, {})
  node[keys[-1]] = value


def build_params(default_params,
                 flag_paths: Mapping[str, Union[str, Sequence[str]]] = COMMON_FLAG_PATHS,
                 extra_overrides: Mapping[str, Any] | None = None):
  """Applies --config_file, --params_override and explicitly-set flags to `default_params`.

  Args:
    default_params: The experiment's default `ExperimentConfig`.
    flag_paths: Flag name -> dotted config path (or a tuple of paths), for flags given on the
      command line.
    extra_overrides: Dotted path -> value applied last (script-specific derived values).

  Returns:
    The validated, locked config.
  """
  params = default_params
  if params.trainer.recovery_max_trials == 0:
    # Model Garden's default (0) aborts on the first NaN/blow-up; ours restores the last checkpoint
    # up to this many times first (loss > trainer.loss_upper_bound or NaN). YAML can still override.
    params.override({"trainer": {"recovery_max_trials": DEFAULT_RECOVERY_MAX_TRIALS}}, is_strict=True)
  for path in FLAGS.config_file or []:
    if not tf.io.gfile.exists(path):
      raise ValueError(f"--config_file {path}: file not found")
    params = params_dict.override_params_dict(params, path, is_strict=True)
  params = params_dict.override_params_dict(params, FLAGS.params_override, is_strict=True)
  overrides: Dict[str, Any] = {}
  for flag_name, paths in flag_paths.items():
    if flag_name in FLAGS and FLAGS[flag_name].present:
      for path in ((paths,) if isinstance(paths, str) else paths):
        _set_path(overrides, path, FLAGS[flag_name].value)
  if FLAGS.tpu and not FLAGS["strategy"].present:
    _set_path(overrides, "runtime.distribution_strategy", "tpu")
  for path, value in (extra_overrides or {}).items():
    _set_path(overrides, path, value)
  if overrides:
    params.override(overrides, is_strict=True)
  params.validate()
  params.lock()
  return params
