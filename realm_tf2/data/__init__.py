"""tf.data input pipelines: REALM pre-training (`pretrain_pipeline`), ICT (`ict_pipeline`), ORQA QA."""
