"""`xmtf-train headroom`: the family's personalisation headroom without any learner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer import cli
from trainer.sim import SimConfig, UserSimulator, evaluate
from trainer.study.headroom import HeadroomConfig, _features, fit_world, personalised_score_fn


def test_quick_headroom_writes_both_files(tmp_path: Path) -> None:
    assert cli.main(["headroom", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "headroom.json").read_text())
    assert [r["dose"] for r in report["doses"]] == [0.0, 1.0]
    for row in report["doses"]:
        for key in ("headroom", "observable"):
            lo, hi = row[key]["ci95"]
            assert lo <= row[key]["mean"] <= hi
        assert set(row["policies"]) == {"global", "segment", "oracle"}
    md = (tmp_path / "headroom.md").read_text()
    assert "| 0 |" in md and "| 1 |" in md and "Quick mode" in md
    assert cli.main(["headroom", "--quick", "--doses", "-1", "--out", str(tmp_path)]) == 2


def test_personal_policies_start_from_the_global_solution() -> None:
    fits = fit_world(HeadroomConfig.quick_config(), dose=1.0, seed=0)
    assert [f.policy for f in fits] == ["global", "segment", "oracle"]
    assert fits[1].requests > fits[0].requests  # the warm start's requests are counted


def test_oracle_sees_the_active_users_hidden_tastes() -> None:
    """With A = identity-like weights on the tastes, the oracle's scores depend on z: two
    evaluations that differ only in A differ; A = 0 is the global policy exactly."""
    sim = UserSimulator(SimConfig(n_candidates=20, max_steps=8, n_items=500, heterogeneity=1.0))
    tasks = sim.task_specs()
    k = len(tasks)
    glob = personalised_score_fn(np.ones(k), tasks, None, -3, 3)
    zero = personalised_score_fn(np.r_[np.ones(k), np.zeros(2 * k)], tasks,
                                 _features("oracle", sim), -3, 3)  # fmt: skip
    a = evaluate(sim, glob, 64, 5).returns
    b = evaluate(sim, zero, 64, 5).returns
    np.testing.assert_array_equal(a, b)
    coef = np.zeros((k, 2))
    coef[0, 0], coef[1, 0] = 3.0, -3.0  # clicks up and long views down for z_0 > 0 users
    strong = personalised_score_fn(np.r_[np.ones(k), coef.ravel()], tasks,
                                   _features("oracle", sim), -3, 3)  # fmt: skip
    assert not np.array_equal(evaluate(sim, strong, 64, 5).returns, a)
