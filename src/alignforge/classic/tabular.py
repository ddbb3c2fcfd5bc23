"""Tabular learning on the gridworld: Q-learning, SARSA, Monte-Carlo and λ-return evaluation.

The learners only ever call ``world.step`` (they do not read P or R); ``gridworld.py``'s value
iteration and policy evaluation are the exact answers they are tested against. Monte-Carlo
returns and λ-returns reuse ``alignforge.rl`` (the same ``discounted_returns``/``gae`` that PPO
runs on token sequences). See ``docs/classic.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignforge import rl
from alignforge.classic.gridworld import GridWorld, policy_matrix

METHODS = ("q_learning", "sarsa")


def epsilon_greedy(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """A uniformly random action with probability ε, else a greedy one (ties broken at random,
    so an all-zero table does not always pick action 0)."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def q_learning_update(Q: np.ndarray, s: int, a: int, r: float, s2: int, done: bool, alpha: float,
                      gamma: float) -> float:
    """Off-policy TD control: Q(s,a) += α [r + γ max_a' Q(s',a') − Q(s,a)]. Returns the TD error."""
    target = r if done else r + gamma * Q[s2].max()
    td = target - Q[s, a]
    Q[s, a] += alpha * td
    return float(td)


def sarsa_update(Q: np.ndarray, s: int, a: int, r: float, s2: int, a2: int, done: bool, alpha: float,
                 gamma: float) -> float:
    """On-policy TD control: Q(s,a) += α [r + γ Q(s',a') − Q(s,a)], a' the action actually taken next."""
    target = r if done else r + gamma * Q[s2, a2]
    td = target - Q[s, a]
    Q[s, a] += alpha * td
    return float(td)


@dataclass
class TabularRun:
    Q: np.ndarray
    returns: np.ndarray   # [episodes] undiscounted return of each training episode
    lengths: np.ndarray   # [episodes] steps per episode
    visits: np.ndarray    # [S, A] update counts

    @property
    def greedy(self) -> np.ndarray:
        return self.Q.argmax(axis=1)


def train_tabular(world: GridWorld, method: str = "q_learning", episodes: int = 500, alpha: float = 0.5,
                  alpha_power: float = 0.0, epsilon: float = 0.1, epsilon_end: float | None = None,
                  decay_fraction: float = 1.0, gamma: float = 1.0, exploring_starts: bool = False, max_steps: int = 500,
                  seed: int = 0) -> TabularRun:
    """Q-learning or SARSA with ε-greedy behaviour.

    - ``alpha_power`` ω > 0 decays the step size per (s, a): α_n = α / n^ω. A constant α is exact
      on a deterministic world; with ``slip`` > 0 the target is noisy and only a decaying α
      averages the noise away (ω ∈ (½, 1] satisfies Robbins–Monro).
    - ``epsilon_end``: ε decays linearly to it over the first ``decay_fraction`` of the episodes
      and then stays there (GLIE with ε_end = 0), so SARSA's on-policy values approach the greedy
      optimum instead of the values of the ε-greedy policy.
    - ``exploring_starts``: begin each episode with a random non-terminal state *and* a random
      first action, so every (s, a) keeps being updated even once ε has decayed to 0; without it a
      stale, too-pessimistic Q(s, a*) can lock SARSA into a detour.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    rng = np.random.default_rng(seed)
    Q = np.zeros((world.n_states, world.n_actions))  # 0 is optimistic under step costs: it drives exploration
    visits = np.zeros_like(Q)
    live = np.flatnonzero(~world.terminal)
    eps_end = epsilon if epsilon_end is None else epsilon_end
    eps_schedule = np.interp(np.arange(episodes), [0, decay_fraction * (episodes - 1)], [epsilon, eps_end])
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    for ep in range(episodes):
        eps = eps_schedule[ep]
        if exploring_starts:
            s, a = int(rng.choice(live)), int(rng.integers(world.n_actions))
        else:
            s = world.start
            a = epsilon_greedy(Q[s], eps, rng)
        for t in range(max_steps):
            s2, r, done = world.step(s, a, rng)
            visits[s, a] += 1
            lr = alpha / visits[s, a] ** alpha_power
            if method == "sarsa":
                a2 = epsilon_greedy(Q[s2], eps, rng)  # chosen first: SARSA's target uses it
                sarsa_update(Q, s, a, r, s2, a2, done, lr, gamma)
            else:
                q_learning_update(Q, s, a, r, s2, done, lr, gamma)
                a2 = epsilon_greedy(Q[s2], eps, rng)  # behaviour only; the target used the max
            returns[ep] += r
            if done:
                break
            s, a = s2, a2
        lengths[ep] = t + 1
    return TabularRun(Q, returns, lengths, visits)


@dataclass
class Episodes:
    """n episodes run in parallel, right-padded to the longest, like a batch of LM responses."""

    states: np.ndarray    # [n, T] state at each step
    actions: np.ndarray   # [n, T]
    rewards: np.ndarray   # [n, T]
    mask: np.ndarray      # [n, T] bool, true on real steps
    final: np.ndarray     # [n] state after the last step: terminal, unless cut off at max_steps


def sample_episodes(world: GridWorld, policy: np.ndarray, n: int, rng: np.random.Generator,
                    start: int | None = None, max_steps: int = 1000) -> Episodes:
    """Roll out ``policy`` ([S] actions or [S, A] probabilities) for n episodes, all at once."""
    pi_cdf = np.cumsum(policy_matrix(world, policy), axis=1)
    P_cdf = np.cumsum(world.P, axis=-1)
    s = np.full(n, world.start if start is None else start)
    alive = ~world.terminal[s]
    cols: dict[str, list[np.ndarray]] = {"states": [], "actions": [], "rewards": [], "mask": []}
    for _ in range(max_steps):
        if not alive.any():
            break
        a = np.minimum((pi_cdf[s] < rng.random(n)[:, None]).sum(1), world.n_actions - 1)
        s2 = np.minimum((P_cdf[s, a] < rng.random(n)[:, None]).sum(1), world.n_states - 1)
        r = -world.step_cost + world.arrival[s2]
        for key, value in (("states", s), ("actions", a), ("rewards", np.where(alive, r, 0.0)), ("mask", alive)):
            cols[key].append(value)
        # Finished episodes keep stepping in place but are masked out (padding, as in an LM batch).
        alive = alive & ~world.terminal[s2]
        s = s2
    return Episodes(**{k: np.stack(v, axis=1) for k, v in cols.items()}, final=s)


def monte_carlo_values(world: GridWorld, episodes: Episodes, gamma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Every-visit Monte-Carlo V^π: the average return G_t after each visit to a state.

    G_t comes from ``rl.discounted_returns`` on the padded [n, T] batch. Returns (V, visit counts);
    V is NaN where a state was never visited.
    """
    G = rl.discounted_returns(torch.from_numpy(episodes.rewards), torch.from_numpy(episodes.mask), gamma).numpy()
    m = episodes.mask
    total, count = np.zeros(world.n_states), np.zeros(world.n_states)
    np.add.at(total, episodes.states[m], G[m])
    np.add.at(count, episodes.states[m], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, count


def lambda_returns(episodes: Episodes, V: np.ndarray, gamma: float = 1.0, lam: float = 1.0) -> np.ndarray:
    """TD(λ) targets G^λ_t = A^GAE_t + V(s_t) from ``rl.gae``: λ = 0 is the one-step TD target
    r + γV(s'), λ = 1 the Monte-Carlo return; in between, n-step returns weighted by λ^(n−1)."""
    values = torch.from_numpy(V[episodes.states] * episodes.mask)
    _, returns = rl.gae(torch.from_numpy(episodes.rewards), values, torch.from_numpy(episodes.mask),
                        gamma=gamma, lam=lam)
    return returns.numpy()


if __name__ == "__main__":
    from alignforge.classic.gridworld import value_iteration

    world = GridWorld("cliff")
    V_star, _, _ = value_iteration(world)
    print(f"cliff walk, optimal V(start) = {V_star[world.start]:.1f}")
    for method in METHODS:
        run = train_tabular(world, method, episodes=500, alpha=0.5, epsilon=0.1, seed=0)
        print(f"{method:10s} mean training return (last 100 episodes) {run.returns[-100:].mean():7.1f}")
        print(world.render(policy=run.greedy))
