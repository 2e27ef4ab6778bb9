"""The stream consumer against a real redis-server: join, ack, dedupe, dead letters, resume."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from shared import events as ev
from shared.manifest import read_current, read_manifest
from tests.conftest import RedisServer
from trainer.stream.consume import ConsumeConfig, StreamTrainer

TASKS = ("click", "like", "skip")
STREAM = "test:events"
T0 = time.time()  # events are recent: the consumer expires sessions idle for 30 min


def _rank(sid: str, step: int, state_dim: int = 5, tasks: tuple[str, ...] = TASKS) -> ev.RankEvent:
    rng = np.random.default_rng(hash((sid, step)) % 2**32)
    k, m = len(tasks), 8
    return ev.RankEvent(
        request_id=f"{sid}-r{step}",
        session_id=sid,
        user_id="u",
        ts=T0 + step,
        model_version="v0001",
        tasks=tasks,
        state=rng.normal(size=state_dim).astype(np.float32),
        action=np.full(k, 0.1, np.float32),
        noise=np.zeros(k, np.float32),
        exploration_scale=0.1,
        n_candidates=20,
        sample_rate=m / 20,
        sampled_ids=tuple(f"i{j}" for j in range(m)),
        predictions=rng.random((k, m)).astype(np.float32),
        returned_ids=("i0", "i1"),
    )


def _feedback(sid: str, step: int, watch: float, end: bool = False) -> ev.FeedbackEvent:
    item = ev.FeedbackItemEvent("i0", watch, {"click": 1})
    return ev.FeedbackEvent(f"{sid}-r{step}", sid, "u", T0 + 0.5 + step, (item,), end)


def _log_sessions(client: redis.Redis, n_sessions: int, steps: int) -> int:
    """Write sessions as the scorer would; returns the number of transitions they hold."""
    for s in range(n_sessions):
        sid = f"s{s}"
        for t in range(steps):
            client.xadd(STREAM, ev.encode(_rank(sid, t)))
            client.xadd(STREAM, ev.encode(_feedback(sid, t, 10.0 + t, end=t == steps - 1)))
        client.xadd(
            STREAM, ev.encode(ev.SessionEndEvent(f"{sid}-r{steps - 1}", sid, "u", T0 + 100))
        )
    return n_sessions * steps


def _config(server: RedisServer, **kw: object) -> ConsumeConfig:
    base = dict(
        redis_url=server.url,
        stream=STREAM,
        until_idle=True,
        block_ms=100,
        min_replay=4,
        updates_per_transition=0.5,
    )
    return ConsumeConfig(**{**base, **kw})  # type: ignore[arg-type]


def _pending(client: redis.Redis) -> int:
    return int(client.xpending(STREAM, "xmtf-trainer")["pending"])


def test_consume_trains_acks_and_publishes(model_dir: Path, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=4, steps=3)
    client.xadd(STREAM, {b"type": b"rank", b"v": b"1", b"data": b"\xc1 not msgpack"})
    client.xadd(STREAM, ev.encode(_rank("bad", 0, state_dim=7)))  # wrong state_dim
    before = read_current(model_dir)

    trainer = StreamTrainer(model_dir, _config(redis_server))
    stats = trainer.run()

    assert stats.transitions == expected
    assert stats.dead_letters == 2
    assert stats.updates > 0
    assert _pending(client) == 0, "every entry is acknowledged once its transition is stored"
    dead = client.xrange(f"{STREAM}:dead")
    assert len(dead) == 2 and all(b"reason" in fields for _, fields in dead)
    # rewards are the watch times; dones only on the last step of each session
    assert sorted(np.unique(trainer.replay.reward[:expected])) == [10.0, 11.0, 12.0]
    assert trainer.replay.done[:expected].sum() == 4
    after = read_current(model_dir)
    assert after is not None and after != before and stats.exports == [after]
    manifest = read_manifest(model_dir / after)
    assert manifest.training["source"] == "consume"
    assert manifest.training["transitions"] == expected


def test_redelivered_entries_are_not_trained_twice(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=3, steps=2)
    assert StreamTrainer(model_dir, _config(redis_server)).run().transitions == expected
    # the same sessions logged again (e.g. a producer retry): recognised by request id
    _log_sessions(client, n_sessions=3, steps=2)
    stats = StreamTrainer(model_dir, _config(redis_server)).run()
    assert stats.transitions == 0
    assert stats.duplicates == expected
    assert _pending(client) == 0


def test_restart_after_crash_resumes_pending_entries(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=3, steps=3)
    crashed = StreamTrainer(model_dir, _config(redis_server))
    crashed.ensure_group()
    delivered = crashed._read()  # delivered, then the process "dies" before acking
    assert delivered and _pending(client) == len(delivered)

    stats = StreamTrainer(model_dir, _config(redis_server)).run()  # same consumer name restarts
    assert stats.transitions == expected
    assert _pending(client) == 0


def test_incomplete_session_stays_pending_until_it_completes(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd(STREAM, ev.encode(_rank("s", 0)))
    client.xadd(STREAM, ev.encode(_feedback("s", 0, 5.0)))
    stats = StreamTrainer(model_dir, _config(redis_server)).run()
    assert stats.transitions == 0 and _pending(client) == 2  # s_{t+1} unknown yet: not acked
    client.xadd(STREAM, ev.encode(ev.SessionEndEvent("s-r0", "s", "u", T0 + 1)))
    stats = StreamTrainer(model_dir, _config(redis_server)).run()
    assert stats.transitions == 1 and _pending(client) == 0


def test_consume_without_model_fails_clearly(tmp_path: Path, redis_server: RedisServer) -> None:
    with pytest.raises(FileNotFoundError, match="xmtf-train init"):
        StreamTrainer(tmp_path, _config(redis_server))
