"""Tests of realm_tf2.tokenization: ids, offsets, ORQA mapping, every packing layout, TF == NumPy.

Expected ids are hand-written against tests/tiny_fixtures.py's vocab: [PAD]0 [UNK]1 [CLS]2 [SEP]3
[MASK]4 .5 ,6 '7 (9 )10 the15 a16 in19 john39 paris41 book53 un75 runn76 ##s83 ##ed84 ##ing85
##want88 ##a89 ##e90 b93 c94 d95 e96 s110 ##b128 ##f131.
"""
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

import realm_tf2  # noqa: F401
from realm_tf2 import tokenization as T

CLS, SEP = 2, 3


@pytest.fixture(scope="module")
def tok(tiny_vocab_file):
  return T.RealmTokenizer(tiny_vocab_file)


def _np(d):
  return {k: np.asarray(v) for k, v in d.items()}


def _ragged(rows):
  return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1, inner_shape=())


# ----------------------------------------------------------------------------------- tokenizer


def test_special_ids(tok):
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == 159
  assert tok.do_lower_case is True


def test_missing_special_token_is_clear_error(tmp_path):
  path = str(tmp_path / "v.txt")
  with open(path, "w") as f:
    f.write("[PAD]\n[UNK]\nthe\n")
  with pytest.raises(ValueError, match=r"\[CLS\]"):
    T.RealmTokenizer(path)


def test_tokenize_hand_ids(tok):
  ids = tok.tokenize(tf.constant(["UNwant\u00e9d,running", "John's book.", "Caf\u00e9", ""]))
  assert ids.dtype == tf.int32
  assert ids.to_list() == [[75, 88, 84, 6, 76, 85], [39, 7, 110, 53, 5], [94, 89, 131, 90], []]
  # Scalar input -> 1-D.
  assert tok.tokenize(tf.constant("the city")).numpy().tolist() == [15, 35]
  assert [a.tolist() for a in tok.tokenize_np(["in Paris", "xq"])] == [[19, 41], [115, 140]]


def test_offsets_are_bytes_of_the_original_string(tok):
  text = "Caf\u00e9 JOHN's"  # é is 2 bytes (3..5)
  ids, starts, ends = tok.tokenize_with_offsets(tf.constant([text, "Stra\u00dfe in Paris"]))
  assert ids.to_list()[0] == [94, 89, 131, 90, 39, 7, 110]
  assert starts.to_list()[0] == [0, 1, 2, 3, 6, 10, 11]
  assert ends.to_list()[0] == [1, 2, 3, 5, 10, 11, 12]
  # ß -> "ss" changes the length; later words still align to the original bytes.
  assert ids.to_list()[1] == [110, 142, 141, 89, 83, 83, 90, 19, 41]
  # Both pieces of the expansion map to the whole original "ß" (bytes 4..6), never an empty range.
  assert starts.to_list()[1] == [0, 1, 2, 3, 4, 4, 6, 8, 11]
  assert ends.to_list()[1] == [1, 2, 3, 4, 6, 6, 7, 10, 16]
  raw = "Stra\u00dfe in Paris".encode("utf-8")
  assert raw[starts.to_list()[1][-1]:ends.to_list()[1][-1]] == b"Paris"
  assert raw[starts.to_list()[1][-2]:ends.to_list()[1][-2]] == b"in"
  # Ids agree with tokenize() and every piece is its original bytes, normalised.
  assert ids.to_list() == tok.tokenize(tf.constant([text, "Stra\u00dfe in Paris"])).to_list()
  raw0 = text.encode("utf-8")
  pieces = tok.convert_ids_to_tokens(ids.to_list()[0])
  for p, s, e in zip(pieces, starts.to_list()[0], ends.to_list()[0]):
    normed = T.lower_case_text(tf.constant(raw0[s:e])).numpy().decode()
    assert normed == p.replace("##", "")


def test_offsets_ids_equal_tokenize_on_mixed_unicode(tok):
  texts = ["\u00c9COLE d\u0301e \ufb01", "a\u200bb\tc\nJune\u2028MAY", "\u4e2d x \U0001d400bc", "  "]
  ids, starts, ends = tok.tokenize_with_offsets(tf.constant(texts))
  assert ids.to_list() == tok.tokenize(tf.constant(texts)).to_list()
  # "\u00c9COLE d\u0301e \ufb01": É is 2 bytes, the combining acute stays with d, the ligature
  # (3 bytes) yields f + ##i, both spanning it.
  assert ids.to_list()[0] == [96, 129, 91, 137, 90, 95, 90, 97, 134]
  assert starts.to_list()[0] == [0, 2, 3, 4, 5, 7, 10, 12, 12]
  assert ends.to_list()[0] == [2, 3, 4, 5, 6, 10, 11, 15, 15]
  # Scalar input (as used inside tf.data map) -> 1-D results.
  i1, s1, e1 = tok.tokenize_with_offsets(tf.constant("in Paris"))
  assert (i1.numpy().tolist(), s1.numpy().tolist(), e1.numpy().tolist()) == (
      [19, 41], [0, 3], [2, 8])


def test_tokenizer_in_tf_data(tok):
  ds = tf.data.Dataset.from_tensor_slices(["the city", "John's book."])
  ds = ds.map(lambda s: T.pack_query(tok.tokenize(s), CLS, SEP, seq_len=8))
  rows = [r["input_ids"].numpy().tolist() for r in ds]
  assert rows == [[2, 15, 35, 3, 0, 0, 0, 0], [2, 39, 7, 110, 53, 5, 3, 0]]


def test_savedmodel_tokenizes_in_graph_with_vocab_asset(tiny_vocab_file, tmp_path):
  vocab_copy = str(tmp_path / "vocab_copy.txt")
  tf.io.gfile.copy(tiny_vocab_file, vocab_copy)
  module = tf.Module()
  module.tokenizer = T.RealmTokenizer(vocab_copy)
  module.tokenization_info = T.TokenizationInfo(vocab_copy, True)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def pack(q):
    return T.pack_query(module.tokenizer.tokenize(q), CLS, SEP, seq_len=8)

  module.pack = pack
  export = str(tmp_path / "export")
  tf.saved_model.save(module, export, signatures={
      "pack": pack, "tokenization_info": module.tokenization_info.__call__.get_concrete_function()})
  os.remove(vocab_copy)  # the SavedModel must use its own asset
  loaded = tf.saved_model.load(export)
  out = loaded.signatures["pack"](q=tf.constant(["in Paris"]))
  assert out["input_ids"].numpy().tolist() == [[2, 19, 41, 3, 0, 0, 0, 0]]
  info = loaded.signatures["tokenization_info"]()
  assert info["do_lower_case"].numpy()
  path = info["vocab_file"].numpy().decode()
  assert path.startswith(os.path.join(export, "assets"))
  assert tf.io.gfile.GFile(path).read().split("\n")[2] == "[CLS]"


# ------------------------------------------------------------------------------------ packing


def test_bert_pack_generic_greedy():
  out = _np(T.bert_pack([_ragged([[10, 11, 12], [10, 11, 12, 13, 14, 15]]),
                         _ragged([[20, 21], [20]])], 8, CLS, SEP))
  # Budget 8-1-2 = 5: row 0 fits exactly; row 1's first segment eats all 5 slots.
  assert out["input_ids"].tolist() == [[2, 10, 11, 12, 3, 20, 21, 3], [2, 10, 11, 12, 13, 14, 3, 3]]
  assert out["segment_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1]]
  assert out["input_mask"].tolist() == [[1] * 8, [1] * 8]
  three = _np(T.bert_pack([tf.constant([10]), tf.constant([20, 21]), tf.constant([30])], 10,
                          CLS, SEP))
  assert three["input_ids"].tolist() == [2, 10, 3, 20, 21, 3, 30, 3, 0, 0]
  assert three["segment_ids"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 0, 0]
  assert three["input_mask"].tolist() == [1] * 8 + [0, 0]
  for v in out.values():
    assert v.dtype == np.int32


def test_candidate_long_title_eats_budget():
  title = list(range(1000, 1300))
  out = _np(T.pack_candidate(_ragged([title]), _ragged([[7, 8, 9]]), CLS, SEP))
  assert out["input_ids"].shape == (1, 288)
  assert out["input_ids"][0].tolist() == [2] + title[:285] + [3, 3]
  assert out["segment_ids"][0].tolist() == [0] * 287 + [1]
  assert out["input_mask"][0].tolist() == [1] * 288


def test_candidate_empty_body_empty_title_and_null_doc():
  out = _np(T.pack_candidate(_ragged([[37, 18, 41], [], []]), _ragged([[], [41, 23], []]),
                             CLS, SEP))
  ids, seg, mask = out["input_ids"], out["segment_ids"], out["input_mask"]
  assert ids[0, :7].tolist() == [2, 37, 18, 41, 3, 3, 0]
  assert seg[0, :7].tolist() == [0, 0, 0, 0, 0, 1, 0]
  assert ids[1, :6].tolist() == [2, 3, 41, 23, 3, 0]
  assert seg[1, :6].tolist() == [0, 0, 1, 1, 1, 0]
  # The null document (original §1.4): [CLS][SEP][SEP], segments 0, 0, 1.
  assert ids[2, :4].tolist() == [2, 3, 3, 0]
  assert seg[2, :4].tolist() == [0, 0, 1, 0]
  assert mask.sum(axis=1).tolist() == [6, 5, 3]
  assert ids[:, 7:].sum() == 0


def test_overlong_query_and_joint_agree():
  q = list(range(500, 600))  # 100 tokens > 94
  body = list(range(2000, 2300))  # 300 tokens
  qo = _np(T.pack_query(_ragged([q]), CLS, SEP))
  jo = _np(T.pack_joint(_ragged([q]), _ragged([body]), CLS, SEP))
  assert qo["input_ids"][0].tolist() == [2] + q[:94] + [3]
  assert qo["segment_ids"][0].tolist() == [0] * 96
  assert jo["input_ids"].shape == (1, 384)
  # [CLS] q[:94] [SEP] then the body fills the rest of the 381-token budget (287 tokens).
  assert jo["input_ids"][0].tolist() == [2] + q[:94] + [3] + body[:287] + [3]
  assert jo["segment_ids"][0].tolist() == [0] * 96 + [1] * 288
  # mlm positions (1..94) address the same tokens in both inputs.
  np.testing.assert_array_equal(qo["input_ids"][0, :96], jo["input_ids"][0, :96])


def test_joint_has_no_title_and_short_query():
  jo = _np(T.pack_joint(_ragged([[4, 15]]), _ragged([[41, 23, 16, 35]]), CLS, SEP, seq_len=12))
  assert jo["input_ids"][0].tolist() == [2, 4, 15, 3, 41, 23, 16, 35, 3, 0, 0, 0]
  assert jo["segment_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]


def test_ict_layouts():
  q = list(range(300, 370))
  qo = _np(T.pack_ict_query(_ragged([q]), CLS, SEP))
  assert qo["input_ids"][0].tolist() == [2] + q[:62] + [3]
  assert qo["segment_ids"][0].tolist() == [0] * 64
  title, block = list(range(10, 20)), list(range(1000, 1300))
  bo = _np(T.pack_ict_block(_ragged([title]), _ragged([block]), CLS, SEP))
  assert bo["input_ids"][0].tolist() == [2] + title + [3] + block[:275] + [3]
  assert bo["segment_ids"][0].tolist() == [0] * 12 + [1] * 276


def test_tf_and_numpy_packing_agree():
  rng = np.random.RandomState(0)
  rows = lambda lo, hi, n: [rng.randint(5, 150, size=rng.randint(lo, hi)).tolist() for _ in range(n)]
  q, t, b = rows(0, 110, 6), rows(0, 300, 6), rows(0, 420, 6)
  tf_out = {
      "query": _np(T.pack_query(_ragged(q), CLS, SEP)),
      "cand": _np(T.pack_candidate(_ragged(t), _ragged(b), CLS, SEP)),
      "joint": _np(T.pack_joint(_ragged(q), _ragged(b), CLS, SEP)),
  }
  for i in range(6):
    np_out = {
        "query": T.pack_query_np(q[i], CLS, SEP),
        "cand": T.pack_candidate_np(t[i], b[i], CLS, SEP),
        "joint": T.pack_joint_np(q[i], b[i], CLS, SEP),
    }
    for layout, d in np_out.items():
      for k, v in d.items():
        np.testing.assert_array_equal(tf_out[layout][k][i], v, err_msg=f"{layout}/{k}/{i}")


def test_pack_static_shapes_in_tf_function():
  @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int32),
                                tf.RaggedTensorSpec([None, None], tf.int32)])
  def f(q, b):
    return T.pack_candidate(q, b, CLS, SEP)

  out = f.get_concrete_function().structured_outputs
  for k in ("input_ids", "input_mask", "segment_ids"):
    assert out[k].shape.as_list() == [None, 288], k


def test_greedy_trim_matches_tf_text_waterfall_trimmer():
  import tensorflow_text as tf_text
  rng = np.random.RandomState(1)
  segs = [_ragged([rng.randint(5, 99, size=rng.randint(0, 9)).tolist() for _ in range(7)])
          for _ in range(3)]
  for budget in (0, 3, 7, 12, 30):
    ours = T._greedy_trim(segs, budget)  # pylint: disable=protected-access
    ref = tf_text.WaterfallTrimmer(budget).trim(segs)
    for a, b in zip(ours, ref):
      assert a.to_list() == b.to_list(), budget
