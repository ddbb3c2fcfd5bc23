"""Online RL, in three homes:

- :mod:`alignforge.rl.advantages` — the estimators: whitening, GAE, returns, per-token KL-shaped
  rewards, RLOO / GRPO advantages, the KL coefficient's controllers (also re-exported here:
  ``from alignforge import rl; rl.gae(...)``, as the classic lecture examples use them);
- :mod:`alignforge.rl.rollout` — one rollout: sample with the engine, score, log π and log π_ref of the
  same tokens, values;
- :mod:`alignforge.rl.stage` — what the RL stages (``ppo``, ``reinforce``, ``nash``) do around their
  algorithm: config checks, prompts, resume, evaluation, the step tail.
"""

from alignforge.rl.advantages import (
    whiten,
    global_whiten,
    masked_moments,
    gae,
    discounted_returns,
    per_token_rewards,
    last_token_index,
    rloo_advantages,
    grpo_advantages,
    FixedKLController,
    AdaptiveKLController,
    explained_variance,
)

__all__ = [
    "whiten",
    "global_whiten",
    "masked_moments",
    "gae",
    "discounted_returns",
    "per_token_rewards",
    "last_token_index",
    "rloo_advantages",
    "grpo_advantages",
    "FixedKLController",
    "AdaptiveKLController",
    "explained_variance",
]
