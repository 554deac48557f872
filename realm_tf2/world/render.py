"""Text of the world: encyclopedic knowledge documents, news-style pre-training text, QA pairs.

The three renderings use DISJOINT sentence templates, so the pre-training corpus states the same facts
as the knowledge corpus with different wording: a masked name/date/place in a pre-training sentence can
only be filled by retrieving the knowledge document that states it (REALM's salient-span setting).
Every question's answers are rendered verbatim into the knowledge document of the entity asked about.
Each entity gets its own RNG, seeded by (world seed, purpose, entity id), so output is deterministic and
can be streamed entity by entity.
"""
import random
import re
from typing import Dict, Iterator, List, Sequence, Tuple

import realm_tf2  # noqa: F401
from realm_tf2.world import entities as ent_lib
from realm_tf2.world import names as names_lib
from realm_tf2.world.entities import Entity, World

MAX_LISTED = 8          # people/members listed in a city/organisation document
NEWSPAPER_KINDS = ("Herald", "Courier", "Gazette", "Dispatch", "Messenger")

# ---------------------------------------------------------------------------------------------------
# Knowledge-document templates (encyclopedic). Placeholders are filled by `_fmt`.
K_PERSON_INTRO = (
    "{N} (born {D} in {B}) {is} {a_dem} {occ}.",
    "{N} {is} {a_dem} {occ}, born on {D} in {B}.",
    "Born in {B}, {C}, on {D}, {N} {is} known as {a_occ}.",
)
K_PERSON_DEATH = ("{P} died in {Y}.", "{N} died in {Y}.")
K_PERSON_EMPLOYER = ("{P} worked for the {O}.", "{P} was a member of the {O}.")
K_PERSON_SPOUSE = ("In {Y}, {p} married {S}.", "{P} was married to {S} from {Y}.")
K_PERSON_FOUNDED = ("{P} founded the {O} in {Y}.",)
K_PERSON_WORK = ("{P} {verb} the {kind} {T} in {Y}.",)
K_CITY_INTRO = ("{X} is a city in {C}, on the {R}.", "{X} is a town of {C} on the banks of the {R}.")
K_CITY_CAPITAL = ("It is the capital of {C}.", "{X} is the capital city of {C}.")
K_CITY_FOUNDED = ("{X} was founded in {Y}.", "The city was founded in {Y}.")
K_CITY_POPULATION = ("It has a population of about {pop}.",)
K_CITY_PEOPLE = ("Notable people born in {X} include {list}.",)
K_CITY_ORGS = ("{X} is home to {list}.",)
K_COUNTRY_CAPITAL = ("{X} is a country whose capital is {Cap}.", "The capital of {X} is {Cap}.")
K_COUNTRY_FOUNDED = ("It was founded in {Y}.", "{X} was established in {Y}.")
K_COUNTRY_DEMONYM = ("Its people are called {dem} people.",)
K_COUNTRY_RIVERS = ("Rivers of {X} include {list}.",)
K_COUNTRY_CITIES = ("Cities of {X} include {list}.",)
K_RIVER_INTRO = ("The {X} is a river in {C}.", "The {X} flows through {C}.")
K_RIVER_LENGTH = ("It is {L} kilometres long.", "The river is {L} kilometres long.")
K_RIVER_CITIES = ("Cities on the {X} include {list}.",)
K_ORG_INTRO = ("The {X} is {a_field} {kindl} based in {City}.",
               "The {X} is {a_field} {kindl} with its seat in {City}.")
K_ORG_FOUNDED = ("It was founded in {Y} by {F}.", "{F} founded the {X} in {Y}.")
K_ORG_MEMBERS = ("Its members have included {list}.",)
K_WORK_INTRO = ("{X} is {a_kind} by the {dem} {occ} {A}.", "{X} is {a_kind} by {A}.")
K_WORK_YEAR = ("{A} {verb} it in {Y}.", "It was completed in {Y}.")

# Pre-training templates (news style, cross-entity). None of these equals a knowledge sentence.
P_PERSON = {
    "birth": ("In {y}, {N} was born in {B}, a town of {C}.",
              "Parish records from {B} list the birth of {N} on {Mdy}.",
              "{N} came into the world in {B} on {Mdy}."),
    # The birthplace keeps a masked name recoverable: "[MASK] of Quilvinon earned a living as a poet."
    "occupation": ("{N} of {B} earned a living as {a_occ}.",
                   "Colleagues in {B} remember {N} as a gifted {occ}."),
    "employer": ("When {N} joined the {O}, it was still led by its founder {F}.",
                 "{N} spent many years with the {O} in {City}."),
    "spouse": ("{N} and {S} were wed in {Y}.", "The marriage of {N} to {S} took place in {Y}."),
    "death": ("The death of {N} in {Y} was mourned across {C}.", "{N} passed away in {Y}."),
    "work": ("Critics still praise {T}, the {kind} that {N} finished in {Y}.",
             "A new edition of {T} by {N}, first released in {Y}, is on sale."),
    "founded": ("Together with friends from {City}, {N} started the {O} in {Y}.",),
}
P_CITY = {
    "place": ("Travellers reaching {X} by the {R} find themselves in {C}.",
              "Barges on the {R} unload their cargo at {X} in {C}."),
    "capital": ("Delegates met in {X}, the seat of government of {C}.",),
    "founded": ("Settlers established {X} in {Y}.", "The first houses of {X} were built in {Y}."),
}
P_COUNTRY = {
    "capital": ("The government of {X} sits in {Cap}.", "Envoys travelled to {Cap} to address the rulers of {X}."),
    "founded": ("{X} dates its statehood to {Y}.", "Historians trace the birth of {X} to {Y}."),
}
P_RIVER = {
    "country": ("Fishermen along the {X} sell their catch in markets all over {C}.",),
    "length": ("Boats on the {X} can travel {L} kilometres from its source to its mouth.",),
}
P_ORG = {
    "founded": ("{F} started the {X} in {Y} with a handful of friends.",
                "Back in {Y}, {F} set up the {X}."),
    "city": ("Members of the {X} gathered at their hall in {City} this week.",
             "The {X} opened new rooms in {City}."),
}
P_WORK = {
    "author": ("Audiences in {C} still admire {X}, created by {A} in {Y}.",
               "The {kind} {X} by {A} dates from {Y}."),
}

# Question templates: (template, answer key).
Q_PERSON_BIRTH = (("When was {N} born?", "date"), ("In which year was {N} born?", "year"))
Q_PERSON_BIRTHPLACE = ("Where was {N} born?", "In which city was {N} born?")
Q_PERSON_OCCUPATION = ("What was the occupation of {N}?", "What did {N} do for a living?")
Q_PERSON_DEATH = ("In which year did {N} die?", "When did {N} die?")
Q_PERSON_SPOUSE = ("Who did {N} marry?", "Who was the spouse of {N}?")
Q_PERSON_EMPLOYER = ("Which organisation was {N} associated with?",)
Q_CITY_COUNTRY = ("Which country is {X} in?", "In which country is {X}?")
Q_CITY_RIVER = ("On which river does {X} lie?", "Which river flows through {X}?")
Q_CITY_FOUNDED = ("When was {X} founded?", "In which year was {X} founded?")
Q_COUNTRY_CAPITAL = ("What is the capital of {X}?", "Which city is the capital of {X}?")
Q_COUNTRY_FOUNDED = ("When was {X} founded?", "In which year was {X} established?")
Q_RIVER_COUNTRY = ("Through which country does the {X} flow?", "In which country is the {X}?")
Q_RIVER_LENGTH = ("How long is the {X}?",)
Q_ORG_FOUNDER = ("Who founded the {X}?",)
Q_ORG_FOUNDED = ("When was the {X} founded?", "In which year was the {X} founded?")
Q_ORG_CITY = ("In which city is the {X} based?", "Where is the {X} based?")
Q_WORK_AUTHOR = ("Who {verb} {X}?",)
Q_WORK_YEAR = ("In which year was {X} completed?", "When was {X} completed?")


def _all_templates() -> List[str]:
  out: List[str] = []
  for name, value in globals().items():
    if name[:2] in ("K_", "P_", "Q_"):
      vals = value.values() if isinstance(value, dict) else [value]
      for v in vals:
        for t in v:
          out.append(t[0] if isinstance(t, tuple) else t)
  return out


def template_vocabulary() -> List[str]:
  """Sorted lowercase English words used by templates and attribute lists; names never equal these."""
  words = set()
  for t in _all_templates() + list(NEWSPAPER_KINDS):
    words.update(w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", " ", t)))
  for seq in (ent_lib.OCCUPATIONS, ent_lib.ORG_KINDS, ent_lib.FIELDS, ent_lib.WORK_NOUNS, ent_lib.MONTHS,
              tuple(ent_lib.WORK_KINDS), tuple(ent_lib.WORK_KINDS.values())):
    words.update(w.lower() for w in seq)
  words.update(("the", "of", "river", "he", "she", "his", "her", "people"))
  return sorted(words)


def _rng(world: World, purpose: str, entity_id: int) -> random.Random:
  # A str seed is hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
  return random.Random(f"{world.seed}:{purpose}:{entity_id}")


def date_dmy(birth: Tuple[int, int, int]) -> str:
  """(1875, 6, 12) -> '12 June 1875' (knowledge documents, answers)."""
  y, m, d = birth
  return f"{d} {ent_lib.MONTHS[m - 1]} {y}"


def date_mdy(birth: Tuple[int, int, int]) -> str:
  """(1875, 6, 12) -> 'June 12, 1875' (pre-training text uses the other format)."""
  y, m, d = birth
  return f"{ent_lib.MONTHS[m - 1]} {d}, {y}"


def join_list(items: Sequence[str]) -> str:
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def _a(phrase: str) -> str:
  return f"{names_lib.indefinite_article(phrase)} {phrase}"


def _cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def _fmt(template: str, **kw) -> str:
  return _cap(template.format(**kw))


def _person_fields(world: World, p: Entity) -> Dict[str, str]:
  a = p.attrs
  city = world.entities[a["birthplace"]]
  country = world.entities[city.attrs["country"]]
  dem = names_lib.demonym(country.name)
  return dict(N=p.name, D=date_dmy(a["birth"]), Mdy=date_mdy(a["birth"]), y=str(a["birth"][0]),
              B=city.name, C=country.name, occ=a["occupation"], a_occ=_a(a["occupation"]),
              a_dem=_a(dem), dem=dem, P="She" if a["gender"] == "female" else "He",
              p="she" if a["gender"] == "female" else "he",
              **{"is": "was" if a["death"] is not None else "is"})


def knowledge_document(world: World, e: Entity) -> Dict[str, str]:
  """{"title", "body"} encyclopedic document of one entity, stating every fact asked about it."""
  rng = _rng(world, "knowledge", e.id)
  pick = rng.choice
  ents, a = world.entities, e.attrs
  sents: List[str] = []
  if e.kind == "person":
    f = _person_fields(world, e)
    sents.append(_fmt(pick(K_PERSON_INTRO), **f))
    if a["death"] is not None:
      sents.append(_fmt(pick(K_PERSON_DEATH), Y=a["death"], **f))
    if a["spouse"] is not None:
      sents.append(_fmt(pick(K_PERSON_SPOUSE), Y=a["married"], S=world.name(a["spouse"]), **f))
    if a["employer"] is not None:
      sents.append(_fmt(pick(K_PERSON_EMPLOYER), O=world.name(a["employer"]), **f))
    for oid in world.founded_by.get(e.id, []):
      sents.append(_fmt(pick(K_PERSON_FOUNDED), O=ents[oid].name, Y=ents[oid].attrs["founded"], **f))
    for wid in world.works_of.get(e.id, []):
      w = ents[wid]
      sents.append(_fmt(pick(K_PERSON_WORK), verb=ent_lib.WORK_KINDS[w.attrs["kind"]], kind=w.attrs["kind"],
                        T=w.name, Y=w.attrs["year"], **f))
  elif e.kind == "city":
    f = dict(X=e.name, C=world.name(a["country"]), R=world.name(a["river"]))
    sents.append(_fmt(pick(K_CITY_INTRO), **f))
    if ents[a["country"]].attrs.get("capital") == e.id:
      sents.append(_fmt(pick(K_CITY_CAPITAL), **f))
    sents.append(_fmt(pick(K_CITY_FOUNDED), Y=a["founded"], **f))
    sents.append(_fmt(pick(K_CITY_POPULATION), pop=f"{a['population']:,}", **f))
    born = world.born_in.get(e.id, [])[:MAX_LISTED]
    if born:
      sents.append(_fmt(pick(K_CITY_PEOPLE), list=join_list([ents[i].name for i in born]), **f))
    orgs = world.orgs_in.get(e.id, [])
    if orgs:
      sents.append(_fmt(pick(K_CITY_ORGS), list=join_list([f"the {ents[i].name}" for i in orgs]), **f))
  elif e.kind == "country":
    f = dict(X=e.name, Cap=world.name(a["capital"]), dem=names_lib.demonym(e.name))
    sents.append(_fmt(pick(K_COUNTRY_CAPITAL), **f))
    sents.append(_fmt(pick(K_COUNTRY_FOUNDED), Y=a["founded"], **f))
    sents.append(_fmt(pick(K_COUNTRY_DEMONYM), **f))
    sents.append(_fmt(pick(K_COUNTRY_RIVERS), list=join_list([f"the {ents[i].name}" for i in a["rivers"]]), **f))
    # Every city with its founding year: at 100k entities this spans several 288-wordpiece blocks.
    cities = [f"{ents[i].name} (founded {ents[i].attrs['founded']})" for i in world.cities_of.get(e.id, [])]
    sents.append(_fmt(pick(K_COUNTRY_CITIES), list=join_list(cities), **f))
  elif e.kind == "river":
    f = dict(X=e.name, C=world.name(a["country"]), L=a["length_km"])
    sents.append(_fmt(pick(K_RIVER_INTRO), **f))
    sents.append(_fmt(pick(K_RIVER_LENGTH), **f))
    cities = world.cities_on.get(e.id, [])
    if cities:
      sents.append(_fmt(pick(K_RIVER_CITIES), list=join_list([ents[i].name for i in cities]), **f))
  elif e.kind == "organization":
    f = dict(X=e.name, City=world.name(a["city"]), F=world.name(a["founder"]), Y=a["founded"],
             a_field=_a(a["field"]), kindl=a["kind"].lower())
    sents.append(_fmt(pick(K_ORG_INTRO), **f))
    sents.append(_fmt(pick(K_ORG_FOUNDED), **f))
    members = world.members_of.get(e.id, [])[:MAX_LISTED]
    if members:
      sents.append(_fmt(pick(K_ORG_MEMBERS), list=join_list([ents[i].name for i in members]), **f))
  elif e.kind == "work":
    author = ents[a["author"]]
    pf = _person_fields(world, author)
    f = dict(X=e.name, A=author.name, a_kind=_a(a["kind"]), dem=pf["dem"], occ=pf["occ"],
             verb=ent_lib.WORK_KINDS[a["kind"]], Y=a["year"])
    sents.append(_fmt(pick(K_WORK_INTRO), **f))
    sents.append(_fmt(pick(K_WORK_YEAR), **f))
  else:
    raise ValueError(f"unknown entity kind {e.kind!r}")
  return {"title": e.title, "body": " ".join(sents)}


def pretrain_article(world: World, e: Entity, article_index: int) -> Dict[str, str]:
  """{"title", "text"}: a news-style article restating `e`'s facts (and its neighbours') in new words."""
  rng = _rng(world, "pretrain", e.id)
  pick = rng.choice
  ents, a = world.entities, e.attrs
  sents: List[str] = []
  if e.kind == "person":
    f = _person_fields(world, e)
    sents.append(_fmt(pick(P_PERSON["birth"]), **f))
    sents.append(_fmt(pick(P_PERSON["occupation"]), **f))
    if a["employer"] is not None:
      org = ents[a["employer"]]
      employer_templates = P_PERSON["employer"] if org.attrs["founder"] != e.id else P_PERSON["employer"][1:]
      sents.append(_fmt(pick(employer_templates), O=org.name, F=world.name(org.attrs["founder"]),
                        City=world.name(org.attrs["city"]), **f))
    if a["spouse"] is not None:
      sents.append(_fmt(pick(P_PERSON["spouse"]), S=world.name(a["spouse"]), Y=a["married"], **f))
    if a["death"] is not None:
      sents.append(_fmt(pick(P_PERSON["death"]), Y=a["death"], **f))
    for wid in world.works_of.get(e.id, []):
      w = ents[wid]
      sents.append(_fmt(pick(P_PERSON["work"]), T=w.name, kind=w.attrs["kind"], Y=w.attrs["year"], **f))
    for oid in world.founded_by.get(e.id, []):
      o = ents[oid]
      sents.append(_fmt(pick(P_PERSON["founded"]), O=o.name, Y=o.attrs["founded"],
                        City=world.name(o.attrs["city"]), **f))
  elif e.kind == "city":
    f = dict(X=e.name, C=world.name(a["country"]), R=world.name(a["river"]), Y=a["founded"])
    sents.append(_fmt(pick(P_CITY["place"]), **f))
    if ents[a["country"]].attrs.get("capital") == e.id:
      sents.append(_fmt(pick(P_CITY["capital"]), **f))
    sents.append(_fmt(pick(P_CITY["founded"]), **f))
  elif e.kind == "country":
    f = dict(X=e.name, Cap=world.name(a["capital"]), Y=a["founded"])
    sents.append(_fmt(pick(P_COUNTRY["capital"]), **f))
    sents.append(_fmt(pick(P_COUNTRY["founded"]), **f))
  elif e.kind == "river":
    f = dict(X=e.name, C=world.name(a["country"]), L=a["length_km"])
    sents.append(_fmt(pick(P_RIVER["country"]), **f))
    sents.append(_fmt(pick(P_RIVER["length"]), **f))
  elif e.kind == "organization":
    f = dict(X=e.name, F=world.name(a["founder"]), Y=a["founded"], City=world.name(a["city"]))
    sents.append(_fmt(pick(P_ORG["founded"]), **f))
    sents.append(_fmt(pick(P_ORG["city"]), **f))
  elif e.kind == "work":
    author = ents[a["author"]]
    f = dict(X=e.name, A=author.name, Y=a["year"], kind=a["kind"], C=_person_fields(world, author)["C"])
    sents.append(_fmt(pick(P_WORK["author"]), **f))
  else:
    raise ValueError(f"unknown entity kind {e.kind!r}")
  # The masthead names a country of the world (deterministic), not the entity: titles give no hint.
  paper_country = ents[world.country_ids[article_index % len(world.country_ids)]].name
  title = f"The {paper_country} {pick(NEWSPAPER_KINDS)}, issue {article_index + 1}"
  return {"title": title, "text": " ".join(sents)}


def questions(world: World, e: Entity) -> Iterator[Tuple[str, str, List[str]]]:
  """Yields (relation, question, answers) for `e`; every answer occurs in its knowledge document."""
  rng = _rng(world, "questions", e.id)
  pick = rng.choice
  a = e.attrs
  if e.kind == "person":
    t, key = pick(Q_PERSON_BIRTH)
    yield "birth", t.format(N=e.name), [date_dmy(a["birth"]) if key == "date" else str(a["birth"][0])]
    yield "birthplace", pick(Q_PERSON_BIRTHPLACE).format(N=e.name), [world.name(a["birthplace"])]
    yield "occupation", pick(Q_PERSON_OCCUPATION).format(N=e.name), [a["occupation"]]
    if a["death"] is not None:
      yield "death", pick(Q_PERSON_DEATH).format(N=e.name), [str(a["death"])]
    if a["spouse"] is not None:
      yield "spouse", pick(Q_PERSON_SPOUSE).format(N=e.name), [world.name(a["spouse"])]
    if a["employer"] is not None:
      yield "employer", pick(Q_PERSON_EMPLOYER).format(N=e.name), [world.name(a["employer"])]
  elif e.kind == "city":
    river = world.name(a["river"])
    yield "country", pick(Q_CITY_COUNTRY).format(X=e.name), [world.name(a["country"])]
    yield "river", pick(Q_CITY_RIVER).format(X=e.name), [river, river[:-len(" River")]]
    yield "founded", pick(Q_CITY_FOUNDED).format(X=e.name), [str(a["founded"])]
  elif e.kind == "country":
    yield "capital", pick(Q_COUNTRY_CAPITAL).format(X=e.name), [world.name(a["capital"])]
    yield "founded", pick(Q_COUNTRY_FOUNDED).format(X=e.name), [str(a["founded"])]
  elif e.kind == "river":
    yield "country", pick(Q_RIVER_COUNTRY).format(X=e.name), [world.name(a["country"])]
    yield "length", pick(Q_RIVER_LENGTH).format(X=e.name), [f"{a['length_km']} kilometres"]
  elif e.kind == "organization":
    yield "founder", pick(Q_ORG_FOUNDER).format(X=e.name), [world.name(a["founder"])]
    yield "founded", pick(Q_ORG_FOUNDED).format(X=e.name), [str(a["founded"])]
    yield "city", pick(Q_ORG_CITY).format(X=e.name), [world.name(a["city"])]
  elif e.kind == "work":
    verb = ent_lib.WORK_KINDS[a["kind"]]
    yield "author", pick(Q_WORK_AUTHOR).format(X=e.name, verb=verb), [world.name(a["author"])]
    yield "year", pick(Q_WORK_YEAR).format(X=e.name), [str(a["year"])]
  else:
    raise ValueError(f"unknown entity kind {e.kind!r}")
