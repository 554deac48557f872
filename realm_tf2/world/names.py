"""Invented names built from a small syllable inventory.

The world must be unknowable to a pre-trained model (every answer has to be retrieved), so names are
syllable compounds rather than real words; and it must tokenize well with a WordPiece vocab learned from
it, which a small inventory guarantees: every name is a concatenation of at most ~50 distinct syllables,
so a few hundred wordpieces cover all names. No library generates pronounceable pseudo-words with these
guarantees (uniqueness, no collision with the English words of the templates, determinism by seed),
hence hand-written.
"""
import random
from typing import Callable, Iterable, Optional, Set

import realm_tf2  # noqa: F401

# 48 syllables with k/v/z/q/th/x clusters so that compounds do not form English words.
SYLLABLES = (
    "va", "ren", "ko", "dra", "lis", "quil", "zor", "vath", "mel", "dun", "kai", "thys",
    "bel", "gor", "vek", "ul", "nar", "sil", "dor", "eth", "mir", "zu", "tal", "vin",
    "esk", "rim", "tho", "lae", "quen", "dri", "mox", "sar", "vel", "ix", "yr", "oth",
    "pel", "gra", "nis", "zan", "kor", "tev", "lyn", "brak", "fen", "hal", "jor", "wyn",
)
PLACE_ENDINGS = ("a", "on", "ar", "eth", "ovo", "isk", "ane", "ur")
COUNTRY_ENDINGS = ("ia", "esh", "mar", "or", "istan", "elle")


class NameFactory:
  """Draws unique invented names from `rng`.

  Args:
    rng: a `random.Random`; all randomness comes from it, so names are deterministic by seed.
    reserved: lowercase words names must never equal (e.g. every word of the sentence templates).
  """

  def __init__(self, rng: random.Random, reserved: Iterable[str] = ()):
    self._rng = rng
    self._reserved: Set[str] = {w.lower() for w in reserved}
    self._used: Set[str] = set()   # membership only; never iterated (set order is not deterministic)

  def _word(self, min_syl: int, max_syl: int, endings: Optional[tuple] = None) -> str:
    n = self._rng.randint(min_syl, max_syl)
    w = "".join(self._rng.choice(SYLLABLES) for _ in range(n))
    if endings:
      w += self._rng.choice(endings)
    return w.capitalize()

  def _unique(self, make: Callable[[], str], key: Callable[[str], str] = str.lower) -> str:
    for _ in range(10_000):
      name = make()
      k = key(name)
      words_ok = all(part.lower() not in self._reserved for part in name.split())
      if k not in self._used and words_ok:
        self._used.add(k)
        return name
    raise RuntimeError("NameFactory: name space exhausted; widen SYLLABLES")

  def word(self, min_syl: int = 2, max_syl: int = 3) -> str:
    """A unique invented word, e.g. 'Zorvath' (also used for work/organisation names)."""
    return self._unique(lambda: self._word(min_syl, max_syl))

  def person(self) -> str:
    """A unique 'Given Family' name, e.g. 'Varenko Dralis'."""
    return self._unique(lambda: f"{self._word(2, 2)} {self._word(2, 3)}")

  def place(self) -> str:
    """A unique single-word place name with a place ending, e.g. 'Quilvinon'.

    At least two syllables before the ending: short compounds are where English words hide ("tal"+"on").
    """
    return self._unique(lambda: self._word(2, 3, PLACE_ENDINGS))

  def country(self) -> str:
    """A unique country name with a country ending, e.g. 'Ostrelia'."""
    return self._unique(lambda: self._word(1, 2, COUNTRY_ENDINGS))


def demonym(country: str) -> str:
  """Adjective/people name of a country: 'Ostrelia' -> 'Ostrelian', 'Varnesh' -> 'Varneshi'."""
  if country.endswith("ia"):
    return country + "n"
  if country.endswith("istan"):
    return country[:-5] + "i"
  if country[-1] in "aeiou":
    return country + "n"
  if country.endswith("sh"):
    return country + "i"
  return country + "ian"


def indefinite_article(word: str) -> str:
  """'a' or 'an' by the first letter (good enough for invented names and the occupation list)."""
  return "an" if word[:1].lower() in "aeiou" else "a"
