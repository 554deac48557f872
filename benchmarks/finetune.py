"""ORQA fine-tuning and serving throughput on the tiny test world (JSON lines on stdout).

  python benchmarks/finetune.py [--steps=30] [--batch_size=4] [--jit]
Reports questions/s of the training step (forward+backward+AdamW) and of the exported
`serving_default` signature. Tiny config (hidden 32, 2 layers, reader_seq_len 32, 4 blocks).
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import realm_tf2  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from realm_tf2 import optimization  # noqa: E402
from realm_tf2.export import serving_export  # noqa: E402
from realm_tf2.tasks import orqa_task  # noqa: E402
from tests.tasks import orqa_world  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--batch_size", type=int, default=4)
  ap.add_argument("--jit", action="store_true")
  args = ap.parse_args()
  root = tempfile.mkdtemp()
  world = orqa_world.build_world(os.path.join(root, "world"))
  tc = orqa_world.task_config(world)
  tc.train_data.global_batch_size = args.batch_size
  tc.jit_compile = args.jit
  task = orqa_task.OrqaTask(tc)
  model = task.build_model()
  opt = optimization.create_optimizer(tc.optimizer, 1000)
  it = iter(task.build_inputs(tc.train_data))
  step = tf.function(lambda x: task.train_step(x, model, opt))
  step(next(it))  # trace/compile
  t = time.time()
  for _ in range(args.steps):
    logs = step(next(it))
  float(logs["loss"])
  dt = time.time() - t
  config = {"hidden": 32, "layers": 2, "reader_seq_len": 32, "blocks": 4, "reader_beam": 4,
            "batch_size": args.batch_size, "jit": args.jit}
  print(json.dumps({"benchmark": "orqa_train", "questions_per_s": args.steps * args.batch_size / dt,
                    "steps": args.steps, **config}), flush=True)
  export_dir = serving_export.export_serving(model, task.load_corpus()["texts"], world["vocab"], True,
                                             os.path.join(root, "serving"), 8, 4)
  fn = tf.saved_model.load(export_dir).signatures["serving_default"]
  qs = tf.constant([q for q, _ in orqa_world.QA][:args.batch_size])
  fn(question=qs)
  t = time.time()
  for _ in range(args.steps):
    out = fn(question=qs)
  out["answer"].numpy()
  dt = time.time() - t
  print(json.dumps({"benchmark": "orqa_serving", "questions_per_s": args.steps * args.batch_size / dt,
                    "steps": args.steps, **config}), flush=True)


if __name__ == "__main__":
  main()
