"""Reference policies (callables ``prompt -> response``) to calibrate rewards and evaluations.

* ``oracle``: the ideal answer (the gold ceiling; "share of the SFT→oracle gap closed" uses it);
* ``demonstrator``: the imperfect human writer (what SFT imitates);
* ``random``: random words of the world's vocabulary (the floor);
* ``noisy``: a stochastic, sloppier demonstrator that sometimes pads (realistic *candidates* for
  annotator-agreement measurements, standing in for samples of a partly trained policy);
* ``hedger`` / ``refuser``: always "I do not know that." / always the refusal — they know
  nothing of the world, so they need no oracle; as labelled *candidates* they put the two safe
  answers beside real ones on every kind of prompt, so a reward model sees that "I do not know"
  loses to the true value of a known entity and a refusal loses to help on a benign request (the
  over-hedging and over-refusal an RL policy finds otherwise, where the labels never compared them);
* :func:`padded`: wraps any policy and appends polite filler (the length hack).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable

from alignforge.config import ConfigError
from alignforge.data.records import Prompt, prompt_text
from alignforge.world.corpus import FILLER
from alignforge.world.demonstrator import DONT_KNOW_STYLES, Demonstrator
from alignforge.world.tasks import REFUSAL

Policy = Callable[[Prompt], str]


def oracle(world) -> Policy:
    return world.oracle


def demonstrator(world, seed: int = 0) -> Policy:
    return Demonstrator(world, seed=seed)


def random_policy(world, seed: int = 0) -> Policy:
    return RandomPolicy(world, seed)


def vocabulary(world) -> list[str]:
    """The sorted words of the world's corpus and prompts (what the random policy draws from)."""
    words: set[str] = set()
    for text in world.corpus[:2000]:
        words.update(re.findall(r"[A-Za-z]+|\d+", text))
    for rec in world.prompts.get("train", [])[:2000]:
        words.update(re.findall(r"[A-Za-z]+|\d+", prompt_text(rec.prompt)))
    if not words:  # a world built without its corpus: names and values only
        words.update(world.facts.entities)
    return sorted(words)


class RandomPolicy:
    """3-20 uniformly random vocabulary words; deterministic in ``(seed, prompt)``."""

    def __init__(self, world, seed: int = 0):
        self.words = vocabulary(world)
        self.seed = seed

    def __call__(self, prompt: Prompt) -> str:
        rng = random.Random(f"{self.seed}:random:{prompt_text(prompt)}")
        return " ".join(rng.choice(self.words) for _ in range(rng.randint(3, 20))) + "."


class NoisyPolicy:
    """A sloppier demonstrator, sampled afresh on each call (stochastic, like a sampled policy)."""

    def __init__(self, world, seed: int = 0, mistakes: float = 2.0, pad: float = 0.25):
        cfg = world.cfg.demonstrator
        scaled = {f.name: min(0.9, getattr(cfg, f.name) * mistakes) for f in dataclasses.fields(cfg)}
        self.demo = Demonstrator(world, dataclasses.replace(cfg, **scaled), seed=seed)
        self.rng = random.Random(f"{seed}:noisy")
        self.pad = pad

    def __call__(self, prompt: Prompt) -> str:
        text = self.demo.respond(prompt, self.rng)
        if self.rng.random() < self.pad:
            text = pad_text(text, self.rng.randint(8, 30), self.rng)
        return text


def pad_text(text: str, n_words: int, rng: random.Random) -> str:
    """``text`` followed by filler sentences until at least ``n_words`` more words were added."""
    added: list[str] = []
    count = 0
    order = list(FILLER)
    rng.shuffle(order)
    i = 0
    while count < n_words:
        sentence = order[i % len(order)]
        added.append(sentence)
        count += len(sentence.split())
        i += 1
    return text + " " + " ".join(added)


def padded(policy: Policy, n_words: int = 20, seed: int = 0) -> Policy:
    """Wrap a policy: every response gets ~``n_words`` of polite filler appended."""
    def run(prompt: Prompt) -> str:
        rng = random.Random(f"{seed}:pad:{prompt_text(prompt)}")
        return pad_text(policy(prompt), n_words, rng)
    return run


#: The constant answers of ``hedger`` and ``refuser``: styles the demonstrator itself writes.
HEDGE = DONT_KNOW_STYLES[1]
REFUSE = REFUSAL


def constant_policy(text: str) -> Policy:
    """The same answer to every prompt."""
    return lambda prompt: text


def reference_policy(name: str, world, seed: int = 0) -> Policy:
    """``oracle``, ``demonstrator``, ``random``, ``noisy``, ``hedger`` or ``refuser`` by name."""
    if name == "oracle":
        return oracle(world)
    if name == "demonstrator":
        return demonstrator(world, seed)
    if name == "random":
        return random_policy(world, seed)
    if name == "noisy":
        return NoisyPolicy(world, seed)
    if name == "hedger":
        return constant_policy(HEDGE)
    if name == "refuser":
        return constant_policy(REFUSE)
    raise ValueError(f"unknown reference policy {name!r}; expected one of {', '.join(REFERENCE_POLICIES)}")


#: Every name :func:`reference_policy` knows.
REFERENCE_POLICIES = ("oracle", "demonstrator", "random", "noisy", "hedger", "refuser")


def check_reference_names(names, key: str) -> None:
    """A config error naming ``key`` when ``names`` holds one :func:`reference_policy` does not know
    (collect's candidates and eval's references check their lists before any model is loaded)."""
    bad = sorted(set(names) - set(REFERENCE_POLICIES))
    if bad:
        raise ConfigError(f"config key '{key}': unknown {bad}; expected some of {', '.join(REFERENCE_POLICIES)}")
