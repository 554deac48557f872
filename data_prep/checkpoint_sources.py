"""Readers for source checkpoints: TF1 variables (no graph) and Hugging Face BERT directories.

Hugging Face directories come in several layouts (`locate_hf_bert`): a `transformers` save
(`BertModel`, `BertForMaskedLM`, `BertForPreTraining`, ...) or a sentence-transformers model whose
transformer module sits at the top level or in a sub-directory named by `modules.json`
(`0_Transformer/`). Their vocab is `vocab.txt` or the WordPiece table inside `tokenizer.json`
(`vocab_from_tokenizer_json`), their lower-casing `tokenizer_config.json` / the `tokenizer.json`
normalizer (`hf_do_lower_case`).

Both source kinds expose the same `VariableSource`: a name -> shape map, lazy `get(name)` returning
a numpy array, and bookkeeping of which names were consumed, so the converter can list everything
it did not load.
Safetensors files are parsed with numpy (header length, JSON header, raw little-endian buffers) so no
PyTorch is needed; `pytorch_model.bin` is read only when torch is importable.
"""
import dataclasses
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

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


# ---- Hugging Face directory layouts.

_ST_TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"
_ST_POOLING_TYPE = "sentence_transformers.models.Pooling"
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class HfBertLayout:
  """Where the parts of a Hugging Face BERT directory are.

  Attributes:
    root: The directory given (`--source`).
    model_dir: Directory holding `config.json` and the weights (`root` itself, or the
      sentence-transformers Transformer module's directory, e.g. `root/0_Transformer`).
    config_json: `model_dir/config.json`, None if absent.
    vocab_txt: `vocab.txt` in `model_dir` or `root`, None if neither has one.
    tokenizer_json: `tokenizer.json` in `model_dir` or `root`, None if absent.
    tokenizer_config_json: `tokenizer_config.json` in `model_dir` or `root`, None if absent.
    pooling_config_json: The sentence-transformers Pooling module's `config.json` (how the model's
      authors pool token vectors into a sentence vector), None if there is none.
  """
  root: str
  model_dir: str
  config_json: Optional[str]
  vocab_txt: Optional[str]
  tokenizer_json: Optional[str]
  tokenizer_config_json: Optional[str]
  pooling_config_json: Optional[str] = None


def _has_weights(directory: str) -> bool:
  return any(tf.io.gfile.exists(os.path.join(directory, f)) for f in _HF_WEIGHT_FILES)


def read_json(path: str):
  """Parsed JSON of `path` (gfile); invalid JSON is a ValueError naming the file."""
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from e


def _sentence_transformers_modules(root: str) -> Optional[Dict[str, str]]:
  """Module type -> directory from a sentence-transformers `modules.json`; None without one."""
  path = os.path.join(root, "modules.json")
  if not tf.io.gfile.exists(path):
    return None
  modules = read_json(path)
  if not isinstance(modules, list):
    raise ValueError(f"{path}: expected a JSON list of modules, got {type(modules).__name__}")
  dirs = {}
  for i, module in enumerate(modules):
    if not isinstance(module, dict) or "path" not in module or "type" not in module:
      raise ValueError(f"{path}: module #{i} lacks a 'path' or 'type' field")
    dirs.setdefault(module["type"], os.path.join(root, module["path"]) if module["path"] else root)
  if _ST_TRANSFORMER_TYPE not in dirs:
    raise ValueError(f"{path}: no module of type {_ST_TRANSFORMER_TYPE} (the BERT) listed")
  return dirs


def _first_file(name: str, *dirs: str) -> Optional[str]:
  for d in dirs:
    path = os.path.join(d, name)
    if tf.io.gfile.exists(path):
      return path
  return None


def locate_hf_bert(source: str) -> HfBertLayout:
  """Finds config, weights and tokenizer files of a Hugging Face BERT directory.

  The weights directory is, in order: the Transformer module named by `modules.json`
  (sentence-transformers; path "" = top level), `source` itself when it holds weights, else
  `source/0_Transformer` (older sentence-transformers saves without `modules.json`). Tokenizer files
  are looked up in the weights directory first, then in `source`.

  Raises:
    FileNotFoundError: naming the directory when it holds no weights.
  """
  root = source.rstrip("/")
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f"--source {source}: not a directory (hf_bert reads a Hugging Face "
                            "model directory)")
  modules = _sentence_transformers_modules(root)
  pooling_dir = None
  if modules is not None:
    model_dir = modules[_ST_TRANSFORMER_TYPE]
    pooling_dir = modules.get(_ST_POOLING_TYPE)
  else:
    nested = os.path.join(root, "0_Transformer")
    model_dir = root if _has_weights(root) or not tf.io.gfile.isdir(nested) else nested
    if model_dir == nested and tf.io.gfile.isdir(os.path.join(root, "1_Pooling")):
      pooling_dir = os.path.join(root, "1_Pooling")
  if not _has_weights(model_dir):
    raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor pytorch_model.bin found")
  dirs = (model_dir, root) if model_dir != root else (root,)
  return HfBertLayout(root=root, model_dir=model_dir,
                      config_json=_first_file("config.json", model_dir),
                      vocab_txt=_first_file("vocab.txt", *dirs),
                      tokenizer_json=_first_file("tokenizer.json", *dirs),
                      tokenizer_config_json=_first_file("tokenizer_config.json", *dirs),
                      pooling_config_json=pooling_dir and _first_file("config.json", pooling_dir))


def vocab_from_tokenizer_json(path: str) -> List[str]:
  """The WordPiece vocab of a Hugging Face `tokenizer.json`, as the lines of a vocab.txt.

  `model.vocab` (token -> id) plus the `added_tokens` (id, content) are laid out in id order; the
  ids must be exactly 0..N-1 (no gap, no id given to two different tokens) and no token may be
  empty or contain a line break (vocab.txt is one token per line).

  Raises:
    ValueError: naming the file and the offending id / token.
  """
  tok = read_json(path)
  model = tok.get("model") if isinstance(tok, dict) else None
  if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
    raise ValueError(f"{path}: no 'model.vocab' token -> id table")
  if model.get("type", "WordPiece") != "WordPiece":
    raise ValueError(f"{path}: model.type is {model.get('type')!r}; BERT needs a WordPiece vocab")
  by_id: Dict[int, str] = {}

  def put(token, token_id, where):
    if not isinstance(token_id, int) or token_id < 0:
      raise ValueError(f"{path}: {where}: token {token!r} has invalid id {token_id!r}")
    if not token or "\n" in token or "\r" in token:
      raise ValueError(f"{path}: {where}: token {token!r} (id {token_id}) cannot be a vocab.txt "
                       "line")
    if by_id.get(token_id, token) != token:
      raise ValueError(f"{path}: {where}: id {token_id} is given to both {by_id[token_id]!r} and "
                       f"{token!r}")
    by_id[token_id] = token

  for token, token_id in model["vocab"].items():
    put(token, token_id, "model.vocab")
  for added in tok.get("added_tokens") or []:
    put(added.get("content"), added.get("id"), "added_tokens")
  missing = [i for i in range(len(by_id)) if i not in by_id]
  if missing:
    raise ValueError(f"{path}: vocab ids are not contiguous: {len(by_id)} tokens but id "
                     f"{missing[0]} is missing (largest id {max(by_id)})")
  tokens = [by_id[i] for i in range(len(by_id))]
  first_id: Dict[str, int] = {}
  for i, token in enumerate(tokens):
    if first_id.setdefault(token, i) != i:
      raise ValueError(f"{path}: token {token!r} has two ids ({first_id[token]} and {i})")
  return tokens


def sentence_pooling_modes(layout: HfBertLayout) -> List[str]:
  """The sentence-transformers pooling modes switched on (e.g. ["mean_tokens"]), [] if none."""
  if not layout.pooling_config_json:
    return []
  cfg = read_json(layout.pooling_config_json)
  if not isinstance(cfg, dict):
    raise ValueError(f"{layout.pooling_config_json}: expected a JSON object")
  return sorted(k[len("pooling_mode_"):] for k, v in cfg.items()
                if k.startswith("pooling_mode_") and v is True)


def _normalizer_lowercases(normalizer) -> Optional[bool]:
  """`lowercase` of a tokenizer.json normalizer (BertNormalizer, Lowercase, Sequence), else None."""
  if not isinstance(normalizer, dict):
    return None
  kind = normalizer.get("type")
  if kind == "BertNormalizer":
    return bool(normalizer.get("lowercase", True))
  if kind == "Lowercase":
    return True
  if kind == "Sequence":
    found = [_normalizer_lowercases(n) for n in normalizer.get("normalizers") or []]
    return True if True in found else (False if False in found else None)
  return None


def hf_do_lower_case(layout: HfBertLayout) -> Optional[bool]:
  """`do_lower_case` of tokenizer_config.json, else of the tokenizer.json normalizer, else None."""
  if layout.tokenizer_config_json:
    cfg = read_json(layout.tokenizer_config_json)
    if isinstance(cfg, dict) and "do_lower_case" in cfg:
      return bool(cfg["do_lower_case"])
  if layout.tokenizer_json:
    tok = read_json(layout.tokenizer_json)
    if isinstance(tok, dict):
      return _normalizer_lowercases(tok.get("normalizer"))
  return None


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
