"""Statistics over training seeds (dogo.stats): hand-computed expectations and simulated batches."""

from __future__ import annotations

import math

import pytest

from dogo.stats import PairedDifference, paired_difference, planned_power, summarize

T_975_DOF1 = 12.706204736174707  # Student t quantiles, from tables
T_975_DOF2 = 4.302652729749464


def test_summarize_is_mean_sample_std_and_count():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4)
    assert s.std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    one = summarize([7.0])
    assert (one.mean, one.n) == (7.0, 1) and math.isnan(one.std)
    assert summarize([]).n == 0


def test_paired_difference_on_hand_computed_numbers():
    # d = (1, 2, 0): mean 1, sd 1, n 3, half width t_{0.975,2} / sqrt(3)
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0, 9: 100.0}, {0: 2.0, 1: 4.0, 2: 3.0})
    half = T_975_DOF2 / math.sqrt(3)
    assert (d.mean, d.n) == (1.0, 3)
    assert (d.low, d.high) == (pytest.approx(1 - half, rel=1e-9), pytest.approx(1 + half, rel=1e-9))
    assert d.within_noise
    # d = (2, 3, 4): mean 3, sd 1: the interval [0.516, 5.484] excludes 0
    d = paired_difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: 2.0, 1: 3.0, 2: 4.0})
    assert d.low == pytest.approx(3 - half, rel=1e-9) and not d.within_noise
    # two seeds: d = (1, 3), mean 2, sd sqrt(2): half width t_{0.975,1} * sqrt(2) / sqrt(2)
    d = paired_difference({0: 0.0, 1: 0.0}, {0: 1.0, 1: 3.0})
    assert (d.low, d.high) == (pytest.approx(2 - T_975_DOF1, rel=1e-9), pytest.approx(2 + T_975_DOF1, rel=1e-9))
    one = paired_difference({0: 1.0}, {0: 4.0})
    assert one.mean == 3.0 and one.n == 1 and math.isnan(one.low) and one.within_noise and math.isnan(one.sd)
    assert paired_difference({0: 0.0, 1: 0.0}, {0: 1.0, 1: 3.0}).sd == pytest.approx(math.sqrt(2), rel=1e-12)


def test_planned_power_against_simulated_batches():
    """The chance that n fresh seeds confirm a difference of the size and spread seen before, checked
    against simulated batches: normal per-seed differences, each batch judged by its own 95 % interval."""
    import numpy as np
    from scipy.stats import t as student_t

    before = PairedDifference(-0.46, -0.70, -0.22, 20, 0.51)  # the twenty seeds' linear-probe cost
    rng = np.random.default_rng(0)
    for n in (3, 5, 15):
        d = rng.normal(-0.46, 0.51, size=(40_000, n))
        half = student_t.ppf(0.975, n - 1) * d.std(axis=1, ddof=1) / math.sqrt(n)
        simulated = float(np.mean(d.mean(axis=1) + half < 0))  # the interval lies below 0: confirmed
        assert planned_power("lower", before, n) == pytest.approx(simulated, abs=0.01), n  # ~5 standard errors
    # no true difference: the test confirms "lower" by chance alone, 2.5 % of the time
    assert planned_power("lower", PairedDifference(0.0, -1.0, 1.0, 5, 1.0), 5) == pytest.approx(0.025, abs=1e-9)
    # the sign of the prediction matters, not of the numbers
    assert planned_power("higher", PairedDifference(0.46, 0.2, 0.7, 20, 0.51), 15) == \
        pytest.approx(planned_power("lower", before, 15), rel=1e-12)
    assert planned_power("higher", before, 15) < 1e-6
    # no power for a control, nor without an earlier spread
    assert planned_power("within_noise", before, 15) is None
    assert planned_power("lower", None, 15) is None
    assert planned_power("lower", PairedDifference(-1.0, math.nan, math.nan, 1), 15) is None
