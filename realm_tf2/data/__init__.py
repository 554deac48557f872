"""tf.data pipelines and the on-disk corpus formats."""
