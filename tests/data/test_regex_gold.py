"""Gold spans of regex answers: literal prefilter, occurrences as whole-wordpiece spans (hand
checked), counted drops and truncation, title shift, padded features."""
import numpy as np
import pytest

import realm_tf2  # noqa: F401
from realm_tf2 import tokenization
from realm_tf2.data import qa_pipeline
from realm_tf2.data import regex_gold

# Wordpieces (tiny vocab):
# 0: john was born in paris in 1875 .
# 1: mary was born in london in 1900 .
# 2: paris ##a was born in 1900 .
# 3: the king wrote a book in 1999 .
TEXTS = ["John was born in Paris in 1875.", "Mary was born in London in 1900.",
         "Parisa was born in 1900.", "The king wrote a book in 1999."]


@pytest.fixture(scope="module")
def tok(tiny_vocab_file):
  return tokenization.RealmTokenizer(tiny_vocab_file)


def _finder(tok, texts=TEXTS, max_gold_spans=8, block_len=None, sep_pos=None):
  lens = [len(x) for x in tok.tokenize_np(texts)] if block_len is None else block_len
  return regex_gold.RegexGoldFinder(tok, texts, lens, sep_pos, max_gold_spans)


@pytest.mark.parametrize("pattern,expected", [
    ("(Jim|James) Morrison", [" morrison"]),
    ("Bolsheviks?", ["bolshevik"]),
    (r"1\.?0?9?\s*billion", ["billion"]),
    (r"\d+", None),
    ("(?:Tokyo|Kyoto)", ["kyoto", "tokyo"]),
    ("(ab)+c?", ["ab"]),
    ("x*", None),
    ("PARIS", ["paris"]),
    ("(", None),  # invalid
])
def test_required_literals(pattern, expected):
  assert regex_gold.required_literals(pattern) == expected


def test_prefilter_finds_every_row_the_regex_matches(tok):
  """Case folding keeps what IGNORECASE matches: long s, the Kelvin sign and dotless i."""
  texts = TEXTS + ["PARIſ", "\u212aing of ınn", "the kings", "no match here"]
  finder = _finder(tok, texts)
  patterns = ["Paris", "king", "Inn", "the king", r"(mary|john) was", "born in \\d+", "nothing"]
  for pattern in patterns:
    compiled = regex_gold.answers_lib.compile_pattern(pattern)
    everywhere = [r for r, t in enumerate(texts) if compiled.search(t)]
    assert [r for r, _ in finder.matching_rows([pattern])] == everywhere, pattern
  assert [r for r, _ in finder.matching_rows(["Paris"])] == [0, 2, 4]


def test_gold_spans_hand_checked(tok):
  finder = _finder(tok)
  gold, count = finder.gold_spans([
      ["Paris"],  # row 0 wordpiece 4; row 2 wordpiece 0 ("paris" of "Parisa": a whole wordpiece)
      [r"19\d\d"],  # 1900 in rows 1 and 2, 1999 in row 3
      [r"in \w+"],  # every "in X": overlapping occurrences at each wordpiece start
      ["(John|Mary) was born", "king"],  # two patterns, multi-wordpiece spans
      ["Pari", "aris"],  # ends / starts inside a wordpiece: no span, counted
      ["zebra", "("],  # no occurrence; invalid pattern
  ])
  spans = [sorted(map(tuple, g[:c].tolist())) for g, c in zip(gold, count)]
  assert spans[0] == [(0, 4, 4), (2, 0, 0)]
  assert spans[1] == [(1, 6, 6), (2, 5, 5), (3, 6, 6)]
  assert spans[2] == [(0, 3, 4), (0, 5, 6), (1, 3, 4), (1, 5, 6), (2, 4, 5), (3, 5, 6)]
  assert spans[3] == [(0, 0, 2), (1, 0, 2), (3, 1, 1)]
  assert spans[4] == [] and spans[5] == []
  assert gold.shape == (6, 8, 3) and (gold[4] == -1).all()
  c = finder.counters
  assert c.skipped["regex_match_ends_inside_wordpiece"] == 2  # "Pari" in rows 0 and 2
  assert c.skipped["regex_match_starts_inside_wordpiece"] == 2  # "aris" in rows 0 and 2
  assert c.skipped["regex_invalid_pattern"] == 1
  assert c.extra["regex_questions"] == 6 and c.extra["regex_questions_without_gold_span"] == 2


def test_truncation_keeps_distinct_rows_first_and_is_counted(tok):
  finder = _finder(tok, max_gold_spans=3)
  gold, count = finder.gold_spans([[r"in \w+"]])  # 6 spans over 4 rows
  assert count.tolist() == [3]
  assert [tuple(t) for t in gold[0].tolist()] == [(0, 3, 4), (1, 3, 4), (2, 4, 5)]
  assert finder.counters.skipped["regex_gold_spans_over_max_gold_spans"] == 3
  assert finder.counters.extra["regex_questions_gold_truncated"] == 1
  # Spans past the kept wordpieces of a block are dropped (counted).
  short = _finder(tok, block_len=[5, 8, 7, 8])
  gold, count = short.gold_spans([[r"\d+"]])
  assert sorted(map(tuple, gold[0, :count[0]].tolist())) == [(1, 6, 6), (2, 5, 5), (3, 6, 6)]
  assert short.counters.skipped["regex_span_past_kept_wordpieces"] == 1


def test_title_option_shifts_body_spans_and_drops_spans_across(tok):
  """Text `title\\nbody`, wordpieces `title [SEP] body`: body spans move by one."""
  titles = ["paris", ""]
  texts, ids, lens, sep_pos, _ = qa_pipeline.pretokenize_blocks_with_titles(
      tok, titles, TEXTS[:2], 16, tok.sep_id)
  assert texts == ["paris\nJohn was born in Paris in 1875.", TEXTS[1]]
  assert sep_pos.tolist() == [1, -1] and ids[0, 1] == tok.sep_id
  finder = _finder(tok, texts, block_len=lens, sep_pos=sep_pos)
  gold, count = finder.gold_spans([["Paris"], [r"paris\s+john"], ["Mary"]])
  assert sorted(map(tuple, gold[0, :count[0]].tolist())) == [(0, 0, 0), (0, 6, 6)]
  assert count[1] == 0 and finder.counters.skipped["regex_match_across_title_and_body"] == 1
  assert gold[2, 0].tolist() == [1, 0, 0]  # no title: no shift


def test_featurizer_regex_mode_and_padding(tok):
  featurizer = qa_pipeline.QAFeaturizer(tok, 4, 2, 2, gold_finder=_finder(tok, max_gold_spans=4))
  feats = featurizer.featurize([qa_pipeline.QAExample("where was john born?", ["Paris"]),
                                qa_pipeline.QAExample("who?", ["zebra"])])
  assert feats["gold_spans"].shape == (2, 4, 3) and feats["gold_count"].tolist() == [2, 0]
  assert not feats["answer_len"].any()  # patterns are not tokenized as answers
  padded = qa_pipeline.pad_features(feats, 4)
  assert (padded["gold_spans"][2:] == -1).all()
  assert padded["example_index"].tolist() == [0, 1, -1, -1]
