"""The consumer's learner: TSH updates in a background thread, at a configured compute budget.

Ingest (decode, join, durable store, ack) runs on the consumer's main thread at stream speed
and hands each stored batch of transitions to :meth:`BackgroundLearner.add`; this thread turns
them into updates (``updates_per_transition`` of credit each, once ``min_replay`` transitions
are stored), capped by ``max_updates`` and by the time budget, and publishes versions every N
transitions, N updates or N seconds. Only this thread touches the agent while it runs (the
observation normaliser included: stored states are queued for it), so an export always sees a
consistent model, and ingest never waits for an update. Exactly-once storage is ingest's
business: nothing here writes to Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainer.replay import ReplayBuffer
from trainer.tsh import TSHAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnBudget:
    """How much the learner may do: update credit per stored transition and hard caps."""

    updates_per_transition: float = 0.25
    min_replay: int = 256
    max_updates: int | None = None  # updates in this run
    deadline: float | None = None  # time.monotonic() by which the learner must have stopped
    export_every_transitions: int = 0
    export_every_updates: int = 0
    export_every_seconds: float = 0.0
    # stored states wait at most this many for the normaliser (also while no update runs, e.g.
    # once max_updates is reached), so the queue stays small
    observe_every: int = 10_000


class BackgroundLearner:
    """Runs TSH updates on a thread; :meth:`add` is called by the ingest thread."""

    def __init__(
        self,
        agent: TSHAgent,
        replay: ReplayBuffer,
        budget: LearnBudget,
        export: Callable[[], object],
        on_update: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.agent, self.replay, self.budget = agent, replay, budget
        self._export_fn, self._on_update = export, on_update
        self._cond = threading.Condition()
        self._pending_states: list[np.ndarray] = []
        self._pending_rows = 0
        self._credit = 0.0
        self._ingest_done = False
        self._stop = False
        self.updates = 0  # in this run
        self.transitions = 0  # handed over in this run
        self.error: BaseException | None = None
        self._since_export_updates = 0
        self._since_export_transitions = 0
        self._last_export = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="xmtf-learner", daemon=True)

    # ------------------------------------------------------------------ ingest side

    @property
    def lock(self) -> threading.Condition:
        """Hold it to change the replay buffer while the learner runs."""
        return self._cond

    def added(self, states: np.ndarray) -> None:
        """Transitions with these states were stored and put into the replay buffer: they
        earn update credit (once ``min_replay`` are held) and the normaliser will observe
        them before the next update."""
        with self._cond:
            n = len(states)
            self._pending_states.append(states)
            self._pending_rows += n
            self.transitions += n
            self._since_export_transitions += n
            if len(self.replay) >= min(self.budget.min_replay, self.replay.capacity):
                self._credit += n * self.budget.updates_per_transition
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """Ingest has stopped: spend the remaining credit (within the caps), then stop."""
        with self._cond:
            self._ingest_done = True
            self._cond.notify()
        self._thread.join()
        self._raise_if_failed()

    def stop(self) -> None:
        """Stop after the update in progress, whatever credit is left."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def check(self) -> None:
        """Raise on the ingest thread what made the learner fail."""
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the learner failed: {self.error!r}") from self.error

    @property
    def credit(self) -> float:
        return self._credit

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ learner side

    def _capped(self) -> bool:
        b = self.budget
        if b.max_updates is not None and self.updates >= b.max_updates:
            return True
        return b.deadline is not None and time.monotonic() >= b.deadline

    def _next(self) -> str:
        """Wait for work: ``"update"`` (one credit taken), ``"export"``, ``"observe"`` (the
        queued states) or ``"stop"``."""
        with self._cond:
            while True:
                if self._stop:
                    return "stop"
                if self._export_due():
                    return "export"
                if self._pending_rows >= self.budget.observe_every:
                    return "observe"
                if self._credit >= 1.0 and not self._capped():
                    self._credit -= 1.0
                    return "update"
                if self._ingest_done:
                    return "stop"
                timeout = 0.5
                if self.budget.deadline is not None:
                    timeout = min(timeout, max(0.01, self.budget.deadline - time.monotonic()))
                self._cond.wait(timeout=timeout)

    def _observe_pending(self) -> None:
        with self._cond:
            pending, self._pending_states = self._pending_states, []
            self._pending_rows = 0
        if pending:
            self.agent.observe(np.concatenate(pending))

    def _export_due(self) -> bool:
        b = self.budget
        if self.updates == 0:  # nothing trained in this run: nothing new to publish
            return False
        if b.export_every_updates and self._since_export_updates >= b.export_every_updates:
            return True
        if b.export_every_transitions and (
            self._since_export_transitions >= b.export_every_transitions
        ):
            return True
        return bool(
            b.export_every_seconds
            and self._since_export_updates
            and time.monotonic() - self._last_export >= b.export_every_seconds
        )

    def export_now(self) -> object:
        """Publish the current model (learner thread, or after it stopped)."""
        self._observe_pending()
        result = self._export_fn()
        self._since_export_updates = 0
        self._since_export_transitions = 0
        self._last_export = time.monotonic()
        return result

    @property
    def has_unexported(self) -> bool:
        """Trained in this run, and updates or observed states not yet published."""
        return self.updates > 0 and bool(
            self._since_export_updates or self._since_export_transitions
        )

    def _run(self) -> None:
        try:
            while (action := self._next()) != "stop":
                if action == "export":
                    self.export_now()
                elif action == "observe":
                    self._observe_pending()
                else:
                    self._update()
        except BaseException as exc:  # surfaced on the ingest thread by check()/finish()
            log.exception("learner failed")
            self.error = exc

    def _update(self) -> None:
        self._observe_pending()
        with self._cond:
            batch = self.replay.sample(
                self.agent.config.batch_size, candidate_rows=self.agent.config.inner_batch_size
            )
        metrics = self.agent.update(batch)
        self.updates += 1
        self._since_export_updates += 1
        if self._on_update is not None:
            self._on_update(metrics)
