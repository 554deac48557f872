"""End-to-end: world generator -> data_prep CLIs -> ICT -> REALM with >= 2 background index refreshes
-> exports loaded in a fresh process with only tensorflow + tensorflow_text."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

TINY = ["--config_file=" + os.path.join(REPO, "configs/sizes/tiny.yaml"), "--xla=false"]


def _run(args, timeout=900, clean_env=False):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  if clean_env:  # a plain TF user: no legacy-Keras switch inherited from the test process
    env.pop("TF_USE_LEGACY_KERAS", None)
  proc = subprocess.run([PY] + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"{args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc.stdout


def _records(path, split):
  with open(path) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.mark.slow
def test_ict_then_realm_with_refreshes(tmp_path):
  d = str(tmp_path)
  _run(["-c", "from realm_tf2.world import generator; "
        f"generator.generate_world({d + '/world'!r}, num_entities=12, seed=0)"])
  _run(["-m", "data_prep.build_vocab", f"--input={d}/world/knowledge.jsonl,{d}/world/pretrain.jsonl",
        f"--output={d}/vocab.txt", "--vocab_size=400"])
  _run(["-m", "data_prep.build_knowledge_corpus", f"--input={d}/world/knowledge.jsonl",
        f"--vocab_file={d}/vocab.txt", f"--output_dir={d}/K", "--num_shards=1", "--num_workers=1",
        "--max_block_length=64"])
  _run(["-m", "data_prep.build_pretrain_corpus", f"--input={d}/world/pretrain.jsonl",
        f"--output_dir={d}/P", "--num_shards=3", "--num_workers=1"])

  _run(["run_pretrain.py", "--mode=ict", f"--model_dir={d}/ict", f"--examples_path={d}/K/examples.tfr",
        f"--retrieval_corpus_path={d}/K/realm/blocks-*", f"--vocab_file={d}/vocab.txt", *TINY,
        "--params_override=task.model.ict_query_seq_len=32,task.model.ict_block_seq_len=64,"
        "task.model.candidate_seq_len=64,trainer.steps_per_loop=10,trainer.summary_interval=10,"
        "task.optimizer.learning_rate=0.001,task.optimizer.num_warmup_steps=5",
        "--num_train_steps=20", "--batch_size=8", "--run_mode=train"])
  ict_export = f"{d}/ict/export/20/embedder"
  assert os.path.exists(f"{ict_export}/encoded/encoded.ckpt.index")

  out = _run(["run_pretrain.py", "--mode=realm", f"--model_dir={d}/realm",
              f"--pretrain_corpus_path={d}/P/pretrain-*", f"--retrieval_corpus_path={d}/K/realm/blocks-*",
              f"--embedder_hub_module_handle={ict_export}", f"--vocab_file={d}/vocab.txt", *TINY,
              "--params_override=task.model.query_seq_len=48,task.model.candidate_seq_len=64,"
              "task.model.joint_seq_len=112,task.model.num_candidates=4,task.model.max_masks=4,"
              "task.model.embedder_layer_norm_epsilon=0.001,trainer.steps_per_loop=10,"
              "trainer.summary_interval=10,trainer.validation_steps=2,trainer.validation_interval=40,"
              "task.optimizer.learning_rate=0.001,task.optimizer.num_warmup_steps=5,"
              "task.train_data.retrieval_batch_size=8,task.validation_data.retrieval_batch_size=8",
              "--num_eval_shards=1", "--num_train_steps=40", "--batch_size=4",
              "--refresh_every_steps=10", "--refresh_poll_secs=0.5"])
  assert "[realm] done at step 40" in out
  train = _records(f"{d}/realm/metrics.jsonl", "train")
  assert [r["step"] for r in train] == [10, 20, 30, 40]
  versions = [r["index_version"] for r in train]
  # The index version seen by the trainer changes mid-run (initial ICT index = version 1).
  assert versions[0] == 1 and versions[-1] >= 2, versions
  assert max(r["refreshes"] for r in train) >= 2 or "'refreshes': 2" in out or "'refreshes': 3" in out
  assert all(r["refresh_failures"] == 0 for r in train)
  # No step waited on a refresh: the longest time any pipeline read of the holder blocked.
  assert max(r["pipeline/max_index_wait_ms"] for r in train) < 50.0
  for r in train:
    for key in ("loss" if "loss" in r else "training_loss", "mlm_accuracy", "retrieval_utility",
                "staleness_steps", "staleness_minutes", "examples_per_sec", "pipeline/records",
                "pipeline/skipped_total"):
      assert key in r, (key, sorted(r))
    assert r["pipeline/records"] >= r["pipeline/examples"] + r["pipeline/skipped_total"] - 8 * 4
  assert _records(f"{d}/realm/metrics.jsonl", "eval")
  assert os.path.exists(f"{d}/realm/export/best/embedder/saved_model.pb")
  assert os.path.exists(f"{d}/realm/TRAINING_DONE")

  # Exports load with only tensorflow + tensorflow_text and give the documented outputs.
  check = f"""
import sys, tensorflow as tf, tensorflow_text
assert 'realm_tf2' not in sys.modules
e = tf.saved_model.load({d + '/realm/export/40/embedder'!r})
b = tf.saved_model.load({d + '/realm/export/40/bert'!r})
ids = tf.constant([[2, 10, 11, 3, 0]], tf.int32); m = tf.constant([[1, 1, 1, 1, 0]], tf.int32)
z = tf.zeros_like(ids)
emb = e.signatures['projected'](input_ids=ids, input_mask=m, segment_ids=z)['default']
out = b.signatures['mlm'](input_ids=ids, input_mask=m, segment_ids=z,
                          mlm_positions=tf.constant([[1, 2]], tf.int32))
tok = b.signatures['tokens'](input_ids=ids, input_mask=m, segment_ids=z)
info = e.signatures['tokenization_info']()
print(emb.shape, out['mlm_logits'].shape, tok['sequence_output'].shape, bool(info['do_lower_case']))
"""
  result = _run(["-c", check], timeout=300, clean_env=True)
  vocab_size = len(open(f"{d}/vocab.txt").read().split())
  assert f"(1, 16) (1, 2, {vocab_size}) (1, 5, 32) True" in result
