"""The default knowledge world: a fictional, seeded, scalable corpus with pre-training text and QA.

`generate_world` / `DATASET_NAME` live in `generator.py`; they are loaded lazily so that
`python -m realm_tf2.world.generator` does not import the module twice.
"""
import realm_tf2  # noqa: F401


def __getattr__(name):
  if name in ("generate_world", "ensure_world", "DATASET_NAME", "DEFAULT_NUM_ENTITIES", "DEFAULT_SEED"):
    from realm_tf2.world import generator  # pylint: disable=g-import-not-at-top
    return getattr(generator, name)
  raise AttributeError(f"module 'realm_tf2.world' has no attribute {name!r}")
