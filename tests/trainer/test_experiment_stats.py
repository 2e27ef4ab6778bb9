"""Experiment statistics (trainer/experiment/stats.py, report.py) on small, known data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from shared.events import FeedbackEvent, FeedbackItemEvent, RankEvent, SessionEndEvent
from tests.helpers import two_arm_experiment
from tests.trainer.real_data import REAL_DIR, needs_real
from trainer.experiment.report import analyse, markdown
from trainer.experiment.sessions import collect
from trainer.experiment.stats import (
    Z95,
    cs_radius,
    guard_look,
    ratio,
    relative_difference,
    users_per_arm,
)


def test_ratio_is_sum_over_sum_with_a_delta_method_error() -> None:
    rng = np.random.default_rng(0)
    sessions = rng.integers(1, 4, 4000).astype(float)
    watch = sessions * 10 + rng.normal(0, 3, 4000)
    r = ratio(watch, sessions)
    assert r.mean == watch.sum() / sessions.sum()
    # the spread of the estimate over resamples of users matches the delta-method error
    boots = [
        (lambda i: watch[i].sum() / sessions[i].sum())(rng.integers(0, 4000, 4000))
        for _ in range(300)
    ]
    assert 0.8 < np.std(boots) / r.se < 1.25


def test_relative_difference_and_the_sequence_are_wider_than_the_fixed_interval() -> None:
    rng = np.random.default_rng(1)
    c = ratio(rng.exponential(10, 3000), np.ones(3000))
    t = ratio(rng.exponential(10, 3000) * 0.8, np.ones(3000))
    d = relative_difference(t, c)
    assert -0.27 < d.relative < -0.13
    assert cs_radius(d.se) > Z95 * d.se
    assert guard_look(d, (3000, 3000), 0.02, 500).decision == "rolled_back"
    assert guard_look(d, (100, 3000), 0.02, 500).decision == "wait"
    same = relative_difference(c, c)
    assert same.relative == 0 and guard_look(same, (3000, 3000), 0.0, 0).decision == "none"
    n = users_per_arm(c, 0.03)
    assert n is not None and 10_000 < n < 25_000  # exponential: CV 1 -> 2 * 7.85 / 0.0009
    assert math.isinf(cs_radius(0.0))


def _rank(rid: str, sid: str, user: str, arm: str, ts: float) -> RankEvent:
    z = np.zeros(1, np.float32)
    return RankEvent(
        rid, sid, user, ts, "v1", ("click",), z, z, z, 0.0, 1, 1.0, ("a",),
        np.zeros((1, 1), np.float32), ("a",), experiment="e", arm=arm,
    )  # fmt: skip


def test_report_attributes_sessions_to_arms_at_user_level() -> None:
    exp = two_arm_experiment()
    events: list[object] = []
    for i in range(40):
        arm = "control" if i % 2 else "treatment"
        sid, user = f"s{i}", f"u{i // 4}-{arm}"  # two sessions per user
        for step in range(2):
            rid = f"{sid}-{step}"
            events.append(_rank(rid, sid, user, arm, float(i)))
            watch = 10.0 if arm == "control" else 5.0 + (i % 3)
            item = FeedbackItemEvent("a", watch, {"click": int(step == 0)})
            events.append(FeedbackEvent(rid, sid, user, float(i), (item,), step == 1))
        events.append(SessionEndEvent(f"{sid}-1", sid, user, float(i)))
    events.append(_rank("x", "open", "u-x", "control", 99.0))  # not ended: not counted
    events.append(_rank("y", "fb", "u-y", "default", 10.0))  # refused arm's fallback
    events.append(SessionEndEvent("y", "fb", "u-y", 10.0))
    log = collect(events, "e")
    report = analyse(exp, log.arms, log.fallback)
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["control"]["sessions"] == 20 and arms["control"]["users"] == 10
    assert arms["control"]["watch_time_per_session"]["mean"] == 20.0
    assert arms["control"]["session_length"]["mean"] == 2.0
    assert arms["control"]["positive_rates"] == {"click": 0.5}
    assert arms["treatment"]["vs_control"]["relative"] < -0.2
    assert "vs_control" not in arms["control"]
    assert report["fallback_sessions"] == 1
    assert "| treatment |" in markdown(report)


def test_stats_check_small_run() -> None:
    from trainer.experiment.stats_check import run

    r = run(trials=40, sessions=1200)
    assert r["aa"]["false_positive_rate"] <= 0.15
    assert r["aa"]["false_rollbacks_margin_0"] <= 0.1
    assert r["bad_arm"]["rolled_back_share"] == 1.0


def test_publish_canary_keeps_current_and_starts_an_experiment(tmp_path: Path) -> None:
    from shared.experiment import read_experiment
    from shared.manifest import read_current, write_current
    from trainer.cli_args import canary_share
    from trainer.experiment.commands import ExperimentCommandError, publish_canary

    write_current(tmp_path, "v1")
    out = publish_canary(tmp_path, "v2", 0.1)
    assert out["control"] == "v1" and read_current(tmp_path) == "v1"
    exp = read_experiment(tmp_path)
    assert exp is not None and exp.name == "canary-v2"
    assert [(a.name, a.version, a.share) for a in exp.arms] == [
        ("control", "v1", 0.9),
        ("canary", "v2", 0.1),
    ]
    publish_canary(tmp_path, "v3", 0.2)  # the next version replaces it, same salt
    again = read_experiment(tmp_path)
    assert again is not None and again.arm("canary").version == "v3" and again.salt == exp.salt
    with pytest.raises(ExperimentCommandError):
        publish_canary(tmp_path, "v4", 1.0)
    assert canary_share("current") is None and canary_share("canary:0.25") == 0.25


def test_users_per_arm_closed_form_and_the_reports_test_at_that_size() -> None:
    from trainer.experiment.stats import Z80, Ratio

    # per-user relative spread cv = 1 (se / mean = 1 / sqrt(users)):
    # n = 2 * 1 * 1.03^2 * (1.95996 + 0.84162)^2 / 0.03^2 = 18504.1 -> 18505
    control = Ratio(mean=10.0, se=10.0 / math.sqrt(10_000), users=10_000)
    n = users_per_arm(control, 0.03)
    assert n == 18505
    assert users_per_arm(control, 0.10) == math.ceil(2 * 1.1**2 * (Z95 + Z80) ** 2 / 0.01)
    # at n users per arm, the report's own test (relative_difference's delta-method se, under
    # the alternative where the treatment's mean is 1.03 times control's and its spread scales
    # with it) sees the +3 % exactly (z_0.975 + z_0.8) standard errors away from 0: 80 % power
    c = Ratio(10.0, 10.0 / math.sqrt(n), n)
    t = Ratio(10.3, 10.3 / math.sqrt(n), n)
    d = relative_difference(t, c)
    assert d.relative / d.se == pytest.approx(Z95 + Z80, abs=2e-4)


@needs_real
def test_cuped_check_on_real_population_users() -> None:
    from trainer.experiment.stats_check import _cuped_rows, cuped_aa

    assert REAL_DIR is not None
    c = cuped_aa(str(REAL_DIR), sessions=4000, trials=20)
    assert 0 < c["users_with_pre_period"] < c["users"]
    assert 0.0 < c["variance_reduction"] < 1.0
    assert c["spread_ratio"] < 1.0  # the adjusted A/A differences spread less
    assert len(_cuped_rows(c)) == 3 and "not measured" in _cuped_rows(None)[0]
