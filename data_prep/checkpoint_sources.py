"""Readers for source checkpoints: TF1 variables (no graph) and Hugging Face BERT directories.

Both expose the same `VariableSource`: a name -> shape map, lazy `get(name)` returning a numpy array, and
bookkeeping of which names were consumed, so the converter can list everything it did not load.
Safetensors files are parsed with numpy (header length, JSON header, raw little-endian buffers) so no
PyTorch is needed; `pytorch_model.bin` is read only when torch is importable.
"""
import json
import os
from typing import Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from data_prep import checkpoint_names


class VariableSource:
  """Named arrays of a source checkpoint, read lazily.

  Args:
    shapes: Source name -> shape.
    getter: Callable(name) -> np.ndarray.
    description: Where the variables come from (used in error messages).
  """

  def __init__(self, shapes: Dict[str, Tuple[int, ...]], getter: Callable[[str], np.ndarray],
               description: str):
    self.shapes = dict(shapes)
    self._getter = getter
    self.description = description
    self.consumed = set()

  def __contains__(self, name):
    return name in self.shapes

  def names(self):
    return sorted(self.shapes)

  def get(self, name: str) -> np.ndarray:
    """The array of `name`; a missing name is an error naming it and the source."""
    if name not in self.shapes:
      raise KeyError(f"{self.description}: missing expected variable '{name}'")
    self.consumed.add(name)
    return np.asarray(self._getter(name))


def tf1_checkpoint_source(prefix: str) -> VariableSource:
  """Variables of a TF1/TF2 checkpoint prefix via `tf.train.load_checkpoint` (no graph needed)."""
  if not tf.io.gfile.exists(prefix + ".index"):
    raise FileNotFoundError(f"no checkpoint at '{prefix}' ({prefix}.index does not exist)")
  reader = tf.train.load_checkpoint(prefix)
  shapes = {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()
            if not n.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}
  return VariableSource(shapes, reader.get_tensor, f"checkpoint {prefix}")


# ---- safetensors, parsed by hand (the `safetensors` package's numpy API would also need it installed
# ---- everywhere; the format is a length-prefixed JSON header plus raw buffers, so numpy is enough).

_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
              "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "BF16": None}


def read_safetensors_header(path: str):
  """Returns (header dict without `__metadata__`, byte offset where the data buffer starts)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    n = int(np.frombuffer(raw, dtype="<u8")[0])
    header_bytes = f.read(n)
  if len(header_bytes) != n:
    raise ValueError(f"{path}: truncated safetensors header ({len(header_bytes)} of {n} bytes)")
  try:
    header = json.loads(header_bytes.decode("utf-8"))
  except ValueError as e:
    raise ValueError(f"{path}: safetensors header is not valid JSON: {e}") from e
  header.pop("__metadata__", None)
  return header, 8 + n


def read_safetensors_tensor(path: str, entry, data_start: int, name: str = "?") -> np.ndarray:
  """Reads one tensor described by a header entry; F32/F16/BF16 (+F64/I32/I64) -> numpy."""
  dtype_name = entry["dtype"]
  if dtype_name not in _ST_DTYPES:
    raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {dtype_name}")
  begin, end = entry["data_offsets"]
  shape = tuple(entry["shape"])
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(data_start + begin)
    buf = f.read(end - begin)
  if len(buf) != end - begin:
    raise ValueError(f"{path}: tensor '{name}' data truncated")
  if dtype_name == "BF16":
    # bfloat16 is the top half of a float32: widen by shifting the 16 bits up.
    arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
  else:
    arr = np.frombuffer(buf, dtype=_ST_DTYPES[dtype_name])
  if arr.size != int(np.prod(shape, dtype=np.int64)):
    raise ValueError(f"{path}: tensor '{name}' has {arr.size} elements, shape {shape}")
  return arr.reshape(shape).astype(np.float32 if arr.dtype.kind == "f" else arr.dtype)


def write_safetensors(path: str, tensors: Dict[str, np.ndarray], dtype: str = "F32"):
  """Writes float arrays as safetensors (F32, F16 or BF16); used by tests and small tools."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    a = np.asarray(tensors[name], dtype=np.float32)
    if dtype == "F32":
      b = a.astype("<f4").tobytes()
    elif dtype == "F16":
      b = a.astype("<f2").tobytes()
    elif dtype == "BF16":
      b = (a.view(np.uint32) >> 16).astype("<u2").tobytes()  # truncation
    else:
      raise ValueError(f"unsupported dtype {dtype}")
    header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
    chunks.append(b)
    offset += len(b)
  hb = json.dumps(header).encode("utf-8")
  hb += b" " * (-len(hb) % 8)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(np.array([len(hb)], dtype="<u8").tobytes() + hb + b"".join(chunks))


def hf_bert_source(model_dir: str) -> VariableSource:
  """A Hugging Face BERT directory as a source under canonical TF1 names (kernels transposed).

  Names HF carries that are not model weights here (tied decoder, position_ids buffers) are kept under
  their HF name so they show up in the skipped list.
  """
  st_path = os.path.join(model_dir, "model.safetensors")
  bin_path = os.path.join(model_dir, "pytorch_model.bin")
  if tf.io.gfile.exists(st_path):
    header, data_start = read_safetensors_header(st_path)
    raw_shapes = {n: tuple(e["shape"]) for n, e in header.items()}
    raw_get = lambda n: read_safetensors_tensor(st_path, header[n], data_start, n)
    description = st_path
  elif tf.io.gfile.exists(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          f"{bin_path}: reading pytorch_model.bin needs PyTorch, which is not installed; convert the "
          "model to model.safetensors (or install torch)") from e
    with tf.io.gfile.GFile(bin_path, "rb") as f:
      state = torch.load(f, map_location="cpu")
    arrays = {n: t.float().numpy() if t.is_floating_point() else t.numpy() for n, t in state.items()}
    raw_shapes = {n: tuple(a.shape) for n, a in arrays.items()}
    raw_get = arrays.__getitem__
    description = bin_path
  else:
    raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor pytorch_model.bin found")

  shapes, getters = {}, {}
  for hf_name, shape in raw_shapes.items():
    canonical, transpose = checkpoint_names.hf_to_canonical(hf_name)
    if canonical is None:
      shapes[hf_name] = shape
      getters[hf_name] = (hf_name, False)
      continue
    if canonical in shapes:
      raise ValueError(f"{description}: two HF tensors map to '{canonical}' "
                       f"({getters[canonical][0]} and {hf_name})")
    shapes[canonical] = tuple(reversed(shape)) if transpose else shape
    getters[canonical] = (hf_name, transpose)

  def get(name):
    hf_name, transpose = getters[name]
    a = raw_get(hf_name)
    return np.ascontiguousarray(a.T) if transpose else a

  source = VariableSource(shapes, get, description)
  source.hf_names = {n: g[0] for n, g in getters.items()}
  return source
