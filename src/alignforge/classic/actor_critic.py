"""PPO with a critic on the gridworld: the LM PPO loop with the language model taken out.

The policy is a table of logits θ[s, a] (a softmax per state), the critic a table V[s]. One
iteration is the InstructGPT / cleanrl PPO iteration, on the same shared functions:

1. roll out n episodes with π_old: a right-padded [n, T] batch with a mask (``sample_episodes``);
2. GAE(γ, λ) advantages and returns from the old critic (``rl.gae``); an episode cut off at
   ``max_steps`` bootstraps from V(its last state) instead of pretending it ended;
3. whiten the advantages over the real steps (``rl.whiten``);
4. ``epochs`` passes over minibatches of episodes: ``losses.ppo_policy_loss`` +
   c_v·``losses.value_loss`` − c_H·entropy;
5. log return, exact V^π(start) (``policy_evaluation``), explained variance, clip fraction, KL.

Value and policy are exact tables, so the only approximations left are the ones PPO makes,
and the result can be compared with value iteration. See ``docs/classic.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from alignforge import rl
from alignforge.classic.gridworld import GridWorld, policy_evaluation
from alignforge.classic.tabular import Episodes, sample_episodes
from alignforge.losses import entropy_from_logits, masked_mean, ppo_policy_loss, value_loss


def per_state_step(table: torch.Tensor, loss: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                   lr: float) -> None:
    """SGD on a table with each state's row scaled by 1 / (that state's share of the real steps).

    A row only receives the gradient of the steps spent in its state, so plain SGD would move
    rarely visited states ~T times too slowly and overshoot on a state the batch keeps revisiting.
    Scaled, the step is lr × the *average* per-visit gradient: for the critic's ½(V − R)², V(s)
    moves the fraction lr of the way to its mean return (stable for lr ≤ 1). It is the tabular
    analogue of Adam's per-parameter scale.
    """
    (grad,) = torch.autograd.grad(loss, table)
    real = mask > 0
    share = torch.zeros(table.shape[0]).index_add_(0, states[real], torch.ones(int(real.sum()))) / real.sum()
    scale = 1.0 / share.clamp_min(1e-12)  # unvisited rows have zero gradient: the scale does not matter
    with torch.no_grad():
        table -= lr * grad * (scale if table.dim() == 1 else scale[:, None])


def gae_with_truncation(world: GridWorld, batch: Episodes, V: torch.Tensor, gamma: float,
                        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``rl.gae`` on the padded batch with critic V, returning (advantages, returns) [n, T].

    ``rl.gae`` treats the step after the last real one as terminal (V = 0), which is right for
    an episode that reached G or X. One cut off at ``max_steps`` did not end, so its last reward
    gets + γ V(s_T) first (cleanrl's handling of truncation).
    """
    mask = torch.from_numpy(batch.mask).float()
    rewards = torch.from_numpy(batch.rewards).float()
    values = V.detach()[torch.from_numpy(batch.states)] * mask
    cut = torch.from_numpy(~world.terminal[batch.final])
    last = rl.last_token_index(mask)
    rewards[cut, last[cut]] += gamma * V.detach()[torch.from_numpy(batch.final)][cut]
    return rl.gae(rewards, values, mask, gamma=gamma, lam=lam)


@dataclass
class ActorCriticRun:
    logits: torch.Tensor   # [S, A]
    values: torch.Tensor   # [S]
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def policy(self) -> np.ndarray:
        """[S, A] action probabilities (float64, rows summing to 1)."""
        pi = torch.softmax(self.logits.detach().double(), -1).numpy()
        return pi / pi.sum(1, keepdims=True)


def train_ppo_gridworld(world: GridWorld, iterations: int = 30, episodes: int = 32, epochs: int = 4,
                        minibatches: int = 4, clip: float = 0.2, value_clip: float | None = None,
                        gamma: float = 1.0, lam: float = 0.95, lr: float = 0.3, value_lr: float = 0.5,
                        vf_coef: float = 1.0, entropy_coef: float = 0.0, max_steps: int = 100,
                        seed: int = 0) -> ActorCriticRun:
    """PPO-clip with a tabular critic, trained by :func:`per_state_step` (``lr`` for the policy
    table, ``value_lr`` for the critic table).

    ``value_clip`` is off by default: clipping V to V_old ± ε assumes returns of order 1; with
    raw step costs (V* ≈ −12) it only slows the critic down (cf. Andrychowicz et al., 2021).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    logits = torch.zeros(world.n_states, world.n_actions, requires_grad=True)
    V = torch.zeros(world.n_states, requires_grad=True)
    run = ActorCriticRun(logits, V, {k: [] for k in ("return", "value_start", "explained_variance",
                                                   "clip_frac", "approx_kl", "entropy", "length")})
    for _ in range(iterations):
        # 1. Rollout with the current (old) policy.
        with torch.no_grad():
            pi_old = torch.softmax(logits.double(), -1).numpy()
        batch = sample_episodes(world, pi_old / pi_old.sum(1, keepdims=True), episodes, rng, max_steps=max_steps)
        states, actions = torch.from_numpy(batch.states), torch.from_numpy(batch.actions)
        mask = torch.from_numpy(batch.mask).float()
        with torch.no_grad():
            old_logp = torch.log_softmax(logits, -1)[states, actions]
            old_values = V[states] * mask
            advantages, returns = gae_with_truncation(world, batch, V, gamma, lam)
            # 3. Whitened over the real steps of the whole batch.
            advantages = rl.whiten(advantages, mask)

        # 4. Several epochs over minibatches of whole episodes (rows), like LM responses.
        clip_fracs, kls = [], []
        for _ in range(epochs):
            for idx in torch.randperm(episodes).chunk(minibatches):
                m = mask[idx]
                logp_all = torch.log_softmax(logits, -1)[states[idx]]
                logp = logp_all.gather(-1, actions[idx, :, None]).squeeze(-1)
                pg_loss, stats = ppo_policy_loss(logp, old_logp[idx], advantages[idx], m, clip=clip)
                v_loss, _ = value_loss(V[states[idx]], old_values[idx], returns[idx], m, clip=value_clip)
                entropy = masked_mean(entropy_from_logits(logits[states[idx]]), m)
                # One step on each table from its own part of the loss, with its own step size.
                per_state_step(logits, pg_loss - entropy_coef * entropy, states[idx], m, lr)
                per_state_step(V, vf_coef * v_loss, states[idx], m, value_lr)
                clip_fracs.append(stats["clip_frac"].item())
                kls.append(stats["approx_kl"].item())

        # 5. Metrics; V^π(start) is exact, from the policy's own Bellman equation.
        h = run.history
        h["return"].append(float(batch.rewards.sum(1).mean()))
        h["length"].append(float(batch.mask.sum(1).mean()))
        h["value_start"].append(float(policy_evaluation(world, run.policy, gamma)[world.start]))
        h["explained_variance"].append(rl.explained_variance(old_values, returns, mask))
        h["clip_frac"].append(sum(clip_fracs) / len(clip_fracs))
        h["approx_kl"].append(sum(kls) / len(kls))
        h["entropy"].append(entropy.item())
    run.logits, run.values = logits.detach(), V.detach()
    return run


if __name__ == "__main__":
    from alignforge.classic.gridworld import value_iteration

    world = GridWorld("room")
    run = train_ppo_gridworld(world)
    print(f"V*(start) = {value_iteration(world)[0][world.start]:.2f}")
    for i in range(0, len(run.history["return"]), 5):
        print(f"iter {i:3d}  V^pi(start) {run.history['value_start'][i]:8.2f}  "
              f"explained var {run.history['explained_variance'][i]:5.2f}  "
              f"clip frac {run.history['clip_frac'][i]:.2f}  entropy {run.history['entropy'][i]:.2f}")
    print(world.render(policy=run.policy.argmax(1)))
