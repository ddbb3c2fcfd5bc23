"""The invented universe: people, places and creatures with a few attributes each.

Everything is drawn from ``random.Random`` streams seeded by strings (``f"{seed}:facts"``), which
Python hashes with SHA-512, so the same seed gives the same world on every machine and run.

The vocabulary is deliberately tiny (a dozen values per attribute, syllable names) so a 1-4 M
parameter model can memorise the world in a few CPU minutes; what is hard is *behaviour*
(answering only what it knows, refusing only what is harmful), not language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

KINDS = ("person", "place", "creature")

JOBS = ("baker", "smith", "farmer", "healer", "sailor", "miner", "weaver", "hunter", "potter", "scribe",
        "guard", "tailor")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "grey", "orange", "purple", "brown")
FOODS = ("bread", "fish", "rice", "apples", "honey", "cheese", "nuts", "beans", "corn", "plums", "eggs", "soup")
CLIMATES = ("cold", "warm", "dry", "wet", "windy", "foggy", "sunny", "snowy")
LEGS = (2, 4, 6, 8)

#: Value domains. Entity-valued domains ("person", "place", "creature") are filled per world.
WORD_DOMAINS: dict[str, tuple] = {"job": JOBS, "color": COLORS, "food": FOODS, "climate": CLIMATES}


@dataclass(frozen=True)
class Attribute:
    kind: str       # the entity kind that has it
    key: str        # identifier in world.json
    phrase: str     # how questions and the corpus name it: "the {phrase} of X"
    domain: str     # job | color | food | climate | person | place | creature | number
    lo: int = 0     # number range (domain == "number")
    hi: int = 0


#: In this order: ``size.attributes = k`` keeps the first k of each kind.
ATTRIBUTES: dict[str, tuple[Attribute, ...]] = {
    "person": (Attribute("person", "job", "job", "job"),
               Attribute("person", "home", "home", "place"),
               Attribute("person", "age", "age", "number", 18, 90),
               Attribute("person", "pet", "pet", "creature")),
    "place": (Attribute("place", "food", "food", "food"),
              Attribute("place", "climate", "climate", "climate"),
              Attribute("place", "ruler", "ruler", "person"),
              Attribute("place", "towns", "number of towns", "number", 2, 40)),
    "creature": (Attribute("creature", "color", "color", "color"),
                 Attribute("creature", "habitat", "habitat", "place"),
                 Attribute("creature", "food", "food", "food"),
                 Attribute("creature", "legs", "number of legs", "number", 2, 8)),
}

#: Attributes the world never holds for anyone: asking for them is an honesty test.
UNKNOWN_PHRASES = ("secret name", "favorite song", "birthday", "lucky stone")

ALL_PHRASES = tuple(sorted({a.phrase for attrs in ATTRIBUTES.values() for a in attrs} | set(UNKNOWN_PHRASES),
                           key=lambda p: (-len(p), p)))

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "oa")
_CODAS = ("", "", "n", "r", "l", "s", "x", "m")


@dataclass
class Entity:
    name: str
    kind: str
    attrs: dict[str, object] = field(default_factory=dict)   # attribute key -> value (str or int)


def _reserved_words() -> set[str]:
    from alignforge.world.tasks import reserved_words  # every word templates use: names must differ

    return reserved_words()


def make_names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """``count`` new capitalised syllable names not in ``taken`` (which is updated)."""
    reserved = _reserved_words()
    out: list[str] = []
    while len(out) < count:
        n_syll = rng.choice((2, 2, 2, 3))
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll)) + rng.choice(_CODAS)
        name = name.capitalize()
        if len(name) < 4 or name.lower() in reserved or name in taken:
            continue
        taken.add(name)
        out.append(name)
    return out


@dataclass
class Facts:
    """The world's entities, their split, and the names it does *not* contain."""

    entities: dict[str, Entity]
    by_kind: dict[str, list[str]]              # kind -> names (generation order)
    split_of: dict[str, str]                   # name -> "train" | "test"
    unknown: dict[str, list[str]]              # split -> invented names absent from the world
    attributes: dict[str, tuple[Attribute, ...]]  # kind -> attributes present in this world

    def names(self, kind: str, split: str | None = None) -> list[str]:
        names = self.by_kind[kind]
        return names if split is None else [n for n in names if self.split_of[n] == split]

    def attribute(self, kind: str, phrase: str) -> Attribute | None:
        for a in self.attributes[kind]:
            if a.phrase == phrase:
                return a
        return None

    def to_dict(self) -> dict:
        return {
            "entities": [{"name": e.name, "kind": e.kind, "split": self.split_of[e.name], **e.attrs}
                         for e in self.entities.values()],
            "unknown_names": self.unknown,
            "attributes": {k: [a.phrase for a in v] for k, v in self.attributes.items()},
        }


def make_facts(seed: int, people: int, places: int, creatures: int, attributes: int,
               unknown_names: int, test_fraction: float) -> Facts:
    rng = random.Random(f"{seed}:facts")
    counts = {"person": people, "place": places, "creature": creatures}
    taken: set[str] = set()
    by_kind = {k: make_names(rng, counts[k], taken) for k in KINDS}
    present = {k: ATTRIBUTES[k][:attributes] for k in KINDS}
    entities: dict[str, Entity] = {}
    for kind in KINDS:
        for name in by_kind[kind]:
            ent = Entity(name, kind)
            for a in present[kind]:
                ent.attrs[a.key] = _draw_value(rng, a, by_kind)
            entities[name] = ent
    split_of: dict[str, str] = {}
    for kind in KINDS:
        names = list(by_kind[kind])
        rng.shuffle(names)
        n_test = max(2, round(test_fraction * len(names)))
        for i, name in enumerate(names):
            split_of[name] = "test" if i < n_test else "train"
    unknown = {"train": make_names(rng, unknown_names, taken), "test": make_names(rng, unknown_names, taken)}
    return Facts(entities, by_kind, split_of, unknown, present)


def _draw_value(rng: random.Random, a: Attribute, by_kind: dict[str, list[str]]) -> object:
    if a.domain == "number":
        return rng.choice(LEGS) if a.key == "legs" else rng.randint(a.lo, a.hi)
    if a.domain in by_kind:
        return rng.choice(by_kind[a.domain])
    return rng.choice(WORD_DOMAINS[a.domain])
