"""Multi-armed bandit: the smallest policy-gradient problem (one state, one action, one reward).

A softmax policy π_θ(a) = softmax(θ)_a over K arms, trained by REINFORCE on the loss
−log π(a)·(R − b), and by the PPO clipped surrogate. An LM response of one token *is* a bandit
pull, so every piece here is the shared LM-scale code (``alignforge.rl``, ``alignforge.losses``)
called with sequences of length 1. See ``docs/classic.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignforge import rl
from alignforge.losses import kl_estimate, ppo_policy_loss

BASELINES = ("none", "running", "rloo", "grpo")


@dataclass
class Bandit:
    """K arms; a pull of arm a pays Bernoulli(μ_a) or Normal(μ_a, std²)."""

    means: torch.Tensor
    kind: str = "bernoulli"
    std: float = 1.0

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float32)
        if self.kind not in ("bernoulli", "gaussian"):
            raise ValueError(f"Bandit.kind must be 'bernoulli' or 'gaussian', got {self.kind!r}")
        if self.kind == "bernoulli" and not bool(((self.means >= 0) & (self.means <= 1)).all()):
            raise ValueError(f"Bernoulli arm means must lie in [0, 1], got {self.means.tolist()}")

    @property
    def best_arm(self) -> int:
        return int(self.means.argmax())

    def pull(self, actions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mu = self.means[actions]
        if self.kind == "bernoulli":
            return torch.bernoulli(mu, generator=generator)
        return mu + self.std * torch.randn(mu.shape, generator=generator)


def expected_reward(theta: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """J(θ) = Σ_a π_θ(a) μ_a, the objective REINFORCE climbs."""
    return (torch.softmax(theta, -1) * means).sum(-1)


def exact_gradient(theta: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """∂J/∂θ_k = π_k (μ_k − J): the analytic gradient every estimator below must match on average."""
    pi = torch.softmax(theta, -1)
    return pi * (means - (pi * means).sum(-1, keepdim=True))


def kl_regularised_optimum(ref_logits: torch.Tensor, means: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax_π E_π[μ] − β KL(π‖π_ref) = π_ref·exp(μ/β)/Z (the closed form DPO starts from)."""
    return torch.softmax(torch.log_softmax(ref_logits, -1) + means / beta, -1)


def reinforce_loss(logp: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """−mean[log π(a)·(R − b)]; its gradient is the REINFORCE estimate of −∇J (b must not depend on a).

    The mean runs over the last dim (the pulls of one batch); leading dims (independent batches,
    see :func:`gradient_estimates`) are summed, so each batch's gradient stays separate.
    """
    advantages = (rewards - baseline).detach()
    return -(logp * advantages).mean(-1).sum()


def baseline_advantages(rewards: torch.Tensor, kind: str, running_mean: float) -> torch.Tensor:
    """R − b for one batch of pulls, with b from :data:`BASELINES`.

    ``rloo`` and ``grpo`` treat the batch as one group of k samples for the bandit's single
    "prompt", so they are exactly the LM baselines of ``alignforge.rl``.
    """
    if kind == "none":
        return rewards
    if kind == "running":
        return rewards - running_mean
    if kind == "rloo":
        return rl.rloo_advantages(rewards, group_size=rewards.numel())
    if kind == "grpo":
        return rl.grpo_advantages(rewards, group_size=rewards.numel())
    raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")


def gradient_estimates(theta: torch.Tensor, bandit: Bandit, baseline: float, batch: int, n: int,
                       generator: torch.Generator) -> torch.Tensor:
    """n independent REINFORCE estimates of ∇J (each from ``batch`` pulls), as rows of [n, K].

    One backward pass: θ is copied n times, copy i only sees batch i, so row i of the gradient
    is estimate i. Used to show that a baseline leaves the mean unchanged and cuts the variance.
    """
    thetas = theta.detach().expand(n, -1).clone().requires_grad_(True)
    logp_all = torch.log_softmax(thetas, -1)
    actions = torch.multinomial(logp_all.detach().exp(), batch, replacement=True, generator=generator)
    rewards = bandit.pull(actions, generator)
    loss = reinforce_loss(logp_all.gather(-1, actions), rewards, baseline)
    loss.backward()
    return -thetas.grad  # the loss is −J, so its gradient is −∇J


def sgd_step(theta: torch.Tensor, loss: torch.Tensor, lr: float) -> None:
    """θ ← θ − lr·∇loss (the loss is −objective, so this is gradient *ascent* on the objective)."""
    (grad,) = torch.autograd.grad(loss, theta)
    with torch.no_grad():
        theta -= lr * grad


@dataclass
class BanditRun:
    theta: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.theta, -1)


def train_reinforce(bandit: Bandit, steps: int = 300, batch: int = 16, lr: float = 0.5, baseline: str = "running",
                    kl_coef: float = 0.0, ref_logits: torch.Tensor | None = None, seed: int = 0) -> BanditRun:
    """REINFORCE by plain SGD, θ ← θ + lr·ĝ (written out: ``torch.optim`` would add nothing here
    but a multi-second first import).

    With ``kl_coef`` β > 0 the reward is shaped as in InstructGPT, R − β·(log π(a) − log π_ref(a))
    (``rl.per_token_rewards`` with one token). Its REINFORCE gradient is unbiased for
    E[μ] − β KL(π‖π_ref), so θ converges to :func:`kl_regularised_optimum`.
    """
    gen = torch.Generator().manual_seed(seed)
    K = bandit.means.numel()
    theta = torch.zeros(K, requires_grad=True)
    ref_logp = torch.log_softmax(torch.zeros(K) if ref_logits is None else ref_logits, -1)
    running, n_seen = 0.0, 0
    run = BanditRun(theta, {"expected_reward": [], "p_best": [], "reward": []})
    for _ in range(steps):
        logp_all = torch.log_softmax(theta, -1)
        actions = torch.multinomial(logp_all.detach().exp(), batch, replacement=True, generator=gen)
        logp = logp_all[actions]
        score = bandit.pull(actions, gen)
        # One-token "responses": the KL penalty and the score both land on the only token.
        ones = torch.ones(batch, 1)
        shaped, _ = rl.per_token_rewards(score, logp.detach()[:, None], ref_logp[actions][:, None], ones,
                                         kl_coef=kl_coef)
        adv = baseline_advantages(shaped[:, 0], baseline, running)
        loss = reinforce_loss(logp, adv)
        sgd_step(theta, loss, lr)
        # The running mean is updated *after* the step so b never depends on this batch's actions.
        n_seen += batch
        running += (shaped.sum().item() - batch * running) / n_seen
        with torch.no_grad():
            run.history["expected_reward"].append(expected_reward(theta, bandit.means).item())
            run.history["p_best"].append(torch.softmax(theta, -1)[bandit.best_arm].item())
            run.history["reward"].append(score.mean().item())
    run.theta = theta.detach()
    return run


def train_ppo(bandit: Bandit, iterations: int = 40, batch: int = 64, epochs: int = 4, minibatch: int = 16,
              clip: float = 0.2, lr: float = 0.5, seed: int = 0) -> BanditRun:
    """One-token PPO: sample a batch with π_old, then several epochs of minibatch steps on the
    clipped surrogate (``losses.ppo_policy_loss``) over that same batch, advantages whitened.

    There is no critic: with one state, V is a constant that whitening already removes.
    """
    gen = torch.Generator().manual_seed(seed)
    K = bandit.means.numel()
    theta = torch.zeros(K, requires_grad=True)
    run = BanditRun(theta, {"expected_reward": [], "p_best": [], "clip_frac": [], "kl_old": []})
    for _ in range(iterations):
        with torch.no_grad():
            old_logp_all = torch.log_softmax(theta, -1)
            actions = torch.multinomial(old_logp_all.exp(), batch, replacement=True, generator=gen)
            old_logp = old_logp_all[actions]
            adv = rl.whiten(bandit.pull(actions, gen))
        clip_fracs = []
        for _ in range(epochs):
            order = torch.randperm(batch, generator=gen)
            for idx in order.split(minibatch):
                logp = torch.log_softmax(theta, -1)[actions[idx]]
                loss, metrics = ppo_policy_loss(logp[:, None], old_logp[idx, None], adv[idx, None],
                                                torch.ones(len(idx), 1), clip=clip)
                sgd_step(theta, loss, lr)
                clip_fracs.append(metrics["clip_frac"].item())
        with torch.no_grad():
            new_logp_all = torch.log_softmax(theta, -1)
            # Exact KL(π_old‖π_new) over the K arms: how far one PPO iteration moved the policy.
            kl = (old_logp_all.exp() * (old_logp_all - new_logp_all)).sum().item()
            run.history["kl_old"].append(kl)
            run.history["clip_frac"].append(sum(clip_fracs) / len(clip_fracs))
            run.history["expected_reward"].append(expected_reward(theta, bandit.means).item())
            run.history["p_best"].append(new_logp_all.exp()[bandit.best_arm].item())
    run.theta = theta.detach()
    return run


def sampled_kl(theta: torch.Tensor, ref_logits: torch.Tensor, n: int, generator: torch.Generator,
               kind: str = "k3") -> torch.Tensor:
    """Monte-Carlo KL(π_θ‖π_ref) from n pulls with ``losses.kl_estimate`` (k1/k2/k3)."""
    logp_all, ref_all = torch.log_softmax(theta, -1), torch.log_softmax(ref_logits, -1)
    a = torch.multinomial(logp_all.exp(), n, replacement=True, generator=generator)
    return kl_estimate(logp_all[a], ref_all[a], kind).mean()


if __name__ == "__main__":
    bandit = Bandit(torch.tensor([0.2, 0.5, 0.8, 0.4]))
    for b in BASELINES:
        r = train_reinforce(bandit, baseline=b)
        print(f"REINFORCE baseline={b:8s} p(best)={r.probs[bandit.best_arm]:.3f} "
              f"J={r.history['expected_reward'][-1]:.3f}")
    r = train_ppo(bandit)
    print(f"PPO one-token          p(best)={r.probs[bandit.best_arm]:.3f} J={r.history['expected_reward'][-1]:.3f}")
