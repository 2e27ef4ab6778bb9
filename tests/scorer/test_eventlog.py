"""The session log (SPEC §6, §10): what reaches the Redis Stream, and ranking while Redis is down.

Every test uses its own throwaway ``redis-server`` (``redis_server`` fixture), stopped and started
again on the same port to simulate an outage.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from scorer.eventlog import EventLogger, PendingRank, pack_xadd, xadd_prefix
from scorer.parsing import RankInput
from scorer.ranker import RankResult
from shared.events import (
    FEEDBACK,
    RANK,
    SESSION_END,
    FeedbackEvent,
    RankEvent,
    SessionEndEvent,
    decode,
    encode,
)
from tests.conftest import RedisServer
from tests.helpers import metric, wait_until
from tests.scorer.conftest import MakeClient
from tests.scorer.test_app import TASKS, actor_and_mfc, rank_body

STREAM = "xmtf:test-events"
MAX_RANK_SECONDS = 0.5  # generous: ranking must not wait on Redis (behaviour, not a benchmark)


@pytest.fixture
def make_client(make_client: MakeClient) -> MakeClient:
    """The scorer tests' factory with short Redis timeouts, for the outage tests."""
    return functools.partial(make_client, redis_timeout_s=0.1)


def stream_events(server: RedisServer) -> list[Any]:
    with redis.Redis.from_url(server.url) as r:
        return [decode(fields) for _, fields in r.xrange(STREAM)]


def stream_len(server: RedisServer) -> int:
    with redis.Redis.from_url(server.url) as r:
        return int(r.xlen(STREAM))


def log_state(client: TestClient) -> dict[str, Any]:
    return client.get("/readyz").json()["event_log"]


def timed_rank(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    resp = client.post("/v1/rank", json=body)
    elapsed = time.perf_counter() - start
    assert resp.status_code == 200, resp.text
    assert elapsed < MAX_RANK_SECONDS, f"/v1/rank took {elapsed:.3f}s while Redis was down"
    return resp.json()


def test_stream_holds_decodable_rank_feedback_and_session_end(
    make_client: Any, redis_server: RedisServer, model_dir: Path
) -> None:
    client = make_client(exploration_scale=0.3, seed=1, log_max_candidates=4)
    t0 = time.time()
    big = rank_body(10, seed=1, request_id="r-big", top_n=3)
    small = rank_body(3, seed=2, request_id="r-small", top_n=2)
    out_big = client.post("/v1/rank", json=big).json()
    out_small = client.post("/v1/rank", json=small).json()
    fb_items = [
        {
            "item_id": out_big["items"][0]["item_id"],
            "watch_time": 12.5,
            "signals": {"click": 1, "like": 0},
        }
    ]
    assert (
        client.post(
            "/v1/feedback",
            json={
                "request_id": "r-big",
                "session_id": "s-1",
                "user_id": "u-1",
                "items": fb_items,
            },
        ).status_code
        == 202
    )
    assert (
        client.post(
            "/v1/feedback",
            json={
                "request_id": "r-small",
                "session_id": "s-1",
                "user_id": "u-1",
                "items": [],
                "session_end": True,
            },
        ).status_code
        == 202
    )

    wait_until(lambda: stream_len(redis_server) >= 5)
    time.sleep(0.1)
    events = stream_events(redis_server)
    assert [e.type for e in events] == [RANK, RANK, FEEDBACK, FEEDBACK, SESSION_END]
    t1 = time.time()
    for e in events:
        assert t0 - 1 <= e.ts <= t1 + 1
        assert (e.session_id, e.user_id) == ("s-1", "u-1")

    rank_big, rank_small, fb_big, fb_small, end = events
    assert isinstance(rank_big, RankEvent) and isinstance(rank_small, RankEvent)
    for ev, body, out in ((rank_big, big, out_big), (rank_small, small, out_small)):
        assert ev.request_id == body["request_id"]
        assert ev.model_version == "v0001"
        assert ev.tasks == TASKS
        np.testing.assert_array_equal(ev.state, np.float32(body["user_state"]))
        np.testing.assert_array_equal(ev.action, np.float32(out["action"]))
        assert ev.exploration_scale == pytest.approx(0.3)
        preds = np.asarray([body["predictions"][t] for t in TASKS], np.float32)
        mu, _ = actor_and_mfc(model_dir / "v0001", body["user_state"], preds)
        # the logged noise is what was actually applied: action = actor output + noise
        np.testing.assert_allclose(ev.action - ev.noise, mu, atol=1e-6)
        assert np.any(ev.noise != 0)
        assert ev.returned_ids == tuple(i["item_id"] for i in out["items"])
        assert ev.n_candidates == len(body["item_ids"])
        # the logged predictions are the request's, column by column
        index = [body["item_ids"].index(i) for i in ev.sampled_ids]
        np.testing.assert_array_equal(ev.predictions, preds[:, index])

    # N = 10 > M = 4: a uniform sample of 4 in input order, with the rate recorded
    assert len(rank_big.sampled_ids) == 4
    assert len(set(rank_big.sampled_ids)) == 4
    index = [big["item_ids"].index(i) for i in rank_big.sampled_ids]
    assert index == sorted(index)
    assert rank_big.sample_rate == pytest.approx(0.4)
    assert rank_big.predictions.shape == (3, 4)
    # N = 3 <= M: every candidate, rate 1
    assert rank_small.sampled_ids == tuple(small["item_ids"])
    assert rank_small.sample_rate == 1.0

    assert isinstance(fb_big, FeedbackEvent) and isinstance(fb_small, FeedbackEvent)
    assert fb_big.request_id == "r-big" and fb_big.session_end is False
    assert len(fb_big.items) == 1
    assert fb_big.items[0].item_id == fb_items[0]["item_id"]
    assert fb_big.items[0].watch_time == 12.5
    assert dict(fb_big.items[0].signals) == {"click": 1, "like": 0}
    assert fb_small.request_id == "r-small" and fb_small.session_end is True
    assert fb_small.items == ()
    assert isinstance(end, SessionEndEvent) and end.request_id == "r-small"

    state = log_state(client)
    assert state["connected"] is True and state["logged"] == 5
    assert state["buffered"] == 0 and state["dropped"] == 0 and state["redis_errors"] == 0


def test_sampling_covers_every_candidate(make_client: Any, redis_server: RedisServer) -> None:
    client = make_client(log_max_candidates=3)
    body = rank_body(10, seed=3)
    for _ in range(40):
        assert client.post("/v1/rank", json=body).status_code == 200
    wait_until(lambda: stream_len(redis_server) >= 40)
    seen: set[str] = set()
    for ev in stream_events(redis_server):
        assert len(ev.sampled_ids) == 3 and ev.sample_rate == pytest.approx(0.3)
        seen.update(ev.sampled_ids)
    assert seen == set(body["item_ids"])  # 40 draws of 3 out of 10 miss one with p < 1e-5


def test_redis_killed_mid_run_then_restarted(make_client: Any, redis_server: RedisServer) -> None:
    client = make_client()
    for i in range(3):
        client.post("/v1/rank", json=rank_body(5, seed=i, request_id=f"before-{i}"))
    wait_until(lambda: log_state(client)["logged"] == 3)

    redis_server.stop()
    down_ids = [f"down-{i}" for i in range(30)]
    for rid in down_ids:
        timed_rank(client, rank_body(20, seed=7, request_id=rid))
        assert (
            client.post(
                "/v1/feedback", json={"request_id": rid, "session_id": "s-1", "user_id": "u-1"}
            ).status_code
            == 202
        )
    state = wait_until(
        lambda: (s := log_state(client))["connected"] is False and s["buffered"] == 60 and s
    )
    assert state["redis_errors"] > 0
    assert state["dropped"] == 0
    assert state["logged"] == 3
    assert state["last_error"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    text = client.get("/metrics").text
    assert metric(text, "xmtf_redis_connected") == 0
    assert metric(text, "xmtf_redis_errors_total") > 0
    assert metric(text, "xmtf_events_buffered") == 60
    assert metric(text, "xmtf_events_dropped_total") == 0

    # still answering quickly while the logger keeps failing and backing off
    for i in range(10):
        timed_rank(client, rank_body(20, seed=8, request_id=f"down-more-{i}"))

    redis_server.start()  # same port, empty (no persistence)
    wait_until(
        lambda: (s := log_state(client))["connected"] is True and s["buffered"] == 0, timeout=10
    )
    wait_until(lambda: stream_len(redis_server) >= 70)
    events = stream_events(redis_server)
    ranked = [e.request_id for e in events if e.type == RANK]
    assert ranked == down_ids + [f"down-more-{i}" for i in range(10)]
    assert sorted(e.request_id for e in events if e.type == FEEDBACK) == sorted(down_ids)
    assert log_state(client)["logged"] == 73

    # and new requests are logged again
    client.post("/v1/rank", json=rank_body(5, seed=9, request_id="after"))
    wait_until(lambda: "after" in [e.request_id for e in stream_events(redis_server)])
    assert metric(client.get("/metrics").text, "xmtf_redis_connected") == 1


def test_buffer_is_bounded_and_drops_the_oldest(
    make_client: Any, redis_server: RedisServer
) -> None:
    client = make_client(event_buffer_size=5)
    redis_server.stop()
    ids = [f"r-{i}" for i in range(20)]
    for rid in ids:
        timed_rank(client, rank_body(8, seed=1, request_id=rid))
        assert log_state(client)["buffered"] <= 5
    state = wait_until(lambda: (s := log_state(client))["buffered"] + s["dropped"] == 20 and s)
    assert state["buffered"] == 5
    assert state["dropped"] == 15
    assert state["logged"] == 0
    assert metric(client.get("/metrics").text, "xmtf_events_dropped_total") == 15

    redis_server.start()
    wait_until(lambda: log_state(client)["logged"] == 5)
    events = stream_events(redis_server)
    assert [e.request_id for e in events] == ids[-5:]  # the newest survive, in order
    assert log_state(client)["buffered"] == 0


def test_redis_down_at_start(make_client: Any, redis_server: RedisServer) -> None:
    redis_server.stop()
    client = make_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["model_version"] == "v0001"
    for i in range(5):
        timed_rank(client, rank_body(10, seed=i, request_id=f"early-{i}"))
    state = wait_until(lambda: (s := log_state(client))["redis_errors"] > 0 and s)
    assert state["connected"] is False
    assert client.get("/readyz").status_code == 200

    redis_server.start()
    wait_until(lambda: log_state(client)["logged"] == 5)
    assert [e.request_id for e in stream_events(redis_server)] == [f"early-{i}" for i in range(5)]
    assert log_state(client)["connected"] is True


def test_logging_disabled(make_client: Any) -> None:
    client = make_client(log_events=False)
    assert client.post("/v1/rank", json=rank_body(4)).status_code == 200
    assert (
        client.post(
            "/v1/feedback",
            json={
                "request_id": "r",
                "session_id": "s",
                "user_id": "u",
                "session_end": True,
            },
        ).status_code
        == 202
    )
    assert client.get("/readyz").json()["event_log"] == {"enabled": False}
    assert "xmtf_events_logged_total" not in client.get("/metrics").text


def test_extreme_but_valid_feedback_is_logged(make_client: Any, redis_server: RedisServer) -> None:
    client = make_client()
    signals = {"click": 2**64 - 1, "skip": -(2**63), "like": 1}
    body = {
        "request_id": "r-x",
        "session_id": "s" * 256,
        "user_id": "u-1",
        "items": [{"item_id": "i" * 256, "watch_time": 1e7, "signals": signals}],
    }
    assert client.post("/v1/feedback", json=body).status_code == 202
    client.post("/v1/rank", json=rank_body(3, request_id="r-next"))
    wait_until(lambda: stream_len(redis_server) >= 2)
    fb, nxt = stream_events(redis_server)
    assert isinstance(fb, FeedbackEvent)
    assert dict(fb.items[0].signals) == signals and fb.items[0].watch_time == 1e7
    assert nxt.request_id == "r-next"  # nothing got stuck behind it
    assert log_state(client)["redis_errors"] == 0


def test_stop_returns_while_redis_accepts_but_never_answers() -> None:
    """A Redis that hangs (accepts, reads, never replies) must not hang the app's shutdown."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    port = listener.getsockname()[1]
    result: dict[str, float] = {}

    async def scenario() -> None:
        logger = EventLogger(f"redis://127.0.0.1:{port}/0", STREAM, timeout=0.2)
        logger.start()
        logger.emit(SessionEndEvent("r", "s", "u", 1.0))
        await logger.encode_pending()
        logger._flush_now.set()
        await asyncio.sleep(0.05)  # the write is out, its reply never comes
        start = time.monotonic()
        await logger.stop(drain_timeout=0.3)
        result["stop_s"] = time.monotonic() - start
        result["alive"] = float(logger._thread is not None and logger._thread.is_alive())
        result["buffered"] = logger.buffered

    try:
        thread = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "EventLogger.stop() did not return"
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert result["stop_s"] < 0.3 + 2 * 0.2 + 1.0 and result["alive"] == 0.0
    assert result["buffered"] == 1  # not written, not lost from the count


@pytest.mark.parametrize("m", [1, 2, 5, 9, 10, 30])
def test_rank_sample_keeps_input_order_and_its_predictions(m: int) -> None:
    n, k = 10, 3
    ids = [f"i{j}" for j in range(n)]
    preds = np.arange(k * n, dtype=np.float32).reshape(k, n)
    request = RankInput("r", "s", "u", np.zeros((1, 4), np.float32), ids, preds, 2)
    result = RankResult(
        model_version="v", tasks=("a", "b", "c"), action=np.zeros(k, np.float32),
        noise=np.zeros(k, np.float32), exploration_scale=0.1, returned_ids=ids[:2],
        scores=np.ones(2, np.float32),
    )  # fmt: skip
    pending = PendingRank(request, result, ts=1.0)
    event = pending.to_event(m, np.random.default_rng(m))
    picked = [int(i[1:]) for i in event.sampled_ids]
    assert len(picked) == min(m, n) and picked == sorted(set(picked))
    assert event.sample_rate == len(picked) / n and event.n_candidates == n
    np.testing.assert_array_equal(event.predictions, preds[:, picked])
    assert isinstance(decode(encode(event)), RankEvent)


def test_rank_event_takes_its_fields_from_the_request_and_the_result() -> None:
    ids = ["a", "b", "c"]
    state = np.arange(4, dtype=np.float32)[None, :]
    preds = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = RankInput("r-9", "s-9", "u-9", state, ids, preds, 2)
    result = RankResult(
        model_version="v7", tasks=("click", "skip"), action=np.array([0.5, -0.25], np.float32),
        noise=np.array([0.1, 0.0], np.float32), exploration_scale=0.2, returned_ids=["c", "a"],
        scores=np.array([2.0, 1.0], np.float32),
    )  # fmt: skip
    event = PendingRank(request, result, ts=123.5).to_event(64, np.random.default_rng(0))
    assert (event.request_id, event.session_id, event.user_id) == ("r-9", "s-9", "u-9")
    assert (event.ts, event.model_version, event.tasks) == (123.5, "v7", ("click", "skip"))
    np.testing.assert_array_equal(event.state, state[0])
    assert event.action is result.action and event.noise is result.noise
    assert event.exploration_scale == 0.2 and event.n_candidates == 3 and event.sample_rate == 1
    assert event.sampled_ids == ("a", "b", "c") and event.returned_ids == ("c", "a")
    assert event.predictions is preds  # no sampling below M: the request's own matrix


def test_packed_xadd_is_the_command_redis_py_would_send() -> None:
    fields = {b"type": b"rank", b"v": b"1", b"data": b"\x00\r\n\xffbinary"}
    expected = b"".join(
        redis.connection.Connection().pack_command(
            "XADD", STREAM, "MAXLEN", "~", 1000, "*", *(x for kv in fields.items() for x in kv)
        )
    )
    assert pack_xadd(xadd_prefix(STREAM.encode(), b"1000", 3), fields) == expected
