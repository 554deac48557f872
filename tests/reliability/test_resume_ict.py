"""ICT pre-training: `kill -9` then re-run resumes (step, optimizer, input position); SIGTERM writes a
checkpoint and exits 143; the resumed run's losses equal an uninterrupted run's (deterministic mode)."""
import os
import signal

import pytest

from tests import tiny_fixtures
from tests.reliability import helpers as h

STEPS = 40


def _cmd(d, model_dir):
  return ["run_pretrain.py", "--mode=ict", f"--model_dir={model_dir}", f"--examples_path={d}/ex.tfr",
          f"--vocab_file={d}/vocab.txt", f"--config_file={h.TINY_CONFIG}", "--xla=false",
          "--params_override=task.model.ict_query_seq_len=16,task.model.ict_block_seq_len=32,"
          "trainer.steps_per_loop=5,trainer.summary_interval=5,trainer.checkpoint_interval=10,"
          "task.train_data.shuffle_buffer_size=16,task.optimizer.num_warmup_steps=2," + h.NO_DROPOUT,
          f"--num_train_steps={STEPS}", "--learning_rate=0.003", "--batch_size=4", "--run_mode=train",
          "--deterministic", "--seed=1"]


@pytest.mark.slow
def test_ict_kill9_sigterm_resume_matches_uninterrupted(tmp_path):
  d = str(tmp_path)
  h.write_vocab(f"{d}/vocab.txt")
  h.write_ict_examples(f"{d}/ex.tfr", tiny_fixtures.tiny_vocab())

  ref = h.run(_cmd(d, f"{d}/ref"))
  assert ref.returncode == 0, ref.stderr[-3000:]
  ref_loss = {r["step"]: r["training_loss"] for r in h.metrics(f"{d}/ref")}
  # Training moves the weights (so the comparison below means something). Not "the loss at step 40
  # is lower": this tiny run sits near ln(4) (batch 4) for most of its 40 steps, and whether it has
  # left that plateau by step 40 changes with rounding (TensorFlow's vs the C++ kernels' tanh).
  assert max(ref_loss.values()) - min(ref_loss.values()) > 1e-2, ref_loss

  run_dir = f"{d}/run"
  # 1) kill -9 once the first checkpoint exists.
  proc = h.start(_cmd(d, run_dir))
  h.wait_for_new_checkpoint(proc, run_dir, 0)
  rc, _ = h.kill(proc, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  killed_at = max(h.checkpoint_steps(run_dir))
  assert killed_at < STEPS

  # 2) the same command resumes; SIGTERM (preemption) after its first new checkpoint.
  proc = h.start(_cmd(d, run_dir))
  h.wait_for_new_checkpoint(proc, run_dir, killed_at)
  rc, out = h.kill(proc, signal.SIGTERM)
  assert rc == 143, out[-3000:]
  preempted_at = max(h.checkpoint_steps(run_dir))
  assert killed_at < preempted_at < STEPS, (killed_at, preempted_at)
  records = h.metrics(run_dir, split=None)
  assert {"step": killed_at, "split": "resume", "skipped_steps": killed_at} in records
  assert {"step": preempted_at, "split": "preemption", "checkpoint_step": preempted_at} in records

  # 3) the same command again finishes the run.
  res = h.run(_cmd(d, run_dir))
  assert res.returncode == 0, res.stderr[-3000:]
  resume = {"step": preempted_at, "split": "resume", "skipped_steps": preempted_at}
  assert resume in h.metrics(run_dir, split=None)
  records = h.metrics(run_dir)
  steps = [r["step"] for r in records]
  assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated / lost records
  got = {r["step"]: r["training_loss"] for r in records}
  for step in range(5, STEPS + 1, 5):
    assert got[step] == pytest.approx(ref_loss[step], abs=1e-5), (step, got[step], ref_loss[step])
  assert os.path.exists(f"{run_dir}/export/{STEPS}/embedder/saved_model.pb")
