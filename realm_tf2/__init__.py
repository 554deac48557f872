"""realm-tf2: REALM and ORQA for TensorFlow 2.

Model Garden (tf-models-official) is written against Keras 2 (`tf_keras`). TensorFlow 2.20 routes
`tf.keras` to Keras 3 unless TF_USE_LEGACY_KERAS=1 is set *before* TensorFlow is first imported, and
Keras 2/3 objects cannot be mixed in one model. Importing this package therefore sets the variable.
"""
import os as _os
import sys as _sys

if "tensorflow" in _sys.modules and _os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
  import warnings as _warnings

  _warnings.warn(
      "TensorFlow was imported before realm_tf2 without TF_USE_LEGACY_KERAS=1; tf.keras is Keras 3 "
      "in this process. realm_tf2 uses tf_keras directly, but set TF_USE_LEGACY_KERAS=1 before "
      "importing TensorFlow to mix realm_tf2 models with tf.keras code.")
_os.environ["TF_USE_LEGACY_KERAS"] = "1"
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
