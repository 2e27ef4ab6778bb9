"""The scorer over HTTP (``fastapi.testclient``), with a real model directory and real Redis.

Every client made by ``make_client`` is checked at teardown: no request it served ended in a 5xx.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient

from shared.fusion import fused_scores
from shared.manifest import write_current
from tests.helpers import assert_error_body, metric, publish, wait_until
from tests.scorer.conftest import MakeClient

TASKS = ("click", "like", "skip")
STATE_DIM = 5
TOKEN = "s3cret-token"


# ----------------------------------------------------------------------------- helpers


def rank_body(n: int = 10, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    body: dict[str, Any] = {
        "request_id": f"r-{seed}",
        "session_id": "s-1",
        "user_id": "u-1",
        "user_state": rng.normal(size=STATE_DIM).round(4).tolist(),
        "item_ids": [f"item-{j}" for j in range(n)],
        "predictions": {t: rng.random(n).round(4).tolist() for t in TASKS},
        "top_n": 3,
    }
    body.update(overrides)
    return body


def post_raw(client: TestClient, path: str, raw: bytes, **headers: str) -> Any:
    return client.post(path, content=raw, headers={"content-type": "application/json", **headers})


def assert_error(resp: Any, status: int, code: str | None = None, field: Any = ...) -> dict:
    assert resp.status_code == status, resp.text
    err = assert_error_body(resp.headers["content-type"], resp.content)
    if code is not None:
        assert err["code"] == code, err
    if field is not ...:
        assert err["field"] == field, err
    return err


def model_version(client: TestClient) -> str | None:
    resp = client.get("/v1/model")
    return resp.json()["version"] if resp.status_code == 200 else None


def actor_and_mfc(version_dir: Path, state: list[float], preds: np.ndarray) -> tuple:
    """An independent ONNX Runtime evaluation of one version: (actor action (K,), q (K, N))."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # as the scorer, so that results match bit for bit

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(
            str(version_dir / name), opts, providers=["CPUExecutionProvider"]
        )

    s = np.asarray([state], np.float32)
    (action,) = session("actor.onnx").run(None, {"state": s})
    (q,) = session("mfc.onnx").run(None, {"state": s, "predictions": preds})
    return action[0], q


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Further exported versions to publish: v0002/v0003 (same schema), tasks and dim changes."""
    pytest.importorskip("torch")
    from shared.tasks import make_tasks
    from trainer.config import TSHConfig
    from trainer.export import export_version
    from trainer.tsh import TSHAgent

    out = tmp_path_factory.mktemp("sources")
    same = make_tasks(list(TASKS), [1, 1, -1])
    specs = {
        "v0002": (same, STATE_DIM, 11),
        "v0003": (same, STATE_DIM, 12),
        "v0010-tasks": (make_tasks(["click", "like"], [1, 1]), STATE_DIM, 13),
        "v0011-dim": (same, STATE_DIM + 2, 14),
    }
    for version, (tasks, dim, seed) in specs.items():
        agent = TSHAgent(tasks, dim, TSHConfig(hidden=32), seed=seed)
        export_version(agent, out, version=version, publish=False)
    return out


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


# ----------------------------------------------------------------------------- /v1/rank


def test_rank_happy_path(client: TestClient, model_dir: Path) -> None:
    body = rank_body(12, seed=1, top_n=4)
    resp = client.post("/v1/rank", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    out = resp.json()
    assert set(out) == {"request_id", "model_version", "items", "action", "explored", "arm"}
    assert out["arm"] == "default"  # SPEC §13: no EXPERIMENT.json
    assert out["request_id"] == "r-1"
    assert out["model_version"] == "v0001"
    assert out["explored"] is False
    assert len(out["items"]) == 4
    for item in out["items"]:
        assert set(item) == {"item_id", "score"}
        assert item["item_id"] in body["item_ids"]
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)
    assert len({i["item_id"] for i in out["items"]}) == 4

    info = client.get("/v1/model").json()
    action = np.asarray(out["action"], np.float32)
    assert action.shape == (len(TASKS),)
    assert np.all(action >= np.float32(info["action_low"]))
    assert np.all(action <= np.float32(info["action_high"]))

    # scale 0: the applied action is the actor's output exactly, and the scores are z_i
    preds = np.asarray([body["predictions"][t] for t in TASKS], np.float32)
    mu, q = actor_and_mfc(model_dir / "v0001", body["user_state"], preds)
    np.testing.assert_array_equal(action, mu)
    z = fused_scores(q, mu)
    expected = np.argsort(-z, kind="stable")[:4]
    assert [i["item_id"] for i in out["items"]] == [body["item_ids"][j] for j in expected]
    np.testing.assert_allclose(scores, z[expected], rtol=1e-6, atol=1e-7)


def test_rank_same_action_for_identical_requests_without_exploration(client: TestClient) -> None:
    body = rank_body(8, seed=2)
    a = client.post("/v1/rank", json=body).json()
    b = client.post("/v1/rank", json=body).json()
    assert a["action"] == b["action"]
    assert a["items"] == b["items"]
    assert a["explored"] is b["explored"] is False


def test_rank_top_n_above_n_returns_all(client: TestClient) -> None:
    body = rank_body(5, seed=3, top_n=1000)
    out = client.post("/v1/rank", json=body).json()
    assert sorted(i["item_id"] for i in out["items"]) == sorted(body["item_ids"])
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)


def test_rank_single_candidate(client: TestClient) -> None:
    out = client.post("/v1/rank", json=rank_body(1, seed=4, top_n=1)).json()
    assert [i["item_id"] for i in out["items"]] == ["item-0"]


def test_rank_generates_a_request_id(client: TestClient) -> None:
    body = rank_body(3)
    del body["request_id"]
    out = client.post("/v1/rank", json=body).json()
    assert re.fullmatch(r"[0-9a-f]{32}", out["request_id"])


def test_rank_task_key_order_does_not_matter(client: TestClient) -> None:
    body = rank_body(6, seed=5)
    reordered = dict(body, predictions={t: body["predictions"][t] for t in reversed(TASKS)})
    a = client.post("/v1/rank", json=body).json()
    b = client.post("/v1/rank", json=reordered).json()
    assert a["items"] == b["items"]


def test_rank_with_exploration(make_client: MakeClient) -> None:
    client = make_client(exploration_scale=0.5, seed=7)
    info = client.get("/v1/model").json()
    body = rank_body(6, seed=6)
    actions = []
    for _ in range(20):
        out = client.post("/v1/rank", json=body).json()
        assert out["explored"] is True
        a = np.asarray(out["action"], np.float32)
        assert np.all(a >= np.float32(info["action_low"]))
        assert np.all(a <= np.float32(info["action_high"]))
        actions.append(out["action"])
    assert len({tuple(a) for a in actions}) > 1


def test_rank_many_candidates(client: TestClient) -> None:
    out = client.post("/v1/rank", json=rank_body(5000, seed=8, top_n=1000)).json()
    assert len(out["items"]) == 1000
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)


def _drop_task(b: dict) -> None:
    del b["predictions"]["like"]


def _extra_task(b: dict) -> None:
    b["predictions"]["long_view"] = [0.1] * len(b["item_ids"])


def _short_column(b: dict) -> None:
    b["predictions"]["skip"] = b["predictions"]["skip"][:-1]


def _bool_value(b: dict) -> None:
    b["predictions"]["click"][0] = True


def _null_value(b: dict) -> None:
    b["predictions"]["click"][0] = None


def _string_value(b: dict) -> None:
    b["predictions"]["click"][0] = "0.5"


RANK_INVALID: list[tuple[str, Callable[[dict], None] | dict, int, str, str | None]] = [
    ("missing task", _drop_task, 422, "invalid_input", "predictions.like"),
    ("unknown task", _extra_task, 422, "invalid_input", "predictions.long_view"),
    ("wrong length", _short_column, 422, "invalid_input", "predictions.skip"),
    ("bool in array", _bool_value, 422, "invalid_input", "predictions.click"),
    ("null in array", _null_value, 422, "invalid_input", "predictions.click"),
    ("string in array", _string_value, 422, "invalid_input", "predictions.click"),
    ("duplicate ids", {"item_ids": ["a", "b", "a"]}, 422, "invalid_input", "item_ids"),
    ("state length", {"user_state": [0.1, 0.2]}, 422, "invalid_input", "user_state"),
    (
        "empty candidates",
        {"item_ids": [], "predictions": {t: [] for t in TASKS}},
        422,
        "invalid_input",
        "item_ids",
    ),
    ("top_n zero", {"top_n": 0}, 422, "invalid_input", "top_n"),
    ("top_n too large", {"top_n": 1001}, 422, "invalid_input", "top_n"),
    ("top_n bool", {"top_n": True}, 422, "invalid_input", "top_n"),
    ("long id", {"session_id": "s" * 257}, 422, "invalid_input", "session_id"),
    ("empty user id", {"user_id": ""}, 422, "invalid_input", "user_id"),
    ("unknown field", {"extra": 1}, 422, "invalid_input", "extra"),
    ("float32 overflow", {"user_state": [1e39, 0, 0, 0, 0]}, 422, "invalid_input", "user_state"),
]


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [case[1:] for case in RANK_INVALID],
    ids=[case[0] for case in RANK_INVALID],
)
def test_rank_invalid_inputs(
    client: TestClient, change: Any, status: int, code: str, field: str | None
) -> None:
    body = rank_body(3, seed=9)
    if callable(change):
        change(body)
    else:
        body.update(change)
    assert_error(client.post("/v1/rank", json=body), status, code, field)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e309"])
def test_rank_non_finite_literal(client: TestClient, literal: bytes) -> None:
    raw = orjson.dumps(rank_body(3, predictions={t: [0.1, 0.2, 0.3] for t in TASKS}))
    raw = raw.replace(b"0.2", literal, 1)
    assert_error(post_raw(client, "/v1/rank", raw), 422, "invalid_json", None)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[1,2]", b"null", b"\xff"])
def test_rank_bad_json(client: TestClient, raw: bytes) -> None:
    assert_error(post_raw(client, "/v1/rank", raw), 422)


def test_rank_too_many_candidates(make_client: MakeClient) -> None:
    client = make_client(max_candidates=5)
    assert client.post("/v1/rank", json=rank_body(5)).status_code == 200
    assert_error(client.post("/v1/rank", json=rank_body(6)), 413, "too_many_candidates", "item_ids")


def test_rank_body_too_large(make_client: MakeClient) -> None:
    client = make_client(max_body_bytes=2048)
    raw = orjson.dumps(rank_body(80, seed=10))
    assert len(raw) > 2048
    assert_error(post_raw(client, "/v1/rank", raw), 413, "body_too_large")
    # the same without a Content-Length header (chunked): refused while streaming
    resp = client.post(
        "/v1/rank",
        content=iter([raw[:1000], raw[1000:]]),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "body_too_large")
    # a body within the limit is fine
    assert client.post("/v1/rank", json=rank_body(3)).status_code == 200


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_rank_wrong_content_type(client: TestClient, ctype: str) -> None:
    resp = client.post(
        "/v1/rank", content=orjson.dumps(rank_body(3)), headers={"content-type": ctype}
    )
    assert_error(resp, 415, "unsupported_media_type")


def test_wrong_method_and_unknown_route(client: TestClient) -> None:
    assert_error(client.get("/v1/rank"), 405)
    assert_error(client.get("/nope"), 404)


def test_rank_fuzz_never_5xx(client: TestClient) -> None:
    rng = np.random.default_rng(42)
    junk: list[Any] = [
        None,
        True,
        0,
        -1,
        1.5,
        "",
        "x" * 300,
        [],
        {},
        [None],
        ["a", "a"],
        {"click": []},
        [1e38, -1e38],
        2**70,
    ]
    base = rank_body(4, seed=11)
    keys = [*base, "bogus"]
    for _ in range(150):
        body = json.loads(json.dumps(base))
        for _ in range(int(rng.integers(1, 4))):
            key = keys[int(rng.integers(len(keys)))]
            body[key] = junk[int(rng.integers(len(junk)))]
        resp = client.post("/v1/rank", json=body)
        assert resp.status_code in (200, 413, 422), (body, resp.text)
        if resp.status_code != 200:
            assert_error(resp, resp.status_code)
    for _ in range(50):
        raw = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        resp = post_raw(client, "/v1/rank", raw)
        assert_error(resp, 422)


# ----------------------------------------------------------------------------- /v1/feedback


def feedback_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": "r-1",
        "session_id": "s-1",
        "user_id": "u-1",
        "items": [{"item_id": "item-1", "watch_time": 12.5, "signals": {"click": 1, "like": 0}}],
        "session_end": False,
    }
    body.update(overrides)
    return body


def test_feedback_valid(client: TestClient) -> None:
    resp = client.post("/v1/feedback", json=feedback_body())
    assert resp.status_code == 202
    assert resp.json() == {"accepted": True}
    # unknown request ids are accepted too
    resp = client.post("/v1/feedback", json=feedback_body(request_id="never-ranked"))
    assert resp.status_code == 202


def test_feedback_session_end_without_items(client: TestClient) -> None:
    resp = client.post("/v1/feedback", json=feedback_body(items=[], session_end=True))
    assert resp.status_code == 202
    body = feedback_body(session_end=True)
    del body["items"]
    assert client.post("/v1/feedback", json=body).status_code == 202


def _fb_item(**kw: Any) -> dict[str, Any]:
    return {"items": [{"item_id": "a", "watch_time": 1.0, **kw}]}


FEEDBACK_INVALID: list[tuple[str, dict[str, Any], str | None]] = [
    ("negative watch_time", _fb_item(watch_time=-1.0), "items.0.watch_time"),
    ("string watch_time", _fb_item(watch_time="long"), "items.0.watch_time"),
    ("huge watch_time", _fb_item(watch_time=1e300), "items.0.watch_time"),
    ("float signal", _fb_item(signals={"click": 0.5}), "items.0.signals.click"),
    ("huge signal", _fb_item(signals={"click": 1e30}), "items.0.signals.click"),
    ("empty item id", {"items": [{"item_id": ""}]}, "items.0.item_id"),
    ("unknown item field", _fb_item(rating=5), "items.0.rating"),
    ("unknown field", {"extra": 1}, "extra"),
    ("long session id", {"session_id": "s" * 257}, "session_id"),
    ("items not a list", {"items": {"a": 1}}, "items"),
    ("session_end not bool", {"session_end": "maybe"}, "session_end"),
]


@pytest.mark.parametrize(
    ("change", "field"), [c[1:] for c in FEEDBACK_INVALID], ids=[c[0] for c in FEEDBACK_INVALID]
)
def test_feedback_invalid(client: TestClient, change: dict[str, Any], field: str) -> None:
    assert_error(
        client.post("/v1/feedback", json=feedback_body(**change)), 422, "invalid_input", field
    )


@pytest.mark.parametrize("missing", ["request_id", "session_id", "user_id"])
def test_feedback_missing_ids(client: TestClient, missing: str) -> None:
    body = feedback_body()
    del body[missing]
    assert_error(client.post("/v1/feedback", json=body), 422, "invalid_input", missing)


def test_feedback_bad_bodies(client: TestClient) -> None:
    raw = orjson.dumps(feedback_body()).replace(b"12.5", b"NaN")
    assert_error(post_raw(client, "/v1/feedback", raw), 422, "invalid_json")
    assert_error(post_raw(client, "/v1/feedback", b"[]"), 422)
    assert_error(post_raw(client, "/v1/feedback", b"{"), 422, "invalid_json")
    resp = client.post("/v1/feedback", content=b"{}", headers={"content-type": "text/plain"})
    assert_error(resp, 415)


def test_feedback_body_too_large(make_client: MakeClient) -> None:
    client = make_client(max_body_bytes=1024)
    items = [{"item_id": f"item-{j}", "watch_time": 1.0} for j in range(100)]
    assert_error(
        client.post("/v1/feedback", json=feedback_body(items=items)), 413, "body_too_large"
    )


# ----------------------------------------------------------------------------- info routes


def test_model_info(client: TestClient) -> None:
    resp = client.get("/v1/model")
    assert resp.status_code == 200
    info = resp.json()
    assert info["version"] == "v0001"
    assert info["tasks"] == [
        {"name": "click", "direction": 1},
        {"name": "like", "direction": 1},
        {"name": "skip", "direction": -1},
    ]
    assert info["state_dim"] == STATE_DIM
    assert isinstance(info["created_at"], str) and info["created_at"]
    assert -0.5 < info["action_low"] < info["action_high"]
    assert isinstance(info["checks"], dict) and isinstance(info["loaded_at"], str)


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    resp = client.get("/readyz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["ready"] is True
    assert body["model_version"] == "v0001"
    assert body["last_model_error"] is None
    assert body["event_log"]["enabled"] is True


def test_readyz_without_a_model_then_published(
    make_client: MakeClient, tmp_path: Path, exported_model: Path
) -> None:
    empty = tmp_path / "empty-models"
    empty.mkdir()
    client = make_client(model_dir=empty)
    assert client.get("/healthz").status_code == 200
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["ready"] is False and resp.json()["model_version"] is None
    assert_error(client.post("/v1/rank", json=rank_body(3)), 503, "not_ready")
    assert_error(client.get("/v1/model"), 503, "not_ready")
    assert client.get("/metrics").status_code == 200
    # feedback needs no model
    assert client.post("/v1/feedback", json=feedback_body()).status_code == 202

    publish(exported_model / "v0001", empty, "v0001")
    wait_until(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/readyz").json()["model_version"] == "v0001"
    assert client.post("/v1/rank", json=rank_body(3)).status_code == 200


def test_readyz_without_model_dir(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(model_dir=tmp_path / "does-not-exist")
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


METRIC_NAMES = [
    "xmtf_request_duration_seconds_bucket",
    "xmtf_request_duration_seconds_count",
    "xmtf_rank_candidates_bucket",
    "xmtf_rejections_total",
    "xmtf_model_loaded",
    "xmtf_model_reloads_total",
    "xmtf_model_refusals_total",
    "xmtf_model_info",
    "xmtf_events_logged_total",
    "xmtf_events_buffered",
    "xmtf_events_dropped_total",
    "xmtf_redis_errors_total",
    "xmtf_redis_connected",
]


def test_metrics(client: TestClient) -> None:
    assert client.post("/v1/rank", json=rank_body(20)).status_code == 200
    assert client.post("/v1/rank", json=rank_body(0)).status_code == 422
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in METRIC_NAMES:
        assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), name
    assert 'xmtf_model_info{version="v0001"} 1' in text
    assert metric(text, "xmtf_model_loaded") == 1
    assert 'xmtf_rejections_total{code="invalid_input"} 1' in text
    assert re.search(
        r'^xmtf_request_duration_seconds_count\{route="/v1/rank",status="200"\} 1$',
        text,
        re.MULTILINE,
    )
    assert re.search(r"^xmtf_rank_candidates_count\{\} 1$", text, re.MULTILINE)
    for line in text.splitlines():  # valid exposition format: comments or "name{labels} value"
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line


# ----------------------------------------------------------------------------- model swaps


def test_admin_reload_disabled_without_token(client: TestClient) -> None:
    assert_error(client.post("/admin/reload"), 404, "not_found")
    assert_error(client.post("/admin/reload", headers={"authorization": "Bearer x"}), 404)


def test_admin_reload_auth_and_reload(
    make_client: MakeClient, model_dir: Path, sources: Path
) -> None:
    client = make_client(admin_token=TOKEN, poll_interval_s=3600)
    assert_error(client.post("/admin/reload"), 401, "unauthorized")
    for value in ("Bearer wrong", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert_error(client.post("/admin/reload", headers={"authorization": value}), 401)
    auth = {"authorization": f"Bearer {TOKEN}"}

    resp = client.post("/admin/reload", headers=auth)
    assert resp.status_code == 200
    assert resp.json()["reloaded"] is False and resp.json()["model_version"] == "v0001"

    publish(sources / "v0002", model_dir, "v0002")
    time.sleep(0.2)
    assert model_version(client) == "v0001"  # the poller is far off: only reload swaps
    resp = client.post("/admin/reload", headers=auth)
    assert resp.status_code == 200
    assert resp.json() == {"reloaded": True, "model_version": "v0002", "last_model_error": None}
    assert model_version(client) == "v0002"
    assert client.post("/v1/rank", json=rank_body(3)).json()["model_version"] == "v0002"


def test_admin_reload_retries_a_refused_version(
    make_client: MakeClient, model_dir: Path, sources: Path
) -> None:
    client = make_client(admin_token=TOKEN, poll_interval_s=3600)
    auth = {"authorization": f"Bearer {TOKEN}"}
    bad = publish(
        sources / "v0002", model_dir, "v0002", lambda d: (d / "mfc.onnx").write_bytes(b"garbage")
    )
    resp = client.post("/admin/reload", headers=auth).json()
    assert resp["reloaded"] is False and resp["model_version"] == "v0001"
    assert "v0002" in resp["last_model_error"]
    # repaired in place: a forced reload tries it again
    shutil.copy(sources / "v0002" / "mfc.onnx", bad / "mfc.onnx")
    resp = client.post("/admin/reload", headers=auth).json()
    assert resp["reloaded"] is True and resp["model_version"] == "v0002"


def test_polling_picks_up_a_new_current(client: TestClient, model_dir: Path, sources: Path) -> None:
    assert model_version(client) == "v0001"
    publish(sources / "v0002", model_dir, "v0002")
    wait_until(lambda: model_version(client) == "v0002")
    assert client.post("/v1/rank", json=rank_body(3)).json()["model_version"] == "v0002"
    text = client.get("/metrics").text
    assert metric(text, "xmtf_model_reloads_total") == 2
    assert 'xmtf_model_info{version="v0002"} 1' in text
    assert client.get("/readyz").json()["model_version"] == "v0002"


def test_swap_under_traffic_has_no_failed_requests(
    client: TestClient, model_dir: Path, sources: Path
) -> None:
    seen: set[str] = set()
    publish(sources / "v0002", model_dir, "v0002")
    deadline = time.monotonic() + 10
    while "v0002" not in seen and time.monotonic() < deadline:
        resp = client.post("/v1/rank", json=rank_body(50))
        assert resp.status_code == 200, resp.text
        seen.add(resp.json()["model_version"])
    assert "v0002" in seen
    for _ in range(20):
        assert client.post("/v1/rank", json=rank_body(50)).json()["model_version"] == "v0002"


def _overwrite_mfc_bytes(d: Path) -> None:
    data = bytearray((d / "mfc.onnx").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = b"\x00" * 16 if data[mid : mid + 16] != b"\x00" * 16 else b"\x01" * 16
    (d / "mfc.onnx").write_bytes(bytes(data))


def _edit_manifest(d: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    change(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))


def _wrong_sha(d: Path) -> None:
    _edit_manifest(d, lambda m: m["sha256"].update({"actor.onnx": "0" * 64}))


def _garbage_graph_with_matching_sha(d: Path) -> None:
    import hashlib

    (d / "actor.onnx").write_bytes(b"this is not an onnx graph")
    digest = hashlib.sha256(b"this is not an onnx graph").hexdigest()
    _edit_manifest(d, lambda m: m["sha256"].update({"actor.onnx": digest}))


def _broken_manifest(d: Path) -> None:
    (d / "manifest.json").write_text("{not json")


def _missing_file(d: Path) -> None:
    (d / "mfc.onnx").unlink()


def _manifest_task_rename(d: Path) -> None:
    _edit_manifest(d, lambda m: m["tasks"][0].update({"name": "watch"}))


CORRUPT = {
    "overwritten bytes": ("v0002", "v0002", _overwrite_mfc_bytes),
    "wrong sha256": ("v0002", "v0002", _wrong_sha),
    "garbage graph": ("v0002", "v0002", _garbage_graph_with_matching_sha),
    "broken manifest": ("v0002", "v0002", _broken_manifest),
    "missing file": ("v0002", "v0002", _missing_file),
    "manifest task renamed": ("v0002", "v0002", _manifest_task_rename),
    "dir name != manifest version": ("v0002", "v0020", None),
    "different task list": ("v0010-tasks", "v0010-tasks", None),
    "different state_dim": ("v0011-dim", "v0011-dim", None),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_or_incompatible_version_is_refused(
    make_client: MakeClient, model_dir: Path, sources: Path, case: str
) -> None:
    src, name, prepare = CORRUPT[case]
    client = make_client()
    publish(sources / src, model_dir, name, prepare)
    ready = wait_until(lambda: (r := client.get("/readyz").json())["last_model_error"] and r)
    assert ready["ready"] is True
    assert ready["model_version"] == "v0001"
    assert name in ready["last_model_error"]
    assert model_version(client) == "v0001"
    resp = client.post("/v1/rank", json=rank_body(4))
    assert resp.status_code == 200 and resp.json()["model_version"] == "v0001"
    assert metric(client.get("/metrics").text, "xmtf_model_refusals_total") == 1
    time.sleep(0.35)  # several polls: a refused version is not retried over and over
    assert metric(client.get("/metrics").text, "xmtf_model_refusals_total") == 1
    assert metric(client.get("/metrics").text, "xmtf_model_reloads_total") == 1
    assert model_version(client) == "v0001"

    # the next good version is taken, and the error is cleared
    publish(sources / "v0003", model_dir, "v0003")
    wait_until(lambda: model_version(client) == "v0003")
    assert client.get("/readyz").json()["last_model_error"] is None


def test_missing_version_named_by_current_is_refused(client: TestClient, model_dir: Path) -> None:
    write_current(model_dir, "v0999")
    err = wait_until(lambda: client.get("/readyz").json()["last_model_error"])
    assert "v0999" in err
    assert client.post("/v1/rank", json=rank_body(3)).json()["model_version"] == "v0001"
