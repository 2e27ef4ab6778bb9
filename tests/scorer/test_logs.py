"""Structured JSON logs carry the request id of the request being served."""

from __future__ import annotations

import logging

import orjson
import pytest

from scorer.logs import JsonFormatter, request_id_var


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "scorer", "levelname": "INFO", "msg": msg})
    record.__dict__.update(extra)
    return record


def test_json_line_has_request_id_and_extra_fields() -> None:
    token = request_id_var.set("r-42")
    try:
        line = JsonFormatter().format(_record("rejected", status=422, field="top_n"))
    finally:
        request_id_var.reset(token)
    entry = orjson.loads(line)
    assert entry["message"] == "rejected" and entry["level"] == "info"
    assert entry["request_id"] == "r-42"
    assert entry["status"] == 422 and entry["field"] == "top_n"
    assert "ts" in entry and "\n" not in line


def test_no_request_id_outside_a_request() -> None:
    entry = orjson.loads(JsonFormatter().format(_record("started")))
    assert "request_id" not in entry


def test_exceptions_are_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = __import__("sys").exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in orjson.loads(line)["exc"]


def test_rejections_are_logged_with_the_request_id(
    caplog: pytest.LogCaptureFixture, exported_model: object, tmp_path: object
) -> None:
    from fastapi.testclient import TestClient

    from scorer.app import create_app
    from scorer.settings import ScorerSettings

    settings = ScorerSettings(model_dir=exported_model, log_events=False)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client, caplog.at_level(logging.INFO, "scorer"):
        body = {
            "request_id": "r-7",
            "session_id": "s",
            "user_id": "u",
            "items": [{"item_id": "a", "watch_time": -1}],
        }
        assert client.post("/v1/feedback", json=body).status_code == 422
    rejected = [r for r in caplog.records if r.getMessage().startswith("rejected")]
    assert rejected and rejected[0].__dict__["code"] == "invalid_input"
    assert rejected[0].__dict__["field"] == "items.0.watch_time"
