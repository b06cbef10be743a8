"""Intervals and tests for the paper analyses: every headline number comes with its uncertainty.

A reproduction on a small model and a few hundred prompts can miss a paper's number because the
model differs, because the sample is small, or because a definition differs. The intervals here
tell the second apart from the others.

- ``bootstrap_ci``: a percentile bootstrap interval of a statistic over examples (prompts,
  requests, episodes), seeded; paired when given two aligned samples (their difference);
  ``bootstrap_indices`` for a statistic of several aligned samples (resampling item indices).
- ``proportion_ci``: the Wilson score interval of a proportion (k successes of n).
- ``fisher_exact``: the exact test of a 2x2 table (is a rate higher in one group than another).
- ``permutation_pvalue``: how often random draws (e.g. random head sets) reach the observed value.
- ``jaccard``: the overlap |A & B| / |A | B| of two sets (of heads, say).
- ``detectable_difference``: the smallest difference of means (or proportions) a sample of n can
  detect at 5% two-sided significance with 80% power: what a null result can and cannot rule out.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile
Z80 = 0.8416212335729143  # one-sided 80% power quantile


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] = _mean,
                 paired_with: Sequence[float] | None = None, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): ``stat`` of ``values`` and its percentile bootstrap interval.

    With ``paired_with`` (aligned with ``values``, e.g. the same prompts before and after an
    intervention) the statistic is of the differences values[i] - paired_with[i]. Raises
    ValueError when the interval misses the estimate (a statistic that resampling biases)."""
    xs = [float(v) for v in values]
    if paired_with is not None:
        if len(paired_with) != len(xs):
            raise ValueError(f"paired samples differ in length: {len(xs)} vs {len(paired_with)}")
        xs = [a - float(b) for a, b in zip(xs, paired_with)]
    if not xs:
        raise ValueError("bootstrap of an empty sample")
    rng = random.Random(seed)
    n = len(xs)
    boots = sorted(stat([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    return _percentile_interval(stat(xs), boots, level)


def bootstrap_indices(n: int, stat: Callable[[list[int]], float], n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0, bias_corrected: bool = False) -> tuple[float, float, float]:
    """(estimate, low, high) of ``stat(indices)`` over items 0..n-1 resampled with replacement: for
    statistics of several aligned samples (a rank correlation of two score lists, say).
    ``bias_corrected``: Efron's BC interval (``bias_corrected_interval``) instead of the percentile
    one, for a statistic that resampling moves on average. Both raise ValueError when they miss
    the estimate."""
    if n <= 0:
        raise ValueError("bootstrap of an empty sample")
    rng = random.Random(seed)
    boots = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(n_boot))
    estimate = stat(list(range(n)))
    if bias_corrected:
        return bias_corrected_interval(estimate, boots, level)
    return _percentile_interval(estimate, boots, level)


def bias_corrected_interval(estimate: float, boots: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): Efron's bias-corrected (BC) percentile interval from bootstrap values.

    z0 = Phi^-1(share of boots below the estimate, ties counted half); the interval's ends are the
    boots' quantiles Phi(2 z0 +- z_(1+level)/2) (Efron 1981, "Nonparametric standard errors and
    confidence intervals"). For a statistic that resampling moves on average (the overlap of two
    top-k sets falls when resampling adds noise to the rankings), the plain percentile interval
    reports that drift as uncertainty on the wrong side; this one re-centres it. Raises ValueError
    when the drift is so large (|z0| > z: the estimate outside the middle of the boots) that no
    interval of this kind holds the estimate."""
    boots = sorted(float(b) for b in boots)
    n = len(boots)
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    below = sum(b < estimate for b in boots) + 0.5 * sum(b == estimate for b in boots)
    z0 = _normal_quantile(min(max(below / n, 0.5 / n), 1 - 0.5 / n))
    z = _normal_quantile((1 + level) / 2)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    lo = boots[int(math.floor(phi(2 * z0 - z) * (n - 1)))]
    hi = boots[int(math.ceil(phi(2 * z0 + z) * (n - 1)))]
    if not lo - 1e-12 <= estimate <= hi + 1e-12:
        raise ValueError(f"the bias-corrected interval [{lo:.4g}, {hi:.4g}] misses the estimate {estimate:.4g} "
                         f"(z0 = {z0:.2f}): resampling moves this statistic too far for an interval")
    return estimate, lo, hi


def _percentile_interval(estimate: float, boots: list[float], level: float) -> tuple[float, float, float]:
    """(estimate, low, high) from sorted bootstrap values; refuses an interval that misses the
    estimate: the resampling then moves the statistic itself (a count of events ever seen, which
    falls when resampling repeats some examples and drops others), and the interval would report
    that bias as uncertainty."""
    n_boot = len(boots)
    lo = boots[int(math.floor((1 - level) / 2 * (n_boot - 1)))]
    hi = boots[int(math.ceil((1 + level) / 2 * (n_boot - 1)))]
    if not math.isnan(estimate) and not lo - 1e-12 <= estimate <= hi + 1e-12:
        raise ValueError(f"the bootstrap interval [{lo:.4g}, {hi:.4g}] does not contain the estimate {estimate:.4g}: "
                         "resampling biases this statistic, so the interval is not valid for it")
    return estimate, lo, hi


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(k/n, low, high): the Wilson score interval (good at small n and near 0 or 1)."""
    if n <= 0:
        raise ValueError("a proportion of zero trials")
    z = Z95 if level == 0.95 else _normal_quantile((1 + level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the Wilson interval contains p; min/max keep rounding (at k = 0 or k = n) from putting it outside
    return p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def fisher_exact(a: int, b: int, c: int, d: int, alternative: str = "greater") -> float:
    """p-value of Fisher's exact test on the 2x2 table [[a, b], [c, d]] (rows: groups, columns:
    success, failure). "greater": group 1's success rate is higher; "two-sided" also offered."""
    n1, n2, k = a + b, c + d, a + c
    N = n1 + n2

    def p_of(x: int) -> float:  # hypergeometric P(X = x)
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(N, k)

    lo, hi = max(0, k - n2), min(k, n1)
    if alternative == "greater":
        return min(1.0, sum(p_of(x) for x in range(a, hi + 1)))
    if alternative == "less":
        return min(1.0, sum(p_of(x) for x in range(lo, a + 1)))
    if alternative == "two-sided":
        pa = p_of(a)
        return min(1.0, sum(p for p in (p_of(x) for x in range(lo, hi + 1)) if p <= pa * (1 + 1e-9)))
    raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")


def permutation_pvalue(observed: float, null_draws: Sequence[float], greater: bool = True) -> float:
    """(1 + #draws at least as extreme) / (1 + #draws): the share of random draws (e.g. random
    head sets) reaching the observed value; never 0 with finitely many draws."""
    hits = sum((x >= observed) if greater else (x <= observed) for x in null_draws)
    return (1 + hits) / (1 + len(null_draws))


def detectable_difference(n: int, sd: float | None = None, p: float | None = None, paired: bool = True) -> float:
    """The smallest true difference a sample of ``n`` detects at 5% (two-sided) with 80% power.

    Give ``sd`` for a mean (the standard deviation of one observation, or of the paired
    differences) or ``p`` for a proportion (the baseline rate). Two independent groups of n each
    when ``paired`` is False."""
    if n <= 1:
        return float("inf")
    if (sd is None) == (p is None):
        raise ValueError("give exactly one of sd (a mean) or p (a proportion)")
    spread = sd if sd is not None else math.sqrt(max(p * (1 - p), 1e-12))
    factor = 1.0 if paired else math.sqrt(2.0)
    return (Z95 + Z80) * spread * factor / math.sqrt(n)


def _normal_quantile(q: float) -> float:
    """Acklam's rational approximation of the standard normal quantile (|error| < 1.2e-9)."""
    a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00]
    b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    if not 0 < q < 1:
        raise ValueError("quantile level must be in (0, 1)")
    if q < 0.02425:
        t = math.sqrt(-2 * math.log(q))
        return (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) / \
            ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1)
    if q > 1 - 0.02425:
        return -_normal_quantile(1 - q)
    t = q - 0.5
    r = t * t
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * t / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def jaccard(a: set, b: set) -> float:
    """The Jaccard overlap |A & B| / |A | B| of two sets; 1 for two empty sets (they are equal)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0
