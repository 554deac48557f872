"""REALM pre-training: `kill -9` then the same command resumes (step, optimizer, input position,
index re-built from the newest checkpoint by the refresher); with a fixed index (`--refresh=external`
and no external refresher) the resumed run's losses equal an uninterrupted run's."""
import os
import signal

import pytest

from tests import tiny_fixtures
from tests.reliability import helpers as h

STEPS = 30


def _setup(d):
  vocab = tiny_fixtures.tiny_vocab()
  h.write_vocab(f"{d}/vocab.txt")
  h.write_retrieval_corpus(f"{d}/blocks-00000-of-00001", 12, vocab)
  h.write_pretrain_corpus(f"{d}/P")


def _cmd(d, model_dir, refresh):
  return ["run_pretrain.py", "--mode=realm", f"--model_dir={model_dir}",
          f"--pretrain_corpus_path={d}/P/pretrain-*", f"--retrieval_corpus_path={d}/blocks-*",
          f"--vocab_file={d}/vocab.txt", f"--config_file={h.TINY_CONFIG}", "--xla=false",
          "--params_override=task.model.query_seq_len=24,task.model.candidate_seq_len=16,"
          "task.model.joint_seq_len=40,task.model.num_candidates=3,task.model.max_masks=2,"
          "trainer.steps_per_loop=5,trainer.summary_interval=5,"
          "task.optimizer.num_warmup_steps=2,task.train_data.retrieval_batch_size=4,"
          "task.train_data.shuffle_buffer_size=8," + h.NO_DROPOUT,
          "--num_eval_shards=1", f"--num_train_steps={STEPS}", "--batch_size=2",
          "--learning_rate=0.003", "--refresh_every_steps=10", "--refresh_poll_secs=0.2",
          f"--refresh={refresh}", "--run_mode=train", "--deterministic", "--seed=2"]


def _kill_after_first_checkpoint(cmd, run_dir):
  proc = h.start(cmd)
  h.wait_for_new_checkpoint(proc, run_dir, 0)
  rc, _ = h.kill(proc, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  killed_at = max(h.checkpoint_steps(run_dir))
  assert killed_at < STEPS
  return killed_at


@pytest.mark.slow
def test_realm_kill9_resume_matches_uninterrupted_with_fixed_index(tmp_path):
  d = str(tmp_path)
  _setup(d)
  ref = h.run(_cmd(d, f"{d}/ref", "external"))
  assert ref.returncode == 0, ref.stderr[-3000:]
  ref_loss = {r["step"]: r["training_loss"] for r in h.metrics(f"{d}/ref")}
  killed_at = _kill_after_first_checkpoint(_cmd(d, f"{d}/run", "external"), f"{d}/run")
  res = h.run(_cmd(d, f"{d}/run", "external"))
  assert res.returncode == 0, res.stderr[-3000:]
  # The resumed run skipped the input batches of the finished steps (recorded in metrics.jsonl).
  assert {"step": killed_at, "split": "resume", "skipped_steps": killed_at} in h.metrics(
      f"{d}/run", split=None)
  records = h.metrics(f"{d}/run")
  assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))
  for r in records:
    assert r["training_loss"] == pytest.approx(ref_loss[r["step"]], abs=1e-5), r["step"]


@pytest.mark.slow
def test_realm_kill9_resume_reindexes_from_restored_checkpoint(tmp_path):
  d = str(tmp_path)
  _setup(d)
  run_dir = f"{d}/run"
  killed_at = _kill_after_first_checkpoint(_cmd(d, run_dir, "internal"), run_dir)
  res = h.run(_cmd(d, run_dir, "internal"))
  assert res.returncode == 0, res.stderr[-3000:]
  with open(os.path.join(run_dir, "TRAINING_DONE")) as f:
    assert int(f.read()) == STEPS
  after = [r for r in h.metrics(run_dir) if r["step"] > killed_at]
  # The refresher of the resumed run re-indexes from the restored checkpoint (or a newer one).
  assert max(r["index_snapshot_step"] for r in after) >= killed_at, after
  assert all(r["refresh_failures"] == 0 for r in after)
