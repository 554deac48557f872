"""The entity graph of the default knowledge world: who/what exists and how it is related.

All years are four-digit (1000-2020) so date taggers for salient spans recognise them.
Kinds and attributes (values that name another entity hold its integer id):
  country: founded (year), capital (city), rivers [river]
  river:   country, length_km
  city:    country, river, founded (year), population
  person:  gender, birth (y, m, d), birthplace (city), occupation, death (year|None),
           spouse (person|None), married (year|None), employer (organization|None)
  organization: kind, field, founder (person), founded (year), city
  work:    kind, author (person), year
All randomness comes from one `random.Random(seed)`, consumed in a fixed order, so a world is a pure
function of (num_entities, seed).
"""
import dataclasses
import math
import random
from typing import Any, Dict, List, Optional, Sequence

import realm_tf2  # noqa: F401
from realm_tf2.world import names as names_lib

MIN_ENTITIES = 10
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
OCCUPATIONS = ("weaver", "astronomer", "cartographer", "glassmaker", "poet", "shipwright", "physician",
               "composer", "painter", "merchant", "botanist", "architect", "clockmaker", "jurist",
               "engraver", "alchemist", "bookbinder", "mathematician", "sculptor", "navigator")
ORG_KINDS = ("Guild", "Company", "Academy", "Society", "Bank", "Institute", "Press", "Foundry",
             "Brotherhood", "Observatory")
FIELDS = ("glassmaking", "astronomy", "trade", "medicine", "printing", "shipbuilding", "music",
          "cartography", "banking", "botany", "clockmaking", "law")
# kind -> (creator verb past tense, creator question verb)
WORK_KINDS = {"novel": "wrote", "poem": "wrote", "treatise": "wrote", "play": "wrote",
              "opera": "composed", "symphony": "composed", "painting": "painted", "fresco": "painted"}
WORK_NOUNS = ("Lament", "Chronicle", "Garden", "Tower", "Song", "Winter", "Harvest", "Lantern",
              "Voyage", "Mirror", "Orchard", "Bell")


@dataclasses.dataclass
class Entity:
  """One entity. `name` is unique in the world; `attrs` as in the module docstring."""
  id: int
  kind: str
  name: str
  attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def title(self) -> str:
    """Title of its knowledge document."""
    return self.name


@dataclasses.dataclass
class World:
  """All entities (`entities[i].id == i`) plus reverse indices used by the renderers."""
  seed: int
  entities: List[Entity]
  born_in: Dict[int, List[int]]        # city -> people born there (ascending id)
  cities_of: Dict[int, List[int]]      # country -> cities
  cities_on: Dict[int, List[int]]      # river -> cities
  orgs_in: Dict[int, List[int]]        # city -> organisations based there
  founded_by: Dict[int, List[int]]     # person -> organisations founded
  works_of: Dict[int, List[int]]       # person -> works
  members_of: Dict[int, List[int]]     # organisation -> employees
  country_ids: List[int]               # ids of the countries, ascending

  def of_kind(self, kind: str) -> List[Entity]:
    return [e for e in self.entities if e.kind == kind]

  def name(self, entity_id: Optional[int]) -> Optional[str]:
    return None if entity_id is None else self.entities[entity_id].name

  def counts(self) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for e in self.entities:
      out[e.kind] = out.get(e.kind, 0) + 1
    return dict(sorted(out.items()))


def plan_counts(num_entities: int) -> Dict[str, int]:
  """How many entities of each kind a world of `num_entities` has (sums to num_entities).

  Countries grow like sqrt(N)/2, so at 100k entities a country has ~140 cities and its document
  (which lists them) spans several 288-wordpiece blocks, while the default few-hundred world stays small.
  """
  if num_entities < MIN_ENTITIES:
    raise ValueError(f"num_entities must be >= {MIN_ENTITIES}, got {num_entities}")
  countries = max(2, round(math.sqrt(num_entities) / 2))
  rivers = countries * (2 if num_entities >= 50 else 1)
  cities = max(countries, round(0.22 * num_entities))
  orgs = max(1, round(0.13 * num_entities))
  works = max(1, round(0.12 * num_entities))
  people = num_entities - countries - rivers - cities - orgs - works
  if people < 2:
    raise ValueError(f"num_entities={num_entities} too small for the world plan")
  return {"country": countries, "river": rivers, "city": cities, "person": people,
          "organization": orgs, "work": works}


def build_world(num_entities: int, seed: int, reserved_words: Sequence[str] = ()) -> World:
  """Builds the entity graph deterministically from (num_entities, seed).

  Args:
    num_entities: total entities (>= MIN_ENTITIES).
    seed: RNG seed.
    reserved_words: words no invented name may equal (the renderers pass their template vocabulary).
  """
  plan = plan_counts(num_entities)
  rng = random.Random(seed)
  nf = names_lib.NameFactory(rng, reserved_words)
  ents: List[Entity] = []

  def add(entity_kind, name, **attrs):
    e = Entity(len(ents), entity_kind, name, dict(attrs))
    ents.append(e)
    return e

  countries = [add("country", nf.country(), founded=rng.randint(1000, 1500), rivers=[])
               for _ in range(plan["country"])]
  rivers = []
  for i in range(plan["river"]):
    country = countries[i % len(countries)]
    r = add("river", f"{nf.word(2, 2)} River", country=country.id, length_km=rng.randint(40, 2400))
    country.attrs["rivers"].append(r.id)
    rivers.append(r)
  cities = []
  for i in range(plan["city"]):
    # The first city of each country is its capital, so every country has one.
    country = countries[i] if i < len(countries) else rng.choice(countries)
    river = ents[rng.choice(country.attrs["rivers"])]
    c = add("city", nf.place(), country=country.id, river=river.id,
            founded=rng.randint(max(1000, country.attrs["founded"] - 300), 1750),
            population=rng.randint(2, 900) * 1000)
    if i < len(countries):
      country.attrs["capital"] = c.id
    cities.append(c)
  people = []
  for _ in range(plan["person"]):
    year = rng.randint(1700, 1960)
    death = year + rng.randint(35, 95) if rng.random() < 0.6 else None
    if death is not None and death > 2020:
      death = None
    people.append(add("person", nf.person(), gender=rng.choice(("female", "male")),
                      birth=(year, rng.randint(1, 12), rng.randint(1, 28)),
                      birthplace=rng.choice(cities).id, occupation=rng.choice(OCCUPATIONS),
                      death=death, spouse=None, married=None, employer=None))
  # Marriages: pair a shuffled third of the people.
  order = list(range(len(people)))
  rng.shuffle(order)
  for a, b in zip(order[0:len(order) // 3:2], order[1:len(order) // 3:2]):
    pa, pb = people[a], people[b]
    year = max(pa.attrs["birth"][0], pb.attrs["birth"][0]) + rng.randint(19, 35)
    ends = [d for d in (pa.attrs["death"], pb.attrs["death"]) if d is not None]
    if ends and year >= min(ends):
      continue  # would marry after a death: leave both unmarried
    pa.attrs.update(spouse=pb.id, married=year)
    pb.attrs.update(spouse=pa.id, married=year)
  orgs = []
  for _ in range(plan["organization"]):
    kind = rng.choice(ORG_KINDS)
    city = rng.choice(cities)
    # An invented word, not the city's name: "Where is the Quilon Guild based?" would leak the answer.
    name = f"{nf.word(2, 3)} {kind}"
    founder = rng.choice(people)
    orgs.append(add("organization", name, kind=kind, field=rng.choice(FIELDS), founder=founder.id,
                    founded=founder.attrs["birth"][0] + rng.randint(20, 34), city=city.id))
  for p in people:
    if rng.random() < 0.5:
      p.attrs["employer"] = rng.choice(orgs).id
  for _ in range(plan["work"]):
    kind = rng.choice(sorted(WORK_KINDS))
    author = rng.choice(people)
    latest = author.attrs["death"] if author.attrs["death"] is not None else author.attrs["birth"][0] + 70
    year = rng.randint(author.attrs["birth"][0] + 18, max(author.attrs["birth"][0] + 18, latest - 1))
    noun = rng.choice(WORK_NOUNS)
    title = f"The {noun} of {nf.word(2, 3)}" if rng.random() < 0.6 else f"{nf.word(2, 3)} {noun}"
    add("work", title, kind=kind, author=author.id, year=year)

  world = World(seed=seed, entities=ents, born_in={}, cities_of={}, cities_on={}, orgs_in={},
                founded_by={}, works_of={}, members_of={}, country_ids=[c.id for c in countries])
  for e in ents:  # ascending id order -> deterministic lists
    a = e.attrs
    if e.kind == "city":
      world.cities_of.setdefault(a["country"], []).append(e.id)
      world.cities_on.setdefault(a["river"], []).append(e.id)
    elif e.kind == "person":
      world.born_in.setdefault(a["birthplace"], []).append(e.id)
      if a["employer"] is not None:
        world.members_of.setdefault(a["employer"], []).append(e.id)
    elif e.kind == "organization":
      world.orgs_in.setdefault(a["city"], []).append(e.id)
      world.founded_by.setdefault(a["founder"], []).append(e.id)
    elif e.kind == "work":
      world.works_of.setdefault(a["author"], []).append(e.id)
  return world
