"""The scorer's HTTP routes (SPEC §5), module-level handlers on two routers.

``router``: ``/v1/rank``, ``/v1/feedback``, ``/v1/model``, ``/healthz``, ``/readyz``,
``/metrics``, ``/admin/reload``; ``bench_router``: ``/bench/echo``, included only with
``XMTF_BENCH_ECHO=true``. Every handler reads its app's :class:`~scorer.state.ScorerState` from
``request.app.state.scorer``.

``/v1/rank`` is bytes in, bytes out: read the body (size and media type checked), parse it
against the served version (:func:`scorer.parsing.parse_rank`), rank it
(:meth:`scorer.ranker.Ranker.execute`, one ONNX Runtime call inline in the ``async`` handler: a
hop to the threadpool would cost more than the call), answer the encoded result and log the
request's event after the response is sent. The routes that parse their bodies themselves
declare them for OpenAPI with :func:`json_body`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response

from scorer.errors import HTTPError, InputError
from scorer.eventlog import PendingRank
from scorer.logs import request_id_var
from scorer.parsing import load_json, parse_rank
from scorer.state import ScorerState
from shared.api import (
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    RankRequest,
    RankResponse,
    TaskInfo,
)
from shared.events import FeedbackEvent, FeedbackItemEvent, SessionEndEvent

COMPONENTS = "#/components/schemas/{model}"
#: The request bodies the routes parse themselves (their schemas go into ``components``).
BODY_MODELS: tuple[type[BaseModel], ...] = (RankRequest, FeedbackRequest)

router = APIRouter()
bench_router = APIRouter(include_in_schema=False)

_ERRORS = {
    401: "Missing or wrong bearer token.",
    404: "Admin routes are disabled (XMTF_ADMIN_TOKEN is unset).",
    413: "Body or candidate list above the configured limits.",
    415: "Content type other than JSON.",
    422: "Invalid input; `field` names the first offending field.",
    503: "No model is loaded yet.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting ``statuses`` with the SPEC's error body."""
    return {s: {"model": ErrorBody, "description": _ERRORS[s]} for s in statuses}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that parses its body
    itself (the size limit and the columnar fast path need the raw bytes)."""
    ref = {"$ref": COMPONENTS.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def scorer_state(request: Request) -> ScorerState:
    """The state of the app serving ``request``."""
    state: ScorerState = request.app.state.scorer
    return state


def _json(body: Any, status: int = 200, background: BackgroundTask | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", background=background
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything above ``limit`` bytes and (415) anything but
    JSON; a client gone mid-body is a 499."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(f"body exceeds {limit} bytes", status=413, code="body_too_large")
    content_type = request.headers.get("content-type", "application/json").lower()
    if "json" not in content_type:
        raise InputError(
            "content type must be application/json", status=415, code="unsupported_media_type"
        )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError(f"body exceeds {limit} bytes", status=413, code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        # the client went away mid-body: nothing to answer, and not a server error
        raise HTTPError(
            status=499, code="client_disconnected", message="client disconnected"
        ) from None
    return b"".join(chunks)


def _validation_field(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    return err.get("msg", "invalid input"), field


# ----------------------------------------------------------------------------- the API


@router.post(
    "/v1/rank",
    response_model=RankResponse,
    responses=errors(413, 415, 422, 503),
    openapi_extra=json_body(RankRequest),
)
async def rank(request: Request) -> Response:
    scorer = scorer_state(request)
    model = scorer.model_or_503()
    body = await read_body(request, scorer.settings.max_body_bytes)
    req = parse_rank(body, model.task_names, model.state_dim, scorer.limits)
    request_id_var.set(req.request_id)
    live = scorer.experiments.live
    if live is None:  # no experiment: CURRENT under the arm "default"
        result = scorer.ranker.execute(model, req)
        background = scorer.encode_events
    else:
        arm, served = live.route(req.user_id, model)
        result = scorer.ranker.execute(served, req, arm, live.name)
        background = scorer.after_response(live, req, result)
    scorer.metrics.candidates.observe(len(req.item_ids))
    if scorer.events:
        scorer.events.emit(PendingRank(req, result, time.time()))
    return Response(
        result.response(req.request_id), media_type="application/json", background=background
    )


_ACCEPTED = orjson.dumps(FeedbackResponse().model_dump())


@router.post(
    "/v1/feedback",
    status_code=202,
    response_model=FeedbackResponse,
    responses=errors(413, 415, 422),
    openapi_extra=json_body(FeedbackRequest),
)
async def feedback(request: Request) -> Response:
    scorer = scorer_state(request)
    body = await read_body(request, scorer.settings.max_body_bytes)
    try:
        fb = FeedbackRequest.model_validate(load_json(body))
    except ValidationError as exc:
        message, field = _validation_field(exc)
        raise InputError(message, field) from None
    request_id_var.set(fb.request_id)
    if scorer.events:
        now = time.time()
        ids = (fb.request_id, fb.session_id, fb.user_id)
        items = tuple(FeedbackItemEvent(i.item_id, i.watch_time, i.signals) for i in fb.items)
        scorer.events.emit(FeedbackEvent(*ids, now, items, fb.session_end))
        if fb.session_end:
            scorer.events.emit(SessionEndEvent(*ids, now))
    return Response(_ACCEPTED, 202, media_type="application/json", background=scorer.encode_events)


@router.get("/v1/model", response_model=ModelInfo, responses=errors(503))
async def model_info(request: Request) -> Response:
    model = scorer_state(request).model_or_503()
    m = model.manifest
    info = ModelInfo(
        version=m.version,
        tasks=[TaskInfo(name=t.name, direction=t.direction) for t in m.tasks],
        state_dim=m.state_dim,
        created_at=m.created_at,
        action_low=m.action_low,
        action_high=m.action_high,
        checks=m.checks.model_dump(),
        loaded_at=model.loaded_at,
    )
    return _json(info.model_dump())


# ----------------------------------------------------------------------------- operations


@router.get("/healthz")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    scorer = scorer_state(request)
    model = scorer.store.current
    body = {
        "ready": model is not None,
        "model_version": model.version if model else None,
        "last_model_error": scorer.store.last_error,
        "event_log": scorer.events.state() if scorer.events else {"enabled": False},
        "experiment": _experiment_state(scorer),
    }
    return _json(body, 200 if model is not None else 503)


def _experiment_state(scorer: ScorerState) -> dict[str, Any]:
    exps = scorer.experiments
    live = exps.live
    return {
        "running": live is not None,
        "name": live.name if live else (exps.config.name if exps.config else None),
        "refused": dict(live.refused) if live else {},
        "last_error": exps.last_error,
    }


@router.get("/v1/experiment")
async def experiment(request: Request) -> Response:
    """The live experiment (SPEC §13): configuration, per-arm request counts of this process,
    refused arms; ``running: false`` without one."""
    return _json(scorer_state(request).experiments.describe())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    scorer = scorer_state(request)
    model = scorer.store.current
    info = {"version": model.version} if model else {}
    extra = scorer.experiments.metric_lines() + scorer.shadow_stats.metric_lines()
    text = scorer.metrics.render(scorer.gauges(), info) + "\n".join(extra) + "\n"
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.post("/admin/reload", responses=errors(401, 404))
async def admin_reload(request: Request) -> Response:
    scorer = scorer_state(request)
    secret = scorer.settings.admin_token
    token = secret.get_secret_value() if secret else ""
    if not token:
        raise HTTPError(
            status=404,
            code="not_found",
            message="admin routes are disabled (XMTF_ADMIN_TOKEN is unset)",
        )
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise HTTPError(
            status=401,
            code="unauthorized",
            message="missing or wrong bearer token",
            field="Authorization",
        )
    swapped = await asyncio.to_thread(scorer.refresh_models, True)
    model = scorer.store.current
    return _json(
        {
            "reloaded": swapped,
            "model_version": model.version if model else None,
            "last_model_error": scorer.store.last_error,
        }
    )


# ----------------------------------------------------------------------------- benchmark

_ECHO_ANSWER = b'{"ok":true}'


@bench_router.post("/bench/echo")
async def bench_echo(request: Request) -> Response:
    """The HTTP floor: same stack and body reading as ``/v1/rank``, no work."""
    await read_body(request, scorer_state(request).settings.max_body_bytes)
    return Response(_ECHO_ANSWER, media_type="application/json")
