"""evaluation.stats: t quantiles checked by integrating the t density (no scipy), intervals against hand-computed
values, paired differences and the wording of claims."""

from __future__ import annotations

import math

import pytest

from evaluation.stats import (
    Interval,
    best_indices,
    binomial_halfwidth,
    direction,
    mean_interval,
    paired_difference,
    paired_share_difference,
    scored_set_error,
    t_quantile_975,
    wilson_interval,
)


def _t_density(x: float, df: int) -> float:
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    return c * (1 + x * x / df) ** (-(df + 1) / 2)


def _t_cdf(q: float, df: int, intervals: int = 4000) -> float:
    """0.5 + ∫_0^q of the density, composite Simpson's rule."""
    h = q / intervals
    total = _t_density(0, df) + _t_density(q, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, intervals))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 19, 30, 31, 45, 80, 200])
def test_t_quantiles_put_2_5_percent_in_each_tail(df):
    assert _t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-6)


def test_known_t_quantiles_and_their_limit():
    assert t_quantile_975(1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-5)  # Cauchy: closed form
    assert t_quantile_975(4) == pytest.approx(2.776, abs=1e-3)  # 5 draws
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_975(0)


def test_mean_interval_by_hand():
    ci = mean_interval([1.0, 2.0, 3.0])  # mean 2, s 1, t(2) = 4.302653
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.halfwidth == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (ci.low, ci.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    single = mean_interval([0.7])
    assert (single.low, single.high, single.n) == (0.7, 0.7, 1) and not single.excludes_zero()


def test_paired_difference_removes_what_the_draws_share():
    """Two rows that move together draw by draw: their separate intervals overlap, the paired one excludes 0."""
    baseline = [0.50, 0.70, 0.60, 0.80, 0.55]
    learned = [b + 0.03 + 0.001 * i for i, b in enumerate(baseline)]
    assert mean_interval(learned).low < mean_interval(baseline).high  # overlapping as rows
    diff = paired_difference(learned, baseline)
    assert diff.mean == pytest.approx(0.032) and diff.excludes_zero()
    with pytest.raises(ValueError, match="same draws"):
        paired_difference([1.0], [1.0, 2.0])


def test_wilson_interval_by_hand():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    low, high = wilson_interval(30, 60)
    assert low < 0.5 < high and high - 0.5 == pytest.approx(0.5 - low)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_binomial_halfwidth_of_a_mean_over_tasks():
    assert binomial_halfwidth([0.5], [100]) == pytest.approx(1.959964 * 0.05)
    # two tasks: variance of the mean = (0.25/100 + 0.09/50) / 4
    assert binomial_halfwidth([0.5, 0.9], [100, 50]) == pytest.approx(1.959964 * math.sqrt(0.0025 + 0.0018) / 2)
    assert binomial_halfwidth([1.0, 0.0], [10, 10]) == 0.0


def test_a_difference_is_worded_by_its_interval():
    assert direction(Interval(0.05, 0.01, 0.09, 5)) == "higher"
    assert direction(Interval(-0.05, -0.09, -0.01, 5)) == "lower"
    assert direction(Interval(0.05, -0.01, 0.11, 5)) == "no difference established"
    assert direction(Interval(0.05, 0.05, 0.05, 1)) == "no difference established"  # one draw: no interval


def test_a_paired_share_difference_by_hand_and_what_it_leaves_out():
    """Task a: 4 examples, differences (1, 0, 0, 1): mean 0.5, sample variance 1/3; task b: (0, −1), mean −0.5,
    variance 0.5; task c has no outcomes. Mean over tasks 0, variance (1/3/4 + 0.5/2) / 2²."""
    ours = {"a": [True, True, False, True], "b": [True, False], "c": []}
    theirs = {"a": [False, True, False, False], "b": [True, True], "c": []}
    diff = paired_share_difference(ours, theirs)
    half = 1.959964 * math.sqrt((1 / 3) / 4 + 0.5 / 2) / 2
    assert (diff.mean, diff.low, diff.high, diff.n) == pytest.approx((0.0, -half, half, 6))
    same = paired_share_difference(ours, ours)  # what both get right or wrong cancels
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero()
    always = paired_share_difference({"a": [True] * 5}, {"a": [False] * 5})  # right on every example, it on none
    assert always.excludes_zero() and direction(always) == "higher"
    lone = paired_share_difference({"a": [True]}, {"a": [False]})  # one example: the largest variance, not none
    assert not lone.excludes_zero()
    assert paired_share_difference({"a": []}, {"a": []}) is None
    with pytest.raises(ValueError, match="same examples"):
        paired_share_difference({"a": [True]}, {"a": [True, False]})
    with pytest.raises(ValueError, match="same tasks"):
        paired_share_difference({"a": [True]}, {"b": [True]})


def test_scored_set_error_gives_each_row_its_binomial_error_and_pairs_the_reference():
    learned = {"accuracy": {"a": [True] * 8 + [False] * 2}, "agreement": {}}  # e.g. no expert answered
    baseline = {"accuracy": {"a": [True] * 5 + [False] * 5}, "agreement": {}}
    error = scored_set_error({"learned": learned, "baseline": baseline}, "learned")
    assert error.halfwidth["learned"]["accuracy"] == pytest.approx(binomial_halfwidth([0.8], [10]))
    assert error.halfwidth["baseline"] == {"accuracy": pytest.approx(binomial_halfwidth([0.5], [10])),
                                           "agreement": None}
    assert list(error.paired) == ["baseline"]  # the reference is not paired with itself
    assert error.paired["baseline"]["accuracy"].mean == pytest.approx(0.3)
    assert error.paired["baseline"]["agreement"] is None  # undefined, not 0
    with pytest.raises(ValueError, match="not among"):
        scored_set_error({"baseline": baseline}, "learned")


def test_only_a_score_above_the_rest_is_called_best():
    assert best_indices([0.2, 0.6, None, 0.4]) == ([1], None)
    assert best_indices([0.6, 0.2, 0.6]) == ([0, 2], None)  # a partial tie: each of the top
    assert best_indices([0.0, 0.0, None]) == ([], "all 2 scored points are at 0%: no point is best")
    assert best_indices([0.5, 0.5]) == ([], "all 2 scored points are at 50%: no point is best")
    assert best_indices([0.0]) == ([], "the one scored point is at 0 %: nothing to call best")
    assert best_indices([0.3]) == ([0], None)  # one point above 0: it is the best of one
    assert best_indices([None, None]) == ([], None)
