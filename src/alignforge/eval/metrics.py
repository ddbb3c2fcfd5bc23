"""Statistics of the evaluation protocol (design §8), as plain functions of per-prompt numbers.

Everything here is resampling over *prompts*: the unit of evaluation is a test prompt, and two
policies evaluated on the same prompts are compared prompt by prompt (paired), which removes the
prompt-difficulty variance from the difference. All functions are deterministic for a ``seed``.

* :func:`bootstrap_ci` — percentile bootstrap 95% CI of a mean.
* :func:`paired_bootstrap` — CI of mean(a) − mean(b) resampling prompts jointly.
* :func:`win_rate` — P(A beats B) per prompt with ties counted ½, with a paired CI.
* :func:`gap_closed` — (policy − SFT) / (oracle − SFT): the share of the SFT→oracle gold gap closed.
* :func:`length_fit` / :func:`length_controlled` — gold reward at a common response length, from
  one pooled least-squares line reward ≈ a + b·length (length is the world's designed hack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass
class Estimate:
    """A point estimate with a (1 − alpha) confidence interval and the sample size."""

    value: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def _as_array(x: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def _resample_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 stat: Callable[[np.ndarray], np.ndarray] | None = None) -> Estimate:
    """Percentile bootstrap CI of ``stat`` (default: the mean) over the values (prompts)."""
    a = _as_array(values, "bootstrap_ci(values)")
    idx = _resample_idx(a.size, n_boot, seed)
    samples = a[idx]
    boots = samples.mean(1) if stat is None else np.apply_along_axis(stat, 1, samples)
    point = float(a.mean() if stat is None else stat(a))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(lo), float(hi), int(a.size))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> Estimate:
    """mean(a) − mean(b) for paired per-prompt values, CI by resampling prompts jointly."""
    x, y = _as_array(a, "paired_bootstrap(a)"), _as_array(b, "paired_bootstrap(b)")
    if x.size != y.size:
        raise ValueError(f"paired_bootstrap: a has {x.size} prompts, b has {y.size}; they must be the same prompts")
    return bootstrap_ci(x - y, n_boot=n_boot, alpha=alpha, seed=seed)


def win_scores(a: Sequence[float], b: Sequence[float], tol: float = 1e-9) -> np.ndarray:
    """Per prompt: 1 if A's score beats B's, 0 if it loses, ½ for a tie (|a − b| ≤ tol)."""
    x, y = _as_array(a, "win_rate(a)"), _as_array(b, "win_rate(b)")
    if x.size != y.size:
        raise ValueError(f"win_rate: a has {x.size} prompts, b has {y.size}; they must be the same prompts")
    d = x - y
    return np.where(np.abs(d) <= tol, 0.5, (d > 0).astype(np.float64))


def win_rate(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
             tol: float = 1e-9) -> Estimate:
    """Win-rate of A over B per prompt, ties = ½, with a bootstrap CI over prompts."""
    return bootstrap_ci(win_scores(a, b, tol), n_boot=n_boot, alpha=alpha, seed=seed)


def gap_closed(policy: Sequence[float], sft: Sequence[float], oracle: Sequence[float], *, n_boot: int = 2000,
               alpha: float = 0.05, seed: int = 0) -> Estimate:
    """(mean policy − mean SFT) / (mean oracle − mean SFT), CI by resampling prompts jointly.

    1 = the policy reaches the oracle's gold reward, 0 = no better than SFT, < 0 = worse.
    Undefined (ValueError) when the oracle is not better than SFT on these prompts.
    """
    p, s, o = (_as_array(v, f"gap_closed({k})") for v, k in ((policy, "policy"), (sft, "sft"), (oracle, "oracle")))
    if not (p.size == s.size == o.size):
        raise ValueError(f"gap_closed: {p.size}, {s.size}, {o.size} prompts; they must be the same prompts")
    gap = o.mean() - s.mean()
    if gap <= 0:
        raise ValueError(f"gap_closed: the oracle ({o.mean():.3f}) is not better than SFT ({s.mean():.3f})")
    idx = _resample_idx(p.size, n_boot, seed)
    num = p[idx].mean(1) - s[idx].mean(1)
    den = o[idx].mean(1) - s[idx].mean(1)
    ok = den > 0
    boots = num[ok] / den[ok]
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(float((p.mean() - s.mean()) / gap), float(lo), float(hi), int(p.size))


@dataclass
class LengthFit:
    """reward ≈ intercept + slope · length, fitted by least squares on pooled responses."""

    intercept: float
    slope: float
    n: int

    def predict(self, length: float) -> float:
        return self.intercept + self.slope * length


def length_fit(rewards: Sequence[float], lengths: Sequence[float], groups: Sequence[object] | None = None) -> LengthFit:
    """Least-squares slope of gold reward on response length (words or tokens).

    ``groups`` (e.g. the prompt of each response, when several policies answered the same
    prompts): the slope is fitted *within* groups (reward and length centred per group), so
    that prompt types with naturally longer answers (a refusal vs a one-word answer) do not
    pass for a length effect. The intercept is then the pooled mean at the pooled mean length.
    """
    y, x = _as_array(rewards, "length_fit(rewards)"), _as_array(lengths, "length_fit(lengths)")
    if x.size != y.size:
        raise ValueError(f"length_fit: {y.size} rewards but {x.size} lengths")
    xc, yc = x - x.mean(), y - y.mean()
    if groups is not None:
        if len(groups) != x.size:
            raise ValueError(f"length_fit: {len(groups)} groups for {x.size} responses")
        keys = [repr(g) for g in groups]
        for k in set(keys):
            sel = np.array([kk == k for kk in keys])
            xc[sel] = x[sel] - x[sel].mean()
            yc[sel] = y[sel] - y[sel].mean()
    denom = float((xc * xc).sum())
    if x.size < 2 or denom == 0:
        return LengthFit(float(y.mean()), 0.0, int(x.size))  # no length variation: nothing to control
    slope = float((xc * yc).sum() / denom)
    return LengthFit(float(y.mean() - slope * x.mean()), slope, int(x.size))


def length_controlled(rewards: Sequence[float], lengths: Sequence[float], fit: LengthFit, at_length: float, *,
                      n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """Mean reward moved to a common length: mean(r_i − slope·(len_i − at_length)), with a CI.

    Use one :func:`length_fit` pooled over every policy being compared and one ``at_length``
    (e.g. the SFT policy's mean length) so the numbers compare; a policy that only gained
    reward by writing longer answers loses that gain here.
    """
    r, n = _as_array(rewards, "length_controlled(rewards)"), _as_array(lengths, "length_controlled(lengths)")
    if r.size != n.size:
        raise ValueError(f"length_controlled: {r.size} rewards but {n.size} lengths")
    return bootstrap_ci(r - fit.slope * (n - at_length), n_boot=n_boot, alpha=alpha, seed=seed)
