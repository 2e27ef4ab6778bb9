"""Fusion formulas of the paper's Table 1, searched over log-weights (monotone by construction).

``linear`` is formula 1, ``z = sum_k a_k o_k``; ``log`` is formula 2,
``z = sum_k a_k log(o_k + beta_k)``. Both are monotone in every ``o_k`` for ``a_k > 0``, so
every baseline searches log-weights ``u_k`` and uses ``a_k = exp(u_k)``: ``u = 0`` is the
neutral fusion (the plain sum for formula 1, the plain product for formula 2). A task of
direction -1 enters as ``1 - o_k``. :func:`outer_formula_scores` is the formula xMTF degenerates
to without its inner stage, ``z = sum_k o_k (1 + a_k o_k)`` (monotone for ``a_k > -1/2``).
Predictions are task-major ``(U, K, N)`` everywhere. :func:`calibrated` is the standardised,
direction-oriented input that xMTF's cells see, offered to the formulas too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.fusion import fused_scores
from shared.tasks import TaskSpec
from trainer.loop import ScoreFn

FORMULAS = ("linear", "log")


@dataclass(frozen=True)
class FormulaConfig:
    """The search space of the formula baselines: log-weights ``u`` in [low, high]."""

    log_weight_low: float = -3.0  # a_k >= exp(-3) ~ 0.05
    log_weight_high: float = 3.0  # a_k <= exp(3) ~ 20
    beta: float = 1e-3  # beta_k of formula 2 (the same small constant for every task)

    def __post_init__(self) -> None:
        if not self.log_weight_low < 0.0 < self.log_weight_high:
            raise ValueError("need log_weight_low < 0 < log_weight_high (0 is the neutral fusion)")
        if not self.beta > 0:
            raise ValueError("beta must be > 0")


def _oriented(predictions: np.ndarray, directions: Sequence[int] | None) -> np.ndarray:
    """(U, K, N) predictions, with ``1 - o`` for direction -1 tasks."""
    if directions is None:
        return predictions
    flip = np.asarray(directions).reshape(1, -1, 1) < 0
    return np.where(flip, 1.0 - predictions, predictions)


def calibrated(predictions: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """(U, K, C) standardised predictions in each task's direction."""
    offset = np.array([t.offset for t in tasks])[:, None]
    scale = np.array([t.scale for t in tasks])[:, None]
    direction = np.array([t.direction for t in tasks])[:, None]
    return direction * (np.asarray(predictions, np.float64) - offset) / scale


def formula_scores(
    predictions: np.ndarray,
    weights: np.ndarray,
    formula: str,
    beta: float = 1e-3,
    directions: Sequence[int] | None = None,
) -> np.ndarray:
    """Formula 1 or 2 of the paper's Table 1: predictions (U, K, N), weights (U, K) or (K,)
    with ``a_k > 0`` -> scores (U, N)."""
    o = _oriented(np.asarray(predictions, np.float64), directions)
    a = np.asarray(weights, np.float64)
    a = np.broadcast_to(a, o.shape[:2])[..., None]
    if formula == "linear":
        return (a * o).sum(axis=1)
    if formula == "log":
        return (a * np.log(o + beta)).sum(axis=1)
    raise ValueError(f"unknown formula {formula!r}; expected one of {FORMULAS}")


def outer_formula_scores(
    predictions: np.ndarray, action: np.ndarray, directions: Sequence[int] | None = None
) -> np.ndarray:
    """``z = sum_k o_k (1 + a_k o_k)``: xMTF without its inner stage (paper section 6.4)."""
    o = _oriented(np.asarray(predictions, np.float64), directions)
    return fused_scores(o, np.broadcast_to(np.asarray(action, np.float64), o.shape[:2]))


def fixed_weights_score_fn(
    log_weights: np.ndarray, formula: str, beta: float, directions: Sequence[int] | None = None
) -> ScoreFn:
    """A simulator ``score_fn`` fusing with fixed (non-personalised) weights ``exp(u)``."""
    weights = np.exp(np.asarray(log_weights, np.float64))

    def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return formula_scores(predictions, weights, formula, beta, directions)

    return score


def task_directions(tasks: Sequence[TaskSpec]) -> list[int]:
    return [t.direction for t in tasks]
