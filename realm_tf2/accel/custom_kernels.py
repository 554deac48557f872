"""Builds (once, on first use) and loads the project's C++ CPU kernels; Python fallbacks otherwise.

Why this exists: the kernels of `cpu_kernels.cc` (see its header) fuse work that
TensorFlow's CPU runtime does in many memory-bound passes. It is compiled against the installed
TensorFlow with the compile/link flags of `tf.sysconfig` (as TensorFlow's custom-op guide does),
on the machine that runs it, into a per-user cache:
  $REALM_TF2_KERNEL_CACHE, else ~/.cache/realm_tf2/kernels, then <TF version>-<hash of source+flags>/
The compile takes ~10 s and happens at most once per TensorFlow version and source; the file is
written under a temporary name and renamed, so concurrent processes never load a partial library.
The cache is a local directory (dlopen needs one), not a `gs://` path.

`load()` returns the op module, or None when the kernels cannot be used: no C++ compiler, a failed
build (logged once with the compiler's last lines), `REALM_TF2_CUSTOM_KERNELS=0`, or an accelerator
(GPU/TPU) visible, where XLA and the device kernels do this work. Callers then run the same maths
with TensorFlow ops.

Use is opt-in: layers call the kernels only while tracing inside `enabled()` (`active()`), because
the kernels have no XLA lowering (a graph traced for `jit_compile=True` must not contain them) and a
SavedModel containing them would not load where this library is not. The project enters it where
neither can happen: `tasks.base.Task.gradient_fn` without XLA, and the corpus re-embedding step
without XLA. The flag is per thread; both enter it inside the function a distribution strategy runs
on each replica (MirroredStrategy traces replicas in their own threads).
"""
import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

from absl import logging
import realm_tf2  # noqa: F401
import tensorflow as tf

_SOURCES = ("cpu_kernels.cc",)
_LOCK = threading.Lock()
_STATE = {"module": None, "tried": False}


def _cpu_flags() -> list:
  """Vector-ISA flags for this machine: AVX2+FMA on x86-64 CPUs that have them, else none."""
  if platform.machine() not in ("x86_64", "AMD64"):
    return []
  try:
    with open("/proc/cpuinfo") as f:
      flags = set(f.read().split())
  except OSError:
    return []
  return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


def _cache_dir() -> str:
  root = os.environ.get("REALM_TF2_KERNEL_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "realm_tf2", "kernels")
  return root


def _build_command(sources, output) -> list:
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise RuntimeError("no C++ compiler (g++/c++ or $CXX) found")
  return ([compiler, "-shared", "-fPIC", "-O3", "-w", *_cpu_flags(), "-o", output, *sources,
           *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()])


def library_path() -> str:
  """Where the built library lives (built if missing). Raises RuntimeError if the build fails."""
  here = os.path.dirname(os.path.abspath(__file__))
  sources = [os.path.join(here, name) for name in _SOURCES]
  digest = hashlib.sha256()
  for path in sources:
    with open(path, "rb") as f:
      digest.update(f.read())
  digest.update(" ".join(_build_command(sources, "OUT")).encode())
  directory = os.path.join(_cache_dir(), f"tf{tf.__version__}-{digest.hexdigest()[:16]}")
  path = os.path.join(directory, "realm_tf2_kernels.so")
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
  os.close(fd)
  try:
    proc = subprocess.run(_build_command(sources, tmp), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
      raise RuntimeError(f"building {', '.join(_SOURCES)} failed (exit {proc.returncode}):\n{tail}")
    os.replace(tmp, path)  # atomic: other processes see no file or the whole library
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _enabled_by_environment() -> bool:
  if os.environ.get("REALM_TF2_CUSTOM_KERNELS", "1").lower() in ("0", "false", "no"):
    return False
  return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def load():
  """The loaded op module (`tf.load_op_library`), or None (see the module docstring)."""
  if not _STATE["tried"]:
    with _LOCK:
      if not _STATE["tried"]:
        if _enabled_by_environment():
          try:
            _STATE["module"] = tf.load_op_library(library_path())
          except (RuntimeError, OSError, tf.errors.NotFoundError) as e:
            logging.warning("realm_tf2 C++ kernels unavailable, using TensorFlow ops: %s", e)
        _STATE["tried"] = True
  return _STATE["module"]


_CONTEXT = threading.local()


@contextlib.contextmanager
def enabled(on: bool = True):
  """Within this block (this thread), `active()` is `on`: layers may put the kernels in the graphs
  traced here. `enabled(False)` switches them off again inside (for a nested XLA trace)."""
  stack = getattr(_CONTEXT, "stack", None)
  if stack is None:
    stack = _CONTEXT.stack = []
  stack.append(bool(on))
  try:
    yield
  finally:
    stack.pop()


def active():
  """The op module if code traced now may use the kernels (inside `enabled()`), else None."""
  stack = getattr(_CONTEXT, "stack", None)
  return load() if stack and stack[-1] else None
