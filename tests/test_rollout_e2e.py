"""Rolling out a model end to end (SPEC §13): a real ``xmtf-scorer`` subprocess, a real Redis.

Simulated users (a few requests each, each user with a level of watch time of their own) go
through ``/v1/rank`` and ``/v1/feedback``: once before the experiment (served by ``CURRENT``),
then in a 50/50 experiment of two versions. Both versions rank identically (the same graphs), so
to have a *bad* arm the users' watch time is halved whenever the treatment served them: the test
checks the plumbing (sticky assignment, shares, the arm in answers and events, ``report`` and
``report --cuped`` with the sessions before the experiment as covariate, ``guard``, the rewrite
of EXPERIMENT.json, the scorer moving the users to control). Whether the statistics hold up on
the simulator is ``trainer.experiment.stats_check``'s job.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from shared.experiment import read_experiment
from shared.manifest import write_current
from tests.conftest import RedisServer
from tests.helpers import publish, wait_until
from trainer.cli import main as train_main
from trainer.harness import ScorerProcess, running_scorer

STREAM = "xmtf:e2e-rollout"
TASKS = ("click", "like", "skip")
USERS, STEPS, N = 160, 3, 10


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert train_main(list(argv)) == 0
    return dict(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))


def _drive(
    base: str, users: list[str], seed: int, levels: dict[str, float]
) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    replies: dict[str, list[dict]] = {}
    with httpx.Client(base_url=base, timeout=10) as client:
        for u in users:
            for step in range(STEPS):
                rid = f"{u}-{seed}-{step}"
                body = {
                    "request_id": rid,
                    "session_id": f"{u}-{seed}",
                    "user_id": u,
                    "user_state": rng.normal(size=5).tolist(),
                    "item_ids": [f"i{j}" for j in range(N)],
                    "predictions": {t: rng.random(N).tolist() for t in TASKS},
                    "top_n": 3,
                }
                r = client.post("/v1/rank", json=body)
                r.raise_for_status()
                out = r.json()
                replies.setdefault(u, []).append(out)
                factor = levels[u] * (0.5 if out["arm"] == "treatment" else 1.0)  # bad arm
                items = [
                    {
                        "item_id": it["item_id"],
                        "watch_time": float(factor * rng.lognormal(2.0, 0.5)),
                        "signals": {"click": int(rng.random() < 0.3)},
                    }
                    for it in out["items"]
                ]
                fb = {k: body[k] for k in ("request_id", "session_id", "user_id")}
                fb |= {"items": items, "session_end": step == STEPS - 1}
                client.post("/v1/feedback", json=fb).raise_for_status()
    return replies


def test_experiment_rollout_end_to_end(
    model_dir: Path, redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(model_dir / "v0001", model_dir, "v0002", match_manifest=True)
    write_current(model_dir, "v0001")
    md = str(model_dir)
    scorer = ScorerProcess(
        model_dir,
        redis_server.url,
        env={
            "XMTF_EVENTS_STREAM": STREAM,
            "XMTF_POLL_INTERVAL_S": "0.2",
            "XMTF_EXPLORATION_SCALE": "0",
        },
        logfile=tmp_path / "scorer.log",
    )
    users = [f"user-{i}" for i in range(USERS)]
    levels = dict(zip(users, np.random.default_rng(0).lognormal(0.0, 0.3, USERS), strict=True))
    with running_scorer(scorer):
        before = _drive(scorer.base, users, seed=0, levels=levels)  # no experiment yet
        assert {o["arm"] for outs in before.values() for o in outs} == {"default"}
        started = _cli(
            capsys, "experiment", "start", "--model-dir", md, "--name", "e2e",
            "--arm", "control=v0001:0.5", "--arm", "treatment=v0002:0.5",
            "--max-drop", "0.02", "--min-sessions", "30",
        )  # fmt: skip
        assert started["started"] == "e2e"
        exp = read_experiment(model_dir)
        assert exp is not None and exp.started_at is not None
        wait_until(lambda: httpx.get(f"{scorer.base}/v1/experiment").json()["running"], timeout=10)
        replies = _drive(scorer.base, users, seed=1, levels=levels)
        # sticky, as the shared assignment says, with the arm's version
        for u, outs in replies.items():
            want = exp.assign(u)
            assert {o["arm"] for o in outs} == {want.name}
            assert {o["model_version"] for o in outs} == {want.version}
        treated = [u for u in users if replies[u][0]["arm"] == "treatment"]
        assert 0.35 < len(treated) / USERS < 0.65
        live = httpx.get(f"{scorer.base}/v1/experiment").json()
        assert sum(live["requests"].values()) == USERS * STEPS

        client = redis.Redis.from_url(redis_server.url)
        # rank + feedback per step, one session_end each; before and during the experiment
        expected = 2 * (USERS * STEPS * 2 + USERS)
        wait_until(lambda: client.xlen(STREAM) >= expected, timeout=20)
        common = ["--model-dir", md, "--redis-url", redis_server.url, "--events-stream", STREAM]
        report = _cli(capsys, "experiment", "report", *common)
        arms = {a["name"]: a for a in report["arms"]}
        assert arms["control"]["sessions"] + arms["treatment"]["sessions"] == USERS
        assert arms["treatment"]["users"] == len(treated)
        vs = arms["treatment"]["vs_control"]
        assert vs["ci95"][1] < 0  # clearly worse
        assert -0.6 < vs["relative"] < -0.4
        assert set(arms["control"]["watch_time_per_session"]) == {"mean", "ci95"}
        assert arms["control"]["positive_rates"]["click"] == pytest.approx(0.3, abs=0.05)
        assert report["event_streams"]["streams_read"] == 1

        # CUPED: every user had a session before the experiment, and their levels persist
        cuped = _cli(capsys, "experiment", "report", *common, "--cuped", "--json")
        assert cuped["cuped"]["users_with_pre_period"] == USERS
        assert cuped["cuped"]["pre_period_end"] == pytest.approx(exp.started_at)
        assert cuped["cuped"]["variance_reduction"] > 0.2
        adjusted = next(a for a in cuped["arms"] if a["name"] == "treatment")["vs_control_cuped"]
        assert -0.6 < adjusted["relative"] < -0.4
        assert adjusted["se"] < vs["se"]

        guard = _cli(capsys, "experiment", "guard", *common)
        assert guard["decision"] == "rolled_back" and guard["arms_rolled_back"] == ["treatment"]
        after = read_experiment(model_dir)
        assert after is not None
        assert after.arm("treatment").status == "rolled_back"
        assert after.arm("treatment").share == 0.0 and after.arm("control").share == 1.0

        # the scorer moves the treatment's users to control at its next poll
        def moved() -> bool:
            out = httpx.get(f"{scorer.base}/v1/experiment").json()
            return bool(out["config"]["arms"][1]["status"] == "rolled_back")

        wait_until(moved, timeout=10)
        again = _drive(scorer.base, treated[:20], seed=2, levels=levels)
        for outs in again.values():
            assert {(o["arm"], o["model_version"]) for o in outs} == {("control", "v0001")}
        # the guard has nothing left to do
        assert _cli(capsys, "experiment", "guard", *common)["decision"] == "none"
        stopped = _cli(capsys, "experiment", "stop", "--model-dir", md)
        assert stopped["stopped"] == "e2e"
        wait_until(
            lambda: httpx.get(f"{scorer.base}/v1/experiment").json()["running"] is False,
            timeout=10,
        )
