"""Outer stage, exploration and top-N selection in numpy (the scorer's per-request maths)."""

from __future__ import annotations

import numpy as np


def fused_scores(q_inner: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``z_i = sum_k q^I_ki (1 + a_k q^I_ki)``; q_inner (K, N), action (K,) -> (N,)."""
    return (q_inner * (1.0 + action[:, None] * q_inner)).sum(axis=0)


def explore(
    action: np.ndarray, scale: float, low: float, high: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian exploration, std = ``scale * (high - low)``, clipped to the bounds.

    Returns the applied action and the noise actually applied (after clipping).
    """
    if scale <= 0:
        return action, np.zeros_like(action)
    noisy = np.clip(action + rng.normal(0.0, scale * (high - low), action.shape), low, high)
    applied = noisy.astype(np.float32)
    return applied, applied - action


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores, best first; ties keep input order."""
    if n >= scores.shape[0]:
        return np.argsort(-scores, kind="stable")
    # Partition on the n-th best value, then keep every candidate at least that good so that
    # ties at the boundary resolve by input order, not by argpartition's arbitrary choice.
    threshold = np.partition(scores, scores.shape[0] - n)[scores.shape[0] - n]
    pool = np.flatnonzero(scores >= threshold)
    order = pool[np.argsort(-scores[pool], kind="stable")]
    return order[:n]
