r"""ORQA fine-tuning step throughput and useful-FLOP efficiency vs the matmul rate of the same run.

  python benchmarks/finetune_step.py --layers=4 --hidden=256 --heads=4 --batch=1 --reader_len=320 \
      --num_read=5 --retriever_beam=5000 --num_blocks=20000 --xla --steps=5

Real task code: `OrqaTask.train_step` on an `OrqaModel` (question tower, exact in-graph retrieval over a
synthetic fixed block index, dense reader packing, reader, joint marginal loss, AdamWeightDecay). The
index is synthetic (random block_emb and block wordpieces) so no export is needed. Questions contain
a block's wordpieces as the answer so the losses are non-zero. Timing and efficiency as in
`pretrain_step.py` (each step bracketed by matmul-rate samples). `benchmarks/finetune.py`
measures the tiny test world end to end incl. serving; this one measures the step at scale.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import realm_tf2  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import pretrain_step  # noqa: E402
from realm_tf2 import configs  # noqa: E402
from realm_tf2 import optimization  # noqa: E402
from realm_tf2.modeling import orqa_model  # noqa: E402
from realm_tf2.tasks import orqa_task  # noqa: E402

CLS_ID, SEP_ID = 2, 3


def build(a):
  common.set_precision(a.precision)
  cfg = orqa_task.OrqaTaskConfig(jit_compile=a.xla, max_question_len=a.question_len,
                                 max_answers=a.max_answers, max_answer_len=a.max_answer_len)
  cfg.model.bert = pretrain_step.bert_config(a)
  cfg.model.projection_size = a.projection
  cfg.model.embedder_dropout_rate = a.dropout
  cfg.model.reader_seq_len, cfg.model.reader_beam_size = a.reader_len, a.num_read
  cfg.model.retriever_beam_size = a.retriever_beam
  cfg.model.max_span_width, cfg.model.span_hidden_size = a.max_span_width, a.span_hidden
  task = orqa_task.OrqaTask(cfg)
  rng = np.random.default_rng(0)
  block_len = rng.integers(a.reader_len // 2, a.reader_len - 3, a.num_blocks).astype(np.int32)
  block_ids = rng.integers(5, a.vocab_size, [a.num_blocks, a.reader_len - 3]).astype(np.int32)
  block_emb = rng.standard_normal([a.num_blocks, a.projection]).astype(np.float32)
  model = orqa_model.OrqaModel(cfg.model, block_emb, block_ids, block_len, CLS_ID, SEP_ID,
                               vocab_size=a.vocab_size)
  opt = optimization.create_optimizer(configs.OptimizerConfig(num_warmup_steps=10), 1000)
  # Questions: random wordpieces; answers: 2-token slices of random blocks (so some are correct).
  qlen = np.full([a.batch], min(12, a.question_len), np.int32)
  qids = rng.integers(5, a.vocab_size, [a.batch, a.question_len]).astype(np.int32)
  qids[np.arange(a.question_len)[None, :] >= qlen[:, None]] = 0
  ans = np.zeros([a.batch, a.max_answers, a.max_answer_len], np.int32)
  alen = np.zeros([a.batch, a.max_answers], np.int32)
  for b in range(a.batch):
    row = rng.integers(0, a.num_blocks)
    ans[b, 0, :2] = block_ids[row, 3:5]
    alen[b, 0] = 2
  batch = {"question_ids": qids, "question_len": qlen, "answer_ids": ans, "answer_len": alen}
  batch = {k: tf.constant(v) for k, v in batch.items()}
  step = tf.function(lambda x: task.train_step(x, model, opt))
  return task, model, batch, step


def run(a):
  common.set_threads(a.intra_op)
  tracker = common.PeakTracker(tuple(int(s) for s in a.peak_sizes.split(",")), repeats=3,
                               dtype=common.peak_dtype(a.precision))
  _, model, batch, step = build(a)
  t = time.perf_counter()
  for _ in range(a.warmup):
    float(step(batch)["loss"])
  compile_s = time.perf_counter() - t
  num_read = min(a.num_read, a.retriever_beam, a.num_blocks)
  flops = common.orqa_step_flops(a.batch, a.question_len + 2, a.reader_len, num_read,
                                 min(a.retriever_beam, a.num_blocks), a.hidden, a.layers,
                                 a.intermediate or 4 * a.hidden, a.projection, a.span_hidden,
                                 a.max_span_width)
  # The exact retrieval matmul over all N blocks (forward only: the index is fixed).
  flops["retrieval_search"] = 2.0 * a.batch * a.num_blocks * a.projection
  flops["total"] += flops["retrieval_search"]
  times, ratios, loss = common.time_steps(lambda: float(step(batch)["loss"]), a.steps, tracker,
                                           flops["total"])
  s = common.summarize(times)
  rec = {
      "benchmark": "finetune_step", "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
      "vocab": a.vocab_size, "batch": a.batch, "question_len": a.question_len,
      "reader_len": a.reader_len, "num_read": num_read, "retriever_beam": a.retriever_beam,
      "num_blocks": a.num_blocks, "xla": a.xla, "precision": a.precision, "dropout": a.dropout,
      "steps": a.steps, "compile_s": compile_s, "loss": loss,
      "seconds_per_step_best": s["best"], "seconds_per_step_median": s["median"],
      "questions_per_s": a.batch / s["median"],
      "useful_gflop_per_step": flops["total"] / 1e9,
      **{f"gflop_{k}": v / 1e9 for k, v in flops.items() if k != "total"},
      "achieved_gflops_best": flops["total"] / s["best"] / 1e9,
      **tracker.describe(),
      "efficiency_paired_median": float(np.median(ratios)),
      "efficiency_paired_best": float(np.max(ratios)),
  }
  return common.emit(rec)


def parser():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  pretrain_step.add_model_flags(ap)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--question_len", type=int, default=64)
  ap.add_argument("--reader_len", type=int, default=320)
  ap.add_argument("--num_read", type=int, default=5)
  ap.add_argument("--retriever_beam", type=int, default=5000)
  ap.add_argument("--num_blocks", type=int, default=20000)
  ap.add_argument("--max_span_width", type=int, default=10)
  ap.add_argument("--span_hidden", type=int, default=256)
  ap.add_argument("--max_answers", type=int, default=10)
  ap.add_argument("--max_answer_len", type=int, default=16)
  return ap


def main(argv=None):
  return run(parser().parse_args(argv))


if __name__ == "__main__":
  main()
