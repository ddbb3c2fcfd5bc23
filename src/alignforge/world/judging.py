"""Judging demonstrations: the world's stand-in for "a pretrained model that has read about the principles".

Constitutional AI's feedback model is a pretrained LM that already knows what "less harmful" or
"more honest" means; a tiny world model learns only what its corpus shows. So the world writes
``judge_train.jsonl``: demonstrations whose prompt is the judge's question
(:func:`alignforge.aifeedback.constitution.judge_prompt`, the one renderer the AI judge also uses) about two
responses to a TRAIN prompt, and whose response is the verdict ``(A)`` or ``(B)``.

* **Responses**: for each train prompt, the answers of the world's reference policies
  (:mod:`alignforge.world.policies`): oracle, demonstrator, the noisy demonstrator, a careless one
  (every mistake rate at 0.9: harmful compliance, inventions, wrong values, filler) and random words.
* **Pairs**: ``pairs_per_prompt`` distinct pairs per prompt, drawn at random (seeded).
* **Principle and verdict**: one principle per pair, drawn among those whose ``axis``
  (helpful / honest / harmless) the gold judge scores differently for the two responses; the
  verdict is the response with the higher score on that axis. A pair no principle separates is
  skipped (ties have no right answer) and counted.
* **Both orders**: each pair is written twice, (x, y) → the winner's letter and (y, x) → the other
  letter, so the judge cannot learn a favourite position.

TEST prompts are never used (the AI judge is measured against gold on them). This module reads the
gold judge, which the world package may do; training code may not (the judge *model* learns from
the written file, like any SFT data).

``python -m alignforge.world.judging WORLD_DIR`` adds the file to an existing world folder.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path

from alignforge.aifeedback.constitution import (
    JUDGE_CHOICES,
    Constitution,
    judge_prompt,
    load_constitution,
)
from alignforge.data.records import Demonstration
from alignforge.world.judge import judge_batch
from alignforge.world.policies import (
    NoisyPolicy,
    Policy,
    demonstrator,
    oracle,
    random_policy,
)

FILE_STEM = "judge_train"
PAIRS_PER_PROMPT = 1  # × 2 orders: 2 examples per train prompt (the default world: 4,000 examples)


def judging_policies(world, seed: int) -> list[tuple[str, Policy]]:
    """The reference policies whose answers are paired (name, prompt -> response)."""
    return [("oracle", oracle(world)), ("demonstrator", demonstrator(world, seed)),
            ("noisy", NoisyPolicy(world, seed)),
            # mistakes=10 saturates every rate at its 0.9 cap: mostly harmful/invented/wrong answers
            ("careless", NoisyPolicy(world, seed + 1, mistakes=10.0, pad=0.3)),
            ("random", random_policy(world, seed))]


def judge_examples(world, constitution: Constitution | None = None, *, pairs_per_prompt: int = PAIRS_PER_PROMPT,
                   seed: int | None = None, stats: dict | None = None) -> list[Demonstration]:
    """Judging demonstrations on the world's TRAIN prompts (both orders of every pair).

    ``stats`` (optional dict) receives ``pairs``, ``skipped_no_principle`` (pairs every axis
    scores equal) and ``by_principle`` counts.
    """
    constitution = constitution or load_constitution()
    seed = world.cfg.seed if seed is None else seed
    rng = random.Random(f"{seed}:judging")
    policies = judging_policies(world, seed)
    stats = stats if stats is not None else {}
    stats.update(pairs=0, skipped_no_principle=0, by_principle={})
    out: list[Demonstration] = []
    for rec in world.prompts["train"]:
        answers: dict[str, str] = {}
        for name, pol in policies:
            answers.setdefault(pol(rec.prompt).strip(), name)  # distinct texts, first policy named
        texts = [t for t in answers if t]
        scores = judge_batch([rec.prompt] * len(texts), texts, world)
        pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
        rng.shuffle(pairs)
        made = 0
        for i, j in pairs:
            if made >= pairs_per_prompt:
                break
            usable = [p for p in constitution.principles
                      if getattr(scores[i], p.axis) != getattr(scores[j], p.axis)]
            if not usable:
                stats["skipped_no_principle"] += 1
                continue
            principle = rng.choice(usable)
            better = i if getattr(scores[i], principle.axis) > getattr(scores[j], principle.axis) else j
            for order, (first, second) in (("ab", (i, j)), ("ba", (j, i))):
                out.append(Demonstration(
                    prompt=judge_prompt(principle, rec.prompt, texts[first], texts[second]),
                    response=JUDGE_CHOICES[0] if first == better else JUDGE_CHOICES[1],
                    id=f"judge-{rec.id}-{made}-{order}", category=rec.category, source="world-judging",
                    meta={"principle": principle.name, "axis": principle.axis,
                          "policies": [answers[texts[first]], answers[texts[second]]],
                          "scores": [getattr(scores[first], principle.axis),
                                     getattr(scores[second], principle.axis)]}))
            made += 1
            stats["pairs"] += 1
            stats["by_principle"][principle.name] = stats["by_principle"].get(principle.name, 0) + 1
    return out


def write_judge_examples(world_dir: str | Path, argv_pairs: int = PAIRS_PER_PROMPT) -> Path:
    """Add ``judge_train.jsonl`` to an existing world folder (rebuilt from its manifest)."""
    from alignforge.data.records import write_records
    from alignforge.world.core import build_world, load_world_config

    world = build_world(load_world_config(world_dir), demos=False)
    stats: dict = {}
    records = judge_examples(world, pairs_per_prompt=argv_pairs, stats=stats)
    path = Path(world_dir) / f"{FILE_STEM}{'.jsonl.gz' if world.cfg.compress else '.jsonl'}"
    write_records(path, records)
    print(f"world judging: {len(records)} examples ({stats['pairs']} pairs × 2 orders, "
          f"{stats['skipped_no_principle']} pairs no principle separates skipped; by principle "
          f"{stats['by_principle']}) → {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        print("usage: python -m alignforge.world.judging WORLD_DIR [PAIRS_PER_PROMPT]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    write_judge_examples(argv[0], int(argv[1]) if len(argv) > 1 else PAIRS_PER_PROMPT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
