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
