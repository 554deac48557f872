"""Servable QA model: loads and answers in a fresh process importing only tensorflow + tensorflow_text."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2.export import serving_export
from realm_tf2.tasks import orqa_task
from tests.tasks import orqa_world

_LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops)
assert "realm_tf2" not in sys.modules
m = tf.saved_model.load(sys.argv[1])
qs = json.loads(sys.argv[2])
out = m.signatures["serving_default"](question=tf.constant(qs))
print(json.dumps({"answer": [a.decode() for a in out["answer"].numpy()],
                  "score": out["score"].numpy().tolist(),
                  "block_index": out["block_index"].numpy().tolist(),
                  "block_text": [t.decode() for t in out["block_text"].numpy()],
                  "dtypes": {k: v.dtype.name for k, v in out.items()}}))
"""


@pytest.mark.slow  # export tracing + a fresh TF process: ~1 min on 2 cores
def test_serving_export_fresh_process(tmp_path):
  world = orqa_world.build_world(str(tmp_path / "world"))
  tf.keras.utils.set_random_seed(2)
  task = orqa_task.OrqaTask(orqa_world.task_config(world))
  model = task.build_model()
  export_dir = serving_export.export_serving(model, task.load_corpus()["texts"], world["vocab"], True,
                                             str(tmp_path / "serving"), max_question_len=8,
                                             reader_beam_size=4)
  assert tf.io.gfile.exists(os.path.join(export_dir, "assets", "vocab.txt"))
  questions = ["where was mary born?", "", "born " * 400, "Who built the city?"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _LOADER, export_dir, json.dumps(questions)],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["dtypes"] == {"answer": "string", "score": "float32", "block_index": "int64",
                           "block_text": "string"}
  assert len(out["answer"]) == 4
  for ans, idx, text in zip(out["answer"], out["block_index"], out["block_text"]):
    assert 0 <= idx < len(orqa_world.BLOCKS) and text == orqa_world.BLOCKS[idx]
    # The answer is a run of the block's original tokens joined by single spaces.
    assert ans and ans.replace(" ", "") in text.replace(" ", "")

  # Same answers as the in-process model's argmax over (block, span) (no get_final_text here).
  inputs = qa_feats(task, questions[:1])
  ref = model(inputs, training=False)
  from realm_tf2.modeling import orqa_model
  pred = orqa_model.predictions(ref)
  assert out["block_index"][0] == int(pred["pred_block_id"][0])
  assert out["score"][0] == pytest.approx(float(pred["pred_score"][0]), abs=1e-3)


def qa_feats(task, questions):
  from realm_tf2.data import qa_pipeline
  feat = qa_pipeline.QAFeaturizer(task.tokenizer, 8, 2, 4).featurize(
      [qa_pipeline.QAExample(q, ["x"]) for q in questions])
  return {k: tf.constant(v) for k, v in feat.items()}
