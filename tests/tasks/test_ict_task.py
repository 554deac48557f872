"""ICT task: loss/metrics against numpy on a tiny tower; experiment factories are registered."""
import realm_tf2  # noqa: F401
import numpy as np
import tensorflow as tf

from official.core import exp_factory
from realm_tf2 import configs
from realm_tf2.tasks import ict_task
from realm_tf2.tasks import pretrain_experiments  # noqa: F401  (registers the experiments)


def test_ict_loss_and_masked_accuracy_match_numpy(tiny_vocab_file):
  cfg = ict_task.IctTaskConfig(vocab_file=tiny_vocab_file, jit_compile=False)
  cfg.model.bert = configs.BertConfig(vocab_size=0, hidden_size=32, num_layers=2, num_attention_heads=2,
                                      intermediate_size=37)
  cfg.model.projection_size = 16
  task = ict_task.IctTask(cfg)
  model = task.build_model()
  rng = np.random.RandomState(0)
  b = 4
  inputs = {"query_input_ids": rng.randint(5, 50, [b, 8]).astype(np.int32),
            "query_input_mask": np.ones([b, 8], np.int32), "query_segment_ids": np.zeros([b, 8], np.int32),
            "block_input_ids": rng.randint(5, 50, [b, 12]).astype(np.int32),
            "block_input_mask": np.ones([b, 12], np.int32),
            "block_segment_ids": np.concatenate([np.zeros([b, 4]), np.ones([b, 8])], 1).astype(np.int32),
            "mask_query": np.array([1, 1, 0, 1], np.int32)}
  loss, logs = task.compute_loss(model, {k: tf.constant(v) for k, v in inputs.items()}, training=False)
  q = model({"input_ids": inputs["query_input_ids"], "input_mask": inputs["query_input_mask"],
             "segment_ids": inputs["query_segment_ids"]}).numpy()
  d = model({"input_ids": inputs["block_input_ids"], "input_mask": inputs["block_input_mask"],
             "segment_ids": inputs["block_segment_ids"]}).numpy()
  logits = q @ d.T  # [b, b]: in-batch negatives
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  np.testing.assert_allclose(loss.numpy(), np.mean(lse - np.diag(logits)), rtol=1e-5)
  correct = logits.argmax(1) == np.arange(b)
  m = inputs["mask_query"].astype(bool)
  np.testing.assert_allclose(logs["masked_accuracy"].numpy(), correct[m].mean())
  np.testing.assert_allclose(logs["unmasked_accuracy"].numpy(), correct[~m].mean())
  np.testing.assert_allclose(logs["actual_mask_ratio"].numpy(), 0.75)


def test_experiments_registered():
  ict = exp_factory.get_exp_config("realm/ict")
  realm = exp_factory.get_exp_config("realm/pretrain")
  assert ict.task.optimizer.learning_rate == 1e-4 and ict.task.model.embedder_layer_norm_epsilon == 1e-3
  assert realm.task.model.num_candidates == 8 and realm.task.train_data.num_eval_shards == 5
  assert realm.trainer.best_checkpoint_eval_metric == "retrieval_utility"
