"""Uncertainty for merge comparisons, in plain Python (no scipy): t-based 95 % intervals over draws, the binomial
error of a scored set (Wilson interval), paired differences, and how strongly a claim may be worded.

Two sources of noise, reported separately:
- between draws (which unlabeled inputs a learner or a baseline's selection saw): the mean over draws with a
  Student-t interval, `mean_interval`; learned minus baseline draw by draw, `paired_difference`;
- within the scored set (which prompts happen to be scored): a share of n answers has binomial error,
  `wilson_interval` for one task, `binomial_halfwidth` for a mean of per-task shares; two merges scored on the
  same examples, `paired_share_difference`.
A difference is written as established only when its interval excludes 0 (`direction`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Two-sided 95 % quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard tables, e.g. NIST/SEMATECH
# e-Handbook 1.3.6.7.2; tests/test_stats.py re-derives each by integrating the t density).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z975 = 1.959964  # the normal quantile the t quantiles tend to


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df ≤ 30, beyond it the Cornish-Fisher expansion around the normal quantile
    (error < 1e-5 for df > 30)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 draws), not {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Interval:
    """A mean over n values and its 95 % interval [low, high] (low = high = mean for a single value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def halfwidth(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and two-sided 95 % t interval: mean ± t_{0.975, n−1} · s/√n (s with n − 1 in the denominator)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * s / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(ours: Sequence[float], theirs: Sequence[float]) -> Interval:
    """ours − theirs draw by draw (both measured on the same draws), averaged with its 95 % t interval."""
    if len(ours) != len(theirs):
        raise ValueError(f"paired values need the same draws: {len(ours)} against {len(theirs)}")
    return mean_interval([a - b for a, b in zip(ours, theirs, strict=True)])


def wilson_interval(successes: int, n: int, z: float = Z975) -> tuple[float, float]:
    """The Wilson score interval of a binomial share successes/n (95 % by default); (0, 1) when n = 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_halfwidth(shares: Sequence[float], counts: Sequence[int], z: float = Z975) -> float:
    """Half-width of the normal 95 % interval of a mean over tasks of per-task shares (task t: shares[t] of
    counts[t] scored examples), treating the examples as independent: z · √(Σ p(1 − p)/n) / T."""
    if len(shares) != len(counts) or not shares:
        raise ValueError("give one share and one count per task")
    variance = sum(p * (1 - p) / n for p, n in zip(shares, counts, strict=True) if n > 0)
    return z * math.sqrt(variance) / len(shares)


def paired_share_difference(ours: Mapping[str, Sequence[bool]], theirs: Mapping[str, Sequence[bool]],
                            z: float = Z975) -> Interval | None:
    """Two merges scored on the same examples: the difference of their means over tasks of per-task shares (task t:
    the share of True among its outcomes), with the normal 95 % interval of that difference over the scored set,
    example by example (paired: what both get right or wrong cancels). Tasks with no outcomes are left out, as a
    mean over tasks leaves out tasks where a metric is undefined; None when no task has any. A task with one
    outcome gets the largest variance a difference in {−1, 0, 1} can have (1), not 0."""
    if set(ours) != set(theirs):
        raise ValueError(f"paired outcomes need the same tasks: {sorted(ours)} against {sorted(theirs)}")
    means, variance, examples = [], 0.0, 0
    for task, mine in ours.items():
        other = theirs[task]
        if len(mine) != len(other):
            raise ValueError(f"task {task!r}: paired outcomes need the same examples ({len(mine)} against "
                             f"{len(other)})")
        if not mine:
            continue
        diffs = [float(a) - float(b) for a, b in zip(mine, other, strict=True)]
        n, mean = len(diffs), sum(diffs) / len(diffs)
        spread = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 1.0
        means.append(mean)
        variance += spread / n
        examples += n
    if not means:
        return None
    mean, half = sum(means) / len(means), z * math.sqrt(variance) / len(means)
    return Interval(mean, mean - half, mean + half, examples)


def direction(difference: Interval) -> str:
    """"higher" or "lower" only when the 95 % interval excludes 0, else "no difference established"."""
    if difference.excludes_zero():
        return "higher" if difference.mean > 0 else "lower"
    return "no difference established"



def best_indices(values: Sequence[float | None]) -> tuple[list[int], str | None]:
    """Which of several scores (shares, e.g. a sweep's points; None = not scored) may be called best: the indices of
    the highest (every one of them when several share it), or none, with the reason, when the highest is 0 or every
    scored value is the same (two or more): starring one of equals would single out an arbitrary point. ([], None)
    when nothing was scored."""
    scored = [(i, v) for i, v in enumerate(values) if v is not None]
    if not scored:
        return [], None
    top = max(v for _, v in scored)
    tied = [i for i, v in scored if v == top]
    if len(scored) == 1 and top == 0:
        return [], "the one scored point is at 0 %: nothing to call best"
    if len(tied) == len(scored) > 1:
        return [], f"all {len(scored)} scored points are at {top:.0%}: no point is best"
    if top == 0:  # below 0 elsewhere: a metric that can be negative; 0 is still no skill to call best
        return [], "the highest score is 0 %: no point is best"
    return tied, None


Outcomes = Mapping[str, Mapping[str, Sequence[bool]]]  # metric -> task -> per-example outcome (Evaluator.outcomes)


@dataclass
class ScoredSetError:
    """One run of several merges on one scored set: per merge and metric, the half-width of the 95 % interval of its
    mean over tasks (`binomial_halfwidth` at its per-task shares); per other merge, `reference` minus it with the
    paired 95 % interval over the same examples (`paired_share_difference`). None where the metric is undefined."""

    reference: str
    halfwidth: dict[str, dict[str, float | None]] = field(default_factory=dict)
    paired: dict[str, dict[str, Interval | None]] = field(default_factory=dict)


def scored_set_error(outcomes: Mapping[str, Outcomes], reference: str) -> ScoredSetError:
    """The scored set's sampling error of a comparison, from each merge's outcomes (name -> Evaluator.outcomes);
    `reference` (the learned merge) is paired with every other merge."""
    if reference not in outcomes:
        raise ValueError(f"{reference!r} is not among the merges compared ({', '.join(outcomes)})")
    error = ScoredSetError(reference)
    for name, by_metric in outcomes.items():
        error.halfwidth[name] = {}
        for metric, tasks in by_metric.items():
            scored = {t: o for t, o in tasks.items() if o}
            shares = [sum(o) / len(o) for o in scored.values()]
            counts = [len(o) for o in scored.values()]
            error.halfwidth[name][metric] = binomial_halfwidth(shares, counts) if scored else None
        if name != reference:
            error.paired[name] = {metric: paired_share_difference(outcomes[reference][metric], tasks)
                                  for metric, tasks in by_metric.items()}
    return error
