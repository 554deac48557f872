"""Asynchronous document-index refresh (original §1.7): `IndexSnapshot`, `IndexHolder`, refresher.

The original ran a separate refresher job that re-embedded the corpus from the newest export and wrote
`export/encoded/<ts>`; generators picked it up later. Here a background thread does the same inside the
training process (mode `internal`) or only loads the snapshots written by the standalone refresher
(`python -m realm_tf2.retrieval.refresh`, mode `external`). Readers call `holder.get()` and receive one
immutable `IndexSnapshot` (query embedder + index + the step it came from); a refresh never blocks them:
the new snapshot is built entirely outside the lock, and the lock is held only to swap one pointer.

Snapshot weights are never the training variables: `internal` restores the retriever weights of the new
checkpoint into a *fresh* embedder (or loads the exported SavedModel), so training can continue to
update its own variables while the snapshot embeds the corpus.

Faults (a checkpoint that fails to load, an exception while embedding, a partial/vanished snapshot) are
logged and counted in `failures`; the last good snapshot stays, and the next newer checkpoint is tried.
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import dataclasses
import os
import re
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from realm_tf2.export import common as export_common
from realm_tf2.retrieval import embed_corpus
from realm_tf2.retrieval import index as index_lib

MODES = ("internal", "external")
SOURCES = ("checkpoint", "export")
_STEP_RE = re.compile(r"-(\d+)$")
_DIGITS = re.compile(r"^\d+$")


@dataclasses.dataclass(frozen=True)
class IndexSnapshot:
  """One consistent retrieval state. Immutable; replaced as a whole by `IndexHolder.swap`.

  Attributes:
    version: 1, 2, ... increasing with every swap into a holder.
    step: Training step of the checkpoint/export the embeddings come from.
    wall_time: Unix time that checkpoint/export was written (staleness is measured from it).
    query_embedder: The embedder whose weights produced the index (a Keras `RealmEmbedder` or an
      embedder SavedModel; `embed_corpus.make_embed_fn` accepts both) — query [B,T] -> [B,128].
    index: `MipsIndex` over block_emb [N,128], rows in corpus order.
    source: Path of the checkpoint / export directory.
    build_seconds: Time spent loading + embedding + indexing.
  """
  version: int
  step: int
  wall_time: float
  query_embedder: Any
  index: Any
  source: str = ""
  build_seconds: float = 0.0


class IndexHolder:
  """Holds the current `IndexSnapshot`; `get()` and `swap()` are atomic and O(1).

  Args:
    snapshot: Optional initial snapshot (e.g. built from the initial ICT `encoded.ckpt`).
  """

  def __init__(self, snapshot: Optional[IndexSnapshot] = None):
    self._cond = threading.Condition(threading.Lock())
    self._snapshot = snapshot

  def get(self) -> Optional[IndexSnapshot]:
    """The current snapshot (None before the first one). Never waits for a refresh."""
    with self._cond:  # held only by other get()s and the pointer assignment in swap()
      return self._snapshot

  def swap(self, snapshot: IndexSnapshot) -> Optional[IndexSnapshot]:
    """Installs `snapshot` (its version must exceed the current one); returns the previous one."""
    with self._cond:
      previous = self._snapshot
      if previous is not None and snapshot.version <= previous.version:
        raise ValueError(f"snapshot version {snapshot.version} is not newer than {previous.version}")
      self._snapshot = snapshot
      self._cond.notify_all()
    return previous

  @property
  def version(self) -> int:
    s = self.get()
    return 0 if s is None else s.version

  def wait_for_version(self, version: int, timeout: Optional[float] = None) -> bool:
    """Blocks until a snapshot with version >= `version` is installed (for tests / start-up)."""
    with self._cond:
      return self._cond.wait_for(
          lambda: self._snapshot is not None and self._snapshot.version >= version, timeout)


def checkpoint_step(path: str) -> int:
  """Step of a checkpoint prefix named like CheckpointManager's `ckpt-<step>`."""
  m = _STEP_RE.search(path)
  if not m:
    raise ValueError(f"cannot parse a step from checkpoint path {path!r} (expected '<name>-<step>')")
  return int(m.group(1))


def list_step_dirs(parent: str, required: str = "") -> list:
  """[(step, path)] of all-digit subdirectories of `parent` (containing `required`), ascending."""
  if not tf.io.gfile.isdir(parent):
    return []
  out = []
  for name in tf.io.gfile.listdir(parent):
    name = name.rstrip("/")
    if _DIGITS.match(name):
      path = os.path.join(parent, name)
      if not required or tf.io.gfile.exists(os.path.join(path, required)):
        out.append((int(name), path))
  return sorted(out)


def _mtime(path: str) -> float:
  for p in (path + ".index", path):
    try:
      return tf.io.gfile.stat(p).mtime_nsec / 1e9
    except tf.errors.OpError:
      continue
  return time.time()


def restore_embedder_from_checkpoint(embedder, checkpoint_path, object_path=("model", "embedder")):
  """Restores ONLY the embedder's weights from a training checkpoint into `embedder` (a fresh copy).

  Args:
    embedder: A built embedder (all variables created) that is NOT the training model's.
    checkpoint_path: Prefix, e.g. `model_dir/ckpt-1000`.
    object_path: Attribute path of the embedder in the training checkpoint's object graph, e.g.
      ("model", "embedder") for `tf.train.Checkpoint(model=model)` with `model.embedder`.
  Raises:
    ValueError if the checkpoint cannot be read or holds no matching embedder.
  """
  root = embedder
  for name in reversed(object_path):
    root = tf.train.Checkpoint(**{name: root})
  try:
    status = root.read(checkpoint_path)
    status.assert_existing_objects_matched()
    status.expect_partial()  # the optimizer slots etc. of the training checkpoint are not wanted
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise ValueError(f"cannot restore the embedder ({'/'.join(object_path)}) from {checkpoint_path}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
  return embedder


class IndexRefresher(threading.Thread):
  """Background thread that keeps an `IndexHolder` up to date with the newest retriever weights.

  Args:
    holder: The `IndexHolder` to swap new snapshots into.
    model_dir: The training run directory.
    block_store: `BlockStore` of the retrieval corpus (internal mode; optional in external mode, where
      it only checks the row count).
    mode: "internal" (embed the corpus here) or "external" (load `model_dir/export/encoded/<step>/`
      written by `realm_tf2.retrieval.refresh`).
    source: internal mode only: "checkpoint" (training checkpoints in model_dir, CheckpointManager
      naming `ckpt-<step>`; needs `embedder_factory`) or "export" (`model_dir/export/<step>/embedder`).
    embedder_factory: () -> a NEW built embedder with the retriever's architecture (checkpoint source).
    checkpoint_embedder_path: Object path of the (query) embedder in the training checkpoint.
    checkpoint_doc_embedder_path: Object path of a SEPARATE document tower in the training
      checkpoint (`share_embedders=False`: ("model", "doc_embedder")), or None when the query
      embedder also embeds the documents. The corpus is embedded with this tower; queries are
      embedded with the query tower (the snapshot's `query_embedder`).
    cls_id, sep_id: Special ids for packing documents (internal mode).
    index_factory: (block_emb float32 [N,D]) -> MipsIndex. Default: exact `BruteForceIndex`. An
      `index.IndexFactory` also loads the index the standalone refresher saved beside
      `encoded.ckpt` (external mode) instead of rebuilding it.
    embed_fn: (embedder, block_store) -> float32 [N,D]. Default: `embed_corpus.embed_blocks`.
    embed_kwargs: Extra kwargs of `embed_corpus.embed_blocks` (batch_size, buckets, strategy, ...).
    current_step_fn: () -> the trainer's current step, for staleness.
    poll_interval_secs: Sleep between polls (no busy wait; `stop()` interrupts it).
    snapshot_dir: Internal mode: if set, also write `snapshot_dir/<step>/encoded/encoded.ckpt`.
    keep_snapshots: Keep the newest N step directories in `snapshot_dir`.
    min_step: Ignore checkpoints/exports older than this step.
  """

  def __init__(self, holder: IndexHolder, model_dir: str, block_store=None, *,
               mode: str = "internal", source: str = "checkpoint",
               embedder_factory: Optional[Callable[[], Any]] = None,
               checkpoint_embedder_path=("model", "embedder"),
               checkpoint_doc_embedder_path=None,
               cls_id: Optional[int] = None, sep_id: Optional[int] = None,
               index_factory: Optional[Callable[[np.ndarray], Any]] = None,
               embed_fn: Optional[Callable[[Any, Any], np.ndarray]] = None,
               embed_kwargs: Optional[dict] = None,
               current_step_fn: Optional[Callable[[], int]] = None,
               poll_interval_secs: float = 30.0,
               snapshot_dir: Optional[str] = None, keep_snapshots: int = 3,
               min_step: int = -1, name: str = "index_refresher"):
    super().__init__(name=name, daemon=True)
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if source not in SOURCES:
      raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if mode == "internal" and block_store is None:
      raise ValueError("internal mode needs the block_store to embed")
    if mode == "internal" and source == "checkpoint" and embedder_factory is None:
      raise ValueError("source='checkpoint' needs embedder_factory (a fresh embedder per snapshot)")
    if mode == "internal" and embed_fn is None and (cls_id is None or sep_id is None):
      raise ValueError("internal mode needs cls_id and sep_id to pack documents")
    self.holder = holder
    self.model_dir = model_dir
    self.block_store = block_store
    self.mode = mode
    self.source = source
    self.embedder_factory = embedder_factory
    self.checkpoint_embedder_path = tuple(checkpoint_embedder_path)
    self.checkpoint_doc_embedder_path = (tuple(checkpoint_doc_embedder_path)
                                         if checkpoint_doc_embedder_path else None)
    self.cls_id, self.sep_id = cls_id, sep_id
    self.index_factory = index_factory or (lambda emb: index_lib.BruteForceIndex().build(emb))
    self.embed_fn = embed_fn or self._default_embed
    self.embed_kwargs = dict(embed_kwargs or {})
    self.current_step_fn = current_step_fn
    self.poll_interval_secs = float(poll_interval_secs)
    self.snapshot_dir = snapshot_dir
    self.keep_snapshots = int(keep_snapshots)
    self._stop_event = threading.Event()
    self._last_tried_step = int(min_step)
    self._stats_lock = threading.Lock()
    self.attempts = 0
    self.failures = 0
    self.refreshes = 0
    self.last_error: Optional[str] = None
    self.history = []  # [(version, step, build_seconds)]

  # ------------------------------------------------------------------------- thread control

  def run(self):
    logging.info("index refresher started (%s/%s) on %s", self.mode, self.source, self.model_dir)
    while not self._stop_event.is_set():
      try:
        self.poll_once()
      except Exception as e:  # pylint: disable=broad-except  (the thread must survive any fault)
        self._record_failure(-1, f"poll error: {e!r}")
      self._stop_event.wait(self.poll_interval_secs)
    logging.info("index refresher stopped: %s", self.stats())

  def stop(self, timeout: Optional[float] = None):
    """Asks the thread to stop after the current refresh and joins it."""
    self._stop_event.set()
    if self.is_alive():
      self.join(timeout)

  # ------------------------------------------------------------------------- discovery

  def _newest_candidate(self):
    """(step, path) of the newest source not yet tried, or None."""
    if self.mode == "external":
      found = list_step_dirs(os.path.join(self.model_dir, "export", "encoded"))
    elif self.source == "export":
      found = list_step_dirs(os.path.join(self.model_dir, "export"), required="embedder")
      found = [(s, os.path.join(p, "embedder")) for s, p in found]
    else:
      state = tf.train.get_checkpoint_state(self.model_dir)
      paths = list(state.all_model_checkpoint_paths) if state else []
      if state and state.model_checkpoint_path and state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
      found = []
      for p in paths:
        if not os.path.isabs(p) and "://" not in p:
          p = os.path.join(self.model_dir, p)
        try:
          found.append((checkpoint_step(p), p))
        except ValueError as e:
          logging.warning("%s", e)
      found.sort()
    found = [(s, p) for s, p in found if s > self._last_tried_step]
    return found[-1] if found else None

  # ------------------------------------------------------------------------- one refresh

  def poll_once(self) -> bool:
    """Checks for a newer checkpoint/export and, if there is one, refreshes. True if swapped."""
    candidate = self._newest_candidate()
    if candidate is None:
      return False
    step, path = candidate
    self._last_tried_step = step  # a failed step is not retried; the next newer one is
    with self._stats_lock:
      self.attempts += 1
    start = time.time()
    try:
      embedder, index, wall_time = self._build(step, path)
    except Exception as e:  # pylint: disable=broad-except  (fault isolation; counted + logged)
      self._record_failure(step, f"{path}: {type(e).__name__}: {e}")  # name the bad file
      return False
    version = self.holder.version + 1
    snapshot = IndexSnapshot(version=version, step=step, wall_time=wall_time,
                             query_embedder=embedder, index=index, source=path,
                             build_seconds=time.time() - start)
    self.holder.swap(snapshot)
    with self._stats_lock:
      self.refreshes += 1
      self.history.append((version, step, snapshot.build_seconds))
    logging.info("index refreshed: version %d from step %d (%s) in %.1fs", version, step, path,
                 snapshot.build_seconds)
    return True

  def _record_failure(self, step, message):
    with self._stats_lock:
      self.failures += 1
      self.last_error = message
    logging.error("index refresh for step %d failed (%d failures so far); keeping version %d: %s",
                  step, self.failures, self.holder.version, message)

  def _default_embed(self, embedder, store):
    return embed_corpus.embed_blocks(store, embedder, self.cls_id, self.sep_id, **self.embed_kwargs)

  def _build(self, step, path):
    if self.mode == "external":
      return self._load_external(path)
    if self.source == "checkpoint":
      embedder = restore_embedder_from_checkpoint(self.embedder_factory(), path,
                                                  self.checkpoint_embedder_path)
      doc_embedder = embedder
      if self.checkpoint_doc_embedder_path:
        doc_embedder = restore_embedder_from_checkpoint(self.embedder_factory(), path,
                                                        self.checkpoint_doc_embedder_path)
    else:
      embedder = _load_embedder_export(path)
      doc_path = os.path.join(os.path.dirname(path.rstrip("/")), export_common.DOC_EMBEDDER_SUBDIR)
      doc_embedder = (_load_embedder_export(doc_path)
                      if tf.io.gfile.exists(os.path.join(doc_path, "saved_model.pb")) else embedder)
    wall_time = _mtime(path)
    emb = np.asarray(self.embed_fn(doc_embedder, self.block_store), np.float32)  # [N, D]
    if emb.ndim != 2 or emb.shape[0] != self.block_store.num_blocks:
      raise ValueError(f"embedding returned {emb.shape}, expected [{self.block_store.num_blocks}, D]")
    index = self.index_factory(emb)
    if self.snapshot_dir:
      embed_corpus.write_encoded(os.path.join(self.snapshot_dir, str(step)), emb,
                                 expected_rows=self.block_store.num_blocks)
      prune_step_dirs(self.snapshot_dir, self.keep_snapshots)
    return embedder, index, wall_time

  def _load_external(self, snapshot_path):
    """Loads `export/encoded/<step>/embedder` (+ `encoded/encoded.ckpt`) written by refresh.py."""
    embedder_dir = os.path.join(snapshot_path, "embedder")
    ckpt = embed_corpus.encoded_path(embedder_dir)
    missing = [p for p in (os.path.join(embedder_dir, "saved_model.pb"), ckpt + ".index")
               if not tf.io.gfile.exists(p)]
    if missing:
      raise ValueError(f"partial snapshot {snapshot_path}: missing {missing}")
    wall_time = _mtime(ckpt)
    emb = index_lib.read_block_emb_checkpoint(ckpt)  # [N, D]
    if self.block_store is not None and emb.shape[0] != self.block_store.num_blocks:
      raise ValueError(f"{ckpt}: {emb.shape[0]} rows but the corpus has "
                       f"{self.block_store.num_blocks} blocks")
    load_or_build = getattr(self.index_factory, "load_or_build", None)
    index = (load_or_build(embed_corpus.index_path(embedder_dir), emb)
             if load_or_build else self.index_factory(emb))
    embedder = tf.saved_model.load(embedder_dir)
    return embedder, index, wall_time

  # ------------------------------------------------------------------------- reporting

  def staleness(self) -> dict:
    """{"steps": trainer step - snapshot step, "minutes": since the snapshot's source was written}."""
    snap = self.holder.get()
    if snap is None:
      return {"steps": None, "minutes": None}
    current = self.current_step_fn() if self.current_step_fn else None
    return {"steps": None if current is None else int(current) - snap.step,
            "minutes": (time.time() - snap.wall_time) / 60.0}

  def stats(self) -> dict:
    with self._stats_lock:
      out = {"version": self.holder.version, "attempts": self.attempts, "failures": self.failures,
             "refreshes": self.refreshes, "last_error": self.last_error}
    snap = self.holder.get()
    out["step"] = None if snap is None else snap.step
    out["staleness"] = self.staleness()
    return out


def _load_embedder_export(path: str):
  embedder = tf.saved_model.load(path)
  if "projected" not in embedder.signatures:
    raise ValueError(f"{path}: embedder export has no 'projected' signature")
  return embedder


def prune_step_dirs(parent: str, keep: int):
  """Deletes all but the newest `keep` all-digit step directories under `parent`."""
  dirs = list_step_dirs(parent)
  for _, path in dirs[:max(0, len(dirs) - keep)]:
    try:
      tf.io.gfile.rmtree(path)
    except tf.errors.NotFoundError:
      pass
