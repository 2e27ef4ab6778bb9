"""The routes of ``scorer/routes.py`` by name: module-level handlers on their routers, the body
reader's refusals (413, 415, 499) on raw ASGI requests, each app reading its own state, and the
cold routes' answers against the ``shared/api.py`` models that document them in OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.requests import Request

from scorer import routes
from scorer.app import create_app
from scorer.errors import HTTPError, InputError
from scorer.settings import ScorerSettings
from scorer.state import ScorerState
from shared.api import ErrorBody, FeedbackResponse, ModelInfo
from tests.scorer.test_app import rank_body


def request(headers: dict[str, str], chunks: Iterable[bytes] | None = None) -> Request:
    """A raw ASGI request whose body arrives in ``chunks``; None: the client disconnects."""
    messages: list[dict[str, Any]] = (
        [{"type": "http.disconnect"}]
        if chunks is None
        else [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        + [{"type": "http.request", "body": b"", "more_body": False}]
    )

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/rank",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


def read(req: Request, limit: int = 1024) -> bytes:
    return asyncio.run(routes.read_body(req, limit))


def test_handlers_are_addressable_on_their_routers() -> None:
    paths = {
        (r.path, m): r.endpoint
        for r in routes.router.routes
        if isinstance(r, APIRoute)
        for m in r.methods or ()
    }
    assert paths == {
        ("/v1/rank", "POST"): routes.rank,
        ("/v1/feedback", "POST"): routes.feedback,
        ("/v1/model", "GET"): routes.model_info,
        ("/v1/experiment", "GET"): routes.experiment,
        ("/healthz", "GET"): routes.healthz,
        ("/readyz", "GET"): routes.readyz,
        ("/metrics", "GET"): routes.metrics,
        ("/admin/reload", "POST"): routes.admin_reload,
    }
    (echo,) = routes.bench_router.routes
    assert isinstance(echo, APIRoute) and echo.endpoint is routes.bench_echo
    assert echo.path == "/bench/echo" and not echo.include_in_schema


def test_read_body_joins_the_chunks() -> None:
    ctype = {"content-type": "application/json"}
    assert read(request(ctype, [b'{"a"', b": 1}"])) == b'{"a": 1}'
    assert read(request({}, [b"{}"])) == b"{}"  # no content type: taken as JSON


@pytest.mark.parametrize(
    ("headers", "chunks"),
    [
        ({"content-length": "2048"}, [b"{}"]),  # declared too large: refused before reading
        ({}, [b"x" * 600, b"x" * 600]),  # streamed past the limit
    ],
)
def test_read_body_refuses_large_bodies(headers: dict[str, str], chunks: list[bytes]) -> None:
    with pytest.raises(InputError) as info:
        read(request(headers, chunks))
    assert (info.value.status, info.value.code) == (413, "body_too_large")


def test_read_body_refuses_other_media_types() -> None:
    with pytest.raises(InputError) as info:
        read(request({"content-type": "text/plain"}, [b"{}"]))
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


def test_read_body_client_gone_is_499_not_a_server_error() -> None:
    with pytest.raises(HTTPError) as info:
        read(request({"content-type": "application/json"}, None))
    assert not isinstance(info.value, InputError)
    assert (info.value.status, info.value.code) == (499, "client_disconnected")


def test_each_app_reads_its_own_state(model_dir: Path) -> None:
    """No closures: two apps in one process, each with its own settings and state."""
    quiet = create_app(ScorerSettings(model_dir=model_dir, log_events=False, exploration_scale=0))
    loud = create_app(ScorerSettings(model_dir=model_dir, log_events=False, exploration_scale=1))
    assert isinstance(quiet.state.scorer, ScorerState)
    assert quiet.state.scorer is not loud.state.scorer
    with TestClient(quiet) as a, TestClient(loud) as b:
        body = rank_body(20)
        answers = [c.post("/v1/rank", json=body).json() for c in (a, b, a)]
    assert [x["explored"] for x in answers] == [False, True, False]
    assert answers[0]["action"] == answers[2]["action"] != answers[1]["action"]
    ranked = [sum(app.state.scorer.metrics.candidates.series[()][:-1]) for app in (quiet, loud)]
    assert ranked == [2, 1]


def test_cold_routes_answer_their_documented_models(model_dir: Path) -> None:
    settings = ScorerSettings(model_dir=model_dir, log_events=False, admin_token=SecretStr("t"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        doc = client.get("/openapi.json").json()
        model = client.get("/v1/model")
        ids = {"request_id": "r", "session_id": "s", "user_id": "u"}
        accepted = client.post("/v1/feedback", json=ids)
        refused = [
            client.post("/v1/rank", content=b"[]", headers={"content-type": "application/json"}),
            client.post("/v1/feedback", content=b"{}", headers={"content-type": "text/plain"}),
            client.post("/admin/reload"),
        ]
    info = ModelInfo.model_validate_json(model.content)
    assert model.content == orjson.dumps(info.model_dump())  # nothing the model drops or adds
    assert [t.name for t in info.tasks] == ["click", "like", "skip"] and info.state_dim == 5
    assert (accepted.status_code, FeedbackResponse.model_validate_json(accepted.content)) == (
        202,
        FeedbackResponse(accepted=True),
    )
    assert [r.status_code for r in refused] == [422, 415, 401]
    for resp in refused:
        ErrorBody.model_validate_json(resp.content)

    def schema(path: str, method: str, status: str) -> str:
        content = doc["paths"][path][method]["responses"][status]["content"]
        ref: str = content["application/json"]["schema"]["$ref"]
        return ref.rsplit("/", 1)[1]

    assert schema("/v1/model", "get", "200") == "ModelInfo"
    assert schema("/v1/feedback", "post", "202") == "FeedbackResponse"
    assert schema("/v1/rank", "post", "200") == "RankResponse"
    documented = {
        ("/v1/rank", "post"): {"413", "415", "422", "503"},
        ("/v1/feedback", "post"): {"413", "415", "422"},
        ("/v1/model", "get"): {"503"},
        ("/admin/reload", "post"): {"401", "404"},
    }
    for (path, method), statuses in documented.items():
        responses = doc["paths"][path][method]["responses"]
        assert {s for s in responses if s >= "4"} == statuses
        assert {schema(path, method, s) for s in statuses} == {"ErrorBody"}
