"""Orbit actions of pre-training that write exports: `export/<step>/`, `export/best/`.

Layouts of contracts §3.
"""
import json
import os
from typing import Callable, Optional

import realm_tf2  # noqa: F401
from absl import logging
import numpy as np
import tensorflow as tf

from realm_tf2 import io_utils
from realm_tf2.export import bert_export
from realm_tf2.export import common as export_common
from realm_tf2.export import embedder_export


class TowerExporter:
  """Writes the pre-trained towers as `<dir>/embedder` (+ `<dir>/bert`, + `<dir>/doc_embedder`),
  each a SavedModel with the contract signatures.

  With separate towers (`share_embedders=False`), `embedder` is the QUERY tower (what ORQA's
  retriever starts from, and whose `encoded/encoded.ckpt` holds the corpus as embedded by the
  document tower) and `doc_embedder` the DOCUMENT tower (same `projected` signature; what the
  refreshers embed the corpus with).

  Args:
    embedder_fn: () -> the query embedder to export (the live training model's).
    bert_fn: () -> the knowledge-augmented encoder, or None (ICT has none).
    vocab_file, do_lower_case: the `tokenization_info` of the exports.
    doc_embedder_fn: () -> the separate document tower, or None when it is the query embedder.
  """

  def __init__(self, embedder_fn: Callable, bert_fn: Optional[Callable], vocab_file: str,
               do_lower_case: bool, doc_embedder_fn: Optional[Callable] = None):
    self.embedder_fn, self.bert_fn, self.doc_embedder_fn = embedder_fn, bert_fn, doc_embedder_fn
    self.vocab_file, self.do_lower_case = vocab_file, do_lower_case

  def write(self, directory: str, encoded_checkpoint: Optional[str] = None):
    embedder_export.export_embedder(self.embedder_fn(), self.vocab_file, self.do_lower_case,
                                    os.path.join(directory, "embedder"), encoded_checkpoint)
    if self.doc_embedder_fn is not None:
      embedder_export.export_embedder(self.doc_embedder_fn(), self.vocab_file, self.do_lower_case,
                                      os.path.join(directory, export_common.DOC_EMBEDDER_SUBDIR))
    if self.bert_fn is not None:
      bert_export.export_bert(self.bert_fn(), self.vocab_file, self.do_lower_case,
                              os.path.join(directory, "bert"))


class ExportAction:
  """Train action: writes `export/<step>/{embedder[,bert]}` every `every` steps and at the last step.

  A failed periodic export is logged and counted (`failures`); training continues and the next loop
  retries. `export(step)` itself raises.

  Args:
    model_dir: The run directory.
    global_step: The trainer's step variable.
    every: Export interval in steps.
    towers: A `TowerExporter`.
    total_steps: `trainer.train_steps` (the last step always exports).
  """

  def __init__(self, model_dir: str, global_step: tf.Variable, every: int, towers: TowerExporter,
               total_steps: int):
    self.model_dir, self.global_step, self.every = model_dir, global_step, max(1, int(every))
    self.towers, self.total = towers, total_steps
    self.last = -1
    self.exported = []
    self.failures = 0

  def export(self, step: int, encoded_checkpoint: Optional[str] = None) -> str:
    """Writes `export/<step>/` as a whole (both towers staged together, then renamed): a failure
    leaves no `<step>/` at all."""
    out = export_common.step_export_dir(self.model_dir, step)
    with io_utils.atomic_dir(out) as staging:
      self.towers.write(staging, encoded_checkpoint)
    self.last = step
    self.exported.append(step)
    return out

  def __call__(self, output):
    del output
    step = int(self.global_step.numpy())
    if step != self.last and (step // self.every > self.last // self.every or step >= self.total):
      try:
        self.export(step)
      except (OSError, tf.errors.OpError) as e:
        # Not worth the run: the refresher keeps serving the last good index; the next loop retries.
        self.failures += 1
        logging.error("export of step %d failed (%d failures so far), training continues: %s", step,
                      self.failures, e)


class BestExportAction:
  """Eval action: exports the current towers to `export/best/` when eval `metric` improves, with
  `export/best/best_metric.json` = {"step", metric}.

  Args:
    export_action: The run's `ExportAction` (its towers, directory, step and failure count).
    metric: Eval metric to maximise (REALM: retrieval_utility).
  """

  def __init__(self, export_action: ExportAction, metric: str):
    self.export_action, self.metric, self.best = export_action, metric, -float("inf")

  def __call__(self, output):
    value = output.get(self.metric) if output else None
    if value is None:
      return
    value = float(np.asarray(value))
    if value <= self.best:
      return
    previous, self.best = self.best, value
    step = int(self.export_action.global_step.numpy())
    best = export_common.best_export_dir(self.export_action.model_dir)
    try:
      with io_utils.atomic_dir(best) as staging:
        self.export_action.towers.write(staging)
        io_utils.atomic_write_text(os.path.join(staging, "best_metric.json"),
                                   json.dumps({"step": step, self.metric: value}))
    except (OSError, tf.errors.OpError) as e:
      self.best = previous  # not exported: a later evaluation with the same value retries
      self.export_action.failures += 1
      logging.error("export/best at step %d failed, training continues: %s", step, e)
