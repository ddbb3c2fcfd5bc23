"""RL estimators shared by PPO, REINFORCE/RLOO/GRPO and the classic lecture examples.

All functions are vectorised over a batch of (right-padded) response tokens with a mask; no
Python loop runs per token except GAE's backward scan over time, which is O(T) tensor ops on the
whole batch at once. Tested against naive per-element loops in ``tests/test_rl.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries (std unbiased, as in cleanrl/TRL).

    ``shift_mean=False`` only rescales (used for rewards, whose sign carries meaning).
    Under DDP pass globally-gathered statistics instead: see :func:`masked_moments`.
    """
    mean, var = masked_moments(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask


def global_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """:func:`whiten` with the mean and variance of the masked entries of ALL ranks
    (design §8: advantages are whitened globally, not per process). One process: exactly ``whiten``."""
    from alignforge.train import distributed as dist

    if not dist.is_distributed():
        return whiten(values, mask, shift_mean=shift_mean, eps=eps)
    m = mask.to(values.dtype)
    n = dist.all_reduce_sum(m.sum().double())
    mean = (dist.all_reduce_sum((values * m).sum().double()) / n.clamp_min(1)).to(values.dtype)
    var = (dist.all_reduce_sum((((values - mean) ** 2) * m).sum().double()) / (n - 1).clamp_min(1)).to(values.dtype)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def masked_moments(values: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over the masked entries."""
    if mask is None:
        mask = torch.ones_like(values)
    mask = mask.to(values.dtype)
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp_min(1)
    var = (((values - mean) ** 2) * mask).sum() / (n - 1).clamp_min(1)
    return mean, var


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    ``rewards``, ``values``, ``mask``: [B, T]; the value after the last real token is 0 (the
    episode ends at EOS or at the length limit — InstructGPT treats both as terminal).
    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1}.  Returns (advantages, returns = A + V).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m
        advantages[:, t] = last
        # Padding positions must not leak: the next real step sees V=0 and A=0 past the end.
        next_value = values[:, t] * m
    returns = advantages + values
    return advantages * mask, returns * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{k≥t} γ^{k−t} r_k over the masked tokens (REINFORCE without a critic)."""
    zeros = torch.zeros_like(rewards)
    returns, _ = gae(rewards, zeros, mask, gamma=gamma, lam=1.0)
    return returns


def per_token_rewards(score: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float, kl_estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's reward: −β·KL at every response token, plus the sequence score at the last one.

    Returns (rewards [B, T], per-token KL [B, T]).
    """
    from alignforge.losses import kl_estimate

    kl = kl_estimate(logp, logp_ref, kl_estimator) * mask
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.size(0), device=rewards.device), last] += score
    return rewards * mask, kl


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last true position per row of a right-padded mask (0 for an empty row)."""
    lengths = mask.long().sum(-1)
    return (lengths - 1).clamp_min(0)


# ---------------------------------------------------------------------------------------------
# Group baselines (REINFORCE family)
# ---------------------------------------------------------------------------------------------


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al.): A_i = r_i − mean of the other k−1 samples of the same prompt.

    ``scores`` [N·k] ordered group by group (the k samples of one prompt are contiguous).
    """
    g = _groups(scores, group_size)
    k = group_size
    baseline = (g.sum(-1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def grpo_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al.): (r_i − mean_group) / (std_group + ε); ``scale=False`` = Dr. GRPO."""
    g = _groups(scores, group_size)
    centred = g - g.mean(-1, keepdim=True)
    if scale:
        centred = centred / (g.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"group baselines need at least 2 samples per prompt, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    return scores.reshape(-1, group_size)


# ---------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + K_β·e), e = clip((KL − target)/target, −0.2, 0.2)·n/horizon."""

    value: float
    target: float
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> float:
        if not math.isfinite(current_kl):
            return self.value
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over masked tokens (1 = perfect critic, ≤ 0 = useless)."""
    _, var_r = masked_moments(returns, mask)
    _, var_res = masked_moments(returns - values, mask)
    if var_r.item() == 0:
        return float("nan")
    return float(1 - var_res / var_r)
