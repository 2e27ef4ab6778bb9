"""The study's bootstrap intervals (trainer/stats.py) on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import stats


def test_interval_covers_the_known_mean_at_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        sample = rng.normal(10.0, 2.0, size=(1, 400))
        est = stats.estimate(sample, n_boot=300, seed=t)
        covered += est.lo <= 10.0 <= est.hi
    assert 0.90 <= covered / trials <= 0.99


def test_interval_width_matches_the_standard_error() -> None:
    rng = np.random.default_rng(1)
    sample = rng.normal(0.0, 3.0, size=(1, 2500))
    est = stats.estimate(sample, n_boot=1000)
    se = 3.0 / np.sqrt(2500)
    assert est.hi - est.lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_seed_level_spread_widens_the_interval() -> None:
    """Seeds that differ systematically (training noise) must show in the interval."""
    rng = np.random.default_rng(2)
    users = rng.normal(0.0, 1.0, size=(1, 1000))
    same = np.repeat(users, 5, axis=0)
    shifted = same + np.array([[-3.0], [-1.5], [0.0], [1.5], [3.0]])
    narrow = stats.estimate(same, n_boot=500)
    wide = stats.estimate(shifted, n_boot=500)
    assert (wide.hi - wide.lo) > 5 * (narrow.hi - narrow.lo)


def test_paired_difference_removes_the_shared_user_noise() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(1000.0, 500.0, size=(2, 3000))  # users differ a lot
    better = base + 5.0 + rng.normal(0.0, 1.0, size=base.shape)
    diff = stats.paired_difference(better, base, n_boot=500)
    assert diff.excludes_zero and diff.lo > 4.0 and diff.hi < 6.0
    unpaired_width = 2 * 1.96 * 500 * np.sqrt(2 / 6000)
    assert (diff.hi - diff.lo) < unpaired_width / 10
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_difference(better, base[:1])
