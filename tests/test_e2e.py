"""The loop of ``make demo`` in miniature, through the installed CLIs and real services:
xmtf-train init -> xmtf-scorer -> /v1/rank + /v1/feedback -> Redis Stream -> xmtf-train consume
-> new version published -> the running scorer swaps to it. Non-default state_dim and tasks
(including a direction -1 task) prove nothing is tied to the simulator's defaults.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import RedisServer
from trainer.harness import HarnessError, ScorerProcess

BIN = Path(sys.executable).parent
TASKS = ["watch", "like", "dislike"]
DIRECTIONS = [1, 1, -1]
STATE_DIM = 3
STREAM = "e2e:events"


def _cli(*args: str) -> dict:
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def scorer(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[str, Path]]:
    model_dir = tmp_path / "models"
    _cli(
        "xmtf-train",
        "init",
        "--model-dir",
        str(model_dir),
        "--state-dim",
        str(STATE_DIM),
        "--tasks",
        ",".join(TASKS),
        "--directions",
        ",".join(map(str, DIRECTIONS)),
    )
    scorer = ScorerProcess(
        model_dir,
        redis_server.url,
        env={"XMTF_POLL_INTERVAL_S": "0.2", "XMTF_EVENTS_STREAM": STREAM},
        log_level="warning",
    )
    try:
        scorer.start(timeout=30)
    except HarnessError as exc:
        scorer.stop()
        pytest.fail(f"scorer did not become ready: {exc}")
    try:
        yield scorer.base, model_dir
    finally:
        scorer.stop()


def _session(client: httpx.Client, rng: np.random.Generator, sid: str, steps: int) -> int:
    for t in range(steps):
        n = int(rng.integers(5, 40))
        ids = [f"{sid}-item{j}" for j in range(n)]
        body = {
            "request_id": f"{sid}-{t}",
            "session_id": sid,
            "user_id": f"user-{sid}",
            "user_state": rng.normal(size=STATE_DIM).tolist(),
            "item_ids": ids,
            "predictions": {k: rng.random(n).tolist() for k in TASKS},
            "top_n": 4,
        }
        reply = client.post("/v1/rank", json=body)
        assert reply.status_code == 200, reply.text
        shown = [it["item_id"] for it in reply.json()["items"]]
        items = [
            {
                "item_id": i,
                "watch_time": float(rng.uniform(0, 30)),
                "signals": {"like": int(rng.random() < 0.1)},
            }
            for i in shown
        ]
        fb = client.post(
            "/v1/feedback",
            json={
                "request_id": f"{sid}-{t}",
                "session_id": sid,
                "user_id": f"user-{sid}",
                "items": items,
                "session_end": t == steps - 1,
            },
        )
        assert fb.status_code == 202, fb.text
    return steps


def test_loop_end_to_end(scorer: tuple[str, Path], redis_server: RedisServer) -> None:
    base, model_dir = scorer
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=base, timeout=5) as client:
        v0 = client.get("/v1/model").json()
        assert v0["state_dim"] == STATE_DIM
        served = [(t["name"], t["direction"]) for t in v0["tasks"]]
        assert served == list(zip(TASKS, DIRECTIONS, strict=True))
        transitions = sum(
            _session(client, rng, f"s{i}", int(rng.integers(2, 6))) for i in range(25)
        )

        r = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 10
        while r.xlen(STREAM) < 2 * transitions + 25 and time.monotonic() < deadline:
            time.sleep(0.05)  # rank + feedback per step, session_end per session
        assert r.xlen(STREAM) == 2 * transitions + 25

        stats = _cli(
            "xmtf-train",
            "consume",
            "--model-dir",
            str(model_dir),
            "--redis-url",
            redis_server.url,
            "--events-stream",
            STREAM,
            "--until-idle",
            "--updates-per-transition",
            "1",
            "--min-replay",
            "16",
        )
        assert stats["transitions"] == transitions
        assert stats["dead_letters"] == 0 and len(stats["exports"]) == 1
        new_version = stats["exports"][0]
        assert (model_dir / "CURRENT").read_text().strip() == new_version

        deadline = time.monotonic() + 15
        while client.get("/v1/model").json()["version"] != new_version:
            assert time.monotonic() < deadline, "the scorer did not pick up the new version"
            time.sleep(0.1)
        _session(client, rng, "after", 2)
        assert client.get("/readyz").json()["model_version"] == new_version
        metrics = client.get("/metrics").text
        assert "xmtf_model_reloads_total 2" in metrics


def test_simulate_and_export_cli_smoke(tmp_path: Path) -> None:
    config = {
        "sim": {"n_candidates": 20, "max_steps": 8},
        "tsh": {"batch_size": 64, "inner_batch_size": 16, "hidden": 32},
        "train": {
            "n_users": 32,
            "total_steps": 6,
            "learning_starts": 64,
            "updates_per_step": 2,
            "eval_every": 0,
            "eval_sessions": 40,
            "replay_candidates": 16,
        },
    }
    cfg = tmp_path / "sim.json"
    cfg.write_text(json.dumps(config))
    out = _cli(
        "xmtf-train",
        "simulate",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "run"),
        "--publish-to",
        str(tmp_path / "models"),
        "--no-progress",
    )
    assert out["xmtf"]["n_sessions"] == 40 and out["version"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["updates"] > 0
    exported = _cli(
        "xmtf-train",
        "export",
        "--checkpoint",
        str(tmp_path / "run" / "checkpoint.safetensors"),
        "--model-dir",
        str(tmp_path / "models"),
    )
    assert (tmp_path / "models" / "CURRENT").read_text().strip() == exported["version"]


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    bad = [
        ["xmtf-train", "init", "--model-dir", str(tmp_path), "--state-dim", "-3"],
        ["xmtf-train", "init", "--model-dir", str(tmp_path), "--state-dim", "4", "--tasks", "a,a"],
        [
            "xmtf-train",
            "init",
            "--model-dir",
            str(tmp_path),
            "--state-dim",
            "4",
            "--tasks",
            "a,b",
            "--directions",
            "1",
        ],
        [
            "xmtf-train",
            "consume",
            "--model-dir",
            str(tmp_path),
            "--redis-url",
            "redis://127.0.0.1:1/0",
        ],
        ["xmtf-train", "simulate", "--config", str(tmp_path / "missing.json")],
        ["xmtf-scorer", "--model-dir", str(tmp_path / "missing")],
    ]
    for cmd in bad:
        done = subprocess.run(
            [str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0, cmd
        assert done.stderr.strip(), cmd
        assert "Traceback" not in done.stderr, done.stderr
