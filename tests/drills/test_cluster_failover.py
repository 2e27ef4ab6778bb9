"""Failover drill on a real Redis Cluster (3 masters + 3 replicas, node timeout 1 s): a scorer
logs sessions over 4 shards while the master of shard 0's slot is killed. Ranking keeps
answering with no error, the replica is promoted, logging resumes, and the consumer stores every
transition whose events the cluster kept exactly once (none twice). Prints a DRILL line."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis.crc import key_slot

from shared.events import FeedbackEvent, RankEvent, SessionEndEvent, decode
from shared.redis_client import make_client
from shared.sharding import shard_stream
from tests.test_e2e import DIRECTIONS, STATE_DIM, TASKS, _cli
from trainer.harness import RedisCluster, ScorerProcess, _redis_command, redis_cluster

STREAM = "drill:events"
SHARDS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path / "cluster") as c:
        yield c


def owner_of(cluster: RedisCluster, key: str) -> int:
    """The port of the master that serves ``key``'s slot now."""
    slot = key_slot(key.encode())
    for line in _redis_command(cluster.masters()[0].port, "CLUSTER", "NODES").splitlines():
        parts = line.split()
        if "master" in parts[2] and "fail" not in parts[2]:
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
    raise AssertionError(f"no master serves slot {slot}")


class Load(threading.Thread):
    """Sessions of 3 steps (rank, feedback; session_end at the last) until stopped."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.stop_flag = base, threading.Event()
        self.sent = self.failed = self.steps = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        rng = np.random.default_rng(7)
        with httpx.Client(base_url=self.base, timeout=5) as client:
            s = 0
            while not self.stop_flag.is_set():
                sid, uid = f"s{s}", f"user-{s % 50}"
                s += 1
                for t in range(3):
                    n = 20
                    body = {
                        "request_id": f"{sid}-{t}", "session_id": sid, "user_id": uid,
                        "user_state": rng.normal(size=STATE_DIM).tolist(),
                        "item_ids": [f"{sid}-i{j}" for j in range(n)],
                        "predictions": {k: rng.random(n).tolist() for k in TASKS}, "top_n": 4,
                    }  # fmt: skip
                    t0 = time.perf_counter()
                    self.sent += 1
                    try:
                        reply = client.post("/v1/rank", json=body)
                    except httpx.HTTPError:
                        self.failed += 1
                        continue
                    self.latencies.append(time.perf_counter() - t0)
                    if reply.status_code != 200:
                        self.failed += 1
                        continue
                    shown = [it["item_id"] for it in reply.json()["items"]]
                    fb = {
                        "request_id": f"{sid}-{t}", "session_id": sid, "user_id": uid,
                        "items": [{"item_id": i, "watch_time": 5.0} for i in shown],
                        "session_end": t == 2,
                    }  # fmt: skip
                    self.sent += 1
                    if client.post("/v1/feedback", json=fb).status_code != 202:
                        self.failed += 1
                    else:
                        self.steps += 1


def expected_transitions(events: list[object]) -> set[str]:
    """Request ids of steps the streams can make a transition of: the rank and its feedback are
    there, and the session goes on (a later rank) or ends (session_end)."""
    ranks: dict[str, list[tuple[float, str]]] = {}
    fed: set[str] = set()
    ended: set[str] = set()
    for e in events:
        if isinstance(e, RankEvent):
            ranks.setdefault(e.session_id, []).append((e.ts, e.request_id))
        elif isinstance(e, FeedbackEvent):
            fed.add(e.request_id)
        elif isinstance(e, SessionEndEvent):
            ended.add(e.session_id)
    out = set()
    for sid, steps in ranks.items():
        steps = sorted(set(steps))
        for i, (_, rid) in enumerate(steps):
            if rid in fed and (i + 1 < len(steps) or sid in ended):
                out.add(rid)
    return out


def test_master_failover_under_load(cluster: RedisCluster, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    _cli(
        "xmtf-train", "init", "--model-dir", str(model_dir), "--state-dim", str(STATE_DIM),
        "--tasks", ",".join(TASKS), "--directions", ",".join(map(str, DIRECTIONS)),
    )  # fmt: skip
    env = {
        "XMTF_REDIS_CLUSTER": "true", "XMTF_EVENT_SHARDS": str(SHARDS),
        "XMTF_EVENTS_STREAM": STREAM, "XMTF_REDIS_BACKOFF_MAX_S": "0.5",
    }  # fmt: skip
    keys = [shard_stream(STREAM, s, SHARDS) for s in range(SHARDS)]
    victim_port = owner_of(cluster, keys[0])
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    scorer = ScorerProcess(model_dir, cluster.url, env=env, logfile=tmp_path / "scorer.log")
    scorer.start()
    load = Load(scorer.base)
    try:
        load.start()
        time.sleep(3)
        killed = time.monotonic()
        cluster.kill(victim)
        paused = resumed = None
        with httpx.Client(base_url=scorer.base, timeout=5) as probe:
            while time.monotonic() - killed < 20 and resumed is None:
                state = probe.get("/readyz").json()["event_log"]
                if not state["connected"] and paused is None:
                    paused = time.monotonic()
                if paused is not None and state["connected"]:
                    resumed = time.monotonic()
                time.sleep(0.05)
            cluster.wait_ok(20)
            promoted = owner_of(cluster, keys[0])
            time.sleep(3)  # load after the failover
            load.stop_flag.set()
            load.join(10)
            deadline = time.monotonic() + 15
            while (
                probe.get("/readyz").json()["event_log"]["buffered"] and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            ev = probe.get("/readyz").json()["event_log"]
    finally:
        load.stop_flag.set()
        scorer.stop()
    assert load.failed == 0 and load.sent > 100
    assert promoted != victim_port and resumed is not None
    assert ev["buffered"] == 0 and ev["dropped"] == 0

    r = make_client(cluster.url, cluster=True)
    events = [decode(f) for k in keys for _, f in r.xrange(k)]
    in_streams = len(events)
    want = expected_transitions(events)
    args = ["--model-dir", str(model_dir), "--redis-url", cluster.url, "--redis-cluster"]
    args += ["--event-shards", str(SHARDS), "--events-stream", STREAM, "--until-idle"]
    args += ["--updates-per-transition", "0.1", "--min-replay", "16"]
    stats = _cli("xmtf-train", "consume", *args)
    stored = sum(r.xlen(f"{k}:transitions") for k in keys)
    trained = sum(r.zcard(f"{k}:trained") for k in keys)
    ids = [decode_id(f) for k in keys for _, f in r.xrange(f"{k}:transitions")]
    assert stored == trained == len(set(ids)) == stats["transitions"]  # none twice
    assert set(ids) == want  # every transition the cluster kept, once
    lost = 2 * load.steps + load.steps // 3 - in_streams  # events sent minus events kept
    print(
        f"\nDRILL cluster failover: requests sent {load.sent}, failed {load.failed}, rank p99 "
        f"{1000 * float(np.percentile(load.latencies, 99)):.1f} ms; logging paused "
        f"{(resumed or 0) - (paused or 0):.2f} s (replica promoted); events logged "
        f"{ev['logged']}, dropped {ev['dropped']}, redis errors {ev['redis_errors']}, in streams "
        f"{in_streams} (lost to async replication or duplicated: {lost:+d}); transitions "
        f"stored {stored} = expected {len(want)}, none twice; acknowledged steps {load.steps}"
    )


def decode_id(fields: dict[bytes, bytes]) -> str:
    from trainer.stream.codec import decode_transition

    return decode_transition(fields).request_id
