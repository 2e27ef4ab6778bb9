"""The scorer's per-request maths in numpy: exploration noise, and the reference outer stage and
top-N selection that the serving graph (:mod:`scorer.serving_graph`) is checked against."""

from __future__ import annotations

import numpy as np


def fused_scores(q_inner: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``z_i = sum_k q^I_ki (1 + a_k q^I_ki)``; q_inner (K, N), action (K,) -> (N,)."""
    return (q_inner * (1.0 + action[:, None] * q_inner)).sum(axis=0)


def exploration_noise(
    n_tasks: int, scale: float, low: float, high: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian exploration noise (K,) float32, std = ``scale * (high - low)``; zeros at scale 0.

    The serving graph adds it to the actor's action and clips the sum to the bounds.
    """
    if scale <= 0:
        return np.zeros(n_tasks, np.float32)
    return rng.normal(0.0, scale * (high - low), n_tasks).astype(np.float32)


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
