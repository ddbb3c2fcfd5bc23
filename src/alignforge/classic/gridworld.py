"""A gridworld with step costs, and the exact dynamic-programming answers for it.

The world is a finite MDP written out as tensors, P[s, a, s'] and R[s, a], so value iteration
and policy evaluation are a few matrix products, and the learners in ``tabular.py`` can be
checked against the exact optimum. See ``docs/classic.md``.

Map characters: ``.`` free, ``#`` wall, ``S`` start, ``G`` goal (terminal), ``X`` pit (terminal,
pays ``pit_reward``). Every move costs ``step_cost``; bumping into a wall or the edge stays put
(and still costs). With ``slip`` p the agent moves to one of the two perpendicular directions
instead, p/2 each (the classic "slippery" world).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTIONS = ("up", "right", "down", "left")
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
ARROWS = "↑→↓←"

MAPS = {
    # A small room with an inner wall: the shortest path must go round it.
    "room": ["S...#...",
             ".##.#.#.",
             "....#.#.",
             ".#....#G",
             "...#...."],
    # Sutton & Barto's cliff walk (Example 6.6), with the cliff as a terminal pit.
    "cliff": ["............",
              "............",
              "............",
              "SXXXXXXXXXXG"],
}


@dataclass
class GridWorld:
    grid: list[str]
    step_cost: float = 1.0
    slip: float = 0.0
    goal_reward: float = 0.0
    pit_reward: float = -100.0
    # Derived tables, filled in __post_init__.
    cells: list[tuple[int, int]] = field(init=False, repr=False)
    P: np.ndarray = field(init=False, repr=False)          # [S, A, S'] transition probabilities
    R: np.ndarray = field(init=False, repr=False)          # [S, A] expected immediate reward
    terminal: np.ndarray = field(init=False, repr=False)   # [S] bool
    arrival: np.ndarray = field(init=False, repr=False)    # [S] extra reward for entering s (goal/pit)
    start: int = field(init=False)

    def __post_init__(self):
        if isinstance(self.grid, str):
            if self.grid in MAPS:
                self.grid = MAPS[self.grid]
            elif "\n" in self.grid.strip():
                self.grid = self.grid.strip().splitlines()
            else:
                raise ValueError(f"unknown gridworld map {self.grid!r}; expected one of {', '.join(MAPS)}, "
                                 "a multi-line string or a list of rows")
        widths = {len(row) for row in self.grid}
        if len(widths) != 1:
            raise ValueError(f"gridworld rows must have equal length, got lengths {sorted(widths)}")
        bad = {c for row in self.grid for c in row} - set(".#SGX")
        if bad:
            raise ValueError(f"unknown map characters {sorted(bad)}; expected . # S G X")
        if sum(row.count("S") for row in self.grid) != 1:
            raise ValueError("gridworld needs exactly one start cell 'S'")
        if not 0.0 <= self.slip <= 1.0:
            raise ValueError(f"slip must be a probability in [0, 1], got {self.slip}")
        self.cells = [(r, c) for r, row in enumerate(self.grid) for c, ch in enumerate(row) if ch != "#"]
        index = {cell: i for i, cell in enumerate(self.cells)}
        kinds = np.array([self.grid[r][c] for r, c in self.cells])
        self.start = int(np.flatnonzero(kinds == "S")[0])
        self.terminal = (kinds == "G") | (kinds == "X")
        if not (kinds == "G").any():
            raise ValueError("gridworld needs at least one goal cell 'G'")
        S, A = len(self.cells), len(ACTIONS)

        # Deterministic successor of each state under each of the four directions.
        succ = np.empty((S, A), dtype=np.int64)
        for s, (r, c) in enumerate(self.cells):
            for a, (dr, dc) in enumerate(MOVES):
                succ[s, a] = index.get((r + dr, c + dc), s)  # off-grid or wall: stay
        # Intended direction with 1 − slip, each perpendicular one with slip/2.
        self.P = np.zeros((S, A, S))
        s_idx = np.arange(S)[:, None]
        a_idx = np.arange(A)[None, :]
        for turn, prob in ((0, 1.0 - self.slip), (1, self.slip / 2), (3, self.slip / 2)):
            np.add.at(self.P, (s_idx, a_idx, succ[:, (np.arange(A) + turn) % A]), prob)
        self.arrival = np.where(kinds == "G", self.goal_reward, np.where(kinds == "X", self.pit_reward, 0.0))
        self.R = -self.step_cost + self.P @ self.arrival
        # Terminal states absorb with zero reward, so V(terminal) = 0 under any γ.
        self.P[self.terminal] = 0.0
        for s in np.flatnonzero(self.terminal):
            self.P[s, :, s] = 1.0
        self.R[self.terminal] = 0.0
        self._cdf = np.cumsum(self.P, axis=-1)

    @property
    def n_states(self) -> int:
        return len(self.cells)

    @property
    def n_actions(self) -> int:
        return len(ACTIONS)

    def step(self, s: int, a: int, rng: np.random.Generator) -> tuple[int, float, bool]:
        """Sample one transition: (next state, reward, episode over)."""
        s2 = int(np.searchsorted(self._cdf[s, a], rng.random(), side="right"))
        s2 = min(s2, self.n_states - 1)  # guards the cdf's last entry rounding below 1
        return s2, float(-self.step_cost + self.arrival[s2]), bool(self.terminal[s2])

    def reachable(self) -> np.ndarray:
        """[S] bool: states some policy can reach from the start (graph search on P > 0)."""
        seen = np.zeros(self.n_states, dtype=bool)
        seen[self.start] = True
        frontier = seen.copy()
        while frontier.any():
            nxt = (self.P[frontier] > 0).any(axis=(0, 1)) & ~seen
            seen |= nxt
            frontier = nxt
        return seen

    def render(self, values: np.ndarray | None = None, policy: np.ndarray | None = None) -> str:
        """The map with an arrow per state (``policy``: [S] actions) or its value, for printing."""
        rows = [[f"{ch:>6}" if values is not None else ch for ch in row] for row in self.grid]
        for s, (r, c) in enumerate(self.cells):
            if self.terminal[s]:
                continue
            if policy is not None:
                rows[r][c] = ARROWS[policy[s]] if values is None else f"{ARROWS[policy[s]]}{values[s]:5.1f}"
            elif values is not None:
                rows[r][c] = f"{values[s]:6.1f}"
        return "\n".join(("" if values is None else " ").join(row) for row in rows)


def bellman_q(world: GridWorld, V: np.ndarray, gamma: float) -> np.ndarray:
    """Q(s, a) = R(s, a) + γ Σ_s' P(s'|s, a) V(s')  for all s, a at once."""
    return world.R + gamma * world.P @ V


def value_iteration(world: GridWorld, gamma: float = 1.0, tol: float = 1e-10,
                    max_iter: int = 100_000) -> tuple[np.ndarray, np.ndarray, int]:
    """V ← max_a Q(s, a) until the largest change is below ``tol``. Returns (V*, Q*, iterations).

    γ = 1 is fine here (a stochastic shortest-path problem): every step costs, so a policy that
    never reaches the goal has value −∞ and is never the max once V has converged.
    """
    V = np.zeros(world.n_states)
    for it in range(1, max_iter + 1):
        Q = bellman_q(world, V, gamma)
        V_new = Q.max(axis=1)
        if np.max(np.abs(V_new - V)) < tol:
            return V_new, bellman_q(world, V_new, gamma), it
        V = V_new
    raise RuntimeError(f"value iteration did not converge in {max_iter} iterations (γ={gamma})")


def policy_matrix(world: GridWorld, policy: np.ndarray) -> np.ndarray:
    """[S, A] action probabilities from either that or a deterministic [S] action array."""
    policy = np.asarray(policy)
    if policy.ndim == 1:
        return np.eye(world.n_actions)[policy]
    return policy


def policy_evaluation(world: GridWorld, policy: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """V^π exactly: solve (I − γ P_π) V = R_π on the non-terminal states (V = 0 on terminal ones)."""
    pi = policy_matrix(world, policy)
    P_pi = np.einsum("sa,sat->st", pi, world.P)
    R_pi = (pi * world.R).sum(1)
    live = ~world.terminal
    if gamma >= 1.0:
        # With γ = 1 the system is singular unless every state ends up terminal under π.
        ends = world.terminal.copy()
        while True:
            more = ends | (P_pi[:, ends].sum(1) > 0)
            if (more == ends).all():
                break
            ends = more
        if not ends.all():
            stuck = [world.cells[s] for s in np.flatnonzero(~ends)]
            raise ValueError(f"policy_evaluation: with γ = 1 the policy never reaches a terminal state "
                             f"from cells (row, col) {stuck[:5]}, so their value is unbounded")
    V = np.zeros(world.n_states)
    V[live] = np.linalg.solve(np.eye(live.sum()) - gamma * P_pi[np.ix_(live, live)], R_pi[live])
    return V


def optimal_actions(Q: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """[S, A] bool: actions whose Q is within ``atol`` of the best (ties are all optimal)."""
    return Q >= Q.max(axis=1, keepdims=True) - atol
