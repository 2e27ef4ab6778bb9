"""Join logged events into transitions ``(s_t, a_t, r_t, s_{t+1}, done, O_t)`` per session.

Step t of a session is ready when its rank event has its feedback and either the session's next
rank event (which gives ``s_{t+1}``) or its ``session_end`` (``done``) has been seen. The stream
entry ids that made a transition are returned with it, so the consumer acknowledges them only
after the transition is stored. Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shared.events import Event, FeedbackEvent, RankEvent, SessionEndEvent
from trainer.stream.codec import Transition


@dataclass(frozen=True)
class RewardConfig:
    """``r_t = watch_time_weight * sum(watch_time) + sum_k w_k * sum(signal_k)``."""

    watch_time_weight: float = 1.0
    signal_weights: Mapping[str, float] = field(default_factory=dict)

    def reward(self, feedback: FeedbackEvent) -> float:
        total = self.watch_time_weight * sum(i.watch_time for i in feedback.items)
        for name, w in self.signal_weights.items():
            total += w * sum(i.signals.get(name, 0) for i in feedback.items)
        return float(total)


@dataclass
class _Step:
    rank: RankEvent
    rank_entry: str
    feedback: FeedbackEvent | None = None
    feedback_entries: list[str] = field(default_factory=list)


@dataclass
class _Session:
    steps: list[_Step] = field(default_factory=list)
    end_entries: list[str] = field(default_factory=list)
    ended_after: str | None = None  # request id named by the session_end event
    last_ts: float = 0.0


class SessionJoiner:
    """Accumulates events per session and emits completed transitions."""

    def __init__(self, reward: RewardConfig | None = None) -> None:
        self.reward = reward or RewardConfig()
        self.sessions: dict[str, _Session] = {}
        self.orphans: dict[str, tuple[FeedbackEvent, list[str]]] = {}  # feedback before its rank

    def pending_entries(self) -> int:
        return sum(
            1 + len(s.feedback_entries) for sess in self.sessions.values() for s in sess.steps
        ) + sum(len(ids) for _, ids in self.orphans.values())

    def add(self, entry_id: str, event: Event) -> list[Transition]:
        """Add one decoded event; return the transitions it completed."""
        sess = self.sessions.setdefault(event.session_id, _Session())
        sess.last_ts = max(sess.last_ts, event.ts)
        if isinstance(event, RankEvent):
            if any(s.rank.request_id == event.request_id for s in sess.steps):
                return []  # a redelivered rank already held here
            step = _Step(event, entry_id)
            orphan = self.orphans.pop(event.request_id, None)
            if orphan:
                step.feedback, step.feedback_entries = orphan[0], orphan[1]
            sess.steps.append(step)
            sess.steps.sort(key=lambda s: s.rank.ts)
        elif isinstance(event, FeedbackEvent):
            step_or_none = next(
                (s for s in sess.steps if s.rank.request_id == event.request_id), None
            )
            if step_or_none is None:
                fb, ids = self.orphans.get(event.request_id, (event, []))
                self.orphans[event.request_id] = (fb, [*ids, entry_id])
                return []
            if step_or_none.feedback is None:
                step_or_none.feedback = event
            step_or_none.feedback_entries.append(entry_id)
        elif isinstance(event, SessionEndEvent):
            sess.ended_after = event.request_id
            sess.end_entries.append(entry_id)
        return self._drain(event.session_id)

    def _drain(self, session_id: str) -> list[Transition]:
        sess = self.sessions[session_id]
        out: list[Transition] = []
        while sess.steps and sess.steps[0].feedback is not None:
            step = sess.steps[0]
            if len(sess.steps) > 1:
                out.append(self._transition(step, sess.steps[1].rank.state, False, ()))
            elif sess.ended_after == step.rank.request_id:
                # terminal only for the request the session_end names: an early session_end
                # (delivered before the last rank) must not cut the session short
                out.append(self._transition(step, step.rank.state, True, tuple(sess.end_entries)))
                del self.sessions[session_id]
                break
            else:
                break
            sess.steps.pop(0)
        return out

    def _transition(
        self, step: _Step, next_state: np.ndarray, done: bool, extra: tuple[str, ...]
    ) -> Transition:
        assert step.feedback is not None
        return Transition(
            request_id=step.rank.request_id,
            state=step.rank.state,
            action=step.rank.action,
            reward=self.reward.reward(step.feedback),
            next_state=next_state,
            done=done,
            predictions=step.rank.predictions,
            entry_ids=(step.rank_entry, *step.feedback_entries, *extra),
        )

    def expire(self, now_ts: float, timeout_s: float) -> tuple[list[Transition], list[str]]:
        """Close sessions idle for ``timeout_s``: the last step with feedback becomes terminal.

        Returns the transitions and the entry ids of steps that never got feedback (to ack and
        count as incomplete).
        """
        out: list[Transition] = []
        dropped: list[str] = []
        idle = [s for s, sess in self.sessions.items() if now_ts - sess.last_ts > timeout_s]
        # feedback whose rank never came (e.g. dropped by the logger) is acked, not held forever
        for rid in [r for r, (fb, _) in self.orphans.items() if fb.session_id in idle]:
            dropped += self.orphans.pop(rid)[1]
        for sid in idle:
            sess = self.sessions.pop(sid)
            steps = [s for s in sess.steps if s.feedback is not None]
            dropped += [s.rank_entry for s in sess.steps if s.feedback is None]
            for i, step in enumerate(steps):
                last = i == len(steps) - 1
                nxt = step.rank.state if last else steps[i + 1].rank.state
                out.append(
                    self._transition(step, nxt, last, tuple(sess.end_entries) if last else ())
                )
            if not steps:
                dropped += sess.end_entries
        return out, dropped
