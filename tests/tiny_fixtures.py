"""Tiny vocab / configs shared by tests (vocab ~100, hidden 32, 2 layers)."""
import tensorflow as tf

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an of in on at to is was and by for with from as his her its born "
         "city river king queen john mary paris london 1875 1900 1999 june may march "
         "founded capital built wrote book war first second third this that it he she "
         "who what when where which record test question longer fourth fifth want "
         "un runn low lowest year years age century").split()
PIECES = ["##s", "##ed", "##ing", "##ly", "##er", "##want", "##a", "##e", "##o", "##n"]
PUNCT = [".", ",", "'", "-", "(", ")", "?", "!", ":", ";"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")
LETTER_PIECES = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]


def tiny_vocab():
  seen, out = set(), []
  for tok in SPECIAL + PUNCT + WORDS + PIECES + LETTERS + LETTER_PIECES:
    if tok not in seen:
      seen.add(tok)
      out.append(tok)
  return out


def write_tiny_vocab(path):
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(tiny_vocab()) + "\n")
  return path


# Tiny REALM layout shared by the task and distribution tests: k, query, candidate, joint, masks.
REALM_K, REALM_Q, REALM_C, REALM_J, REALM_M = 3, 8, 12, 16, 2


def realm_batch(batch_size, vocab_size, mlm_mask, index_version, index_step, seed=0):
  """A random REALM training batch (NumPy) in the pipeline's feature layout.

  Args:
    batch_size: Examples.
    vocab_size: Token ids are drawn from [5, vocab_size).
    mlm_mask: int [batch_size, REALM_M], which masked slots are real.
    index_version / index_step: Values of the pipeline's index bookkeeping features.
    seed: NumPy seed.
  """
  import numpy as np
  rng = np.random.RandomState(seed)

  def seq(shape, n_real):
    ids = rng.randint(5, vocab_size, size=shape).astype(np.int32)
    mask = (np.arange(shape[-1]) < n_real).astype(np.int32) * np.ones(shape, np.int32)
    return ids * mask, mask

  k, q, c, j, m = REALM_K, REALM_Q, REALM_C, REALM_J, REALM_M
  qi, qm = seq([batch_size, q], 6)
  ci, cm = seq([batch_size, k, c], 9)
  ji, jm = seq([batch_size, k, j], 12)
  return {
      "query_input_ids": qi, "query_input_mask": qm, "query_segment_ids": np.zeros_like(qi),
      "candidate_input_ids": ci, "candidate_input_mask": cm,
      "candidate_segment_ids": (np.arange(c) >= 4).astype(np.int32) * cm,
      "joint_input_ids": ji, "joint_input_mask": jm,
      "joint_segment_ids": (np.arange(j) >= 6).astype(np.int32) * jm,
      "mlm_positions": np.tile([[2, 3]], [batch_size, 1]).astype(np.int32),
      "mlm_targets": rng.randint(5, vocab_size, size=[batch_size, m]).astype(np.int32),
      "mlm_mask": np.asarray(mlm_mask, np.int32),
      "index_version": np.full([batch_size], index_version, np.int32),
      "index_step": np.full([batch_size], index_step, np.int32),
  }
