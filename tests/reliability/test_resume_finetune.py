"""ORQA fine-tuning: `kill -9` then the same command resumes from the last checkpoint (step,
optimizer, input position) and reaches the uninterrupted run's losses (seeded, dropout off)."""
import signal

import pytest

from tests.reliability import helpers as h
from tests.tasks import orqa_world

STEPS = 40


def _cmd(world, model_dir):
  return ["run_finetune.py", "--mode=train", f"--model_dir={model_dir}",
          f"--config_file={h.TINY_CONFIG}", f"--config_file={h.REPO}/configs/runs/orqa_tiny.yaml",
          f"--vocab_file={world['vocab']}", f"--retriever_module_path={world['retriever']}",
          f"--block_records_path={world['corpus']}", f"--data_root={world['qa']}",
          "--dataset_name=World", "--reader_beam_size=4", f"--num_train_steps={STEPS}",
          "--params_override=task.model.projection_size=16,task.model.reader_seq_len=32,"
          "trainer.steps_per_loop=5,trainer.summary_interval=5,trainer.checkpoint_interval=10,"
          "task.train_data.seed=3,task.optimizer.num_warmup_steps=2," + h.NO_DROPOUT]


@pytest.mark.slow
def test_finetune_kill9_resume_matches_uninterrupted(tmp_path):
  world = orqa_world.build_world(str(tmp_path / "world"))
  ref = h.run(_cmd(world, f"{tmp_path}/ref"))
  assert ref.returncode == 0, ref.stderr[-3000:]
  ref_loss = {r["step"]: r["training_loss"] for r in h.metrics(f"{tmp_path}/ref")}

  run_dir = f"{tmp_path}/run"
  proc = h.start(_cmd(world, run_dir))
  h.wait_for_new_checkpoint(proc, run_dir, 0)
  rc, _ = h.kill(proc, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  killed_at = max(h.checkpoint_steps(run_dir))
  assert killed_at < STEPS

  res = h.run(_cmd(world, run_dir))
  assert res.returncode == 0, res.stderr[-3000:]
  # The resumed run skipped the input batches of the finished steps (recorded in metrics.jsonl).
  assert {"step": killed_at, "split": "resume", "skipped_steps": killed_at} in h.metrics(
      run_dir, split=None)
  records = h.metrics(run_dir)
  steps = [r["step"] for r in records]
  assert steps == sorted(set(steps)) and steps[-1] == STEPS
  got = {r["step"]: r["training_loss"] for r in records}
  for step in range(5, STEPS + 1, 5):
    assert got[step] == pytest.approx(ref_loss[step], abs=1e-5), (step, got[step], ref_loss[step])
  assert ref_loss[5] != pytest.approx(ref_loss[STEPS], abs=1e-3)
