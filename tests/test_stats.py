"""The table's statistics: bootstrap intervals that cover as promised, and Spearman's rank correlation."""

import numpy as np
import pytest

from ostaf.stats import bootstrap_interval, spearman


def test_bootstrap_interval_of_a_known_normal_mean():
    values = np.random.default_rng(1).normal(2.0, 1.0, 400)
    interval = bootstrap_interval(values)
    assert interval.low < 2.0 < interval.high and interval.mean == pytest.approx(values.mean())
    assert interval.high - interval.low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)  # σ/√n: 0.196 wide


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = [
        (lambda i: i.low <= 0.3 <= i.high)(bootstrap_interval(rng.binomial(1, 0.3, 40), samples=500, seed=k))
        for k in range(300)
    ]
    assert 0.88 <= np.mean(hits) <= 0.99


def test_bootstrap_interval_is_reproducible_and_degenerate_cases_are_plain():
    assert bootstrap_interval([1, 2, 3, 9]) == bootstrap_interval([1, 2, 3, 9])
    one = bootstrap_interval([0.5])
    assert (one.mean, one.low, one.high, str(one)) == (0.5, 0.5, 0.5, "0.5")
    with pytest.raises(ValueError):
        bootstrap_interval([])


def test_spearman_follows_ranks_not_values_and_handles_ties():
    assert spearman([0, 1, 2, 3], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [5, 4, 3, -100]) == pytest.approx(-1.0)
    assert spearman([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert spearman([1, 2, 3], [7, 7, 7]) == 0.0  # nothing to follow
    # by hand: ranks x = (1, 2, 3, 4, 5), y = (2, 1, 4, 3, 5) → 1 - 6·Σd²/(n(n²-1)) = 1 - 6·4/120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    # ties share their mean rank: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3) → Pearson of ranks = √3/2
    assert spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
