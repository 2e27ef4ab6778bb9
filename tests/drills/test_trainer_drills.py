"""Trainer fault drills with a real redis-server: a consumer killed mid-run and restarted, a dead
consumer's pending entries taken over, entries trimmed before they were read. Every logged
transition must end up in training exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from shared import events as ev
from tests.conftest import RedisServer
from tests.trainer.stream.test_consume import (
    STREAM,
    _config,
    _feedback,
    _log_sessions,
    _pending,
    _rank,
)
from trainer.stream.codec import decode_transition
from trainer.stream.consume import StreamTrainer

BIN = Path(sys.executable).parent


def _trained_ids(client: redis.Redis) -> list[str]:
    entries = client.xrange(f"{STREAM}:transitions")
    return [decode_transition(fields).request_id for _, fields in entries]


def _consume_cmd(model_dir: Path, server: RedisServer) -> list[str]:
    return [
        str(BIN / "xmtf-train"),
        "consume",
        "--model-dir",
        str(model_dir),
        "--redis-url",
        server.url,
        "--events-stream",
        STREAM,
        "--until-idle",
        "--min-replay",
        "16",
        "--updates-per-transition",
        "2",
        # a few entries per read: ingest no longer waits for learning, so without this the
        # whole stream is stored before the drill can kill the consumer in the middle
        "--read-count",
        "4",
    ]


def test_consumer_killed_mid_run_and_restarted(model_dir: Path, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=120, steps=5)
    client.xadd(STREAM, {b"type": b"feedback", b"v": b"1", b"data": b"\x00junk"})  # malformed

    proc = subprocess.Popen(
        _consume_cmd(model_dir, redis_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 120
    while client.xlen(f"{STREAM}:transitions") < 100:
        assert proc.poll() is None, "the consumer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stored_before = client.xlen(f"{STREAM}:transitions")
    assert 0 < stored_before < expected, "killed in the middle"

    done = subprocess.run(
        _consume_cmd(model_dir, redis_server), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])

    ids = _trained_ids(client)
    assert len(ids) == expected and len(set(ids)) == expected, "each transition exactly once"
    assert client.zcard(f"{STREAM}:trained") == expected
    assert stats["restored"] == stored_before  # the replay buffer came back from Redis
    assert stats["transitions"] + stored_before == expected
    assert stats["dead_letters"] == 1 and client.xlen(f"{STREAM}:dead") == 1
    assert _pending(client) == 0
    print(
        f"drill: {expected} transitions logged, {stored_before} stored before the kill, "
        f"{stats['transitions']} after restart, {stats['duplicates']} redeliveries deduplicated"
    )


def test_dead_consumer_entries_are_claimed(model_dir: Path, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=5, steps=3)
    dead = StreamTrainer(model_dir, _config(redis_server, consumer="dead-one"))
    dead.ensure_group()
    assert dead._read()  # delivered to "dead-one", which then disappears
    survivor = StreamTrainer(model_dir, _config(redis_server, consumer="survivor", claim_idle_ms=0))
    stats = survivor.run()
    assert stats.transitions == expected and _pending(client) == 0
    assert sorted(_trained_ids(client)) == sorted({i for i in _trained_ids(client)})


def test_entries_trimmed_before_reading_are_counted(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    StreamTrainer(model_dir, _config(redis_server)).ensure_group()
    for t in range(50):  # the producer outruns the trainer and MAXLEN (exact, 20) trims
        client.xadd(STREAM, ev.encode(_rank("s", t)), maxlen=20, approximate=False)
        client.xadd(STREAM, ev.encode(_feedback("s", t, 1.0)), maxlen=20, approximate=False)
    stats = StreamTrainer(model_dir, _config(redis_server)).run()
    assert stats.lost == 80
    assert stats.transitions == 9  # 10 ranks survive; the last waits for its successor
