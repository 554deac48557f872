"""Switching built Keras layers to a faster subclass in place (same variables, names and config).

Model Garden builds the transformer's sublayers (LayerNorm, attention) inside `build`, with no hook
to choose their classes, so `float32_kernels` and `fused_attention` change the class of the built
instances instead. A subclass that only overrides computation keeps every variable and checkpoint
name; SavedModel exports trace the new `call`.
"""
import tf_keras


def swap_layer_class(layer: tf_keras.layers.Layer, exact_class: type, new_class: type) -> int:
  """Sets `new_class` on every sublayer of a BUILT `layer` (itself included) whose type is
  exactly `exact_class` (subclasses are left alone). Returns how many were switched."""
  if not issubclass(new_class, exact_class):
    raise TypeError(f"{new_class.__name__} must subclass {exact_class.__name__}")
  count = 0
  for sub in layer._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
    if type(sub) is exact_class:  # pylint: disable=unidiomatic-typecheck
      sub.__class__ = new_class
      count += 1
  return count
