"""Every loss in the pipeline, as plain functions of tensors (no models, no config).

Each one is tested against a hand-computed value or a direct formula in ``tests/test_losses.py``.
Conventions: inputs are per-example (or per-token with a mask) tensors; functions return a
scalar loss plus, where useful, a dict of detached metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Language modelling
# ---------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (over ``dim``, or everything)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) for each position: ``logits`` [B, T, V] already aligned with ``tokens`` [B, T].

    Computed as ``logit[token] - logsumexp(logits)`` so the [B, T, V] log-softmax is never
    materialised (it is the largest tensor in a small-model step).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy, mean over non-ignored tokens. ``labels`` are already shifted."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                           ignore_index=ignore_index)


# ---------------------------------------------------------------------------------------------
# Reward models
# ---------------------------------------------------------------------------------------------


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """``-log σ(r_w - r_l - m)``, weighted mean over pairs.

    ``margin`` (Llama-2): a per-pair offset from the annotator's strength level, so that strongly
    preferred pairs must be separated by more. ``weight``: per-pair weight (InstructGPT: each
    ranking's C(K,2) pairs share one prompt's weight). Weighted mean = Σ w·ℓ / Σ w.
    ``label_smoothing`` ε: the label is taken to be flipped with probability ε (conservative, as cDPO),
    ``-(1-ε) log σ(Δ - m) - ε log σ(-Δ - m)`` with Δ = r_w - r_l: the loss is least at a finite gap
    (log((1-ε)/ε) without margin), so a reward model stops stretching its scale to fit noisy labels.
    """
    diff = chosen - rejected
    m = margin if margin is not None else torch.zeros_like(diff)
    losses = -F.logsigmoid(diff - m)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-diff - m)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(1e-12)


def ranking_pair_weights(k: int) -> float:
    """Weight of each of the C(K,2) pairs of one K-way ranking so the ranking counts once."""
    return 1.0 / (k * (k - 1) / 2)


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (Likert-as-regression option)."""
    return F.mse_loss(pred, target)


# ---------------------------------------------------------------------------------------------
# Direct preference optimisation family
# ---------------------------------------------------------------------------------------------


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor | None,
             ref_rejected: torch.Tensor | None, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO and relatives on summed sequence log-probs [B].

    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))   (reference-free: ref = 0)

    - ``sigmoid`` (DPO, Rafailov et al.): −log σ(β h); with ``label_smoothing`` ε the conservative
      DPO of Mitchell: −(1−ε) log σ(β h) − ε log σ(−β h).
    - ``ipo`` (Azar et al.): (h − 1/(2β))².
    - ``hinge`` (SLiC, Zhao et al.): max(0, 1 − β h).
    Returns the mean loss and metrics: implicit rewards β·(log π − log π_ref) and their accuracy.
    """
    if ref_chosen is None or ref_rejected is None:
        ref_chosen = torch.zeros_like(policy_chosen)
        ref_rejected = torch.zeros_like(policy_rejected)
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected sigmoid, ipo or hinge")
    chosen_reward = beta * chosen_logratio.detach()
    rejected_reward = beta * rejected_logratio.detach()
    metrics = {
        "reward_chosen": chosen_reward.mean(),
        "reward_rejected": rejected_reward.mean(),
        "reward_margin": (chosen_reward - rejected_reward).mean(),
        "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
    }
    return losses.mean(), metrics


# ---------------------------------------------------------------------------------------------
# Policy gradient
# ---------------------------------------------------------------------------------------------


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(π‖π_ref) from samples y ~ π (Schulman, "Approximating KL").

    With log r = log π_ref(y) − log π(y):
    - ``k1`` = −log r                 (unbiased, high variance, can be negative)
    - ``k2`` = ½ (log r)²             (biased, low variance)
    - ``k3`` = (r − 1) − log r        (unbiased, always ≥ 0)
    """
    log_ratio = logp_ref - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: −E[min(ρ A, clip(ρ, 1−ε, 1+ε) A)], ρ = π/π_old, mean over masked tokens."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return loss, {"clip_frac": clip_frac, "approx_kl": approx_kl, "ratio": masked_mean(ratio.detach(), mask)}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½ max((V − R)², (clip(V, V_old ± ε) − R)²), masked mean (cleanrl's clipped value loss)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), {"vf_clip_frac": torch.zeros(())}
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, {"vf_clip_frac": frac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
