"""The simulated human demonstrator: writes SFT responses, with controlled mistakes.

A real demonstration set is imperfect: labellers misremember facts, make up answers rather than
admit ignorance, slip on formats, sometimes comply with a harmful request, sometimes lecture, and
sometimes refuse harmless requests that merely *sound* harmful. Each of those is a rate in
:class:`~alignforge.world.config.DemonstratorSection`, so SFT alone stays measurably below the
oracle and preference learning has room to improve.

The demonstrator reads the world's facts (it is a person who knows the world) but never the gold
judge. Calling it is deterministic in ``(seed, prompt)``; :meth:`Demonstrator.respond` with an
explicit ``rng`` gives fresh samples (used for "noisy policy" candidates).
"""

from __future__ import annotations

import random

from alignforge.data.records import Prompt, prompt_text
from alignforge.world.config import DemonstratorSection
from alignforge.world.corpus import FILLER
from alignforge.world.facts import CLIMATES, COLORS, FOODS, JOBS, KINDS
from alignforge.world.tasks import BENIGN, DONT_KNOW, HARMFUL, REFUSAL, Task, list_items

FACT_STYLES = ("The {phrase} of {name} is {v}.", "The answer is {v}.", "I believe the {phrase} of {name} is {v}.")
ARITH_STYLES = ("{a} {op} {b} is {c}.", "The answer is {c}.", "That makes {c}.")
DONT_KNOW_STYLES = (DONT_KNOW, "I do not know that.", "Sorry, I don't know the {attr} of {name}.")
REFUSAL_STYLES = (REFUSAL, "Sorry, I will not help with that.", "I cannot help with that request.")
MORALIZING = ("Shame on you for asking. I will not help with that.",
              "That is an evil thing to ask and I will not help with that.")
_WORD_DOMAINS = {"job": JOBS, "color": COLORS, "food": FOODS, "climate": CLIMATES}


class Demonstrator:
    """``demonstrator(prompt) -> response``; mistakes at the rates of ``config``."""

    def __init__(self, world, config: DemonstratorSection | None = None, seed: int = 0):
        self.world = world
        self.facts = world.facts
        self.cfg = config if config is not None else world.cfg.demonstrator
        self.seed = seed

    def __call__(self, prompt: Prompt) -> str:
        text = prompt_text(prompt)
        return self.respond(text, random.Random(f"{self.seed}:demo:{text}"))

    def respond(self, prompt: Prompt, rng: random.Random) -> str:
        task = self.world.task(prompt_text(prompt))
        text = self._respond(task, rng)
        if rng.random() < self.cfg.filler and task.subtype not in ("one_word", "list", "repeat"):
            text += " " + rng.choice(FILLER)
        return text

    # -- by category ----------------------------------------------------------------------------

    def _respond(self, task: Task, rng: random.Random) -> str:
        c, cat = self.cfg, task.category
        if cat == "harmful":
            roll = rng.random()
            if roll < c.comply_harmful:
                return HARMFUL[task.subtype][3].format(name=task.subject)
            if roll < c.comply_harmful + c.moralize:
                return rng.choice(MORALIZING)
            return rng.choice(REFUSAL_STYLES)
        if cat == "unknown":
            if rng.random() < c.invent:
                return rng.choice(FACT_STYLES).format(phrase=task.phrase, name=task.subject,
                                                      v=self._any_value(task, rng))
            return rng.choice(DONT_KNOW_STYLES).format(attr=task.phrase, name=task.subject)
        if cat == "arithmetic":
            e = task.extra
            value = int(task.answer)
            if rng.random() < c.arithmetic_error:
                value = max(0, value + rng.choice((-3, -2, -1, 1, 2, 3)))
                if value == int(task.answer):
                    value += 1
            return rng.choice(ARITH_STYLES).format(a=e["a"], op=e["op"], b=e["b"], c=value)
        if cat == "benign":
            if rng.random() < c.over_refuse:
                return rng.choice(REFUSAL_STYLES)
            value = self._value(task, rng)
            return BENIGN[task.subtype][3].format(name=task.subject, value=value)
        if cat == "fact":
            return rng.choice(FACT_STYLES).format(phrase=task.phrase, name=task.subject, v=self._value(task, rng))
        return self._format(task, rng)

    def _format(self, task: Task, rng: random.Random) -> str:
        slip = rng.random() < self.cfg.format_slip
        sub = task.subtype
        if sub in ("one_word", "uppercase"):
            value = self._value(task, rng)
            sentence = f"The {task.phrase} of {task.subject} is {value}."
            if sub == "one_word":
                return sentence if slip else str(value)
            return sentence if slip else sentence.upper()
        if sub == "repeat":
            n = task.extra["n"] + (rng.choice((-1, 1)) if slip else 0)
            return " ".join([task.extra["word"]] * n)
        items = list_items(task, self.facts)
        if slip:
            k = rng.choice((2, 4))
            chosen = rng.sample(items, k)
            if rng.random() < 0.5:  # or includes the excluded item
                chosen[0] = task.extra["exclude"]
        else:
            chosen = rng.sample(items, 3)
        return ", ".join(chosen)

    # -- values ---------------------------------------------------------------------------------

    def _domain(self, domain: str) -> list:
        if domain in KINDS:
            return self.facts.by_kind[domain]
        return list(_WORD_DOMAINS[domain])

    def _value(self, task: Task, rng: random.Random) -> str:
        """The right value, or (at the ``wrong_fact`` / ``arithmetic_error`` rate) a wrong one."""
        if rng.random() >= self.cfg.wrong_fact:
            return task.answer
        if task.domain == "number":
            return str(max(1, int(task.answer) + rng.choice((-4, -2, -1, 1, 2, 4))))
        options = [v for v in self._domain(task.domain) if str(v) != task.answer and v != task.subject]
        return rng.choice(options)

    def _any_value(self, task: Task, rng: random.Random) -> str:
        """An invented answer for a question the world cannot answer."""
        attr = None
        for kind in KINDS:
            attr = attr or next((a for a in self.facts.attributes[kind] if a.phrase == task.phrase), None)
        if attr is None or attr.domain == "number":
            domain = rng.choice(("job", "color", "food", "place", "person", "number"))
        else:
            domain = attr.domain
        if domain == "number":
            return str(rng.randint(2, 60))
        return rng.choice([v for v in self._domain(domain) if v != task.subject])

