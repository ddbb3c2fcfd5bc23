"""Agreement statistics against published and hand-computed values."""

from __future__ import annotations

import pytest

from alignforge.feedback.agreement import krippendorff_alpha, pairwise_agreement, ranking_agreement

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example:
# 4 observers × 12 units, missing values. Published: nominal .743, ordinal .815, interval .849.
OBSERVERS = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
             [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
             [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
             [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]
UNITS = [[obs[u] for obs in OBSERVERS if obs[u] is not None] for u in range(12)]


@pytest.mark.parametrize("metric, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_published_example(metric, published):
    assert krippendorff_alpha(UNITS, metric) == pytest.approx(published, abs=5e-4)


def test_krippendorff_hand_computed_small_case():
    # Two coders, units (1,1), (2,3), (3,3). Coincidences (each pair 1/(2-1) = 1, both orders):
    # o11 = 2, o23 = o32 = 1, o33 = 2; n1 = 2, n2 = 1, n3 = 3, n = 6.
    # Interval: D_o = (1 + 1) * 1 / 6 = 1/3;
    # D_e = sum_ck n_c n_k (c-k)^2 / (n(n-1)) = 2*(2*1*1 + 2*3*4 + 1*3*1) / 30 = 2*29/30.
    # alpha = 1 - (1/3) / (58/30) = 1 - 10/58.
    units = [[1, 1], [2, 3], [3, 3]]
    assert krippendorff_alpha(units, "interval") == pytest.approx(1 - 10 / 58)
    # Nominal: D_o = 2/6; D_e = 2*(2*1 + 2*3 + 1*3)/30 = 22/30 -> alpha = 1 - (1/3)/(22/30) = 1 - 10/22.
    assert krippendorff_alpha(units, "nominal") == pytest.approx(1 - 10 / 22)


def test_krippendorff_edges():
    assert krippendorff_alpha([[3, 3], [5, 5], [1, 1]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[4], [5]]) is None            # no unit with two values
    assert krippendorff_alpha([[4, 4], [4, 4]]) is None      # no variation: undefined
    assert krippendorff_alpha([[1, 7], [7, 1]]) < 0          # systematic disagreement
    with pytest.raises(ValueError, match="metric"):
        krippendorff_alpha(UNITS, "ratio-ish")


def test_pairwise_agreement_hand_computed():
    # item 1: a,a,b -> pairs (a,a) agree, (a,b), (a,b) -> 1/3; item 2: tie,tie -> 1/1; item 3: one label, ignored.
    result = pairwise_agreement([["a", "a", "b"], ["tie", "tie"], ["b"]])
    assert (result.agree, result.pairs, result.items) == (1 + 1, 3 + 1, 2)
    assert result.rate == pytest.approx(0.5)
    assert pairwise_agreement([["a"]]).rate is None


def test_ranking_agreement_hand_computed():
    # Same ranking: 1. Reversed: 0. [0,1,2] vs [1,0,2]: pairs (0,1) differ, (0,2), (1,2) agree -> 2/3.
    assert ranking_agreement([[[0, 1, 2], [0, 1, 2]]]).rate == 1.0
    assert ranking_agreement([[[0, 1, 2], [2, 1, 0]]]).rate == 0.0
    r = ranking_agreement([[[0, 1, 2], [1, 0, 2]], [[1, 0], [1, 0]]])
    assert r.pairs == 2 and r.rate == pytest.approx((2 / 3 + 1) / 2)
