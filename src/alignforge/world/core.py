"""``build_world(cfg) -> World``: facts, corpus, held-out text, prompts by split, SFT demonstrations."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from alignforge.data.records import Demonstration, PromptRecord, TextRecord, prompt_text, write_records
from alignforge.world.config import WorldConfig
from alignforge.world.corpus import dialogue_messages, make_corpus
from alignforge.world.facts import Facts, make_facts
from alignforge.world.tasks import PromptSampler, Task, TaskParser, oracle_answer, sample_prompts

SPLITS = ("train", "test")


@dataclass
class World:
    """One generated world. ``task(prompt)`` says what a prompt asks (what the judge scores against)."""

    cfg: WorldConfig
    facts: Facts
    corpus: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    prompts: dict[str, list[PromptRecord]] = field(default_factory=dict)   # split -> prompts
    demos: list[Demonstration] = field(default_factory=list)               # SFT demonstrations
    critiques: list[Demonstration] = field(default_factory=list)           # critique → revision turns (CAI)

    def __post_init__(self):
        self.parser = TaskParser(self.facts)

    def task(self, prompt: str) -> Task:
        """The parsed task of a prompt (ValueError if the prompt is not one of this world's forms)."""
        return self.parser.parse(prompt)

    def oracle(self, prompt) -> str:
        """The ideal response to a prompt (str or messages)."""
        return oracle_answer(self.task(prompt_text(prompt)), self.facts)

    def sampler(self, split: str) -> PromptSampler:
        return PromptSampler(self.facts, split, self.cfg.text.question_templates, self.cfg.size.max_number)

    def sample_prompts(self, split: str, n: int, seed: int = 0, unique: bool = False) -> list[PromptRecord]:
        """``n`` fresh prompts of a split (categories by ``cfg.prompts.mix``), e.g. for benchmarks."""
        rng = random.Random(f"{self.cfg.seed}:extra:{split}:{seed}")
        pairs = sample_prompts(self.sampler(split), rng, n, self.cfg.prompts.mix, unique=unique)
        return [PromptRecord(prompt=p, category=c, id=f"{split}-x{seed}-{i}") for i, (c, p) in enumerate(pairs)]

    # -- files ---------------------------------------------------------------------------------

    def write(self, out: str | Path, extra: dict[str, tuple[str, list]] | None = None) -> dict:
        """Write every file of the world to ``out`` (atomically each) and return the manifest.

        ``extra``: more files, ``{key: (file stem, records)}`` (e.g. the judging examples of
        :mod:`alignforge.world.judging`, which `world generate` passes: they read the gold judge,
        which this module must not import, since training code imports it).
        """
        from alignforge.config import to_dict
        from alignforge.io import atomic_write_text

        out = Path(out)
        ext = ".jsonl.gz" if self.cfg.compress else ".jsonl"
        files = {
            "corpus": (f"corpus{ext}", [_text_record(t) for t in self.corpus]),
            "heldout": (f"heldout{ext}", [TextRecord(text=t, source="world") for t in self.heldout]),
            "sft": (f"sft{ext}", self.demos),
            # Constitutional AI's critique → revision turns (world/critiques.py), alone and appended
            # to the SFT demonstrations (one file for `alignforge sft`, whose data.train is one path).
            "critique_sft": (f"critique_sft{ext}", self.critiques),
            "sft_critique": (f"sft_critique{ext}", [*self.demos, *self.critiques]),
            "prompts_train": (f"prompts_train{ext}", self.prompts["train"]),
            "prompts_test": (f"prompts_test{ext}", self.prompts["test"]),
            **{key: (f"{stem}{ext}", records) for key, (stem, records) in (extra or {}).items()},
        }
        config = to_dict(self.cfg)
        config["out"] = None  # where it was written is not part of the world (byte-identical outputs)
        manifest = {"world": "alignforge.world", "config": config, "files": {}}
        for key, (name, records) in files.items():
            manifest["files"][key] = {"path": name, "records": write_records(out / name, records)}
        atomic_write_text(out / "world.json", json.dumps(self.facts.to_dict(), indent=1, sort_keys=True) + "\n")
        manifest["files"]["facts"] = {"path": "world.json"}
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return manifest


def _text_record(doc: str) -> TextRecord:
    messages = dialogue_messages(doc)
    return TextRecord(text=doc, source="world", meta={"messages": messages} if messages else None)


def build_world(cfg: WorldConfig | None = None, *, corpus: bool = True, demos: bool = True) -> World:
    """Generate the whole world for ``cfg`` (default config if None). Deterministic in ``cfg.seed``.

    ``corpus=False`` / ``demos=False`` skip the text and the demonstrations (e.g. a judge that only
    needs the facts).
    """
    cfg = cfg or WorldConfig()
    s, t = cfg.size, cfg.text
    facts = make_facts(cfg.seed, s.people, s.places, s.creatures, s.attributes, s.unknown_names, s.test_fraction)
    world = World(cfg, facts)
    for split in SPLITS:
        rng = random.Random(f"{cfg.seed}:prompts:{split}")
        n = cfg.prompts.train if split == "train" else cfg.prompts.test
        pairs = sample_prompts(world.sampler(split), rng, n, cfg.prompts.mix)
        world.prompts[split] = [PromptRecord(prompt=p, category=c, id=f"{split}-{i}", source="world")
                                for i, (c, p) in enumerate(pairs)]
    if corpus:
        kw = dict(n_templates=t.fact_templates, question_templates=t.question_templates, max_number=s.max_number,
                  arithmetic_sums=t.arithmetic_sums)
        world.corpus = make_corpus(facts, cfg.seed, "corpus", t.corpus_repeats, arithmetic_docs=t.arithmetic_docs,
                                   dialogue_docs=t.dialogue_docs, **kw)
        # Held-out text: the same process on another random stream, minus any document the corpus
        # already has (with a small world some coincide), so bits-per-byte measures generalisation.
        seen = set(world.corpus)
        extra = make_corpus(facts, cfg.seed, "heldout", 1, arithmetic_docs=max(1, t.heldout_docs // 5),
                            dialogue_docs=max(1, t.heldout_docs // 5), **kw)
        world.heldout = [d for d in extra if d not in seen][: t.heldout_docs]
    if demos:
        from alignforge.world.demonstrator import Demonstrator

        rng = random.Random(f"{cfg.seed}:sft")
        pairs = sample_prompts(world.sampler("train"), rng, cfg.prompts.sft, cfg.prompts.mix)
        demonstrator = Demonstrator(world, cfg.demonstrator, seed=cfg.seed)
        world.demos = [Demonstration(prompt=p, response=demonstrator(p), category=c, id=f"sft-{i}",
                                     source="world", policy="demonstrator")
                       for i, (c, p) in enumerate(pairs)]
        from alignforge.world.critiques import critique_demonstrations

        world.critiques = critique_demonstrations(world)
    return world


def load_world_config(world_dir: str | Path) -> WorldConfig:
    """The config a world folder was generated with (from its ``manifest.json``)."""
    from alignforge.config import ConfigError, from_dict

    path = Path(world_dir) / "manifest.json"
    if not path.exists():
        raise ConfigError(f"{path}: not found (expected a folder written by `alignforge world generate`)")
    try:
        data = json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ConfigError(f"{path}: not a world manifest ({e})") from None
    return from_dict(WorldConfig, data)
