"""CUPED (trainer/experiment/cuped.py) on synthetic users with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import two_arm_experiment
from trainer.experiment.cuped import ArmInput, covariate, cuped
from trainer.experiment.report import analyse, markdown
from trainer.experiment.sessions import ArmData
from trainer.experiment.stats import Z95, ratio, relative_difference

MEAN, SD = 100.0, 30.0


def _users(
    rng: np.random.Generator, n: int, rho: float, lift: float = 0.0, sessions: bool = False
) -> ArmInput:
    """``n`` users whose per-session watch time has correlation ``rho`` with their pre-period
    watch time per session ``x`` (both mean 100, sd 30); the treatment scales it by 1 + lift.
    With ``sessions``, 1-3 sessions per user, each around the user's own level."""
    z = rng.standard_normal(n)
    x = MEAN + SD * z
    level = MEAN + SD * (rho * z + math.sqrt(1 - rho**2) * rng.standard_normal(n))
    if not sessions:
        return ArmInput(level * (1 + lift), np.ones(n), x)
    den = rng.integers(1, 4, n).astype(np.float64)
    num = level * den + rng.normal(0.0, 10.0, n) * np.sqrt(den)
    return ArmInput(num * (1 + lift), den, x)


def test_variance_shrinks_by_rho_squared() -> None:
    rng = np.random.default_rng(0)
    for rho in (0.3, 0.6, 0.9):
        arms = {"control": _users(rng, 20_000, rho), "treatment": _users(rng, 20_000, rho)}
        got = cuped(arms)
        assert got is not None
        assert got.pooled_variance_reduction == pytest.approx(rho**2, abs=0.02)
        for name in arms:
            assert got.variance_reduction[name] == pytest.approx(rho**2, abs=0.03)
            plain = ratio(arms[name].num, arms[name].den)
            assert got.adjusted[name].se == pytest.approx(plain.se * math.sqrt(1 - rho**2), 0.05)
        # y = 100 + 30 (rho z + ...), x = 100 + 30 z: the regression slope is rho
        assert got.theta == pytest.approx(rho, abs=0.02)


def test_users_without_a_pre_period_get_the_pooled_mean() -> None:
    rng = np.random.default_rng(1)
    arms = {"control": _users(rng, 20_000, 0.8), "treatment": _users(rng, 20_000, 0.8)}
    for a in arms.values():
        a.x[::2] = np.nan  # half the users have no sessions before the experiment
    got = cuped(arms)
    assert got is not None
    assert got.users_with_covariate == {"control": 10_000, "treatment": 10_000}
    assert got.x_mean == pytest.approx(MEAN, abs=1.0)
    # the filled-in half is not adjusted: the reduction is half of rho^2
    assert got.pooled_variance_reduction == pytest.approx(0.64 / 2, abs=0.03)
    none = {k: ArmInput(a.num, a.den, np.full(len(a.num), np.nan)) for k, a in arms.items()}
    assert cuped(none) is None


@pytest.mark.parametrize("sessions", [False, True])
def test_adjusted_difference_is_unbiased_with_a_smaller_honest_interval(sessions: bool) -> None:
    rng = np.random.default_rng(2)
    lift, rho, reps = 0.05, 0.7, 300
    raw, adj, adj_se, covered = [], [], [], 0
    for _ in range(reps):
        c = _users(rng, 2000, rho, sessions=sessions)
        t = _users(rng, 2000, rho, lift, sessions=sessions)
        got = cuped({"control": c, "treatment": t})
        assert got is not None
        d = relative_difference(got.adjusted["treatment"], got.adjusted["control"])
        raw.append(relative_difference(ratio(t.num, t.den), ratio(c.num, c.den)).relative)
        adj.append(d.relative)
        adj_se.append(d.se)
        covered += abs(d.relative - lift) <= Z95 * d.se
    raw_a, adj_a = np.array(raw), np.array(adj)
    # unbiased: the mean over replications is the true lift within its standard error
    assert abs(adj_a.mean() - lift) < 4 * adj_a.std() / math.sqrt(reps)
    assert abs(raw_a.mean() - lift) < 4 * raw_a.std() / math.sqrt(reps)
    # the spread shrinks (by sqrt(1 - rho^2) = 0.71 with one session per user), and the
    # delta-method standard error describes it: the 95 % interval covers the truth
    assert adj_a.std() < 0.85 * raw_a.std()
    if not sessions:
        assert adj_a.std() / raw_a.std() == pytest.approx(math.sqrt(1 - rho**2), rel=0.12)
    assert np.mean(adj_se) == pytest.approx(adj_a.std(), rel=0.15)
    assert covered / reps > 0.9


def test_covariate_is_watch_per_session_before() -> None:
    x = covariate(np.array([10.0, 0.0, 9.0]), np.array([2.0, 0.0, 3.0]))
    assert x[0] == 5.0 and math.isnan(x[1]) and x[2] == 3.0


def test_report_with_cuped() -> None:
    rng = np.random.default_rng(3)
    exp = two_arm_experiment()
    data = {}
    for name, lift in (("control", 0.0), ("treatment", 0.04)):
        a = _users(rng, 5000, 0.8, lift, sessions=True)
        pre_sessions = rng.integers(0, 3, 5000).astype(np.float64)  # some have none
        data[name] = ArmData(
            a.num, a.den, a.den * 3, pre_watch=a.x * pre_sessions, pre_sessions=pre_sessions
        )
    plain = analyse(exp, data)
    assert "cuped" not in plain and "vs_control_cuped" not in plain["arms"][1]
    report = analyse(exp, data, with_cuped=True, cutoff=123.0)
    c = report["cuped"]
    assert c["available"] and c["pre_period_end"] == 123.0 and c["users"] == 10_000
    with_pre = sum(int((d.pre_sessions > 0).sum()) for d in data.values())
    assert c["users_with_pre_period"] == with_pre
    treatment = report["arms"][1]
    vs, vs_plain = treatment["vs_control_cuped"], treatment["vs_control"]
    assert vs["se"] < vs_plain["se"]
    assert vs["variance_reduction"] == pytest.approx(1 - (vs["se"] / vs_plain["se"]) ** 2)
    assert 0.2 < c["variance_reduction"] < 0.7
    assert vs["ci95"][0] < 0.04 < vs["ci95"][1]
    text = markdown(report)
    assert "CUPED" in text and "| treatment |" in text.split("CUPED")[1]
