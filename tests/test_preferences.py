"""Preference expansion: counts, weights, ties, Likert → pairs."""

import pytest

from alignforge.data.preferences import PairStats, expand_preferences, likert_gap_to_strength, margins_for
from alignforge.data.records import Comparison, Ranking, Rating


def test_ranking_expands_to_all_pairs_weighted_to_count_once():
    r = Ranking(prompt="p", responses=["a", "b", "c", "d"], ranking=[2, 0, 3, 1])
    stats = PairStats()
    pairs = expand_preferences([r], stats)
    assert len(pairs) == 6 and stats.pairs == 6
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)
    got = {(p.chosen, p.rejected) for p in pairs}
    assert got == {("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b")}


def test_comparisons_keep_strength_and_ties_are_dropped_and_counted():
    recs = [Comparison(prompt="p", chosen="x", rejected="y", strength=3),
            Comparison(prompt="p", chosen="u", rejected="v", tie=True)]
    stats = PairStats()
    pairs = expand_preferences(recs, stats)
    assert [(p.chosen, p.rejected, p.strength) for p in pairs] == [("x", "y", 3)]
    assert stats.ties_dropped == 1 and stats.comparisons == 2


def test_likert_to_pairs_with_ties_and_averaging():
    recs = [Rating(prompt="q", response="a", likert=7), Rating(prompt="q", response="b", likert=3),
            Rating(prompt="q", response="c", likert=3), Rating(prompt="q", response="a", likert=5),
            Rating(prompt="other", response="z", likert=1)]
    stats = PairStats()
    pairs = expand_preferences(recs, stats)
    # a averages 6; b=c=3 is a tie; a>b and a>c with gap 3 → strength 2
    assert sorted((p.chosen, p.rejected, p.strength) for p in pairs) == [("a", "b", 2), ("a", "c", 2)]
    assert stats.ties_dropped == 1 and stats.ratings == 5
    assert expand_preferences(recs, use_ratings=False) == []


def test_gap_to_strength_and_margin_table():
    assert [likert_gap_to_strength(g) for g in range(1, 7)] == [0, 1, 2, 3, 3, 3]
    pairs = expand_preferences([Comparison(prompt="p", chosen="x", rejected="y", strength=1),
                                Comparison(prompt="p", chosen="x", rejected="z")])
    assert margins_for(pairs, [0.0, 0.5, 1.0, 2.0]) == [0.5, 0.0]
    assert margins_for(pairs, None) == [0.0, 0.0]
    with pytest.raises(ValueError, match="4 entries"):
        margins_for(pairs, [1.0])


def test_min_strength_drops_weak_pairs_keeps_unrated_ones_and_counts():
    recs = [Comparison(prompt="p", chosen="x", rejected="y", strength=0),
            Comparison(prompt="p", chosen="x", rejected="z", strength=2),
            Comparison(prompt="p", chosen="u", rejected="v"),  # no strength (e.g. HH-RLHF): kept
            Ranking(prompt="q", responses=["a", "b"], ranking=[1, 0]),  # rankings carry none: kept
            Rating(prompt="r", response="good", likert=6), Rating(prompt="r", response="ok", likert=5),
            Rating(prompt="r", response="bad", likert=2)]
    stats = PairStats()
    pairs = expand_preferences(recs, stats, min_strength=1)
    # ratings: good>ok gap 1 → strength 0 (dropped), good>bad gap 4 → 3, ok>bad gap 3 → 2
    assert sorted((p.chosen, p.rejected, p.strength) for p in pairs) == [
        ("b", "a", None), ("good", "bad", 3), ("ok", "bad", 2), ("u", "v", None), ("x", "z", 2)]
    assert stats.weak_dropped == 2 and stats.pairs == 5 and stats.as_dict()["weak_dropped"] == 2
    assert len(expand_preferences(recs, min_strength=3)) == 3
    assert len(expand_preferences(recs)) == 7
