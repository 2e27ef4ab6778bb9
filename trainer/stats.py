"""Uncertainty of the study's numbers: paired bootstrap over users within a seed and over seeds.

A cell is ``values[s, u]``: the return of evaluation user ``u`` under the model trained with
seed ``s`` (the same evaluation users for every seed and every method, so two methods' arrays
pair up user by user). The bootstrap resamples seeds with replacement, and within each drawn
seed the users with replacement; a paired difference uses the same draws for both methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples of every interval.
N_BOOT = 2000


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % bootstrap interval."""

    mean: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float | list[float]]:
        return {"mean": self.mean, "ci95": [self.lo, self.hi]}

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0


def _as_matrix(values: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.asarray(values, np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"values must be (seeds, users), got shape {arr.shape}")
    return arr


def bootstrap_means(
    values: np.ndarray | Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = 0
) -> np.ndarray:
    """(n_boot,) means of ``values (seeds, users)`` under the two-level resampling."""
    arr = _as_matrix(values)
    n_seeds, n_users = arr.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    out = np.empty(n_boot)
    # users resampled per drawn seed: the mean over (seed draws x user draws) of each resample
    for b in range(n_boot):
        users = rng.integers(0, n_users, size=(n_seeds, n_users))
        out[b] = arr[seeds[b][:, None], users].mean()
    return out


def estimate(
    values: np.ndarray | Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = 0
) -> Estimate:
    """Mean of ``values (seeds, users)`` and its 95 % percentile interval."""
    arr = _as_matrix(values)
    boots = bootstrap_means(arr, n_boot, seed)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Estimate(float(arr.mean()), float(lo), float(hi))


def paired_difference(
    a: np.ndarray | Sequence[np.ndarray],
    b: np.ndarray | Sequence[np.ndarray],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Estimate:
    """``mean(a) - mean(b)`` with its 95 % interval; ``a`` and ``b`` pair up by (seed, user).

    Both must have the same shape: seed ``s`` of ``a`` is paired with seed ``s`` of ``b``
    (e.g. two methods trained with the same seed, or a trained model and its own start), and
    user ``u`` is the same evaluation user in both.
    """
    x, y = _as_matrix(a), _as_matrix(b)
    if x.shape != y.shape:
        raise ValueError(f"paired arrays must have the same shape, got {x.shape} and {y.shape}")
    return estimate(x - y, n_boot, seed)


def relative(diff: Estimate, base_mean: float) -> Estimate:
    """A difference as a share of ``base_mean`` (the interval scaled alike)."""
    return Estimate(diff.mean / base_mean, diff.lo / base_mean, diff.hi / base_mean)
