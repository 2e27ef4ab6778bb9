"""The numpy reference of xMTF's per-request maths, shared by the scorer and the trainer.

* :func:`outer_stage` and :func:`fused_scores`: each task's ``q_ki (1 + a_k q_ki)`` and their
  sum over the task axis of a task-major ``(..., K, N)`` array;
* :func:`exploration_noise`: the scorer's Gaussian action noise;
* :func:`top_n` (one request) and :func:`top_n_indices` (a batch of requests): the best ``n``
  candidates, best first, ties by lower index (as ONNX ``TopK`` orders equal values).

The scorer checks its serving graph against these, the simulator ranks with them, and the
study's baselines and plots fuse with them. Torch (training) and ONNX (serving) keep their own
forms of the same maths.
"""

from __future__ import annotations

import numpy as np


def outer_stage(q: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Each task's contribution ``q_ki (1 + a_k q_ki)``: q ``(..., K, N)``, action ``(..., K)``."""
    return q * (1.0 + action[..., None] * q)


def fused_scores(q: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``z_i = sum_k q_ki (1 + a_k q_ki)``: q ``(..., K, N)``, action ``(..., K)`` -> ``(..., N)``.

    Computed in the dtype of the inputs (float64 in, float64 out).
    """
    return outer_stage(q, action).sum(axis=-2)


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
    """Indices of the ``n`` best of the ``(N,)`` scores, best first; ties keep input order."""
    if n >= scores.shape[0]:
        return np.argsort(-scores, kind="stable")
    # Partition on the n-th best value, then keep every candidate at least that good so that
    # ties at the boundary resolve by input order, not by argpartition's arbitrary choice.
    threshold = np.partition(scores, scores.shape[0] - n)[scores.shape[0] - n]
    pool = np.flatnonzero(scores >= threshold)
    order = pool[np.argsort(-scores[pool], kind="stable")]
    return order[:n]


def top_n_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest scores per row, by descending score, ties by lower index.

    ``scores`` is ``(U, C)``; NaN counts as the lowest score. Returns ``(U, n)`` int64.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (U, C), got shape {scores.shape}")
    if not 0 < n <= scores.shape[1]:
        raise ValueError(f"n={n} must be in [1, {scores.shape[1]}]")
    keys = -scores.astype(np.float64)
    keys[np.isnan(keys)] = np.inf
    return np.argsort(keys, axis=1, kind="stable")[:, :n].astype(np.int64)
