"""Event schema: round trips, strict decoding, no pickle."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from shared import events as ev


def _rank(**kw: object) -> ev.RankEvent:
    base: dict[str, object] = dict(
        request_id="r1",
        session_id="s1",
        user_id="u1",
        ts=1.5,
        model_version="v1",
        tasks=("click", "like"),
        state=np.arange(4, dtype=np.float32),
        action=np.array([0.1, -0.2], np.float32),
        noise=np.array([0.01, 0.0], np.float32),
        exploration_scale=0.1,
        n_candidates=10,
        sample_rate=0.3,
        sampled_ids=("a", "b", "c"),
        predictions=np.arange(6, dtype=np.float32).reshape(2, 3) / 10,
        returned_ids=("b", "a"),
    )
    return ev.RankEvent(**{**base, **kw})  # type: ignore[arg-type]


def test_rank_round_trip() -> None:
    event = _rank()
    back = ev.decode(ev.encode(event))
    assert isinstance(back, ev.RankEvent)
    assert back.tasks == event.tasks and back.sampled_ids == event.sampled_ids
    np.testing.assert_array_equal(back.state, event.state)
    np.testing.assert_array_equal(back.predictions, event.predictions)
    np.testing.assert_array_equal(back.action, event.action)
    assert back.n_candidates == 10 and back.sample_rate == pytest.approx(0.3)


def test_feedback_and_session_end_round_trip() -> None:
    item = ev.FeedbackItemEvent("a", 12.5, {"click": 1, "like": 0})
    fb = ev.FeedbackEvent("r1", "s1", "u1", 2.0, (item,), True)
    back = ev.decode(ev.encode(fb))
    assert isinstance(back, ev.FeedbackEvent) and back.items[0].watch_time == 12.5
    assert back.items[0].signals == {"click": 1, "like": 0} and back.session_end
    end = ev.decode(ev.encode(ev.SessionEndEvent("r1", "s1", "u1", 3.0)))
    assert isinstance(end, ev.SessionEndEvent) and end.request_id == "r1"


def _fields(kind: str, data: dict[str, object]) -> dict[bytes, bytes]:
    return {b"type": kind.encode(), b"v": b"1", b"data": msgpack.packb(data, use_bin_type=True)}


def _rank_data() -> dict[str, object]:
    return msgpack.unpackb(ev.encode(_rank())[b"data"], raw=False)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("state"),
        lambda d: d.update(state=b"\x00\x00"),  # not float32-aligned
        lambda d: d.update(action=np.full(3, 0.1, np.float32).tobytes()),  # wrong K
        lambda d: d.update(predictions_shape=[2, 4]),  # does not match the ids
        lambda d: d.update(state=np.array([np.nan, 1, 2, 3], np.float32).tobytes()),
        lambda d: d.update(request_id=""),
        lambda d: d.update(request_id="x" * 300),
        lambda d: d.update(ts=True),
        lambda d: d.update(tasks=["click", 3]),
        lambda d: d.update(n_candidates=1),  # fewer than sampled
    ],
)
def test_malformed_rank_is_rejected(mutate: object) -> None:
    data = _rank_data()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ev.EventDecodeError):
        ev.decode(_fields("rank", data))


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"type": b"rank", b"v": b"1"},
        {b"type": b"rank", b"v": b"2", b"data": b""},
        {b"type": b"nope", b"v": b"1", b"data": msgpack.packb({"request_id": "r"})},
        {b"type": b"rank", b"v": b"1", b"data": b"\xc1garbage"},
        {b"type": b"rank", b"v": b"1", b"data": msgpack.packb([1, 2])},
        {b"type": b"\xff", b"v": b"1", b"data": b""},
    ],
)
def test_malformed_entries_are_rejected(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(ev.EventDecodeError):
        ev.decode(fields)


def test_negative_watch_time_is_rejected() -> None:
    data = {
        "request_id": "r",
        "session_id": "s",
        "user_id": "u",
        "ts": 1.0,
        "session_end": False,
        "items": [{"item_id": "a", "watch_time": -1.0, "signals": {}}],
    }
    with pytest.raises(ev.EventDecodeError, match="watch_time"):
        ev.decode(_fields("feedback", data))


def test_encoding_uses_no_pickle() -> None:
    payload = ev.encode(_rank())[b"data"]
    assert b"numpy" not in payload and not payload.startswith(b"\x80")  # pickle protocol marker


def test_rank_events_carry_experiment_and_arm_and_old_entries_still_decode() -> None:
    tagged = ev.decode(ev.encode(_rank(experiment="exp-1", arm="treatment")))
    assert isinstance(tagged, ev.RankEvent)
    assert (tagged.experiment, tagged.arm) == ("exp-1", "treatment")
    fields = ev.encode(_rank())
    assert b"experiment" not in fields[b"data"]  # outside experiments: the entry is unchanged
    old = ev.decode(fields)
    assert isinstance(old, ev.RankEvent) and old.experiment is None and old.arm is None
