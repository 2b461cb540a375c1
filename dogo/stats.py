"""Statistics over training seeds: what every table of the study is made of.

Each training seed counts once (a run's value is already the mean over its evaluation's own seeds).

- ``summarize``: mean, sample standard deviation (n - 1) and n of one cell's values over seeds.
- ``paired_difference``: for a baseline and a treatment run on the same seeds s, d_s = treatment_s -
  baseline_s over the seeds both have; mean d and the 95 % confidence interval
  mean d +- t_{0.975, n-1} * sd(d) / sqrt(n) (Student t, n - 1 degrees of freedom). An interval that
  contains 0 is "within noise".
- ``planned_power``: before fresh seeds run, the chance that n of them confirm a difference of the size
  and spread measured earlier (a noncentral t).

The inputs are plain Python (numbers; dicts {seed: value} for the paired difference), so a notebook
can use them on any table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); nan when n < 2
    n: int


def summarize(values) -> Summary:
    """Mean, sample standard deviation (ddof 1, nan for one value) and count of ``values``."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size))


@dataclass
class PairedDifference:
    mean: float  # mean over seeds of treatment - baseline
    low: float  # 95 % interval (nan when n < 2)
    high: float
    n: int
    sd: float = math.nan  # standard deviation of the per-seed differences (nan when n < 2)

    @property
    def within_noise(self) -> bool:
        """The interval contains 0 (or there is no interval)."""
        return not (self.low > 0 or self.high < 0)


def paired_difference(baseline: dict[int, float], treatment: dict[int, float], level: float = 0.95) -> PairedDifference:
    """Paired difference over the seeds both have: mean d and mean d +- t_{(1+level)/2, n-1} sd(d) / sqrt(n)."""
    from scipy.stats import t as student_t

    seeds = sorted(set(baseline) & set(treatment))
    d = np.array([treatment[s] - baseline[s] for s in seeds], dtype=float)
    if d.size == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if d.size < 2:
        return PairedDifference(mean, math.nan, math.nan, 1)
    sd = float(d.std(ddof=1))
    half = float(student_t.ppf((1 + level) / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return PairedDifference(mean, mean - half, mean + half, int(d.size), sd)


def planned_power(expect: str, before: PairedDifference | None, seeds: int, level: float = 0.95) -> float | None:
    """The chance that ``seeds`` fresh seeds confirm a directional prediction (their ``level`` interval on
    the predicted side of 0), if the true paired difference and its spread over seeds are the ones measured
    before: P(T > t_{(1+level)/2, n-1}) for T noncentral t with n - 1 degrees of freedom and noncentrality
    s * mean / sd * sqrt(n), s = +1 for ``higher`` and -1 for ``lower``. Known before the seeds run, so it
    says how large a test was, not what it found; an earlier size picked by looking makes it optimistic.
    None for ``within_noise`` (a control) and without an earlier spread (fewer than 2 seeds before)."""
    from scipy.stats import nct
    from scipy.stats import t as student_t

    if expect == "within_noise" or before is None or seeds < 2 or not before.sd > 0:
        return None
    sign = 1.0 if expect == "higher" else -1.0
    noncentrality = sign * before.mean / before.sd * math.sqrt(seeds)
    return float(nct.sf(student_t.ppf((1 + level) / 2, seeds - 1), seeds - 1, noncentrality))


__all__ = ["Summary", "summarize", "PairedDifference", "paired_difference", "planned_power"]
