"""Every interval in the project, in one place.

- `bootstrap`: resample the rows with replacement `rounds` times, apply a statistic to each resample,
  and take percentile bounds. It is the only bootstrap: means, shares and win rates use it through
  `mean_interval`, and Bradley-Terry ratings (ratings.py) through `bootstrap` itself.
- `wilson`: the Wilson score interval of a proportion, for the judges' calibration on a handful of
  known pairs, where a bootstrap of an all-correct sample would give the empty interval [1, 1].
- `min_detectable_difference`: the smallest difference of two shares a test of that size would find.

Resamples come from numpy's seeded generator, so a seed gives the same interval on every machine.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
ROUNDS = 1000  # resamples when a caller names none; recipes set eval.bootstrap_rounds
LEVEL = 0.95


def bootstrap(rows: Sequence[T], statistic: Callable[[list[T]], dict[str, float]], rounds: int = ROUNDS,
              level: float = LEVEL, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each value `statistic` returns, over `rounds` resamples of `rows`.
    A key missing from some resamples (an item no resampled row mentions) gets its interval from the
    resamples that have it; a key no resample has gets none."""
    rows = list(rows)
    if not rows:
        return {}
    draws: dict[str, list[float]] = {}
    for idx in np.random.default_rng(seed).integers(0, len(rows), size=(rounds, len(rows))):
        for key, value in statistic([rows[i] for i in idx]).items():
            draws.setdefault(key, []).append(value)
    return {key: percentiles(values, level) for key, values in draws.items()}


def percentiles(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    low, high = np.quantile(np.asarray(values, dtype=float), [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def mean_interval(values: Sequence[float], rounds: int = ROUNDS, level: float = LEVEL,
                  seed: int = 0) -> tuple[float, float, float]:
    """Mean with a bootstrap percentile interval: (mean, low, high); NaNs for no values. Shares and win
    rates are means of 1/0 (and 0.5 for a tie) outcomes."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan, math.nan
    arr = np.asarray(values)
    # the same resamples `bootstrap` draws, with the mean taken for all rounds at once
    means = arr[np.random.default_rng(seed).integers(0, len(arr), size=(rounds, len(arr)))].mean(axis=1)
    low, high = percentiles(means, level)
    return float(arr.mean()), low, high


def share_with_interval(flags: Sequence[bool], rounds: int = ROUNDS, level: float = LEVEL,
                        seed: int = 0) -> tuple[float, float, float]:
    return mean_interval([1.0 if f else 0.0 for f in flags], rounds=rounds, level=level, seed=seed)


def wilson(successes: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion. `successes` may be fractional (a tie counts half), which
    scipy's binomtest does not take; the formula is the same."""
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def min_detectable_difference(n: int, p: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest difference of two shares (n answers each) that a two-sided test at `alpha` finds with
    `power`, at base rate p (0.5 is the worst case): (z_{1-alpha/2} + z_power) * sqrt(2 p (1 - p) / n)."""
    z = NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * (2 * p * (1 - p) / max(1, n)) ** 0.5
