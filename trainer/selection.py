"""Checkpoint selection on validation users, with a guard against publishing a worse fusion.

Every ``select_every`` collection steps the learner's greedy policy is evaluated on the same
validation users (a seed of their own, never the evaluation users) and compared, user by user,
with the learner's *start* (the model before any training). A checkpoint can replace the start
only if its paired improvement on validation is above 0 with 95 % confidence (bootstrap over
users); among those the best mean wins. So a run whose training did not help ends with its
start, and says so (``kept_start``), instead of publishing its last iterate.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from trainer import stats
from trainer.sim import UserSimulator, evaluate

log = logging.getLogger(__name__)


class Snapshotting(Protocol):
    """A learner whose model can be copied out and put back (:class:`trainer.loop.Learner`)."""

    def score_fn(self) -> Any: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


class SelectionError(ValueError):
    """Selection was asked to use the evaluation users."""


@dataclass
class Selector:
    """Keeps the best validated checkpoint of one training run (see the module docstring)."""

    sim: UserSimulator
    sessions: int
    seed: int
    eval_seed: int
    start_returns: np.ndarray | None = None
    best: Any = None
    best_step: int = 0
    best_gain: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seed == self.eval_seed:
            raise SelectionError(
                f"validation seed {self.seed} is the evaluation seed: a checkpoint chosen on "
                "the evaluation users reports an optimistic score; give validation its own seed"
            )

    @property
    def requests(self) -> int:
        """Simulated requests spent on validation (part of a run's budget)."""
        return self.sim.requests_served

    def _returns(self, learner: Snapshotting) -> np.ndarray:
        return evaluate(self.sim, learner.score_fn(), self.sessions, self.seed).returns

    def start(self, learner: Snapshotting) -> None:
        """Validate the untrained learner: the reference every checkpoint must beat."""
        self.start_returns = self._returns(learner)
        self.best = learner.snapshot()
        self.best_step, self.best_gain = 0, 0.0
        self.history.append({"step": 0.0, "val_return": float(self.start_returns.mean())})

    def consider(self, step: int, learner: Snapshotting) -> dict[str, float]:
        """Validate the learner now; keep it if it beats the start (and the best) with 95 %
        confidence on the paired validation users."""
        if self.start_returns is None:
            raise RuntimeError("call start() before consider()")
        returns = self._returns(learner)
        gain = stats.paired_difference(returns, self.start_returns, n_boot=500, seed=step)
        row = {
            "step": float(step),
            "val_return": float(returns.mean()),
            "val_gain": gain.mean,
            "val_gain_lo": gain.lo,
        }
        if gain.lo > 0 and gain.mean > self.best_gain:
            self.best, self.best_step, self.best_gain = learner.snapshot(), step, gain.mean
            row["selected"] = 1.0
        self.history.append(row)
        log.debug("validation at step %d: %s", step, row)
        return row

    def finish(self, learner: Snapshotting) -> dict[str, Any]:
        """Put the selected checkpoint back into the learner; what was decided and why."""
        if self.best is not None:
            learner.restore(copy.deepcopy(self.best))
        return {
            "selected_step": self.best_step,
            "kept_start": self.best_step == 0,
            "val_gain": self.best_gain,
            "val_requests": self.requests,
            "validation": self.history,
        }
