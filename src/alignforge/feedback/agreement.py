"""Inter-annotator agreement: pairwise agreement rate and Krippendorff's α.

Both take *units* — one list of labels per item, one label per annotator who labelled it — so
they are independent of the database and tested against hand-computed values (Krippendorff's
own worked example for α).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Hashable, Optional, Sequence


@dataclass
class Agreement:
    agree: float      # agreeing annotator pairs (fractional for rankings: share of concordant pairs)
    pairs: int        # annotator pairs compared
    items: int        # items labelled by at least two annotators

    @property
    def rate(self) -> Optional[float]:
        return self.agree / self.pairs if self.pairs else None


def pairwise_agreement(units: Sequence[Sequence[Hashable]]) -> Agreement:
    """Share of annotator pairs, over items labelled by ≥ 2 annotators, that gave the same label.

    InstructGPT reports this for its labellers' pairwise comparisons (≈ 73 %).
    """
    agree = pairs = items = 0
    for labels in units:
        if len(labels) < 2:
            continue
        items += 1
        for a, b in combinations(labels, 2):
            pairs += 1
            agree += a == b
    return Agreement(agree, pairs, items)


def ranking_agreement(units: Sequence[Sequence[Sequence[int]]]) -> Agreement:
    """Rankings: each annotator pair scores the share of response pairs they order the same way
    (Kendall-style concordance, in [0, 1]); identical rankings score 1, reversed ones 0."""
    agree = 0.0
    pairs = items = 0
    for rankings in units:
        if len(rankings) < 2:
            continue
        items += 1
        for r1, r2 in combinations(rankings, 2):
            pos1 = {idx: p for p, idx in enumerate(r1)}
            pos2 = {idx: p for p, idx in enumerate(r2)}
            response_pairs = list(combinations(sorted(pos1), 2))
            same = sum((pos1[i] < pos1[j]) == (pos2[i] < pos2[j]) for i, j in response_pairs)
            pairs += 1
            agree += same / len(response_pairs) if response_pairs else 1.0
    return Agreement(agree, pairs, items)


def krippendorff_alpha(units: Sequence[Sequence[float]], metric: str = "interval") -> Optional[float]:
    """Krippendorff's α for ``units`` (each the values that different coders gave one unit).

    α = 1 − D_o / D_e from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability"): every ordered pair of values within a unit of m values counts 1/(m − 1).
    ``metric``: ``nominal``, ``ordinal`` (the Likert default in Krippendorff's book) or
    ``interval``. Units with fewer than two values carry no information and are ignored.
    Returns ``None`` when there is nothing to compare or no variation at all (α undefined).
    """
    if metric not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"metric must be nominal, ordinal or interval, got {metric!r}")
    coincidence: Counter = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    coincidence[(values[i], values[j])] += 1.0 / (m - 1)
    if not coincidence:
        return None
    n_c: Counter = Counter()
    for (c, _k), w in coincidence.items():
        n_c[c] += w
    n = sum(n_c.values())
    categories = sorted(n_c)

    def delta2(c, k) -> float:
        if metric == "nominal":
            return 0.0 if c == k else 1.0
        if metric == "interval":
            return float(c - k) ** 2
        lo, hi = (c, k) if c <= k else (k, c)  # ordinal: mass of the categories between c and k
        between = sum(n_c[g] for g in categories if lo <= g <= hi)
        return (between - (n_c[c] + n_c[k]) / 2.0) ** 2

    d_o = sum(w * delta2(c, k) for (c, k), w in coincidence.items()) / n
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in categories for k in categories) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1.0 - d_o / d_e
