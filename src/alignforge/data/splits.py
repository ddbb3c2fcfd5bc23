"""Held-out splits of training records, seeded: SFT's eval share, DPO's by-prompt split."""

from __future__ import annotations

import random


def split_eval(records: list, fraction: float, seed: int, max_eval: int | None = None) -> tuple[list, list]:
    """A seeded held-out share of the training records (used when data.eval is not given),
    at most ``max_eval`` of them: the rest stay in training rather than being thrown away."""
    if fraction <= 0 or len(records) < 2 or max_eval == 0:
        return records, []
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_eval = min(len(records) - 1, max(1, round(fraction * len(records))))
    if max_eval is not None:
        n_eval = min(n_eval, max_eval)
    held = set(idx[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
