"""Smoke tests: every performance benchmark runs at a tiny size (so none can rot), and the analytic
FLOP counts match hand-computed numbers."""
import json

import realm_tf2  # noqa: F401
import numpy as np
import pytest

from benchmarks import common


def test_transformer_flops_hand_computed():
  # T=4, H=2, I=8: QKV 3*2*4*2*2=96, scores 2*16*2=64, context 64, out 2*4*2*2=32, FFN 4*4*2*8=256.
  assert common.transformer_layer_flops(4, 2, 8) == 96 + 64 + 64 + 32 + 256
  # Encoder: 3 seqs x 2 layers + pooler 2*H*H per seq.
  assert common.encoder_forward_flops(3, 4, 2, 2, 8) == 3 * (2 * 512 + 8)
  assert common.mlm_head_forward_flops(5, 2, 10) == 5 * (8 + 40)


def test_realm_step_flops_parts():
  f = common.realm_step_flops(batch=2, k=3, query_len=4, cand_len=5, joint_len=6, hidden=2,
                              layers=1, intermediate=8, vocab=10, max_masks=2, projection=3)
  layer = lambda t: 8 * t * 4 + 4 * t * t * 2 + 4 * t * 2 * 8  # noqa: E731
  q = 2 * (layer(4) + 8 + 2 * 2 * 3)
  c = 6 * (layer(5) + 8 + 2 * 2 * 3)
  j = 6 * (layer(6) + 8)
  mlm = 12 * (8 + 40)  # B*K*M = 12 masked rows only
  np.testing.assert_allclose(f["query"], 3 * q)
  np.testing.assert_allclose(f["candidates"], 3 * c)
  np.testing.assert_allclose(f["joint"], 3 * j)
  np.testing.assert_allclose(f["mlm_head"], 3 * mlm)
  np.testing.assert_allclose(f["total"], 3 * (q + c + j + mlm + 2 * 6 * 3))


def test_matmul_peak_runs(capsys):
  from benchmarks import matmul_peak
  out = matmul_peak.main(["--sizes=64", "--repeats=1"])
  assert out[-1]["benchmark"] == "matmul_peak" and out[-1]["peak_gflops"] > 0
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  assert len(lines) == 3  # tf, xla, summary


TINY_MODEL = ["--layers=1", "--hidden=16", "--heads=2", "--vocab_size=60", "--projection=8",
              "--steps=1", "--no-xla", "--peak_sizes=64"]


@pytest.mark.slow  # traces the REALM train step (3 towers).
def test_pretrain_step_runs():
  from benchmarks import pretrain_step
  r = pretrain_step.main(TINY_MODEL + ["--batch=1", "--k=2", "--query_len=8", "--cand_len=8",
                                       "--joint_len=12", "--max_masks=2"])
  assert r["seconds_per_step_median"] > 0 and np.isfinite(r["loss"])
  expected = common.realm_step_flops(1, 2, 8, 8, 12, 16, 1, 64, 60, 2, 8)["total"] / 1e9
  np.testing.assert_allclose(r["useful_gflop_per_step"], expected)


@pytest.mark.slow  # traces the ORQA train step.
def test_finetune_step_runs():
  from benchmarks import finetune_step
  r = finetune_step.main(TINY_MODEL + ["--question_len=6", "--reader_len=16", "--num_read=2",
                                       "--retriever_beam=3", "--num_blocks=8", "--max_span_width=2",
                                       "--span_hidden=8", "--max_answers=1", "--max_answer_len=2"])
  assert r["seconds_per_step_median"] > 0 and np.isfinite(r["loss"])


@pytest.mark.slow  # builds the REALM tf.data pipeline (py_function retrieval): minutes on 2 cores.
def test_input_pipeline_runs(tmp_path):
  from benchmarks import input_pipeline
  r = input_pipeline.main(TINY_MODEL + [
      "--batch=2", "--k=3", "--query_len=24", "--cand_len=16", "--joint_len=32", "--max_masks=2",
      "--num_records=24", "--num_blocks=20", "--retrieval_batch_size=4", "--batches=3",
      "--warmup_batches=1", "--trainer_examples_per_s=1.0", f"--workdir={tmp_path}"])
  assert r["examples"] == 6 and r["examples_per_s"] > 0
  assert r["ratio_to_trainer"] == pytest.approx(r["examples_per_s"])
  assert sum(r["skips"].values()) < r["records"]


def test_scaling_budget_units():
  from benchmarks import scaling_budget
  bs = scaling_budget.measure_block_store(50, 20)
  assert 4.0 <= bs["bytes_per_token"] < 8.0  # int32 ids + per-block offsets/uid
  pack = scaling_budget.measure_packing(num_blocks=50, n_queries=4, k=3)
  assert pack["pack_s_per_example"] >= 0


@pytest.mark.parametrize("precision,xla", [("float32", True), ("bfloat16", False)])
def test_measure_refresh_runs(precision, xla):
  import tf_keras  # pylint: disable=g-import-not-at-top
  from benchmarks import scaling_budget
  tracker = common.PeakTracker((64,), repeats=1)
  r = scaling_budget.measure_refresh(num_blocks=8, layers=1, hidden=16, heads=2, vocab=100,
                                     batch_size=4, buckets=(32,), tracker=tracker,
                                     precision=precision, xla=xla)
  assert r["precision"] == precision and r["xla"] == xla
  assert r["blocks_per_sec"] > 0 and r["efficiency_real_tokens"] > 0
  # The mixed policy is only used to build the measured embedder, not left behind.
  assert tf_keras.mixed_precision.global_policy().name == "float32"


def test_precision_policy_names():
  assert common.keras_policy_name("float32") == "float32"
  assert common.keras_policy_name("bfloat16") == "mixed_bfloat16"
  with pytest.raises(ValueError, match="got 'float16'"):
    common.keras_policy_name("float16")
