"""WordPiece tokenization (TF Text) and the REALM / ORQA input packing layouts.

Tokenizer choice (the behaviours relied on are tested in tests/test_tokenization.py):
* Ids come from `tensorflow_text.BertTokenizer`, the tokenizer ORQA itself uses in-graph
  (original §3.3 Read step 2), reading `vocab.txt` through a `StaticVocabularyTable` whose file
  becomes a SavedModel asset when the tokenizer is tracked by an exported module.
* `FastBertTokenizer` was checked against it: on 3,000 random strings mixing Latin/accents, CJK,
  ligatures, control and format characters it disagreed on 16, all involving U+2028/U+2029
  (line/paragraph separators, which BertTokenizer treats as whitespace but the fast tokenizer does
  not). So it is NOT used for ids.
* Byte offsets into the ORIGINAL string (needed for salient-span masking, original §1.3) are what
  BertTokenizer cannot give when lower-casing changes byte lengths (accents, ß, ligatures): its
  offsets point into the normalised text. `FastBertNormalizer.normalize_with_offsets` performs the
  same normalisation (case fold + NFD + strip accents + control chars -> space) and returns the
  post->pre byte mapping. We therefore normalise with it, run BertTokenizer (lower_case=False) on the
  normalised text and map offsets back. On the same 3,000 strings this path produced ids identical to
  plain BertTokenizer in all cases (unlike the original REALM greedy `find` alignment, which had to
  skip any sentence whose normalisation changed its length).

Text back from wordpieces: `RealmTokenizer.span_text` cuts the ORIGINAL string between the byte
offsets of a wordpiece span (ORQA answer text; graph ops, so evaluation and serving share it).

Packing layouts (original §1.2, §3.2) are TF ops on ragged batches with static output shapes plus
NumPy twins for host-side code. All ids are int32. The ORQA reader layout (original §3.3) is a dense
XLA op on the model side (`modeling.orqa_model.pack_reader_inputs`).
"""
import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

# The original's standard lengths (original §1.2, §3.2, §3.3).
QUERY_SEQ_LEN = 96
CANDIDATE_SEQ_LEN = 288
JOINT_SEQ_LEN = 384
ICT_QUERY_SEQ_LEN = 64
ICT_BLOCK_SEQ_LEN = 288
READER_SEQ_LEN = 320

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(vocab_file):
  """Reads a vocab.txt (one token per line) via gfile. Returns the list of tokens."""
  with tf.io.gfile.GFile(vocab_file, "r") as f:
    tokens = [line.rstrip("\n").rstrip("\r") for line in f]
  while tokens and not tokens[-1]:
    tokens.pop()
  return tokens


def lower_case_text(text):
  """BERT / ORQA lower-casing: case_fold_utf8, NFD, remove \\p{Mn} (works on any string tensor)."""
  text = tf_text.case_fold_utf8(text)
  text = tf_text.normalize_utf8(text, "NFD")
  return tf.strings.regex_replace(text, r"\p{Mn}", "")


class RealmTokenizer(tf.Module):
  """BERT WordPiece tokenizer over a vocab file, usable in tf.data, tf.function and SavedModels.

  Being a `tf.Module`, attaching an instance to an exported module tracks the vocabulary table, so
  `vocab.txt` is copied into the SavedModel's assets.

  Args:
    vocab_file: path (gfile) of a WordPiece vocab, one token per line; must contain [PAD] [UNK]
      [CLS] [SEP] [MASK].
    do_lower_case: BERT uncased normalisation (case fold, NFD, strip accents).

  Attributes:
    cls_id, sep_id, mask_id, pad_id, unk_id: int special-token ids. vocab_size: int.
    vocab_file, do_lower_case: as given.
  """

  def __init__(self, vocab_file, do_lower_case=True, name=None):
    super().__init__(name=name)
    self.vocab_file = vocab_file
    self.do_lower_case = bool(do_lower_case)
    vocab = load_vocab(vocab_file)
    index = {}
    for i, tok in enumerate(vocab):
      index.setdefault(tok, i)
    missing = [t for t in SPECIAL_TOKENS if t not in index]
    if missing:
      raise ValueError(f"vocab file {vocab_file} lacks special tokens {missing}")
    self.vocab_size = len(vocab)
    self.pad_id = index["[PAD]"]
    self.unk_id = index["[UNK]"]
    self.cls_id = index["[CLS]"]
    self.sep_id = index["[SEP]"]
    self.mask_id = index["[MASK]"]
    self._vocab = vocab
    # Lower-casing variant: the reference tokenizer for ids.
    self._bert = tf_text.BertTokenizer(
        vocab_file, lower_case=self.do_lower_case, token_out_type=tf.int32,
        unknown_token="[UNK]")
    # Offsets: normaliser with post->pre byte mapping, then the non-normalising tokenizer.
    self._normalizer = tf_text.FastBertNormalizer(
        lower_case_nfd_strip_accents=self.do_lower_case)
    self._bert_no_norm = tf_text.BertTokenizer(
        vocab_file, lower_case=False, token_out_type=tf.int32, unknown_token="[UNK]")
    self._wordpiece = tf_text.WordpieceTokenizer(
        vocab_file, token_out_type=tf.int32, unknown_token="[UNK]")

  @property
  def vocab(self):
    """The vocabulary as a Python list (index = id)."""
    return list(self._vocab)

  @staticmethod
  def _as_batch(strings):
    strings = tf.convert_to_tensor(strings, dtype=tf.string)
    scalar = strings.shape.rank == 0
    if scalar:
      strings = tf.expand_dims(strings, 0)
    return strings, scalar

  def tokenize(self, strings):
    """Wordpiece ids, flattened per string.

    Args:
      strings: tf.string [B] (or a scalar).
    Returns:
      tf.RaggedTensor int32 [B, (wordpieces)] (for a scalar input: int32 [wordpieces]).
    """
    batch, scalar = self._as_batch(strings)
    ids = self._bert.tokenize(batch).merge_dims(-2, -1)
    return ids[0] if scalar else ids

  def tokenize_with_offsets(self, strings):
    """Wordpiece ids with byte offsets [start, end) into the ORIGINAL utf-8 strings.

    Args:
      strings: tf.string [B] (or a scalar).
    Returns:
      (ids, starts, ends): ragged int32 [B, (wp)] (1-D for a scalar input); ids equal `tokenize`.
      starts/ends are int64 byte offsets into the input strings.
    """
    batch, scalar = self._as_batch(strings)
    normalized, offsets = self._normalizer.normalize_with_offsets(batch)  # offsets [B, (len+1)]
    ids, starts, ends = self._bert_no_norm.tokenize_with_offsets(normalized)
    ids = ids.merge_dims(-2, -1)
    starts = tf.gather(offsets, starts.merge_dims(-2, -1), axis=-1, batch_dims=-1)
    # End = end of the ORIGINAL character holding the piece's last normalised byte. Plain
    # offsets[post_end] would give an empty/short range when one original character expands to
    # several (ß -> "ss", ligature ﬁ -> "fi") and a piece ends inside the expansion; offsets is
    # non-decreasing, so the end is the first offset strictly greater than that character's start.
    last_char = tf.gather(offsets, ends.merge_dims(-2, -1) - 1, axis=-1, batch_dims=-1)  # [B,(wp)]
    dense_offsets = offsets.to_tensor(default_value=tf.int64.max)  # [B, n+1]
    nxt = tf.searchsorted(dense_offsets, last_char.to_tensor(), side="right")  # [B, wp_max]
    ends = tf.RaggedTensor.from_tensor(tf.gather(dense_offsets, nxt, batch_dims=1),
                                       lengths=last_char.row_lengths())  # [B, (wp)]
    if scalar:
      return ids[0], starts[0], ends[0]
    return ids, starts, ends

  def tokenize_np(self, texts):
    """Host-side convenience: list[str] -> list of np.int32 arrays of wordpiece ids."""
    texts = list(texts)
    if not texts:
      return []
    ids = self.tokenize(tf.constant(texts, dtype=tf.string))
    return [np.asarray(x, dtype=np.int32) for x in ids.numpy()]

  def tokenize_with_offsets_np(self, texts):
    """Host-side: list[str] -> list of (ids int32 [n], starts int64 [n], ends int64 [n])."""
    texts = list(texts)
    if not texts:
      return []
    ids, starts, ends = self.tokenize_with_offsets(tf.constant(texts, dtype=tf.string))
    return [(np.asarray(i, np.int32), np.asarray(s, np.int64), np.asarray(e, np.int64))
            for i, s, e in zip(ids.numpy(), starts.numpy(), ends.numpy())]

  def span_text(self, strings, first, last):
    """The original text of a wordpiece span: bytes [start of wordpiece `first`, end of `last`).

    Wordpieces and their byte offsets are those of `tokenize_with_offsets` (so positions index the
    same ids as `tokenize`), which map back through lower-casing, accent stripping and expansions
    (ß -> ss), so the result is the exact substring of the input, case and accents kept.

    Args:
      strings: tf.string [B].
      first, last: int [B], inclusive wordpiece positions in each string's wordpieces.
    Returns:
      tf.string [B]; "" where the span is not 0 <= first <= last < number of wordpieces.
    """
    strings = tf.convert_to_tensor(strings, dtype=tf.string)  # [B]
    _, starts, ends = self.tokenize_with_offsets(strings)  # ragged int64 [B, (wp)]
    first = tf.cast(first, tf.int64)  # [B]
    last = tf.cast(last, tf.int64)  # [B]
    valid = (first >= 0) & (first <= last) & (last < starts.row_lengths())  # [B]
    # Flat positions; a trailing 0 keeps the gather in range for invalid rows (and empty batches).
    row_start = starts.row_starts()  # [B]
    flat_starts = tf.concat([starts.flat_values, [0]], 0)  # [total + 1]
    flat_ends = tf.concat([ends.flat_values, [0]], 0)  # [total + 1]
    dummy = tf.size(starts.flat_values, out_type=tf.int64)
    byte_start = tf.gather(flat_starts, tf.where(valid, row_start + first, dummy))  # [B]
    byte_end = tf.gather(flat_ends, tf.where(valid, row_start + last, dummy))  # [B]
    text = tf.strings.substr(strings, byte_start, byte_end - byte_start)  # [B]
    return tf.where(valid, text, tf.fill(tf.shape(text), ""))

  def convert_ids_to_tokens(self, ids):
    """Host-side: iterable of ints -> list of wordpiece strings."""
    return [self._vocab[int(i)] for i in ids]


class TokenizationInfo(tf.Module):
  """Carries `vocab_file` (as a SavedModel asset) and `do_lower_case` into exports.

  Export use: `module.tokenization_info = TokenizationInfo(vocab_file, do_lower_case)` and
  `signatures={"tokenization_info": module.tokenization_info.__call__.get_concrete_function()}`.
  The signature returns {"vocab_file": tf.string scalar (asset path), "do_lower_case": tf.bool scalar}.
  """

  def __init__(self, vocab_file, do_lower_case=True, name=None):
    super().__init__(name=name)
    self.vocab_file = tf.saved_model.Asset(vocab_file)
    self.do_lower_case = tf.Variable(bool(do_lower_case), trainable=False, name="do_lower_case")

  @tf.function(input_signature=[])
  def __call__(self):
    return {"vocab_file": tf.identity(self.vocab_file.asset_path),
            "do_lower_case": tf.identity(self.do_lower_case)}


# ---------------------------------------------------------------------------------------------
# Packing (TF).
# ---------------------------------------------------------------------------------------------


def _as_ragged(x):
  """int32 RaggedTensor [B, (n)] from a ragged or dense rank-2 tensor; also returns was_1d."""
  if isinstance(x, tf.RaggedTensor):
    return tf.cast(x, tf.int32), False
  x = tf.convert_to_tensor(x)
  if x.shape.rank == 1:
    return tf.RaggedTensor.from_tensor(tf.cast(x[tf.newaxis], tf.int32)), True
  return tf.RaggedTensor.from_tensor(tf.cast(x, tf.int32)), False


def _greedy_trim(segments, budget):
  """Keeps as much of s0 as fits in `budget`, then of s1, ... (per row).

  Same result as `tf_text.WaterfallTrimmer(budget).trim(segments)`, written by hand because the TF
  Text trimmer takes seconds to trace for every tf.function / tf.data map / SavedModel signature
  that packs inputs, this version a fraction of that (docs/scaling.md).
  """
  remaining = tf.fill(tf.shape(segments[0].row_lengths()), tf.constant(budget, tf.int64))  # [B]
  out = []
  for seg in segments:
    lengths = seg.row_lengths()  # [B]
    keep = tf.minimum(lengths, remaining)  # [B]
    remaining -= keep
    idx = tf.ragged.range(seg.row_starts(), seg.row_starts() + keep)  # [B, (keep)]
    out.append(tf.RaggedTensor.from_row_lengths(tf.gather(seg.values, idx.values), keep))
  return out


def bert_pack(segments, seq_len, cls_id, sep_id):
  """`[CLS] s0 [SEP] s1 [SEP] ...` with greedy truncation (REALM `bert_format`, original §1.2).

  The token budget `seq_len - 1 - len(segments)` is filled greedily: as much of s0 as fits, then of
  s1, and so on (see `_greedy_trim`). segment id = index of the sequence; [CLS] gets 0 and
  each sequence's trailing [SEP] gets its sequence's id; mask 1 on real tokens; zero padding.

  Args:
    segments: list of int ragged [B, (n_i)] (or all 1-D dense tensors for one example).
    seq_len: output length (python int).
    cls_id, sep_id: special ids.
  Returns:
    {"input_ids", "input_mask", "segment_ids"}: int32 [B, seq_len] ([seq_len] for 1-D inputs).
  """
  if not segments:
    raise ValueError("bert_pack needs at least one segment")
  budget = seq_len - 1 - len(segments)
  if budget < 0:
    raise ValueError(f"seq_len={seq_len} too short for {len(segments)} segments")
  converted = [_as_ragged(s) for s in segments]
  single = all(c[1] for c in converted)
  rag = [c[0] for c in converted]
  trimmed = _greedy_trim(rag, budget)
  ids, seg = tf_text.combine_segments(trimmed, start_of_sequence_id=cls_id,
                                      end_of_segment_id=sep_id)
  input_ids, input_mask = tf_text.pad_model_inputs(ids, max_seq_length=seq_len)
  segment_ids, _ = tf_text.pad_model_inputs(seg, max_seq_length=seq_len)
  out = {"input_ids": tf.cast(input_ids, tf.int32),
         "input_mask": tf.cast(input_mask, tf.int32),
         "segment_ids": tf.cast(segment_ids, tf.int32)}
  if single:
    out = {k: v[0] for k, v in out.items()}
  return out


def _truncate(x, n):
  x, was_1d = _as_ragged(x)
  x = x[:, :n]
  return x[0] if was_1d else x


def pack_query(query, cls_id, sep_id, seq_len=QUERY_SEQ_LEN):
  """REALM query input `[CLS] q[:seq_len-2] [SEP]` (96), segments 0."""
  return bert_pack([query], seq_len, cls_id, sep_id)


def pack_candidate(title, body, cls_id, sep_id, seq_len=CANDIDATE_SEQ_LEN):
  """Document input `[CLS] title [SEP] body [SEP]` (288); title kept first (it can eat the body)."""
  return bert_pack([title, body], seq_len, cls_id, sep_id)


def pack_joint(query, body, cls_id, sep_id, query_seq_len=QUERY_SEQ_LEN, seq_len=JOINT_SEQ_LEN):
  """REALM reader input `[CLS] q[:query_seq_len-2] [SEP] body [SEP]` (384), NO title.

  The query is cut to the same tokens as `pack_query(query, ..., query_seq_len)` so that
  mlm_positions agree between the query and joint inputs; the body fills the remaining budget.
  """
  return bert_pack([_truncate(query, query_seq_len - 2), body], seq_len, cls_id, sep_id)


def pack_ict_query(query, cls_id, sep_id, seq_len=ICT_QUERY_SEQ_LEN):
  """ICT query `[CLS] q[:62] [SEP]` (64), segments all 0 (original §3.2)."""
  return bert_pack([query], seq_len, cls_id, sep_id)


def pack_ict_block(title, block, cls_id, sep_id, seq_len=ICT_BLOCK_SEQ_LEN):
  """ICT / ORQA block-embedding input `[CLS] title [SEP] block [SEP]` (288) (original §3.2)."""
  return bert_pack([title, block], seq_len, cls_id, sep_id)


# ---------------------------------------------------------------------------------------------
# Packing (NumPy twins for the host-side REALM pipeline). Single example, 1-D arrays.
# ---------------------------------------------------------------------------------------------


def bert_pack_np(segments, seq_len, cls_id, sep_id):
  """NumPy twin of `bert_pack` for ONE example: list of 1-D int arrays -> dict of int32 [seq_len]."""
  if not segments:
    raise ValueError("bert_pack_np needs at least one segment")
  budget = seq_len - 1 - len(segments)
  if budget < 0:
    raise ValueError(f"seq_len={seq_len} too short for {len(segments)} segments")
  ids = [cls_id]
  seg = [0]
  for i, s in enumerate(segments):
    s = np.asarray(s, dtype=np.int64).reshape(-1)[:max(budget, 0)]
    budget -= len(s)
    ids.extend(int(t) for t in s)
    ids.append(sep_id)
    seg.extend([i] * (len(s) + 1))
  n = len(ids)
  out = {"input_ids": np.zeros(seq_len, np.int32), "input_mask": np.zeros(seq_len, np.int32),
         "segment_ids": np.zeros(seq_len, np.int32)}
  out["input_ids"][:n] = ids
  out["input_mask"][:n] = 1
  out["segment_ids"][:n] = seg
  return out


def pack_query_np(query, cls_id, sep_id, seq_len=QUERY_SEQ_LEN):
  """NumPy twin of `pack_query`."""
  return bert_pack_np([query], seq_len, cls_id, sep_id)


def pack_candidate_np(title, body, cls_id, sep_id, seq_len=CANDIDATE_SEQ_LEN):
  """NumPy twin of `pack_candidate`."""
  return bert_pack_np([title, body], seq_len, cls_id, sep_id)


def pack_joint_np(query, body, cls_id, sep_id, query_seq_len=QUERY_SEQ_LEN, seq_len=JOINT_SEQ_LEN):
  """NumPy twin of `pack_joint` (query cut to query_seq_len-2 first, no title)."""
  return bert_pack_np([np.asarray(query).reshape(-1)[:query_seq_len - 2], body], seq_len,
                      cls_id, sep_id)
