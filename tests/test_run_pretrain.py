"""End-to-end: tiny world -> data_prep CLIs -> ICT -> REALM with background index refreshes ->
exports loaded in a fresh process with only tensorflow + tensorflow_text.

Issue 5's "done when", all asserted: the index version changes mid-run (>= 2 refreshes swapped in
while training runs), no step waited on the index (max wait < 50 ms), train retrieval_utility rises
above its step-0 value, and the gold block's retrieval rank after REALM is better than after ICT
(step 0 of REALM): a higher mean reciprocal rank and at most half of ICT's top-1 misses, measured over
every pre-training record with the exports themselves.

The world (`write_world`): two blocks per town, one stating its founder and one naming a river, so
ICT (which matches the town's name) cannot tell them apart and often ranks the founder block second;
what decides between them is what REALM learns: which block lets the encoder fill
"<town> was founded by [MASK]". 20 founders shared by 400 towns make copying from the block the
skill to learn (with one answer per town the encoder memorises town -> founder from the query and
retrieval stays useless), and the pre-training text uses only words of the knowledge corpus (ICT
trains no embedding for words it never sees).

The settings (2 layers at hidden 64, k = 8, encoder lr 5e-4, dropout off, the retriever frozen for
150 steps and then ramped over 100 to 0.1x the encoder's rate, refreshes every 50 steps) let the
encoder start copying from the retrieved block before it memorises town -> founder, and keep a
retriever at the full rate from flooding the index with other towns' founder blocks. Learning is
still a race between copying and memorising, so the REALM stage runs a second time (another input
seed) only if the first did not learn; the mechanics checks hold for every attempt. The runs behind
these settings and bounds: docs/history.md, "REALM end-to-end test".
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
# Tiny's 2 layers at hidden 64 (tiny: 32): the encoder starts copying from the retrieved block
# sooner and more reliably at 64, for the same wall time (per-step overhead dominates at this size).
HIDDEN = 64
WIDTH = f"task.model.bert.hidden_size={HIDDEN},task.model.bert.intermediate_size={2 * HIDDEN}"
QUERY_LEN, CANDIDATE_LEN, JOINT_LEN = 16, 32, 48
ICT_STEPS, ICT_BATCH, ICT_WARMUP = 800, 32, 100
REALM_STEPS, REFRESH_EVERY, LOOP = 800, 50, 25
REALM_LR, NUM_CANDIDATES, RETRIEVER_FROZEN_STEPS, RETRIEVER_LR_MULTIPLIER = 5e-4, 8, 150, 0.1


def _run(args, timeout=900, clean_env=False):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  if clean_env:  # a plain TF user: no legacy-Keras switch inherited from the test process
    env.pop("TF_USE_LEGACY_KERAS", None)
  proc = subprocess.run([PY] + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"{args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def _records(path, split):
  with open(path) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def write_world(out_dir, n=NUM_ENTITIES, num_founders=NUM_FOUNDERS, seed=0):
  """Knowledge: two 3-sentence blocks per town; pre-training: one sentence per town naming its founder.

  Town names are unique invented words; founders (and rivers) are drawn from small sets of invented
  names, so the query (town) does not give away the answer without the town's block, and the masked
  salient span (the founder, a capitalised name the builtin tagger marks) is stated by exactly one
  block: "<town> was founded by <founder>". The town's second block ("... lies near the river
  <River>") matches the town's name as well as the first but cannot fill the mask. A small answer
  set makes copying from the block a skill the tiny reader learns across all towns, where 1-to-1
  unique answers let it memorise town -> founder from the query alone (retrieval useless). The
  pre-training text uses only words of the knowledge corpus (see the module docstring).
  """
  rng = random.Random(seed)
  syllables = ["ka", "lo", "mir", "zan", "tor", "vel", "qui", "bra", "sen", "dol", "fi", "gar",
               "hu", "jen", "nox", "pel", "ras", "tum", "wex", "yor"]
  names = []
  while len(names) < n + 2 * num_founders:
    w = "".join(rng.choice(syllables) for _ in range(3))
    if w not in names:
      names.append(w)
  towns = names[:n]
  founders = [w.capitalize() for w in names[n:n + num_founders]]
  rivers = [w.capitalize() for w in names[n + num_founders:]]
  with open(f"{out_dir}/knowledge.jsonl", "w") as k, open(f"{out_dir}/pretrain.jsonl", "w") as p:
    for town in towns:
      t, founder, river = town.capitalize(), rng.choice(founders), rng.choice(rivers)
      blocks = [f"{t} is a small town. {t} was founded by {founder}. The people of {t} are proud of it.",
                f"{t} is a small town. {t} lies near the river {river}. The people of {t} are proud of it."]
      rng.shuffle(blocks)  # the founder block is not always the first of the pair
      for body in blocks:
        k.write(json.dumps({"title": t, "body": body}) + "\n")
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
    # Ties count against the gold block: an embedder whose scores went flat ranks it last, not first.
    ranks.append(int(np.sum(scores >= scores[gold[0]])) - 1)
  return np.asarray(ranks)


def _realm_attempt(d, realm_dir, ict_export, ranks0, seed):
  """One REALM run from the ICT export: asserts its mechanics, returns (learned, report).

  learned: REALM learnt from retrieval. The encoder's masked-LM likelihood now depends on the
  retrieved blocks (utility = log of the retrieval-weighted marginal minus log p(y|x, null block), per
  masked token, ~0 at the start), and the retriever, trained only through that likelihood, ranks the
  founder block higher than ICT did: at most half of ICT's top-1 misses remain (a relative bound, as
  ICT's top-1 varies widely between runs and leaves little room when it is high) and the mean
  reciprocal rank is higher. Not the mean rank: a few gold blocks falling far down can raise it
  while top-1 improves (docs/history.md).
  """
  _run(["run_pretrain.py", "--mode=realm", f"--model_dir={realm_dir}",
        f"--pretrain_corpus_path={d}/P/pretrain-*", f"--retrieval_corpus_path={d}/K/realm/blocks-*",
        f"--embedder_hub_module_handle={ict_export}", f"--vocab_file={d}/vocab.txt", *TINY,
        f"--params_override=task.model.query_seq_len={QUERY_LEN},"
        f"task.model.candidate_seq_len={CANDIDATE_LEN},task.model.joint_seq_len={JOINT_LEN},"
        f"task.model.num_candidates={NUM_CANDIDATES},task.model.max_masks=4,"
        "task.model.embedder_layer_norm_epsilon=0.001,"
        f"task.retriever_warmup_steps={RETRIEVER_FROZEN_STEPS},task.retriever_ramp_steps=100,"
        f"task.retriever_learning_rate_multiplier={RETRIEVER_LR_MULTIPLIER},"
        f"trainer.steps_per_loop={LOOP},trainer.summary_interval={LOOP},"
        f"trainer.validation_steps=4,trainer.validation_interval={REALM_STEPS},"
        f"task.optimizer.learning_rate={REALM_LR},task.optimizer.num_warmup_steps=10,"
        "task.train_data.retrieval_batch_size=8,task.validation_data.retrieval_batch_size=8,"
        f"{NO_DROPOUT},{WIDTH}",
        "--num_eval_shards=1", f"--num_train_steps={REALM_STEPS}", "--batch_size=8",
        f"--seed={seed}",
        f"--refresh_every_steps={REFRESH_EVERY}", "--refresh_poll_secs=0.5"])
  with open(f"{realm_dir}/TRAINING_DONE") as f:
    assert int(f.read()) == REALM_STEPS
  train = _records(f"{realm_dir}/metrics.jsonl", "train")
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
  utility = [r["retrieval_utility"] for r in train]
  ranks1 = gold_ranks(f"{realm_dir}/export/{REALM_STEPS}/embedder", f"{d}/P/pretrain-*",
                      f"{d}/K/realm/blocks-*", f"{d}/vocab.txt")
  miss0, miss1 = np.mean(ranks0 > 0), np.mean(ranks1 > 0)
  checks = {"utility_rose": bool(np.mean(utility[-4:]) > utility[0] + 0.05),
            "half_the_top1_misses_removed": bool(miss1 <= 0.5 * miss0),
            "mrr_higher": bool(np.mean(1 / (1 + ranks1)) > np.mean(1 / (1 + ranks0)))}
  report = (f"{checks}; utility {[round(u, 3) for u in utility]}; mlm_accuracy "
            f"{[round(r['mlm_accuracy'], 3) for r in train]}; REALM gold rank: mean {ranks1.mean():.2f} "
            f"median {np.median(ranks1):.0f} top1 {np.mean(ranks1 == 0):.2f} "
            f"top3 {np.mean(ranks1 < 3):.2f} MRR {np.mean(1 / (1 + ranks1)):.3f} "
            f"(ICT: mean {ranks0.mean():.2f}, top1 {1 - miss0:.2f}, MRR {np.mean(1 / (1 + ranks0)):.3f})")
  return all(checks.values()), report


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
        f"task.optimizer.num_warmup_steps={ICT_WARMUP},{NO_DROPOUT},{WIDTH}",
        f"--num_train_steps={ICT_STEPS}", f"--batch_size={ICT_BATCH}", "--run_mode=train"])
  ict_export = f"{d}/ict/export/{ICT_STEPS}/embedder"
  assert os.path.exists(f"{ict_export}/encoded/encoded.ckpt.index")

  # The ICT warm start retrieves the block stating each masked fact far better than chance
  # ((N-1)/2 = 399.5): the precondition for REALM to learn from retrieval. It cannot tell the
  # town's two blocks apart, so the founder block is often second (see the module docstring).
  ranks0 = gold_ranks(ict_export, f"{d}/P/pretrain-*", f"{d}/K/realm/blocks-*", f"{d}/vocab.txt")
  print(f"ICT gold rank: mean {ranks0.mean():.2f} median {np.median(ranks0):.0f} "
        f"top1 {np.mean(ranks0 == 0):.2f} top3 {np.mean(ranks0 < 3):.2f}")
  assert ranks0.mean() < 20, ranks0

  # REALM learning from retrieval is a race between the encoder learning to copy from the block
  # and learning town -> founder from the query alone (see the module docstring). A second attempt
  # with another seed runs only when the first did not learn; every attempt must pass the mechanics
  # checks, and the learning checks must hold in the last one.
  for attempt, seed in enumerate((0, 1)):
    realm_dir = f"{d}/realm{attempt}"
    learned, report = _realm_attempt(d, realm_dir, ict_export, ranks0, seed)
    print(f"REALM attempt {attempt} (seed {seed}): {report}")
    if learned:
      break
  assert learned, report
  assert _records(f"{realm_dir}/metrics.jsonl", "eval")
  assert os.path.exists(f"{realm_dir}/export/best/embedder/saved_model.pb")
  assert os.path.exists(f"{realm_dir}/TRAINING_DONE")

  # Exports load with only tensorflow + tensorflow_text and give the documented outputs.
  check = f"""
import json, sys, tensorflow as tf, tensorflow_text
assert 'realm_tf2' not in sys.modules
e = tf.saved_model.load({realm_dir + f'/export/{REALM_STEPS}/embedder'!r})
b = tf.saved_model.load({realm_dir + f'/export/{REALM_STEPS}/bert'!r})
ids = tf.constant([[2, 10, 11, 3, 0]], tf.int32); m = tf.constant([[1, 1, 1, 1, 0]], tf.int32)
z = tf.zeros_like(ids)
emb = e.signatures['projected'](input_ids=ids, input_mask=m, segment_ids=z)['default']
out = b.signatures['mlm'](input_ids=ids, input_mask=m, segment_ids=z,
                          mlm_positions=tf.constant([[1, 2]], tf.int32))
tok = b.signatures['tokens'](input_ids=ids, input_mask=m, segment_ids=z)
info = e.signatures['tokenization_info']()
with open({d + '/export_check.json'!r}, 'w') as f:
  json.dump({{'projected': emb.shape.as_list(), 'mlm_logits': out['mlm_logits'].shape.as_list(),
             'sequence_output': tok['sequence_output'].shape.as_list(),
             'do_lower_case': bool(info['do_lower_case'])}}, f)
"""
  _run(["-c", check], timeout=300, clean_env=True)
  vocab_size = len(open(f"{d}/vocab.txt").read().split())
  with open(f"{d}/export_check.json") as f:
    assert json.load(f) == {"projected": [1, 16], "mlm_logits": [1, 2, vocab_size],
                            "sequence_output": [1, 5, HIDDEN], "do_lower_case": True}
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  print(f"wall {time.time() - wall0:.0f}s, subprocess CPU "
        f"{cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime:.0f}s")
