"""EXPERIMENT.json schema and the sticky arm assignment (shared/experiment.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shared.experiment import (
    Experiment,
    ExperimentError,
    bucket,
    parse_experiment,
    read_experiment,
    roll_back,
    write_experiment,
)

SPEC_EXAMPLE = b"""{"name": "fusion-v7", "salt": "s1", "status": "running",
 "arms": [{"name": "control", "version": "20261201-0001", "share": 0.5, "status": "active"},
          {"name": "treatment", "version": "20261202-0001", "share": 0.5, "status": "active"}],
 "shadow": {"version": "20261203-0001", "sample_rate": 0.1},
 "guardrail": {"metric": "watch_time_per_session", "max_drop": 0.02, "min_sessions": 500}}"""


def _exp(*shares: float, salt: str = "s1") -> Experiment:
    arms = [{"name": f"a{i}", "version": f"v{i}", "share": s} for i, s in enumerate(shares)]
    return Experiment.model_validate({"name": "e", "salt": salt, "arms": arms})


def test_spec_example_round_trips(tmp_path: Path) -> None:
    exp = parse_experiment(SPEC_EXAMPLE)
    assert exp.control.name == "control" and exp.shadow and exp.shadow.sample_rate == 0.1
    write_experiment(tmp_path, exp)
    assert read_experiment(tmp_path) == exp
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed away
    assert read_experiment(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "bad",
    [
        {"arms": [{"name": "a", "version": "v", "share": 0.6}]},  # shares sum != 1
        {
            "arms": [
                {"name": "a", "version": "v", "share": 1.0},
                {"name": "a", "version": "w", "share": 0.0},
            ]
        },
        {"arms": [{"name": "default", "version": "v", "share": 1.0}]},
        {"arms": [{"name": "a", "version": "v", "share": 1.0, "status": "rolled_back"}]},
        {"arms": [{"name": "a", "version": "v", "share": 1.0}], "extra": 1},
        {"arms": [{"name": "a", "version": "../v", "share": 1.0}]},
        {"arms": [{"name": "a", "version": "v", "share": "1.0"}]},  # strict: no strings
        {"arms": []},
    ],
)
def test_invalid_experiments_are_refused(bad: dict) -> None:
    import orjson

    with pytest.raises(ExperimentError):
        parse_experiment(orjson.dumps({"name": "e", "salt": "s", **bad}))


def test_assignment_is_sticky_and_depends_on_the_salt() -> None:
    exp = _exp(0.5, 0.5)
    users = [f"user-{i}" for i in range(2000)]
    first = [exp.assign(u).name for u in users]
    assert first == [exp.assign(u).name for u in users]
    # a hash of the bytes, not Python's per-process hash(): a fixed value
    assert bucket("s1", "user-1") == bucket("s1", "user-1")
    assert 0.0 <= bucket("s1", "user-1") < 1.0
    other = [_exp(0.5, 0.5, salt="s2").assign(u).name for u in users]
    assert 0.4 < sum(a != b for a, b in zip(first, other, strict=True)) / len(users) < 0.6


def test_shares_within_sampling_error() -> None:
    shares = (0.7, 0.2, 0.1)
    exp = _exp(*shares)
    n = 100_000
    counts = Counter(exp.assign(f"u{i}").name for i in range(n))
    for i, share in enumerate(shares):
        sd = (share * (1 - share) / n) ** 0.5
        assert abs(counts[f"a{i}"] / n - share) < 4 * sd, counts


def test_rolled_back_arm_gets_nobody_and_its_users_go_to_control() -> None:
    exp = _exp(0.5, 0.5)
    users = [f"u{i}" for i in range(5000)]
    before = {u: exp.assign(u).name for u in users}
    after = roll_back(exp, "a1")
    assert after.arm("a1").status == "rolled_back" and after.arm("a1").share == 0.0
    assert after.arm("a0").share == 1.0
    assert all(after.assign(u).name == "a0" for u in users)
    assert sum(v == "a1" for v in before.values()) > 2000
    with pytest.raises(ExperimentError):
        roll_back(after, "a0")


def test_roll_back_keeps_the_arms_before_it_in_place() -> None:
    exp = _exp(0.5, 0.25, 0.25)  # a0 is control (first arm)
    users = [f"u{i}" for i in range(5000)]
    after = roll_back(exp, "a1")
    for u in users:
        was = exp.assign(u).name
        now = after.assign(u).name
        assert now != "a1"
        if was in ("a0", "a1"):
            assert now == "a0"
