"""Start-up checks shared by run_pretrain.py and run_finetune.py: fail in seconds, with one message
listing every problem, instead of an exception deep in a stack trace minutes (or hours) later.

Each `check_*` returns a list of problem strings (empty = fine); `fail_if(tool, problems)` exits
with `"<tool>: cannot start:\\n  <problem>\\n  ..."` (non-zero exit through SystemExit).
"""
from typing import Iterable, List, Optional, Sequence, Tuple

import realm_tf2  # noqa: F401
import tensorflow as tf

from realm_tf2 import io_utils


def fail_if(tool: str, problems: Sequence[str]):
  """Raises SystemExit with all `problems` (one per line) if there are any."""
  problems = [p for p in problems if p]
  if problems:
    raise SystemExit(f"{tool}: cannot start:\n  " + "\n  ".join(problems))


def check_files(named_paths: Iterable[Tuple[str, Optional[str]]]) -> List[str]:
  """`(flag_name, path_or_glob)` pairs: every given path must exist / every glob must match."""
  problems = []
  for name, path in named_paths:
    if not path:
      continue
    if any(c in path for c in "*?[") or "," in path:
      try:
        io_utils.list_shards(path)
      except (ValueError, FileNotFoundError, tf.errors.OpError) as e:
        problems.append(f"{name}: '{path}' matches no file ({e})")
    elif not tf.io.gfile.exists(path):
      problems.append(f"{name}: '{path}' does not exist")
  return problems


def check_seq_lens(model_config, names: Sequence[str]) -> List[str]:
  """Each `task.model.<name>` must fit `bert.max_position_embeddings` (position table rows)."""
  limit = int(model_config.bert.max_position_embeddings)
  return [f"task.model.{n}={getattr(model_config, n)} exceeds task.model.bert.max_position_embeddings"
          f"={limit}" for n in names if int(getattr(model_config, n)) > limit]


def checkpoint_vocab_rows(source: str) -> Optional[int]:
  """Rows of the word-embedding table in an init source (export dir, run dir or prefix), if any."""
  from realm_tf2.modeling import init_utils  # pylint: disable=g-import-not-at-top
  prefix = init_utils.resolve_checkpoint(source)
  rows = set()
  for name, shape in tf.train.list_variables(prefix):
    if "word_embeddings" in name and "OPTIMIZER_SLOT" not in name and len(shape) == 2:
      rows.add(int(shape[0]))
  return max(rows) if rows else None


def check_vocab_matches(vocab_size: int, sources: Iterable[Tuple[str, Optional[str]]]) -> List[str]:
  """The model's vocab size must equal the embedding rows of every `(flag_name, init_source)`."""
  problems = []
  for name, source in sources:
    if not source:
      continue
    try:
      rows = checkpoint_vocab_rows(source)
    except (FileNotFoundError, ValueError, tf.errors.OpError) as e:
      problems.append(f"{name}: {e}")
      continue
    if rows is not None and rows != vocab_size:
      problems.append(f"{name}: '{source}' has a word-embedding table of {rows} rows but the vocab "
                      f"(--vocab_file / task.model.bert.vocab_size) has {vocab_size} entries")
  return problems
