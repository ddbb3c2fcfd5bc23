"""Oracle ablations: the gold judge used where a learned reward model would be.

The gold judge is hidden from training code (design §8), so the stages never import it. An
oracle ablation — "what would RSFT reach with a perfect reward model?" — therefore runs through
this module, which is part of evaluation and may read the judge: it builds a :class:`GoldScorer`
and *injects* it into the stage::

    python -m alignforge.eval.oracle rsft --world runs/world/world --config configs/world/rsft.yaml
    python -m alignforge.eval.oracle ppo --world runs/world/world --config configs/world/ppo.yaml

runs ``alignforge.stages.rsft.run(cfg, scorer=GoldScorer(world))`` (same config keys, same
outputs); ``ppo`` and ``reinforce`` (RLOO/GRPO) get the gold reward of every rollout instead of
``reward.init``'s (:func:`scorer_reward_fn`) — "what would PPO reach with a perfect reward model?",
which separates what the reward model costs from what the policy and the optimiser can do.
:func:`make_scorer` is the one factory for both kinds: ``"gold:<world dir>"`` gives the gold scorer,
anything else is a reward-model folder (``reward.init``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

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


def scorer_reward_fn(scorer: Scorer, tok, prompts: Sequence[Prompt], max_prompt_tokens: int):
    """A text scorer as an RL stage's ``reward_fn`` (a :class:`~alignforge.generation.Generation` → one
    score per row). The engine keeps the response texts; each row's prompt is found by its token ids,
    which the stage made from ``prompts`` with the same :func:`~alignforge.data.batching.encode_prompt`
    and left-truncation to ``max_prompt_tokens`` (``train.seq_len − sampling.max_new_tokens``)."""
    from alignforge.data.batching import encode_prompt

    by_ids: dict[tuple[int, ...], Prompt] = {}
    for p in prompts:
        by_ids.setdefault(tuple(encode_prompt(tok, p, max_prompt_tokens)), p)

    def reward_fn(gen) -> torch.Tensor:
        rows = []
        for b in range(gen.prompt_ids.shape[0]):
            key = tuple(gen.prompt_ids[b][gen.prompt_mask[b]].tolist())
            if key not in by_ids:
                raise ValueError(f"oracle reward: rollout row {b}'s prompt ({tok.decode(list(key))[-80:]!r}) is not "
                                 f"one of the {len(by_ids)} prompts the reward was built for")
            rows.append(by_ids[key])
        if gen.texts is None:
            raise ValueError("oracle reward: the generation has no response texts (generate without tokenizer=)")
        return torch.tensor(scorer(rows, gen.texts), dtype=torch.float32)

    return reward_fn


def _rl_reward_fn(cfg, world):
    """The gold reward for an RL stage's config: its tokenizer, its train and eval prompts."""
    from alignforge.models.load import resolve_model_dir
    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer
    from alignforge.rl.stage import read_prompts

    tok = ensure_chat_template(load_tokenizer(cfg.model.tokenizer or resolve_model_dir(cfg.model.init)))
    prompts = [r.prompt for split in ("train", "eval") if getattr(cfg.data, split)
               for r in read_prompts(cfg.data, split)]
    return scorer_reward_fn(GoldScorer(world), tok, prompts, cfg.train.seq_len - cfg.sampling.max_new_tokens)


ORACLE_STAGES = ("rsft", "ppo", "reinforce")
USAGE = ("usage: python -m alignforge.eval.oracle {rsft,ppo,reinforce} --world WORLD_DIR [--config FILE] "
         "[key=value ...]\n"
         "The stage with the gold judge as its scorer / reward (oracle ablation); every config key of the "
         "stage applies (reward.init is not read).")


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.cli import parse_stage_args
    from alignforge.config import ConfigError, PPOConfig, ReinforceConfig, RSFTConfig
    from alignforge.data.records import RecordError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ORACLE_STAGES or "--world" not in argv:
        print(USAGE, file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    i = rest.index("--world")
    if i + 1 >= len(rest):
        print(USAGE, file=sys.stderr)
        return 2
    world_dir = rest[i + 1]
    rest = rest[:i] + rest[i + 2:]
    from alignforge.train import distributed as dist

    try:
        world = load_world(world_dir)
        if stage == "rsft":
            from alignforge.stages import rsft

            cfg = parse_stage_args("rsft", RSFTConfig, rest)
            cfg.rsft.scorer = "gold"
            rsft.run(cfg, scorer=GoldScorer(world))
        else:
            from alignforge.stages import ppo, reinforce

            cfg = parse_stage_args(stage, PPOConfig if stage == "ppo" else ReinforceConfig, rest)
            cfg.reward.init = None  # the gold judge is the reward; a value model then starts from the policy
            (ppo if stage == "ppo" else reinforce).run(cfg, reward_fn=_rl_reward_fn(cfg, world))
    except (ConfigError, RecordError, FileNotFoundError) as e:
        print(f"alignforge {stage} (oracle): error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
