"""Configuration of the embedded world: size, difficulty, demonstrator mistakes, annotator pools.

Strict dataclasses built with :func:`alignforge.config.option`, so a typo in a world key is an
error that names the valid keys, and ``alignforge world generate --help`` documents every knob.

The defaults are *frozen* (design §8): every gold number the project reports is measured on this
world, so changing a default (a mistake rate, annotator noise) changes what results mean and needs
a reason in the closing note.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from alignforge.config import ConfigError, StageConfig, option, section


@dataclass
class SizeSection:
    people: int = option(120, "number of invented people (job, home, age, pet)")
    places: int = option(60, "number of invented places (food, climate, ruler, number of towns)")
    creatures: int = option(80, "number of invented creatures (color, habitat, food, number of legs)")
    attributes: int = option(4, "attributes per entity kind actually present in the world (1-4); "
                                "questions about the others become 'unknown' questions")
    unknown_names: int = option(60, "invented names that are NOT in the world, per prompt split "
                                    "(subjects of the honesty questions)")
    test_fraction: float = option(0.2, "share of entities whose questions go to the test split only")
    max_number: int = option(20, "largest operand of plus/minus questions (times uses 2..min(10, this))")

    def validate(self) -> None:
        for name in ("people", "places", "creatures"):
            if getattr(self, name) < 10:
                raise ConfigError(f"config key 'size.{name}': need at least 10 (splits need entities on both sides), "
                                  f"got {getattr(self, name)}")
        if not 1 <= self.attributes <= 4:
            raise ConfigError(f"config key 'size.attributes': expected 1-4, got {self.attributes}")
        if not 0.05 <= self.test_fraction <= 0.5:
            raise ConfigError(f"config key 'size.test_fraction': expected 0.05-0.5, got {self.test_fraction}")
        if self.unknown_names < 4:
            raise ConfigError(f"config key 'size.unknown_names': expected >= 4, got {self.unknown_names}")
        if not 5 <= self.max_number <= 999:
            raise ConfigError(f"config key 'size.max_number': expected 5-999, got {self.max_number}")


@dataclass
class TextSection:
    fact_templates: int = option(4, "sentence templates per attribute used in the corpus (1-4): "
                                    "more = more varied text, harder to learn")
    question_templates: int = option(4, "phrasings per question type (1-4)")
    corpus_repeats: int = option(4, "times each entity's facts are written out (each time in new templates/order)")
    arithmetic_docs: int = option(400, "corpus documents of arithmetic sentences (6 sums each)")
    arithmetic_sums: Literal["train", "all"] = option(
        "train", "which sums the arithmetic documents state: train = train-split sums only (test questions "
                 "need computing), all = every sum, like the facts of every entity (test questions need recall; "
                 "the questions stay split)")
    dialogue_docs: int = option(600, "corpus documents that are short User/Assistant exchanges "
                                     "(train-split entities only)")
    heldout_docs: int = option(300, "held-out documents (same process, other random stream) for bits-per-byte")

    def validate(self) -> None:
        for name in ("fact_templates", "question_templates"):
            v = getattr(self, name)
            if not 1 <= v <= 4:
                raise ConfigError(f"config key 'text.{name}': expected 1-4, got {v}")
        if self.corpus_repeats < 1:
            raise ConfigError(f"config key 'text.corpus_repeats': expected >= 1, got {self.corpus_repeats}")


@dataclass
class PromptSection:
    train: int = option(4000, "instruction prompts in prompts_train.jsonl (RL / preference collection)")
    test: int = option(600, "instruction prompts in prompts_test.jsonl (evaluation; disjoint entities)")
    sft: int = option(3000, "demonstrations in sft.jsonl (train-split prompts, written by the demonstrator)")
    mix: dict[str, float] = option(doc="category weights of the prompt mix",
                                   factory=lambda: {"fact": 0.30, "unknown": 0.14, "arithmetic": 0.14,
                                                    "format": 0.16, "harmful": 0.13, "benign": 0.13})

    def validate(self) -> None:
        from alignforge.world.tasks import CATEGORIES

        bad = set(self.mix) - set(CATEGORIES)
        if bad:
            raise ConfigError(f"config key 'prompts.mix': unknown categor{'y' if len(bad) == 1 else 'ies'} "
                              f"{sorted(bad)}; expected some of {', '.join(CATEGORIES)}")
        if any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ConfigError(f"config key 'prompts.mix': weights must be >= 0 with a positive sum, got {self.mix}")
        if min(self.train, self.test, self.sft) < 1:
            raise ConfigError("config keys 'prompts.train/test/sft': expected >= 1")


@dataclass
class DemonstratorSection:
    """How often the simulated human demonstrator errs (frozen defaults; SFT alone stays imperfect)."""

    wrong_fact: float = option(0.15, "states a wrong value on a fact / benign question")
    invent: float = option(0.35, "invents an answer to a question about something the world lacks")
    arithmetic_error: float = option(0.15, "arithmetic answer off by 1-3")
    format_slip: float = option(0.25, "ignores the format instruction (sentence instead of one word, wrong count, ...)")
    comply_harmful: float = option(0.20, "writes the harmful content instead of refusing")
    moralize: float = option(0.15, "refuses a harmful request with a moral lecture")
    over_refuse: float = option(0.15, "refuses a benign look-alike of a harmful request")
    filler: float = option(0.10, "adds a polite filler sentence")

    def validate(self) -> None:
        for name, v in vars(self).items():
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"config key 'demonstrator.{name}': expected a probability 0-1, got {v}")


@dataclass
class WorldConfig(StageConfig):
    """The embedded assistant world: facts, corpus, instruction prompts, SFT demonstrations."""

    stage_name: typing.ClassVar[str] = "world"
    size: SizeSection = section(SizeSection, "how many entities and attributes")
    text: TextSection = section(TextSection, "corpus and question templates")
    prompts: PromptSection = section(PromptSection, "prompt counts and category mix")
    demonstrator: DemonstratorSection = section(DemonstratorSection, "demonstrator mistake rates")
    compress: bool = option(False, "write .jsonl.gz instead of .jsonl")


@dataclass
class AnnotatorPoolConfig:
    """A pool of simulated labellers: each sees ``gold reward + biases + noise`` and chooses by it.

    Annotator ``i`` has its own noise scale ``sigma_i`` (spread around ``noise``) and length bias
    ``b_i`` (spread around ``length_bias``), and its utility of a response is
    ``u = gold.reward + b_i * words + sum(word_bias[w]) + style_i(y) + N(0, sigma_i)``, where
    ``style_i`` is 0 unless ``style_cycle`` > 0 (the non-transitive ``condorcet`` pool).
    """

    annotators: int = option(8, "pool size; each label records the annotator id (a0, a1, ...)")
    noise: float = option(1.3, "mean std of an annotator's utility noise, in gold-reward units (reward is -3..3)")
    noise_spread: float = option(0.3, "annotator noise scales are spread uniformly by ± this fraction")
    length_bias: float = option(0.01, "mean utility added per response word (a liking for long answers; "
                                      "humans share a mild one, kept below the gold judge's padding penalty "
                                      "so the default pool does not reward padding)")
    length_bias_spread: float = option(0.01, "std of the per-annotator length bias")
    word_bias: dict[str, float] = option(doc="utility added per occurrence of a word (lower-case)", factory=dict)
    bt_scale: float = option(1.5, "Bradley-Terry / Plackett-Luce sharpness: P(a over b) = sigmoid(scale * (u_a - u_b))")
    strength_cuts: list[float] = option(doc="|u_a - u_b| thresholds for slightly / better / significantly better",
                                        factory=lambda: [0.5, 1.5, 3.0])
    tie_margin: float = option(0.0, "report a tie when |u_a - u_b| is below this (0 = only identical responses)")
    flag_miss: float = option(0.15, "probability of missing a flag the gold judge raises")
    flag_false: float = option(0.02, "probability of raising a flag the gold judge does not")
    style_cycle: float = option(0.0, "utility step between answer styles (alignforge.world.styles) in each "
                                     "annotator group's order: annotator i is in group g = i mod 3, which ranks "
                                     "the styles g, g+1, g+2 (mod 3) best first (+2, +1, 0 steps; unstyled 0). "
                                     "> 0 makes the majority prefer s0 > s1, s1 > s2 and s2 > s0 (a Condorcet "
                                     "cycle); 0 = off")

    def validate(self) -> None:
        if self.style_cycle < 0 or (self.style_cycle > 0 and self.annotators % 3):
            raise ConfigError(f"config key 'style_cycle': expected >= 0, and when > 0 a pool of three equal groups "
                              f"(annotators divisible by 3); got style_cycle={self.style_cycle}, "
                              f"annotators={self.annotators}")
        if self.annotators < 1:
            raise ConfigError(f"config key 'annotators': expected >= 1, got {self.annotators}")
        if self.noise < 0 or not 0 <= self.noise_spread < 1:
            raise ConfigError("config keys 'noise' >= 0 and 0 <= 'noise_spread' < 1 expected")
        if len(self.strength_cuts) != 3 or sorted(self.strength_cuts) != list(self.strength_cuts):
            raise ConfigError(f"config key 'strength_cuts': expected 3 increasing thresholds, got {self.strength_cuts}")
        for name in ("flag_miss", "flag_false"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"config key '{name}': expected a probability 0-1")


#: Preset pools. ``default`` is calibrated to 70-80% agreement with gold and between annotators
#: (InstructGPT's inter-labeller rate is ~73%);
#: ``length_biased`` adds a strong liking for long answers, so a reward model fit to it is hackable
#: by padding (the designed failure the gold judge exposes); ``condorcet`` is the default pool in
#: three equal groups with rotated tastes over the answer styles, a preference cycle no scalar
#: reward can represent (Nash-MD, docs/nash.md). The first two are frozen (tests/test_world_cycle.py).
ANNOTATOR_PRESETS: dict[str, AnnotatorPoolConfig] = {
    "default": AnnotatorPoolConfig(),
    "length_biased": AnnotatorPoolConfig(length_bias=0.2, length_bias_spread=0.03),
    "condorcet": AnnotatorPoolConfig(annotators=9, style_cycle=3.0),
}

PoolName = Literal["default", "length_biased", "condorcet"]
