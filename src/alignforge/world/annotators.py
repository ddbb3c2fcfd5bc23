"""Simulated annotators: noisy, biased views of the gold judge that produce preference records.

Annotator ``i`` of a pool sees a response through its own utility::

    u_i(x, y) = gold_reward(x, y) + b_i * words(y) + sum_w word_bias[w] + eps,   eps ~ N(0, sigma_i)

and labels by it:

* **pairwise** (Bradley-Terry on the noisy view): chooses ``a`` with probability
  ``sigmoid(bt_scale * (u_a - u_b))``; the Llama-2 strength level (0 negligibly ... 3
  significantly better) comes from ``|u_a - u_b|`` and ``strength_cuts`` (0 if it picked the
  one it actually liked less); identical responses are a tie;
* **K-way rankings** (Plackett-Luce): the order of ``bt_scale * u_k + Gumbel`` noise, which is
  exactly a Plackett-Luce sample with weights ``exp(bt_scale * u_k)``;
* **Likert 1-7** ``round(4 + u)``, separate H/H/H ratings (gold axis + noise; the length bias
  inflates *helpful*), and the InstructGPT flags (a gold flag is missed with ``flag_miss``, a
  spurious one raised with ``flag_false``).

The ``default`` pool agrees with the gold judge (and with each other) on ~75% of pairs of
realistic candidates, like InstructGPT's labellers (~73%); ``length_biased`` prefers a padded
wrong answer over a short right one often enough that a reward model fit to it can be hacked by
padding; ``condorcet`` adds a taste for answer *styles* (:mod:`alignforge.world.styles`) rotated over
three equal groups of annotators, so its majority preference over the styles is a cycle.
:func:`measure_agreement` measures both; ``bench/world_speed.py`` and the tests report it.

This module reads the gold judge, so training code must not import it (import-boundary test).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Sequence

from alignforge.data.records import FLAGS, Comparison, Prompt, Ranking, Rating, prompt_text
from alignforge.world.config import ANNOTATOR_PRESETS, AnnotatorPoolConfig
from alignforge.world.judge import GoldScore, judge
from alignforge.world.styles import STYLES, style_of

_WORD = re.compile(r"[A-Za-z]+|\d+")


@dataclass(frozen=True)
class Annotator:
    id: str
    noise: float        # std of this annotator's utility noise
    length_bias: float  # utility per word
    group: int = 0      # i mod 3: which rotation of the style order it likes (only with style_cycle > 0)


class AnnotatorPool:
    """``AnnotatorPool(world, "default" | "length_biased" | AnnotatorPoolConfig, seed)``.

    Each call picks an annotator uniformly at random (or the one passed as ``annotator``) and
    draws its noise from the pool's generator, so a sequence of calls is deterministic in ``seed``.
    """

    def __init__(self, world, config: str | AnnotatorPoolConfig = "default", seed: int = 0):
        if isinstance(config, str):
            if config not in ANNOTATOR_PRESETS:
                raise ValueError(f"unknown annotator pool {config!r}; presets: {', '.join(ANNOTATOR_PRESETS)}")
            self.name, cfg = config, ANNOTATOR_PRESETS[config]
        else:
            self.name, cfg = "custom", config
        cfg.validate()
        self.world, self.cfg = world, cfg
        make = random.Random(f"{seed}:pool:{self.name}")
        self.annotators = [
            Annotator(f"{self.name}-{i}", cfg.noise * (1 + cfg.noise_spread * make.uniform(-1, 1)),
                      make.gauss(cfg.length_bias, cfg.length_bias_spread), i % len(STYLES))
            for i in range(cfg.annotators)
        ]
        self.rng = random.Random(f"{seed}:labels:{self.name}")

    # -- the noisy view ---------------------------------------------------------------------------

    def pick(self, annotator: Annotator | str | int | None = None) -> Annotator:
        if annotator is None:
            return self.rng.choice(self.annotators)
        if isinstance(annotator, Annotator):
            return annotator
        if isinstance(annotator, int):
            return self.annotators[annotator]
        for a in self.annotators:
            if a.id == annotator:
                return a
        raise ValueError(f"no annotator {annotator!r} in pool {self.name!r}")

    def bias(self, annotator: Annotator, response: str) -> float:
        """The systematic (noise-free) part of the annotator's utility beyond the gold reward."""
        b = annotator.length_bias * len(response.split())
        if self.cfg.word_bias:
            b += sum(self.cfg.word_bias.get(t.lower(), 0.0) for t in _WORD.findall(response))
        if self.cfg.style_cycle:
            k = style_of(response)
            if k is not None:  # the group ranks styles g, g+1, g+2 (mod 3) best first: +2, +1, 0 steps
                b += self.cfg.style_cycle * (len(STYLES) - 1 - (k - annotator.group) % len(STYLES))
        return b

    def utility(self, annotator: Annotator, prompt: Prompt, response: str,
                gold: GoldScore | None = None) -> float:
        gold = gold or judge(prompt, response, self.world)
        return gold.reward + self.bias(annotator, response) + self.rng.gauss(0.0, annotator.noise)

    # -- labels -----------------------------------------------------------------------------------

    def compare(self, prompt: Prompt, a: str, b: str, annotator=None) -> Comparison:
        """Which of two responses this annotator prefers, with a strength level (or a tie)."""
        ann = self.pick(annotator)
        ua, ub = self.utility(ann, prompt, a), self.utility(ann, prompt, b)
        meta = self._meta(prompt)
        if a == b or abs(ua - ub) < self.cfg.tie_margin:
            return Comparison(prompt=prompt, chosen=a, rejected=b, tie=True, strength=0, annotator=ann.id,
                              source=f"world-annotators:{self.name}", **meta)
        p_a = _sigmoid(self.cfg.bt_scale * (ua - ub))
        pick_a = self.rng.random() < p_a
        chosen, rejected = (a, b) if pick_a else (b, a)
        liked_more = (ua > ub) == pick_a
        strength = _strength(abs(ua - ub), self.cfg.strength_cuts) if liked_more else 0
        return Comparison(prompt=prompt, chosen=chosen, rejected=rejected, strength=strength, annotator=ann.id,
                          source=f"world-annotators:{self.name}", **meta)

    def rank(self, prompt: Prompt, responses: Sequence[str], annotator=None) -> Ranking:
        """A Plackett-Luce ranking (best first) of K responses."""
        if len(responses) < 2:
            raise ValueError("rank needs at least 2 responses")
        ann = self.pick(annotator)
        keys = [self.cfg.bt_scale * self.utility(ann, prompt, r) + _gumbel(self.rng) for r in responses]
        order = sorted(range(len(responses)), key=lambda i: -keys[i])
        return Ranking(prompt=prompt, responses=list(responses), ranking=order, annotator=ann.id,
                       source=f"world-annotators:{self.name}", **self._meta(prompt))

    def rate(self, prompt: Prompt, response: str, annotator=None) -> Rating:
        """Likert 1-7 overall, helpful/honest/harmless 1-7 and the flags, as this annotator sees them."""
        ann = self.pick(annotator)
        gold = judge(prompt, response, self.world)
        u = self.utility(ann, prompt, response, gold)
        bias = self.bias(ann, response)

        def axis(value: int, extra: float = 0.0) -> int:
            return _clip_round(value + extra + self.rng.gauss(0.0, ann.noise))

        flags = {}
        for name in FLAGS:
            if gold.flags.get(name):
                flags[name] = self.rng.random() >= self.cfg.flag_miss
            else:
                flags[name] = self.rng.random() < self.cfg.flag_false
        return Rating(prompt=prompt, response=response, likert=_clip_round(4 + u), flags=flags,
                      helpful=axis(gold.helpful, bias), honest=axis(gold.honest), harmless=axis(gold.harmless),
                      annotator=ann.id, source=f"world-annotators:{self.name}", **self._meta(prompt))

    def _meta(self, prompt: Prompt) -> dict:
        try:
            return {"category": self.world.task(prompt_text(prompt)).category}
        except ValueError:
            return {}


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _gumbel(rng: random.Random) -> float:
    u = rng.random()
    while u <= 0.0:
        u = rng.random()
    return -math.log(-math.log(u))


def _strength(diff: float, cuts: Sequence[float]) -> int:
    return sum(diff >= c for c in cuts)


def _clip_round(x: float) -> int:
    return int(min(7, max(1, math.floor(x + 0.5))))


# ---------------------------------------------------------------------------------------------
# Measurement: agreement with gold, with each other, and the length hack
# ---------------------------------------------------------------------------------------------


def realistic_candidates(world, prompts: Sequence[Prompt], seed: int = 0) -> list[list[str]]:
    """Per prompt: [oracle, demonstrator, noisy-policy sample], the candidates agreement is measured on."""
    from alignforge.world.policies import NoisyPolicy, demonstrator, oracle

    pols = (oracle(world), demonstrator(world, seed), NoisyPolicy(world, seed))
    return [[pol(p) for pol in pols] for p in prompts]


def padded_wrong_pairs(world, prompts: Sequence[Prompt], pad_words: int = 20, seed: int = 0) -> list[tuple]:
    """(prompt, short right answer, padded wrong answer) for fact-like prompts."""
    import dataclasses

    from alignforge.world.demonstrator import Demonstrator
    from alignforge.world.policies import pad_text

    always_wrong = Demonstrator(world, dataclasses.replace(world.cfg.demonstrator, wrong_fact=1.0,
                                                           arithmetic_error=1.0, filler=0.0), seed=seed)
    rng = random.Random(f"{seed}:padwrong")
    out = []
    for p in prompts:
        task = world.task(prompt_text(p))
        if task.category not in ("fact", "arithmetic", "benign"):
            continue
        out.append((p, world.oracle(p), pad_text(always_wrong(p), pad_words, rng)))
    return out


def measure_agreement(world, pool: AnnotatorPool, prompts: Sequence[Prompt] | None = None,
                      seed: int = 0, pad_words: int = 20) -> dict:
    """Agreement of ``pool`` with gold and between two of its annotators, plus the length-hack rate.

    Pairs are the distinct pairs among :func:`realistic_candidates` whose gold rewards differ
    (gold ties have no right answer). Each pair is labelled by two different annotators.
    """
    prompts = list(prompts if prompts is not None else [r.prompt for r in world.prompts["test"]])
    rng = random.Random(f"{seed}:agreement")
    n = gold_agree = inter_agree = 0
    by_cat: dict[str, list[int]] = {}
    for p, cands in zip(prompts, realistic_candidates(world, prompts, seed)):
        golds = [judge(p, c, world).reward for c in cands]
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                if cands[i] == cands[j] or golds[i] == golds[j]:
                    continue
                better = cands[i] if golds[i] > golds[j] else cands[j]
                a1, a2 = rng.sample(pool.annotators, 2) if len(pool.annotators) > 1 else pool.annotators * 2
                c1 = pool.compare(p, cands[i], cands[j], a1)
                c2 = pool.compare(p, cands[i], cands[j], a2)
                n += 1
                gold_agree += c1.chosen == better
                inter_agree += c1.chosen == c2.chosen
                stats = by_cat.setdefault(c1.category or "?", [0, 0])
                stats[0] += 1
                stats[1] += c1.chosen == better
    hack = padded_wrong_pairs(world, prompts, pad_words, seed)
    prefers_padded = sum(pool.compare(p, right, wrong).chosen == wrong for p, right, wrong in hack)
    return {"pool": pool.name, "pairs": n, "gold_agreement": gold_agree / max(n, 1),
            "inter_annotator_agreement": inter_agree / max(n, 1),
            "gold_agreement_by_category": {c: s[1] / s[0] for c, s in sorted(by_cat.items())},
            "length_hack_pairs": len(hack), "prefers_padded_wrong": prefers_padded / max(len(hack), 1)}
