"""Statistics over seeds, in plain Python (no scipy): Student-t intervals, Welch's t-test, Holm's correction.

- :func:`t_interval`: the mean of n values and its two-sided 95% interval ``mean -/+ t(0.975, n-1) s / sqrt(n)``
  (s: the sample standard deviation, n - 1 in its denominator). It assumes the seeds' values are normal; with 3
  seeds t(0.975, 2) = 4.303, so the interval is wide: that is the honest width of 3 seeds.
- :func:`log_t_interval`: the same over the logs, mapped back (a geometric mean and its interval), for positive
  quantities that differ by factors between seeds (per-layer output variance, drawn on a log axis).
- :func:`welch`: Welch's unequal-variance t-test of two groups' means (Welch-Satterthwaite degrees of freedom),
  two-sided p-value from the Student-t distribution.
- :func:`holm`: Holm-Bonferroni adjusted p-values over a family of tests (every pair of schemes on one metric).

The Student-t distribution function comes from the regularized incomplete beta function (continued fraction, as
in Abramowitz & Stegun 26.5.8), its quantile from bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def sample_sd(values: Sequence[float]) -> float:
    """Standard deviation with n - 1 in the denominator (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on :func:`t_cdf`."""
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float | None  # None with one value: no interval
    hi: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` and its Student-t interval over them (one value: no interval)."""
    if not values:
        raise ValueError("t_interval needs at least one value")
    m, n = mean(values), len(values)
    if n < 2:
        return Interval(m, None, None, n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sample_sd(values) / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


def log_t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """For a positive quantity that varies by factors between seeds (a layer's output variance): the t-interval of
    the logs, mapped back; ``mean`` is the geometric mean. Always positive, and symmetric on a log axis."""
    if any(v <= 0 for v in values):
        raise ValueError("log_t_interval needs positive values")
    found = t_interval([math.log(v) for v in values], confidence)
    lo, hi = (None, None) if found.lo is None or found.hi is None else (math.exp(found.lo), math.exp(found.hi))
    return Interval(math.exp(found.mean), lo, hi, found.n)


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) - mean(b)
    lo: float  # the difference's 95% interval (Welch)
    hi: float
    t: float
    df: float
    p: float  # two-sided


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Welch | None:
    """Welch's t-test of mean(a) = mean(b); None when a group has fewer than 2 values. Two groups without any
    spread (every seed the same value, frequent for a metric counted in layers): p = 1 if their means are equal,
    else NaN (no spread to judge a difference against: untestable)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = sample_sd(a) ** 2 / len(a), sample_sd(b) ** 2 / len(b)
    diff = mean(a) - mean(b)
    if va + vb == 0.0:
        return Welch(diff, diff, diff, math.inf if diff else 0.0, math.inf, math.nan if diff else 1.0)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return Welch(diff, diff - half, diff + half, t, df, min(1.0, 2.0 * (1.0 - t_cdf(abs(t), df))))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): the k-th smallest of m is multiplied by m - k + 1,
    then made non-decreasing; a test is significant at ``ALPHA`` over the whole family when its adjusted p is."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
