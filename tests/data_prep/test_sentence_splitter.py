"""Tests of the rule-based sentence splitter."""
from data_prep import sentence_splitter as ss


def test_hand_worked_paragraph():
  text = ('Dr. J. R. R. Tolkien was born in 1892. He wrote "The Hobbit." It sold 3.5 million '
          'copies! (Some say more.) The U.S. Army e.g. the army. Was it? Yes\u2026  Next line\n'
          'Heading\n\n  Para two.  ')
  assert ss.split_sentences_text(text) == [
      "Dr. J. R. R. Tolkien was born in 1892.", 'He wrote "The Hobbit."',
      "It sold 3.5 million copies!", "(Some say more.)", "The U.S. Army e.g. the army.",
      "Was it?", "Yes\u2026", "Next line", "Heading", "Para two."]


def test_abbreviations_months_numbers():
  text = "It opened on Jan. 5, 1901 at No. 10 Main St. in Boston. Trade rose c. 1500 AD. Then it fell."
  assert ss.split_sentences_text(text) == [
      "It opened on Jan. 5, 1901 at No. 10 Main St. in Boston.", "Trade rose c. 1500 AD.",
      "Then it fell."]


def test_lowercase_continuation_and_empty():
  assert ss.split_sentences_text("It weighs approx. five tonnes. yes indeed.") == [
      "It weighs approx. five tonnes. yes indeed."]
  assert ss.split_sentences("") == []
  assert ss.split_sentences("   \n\t ") == []


def test_byte_spans_non_ascii():
  text = "Caf\u00e9 au lait. \u00dcber alles. Fin."
  spans = ss.split_bytes(text)
  raw = text.encode("utf-8")
  assert spans == [(0, 14), (15, 27), (28, 32)]
  assert [raw[s:e].decode() for s, e in spans] == ["Caf\u00e9 au lait.", "\u00dcber alles.", "Fin."]
  assert ss.char_to_byte_offsets(text, [0, 4, 5]) == [0, 5, 6]
