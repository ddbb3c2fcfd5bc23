"""Oracle ablations: the gold judge used where a learned reward model would be.

The gold judge is hidden from training code (design §8), so the stages never import it. An
oracle ablation — "what would RSFT reach with a perfect reward model?" — therefore runs through
this module, which is part of evaluation and may read the judge: it builds a :class:`GoldScorer`
and *injects* it into the stage::

    python -m alignforge.eval.oracle rsft --world runs/world/world --config configs/world/rsft.yaml

runs ``alignforge.stages.rsft.run(cfg, scorer=GoldScorer(world))`` (same config keys, same
outputs). :func:`make_scorer` is the one factory for both kinds: ``"gold:<world dir>"`` gives the
gold scorer, anything else is a reward-model folder (``reward.init``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from alignforge.data.records import Prompt
from alignforge.eval.scorers import RewardModelScorer, Scorer


def load_world(world_dir: str | Path):
    """The world a ``alignforge world generate`` folder was written from (facts + prompts, no text)."""
    from alignforge.world.core import build_world, load_world_config

    return build_world(load_world_config(world_dir), corpus=False, demos=False)


class GoldScorer:
    """The world's gold reward as a scorer: ``scorer(prompts, responses) -> list[float]``."""

    def __init__(self, world):
        self.world = world
        self.name = "gold"

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        from alignforge.world.judge import gold_rewards

        return gold_rewards(prompts, responses, self.world)


def make_scorer(spec: str, *, device: str = "cpu", batch_size: int = 32) -> Scorer:
    """``"gold:<world dir>"`` → :class:`GoldScorer`; a reward-model folder → :class:`RewardModelScorer`."""
    if spec.startswith("gold:"):
        return GoldScorer(load_world(spec[len("gold:"):]))
    return RewardModelScorer(spec, device=device, batch_size=batch_size)


USAGE = ("usage: python -m alignforge.eval.oracle rsft --world WORLD_DIR [--config FILE] [key=value ...]\n"
         "RSFT with the gold judge as the scorer (oracle ablation); every rsft config key applies.")


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.cli import parse_stage_args
    from alignforge.config import ConfigError, RSFTConfig
    from alignforge.data.records import RecordError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "rsft" or "--world" not in argv:
        print(USAGE, file=sys.stderr)
        return 2
    rest = argv[1:]
    i = rest.index("--world")
    if i + 1 >= len(rest):
        print(USAGE, file=sys.stderr)
        return 2
    world_dir = rest[i + 1]
    rest = rest[:i] + rest[i + 2:]
    from alignforge.stages import rsft
    from alignforge.train import distributed as dist

    try:
        cfg = parse_stage_args("rsft", RSFTConfig, rest)
        cfg.rsft.scorer = "gold"
        rsft.run(cfg, scorer=GoldScorer(load_world(world_dir)))
    except (ConfigError, RecordError) as e:
        print(f"alignforge rsft (oracle): error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
