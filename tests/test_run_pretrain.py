"""End-to-end: tiny world -> data_prep CLIs -> ICT -> REALM with >= 2 background index refreshes ->
exports loaded in a fresh process with only tensorflow + tensorflow_text.

STATUS (issue 5 "done when"): index version changes mid-run, >= 2 refreshes, no step waited on the
index (max wait < 50 ms) and the ICT warm start's gold-block rank are asserted. "retrieval_utility
above step 0" and "gold rank better than step 0" are NOT yet achieved with the tiny model and are
only printed. Runtime (ICT 800 + REALM 300 steps): 231 s wall at load ~4, of which 141 s CPU in
the subprocesses (a failing run at load ~2 took 125 s). Two runs of this exact test: train
retrieval_utility stayed 0.000 in one and rose from -0.0002 to 0.06-0.08 after step 250 in the
other (input order is not deterministic), so a rise is not yet reliable enough to assert.
ICT warm start (batch 32, 100 warm-up steps): gold-block rank means 0.1-1.3 over 6 runs (400
blocks, in-batch accuracy 0.95-0.98 at the end); 0.1 in the full test. The earlier batch 16 with 10
warm-up steps was unreliable: 9 runs ended with rank means from 0.4 to 59 (in-batch accuracy
0.61-0.97, some runs sitting at chance for the first 150 steps), and one CI run never left chance
(mean 201 = (N-1)/2), failing the warm-start assertion. Batch 32 costs no more wall time here; with
10 warm-up steps it gave rank means 0.1-25 over 5 runs.
REALM after the stronger warm start (2026-11-24, one run each, 4 candidates, lr 1e-3,
`task.retriever_warmup_steps` = retriever frozen for that many steps, then a 100-step ramp):
ICT 400 steps (rank 0.14) + REALM 600 frozen for 300: train retrieval_utility 0.000 until step 350,
then 0.05 -> 0.54 by step 600 (mlm_accuracy 0.06 -> 0.36), gold rank 0.14 -> 0.49. ICT 300 (rank
1.8, top-3 0.77) + REALM 1000 frozen for 400: the encoder had not learnt to copy by step 400
(mlm_accuracy 0.05-0.11 throughout), and once released the retriever collapsed onto the null
document (null_doc_prob 0.01 -> 1.0 within 100 steps), gold rank 1.8 -> 243, worse than chance.
So the gold-rank improvement issue 5 asks for needs an encoder that reliably learns to copy
before the retriever is released; it is not asserted.

Findings (in-process experiments, 2-layer/32-wide BERT, lr 1e-3, batch 8-16):
* Pipeline checked: decoded batches show query/joint/mlm_positions/targets aligned; candidate 0 is the
  null document `[CLS][SEP][SEP]`; trivial-retrieval removal does not touch the gold block (pretrain
  uids are sha1(title, text) of a DIFFERENT corpus); all embedder variables get non-zero gradients
  from the marginal loss. No library bug found.
* ICT with the default dropout 0.1 stayed at chance (in-batch accuracy exactly 1/16, all block
  embeddings equal to 3 decimals) for 100 steps; with dropout 0 it reaches 0.9 in 150 steps (48
  blocks). Tiny runs here use dropout 0.
* ICT on `realm_tf2.world` worlds did not transfer to pre-training queries: words that occur only in
  pretrain.jsonl never get a trained embedding, and the tiny query tower puts every such query on the
  same vector (gold mean rank exactly (N-1)/2), while ICT templates rank the gold block top-1. Even
  "the people of X ..." (an ICT template with X not first) collapsed on 400 blocks. Hence this test's
  own world: the pre-training sentence is "<town> was founded by <Founder>.".
* With unique answers per entity the reader memorises town -> founder from the query (train accuracy
  1.0, held-out 0.0 in a reader-only copy experiment) and retrieval_utility stays ~0: this is why the
  earlier 60-step run showed MLM accuracy rising with utility ~0. With 20 shared founders over 400
  towns, the same reader trained on (query, gold block) pairs copies: held-out accuracy 0.92 after
  300 steps (hidden 32) / 1.0 after 200 (hidden 64), constant lr 1e-3.
* Inside REALM it has not learnt to copy yet: lr 1e-3 on 48 towns collapsed to the null document
  (null_doc_prob 0.02 -> 1.0 in 50 steps); on this 400-town world, 1200 steps left the scores uniform
  (null_doc_prob exactly 0.25 = 1/K), loss ln(20), retrieval_utility 0.000. Next to try: a reader
  warm-started on the copy task (--bert_hub_module_handle), hidden 64, constant lr, and checking why
  the retrieval scores become input-independent.
"""
import json
import os
import random
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

NUM_ENTITIES = 400
NUM_FOUNDERS = 20
NO_DROPOUT = ("task.model.bert.dropout_rate=0.0,task.model.bert.attention_dropout_rate=0.0,"
              "task.model.embedder_dropout_rate=0.0")
TINY = ["--config_file=" + os.path.join(REPO, "configs/sizes/tiny.yaml"), "--xla=false"]
QUERY_LEN, CANDIDATE_LEN, JOINT_LEN = 16, 32, 48
ICT_STEPS, ICT_BATCH, ICT_WARMUP = 800, 32, 100
REALM_STEPS, REFRESH_EVERY, LOOP = 300, 100, 25
REALM_LR = 1e-3


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


def write_world(out_dir, n=NUM_ENTITIES, num_founders=NUM_FOUNDERS, seed=0):
  """Knowledge: one 3-sentence block per town; pre-training: one sentence per town naming its founder.

  Town names are unique invented words; founders are drawn from a small set of invented names, so
  the query (town) does not give away the answer without the town's block, and the masked salient
  span (the founder, a capitalised name the builtin tagger marks) is stated by exactly one block:
  "<town> was founded by <founder>". A small answer set makes copying from the block a skill the
  tiny reader learns across all towns, where 1-to-1 unique answers let it memorise town -> founder
  from the query alone (train accuracy 1.0, held-out 0.0, retrieval useless). The pre-training text
  uses only words of the knowledge corpus (see the module docstring).
  """
  rng = random.Random(seed)
  syllables = ["ka", "lo", "mir", "zan", "tor", "vel", "qui", "bra", "sen", "dol", "fi", "gar",
               "hu", "jen", "nox", "pel", "ras", "tum", "wex", "yor"]
  names = []
  while len(names) < n + num_founders:
    w = "".join(rng.choice(syllables) for _ in range(3))
    if w not in names:
      names.append(w)
  towns, founders = names[:n], [w.capitalize() for w in names[n:]]
  with open(f"{out_dir}/knowledge.jsonl", "w") as k, open(f"{out_dir}/pretrain.jsonl", "w") as p:
    for town in towns:
      t, founder = town.capitalize(), rng.choice(founders)
      k.write(json.dumps({"title": t, "body": f"{t} is a small town. {t} was founded by {founder}. "
                                              f"The people of {t} are proud of it."}) + "\n")
      p.write(json.dumps({"title": f"Gazette on {t}",
                          "text": f"{town} was founded by {founder}."}) + "\n")


def gold_ranks(embedder_dir, pretrain_glob, corpus_glob, vocab_file):
  """Rank (0 = top) of the one block stating each record's masked fact, under one embedder export.

  Queries are built by the REALM pipeline's own graph stage; blocks are embedded with the export.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from realm_tf2 import io_utils, tokenization  # pylint: disable=g-import-not-at-top
  from realm_tf2.data import pretrain_pipeline as pp  # pylint: disable=g-import-not-at-top
  from realm_tf2.retrieval import block_store, embed_corpus  # pylint: disable=g-import-not-at-top
  tok = tokenization.RealmTokenizer(vocab_file)
  store = block_store.BlockStore.from_retrieval_corpus(corpus_glob, keep_text=True)
  bodies = [str(store.text(i)).lower() for i in range(store.num_blocks)]
  embedder = tf.saved_model.load(embedder_dir)
  block_emb = embed_corpus.embed_blocks(store, embedder, tok.cls_id, tok.sep_id,
                                        seq_len=CANDIDATE_LEN)  # [N, D]
  cfg = pp.PretrainInputConfig(query_seq_len=QUERY_LEN, max_masks=4)
  files = sorted(io_utils.list_shards(pretrain_glob))
  ranks = []
  for index, serialized in tf.data.TFRecordDataset(files, compression_type="GZIP").enumerate():
    record = tf.io.parse_single_example(serialized, pp.PRETRAIN_FEATURES)
    record = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v)
              for k, v in record.items()}
    text = record["text"].numpy()
    (start,), (limit,) = record["span_byte_start"].numpy(), record["span_byte_limit"].numpy()
    span = text[start:limit].decode().lower()
    town = record["title"].numpy().decode().split()[-1].lower()
    gold = [i for i, body in enumerate(bodies) if f"{town} was founded by {span}" in body]
    assert len(gold) == 1, (town, span, gold)  # the masked fact is stated by exactly one block
    q = pp._query_features(record, index, tok, cfg)  # pylint: disable=protected-access
    q_emb = embedder.signatures["projected"](
        input_ids=q["query_input_ids"][None], input_mask=q["query_input_mask"][None],
        segment_ids=q["query_segment_ids"][None])["default"].numpy()[0]  # [D]
    scores = block_emb @ q_emb  # [N]
    ranks.append(int(np.sum(scores > scores[gold[0]])))
  return np.asarray(ranks)


@pytest.mark.slow
def test_ict_then_realm_learns_to_retrieve(tmp_path):
  wall0, cpu0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
  d = str(tmp_path)
  os.makedirs(f"{d}/world")
  write_world(f"{d}/world")
  _run(["-m", "data_prep.build_vocab", f"--input={d}/world/knowledge.jsonl,{d}/world/pretrain.jsonl",
        f"--output={d}/vocab.txt", "--vocab_size=1000", "--lower_thresh=1"])
  _run(["-m", "data_prep.build_knowledge_corpus", f"--input={d}/world/knowledge.jsonl",
        f"--vocab_file={d}/vocab.txt", f"--output_dir={d}/K", "--num_shards=1", "--num_workers=1",
        "--max_block_length=64"])
  _run(["-m", "data_prep.build_pretrain_corpus", f"--input={d}/world/pretrain.jsonl",
        f"--output_dir={d}/P", "--num_shards=4", "--num_workers=1"])

  _run(["run_pretrain.py", "--mode=ict", f"--model_dir={d}/ict", f"--examples_path={d}/K/examples.tfr",
        f"--retrieval_corpus_path={d}/K/realm/blocks-*", f"--vocab_file={d}/vocab.txt", *TINY,
        f"--params_override=task.model.ict_query_seq_len={QUERY_LEN},"
        f"task.model.ict_block_seq_len={CANDIDATE_LEN},task.model.candidate_seq_len={CANDIDATE_LEN},"
        "trainer.steps_per_loop=50,trainer.summary_interval=50,task.optimizer.learning_rate=0.001,"
        f"task.optimizer.num_warmup_steps={ICT_WARMUP},{NO_DROPOUT}",
        f"--num_train_steps={ICT_STEPS}", f"--batch_size={ICT_BATCH}", "--run_mode=train"])
  ict_export = f"{d}/ict/export/{ICT_STEPS}/embedder"
  assert os.path.exists(f"{ict_export}/encoded/encoded.ckpt.index")

  # The ICT warm start retrieves the block stating each masked fact far better than chance
  # ((N-1)/2 = 199.5): the precondition for REALM to learn from retrieval. Measured 0.1-1.3.
  ranks0 = gold_ranks(ict_export, f"{d}/P/pretrain-*", f"{d}/K/realm/blocks-*", f"{d}/vocab.txt")
  print(f"ICT gold rank: mean {ranks0.mean():.1f} median {np.median(ranks0):.0f} "
        f"top3 {np.mean(ranks0 < 3):.2f}")
  assert ranks0.mean() < 20, ranks0

  out = _run(["run_pretrain.py", "--mode=realm", f"--model_dir={d}/realm",
              f"--pretrain_corpus_path={d}/P/pretrain-*", f"--retrieval_corpus_path={d}/K/realm/blocks-*",
              f"--embedder_hub_module_handle={ict_export}", f"--vocab_file={d}/vocab.txt", *TINY,
              f"--params_override=task.model.query_seq_len={QUERY_LEN},"
              f"task.model.candidate_seq_len={CANDIDATE_LEN},task.model.joint_seq_len={JOINT_LEN},"
              "task.model.num_candidates=4,task.model.max_masks=4,"
              "task.model.embedder_layer_norm_epsilon=0.001,"
              f"trainer.steps_per_loop={LOOP},trainer.summary_interval={LOOP},"
              f"trainer.validation_steps=4,trainer.validation_interval={REALM_STEPS},"
              f"task.optimizer.learning_rate={REALM_LR},task.optimizer.num_warmup_steps=10,"
              "task.train_data.retrieval_batch_size=8,task.validation_data.retrieval_batch_size=8,"
              f"{NO_DROPOUT}",
              "--num_eval_shards=1", f"--num_train_steps={REALM_STEPS}", "--batch_size=8",
              f"--refresh_every_steps={REFRESH_EVERY}", "--refresh_poll_secs=0.5"])
  assert f"[realm] done at step {REALM_STEPS}" in out
  train = _records(f"{d}/realm/metrics.jsonl", "train")
  assert [r["step"] for r in train] == list(range(LOOP, REALM_STEPS + 1, LOOP))
  versions = [r["index_version"] for r in train]
  # The index version seen by the trainer changes mid-run (initial ICT index = version 1) and at
  # least two refreshes were swapped in while training was still running.
  assert versions[0] == 1, versions
  assert len({v for r, v in zip(train[:-1], versions[:-1])}) >= 3, versions
  assert all(r["refresh_failures"] == 0 for r in train)
  # No step waited on a refresh: the longest time any pipeline read of the holder blocked.
  assert max(r["pipeline/max_index_wait_ms"] for r in train) < 50.0
  for r in train:
    for key in ("loss" if "loss" in r else "training_loss", "mlm_accuracy", "retrieval_utility",
                "staleness_steps", "staleness_minutes", "examples_per_sec", "pipeline/records",
                "pipeline/skipped_total"):
      assert key in r, (key, sorted(r))
  # Learning is NOT yet shown (see the module docstring); the numbers are printed for the record.
  print("retrieval_utility", [round(r["retrieval_utility"], 4) for r in train],
        "mlm_accuracy", [round(r["mlm_accuracy"], 3) for r in train])
  assert _records(f"{d}/realm/metrics.jsonl", "eval")
  assert os.path.exists(f"{d}/realm/export/best/embedder/saved_model.pb")
  assert os.path.exists(f"{d}/realm/TRAINING_DONE")

  # Exports load with only tensorflow + tensorflow_text and give the documented outputs.
  check = f"""
import sys, tensorflow as tf, tensorflow_text
assert 'realm_tf2' not in sys.modules
e = tf.saved_model.load({d + f'/realm/export/{REALM_STEPS}/embedder'!r})
b = tf.saved_model.load({d + f'/realm/export/{REALM_STEPS}/bert'!r})
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
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  print(f"wall {time.time() - wall0:.0f}s, subprocess CPU "
        f"{cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime:.0f}s")
