"""The benchmark's pieces: bodies the scorer accepts, the client's response framing, the echo
route (only when enabled), and the parser's fast path agreeing with its exact checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from loadtest.bench import c1_row, floors_for
from loadtest.bodies import TOP_N, make_bodies
from loadtest.client import _split_response, encode_request
from loadtest.floors import load_model, measure, minimal_parse, minimal_parse_simdjson
from scorer.app import create_app
from scorer.parsing import Limits, parse_rank
from scorer.settings import ScorerSettings

TASKS = ("click", "like", "skip")


def test_bodies_are_valid_rank_requests() -> None:
    for raw in make_bodies(50, list(TASKS), 5, count=3):
        req = parse_rank(raw, TASKS, 5, Limits(5000, 1000))
        assert req.predictions.shape == (3, 50) and req.top_n == TOP_N
        assert ((req.predictions > 0) & (req.predictions < 1)).all()


def test_fast_path_equals_column_by_column_conversion() -> None:
    raw = make_bodies(200, list(TASKS), 5, count=1)[0]
    data = orjson.loads(raw)
    want = np.array([data["predictions"][t] for t in TASKS], np.float64).astype(np.float32)
    got = parse_rank(raw, TASKS, 5, Limits(5000, 1000)).predictions
    np.testing.assert_array_equal(got, want)


def test_split_response() -> None:
    buf = bytearray(b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"ok":true}HTTP/1.1')
    assert _split_response(buf) == (200, 50)
    assert _split_response(bytearray(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{")) is None
    assert encode_request("h", 1, "/p", b"{}").endswith(
        b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
    )


@pytest.mark.parametrize("enabled", [False, True])
def test_echo_route_only_when_enabled(model_dir: Path, enabled: bool) -> None:
    settings = ScorerSettings(model_dir=model_dir, log_events=False, bench_echo=enabled)
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/bench/echo", content=b'{"x": 1}', headers={"content-type": "application/json"}
        )
        if enabled:
            assert (r.status_code, r.json()) == (200, {"ok": True})
        else:
            assert r.status_code == 404
        assert "/bench/echo" not in client.get("/openapi.json").text


def test_both_minimal_parses_give_the_scorers_arrays() -> None:
    raw = make_bodies(100, list(TASKS), 5, count=1)[0]
    want = parse_rank(raw, TASKS, 5, Limits(5000, 1000))
    for parse in (minimal_parse, minimal_parse_simdjson):
        state, matrix = parse(raw, TASKS)
        np.testing.assert_array_equal(state, want.state)
        np.testing.assert_array_equal(matrix, want.predictions)


def test_floors_are_measured_back_to_back_and_after_idling(exported_model: Path) -> None:
    model = load_model(exported_model)
    bodies = make_bodies(20, list(TASKS), 5, count=4)
    floors = floors_for(exported_model, bodies, reps=30)
    for name in ("ort", "ort_pair", "ort_serving", "parse", "parse_orjson", "parse_simdjson"):
        assert floors[f"{name}_p50_ms"] > 0 and floors[f"{name}_idle_p50_ms"] > 0
    assert floors["ort_p50_ms"] == min(floors["ort_pair_p50_ms"], floors["ort_serving_p50_ms"])
    assert floors["parse_p50_ms"] == min(
        floors["parse_orjson_p50_ms"], floors["parse_simdjson_p50_ms"]
    )
    times = measure(model, bodies, reps=10, idle_s=1e-3)
    assert all(len(v) == 10 and (v > 0).all() for v in times.values())

    got = {"rank": {"p50_ms": 2.0}, "echo": {"p50_ms": 0.5}}
    row = c1_row(got, floors)
    assert row["ratio"] == pytest.approx(
        2.0 / (0.5 + floors["parse_p50_ms"] + floors["ort_p50_ms"])
    )
    assert row["ratio_idle"] == pytest.approx(
        2.0 / (0.5 + floors["parse_idle_p50_ms"] + floors["ort_idle_p50_ms"])
    )
