"""``experiment report`` and ``guard`` through a real Redis: sharded event streams read in full
(the same numbers as one stream), and ``report --cuped`` end to end against the known answer.

The session log is written the way the scorers write it (``shared.events.encode``, one XADD
per event; with shards, to ``<stream>:{shard_of(user_id)}``): users with a persistent level of
watch time, some of them with sessions before the experiment (untagged rank events), then
sessions of the experiment tagged with its arm.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from shared.events import FeedbackEvent, FeedbackItemEvent, RankEvent, SessionEndEvent, encode
from shared.experiment import Experiment, read_experiment, write_experiment
from shared.sharding import shard_of, shard_stream
from tests.conftest import RedisServer
from tests.helpers import two_arm_experiment
from trainer.cli import main as train_main
from trainer.experiment.cuped import ArmInput, covariate, cuped
from trainer.experiment.sessions import collect
from trainer.experiment.stats import relative_difference

T0 = 1_800_000_000.0  # the experiment's started_at
USERS = 400


def _rank(rid: str, sid: str, user: str, ts: float, arm: str | None) -> RankEvent:
    z = np.zeros(1, np.float32)
    return RankEvent(
        rid, sid, user, ts, "v1", ("click",), z, z, z, 0.0, 1, 1.0, ("a",),
        np.zeros((1, 1), np.float32), ("a",),
        experiment="exp" if arm else None, arm=arm,
    )  # fmt: skip


@dataclass
class Log:
    """The events written, and the per-user truth they were made from."""

    events: list[Any] = field(default_factory=list)
    watch: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # arm -> user -> [w, s]
    pre: dict[str, list[float]] = field(default_factory=dict)  # user -> [watch, sessions]

    def session(self, user: str, sid: str, ts: float, arm: str | None, watch: list[float]) -> None:
        for step, w in enumerate(watch):
            rid = f"{sid}-{step}"
            self.events.append(_rank(rid, sid, user, ts + step, arm))
            item = FeedbackItemEvent("a", w, {"click": int(w > 100)})
            last = step == len(watch) - 1
            self.events.append(FeedbackEvent(rid, sid, user, ts + step + 0.5, (item,), last))
            if last:
                self.events.append(SessionEndEvent(rid, sid, user, ts + step + 0.5))


def make_log(exp: Experiment, lift: float = -0.1, seed: int = 0) -> Log:
    rng = np.random.default_rng(seed)
    log = Log()
    for i in range(USERS):
        user = f"user-{i}"
        level = float(rng.lognormal(4.5, 0.6))  # the user's own level of watch time per step
        if i % 4:  # three users in four have sessions before the experiment
            for k in range(1 + i % 2):
                watch = (level * rng.lognormal(0, 0.3, 3)).tolist()
                log.session(user, f"{user}-pre{k}", T0 - 5000 + 10 * i + k, None, watch)
                tot = log.pre.setdefault(user, [0.0, 0.0])
                tot[0] += sum(watch)
                tot[1] += 1
        if i % 7 == 0:  # served outside the experiment after it started: not pre-period
            log.session(user, f"{user}-late", T0 + 1, None, [1e6])
        arm = exp.assign(user).name
        factor = 1 + lift if arm == "treatment" else 1.0
        for k in range(1 + i % 3):
            watch = (factor * level * rng.lognormal(0, 0.3, 2)).tolist()
            log.session(user, f"{user}-exp{k}", T0 + 100 + 10 * i + k, arm, watch)
            tot = log.watch.setdefault(arm, {}).setdefault(user, [0.0, 0.0])
            tot[0] += sum(watch)
            tot[1] += 1
    return log


def write(client: Any, stream: str, events: list[Any], shards: int = 1) -> None:
    pipe = client.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(shard_stream(stream, shard_of(ev.user_id, shards), shards), encode(ev))
    pipe.execute()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    assert train_main(list(argv)) == 0
    return dict(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))


def _same(a: Any, b: Any) -> None:
    """Equal up to the order of floating-point sums."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12) or (math.isnan(a) and math.isnan(b))
    else:
        assert a == b


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, Experiment]:
    exp = two_arm_experiment("exp", started_at=T0, guardrail={"max_drop": 0.0, "min_sessions": 50})
    write_experiment(tmp_path, exp)
    return tmp_path, exp


def test_report_and_guard_read_every_shard(
    experiment: tuple[Path, Experiment],
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, exp = experiment
    log = make_log(exp, lift=-0.3)
    client = redis.Redis.from_url(redis_server.url)
    write(client, "one", log.events)
    write(client, "sharded", log.events, shards=3)
    assert all(client.xlen(f"sharded:{{{i}}}") > 0 for i in range(3))
    base = ["--model-dir", str(model_dir), "--redis-url", redis_server.url]
    one = _cli(capsys, "experiment", "report", *base, "--events-stream", "one", "--json")
    sharded_args = [*base, "--events-stream", "sharded", "--event-shards", "3"]
    three = _cli(capsys, "experiment", "report", *sharded_args, "--json", "--cuped")
    assert one["event_streams"] == {
        "shards": 1,
        "streams_read": 1,
        "events": {"one": len(log.events)},
    }
    ev = three.pop("event_streams")
    assert ev["shards"] == 3 and ev["streams_read"] == 3
    assert sum(ev["events"].values()) == len(log.events) and min(ev["events"].values()) > 0
    one_cuped = _cli(capsys, "experiment", "report", *base, "--events-stream", "one", "--cuped")
    one_cuped.pop("event_streams")
    _same(three, one_cuped)
    arms = {a["name"]: a for a in three["arms"]}
    assert sum(a["users"] for a in arms.values()) == USERS
    assert arms["treatment"]["vs_control"]["relative"] == pytest.approx(-0.3, abs=0.1)

    # the guard reads every shard too, says so, and decides as on one stream
    guard_one = _cli(capsys, "experiment", "guard", *base, "--events-stream", "one")
    write_experiment(model_dir, exp)  # undo its rollback
    guard_three = _cli(capsys, "experiment", "guard", *sharded_args)
    assert guard_three["event_streams"]["streams_read"] == 3
    assert guard_one["decision"] == guard_three["decision"] == "rolled_back"
    _same(guard_one["arms"], guard_three["arms"])
    after = read_experiment(model_dir)
    assert after is not None and after.arm("treatment").status == "rolled_back"
    assert after.started_at == T0  # kept by the rollback


def test_a_shard_count_that_misses_streams_is_refused(
    experiment: tuple[Path, Experiment],
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, exp = experiment
    client = redis.Redis.from_url(redis_server.url)
    write(client, "sharded", make_log(exp).events[:400], shards=3)
    base = ["experiment", "report", "--model-dir", str(model_dir)]
    base += ["--redis-url", redis_server.url, "--events-stream", "sharded", "--json"]
    for shards in ("1", "2"):
        capsys.readouterr()
        assert train_main([*base, "--event-shards", shards]) == 2
        assert "--event-shards" in capsys.readouterr().err
    assert _cli(capsys, *base, "--event-shards", "3")["event_streams"]["streams_read"] == 3


def test_report_cuped_through_redis_matches_the_known_answer(
    experiment: tuple[Path, Experiment],
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, exp = experiment
    log = make_log(exp, lift=0.05, seed=1)
    write(redis.Redis.from_url(redis_server.url), "events", log.events)
    common = ["--model-dir", str(model_dir), "--redis-url", redis_server.url]
    common += ["--events-stream", "events"]
    report = _cli(capsys, "experiment", "report", *common, "--json", "--cuped")
    c = report["cuped"]
    assert c["available"] and c["pre_period_end"] == T0
    in_exp = {u for users in log.watch.values() for u in users}
    assert c["users_with_pre_period"] == len(in_exp & set(log.pre)) == 300

    # the known answer: CUPED on the per-user totals the log was made from
    inputs = {}
    for arm, users in log.watch.items():
        names = list(users)
        tot = np.array([users[u] for u in names])
        pre = np.array([log.pre.get(u, [0.0, 0.0]) for u in names])
        inputs[arm] = ArmInput(tot[:, 0], tot[:, 1], covariate(pre[:, 0], pre[:, 1]))
    want = cuped(inputs)
    assert want is not None
    assert c["theta"] == pytest.approx(want.theta)
    assert c["variance_reduction"] == pytest.approx(want.pooled_variance_reduction)
    assert c["variance_reduction"] > 0.3  # the users' levels persist
    diff = relative_difference(want.adjusted["treatment"], want.adjusted["control"])
    treatment = next(a for a in report["arms"] if a["name"] == "treatment")
    assert treatment["vs_control_cuped"]["relative"] == pytest.approx(diff.relative)
    assert treatment["vs_control_cuped"]["ci95"] == pytest.approx(list(diff.ci95))
    assert treatment["vs_control_cuped"]["se"] < treatment["vs_control"]["se"]
    text = _cli(capsys, "experiment", "report", *common, "--cuped")  # Markdown first
    assert text["cuped"]["theta"] == pytest.approx(want.theta)


def test_pre_period_ends_at_the_first_event_of_the_experiment_without_started_at(
    experiment: tuple[Path, Experiment],
) -> None:
    _, exp = experiment
    log = make_log(exp)
    first = min(e.ts for e in log.events if isinstance(e, RankEvent) and e.arm)
    got = collect(log.events, "exp", pre_period=True)
    assert got.cutoff == first
    assert collect(log.events, "exp", pre_period=True, started_at=T0).cutoff == T0
    assert collect(log.events, "exp").cutoff is None
    # without started_at, requests served outside the experiment before its first request
    # count too: here the "late" sessions of 15 users who had none before
    users = sum(int((d.pre_sessions > 0).sum()) for d in got.arms.values())  # type: ignore[operator]
    assert users == 300 + 15
