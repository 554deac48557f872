"""End-to-end `run_pretrain.py --mode=realm --retrieval=device` (issue 29) on the world of
tests/test_run_pretrain.py: the train step picks the candidates with the live query tower from a
`DeviceBlockStore`, the refresher thread re-embeds the corpus from the run's checkpoints and every
new snapshot is assigned to the store between train loops.

Asserted: the run finishes; the index version the train steps searched changes mid-run (>= 2
refreshes assigned while training runs); the host pipeline's record counts reach metrics.jsonl from the train
step; retrieval_utility rises above its step-0 value (the encoder learns to copy from the retrieved
block). As in tests/test_run_pretrain.py, the REALM stage runs a second time with another input seed
only if the first did not learn; the mechanics checks hold for every attempt.
"""
import os

import numpy as np
import pytest

from tests import test_run_pretrain as host_e2e


def _realm_device_attempt(d, realm_dir, ict_export, seed):
  """One device-mode REALM run; asserts its mechanics, returns (learned, report)."""
  host_e2e._run([  # pylint: disable=protected-access
      "run_pretrain.py", "--mode=realm", "--retrieval=device", f"--model_dir={realm_dir}",
      f"--pretrain_corpus_path={d}/P/pretrain-*", f"--retrieval_corpus_path={d}/K/realm/blocks-*",
      f"--embedder_hub_module_handle={ict_export}", f"--vocab_file={d}/vocab.txt", *host_e2e.TINY,
      f"--params_override=task.model.query_seq_len={host_e2e.QUERY_LEN},"
      f"task.model.candidate_seq_len={host_e2e.CANDIDATE_LEN},"
      f"task.model.joint_seq_len={host_e2e.JOINT_LEN},"
      f"task.model.num_candidates={host_e2e.NUM_CANDIDATES},task.model.max_masks=4,"
      "task.model.embedder_layer_norm_epsilon=0.001,"
      f"task.retriever_warmup_steps={host_e2e.RETRIEVER_FROZEN_STEPS},"
      "task.retriever_ramp_steps=100,"
      f"task.retriever_learning_rate_multiplier={host_e2e.RETRIEVER_LR_MULTIPLIER},"
      f"trainer.steps_per_loop={host_e2e.LOOP},trainer.summary_interval={host_e2e.LOOP},"
      f"trainer.validation_steps=4,trainer.validation_interval={host_e2e.REALM_STEPS},"
      f"task.optimizer.learning_rate={host_e2e.REALM_LR},task.optimizer.num_warmup_steps=10,"
      f"{host_e2e.NO_DROPOUT},{host_e2e.WIDTH}",
      "--num_eval_shards=1", f"--num_train_steps={host_e2e.REALM_STEPS}", "--batch_size=8",
      f"--seed={seed}", f"--refresh_every_steps={host_e2e.REFRESH_EVERY}",
      "--refresh_poll_secs=0.5"])
  with open(f"{realm_dir}/TRAINING_DONE") as f:
    assert int(f.read()) == host_e2e.REALM_STEPS
  train = host_e2e._records(  # pylint: disable=protected-access
      f"{realm_dir}/metrics.jsonl", "train")
  loop, steps = host_e2e.LOOP, host_e2e.REALM_STEPS
  assert [r["step"] for r in train] == list(range(loop, steps + 1, loop))
  # The version the steps searched: the initial ICT index (1) first, then >= 2 assigned refreshes
  # while training was still running (the last record excluded).
  versions = [r["index_version"] for r in train]
  assert versions[0] == 1, versions
  assert len(set(versions[:-1])) >= 3, versions
  assert train[-2]["device_index_swaps"] >= 2
  assert all(r["refresh_failures"] == 0 for r in train)
  assert all(r["staleness_steps"] >= 0 for r in train)
  # Record counts from the host pipeline, summed by the train steps: every record read up to the
  # last example is an example or a counted skip; no example lacked K candidates.
  last = train[-1]
  assert last["pipeline/examples"] == steps * 8
  assert last["pipeline/records"] == last["pipeline/examples"] + last["pipeline/skipped_total"]
  assert last["pipeline/skipped/too_few_candidates"] == 0
  assert all(r["example_valid"] == 1.0 for r in train)
  utility = [r["retrieval_utility"] for r in train]
  learned = bool(np.mean(utility[-4:]) > utility[0] + 0.05)
  report = (f"utility {[round(u, 3) for u in utility]}; mlm_accuracy "
            f"{[round(r['mlm_accuracy'], 3) for r in train]}; versions {versions}")
  return learned, report


@pytest.mark.slow
def test_realm_device_retrieval_end_to_end(tmp_path):
  d = str(tmp_path)
  os.makedirs(f"{d}/world")
  host_e2e.write_world(f"{d}/world")
  host_e2e._run(["-m", "data_prep.build_vocab",  # pylint: disable=protected-access
                 f"--input={d}/world/knowledge.jsonl,{d}/world/pretrain.jsonl",
                 f"--output={d}/vocab.txt", "--vocab_size=1000", "--lower_thresh=1"])
  host_e2e._run(["-m", "data_prep.build_knowledge_corpus",  # pylint: disable=protected-access
                 f"--input={d}/world/knowledge.jsonl", f"--vocab_file={d}/vocab.txt",
                 f"--output_dir={d}/K", "--num_shards=1", "--num_workers=1",
                 "--max_block_length=64"])
  host_e2e._run(["-m", "data_prep.build_pretrain_corpus",  # pylint: disable=protected-access
                 f"--input={d}/world/pretrain.jsonl", f"--output_dir={d}/P", "--num_shards=4",
                 "--num_workers=1"])
  host_e2e._run([  # pylint: disable=protected-access
      "run_pretrain.py", "--mode=ict", f"--model_dir={d}/ict",
      f"--examples_path={d}/K/examples.tfr",
      f"--retrieval_corpus_path={d}/K/realm/blocks-*", f"--vocab_file={d}/vocab.txt",
      *host_e2e.TINY,
      f"--params_override=task.model.ict_query_seq_len={host_e2e.QUERY_LEN},"
      f"task.model.ict_block_seq_len={host_e2e.CANDIDATE_LEN},"
      f"task.model.candidate_seq_len={host_e2e.CANDIDATE_LEN},"
      "trainer.steps_per_loop=50,trainer.summary_interval=50,task.optimizer.learning_rate=0.001,"
      f"task.optimizer.num_warmup_steps={host_e2e.ICT_WARMUP},{host_e2e.NO_DROPOUT},"
      f"{host_e2e.WIDTH}",
      f"--num_train_steps={host_e2e.ICT_STEPS}", f"--batch_size={host_e2e.ICT_BATCH}",
      "--run_mode=train"])
  ict_export = f"{d}/ict/export/{host_e2e.ICT_STEPS}/embedder"
  assert os.path.exists(f"{ict_export}/encoded/encoded.ckpt.index")

  for attempt, seed in enumerate((0, 1)):
    realm_dir = f"{d}/realm{attempt}"
    learned, report = _realm_device_attempt(d, realm_dir, ict_export, seed)
    print(f"REALM device attempt {attempt} (seed {seed}): {report}")
    if learned:
      break
  assert learned, report
  assert host_e2e._records(f"{realm_dir}/metrics.jsonl", "eval")  # pylint: disable=protected-access
  step_dir = f"{realm_dir}/export/{host_e2e.REALM_STEPS}"
  assert os.path.exists(f"{step_dir}/embedder/saved_model.pb")
  assert os.path.exists(f"{step_dir}/bert/saved_model.pb")
