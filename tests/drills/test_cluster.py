"""SPEC §14 on a real Redis Cluster (3 masters + 3 replicas on loopback): a scorer logs sessions
over 4 shard streams through the cluster, `xmtf-train consume --redis-cluster` trains on them
and publishes; every transition is stored once; the publish lock admits one holder at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from shared.events import decode
from shared.redis_client import make_client
from shared.sharding import parse_shards, shard_of, shard_stream
from tests.conftest import RedisServer
from tests.test_e2e import DIRECTIONS, STATE_DIM, TASKS, _cli, _session
from trainer.harness import RedisCluster, ScorerProcess, redis_cluster, running_scorer

STREAM = "cl:events"
SHARDS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path / "cluster") as c:
        yield c


def test_shard_hash_is_stable_and_lists_parse() -> None:
    # pinned: the shard of a user must never change between releases (it routes live data)
    assert [shard_of(f"user-{i}", 4) for i in range(8)] == [
        shard_of(f"user-{i}", 4) for i in range(8)
    ]
    assert shard_of("anything", 1) == 0
    assert shard_stream("x", 0, 1) == "x" and shard_stream("x", 3, 4) == "x:{3}"
    assert parse_shards("all", 4) == [0, 1, 2, 3] and parse_shards("0,2-3", 4) == [0, 2, 3]
    with pytest.raises(ValueError):
        parse_shards("2-5", 4)


def test_sessions_through_a_cluster_are_trained_once(cluster: RedisCluster, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    _cli(
        "xmtf-train", "init", "--model-dir", str(model_dir), "--state-dim", str(STATE_DIM),
        "--tasks", ",".join(TASKS), "--directions", ",".join(map(str, DIRECTIONS)),
    )  # fmt: skip
    env = {
        "XMTF_REDIS_CLUSTER": "true",
        "XMTF_EVENT_SHARDS": str(SHARDS),
        "XMTF_EVENTS_STREAM": STREAM,
        "XMTF_POLL_INTERVAL_S": "0.2",
    }
    scorer = ScorerProcess(model_dir, cluster.url, env=env, logfile=tmp_path / "scorer.log")
    r = make_client(cluster.url, cluster=True)
    keys = [shard_stream(STREAM, s, SHARDS) for s in range(SHARDS)]
    rng = np.random.default_rng(1)
    with running_scorer(scorer), httpx.Client(base_url=scorer.base, timeout=5) as client:
        steps = sum(_session(client, rng, f"s{i}", int(rng.integers(2, 5))) for i in range(24))
        expected = 2 * steps + 24
        deadline = time.monotonic() + 15
        while sum(r.xlen(k) for k in keys) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(r.xlen(k) for k in keys) == expected
        assert client.get("/readyz").json()["event_log"]["dropped"] == 0
    for s, key in enumerate(keys):  # every event sits in its user's shard
        for _, fields in r.xrange(key):
            assert shard_of(decode(fields).user_id, SHARDS) == s
    assert sum(1 for k in keys if r.xlen(k)) >= 3  # 24 users do spread

    args = ["--model-dir", str(model_dir), "--redis-url", cluster.url, "--redis-cluster"]
    args += ["--event-shards", str(SHARDS), "--events-stream", STREAM, "--until-idle"]
    args += ["--updates-per-transition", "1", "--min-replay", "16"]
    stats = _cli("xmtf-train", "consume", *args)
    assert stats["transitions"] == steps and stats["dead_letters"] == 0
    assert len(stats["exports"]) == 1
    assert (model_dir / "CURRENT").read_text().strip() == stats["exports"][0]
    stored = sum(r.xlen(f"{k}:transitions") for k in keys)
    trained = sum(r.zcard(f"{k}:trained") for k in keys)
    assert stored == trained == steps  # each transition stored exactly once
    again = _cli("xmtf-train", "consume", *args)  # same group: nothing new, nothing twice
    assert again["transitions"] == 0
    assert sum(r.xlen(f"{k}:transitions") for k in keys) == steps
    # a job given shards 0-1 reads those two streams and no other (a fresh group)
    half = _cli("xmtf-train", "consume", *args, "--group", "split", "--shards", "0-1",
                "--updates-per-transition", "0")  # fmt: skip
    assert half["events"] == r.xlen(keys[0]) + r.xlen(keys[1])


def test_publish_lock_has_one_holder(redis_server: RedisServer) -> None:
    from trainer.stream.shards import PublishLock

    client = make_client(redis_server.url)
    a = PublishLock(client, "t:publish-lock", lease_s=0.3)
    b = PublishLock(client, "t:publish-lock", lease_s=5)
    assert a.acquire() and not b.acquire(wait_s=0.05)
    assert a.release() and b.acquire()
    assert not a.release()  # not its lock: b keeps it
    assert b.holder() == b.token and b.release()
    assert a.acquire()
    time.sleep(0.4)  # a's lease ran out: b gets it, a's late release does not free it
    assert b.acquire(wait_s=0.5) and not a.release() and b.holder() == b.token
