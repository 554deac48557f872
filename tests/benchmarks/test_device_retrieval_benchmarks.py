"""Device-retrieval parts of the benchmarks (issue 29): the paper-setting budget's analytic sizes,
the graph-stage measurement, and `pretrain_step.py --retrieval=device` at a tiny size."""
import math

import realm_tf2  # noqa: F401
import numpy as np
import pytest

from benchmarks import common


def test_device_budget_sizes_and_flops():
  from benchmarks import scaling_budget
  a = scaling_budget.parser().parse_args(["--num_blocks=1000", "--train_cores=8", "--batch=16",
                                          "--k=4", "--hosts=2", "--device_rows_per_chunk=0",
                                          "--device_title_width=5", "--device_body_width=20",
                                          "--pick_with=live"])
  records = {r["quantity"]: r for r in scaling_budget.device_budget(
      a, step_flops=1e12, step_s=1.0, tpu_rate=1e12, graph_core_s=0.01)}
  hbm = records["device_hbm_per_core"]
  shard = math.ceil(1000 / 8)
  assert hbm["rows_per_core"] == hbm["rows_per_chunk"] == shard
  assert hbm["block_emb_gib_bfloat16"] * 2**30 == shard * 128 * 2
  assert hbm["token_gib"] * 2**30 == shard * (5 + 20 + 3) * 4
  assert hbm["step_scores_gib"] * 2**30 == 16 * shard * 4
  step = records["device_retrieval_per_step"]
  np.testing.assert_allclose(step["search_tflop"] * 1e12, 2.0 * 16 * 1000 * 128)
  embed = common.embedder_forward_flops(16, 96, 768, 12, 3072, 128, cls_only=True)
  np.testing.assert_allclose(step["query_embed_tflop"] * 1e12, embed)
  host = records["device_input_per_host_per_step"]
  np.testing.assert_allclose(host["graph_stage_core_s"], 8 * 0.01)
  assert records["summary_device"]["step_s"] == pytest.approx(step["step_s_with"])


def test_graph_stage_measurement_runs():
  from benchmarks import scaling_budget
  r = scaling_budget.measure_graph_stage(num_records=40, batches=2, batch=4, vocab_size=60)
  assert r["examples"] == 8 and r["core_s_per_example"] > 0


@pytest.mark.slow  # traces the REALM train step with retrieval (3 towers).
def test_pretrain_step_device_retrieval_runs():
  from benchmarks import pretrain_step
  r = pretrain_step.main(["--layers=1", "--hidden=16", "--heads=2", "--vocab_size=60",
                          "--projection=8", "--steps=1", "--no-xla", "--peak_sizes=64", "--batch=2",
                          "--k=3", "--query_len=8", "--cand_len=8", "--joint_len=12",
                          "--max_masks=2", "--retrieval=device", "--num_blocks=37"])
  assert r["retrieval"] == "device" and r["num_blocks"] == 37 and np.isfinite(r["loss"])
  assert r["retrieval_seconds_median"] > 0 and r["retrieval_share"] > 0
  expected = 2.0 * 2 * 37 * 8 / 1e9
  assert r["gflop_retrieval"] > expected  # + the query tower's forward


def test_embedder_params_match_the_keras_model():
  from benchmarks import scaling_budget
  from realm_tf2 import configs  # pylint: disable=g-import-not-at-top
  from realm_tf2.modeling import embedder as embedder_lib  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  bert = configs.BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_attention_heads=2,
                            intermediate_size=24, max_position_embeddings=32)
  emb = embedder_lib.RealmEmbedder(bert, projection_size=8)
  ids = tf.zeros([1, 4], tf.int32)
  emb({"input_ids": ids, "input_mask": ids, "segment_ids": ids})
  assert scaling_budget.embedder_params(16, 2, 24, 50, 8, positions=32) == emb.count_params()
