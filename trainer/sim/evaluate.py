"""Evaluation: run sessions to their end under a ranking policy and total their watch time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainer.sim.env import UserSimulator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Per-session totals of an evaluation run."""

    returns: np.ndarray  # (S,) total watch time per session
    lengths: np.ndarray  # (S,) requests per session

    def summary(self) -> dict[str, float]:
        """Mean and standard deviation of returns and lengths, and the session count."""
        return {
            "return_mean": float(np.mean(self.returns)),
            "return_std": float(np.std(self.returns)),
            "length_mean": float(np.mean(self.lengths)),
            "length_std": float(np.std(self.lengths)),
            "n_sessions": float(len(self.returns)),
        }


def evaluate(
    sim: UserSimulator,
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_sessions: int,
    seed: int,
) -> EvalResult:
    """Run ``n_sessions`` concurrent sessions to their end, ranking by ``score_fn``.

    ``score_fn(state (U, D), predictions (U, K, C)) -> scores (U, C)`` is called on the active
    users only. Deterministic for a seed (and a deterministic ``score_fn``).
    """
    obs = sim.reset(n_sessions, seed=seed, auto_reset=False)
    returns = np.zeros(n_sessions, np.float64)
    lengths = np.zeros(n_sessions, np.int64)
    for _ in range(sim.config.max_steps + 1):
        active = obs.active
        if not active.any():
            break
        scores = np.zeros((*active.shape, sim.config.n_candidates), np.float64)
        scores[active] = score_fn(obs.state[active], obs.predictions[active])
        result = sim.step_scores(scores)
        returns += result.reward
        lengths += active
        obs = result.observation
    if obs.active.any():
        raise RuntimeError("sessions did not end within max_steps")
    logger.debug("evaluated %d sessions", n_sessions)
    return EvalResult(returns=returns.astype(np.float32), lengths=lengths.astype(np.int32))
