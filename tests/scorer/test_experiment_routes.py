"""Experiment arms, shadow scoring and explanations in the scorer (SPEC §13), in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shared.experiment import Experiment, bucket, write_experiment
from shared.manifest import write_current
from tests.helpers import metric, publish, wait_until
from tests.scorer.conftest import MakeClient
from tests.scorer.test_app import rank_body


def _second_version(model_dir: Path) -> None:
    """v0002: v0001's graphs under another version name (CURRENT stays v0001)."""
    publish(model_dir / "v0001", model_dir, "v0002", match_manifest=True)
    write_current(model_dir, "v0001")


def _experiment(**kw: object) -> Experiment:
    data = {
        "name": "exp-1",
        "salt": "s1",
        "arms": [
            {"name": "control", "version": "v0001", "share": 0.5},
            {"name": "treatment", "version": "v0002", "share": 0.5},
        ],
        **kw,
    }
    return Experiment.model_validate(data)


def _arm(client: TestClient, user: str, **kw: object) -> dict:
    resp = client.post("/v1/rank", json=rank_body(8, user_id=user, **kw))
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_without_experiment_everything_is_default(client_plain: TestClient) -> None:
    assert _arm(client_plain, "u-1")["arm"] == "default"
    assert client_plain.get("/v1/experiment").json()["running"] is False


@pytest.fixture
def client_plain(make_client: MakeClient) -> TestClient:
    return make_client()


def test_arms_are_sticky_and_name_their_version(make_client: MakeClient, model_dir: Path) -> None:
    _second_version(model_dir)
    exp = _experiment()
    write_experiment(model_dir, exp)
    client = make_client()
    users = [f"user-{i}" for i in range(60)]
    seen = {u: _arm(client, u) for u in users}
    for u, out in seen.items():
        want = exp.assign(u)
        assert out["arm"] == want.name and out["model_version"] == want.version
        assert _arm(client, u)["arm"] == want.name  # sticky
    assert {o["arm"] for o in seen.values()} == {"control", "treatment"}
    live = client.get("/v1/experiment").json()
    assert live["running"] and live["config"]["name"] == "exp-1"
    assert sum(live["requests"].values()) == 120
    text = client.get("/metrics").text
    assert 'xmtf_experiment_requests_total{experiment="exp-1",arm="control"' in text
    # stopping the experiment (status stopped) sends everybody back to CURRENT / default
    write_experiment(model_dir, exp.model_copy(update={"status": "stopped"}))
    wait_until(lambda: _arm(client, users[0])["arm"] == "default", timeout=10)


def test_refused_arm_falls_back_to_current(make_client: MakeClient, model_dir: Path) -> None:
    exp = _experiment().model_copy(deep=True)
    data = exp.model_dump()
    data["arms"][1]["version"] = "v0404"  # not in the model dir
    write_experiment(model_dir, Experiment.model_validate(data))
    client = make_client()
    users = [f"user-{i}" for i in range(40)]
    arms = {_arm(client, u)["arm"] for u in users if bucket("s1", u) >= 0.5}
    assert arms == {"default"}
    ready = client.get("/readyz").json()
    assert "treatment" in ready["experiment"]["refused"]
    text = client.get("/metrics").text
    assert 'xmtf_experiment_arm_refused{arm="treatment"} 1' in text
    assert metric(text, "xmtf_experiment_refusals_total") >= 1


def test_shadow_agrees_with_itself_and_leaves_the_answer(
    make_client: MakeClient, model_dir: Path
) -> None:
    _second_version(model_dir)
    exp = _experiment(
        arms=[{"name": "control", "version": "v0001", "share": 1.0}],
        shadow={"version": "v0002", "sample_rate": 1.0},
    )
    write_experiment(model_dir, exp)
    client = make_client()
    for i in range(5):
        out = _arm(client, f"user-{i}", top_n=5)
        assert out["model_version"] == "v0001"
    text = wait_until(
        lambda: (
            (t := client.get("/metrics").text) and metric(t, "xmtf_shadow_scored_total") >= 5 and t
        )
    )
    # same graphs: the shadow ranks exactly as the served version
    assert metric(text, "xmtf_shadow_topn_overlap_mean") == pytest.approx(1.0)
    assert metric(text, "xmtf_shadow_kendall_tau_mean") == pytest.approx(1.0)


def test_explain_contributions_sum_to_the_score(client_plain: TestClient) -> None:
    out = _arm(client_plain, "u-1", explain=True, top_n=4)
    for item in out["items"]:
        contrib = item["contributions"]
        assert set(contrib) == {"click", "like", "skip"}
        assert abs(sum(contrib.values()) - item["score"]) < 1e-4
    assert "contributions" not in _arm(client_plain, "u-1")["items"][0]
    bad = client_plain.post("/v1/rank", json=rank_body(8, explain=1))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "explain"
    assert np.isfinite(out["items"][0]["score"])
