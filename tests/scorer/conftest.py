"""Shared fixtures of the scorer tests: in-process scorers (FastAPI TestClient) on a real
exported model and a throwaway Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scorer.app import create_app
from scorer.settings import ScorerSettings
from tests.conftest import RedisServer

MakeClient = Callable[..., TestClient]


def assert_no_5xx(client: TestClient) -> None:
    """No request ended in a 5xx, except the documented 503 while no model is loaded."""
    text = client.get("/metrics").text
    bad = [
        line
        for line in text.splitlines()
        if line.startswith("xmtf_request_duration_seconds_count")
        and 'status="5' in line
        and 'status="503"' not in line
    ]
    assert not bad, bad


@pytest.fixture
def make_client(model_dir: Path, redis_server: RedisServer) -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        kw: dict[str, Any] = {
            "model_dir": model_dir,
            "redis_url": redis_server.url,
            "events_stream": "xmtf:test-events",
            "poll_interval_s": 0.1,
            "exploration_scale": 0.0,
            "seed": 0,
            "admin_token": None,
            "redis_backoff_max_s": 0.2,
        }
        kw.update(overrides)
        client = TestClient(create_app(ScorerSettings(**kw)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            try:
                assert_no_5xx(client)
            finally:
                client.__exit__(None, None, None)
