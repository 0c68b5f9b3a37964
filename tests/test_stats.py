"""Paired statistics (composition.evaluation.stats) against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from composition.errors import CompositionError
from composition.evaluation.stats import (PairedComparison, bootstrap_difference, bootstrap_interval, compare_paired,
                                          mcnemar_exact)


@pytest.mark.parametrize("only_a, only_b, expected", [
    (0, 0, 1.0),  # nothing tells the two apart
    (3, 0, 0.25),  # 2 · (1/2)^3
    (0, 3, 0.25),  # two-sided: the same either way round
    (5, 0, 0.0625),  # 2 · (1/2)^5
    (6, 1, 0.125),  # 2 · (C(7,0) + C(7,1)) / 2^7 = 2 · 8 / 128
    (8, 2, 0.109375),  # 2 · (1 + 10 + 45) / 1024 = 112 / 1024
    (5, 5, 1.0),  # 2 · P(X ≤ 5), X ~ Bin(10, 1/2), is above 1: capped
    (4, 5, 1.0),
])
def test_exact_mcnemar_by_hand(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, abs=1e-12)


def test_exact_mcnemar_matches_the_issue_and_the_binomial_sum():
    # The issue's table: 28 / 13 right-alone items -> p 0.028; 16 / 3 -> p 0.004.
    assert round(mcnemar_exact(28, 13), 3) == 0.028 and round(mcnemar_exact(16, 3), 3) == 0.004
    n = 16 + 3
    assert mcnemar_exact(16, 3) == 2 * sum(math.comb(n, i) for i in range(4)) / 2 ** n  # 2 · 1160 / 524288


def test_mcnemar_refuses_what_is_not_a_count():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(CompositionError, match="expected a count of items"):
            mcnemar_exact(bad, 2)


def test_paired_counts_by_hand():
    a = [1, 1, 1, 0, 0, 1, 0]
    b = [1, 0, 0, 1, 0, 1, 0]
    pair = compare_paired(a, b)
    assert (pair.both, pair.only_a, pair.only_b, pair.neither) == (2, 2, 1, 2) and pair.n == 7
    assert pair.difference == pytest.approx((4 - 3) / 7)
    assert pair.p_value == 1.0  # 2 · (1 + 3) / 8 = 1
    assert pair.to_json() == {"both": 2, "only_a": 2, "only_b": 1, "neither": 2, "difference": 0.1429, "p_value": 1.0}
    assert compare_paired([True] * 6, [False] * 6) == PairedComparison(0, 6, 0, 0, 2 / 64)


def test_paired_outcomes_must_match_and_be_right_or_wrong():
    with pytest.raises(CompositionError, match="a has 2, b has 3"):
        compare_paired([1, 0], [1, 0, 1])
    with pytest.raises(CompositionError, match=r"a\[1\] is 2; expected True/False"):
        compare_paired([1, 2], [1, 0])
    with pytest.raises(CompositionError, match="correct is empty"):
        bootstrap_interval([])


def test_bootstrap_interval_edges_and_width():
    assert bootstrap_interval([True] * 30) == (1.0, 1.0)
    assert bootstrap_interval([False] * 30) == (0.0, 0.0)
    half = [True, False] * 50  # p̂ = 0.5, n = 100: the normal interval is 0.5 ± 1.96·0.05 = [0.402, 0.598]
    low, high = bootstrap_interval(half)
    assert low == pytest.approx(0.40, abs=0.011) and high == pytest.approx(0.60, abs=0.011)
    assert bootstrap_interval(half, seed=3) == bootstrap_interval(half, seed=3)  # seeded: the same interval
    narrow = bootstrap_interval(half * 4)
    assert narrow[1] - narrow[0] < (high - low) * 0.6  # four times the items: about half the width
    with pytest.raises(CompositionError, match="level=1.5"):
        bootstrap_interval(half, level=1.5)
    with pytest.raises(CompositionError, match="resamples=10"):
        bootstrap_interval(half, resamples=10)


def test_bootstrap_by_counts_equals_resampling_items():
    """Drawing a Binomial count is drawing the items with replacement: compare with the literal method."""
    rng = np.random.default_rng(7)
    outcomes = np.array([True] * 70 + [False] * 30)
    literal = [outcomes[rng.integers(0, 100, 100)].mean() for _ in range(20_000)]
    low, high = np.quantile(literal, [0.025, 0.975])
    got = bootstrap_interval(outcomes.tolist(), resamples=20_000)
    assert got[0] == pytest.approx(low, abs=0.011) and got[1] == pytest.approx(high, abs=0.011)


def test_paired_bootstrap_of_the_gap():
    same = [True, False] * 20
    assert bootstrap_difference(same, same) == (0.0, 0.0)
    a = [True] * 30 + [False] * 10
    b = [True] * 20 + [False] * 20  # a right alone on 10 items, never the other way: gap 0.25
    low, high = bootstrap_difference(a, b)
    assert 0 < low < 0.25 < high <= 0.5
    rng = np.random.default_rng(1)
    diff = np.array(a, float) - np.array(b, float)
    literal = [diff[rng.integers(0, 40, 40)].mean() for _ in range(20_000)]
    assert (low, high) == pytest.approx(tuple(np.quantile(literal, [0.025, 0.975])), abs=0.026)
