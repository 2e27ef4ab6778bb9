"""Joining rank + feedback (+ session_end) events into transitions (SPEC §6)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.events import FeedbackEvent, FeedbackItemEvent, RankEvent, SessionEndEvent
from trainer.stream.codec import Transition
from trainer.stream.joiner import RewardConfig, SessionJoiner

TASKS = ("click", "like")
SID = "s1"


def _rank(step: int, sid: str = SID, ts: float | None = None) -> RankEvent:
    k, m = len(TASKS), 3
    return RankEvent(
        request_id=f"{sid}-r{step}",
        session_id=sid,
        user_id="u1",
        ts=100.0 + 10 * step if ts is None else ts,
        model_version="v0001",
        tasks=TASKS,
        state=np.full(4, float(step), np.float32),
        action=np.full(k, 0.1 * step, np.float32),
        noise=np.zeros(k, np.float32),
        exploration_scale=0.1,
        n_candidates=m,
        sample_rate=1.0,
        sampled_ids=("a", "b", "c"),
        predictions=np.full((k, m), float(step), np.float32),
        returned_ids=("a", "b"),
    )


def _feedback(step: int, watch: tuple[float, ...] = (10.0,), sid: str = SID, **signals: int):
    items = tuple(FeedbackItemEvent(f"i{j}", w, dict(signals)) for j, w in enumerate(watch))
    return FeedbackEvent(f"{sid}-r{step}", sid, "u1", 100.0 + 10 * step + 5, items, False)


def _end(step: int, sid: str = SID, ts: float = 1000.0) -> SessionEndEvent:
    return SessionEndEvent(f"{sid}-r{step}", sid, "u1", ts)


def _feed(joiner: SessionJoiner, events: list[tuple[str, object]]) -> list[Transition]:
    out: list[Transition] = []
    for entry_id, event in events:
        out += joiner.add(entry_id, event)  # type: ignore[arg-type]
    return out


def test_three_step_session_in_order() -> None:
    joiner = SessionJoiner()
    got: list[list[Transition]] = []
    events = [
        ("e-r0", _rank(0)),
        ("e-f0", _feedback(0, (3.0, 4.0))),
        ("e-r1", _rank(1)),
        ("e-f1", _feedback(1, (5.0,))),
        ("e-r2", _rank(2)),
        ("e-f2", _feedback(2, (6.0,))),
        ("e-end", _end(2)),
    ]
    for entry_id, event in events:
        got.append(joiner.add(entry_id, event))
    # a step is emitted once the next rank (s_{t+1}) or the session end is seen
    assert [len(x) for x in got] == [0, 0, 1, 0, 1, 0, 1]
    t0, t1, t2 = got[2][0], got[4][0], got[6][0]
    assert [t.request_id for t in (t0, t1, t2)] == ["s1-r0", "s1-r1", "s1-r2"]
    assert [t.done for t in (t0, t1, t2)] == [False, False, True]
    assert [t.reward for t in (t0, t1, t2)] == [7.0, 5.0, 6.0]
    np.testing.assert_array_equal(t0.state, np.full(4, 0.0))
    np.testing.assert_array_equal(t0.next_state, np.full(4, 1.0))  # the next rank's state
    np.testing.assert_array_equal(t1.state, np.full(4, 1.0))
    np.testing.assert_array_equal(t1.next_state, np.full(4, 2.0))
    np.testing.assert_array_equal(t2.state, np.full(4, 2.0))
    np.testing.assert_allclose(t1.action, [0.1, 0.1])
    np.testing.assert_array_equal(t1.predictions, np.full((2, 3), 1.0))
    assert t0.entry_ids == ("e-r0", "e-f0")
    assert t1.entry_ids == ("e-r1", "e-f1")
    assert t2.entry_ids == ("e-r2", "e-f2", "e-end")
    # everything is accounted for, nothing held
    assert joiner.sessions == {} and joiner.orphans == {}
    assert joiner.pending_entries() == 0


def test_last_step_waits_for_session_end() -> None:
    joiner = SessionJoiner()
    out = _feed(joiner, [("r0", _rank(0)), ("f0", _feedback(0))])
    assert out == []
    assert joiner.pending_entries() == 2
    out = joiner.add("end", _end(0))
    assert len(out) == 1 and out[0].done
    assert out[0].entry_ids == ("r0", "f0", "end")


def test_session_end_before_last_feedback() -> None:
    joiner = SessionJoiner()
    out = _feed(joiner, [("r0", _rank(0)), ("end", _end(0))])
    assert out == []
    out = joiner.add("f0", _feedback(0))
    assert len(out) == 1 and out[0].done and out[0].entry_ids == ("r0", "f0", "end")


def test_step_waits_for_its_feedback() -> None:
    joiner = SessionJoiner()
    out = _feed(joiner, [("r0", _rank(0)), ("r1", _rank(1)), ("f1", _feedback(1))])
    assert out == []  # step 0 has no feedback yet, step 1 has no successor
    out = joiner.add("f0", _feedback(0))
    assert [t.request_id for t in out] == ["s1-r0"]
    assert out[0].entry_ids == ("r0", "f0")


def test_feedback_before_its_rank_is_joined() -> None:
    joiner = SessionJoiner()
    assert joiner.add("f0", _feedback(0, (8.0,))) == []
    assert "s1-r0" in joiner.orphans
    assert joiner.pending_entries() == 1
    out = _feed(joiner, [("r0", _rank(0)), ("r1", _rank(1))])
    assert len(out) == 1
    assert out[0].reward == 8.0
    assert out[0].entry_ids == ("r0", "f0")
    assert joiner.orphans == {}


def test_redelivered_orphan_feedback_keeps_both_entries() -> None:
    joiner = SessionJoiner()
    _feed(joiner, [("f0", _feedback(0)), ("f0b", _feedback(0))])
    out = _feed(joiner, [("r0", _rank(0)), ("end", _end(0))])
    assert out[0].entry_ids == ("r0", "f0", "f0b", "end")
    assert out[0].reward == 10.0  # counted once


def test_redelivered_rank_is_ignored() -> None:
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [("r0", _rank(0)), ("f0", _feedback(0)), ("r0", _rank(0)), ("r1", _rank(1))],
    )
    assert len(out) == 1
    assert out[0].entry_ids == ("r0", "f0")
    np.testing.assert_array_equal(out[0].next_state, np.full(4, 1.0))


def test_redelivered_feedback_counts_reward_once() -> None:
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [
            ("r0", _rank(0)),
            ("f0", _feedback(0, (4.0,))),
            ("f0x", _feedback(0, (4.0,))),
            ("end", _end(0)),
        ],
    )
    assert len(out) == 1
    assert out[0].reward == 4.0
    assert set(out[0].entry_ids) == {"r0", "f0", "f0x", "end"}


def test_ranks_out_of_order_are_sorted_by_time() -> None:
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [("r1", _rank(1)), ("f1", _feedback(1)), ("r0", _rank(0)), ("f0", _feedback(0))],
    )
    assert [t.request_id for t in out] == ["s1-r0"]
    np.testing.assert_array_equal(out[0].next_state, np.full(4, 1.0))


def test_session_end_before_the_last_rank_does_not_cut_the_session() -> None:
    """An early session_end names its request; an earlier step must not become terminal."""
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [
            ("r0", _rank(0)),
            ("f0", _feedback(0)),
            ("r1", _rank(1)),
            ("f1", _feedback(1)),
            ("end", _end(2)),
        ],
    )
    assert [(t.request_id, t.done) for t in out] == [("s1-r0", False)]
    out = _feed(joiner, [("r2", _rank(2)), ("f2", _feedback(2))])
    assert [(t.request_id, t.done) for t in out] == [("s1-r1", False), ("s1-r2", True)]
    np.testing.assert_array_equal(out[0].next_state, np.full(4, 2.0))
    assert out[-1].entry_ids == ("r2", "f2", "end")
    assert joiner.sessions == {}


def test_sessions_are_independent() -> None:
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [
            ("a0", _rank(0, "A")),
            ("b0", _rank(0, "B")),
            ("fa0", _feedback(0, sid="A")),
            ("b1", _rank(1, "B")),
            ("a1", _rank(1, "A")),
        ],
    )
    assert [t.request_id for t in out] == ["A-r0"]
    out = joiner.add("fb0", _feedback(0, sid="B"))
    assert [t.request_id for t in out] == ["B-r0"]


# ----------------------------------------------------------------------------- reward


def test_reward_is_total_watch_time_by_default() -> None:
    fb = _feedback(0, (1.5, 2.5, 0.0), click=1, like=1)
    assert RewardConfig().reward(fb) == pytest.approx(4.0)


def test_reward_with_signal_weights() -> None:
    fb = FeedbackEvent(
        "s1-r0",
        SID,
        "u1",
        1.0,
        (
            FeedbackItemEvent("a", 10.0, {"click": 1, "like": 1}),
            FeedbackItemEvent("b", 20.0, {"click": 1}),
            FeedbackItemEvent("c", 0.0, {}),
        ),
        False,
    )
    cfg = RewardConfig(
        watch_time_weight=0.5, signal_weights={"click": 2.0, "like": 7.0, "share": 100.0}
    )
    assert cfg.reward(fb) == pytest.approx(0.5 * 30.0 + 2.0 * 2 + 7.0 * 1)
    joiner = SessionJoiner(cfg)
    out = _feed(joiner, [("r0", _rank(0)), ("f0", fb), ("end", _end(0))])
    assert out[0].reward == pytest.approx(26.0)


# ----------------------------------------------------------------------------- expiry


def test_expire_closes_idle_sessions() -> None:
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [
            ("r0", _rank(0)),
            ("f0", _feedback(0, (1.0,))),
            ("r1", _rank(1)),
            ("f1", _feedback(1, (2.0,))),
        ],
    )
    assert [t.request_id for t in out] == ["s1-r0"]  # r1 has feedback but no successor or end
    last_ts = 115.0  # f1
    out, dropped = joiner.expire(now_ts=last_ts + 30, timeout_s=60.0)  # not idle long enough
    assert out == [] and dropped == []
    out, dropped = joiner.expire(now_ts=last_ts + 61, timeout_s=60.0)
    assert [(t.request_id, t.done) for t in out] == [("s1-r1", True)]
    assert out[0].entry_ids == ("r1", "f1")
    assert out[0].reward == 2.0
    assert dropped == []
    assert joiner.sessions == {}
    assert joiner.pending_entries() == 0


def test_expire_drops_steps_without_feedback() -> None:
    joiner = SessionJoiner()
    out = _feed(
        joiner,
        [
            ("r0", _rank(0)),
            ("f0", _feedback(0)),
            ("r1", _rank(1)),
            ("f1", _feedback(1)),
            ("r2", _rank(2)),
        ],
    )
    assert [t.request_id for t in out] == ["s1-r0", "s1-r1"]
    out, dropped = joiner.expire(now_ts=10_000.0, timeout_s=60.0)
    assert out == []
    assert dropped == ["r2"]
    assert joiner.pending_entries() == 0


def test_expire_terminal_step_carries_end_entries() -> None:
    """A session_end naming a rank that never arrives: expiry closes it with the end entry."""
    joiner = SessionJoiner()
    out = _feed(joiner, [("r0", _rank(0)), ("f0", _feedback(0)), ("end", _end(1))])
    assert out == []
    out, dropped = joiner.expire(now_ts=10_000.0, timeout_s=60.0)
    assert [(t.request_id, t.done) for t in out] == [("s1-r0", True)]
    assert out[0].entry_ids == ("r0", "f0", "end")
    assert dropped == []


def test_session_end_first_is_kept_until_its_rank() -> None:
    joiner = SessionJoiner()
    assert joiner.add("end", _end(0, ts=50.0)) == []
    out = _feed(joiner, [("r0", _rank(0)), ("f0", _feedback(0))])
    assert len(out) == 1 and out[0].done
    assert out[0].entry_ids == ("r0", "f0", "end")
    assert joiner.sessions == {}


def test_expire_acks_a_lone_session_end() -> None:
    joiner = SessionJoiner()
    joiner.add("end", _end(0))
    out, dropped = joiner.expire(now_ts=10_000.0, timeout_s=60.0)
    assert out == [] and dropped == ["end"]
    assert joiner.sessions == {}


def test_expire_keeps_active_sessions() -> None:
    joiner = SessionJoiner()
    _feed(joiner, [("a0", _rank(0, "A", ts=0.0)), ("b0", _rank(0, "B", ts=500.0))])
    out, dropped = joiner.expire(now_ts=600.0, timeout_s=200.0)
    assert out == [] and dropped == ["a0"]
    assert set(joiner.sessions) == {"B"}


def test_expire_chains_steps_with_feedback() -> None:
    joiner = SessionJoiner()
    _feed(
        joiner,
        [
            ("r0", _rank(0)),
            ("r1", _rank(1)),
            ("f1", _feedback(1)),
            ("r2", _rank(2)),
            ("f2", _feedback(2)),
        ],
    )
    out, dropped = joiner.expire(now_ts=10_000.0, timeout_s=60.0)
    assert [(t.request_id, t.done) for t in out] == [("s1-r1", False), ("s1-r2", True)]
    np.testing.assert_array_equal(out[0].next_state, np.full(4, 2.0))
    assert dropped == ["r0"]


def test_expire_drops_orphan_feedback_of_an_idle_session() -> None:
    """Feedback whose rank never arrives (lost by the logger) must not stay pending forever."""
    joiner = SessionJoiner()
    joiner.add("f0", _feedback(0))
    out, dropped = joiner.expire(now_ts=10_000.0, timeout_s=60.0)
    assert out == []
    assert dropped == ["f0"]
    assert joiner.orphans == {} and joiner.sessions == {}
    assert joiner.pending_entries() == 0
