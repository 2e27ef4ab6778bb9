"""Checkpoint selection on validation users, with a guard against publishing a worse fusion.

Every ``select_every`` collection steps the learner's greedy policy is evaluated on the same
validation users (a seed of their own, never the evaluation users) and compared, user by user,
with the learner's *start* (the model before any training). A checkpoint can replace the start
only if its paired improvement on validation is above 0 with 95 % confidence (bootstrap over
users); among those the best mean wins. So a run whose training did not help ends with its
start, and says so (``kept_start``), instead of publishing its last iterate.

Repeated looks are repeated chances: a checkpoint that cleared one look of several may owe its
margin to those validation users (the winner's curse; in the d = 1 study an actor-critic
checkpoint passed a look and scored 39 s below its start on evaluation users). With
``confirm_sessions > 0`` the checkpoint chosen by the looks must clear one more, independent
test before :meth:`Selector.finish` puts it in place: its paired gain over the start on
*fresh* confirmation users (their own seed) must again be above 0 with 95 % confidence, or the
start is kept. One test of one pre-chosen candidate is a plain 95 % test.
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
    # the confirmation test of the chosen checkpoint (0: none) on users of ``confirm_seed``
    confirm_sessions: int = 0
    confirm_seed: int | None = None
    start_returns: np.ndarray | None = None
    best: Any = None
    best_step: int = 0
    best_gain: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    _start: Any = None
    _confirm_start: np.ndarray | None = None
    _confirmed_step: int = 0

    def __post_init__(self) -> None:
        if self.seed == self.eval_seed:
            raise SelectionError(
                f"validation seed {self.seed} is the evaluation seed: a checkpoint chosen on "
                "the evaluation users reports an optimistic score; give validation its own seed"
            )
        if self.confirm_sessions:
            if self.confirm_seed is None:
                self.confirm_seed = self.seed + 1
            if self.confirm_seed in (self.seed, self.eval_seed):
                raise SelectionError(
                    f"confirmation seed {self.confirm_seed} is the validation or evaluation "
                    "seed: the confirmation test needs users of its own"
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
        self._start = copy.deepcopy(self.best)
        self.best_step, self.best_gain = 0, 0.0
        self.history.append({"step": 0.0, "val_return": float(self.start_returns.mean())})

    def consider(self, step: int, learner: Snapshotting) -> dict[str, float]:
        """Validate the learner now; keep it if it beats the start (and the best) with 95 %
        confidence on the paired validation users."""
        if self.start_returns is None:
            raise RuntimeError("call start() before consider()")
        if step <= 0:  # step 0 is the start: a choice recorded there would read as kept_start
            raise ValueError(f"a checkpoint is considered at a step > 0, got {step}")
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

    def _confirm(self, learner: Snapshotting) -> None:
        """The confirmation test of the chosen checkpoint (once per choice): on fresh users its
        paired gain over the start must be above 0 with 95 % confidence, or the start is
        restored as the choice (later looks may choose again)."""
        assert self.confirm_seed is not None and self._start is not None
        current = learner.snapshot()
        if self._confirm_start is None:
            learner.restore(copy.deepcopy(self._start))
            self._confirm_start = self._confirm_returns(learner)
        learner.restore(copy.deepcopy(self.best))
        returns = self._confirm_returns(learner)
        learner.restore(current)
        gain = stats.paired_difference(returns, self._confirm_start, n_boot=500, seed=0)
        row = {
            "step": float(self.best_step),
            "confirm_return": float(returns.mean()),
            "confirm_gain": gain.mean,
            "confirm_gain_lo": gain.lo,
        }
        if gain.lo > 0:
            self._confirmed_step = self.best_step
            row["confirmed"] = 1.0
        else:
            self.best, self.best_step, self.best_gain = copy.deepcopy(self._start), 0, 0.0
        self.history.append(row)
        log.debug("confirmation of step %d: %s", row["step"], row)

    def _confirm_returns(self, learner: Snapshotting) -> np.ndarray:
        assert self.confirm_seed is not None  # set in __post_init__ when confirming
        fn = learner.score_fn()
        return evaluate(self.sim, fn, self.confirm_sessions, self.confirm_seed).returns

    def finish(self, learner: Snapshotting) -> dict[str, Any]:
        """Put the selected checkpoint back into the learner (after its confirmation test, when
        there is one); what was decided and why."""
        if self.confirm_sessions and self.best_step and self.best_step != self._confirmed_step:
            self._confirm(learner)
        if self.best is not None:
            learner.restore(copy.deepcopy(self.best))
        return {
            "selected_step": self.best_step,
            "kept_start": self.best_step == 0,
            "val_gain": self.best_gain,
            "val_requests": self.requests,
            "validation": self.history,
        }
