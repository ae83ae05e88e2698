"""The statistics over seeds against hand computations and printed t-table values (no scipy)."""

from __future__ import annotations

import math

import pytest

from cod_train.report import stats

# Student-t two-sided 95% critical values t(0.975, df), as printed in every t-table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_t_table(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=6e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-T_TABLE[df], abs=6e-4)


def test_t_cdf_of_known_points():
    assert stats.t_cdf(0.0, 3) == pytest.approx(0.5)
    # df = 1 is the Cauchy distribution: P(T <= t) = 1/2 + atan(t) / pi
    for t in (-3.0, 0.5, 2.0, 10.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    # df = 2 has a closed form too: 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-1.5, 0.3, 4.0):
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_interval_over_three_seeds_by_hand():
    """Perplexities of 3 seeds: 30, 32, 37. Mean 33; deviations -3, -1, 4; s^2 = (9 + 1 + 16) / 2 = 13;
    half width = t(0.975, 2) * sqrt(13 / 3) = 4.302653 * 2.081666 = 8.956685."""
    found = stats.t_interval([30.0, 32.0, 37.0])
    assert found.n == 3 and found.mean == pytest.approx(33.0)
    assert found.lo == pytest.approx(33.0 - 8.956685, abs=1e-5)
    assert found.hi == pytest.approx(33.0 + 8.956685, abs=1e-5)


def test_one_seed_has_no_interval():
    assert stats.t_interval([5.0]) == stats.Interval(5.0, None, None, 1)


def test_welch_by_hand():
    """a = 1, 2, 3 (mean 2, s^2 1); b = 4, 5, 7 (mean 16/3, s^2 7/3). se^2 = 1/3 + 7/9 = 10/9;
    t = (2 - 16/3) / sqrt(10/9) = -3.162278; df = (10/9)^2 / ((1/3)^2 / 2 + (7/9)^2 / 2) = 3.448276."""
    found = stats.welch([1.0, 2.0, 3.0], [4.0, 5.0, 7.0])
    assert found is not None
    assert found.diff == pytest.approx(-10 / 3)
    assert found.t == pytest.approx(-3.162278, abs=1e-6)
    assert found.df == pytest.approx(3.448276, abs=1e-6)
    # p from the same t distribution, both tails: 2 (1 - F(|t|)) with F at df 3.448 between the df-3 and df-4
    # values of the table (p 0.0507 at df 3, 0.0341 at df 4 for this t)
    assert 0.0341 < found.p < 0.0507
    half = stats.t_quantile(0.975, found.df) * math.sqrt(10 / 9)
    assert (found.lo, found.hi) == pytest.approx((-10 / 3 - half, -10 / 3 + half))


def test_welch_without_spread():
    assert stats.welch([1.0], [2.0, 3.0]) is None  # one seed: no test
    same = stats.welch([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert same is not None and same.p == 1.0
    apart = stats.welch([0.5, 0.5, 0.5], [0.75, 0.75, 0.75])
    assert apart is not None and math.isnan(apart.p)  # no spread to judge the difference against


def test_holm_by_hand():
    """p = 0.01, 0.04, 0.03 (m = 3): sorted 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06."""
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_log_t_interval_by_hand():
    """Output variances of 3 seeds: 1, 10, 100. Logs 0, ln 10, 2 ln 10: mean ln 10 (geometric mean 10), s = ln 10;
    half width = 4.302653 * ln 10 / sqrt(3) = 5.719985, so the interval is 10 * exp(-/+ 5.719985)."""
    found = stats.log_t_interval([1.0, 10.0, 100.0])
    assert found.n == 3 and found.mean == pytest.approx(10.0)
    half = 4.302653 * math.log(10) / math.sqrt(3)
    assert found.lo == pytest.approx(10.0 * math.exp(-half), rel=1e-6)
    assert found.hi == pytest.approx(10.0 * math.exp(half), rel=1e-6)
    assert found.lo > 0  # the arithmetic t-interval of the same values reaches below zero
    assert stats.t_interval([1.0, 10.0, 100.0]).lo < 0
    with pytest.raises(ValueError):
        stats.log_t_interval([1.0, 0.0])
