"""The intervals and tests behind every report's headline numbers, against known values."""
import math
import random

import pytest

from interp.stats import bootstrap_ci, detectable_difference, fisher_exact, jaccard, permutation_pvalue, proportion_ci


def test_wilson_interval_known_values():
    p, lo, hi = proportion_ci(5, 10)
    assert p == 0.5 and lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    p, lo, hi = proportion_ci(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)  # not the degenerate [0, 0]


def test_fisher_exact_lady_tasting_tea():
    """Fisher's own example: 3 of 4 cups right, one-sided p = 17/70."""
    assert fisher_exact(3, 1, 1, 3, "greater") == pytest.approx(17 / 70)
    assert fisher_exact(3, 1, 1, 3, "two-sided") == pytest.approx(34 / 70)
    assert fisher_exact(1, 3, 3, 1, "less") == pytest.approx(17 / 70)
    assert fisher_exact(10, 0, 0, 10) < 1e-5


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = random.Random(0)
    small = [rng.gauss(1.0, 1.0) for _ in range(20)]
    large = [rng.gauss(1.0, 1.0) for _ in range(2000)]
    est, lo, hi = bootstrap_ci(small)
    assert lo < est < hi and est == pytest.approx(sum(small) / 20)
    _, lo2, hi2 = bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo) / 5 and lo2 < 1.0 < hi2
    # paired: the interval of the differences
    d, dlo, dhi = bootstrap_ci([x + 0.5 for x in small], paired_with=small)
    assert d == pytest.approx(0.5) and dlo == pytest.approx(0.5) and dhi == pytest.approx(0.5)


def test_permutation_pvalue_and_detectable_difference():
    assert permutation_pvalue(5.0, [1, 2, 3, 4]) == pytest.approx(1 / 5)
    assert permutation_pvalue(2.5, [1, 2, 3, 4]) == pytest.approx(3 / 5)
    assert detectable_difference(100, sd=1.0) == pytest.approx((1.95996 + 0.84162) / 10, abs=1e-4)
    assert detectable_difference(100, p=0.5, paired=False) == pytest.approx(0.28016 * 0.5 * math.sqrt(2), abs=1e-4)


def test_wilson_interval_contains_the_estimate_exactly():
    """At k = 0 or k = n the Wilson bounds fall on p up to rounding; the returned interval must
    still contain p (an estimate outside its own interval broke an error-bar plot)."""
    from interp.stats import proportion_ci

    for n in range(1, 80):
        for k in range(n + 1):
            p, lo, hi = proportion_ci(k, n)
            assert 0.0 <= lo <= p <= hi <= 1.0, (k, n, lo, p, hi)


def test_bootstrap_refuses_an_interval_that_misses_the_estimate():
    """The share of distinct values falls under resampling with replacement (a bootstrap sample
    repeats some values): every bootstrap value lies below the estimate, and no interval is given."""
    xs = list(range(40))
    with pytest.raises(ValueError, match="does not contain the estimate"):
        bootstrap_ci(xs, stat=lambda s: len(set(s)) / len(s), n_boot=200)


def test_jaccard():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard({1}, {2}) == 0.0
    assert jaccard(set(), set()) == 1.0
