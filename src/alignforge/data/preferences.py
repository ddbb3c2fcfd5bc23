"""Preference records → weighted training pairs, once, for every stage that learns from preferences
(reward models, DPO family, preference models for Nash-MD).

- A comparison is one pair; its Llama-2 ``strength`` (0–3) maps to a loss margin through a table
  in the *stage config* (design §8: the data stores the level, the config decides the margin).
- A K-way ranking expands to all C(K,2) pairs, each weighted 1/C(K,2) so the ranking's prompt
  counts once (InstructGPT: the pairs of one ranking are correlated; putting them in one batch
  element rather than K(K−1)/2 separate ones avoids overfitting).
- Likert ratings of responses to the same prompt become pairs between every two responses whose
  ratings differ (equal ratings are ties: dropped and counted); the rating gap sets the strength.
- Ties (``tie: true``) carry no preference direction for a Bradley–Terry model: dropped, counted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from alignforge.data.records import Comparison, Prompt, Ranking, Rating, Record


@dataclass
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    strength: int | None = None
    weight: float = 1.0
    source: str = "comparison"  # comparison | ranking | rating


@dataclass
class PairStats:
    """What the expansion did, for the stage's log (nothing is dropped silently)."""

    comparisons: int = 0
    rankings: int = 0
    ratings: int = 0
    pairs: int = 0
    ties_dropped: int = 0
    weak_dropped: int = 0
    by_source: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, int]:
        return {"comparisons": self.comparisons, "rankings": self.rankings, "ratings": self.ratings,
                "pairs": self.pairs, "ties_dropped": self.ties_dropped,
                "weak_dropped": self.weak_dropped,
                **{f"pairs_from_{k}": v for k, v in self.by_source.items()}}


def _prompt_key(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def likert_gap_to_strength(gap: int) -> int:
    """Rating gap 1..6 → strength 0..3 (1 → negligibly, 2 → slightly, 3 → better, ≥4 → significantly)."""
    return min(max(gap - 1, 0), 3)


def expand_preferences(records: Iterable[Record], stats: PairStats | None = None,
                       use_ratings: bool = True, min_strength: int = 0) -> list[PreferencePair]:
    """All training pairs implied by comparison, ranking and rating records (see module doc); pairs
    with a strength below ``min_strength`` are dropped and counted (pairs without one are kept)."""
    stats = stats if stats is not None else PairStats()
    pairs: list[PreferencePair] = []
    ratings_by_prompt: dict[str, list[Rating]] = defaultdict(list)
    for rec in records:
        if isinstance(rec, Comparison):
            stats.comparisons += 1
            if rec.tie:
                stats.ties_dropped += 1
                continue
            pairs.append(PreferencePair(rec.prompt, rec.chosen, rec.rejected, rec.strength, 1.0, "comparison"))
        elif isinstance(rec, Ranking):
            stats.rankings += 1
            k = len(rec.responses)
            w = 1.0 / (k * (k - 1) / 2)
            for better, worse in rec.comparisons():
                if rec.responses[better] == rec.responses[worse]:
                    stats.ties_dropped += 1  # the same text ranked twice carries no preference
                    continue
                pairs.append(PreferencePair(rec.prompt, rec.responses[better], rec.responses[worse], None, w,
                                            "ranking"))
        elif isinstance(rec, Rating):
            stats.ratings += 1
            if use_ratings:
                ratings_by_prompt[_prompt_key(rec.prompt)].append(rec)
        else:
            raise TypeError(f"expand_preferences takes comparison, ranking or rating records, got {rec.kind}")
    for group in ratings_by_prompt.values():
        pairs.extend(_pairs_from_ratings(group, stats))
    if min_strength > 0:
        # Why: an annotator's "negligibly better" is close to a coin flip (in the world, strength-0
        # comparisons agree with the gold judge on 37-51% of the pairs gold decides).
        kept = [p for p in pairs if p.strength is None or p.strength >= min_strength]
        stats.weak_dropped += len(pairs) - len(kept)
        pairs = kept
    stats.pairs = len(pairs)
    for p in pairs:
        stats.by_source[p.source] += 1
    return pairs


def _pairs_from_ratings(group: Sequence[Rating], stats: PairStats) -> list[PreferencePair]:
    # Average repeated ratings of the same response (several annotators) before pairing.
    scores: dict[str, list[int]] = defaultdict(list)
    for r in group:
        scores[r.response].append(r.likert)
    responses = list(scores)
    means = {resp: sum(v) / len(v) for resp, v in scores.items()}
    out = []
    prompt = group[0].prompt
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            a, b = responses[i], responses[j]
            if means[a] == means[b]:
                stats.ties_dropped += 1
                continue
            hi, lo = (a, b) if means[a] > means[b] else (b, a)
            gap = round(abs(means[a] - means[b]))
            out.append(PreferencePair(prompt, hi, lo, likert_gap_to_strength(max(gap, 1)), 1.0, "rating"))
    return out


def margins_for(pairs: Sequence[PreferencePair], table: Sequence[float] | None) -> list[float]:
    """Per-pair margin from a strength → margin table (Llama-2); 0 where no table or no strength."""
    if table is None:
        return [0.0] * len(pairs)
    if len(table) != 4:
        raise ValueError(f"the margin table needs 4 entries (strength 0..3), got {len(table)}")
    return [float(table[p.strength]) if p.strength is not None else 0.0 for p in pairs]
