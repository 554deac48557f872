"""Data preparation command-line tools (see contracts §5). Importing sets TF_USE_LEGACY_KERAS=1."""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
