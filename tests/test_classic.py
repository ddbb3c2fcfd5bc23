"""Classic RL from the lectures: hand-computed updates, and convergence to the exact optimum.

Every learner is seeded and checked against an independent answer: the analytic softmax
gradient, the KL-regularised closed form, breadth-first shortest paths, geometric series, and
value iteration / exact policy evaluation. Each test runs in well under 2 s on one core.
"""

import math
from collections import deque

import numpy as np
import pytest
import torch

from alignforge.classic import bandit as B
from alignforge.classic import tabular as T
from alignforge.classic.gridworld import (GridWorld, bellman_q, optimal_actions, policy_evaluation,
                                          value_iteration)

torch.set_num_threads(1)

ARMS = [0.2, 0.5, 0.8, 0.4]


# ---------------------------------------------------------------------------------------------
# Bandit: REINFORCE, baselines, KL shaping, one-token PPO
# ---------------------------------------------------------------------------------------------


def test_reinforce_gradient_of_two_arm_softmax_matches_hand_derivation():
    # θ = (0.3, −0.2) → π_0 = σ(0.5). Pulls a = (0, 1, 0), R = (1, 0, 2), baseline b = 0.5.
    # ∂ log π(a)/∂θ = e_a − π, so ∂loss/∂θ_0 = −(1/3) Σ (R_i − b)(1[a_i=0] − π_0)
    #   = −(1/3)[0.5(1 − p) + (−0.5)(−p) + 1.5(1 − p)] = −(0.5 + 1.5(1 − p))/3, and θ_1 gets the negative.
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    actions, rewards = torch.tensor([0, 1, 0]), torch.tensor([1.0, 0.0, 2.0])
    loss = B.reinforce_loss(torch.log_softmax(theta, -1)[actions], rewards, baseline=0.5)
    loss.backward()
    p = 1 / (1 + math.exp(-0.5))
    g0 = -(0.5 + 1.5 * (1 - p)) / 3
    assert torch.allclose(theta.grad, torch.tensor([g0, -g0]), atol=1e-6)


def test_exact_gradient_matches_autograd_of_expected_reward():
    theta = torch.tensor([0.3, -0.7, 1.1, 0.0], requires_grad=True)
    means = torch.tensor(ARMS)
    B.expected_reward(theta, means).backward()
    assert torch.allclose(B.exact_gradient(theta.detach(), means), theta.grad, atol=1e-6)


def test_reinforce_estimate_is_unbiased_and_baseline_cuts_variance():
    bandit = B.Bandit(torch.tensor(ARMS))
    theta = torch.tensor([0.3, -0.2, 0.1, 0.0])
    exact = B.exact_gradient(theta, bandit.means)
    gen = torch.Generator().manual_seed(0)
    n = 4000
    no_baseline = B.gradient_estimates(theta, bandit, 0.0, batch=8, n=n, generator=gen)
    with_baseline = B.gradient_estimates(theta, bandit, B.expected_reward(theta, bandit.means).item(), 8, n, gen)
    for est in (no_baseline, with_baseline):
        stderr = est.std(0) / math.sqrt(n)
        assert ((est.mean(0) - exact).abs() < 4 * stderr + 1e-4).all()
    # The baseline leaves the mean alone but removes most of the variance of R's offset.
    assert with_baseline.var(0).sum() < 0.7 * no_baseline.var(0).sum()


@pytest.mark.parametrize("baseline", B.BASELINES)
def test_reinforce_learns_best_bernoulli_arm(baseline):
    bandit = B.Bandit(torch.tensor(ARMS))
    run = B.train_reinforce(bandit, steps=300, batch=16, lr=0.5, baseline=baseline, seed=0)
    assert run.probs.argmax().item() == bandit.best_arm
    assert run.probs[bandit.best_arm] > 0.9
    assert run.history["expected_reward"][-1] > 0.95 * max(ARMS)
    assert run.history["expected_reward"][-1] > run.history["expected_reward"][0] + 0.2


def test_reinforce_learns_best_gaussian_arm():
    bandit = B.Bandit(torch.tensor([1.0, 1.5, 0.5]), kind="gaussian", std=2.0)
    run = B.train_reinforce(bandit, steps=300, batch=32, lr=0.2, baseline="rloo", seed=1)
    assert run.probs[1] > 0.9


@pytest.mark.parametrize("beta,ref", [(0.3, [0.0, 0.0, 0.0, 0.0]), (0.2, [1.0, 0.0, -1.0, 0.5])])
def test_kl_shaped_reinforce_converges_to_closed_form_optimum(beta, ref):
    bandit = B.Bandit(torch.tensor(ARMS))
    ref = torch.tensor(ref)
    run = B.train_reinforce(bandit, steps=300, batch=256, lr=0.5, baseline="rloo", kl_coef=beta,
                            ref_logits=ref, seed=0)
    target = B.kl_regularised_optimum(ref, bandit.means, beta)
    # Independent check of the closed form: it is the softmax of log π_ref + μ/β.
    by_hand = torch.softmax(torch.log_softmax(ref, -1) + bandit.means / beta, -1)
    assert torch.allclose(target, by_hand)
    total_variation = 0.5 * (run.probs - target).abs().sum().item()
    assert total_variation < 0.04, (run.probs, target)


def test_one_token_ppo_learns_best_arm_with_clipping_engaged():
    bandit = B.Bandit(torch.tensor(ARMS))
    run = B.train_ppo(bandit, iterations=40, batch=64, epochs=4, minibatch=16, clip=0.2, lr=0.5, seed=0)
    assert run.probs[bandit.best_arm] > 0.95
    assert max(run.history["clip_frac"]) > 0.05


def test_ppo_clip_bounds_one_iteration_of_many_epochs():
    # 20 epochs on one batch: without clipping the policy collapses onto one arm; the clipped
    # surrogate has zero gradient once ρ leaves [1−ε, 1+ε], so the policy moves only a little.
    bandit = B.Bandit(torch.tensor(ARMS))
    clipped = B.train_ppo(bandit, iterations=1, epochs=20, lr=1.0, clip=0.2, seed=0)
    free = B.train_ppo(bandit, iterations=1, epochs=20, lr=1.0, clip=1e6, seed=0)
    assert clipped.history["kl_old"][0] < 0.1
    assert free.history["kl_old"][0] > 10 * clipped.history["kl_old"][0]
    assert free.history["clip_frac"][0] == 0.0


def test_sampled_kl_estimators_match_exact_kl():
    theta, ref = torch.tensor([1.0, 0.0, -1.0, 0.5]), torch.zeros(4)
    p = torch.softmax(theta, -1)
    exact = (p * (torch.log(p) - torch.log_softmax(ref, -1))).sum().item()
    gen = torch.Generator().manual_seed(0)
    for kind in ("k1", "k3"):  # unbiased ones
        assert abs(B.sampled_kl(theta, ref, 20000, gen, kind).item() - exact) < 0.02


def test_bandit_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        B.Bandit(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="bernoulli"):
        B.Bandit(torch.tensor([0.5]), kind="poisson")
    with pytest.raises(ValueError, match="running"):
        B.baseline_advantages(torch.ones(4), "median", 0.0)


# ---------------------------------------------------------------------------------------------
# Gridworld: tables and exact dynamic programming
# ---------------------------------------------------------------------------------------------


def bfs_distance(world: GridWorld) -> dict[tuple[int, int], int]:
    """Steps to the nearest goal, by breadth-first search on the raw map (independent of P)."""
    grid = world.grid
    goals = [(r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch == "G"]
    dist = {g: 0 for g in goals}
    queue = deque(goals)
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < len(grid) and 0 <= nc < len(grid[0]) and grid[nr][nc] in ".S" and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return dist


def test_transition_tables_by_hand():
    world = GridWorld("room", slip=0.2)
    assert np.allclose(world.P.sum(-1), 1.0)
    idx = {cell: i for i, cell in enumerate(world.cells)}
    s = idx[(0, 0)]
    right = world.P[s, 1]
    # Right: intended (0,1) w.p. 0.8; slips up (off the grid: stay) or down to (1,0), 0.1 each.
    assert right[idx[(0, 1)]] == pytest.approx(0.8)
    assert right[idx[(0, 0)]] == pytest.approx(0.1)
    assert right[idx[(1, 0)]] == pytest.approx(0.1)
    assert world.R[s, 1] == pytest.approx(-1.0)
    cliff = GridWorld("cliff")
    assert cliff.R[cliff.start, 1] == pytest.approx(-101.0)  # step cost + the pit
    assert cliff.R[cliff.start, 0] == pytest.approx(-1.0)
    for t in np.flatnonzero(cliff.terminal):
        assert cliff.P[t, :, t].tolist() == [1.0] * 4 and (cliff.R[t] == 0).all()


@pytest.mark.parametrize("name", ["room", "cliff"])
def test_value_iteration_equals_minus_shortest_path_length(name):
    world = GridWorld(name)
    V, Q, _ = value_iteration(world)
    dist = bfs_distance(world)
    for s, cell in enumerate(world.cells):
        if not world.terminal[s]:
            assert V[s] == pytest.approx(-dist[cell])
    assert np.allclose(Q.max(1), V)


def test_slippery_corridor_matches_geometric_series():
    # "S.G" with slip p: moving right succeeds w.p. 1−p, a slip (up/down) bumps the edge and stays.
    # Each cell costs 1/(1−p) expected steps: V(middle) = −1/(1−p), V(S) = −2/(1−p).
    p = 0.5
    world = GridWorld(["S.G"], slip=p)
    V, Q, _ = value_iteration(world, tol=1e-12)
    assert V[:2] == pytest.approx([-2 / (1 - p), -1 / (1 - p)], abs=1e-9)
    assert Q[:2].argmax(1).tolist() == [1, 1]
    assert policy_evaluation(world, Q.argmax(1)) == pytest.approx(V, abs=1e-9)


def test_policy_evaluation_is_the_bellman_fixed_point():
    world = GridWorld("room", slip=0.2)
    rng = np.random.default_rng(0)
    pi = 0.7 * np.eye(4)[value_iteration(world)[1].argmax(1)] + 0.3 * rng.dirichlet(np.ones(4), world.n_states)
    V = policy_evaluation(world, pi, gamma=0.95)
    assert np.allclose((pi * bellman_q(world, V, 0.95)).sum(1)[~world.terminal], V[~world.terminal])


def test_bad_maps_and_improper_policies_raise_clear_errors():
    with pytest.raises(ValueError, match="equal length"):
        GridWorld(["S.", "G"])
    with pytest.raises(ValueError, match=r"unknown map characters \['\?'\]"):
        GridWorld(["S?G"])
    with pytest.raises(ValueError, match="goal"):
        GridWorld(["S.."])
    with pytest.raises(ValueError, match="unknown gridworld map 'rooms'; expected one of room, cliff"):
        GridWorld("rooms")
    assert GridWorld("S.#\n..G").n_states == 5
    world = GridWorld("room")
    with pytest.raises(ValueError, match=r"never reaches a terminal state from cells \(row, col\) \[\(0, 0\)"):
        policy_evaluation(world, np.zeros(world.n_states, dtype=int))  # always "up"


# ---------------------------------------------------------------------------------------------
# Tabular learners
# ---------------------------------------------------------------------------------------------


def test_one_q_learning_update_by_hand():
    Q = np.zeros((3, 4))
    Q[0, 1] = -1.0
    Q[2] = [-3.0, -2.0, -5.0, -4.0]
    # target = −1 + 0.9·max(Q[2]) = −1 − 1.8 = −2.8; Q ← −1 + 0.5(−2.8 + 1) = −1.9
    td = T.q_learning_update(Q, 0, 1, -1.0, 2, False, alpha=0.5, gamma=0.9)
    assert td == pytest.approx(-1.8) and Q[0, 1] == pytest.approx(-1.9)
    # Terminal: the target is the reward alone. −1.9 + 0.5(−1 + 1.9) = −1.45
    T.q_learning_update(Q, 0, 1, -1.0, 2, True, alpha=0.5, gamma=0.9)
    assert Q[0, 1] == pytest.approx(-1.45)


def test_one_sarsa_update_by_hand():
    Q = np.zeros((3, 4))
    Q[0, 1] = -1.0
    Q[2] = [-3.0, -2.0, -5.0, -4.0]
    # The next action actually taken is 0 (not the greedy 1): target = −1 + 0.9·(−3) = −3.7
    td = T.sarsa_update(Q, 0, 1, -1.0, 2, 0, False, alpha=0.5, gamma=0.9)
    assert td == pytest.approx(-2.7) and Q[0, 1] == pytest.approx(-2.35)


def test_epsilon_greedy_breaks_ties_and_explores():
    rng = np.random.default_rng(0)
    q = np.array([0.0, 1.0, 1.0, -1.0])
    greedy = [T.epsilon_greedy(q, 0.0, rng) for _ in range(200)]
    assert set(greedy) == {1, 2}
    uniform = np.bincount([T.epsilon_greedy(q, 1.0, rng) for _ in range(4000)], minlength=4) / 4000
    assert np.allclose(uniform, 0.25, atol=0.03)


def assert_converged(world, run, value_tol, policy_tol, gap_tol):
    """Compare a learned Q with value iteration on every state reachable from the start."""
    V, Q, _ = value_iteration(world)
    live = world.reachable() & ~world.terminal
    assert np.abs(run.Q.max(1) - V)[live].max() <= value_tol
    # The greedy policy is optimal wherever the optimal action is clear by more than gap_tol...
    top2 = np.sort(Q, 1)[:, -2:]
    clear = live & (top2[:, 1] - top2[:, 0] > gap_tol)
    assert optimal_actions(Q)[np.arange(world.n_states), run.greedy][clear].all()
    # ...and its exact value is within policy_tol of the optimum everywhere.
    assert np.abs(policy_evaluation(world, run.greedy) - V)[live].max() <= policy_tol


def test_q_learning_finds_exact_optimum_on_deterministic_world():
    world = GridWorld("room")
    run = T.train_tabular(world, "q_learning", episodes=300, alpha=1.0, epsilon=0.2, exploring_starts=True, seed=0)
    assert_converged(world, run, value_tol=1e-9, policy_tol=1e-9, gap_tol=0.0)


def test_sarsa_with_decaying_epsilon_finds_exact_optimum_on_deterministic_world():
    world = GridWorld("room")
    run = T.train_tabular(world, "sarsa", episodes=1000, alpha=0.5, epsilon=0.3, epsilon_end=0.0,
                          decay_fraction=0.6, exploring_starts=True, seed=0)
    assert_converged(world, run, value_tol=0.01, policy_tol=1e-9, gap_tol=0.0)


@pytest.mark.parametrize("method,episodes,value_tol", [("q_learning", 1500, 1.0), ("sarsa", 2000, 1.5)])
def test_learners_on_slippery_world_approach_the_optimum(method, episodes, value_tol):
    # With slip the targets are noisy: α = 1/√n averages them. V* ≈ −16 at the start; some
    # optimal actions beat the runner-up by only 0.02, which no 2-second run can resolve, so
    # optimality is asserted where the gap exceeds 0.5 and in value elsewhere. SARSA's values
    # lag behind (they were learned while ε > 0), hence its wider value tolerance.
    world = GridWorld("room", slip=0.2)
    run = T.train_tabular(world, method, episodes=episodes, alpha=1.0, alpha_power=0.5, epsilon=0.3,
                          epsilon_end=0.0 if method == "sarsa" else None, decay_fraction=0.6,
                          exploring_starts=True, seed=0)
    assert_converged(world, run, value_tol=value_tol, policy_tol=0.5, gap_tol=0.5)


def test_cliff_walk_q_learning_takes_the_edge_sarsa_the_safe_path():
    # Sutton & Barto, Example 6.6, with a fixed ε = 0.1: off-policy Q-learning learns the optimal
    # path along the cliff; on-policy SARSA accounts for its own exploration and goes round.
    world = GridWorld("cliff")
    q = T.train_tabular(world, "q_learning", episodes=500, alpha=0.5, epsilon=0.1, seed=0)
    s = T.train_tabular(world, "sarsa", episodes=500, alpha=0.5, epsilon=0.1, seed=0)
    V_star = value_iteration(world)[0][world.start]
    rng = np.random.default_rng(0)
    paths = {name: T.sample_episodes(world, run.greedy, 1, rng, max_steps=100) for name, run in (("q", q), ("s", s))}
    rows = {name: min(world.cells[x][0] for x in ep.states[0][ep.mask[0]]) for name, ep in paths.items()}
    assert paths["q"].rewards.sum() == V_star == -13
    assert rows["q"] == 2  # right next to the cliff
    assert paths["s"].rewards.sum() < V_star and rows["s"] < 2
    # ...and while exploring, SARSA falls off less, so it earns more during training.
    assert s.returns[-200:].mean() > q.returns[-200:].mean()


def test_monte_carlo_evaluation_matches_exact_policy_evaluation():
    world = GridWorld("room", slip=0.2)
    pi = 0.8 * np.eye(4)[value_iteration(world)[1].argmax(1)] + 0.05
    V_pi = policy_evaluation(world, pi)
    episodes = T.sample_episodes(world, pi, 2000, np.random.default_rng(0))
    V_mc, count = T.monte_carlo_values(world, episodes)
    well_visited = count >= 500
    assert well_visited[world.start]
    assert np.abs(V_mc - V_pi)[well_visited].max() < 0.6


def test_lambda_returns_one_step_by_hand_and_unbiased_for_every_lambda():
    world = GridWorld("room", slip=0.2)
    pi = 0.8 * np.eye(4)[value_iteration(world)[1].argmax(1)] + 0.05
    V_pi = policy_evaluation(world, pi)
    episodes = T.sample_episodes(world, pi, 2000, np.random.default_rng(1))
    # λ = 0 is the one-step TD target r_t + V(s_{t+1}) (V = 0 past the end), checked on episode 0.
    G0 = T.lambda_returns(episodes, V_pi, lam=0.0)
    n = int(episodes.mask[0].sum())
    nxt = np.append(V_pi[episodes.states[0, 1:n]], 0.0)
    assert np.allclose(G0[0, :n], episodes.rewards[0, :n] + nxt)
    # With the true V^π every λ-return is an unbiased estimate of V^π(start); variance grows with λ.
    variances = []
    for lam in (0.0, 0.5, 1.0):
        G = T.lambda_returns(episodes, V_pi, lam=lam)[:, 0]
        assert abs(G.mean() - V_pi[world.start]) < 4 * G.std() / math.sqrt(len(G)) + 1e-6
        variances.append(G.var())
    assert variances[0] < variances[1] < variances[2]


def test_learners_reject_unknown_method():
    with pytest.raises(ValueError, match="q_learning, sarsa"):
        T.train_tabular(GridWorld("room"), "td_lambda")


# ---------------------------------------------------------------------------------------------
# PPO with a critic on the gridworld (actor_critic.py)
# ---------------------------------------------------------------------------------------------


def test_per_state_step_moves_each_value_toward_its_mean_return():
    from alignforge.classic.actor_critic import per_state_step
    from alignforge.losses import value_loss

    V = torch.zeros(3, requires_grad=True)
    states, mask = torch.tensor([[0, 0, 1, 2]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 4.0, 6.0, 100.0]])  # the padded step (state 2) must not count
    loss, _ = value_loss(V[states], torch.zeros(1, 4), returns, mask, clip=None)
    per_state_step(V, loss, states, mask, lr=0.5)
    # Halfway to each state's mean return: state 0 → ½·3, state 1 → ½·6, state 2 untouched.
    assert V.detach().tolist() == pytest.approx([1.5, 3.0, 0.0])


@pytest.mark.parametrize("lam,expected", [(1.0, [18.0, 19.0]), (0.0, [9.0, 19.0])])
def test_gae_bootstraps_episodes_cut_off_at_max_steps(lam, expected):
    from alignforge.classic.actor_critic import gae_with_truncation

    world = GridWorld(["S...G"])
    V = torch.tensor([0.0, 10.0, 20.0, 30.0, 0.0])  # deliberately wrong, to see where it enters
    right = np.ones(world.n_states, dtype=int)
    cut = T.sample_episodes(world, right, 1, np.random.default_rng(0), max_steps=2)
    # Cut after 2 steps in cell 2: λ=1 → G_0 = −1 −1 + V(2) = 18, G_1 = −1 + V(2) = 19;
    # λ=0 → G_t = r_t + V(s_{t+1}): G_0 = −1 + V(1) = 9, G_1 = 19.
    adv, ret = gae_with_truncation(world, cut, V, gamma=1.0, lam=lam)
    assert ret[0].tolist() == pytest.approx(expected)
    assert adv[0].tolist() == pytest.approx([expected[0] - 0.0, expected[1] - 10.0])
    # An episode that reaches G is not bootstrapped: with λ = 1 the returns are −4, −3, −2, −1.
    full = T.sample_episodes(world, right, 1, np.random.default_rng(0), max_steps=10)
    assert gae_with_truncation(world, full, V, 1.0, 1.0)[1][0].tolist() == pytest.approx([-4, -3, -2, -1])


def test_ppo_with_tabular_critic_reaches_the_optimum():
    from alignforge.classic.actor_critic import train_ppo_gridworld

    world = GridWorld("room")
    V_star = value_iteration(world)[0][world.start]
    run = train_ppo_gridworld(world, iterations=30, seed=0)
    h = run.history
    assert h["value_start"][0] < V_star - 100  # the uniform policy wanders for hundreds of steps
    assert h["value_start"][-1] > V_star - 0.5  # exact V^π of the final stochastic policy
    assert h["explained_variance"][-1] > 0.9 and max(h["clip_frac"]) > 0.05
    greedy = T.sample_episodes(world, run.policy.argmax(1), 1, np.random.default_rng(0), max_steps=50)
    assert greedy.rewards.sum() == V_star  # the greedy path is a shortest one


def test_ppo_with_tabular_critic_on_slippery_world():
    from alignforge.classic.actor_critic import train_ppo_gridworld

    world = GridWorld("room", slip=0.2)
    V_star = value_iteration(world)[0][world.start]
    run = train_ppo_gridworld(world, iterations=30, seed=0)
    assert run.history["value_start"][-1] > V_star - 1.0
