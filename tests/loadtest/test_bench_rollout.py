"""``make bench``'s rollout lines (loadtest/bench_rollout.py): the bootstrap of the ratios, and
a ``--quick`` run end to end (models built, a real redis-server and xmtf-scorer, every
configuration switched in and measured) into a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench_rollout import CONFIGS, bootstrap_ratios, main, verdict


def test_bootstrap_ratio_intervals_cover_the_true_ratio() -> None:
    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.2, (10, 400))
    same = bootstrap_ratios(rng.lognormal(0.0, 0.2, (10, 400)), base, reps=200)
    slower = bootstrap_ratios(1.2 * rng.lognormal(0.0, 0.2, (10, 400)), base, reps=200)
    for q in ("p50", "p99"):
        assert same[q][0] < 1.0 < same[q][1]
        assert slower[q][0] < 1.2 < slower[q][1] and slower[q][0] > 1.05
    # a drift shared by both in a round cancels: the pairing keeps the same rounds
    drift = np.linspace(1.0, 2.0, 10)[:, None]
    paired = bootstrap_ratios(drift * rng.lognormal(0.0, 0.2, (10, 400)), drift * base, 200)
    assert paired["p50"][1] - paired["p50"][0] < 0.1


def test_verdicts() -> None:
    assert verdict(0.95, 1.02, 1.08, 1.10) == "met"
    assert verdict(0.95, 1.02, 1.30, 1.10) == "not shown"
    assert verdict(1.05, 1.20, 1.30, 1.10) == "not met"


def test_quick_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench-rollout.json").read_text())
    md = (tmp_path / "bench-rollout.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    rows = {r["key"]: r for r in res["rows"]}
    assert list(rows) == [c.key for c in CONFIGS]
    for key, r in rows.items():
        assert r["n"] == 300 and r["errors"] == 0 and r["p50_ms"] > 0
        if key != "none":
            for q in ("p50", "p99"):
                lo, hi = r["ratio"][q]["ci95"]
                assert 0 < lo < hi and r["ratio"][q]["value"] > 0
    counted = res["counters"]
    assert set(counted["two_arm_requests"]) == {"control", "treatment"}
    assert counted["shadow_scored"] > 0 and counted["shadow_errors"] == 0
    assert [b["verdict"] in ("met", "not met", "not shown") for b in res["bars"]] == [True] * 2
    assert "load average at start" in md and "10 % shadow: p99 within 10 %" in md
    assert res["meta"]["loadavg_start"]
