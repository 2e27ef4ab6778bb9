"""The scorer's HTTP application: ``create_app(settings)``.

Lifecycle (as in Feast's feature server): the lifespan loads the model (in a thread) and starts
the event logger and the ``CURRENT`` poller; ``/readyz`` is 503 until a model is loaded. The
per-request ONNX call is small (well under a millisecond for hundreds of candidates) and runs
inline in the ``async`` handler: a hop to the threadpool would cost more than the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response

from scorer.errors import HTTPError, InputError, error_response
from scorer.eventlog import EventLogger, PendingRank
from scorer.logs import configure_logging, request_id_var
from scorer.metrics import Metrics
from scorer.model import LoadedModel, ModelStore
from scorer.parsing import Limits, load_json, parse_rank
from scorer.ranker import Ranker
from scorer.settings import ScorerSettings
from shared.api import FeedbackRequest, RankRequest, RankResponse
from shared.events import FeedbackEvent, FeedbackItemEvent, SessionEndEvent

log = logging.getLogger("scorer")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def _json(body: Any, status: int = 200, background: BackgroundTask | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", background=background
    )


class LatencyMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): latency by route and status.

    The latency ends when the last byte of the response is handed to the server, not when the
    app returns: work a route does after its response (a background step) is not client time.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        observed = False

        def observe() -> None:
            nonlocal observed
            observed = True
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.observe(
                time.perf_counter() - start, route=path, status=str(status)
            )

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                observe()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not observed:
                observe()


class Scorer:
    """State of one scorer process: settings, model store, event logger, metrics."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_dir)
        self.metrics = Metrics()
        self.limits = Limits(settings.max_candidates, settings.max_top_n)
        self.ranker = Ranker(settings.exploration_scale, np.random.default_rng(settings.seed))
        self.events: EventLogger | None = None
        if settings.log_events:
            self.events = EventLogger(
                settings.redis_url,
                settings.events_stream,
                maxlen=settings.events_maxlen,
                buffer_size=settings.event_buffer_size,
                batch_size=settings.event_batch_size,
                flush_interval=settings.event_flush_interval_s,
                timeout=settings.redis_timeout_s,
                backoff_max=settings.redis_backoff_max_s,
                log_max_candidates=settings.log_max_candidates,
            )

    async def poll_current(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await asyncio.to_thread(self.store.refresh)
            except Exception:  # keep polling whatever happened
                log.exception("model refresh failed")

    def model_or_503(self) -> LoadedModel:
        model = self.store.current
        if model is None:
            raise HTTPError(status=503, code="not_ready", message="no model is loaded yet")
        return model

    async def read_body(self, request: Request) -> bytes:
        """The request body, refusing (413) anything above ``max_body_bytes``."""
        limit = self.settings.max_body_bytes
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
                    raise InputError(
                        f"body exceeds {limit} bytes", status=413, code="body_too_large"
                    )
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


def create_app(settings: ScorerSettings) -> FastAPI:
    """Build the scorer application for ``settings``."""
    scorer = Scorer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(scorer.store.refresh)
        if settings.gc_freeze:
            # Everything allocated so far (modules, FastAPI, ORT wrappers) lives as long as the
            # process: move it out of the collector's reach, so that a full collection only
            # walks recent objects (a multi-millisecond pause otherwise, every few thousand
            # requests, because logged events survive long enough to reach the old generation).
            gc.collect()
            gc.freeze()
        if scorer.events:
            scorer.events.start()
        poller = asyncio.create_task(scorer.poll_current(), name="xmtf-current-poller")
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if scorer.events:
                await scorer.events.stop()

    app = FastAPI(title="xmtf scorer", version="0.1.0", lifespan=lifespan)
    app.state.scorer = scorer
    app.add_middleware(LatencyMiddleware, metrics=scorer.metrics)

    @app.exception_handler(HTTPError)
    async def input_error(request: Request, exc: HTTPError) -> Response:
        scorer.metrics.rejections[exc.code] += 1
        log.info(
            "rejected %s %s: %s",
            request.method,
            request.url.path,
            exc.message,
            extra={"status": exc.status, "code": exc.code, "field": exc.field},
        )
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
        return error_response(422, "invalid_input", err.get("msg", "invalid input"), field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error")

    rank_body = _json_body(RankRequest)
    # Encoding the session log's events runs after the response has been sent (the client is
    # reading it meanwhile); one task object serves every request.
    encode_events = BackgroundTask(scorer.events.encode_pending) if scorer.events else None

    @app.post("/v1/rank", response_model=RankResponse, openapi_extra=rank_body)
    async def rank(request: Request) -> Response:
        model = scorer.model_or_503()
        body = await scorer.read_body(request)
        req = parse_rank(body, model.task_names, model.state_dim, scorer.limits)
        request_id_var.set(req.request_id)
        result = scorer.ranker.execute(model, req)
        scorer.metrics.candidates.observe(len(req.item_ids))
        if scorer.events:
            scorer.events.emit(PendingRank(req, result, time.time()))
        return Response(
            result.response(req.request_id),
            media_type="application/json",
            background=encode_events,
        )

    if settings.bench_echo:
        echo_answer = b'{"ok":true}'

        @app.post("/bench/echo", include_in_schema=False)
        async def bench_echo(request: Request) -> Response:
            """The HTTP floor: same stack and body reading as ``/v1/rank``, no work."""
            await scorer.read_body(request)
            return Response(echo_answer, media_type="application/json")

    feedback_body = _json_body(FeedbackRequest)

    @app.post("/v1/feedback", status_code=202, openapi_extra=feedback_body)
    async def feedback(request: Request) -> Response:
        body = await scorer.read_body(request)
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
        return _json({"accepted": True}, 202, encode_events)

    @app.get("/v1/model")
    async def model_info() -> Response:
        model = scorer.model_or_503()
        m = model.manifest
        return _json(
            {
                "version": m.version,
                "tasks": [{"name": t.name, "direction": t.direction} for t in m.tasks],
                "state_dim": m.state_dim,
                "created_at": m.created_at,
                "action_low": m.action_low,
                "action_high": m.action_high,
                "checks": m.checks.model_dump(),
                "loaded_at": model.loaded_at,
            }
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        model = scorer.store.current
        body = {
            "ready": model is not None,
            "model_version": model.version if model else None,
            "last_model_error": scorer.store.last_error,
            "event_log": scorer.events.state() if scorer.events else {"enabled": False},
        }
        return _json(body, 200 if model is not None else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        ev = scorer.events
        gauges: dict[str, tuple[str, str, float]] = {
            "xmtf_model_loaded": (
                "gauge",
                "1 when a model is served.",
                float(scorer.store.current is not None),
            ),
            "xmtf_model_reloads_total": (
                "counter",
                "Model versions swapped in.",
                scorer.store.reloads,
            ),
            "xmtf_model_refusals_total": (
                "counter",
                "Model versions refused.",
                scorer.store.refusals,
            ),
        }
        if ev:
            gauges |= {
                "xmtf_events_logged_total": ("counter", "Events written to Redis.", ev.logged),
                "xmtf_events_buffered": ("gauge", "Events waiting in the buffer.", ev.buffered),
                "xmtf_events_dropped_total": (
                    "counter",
                    "Events dropped (buffer full).",
                    ev.dropped,
                ),
                "xmtf_redis_errors_total": ("counter", "Failed Redis writes.", ev.redis_errors),
                "xmtf_redis_connected": (
                    "gauge",
                    "1 when the last Redis write succeeded.",
                    float(ev.connected),
                ),
            }
        model = scorer.store.current
        info = {"version": model.version} if model else {}
        return PlainTextResponse(
            scorer.metrics.render(gauges, info), media_type="text/plain; version=0.0.4"
        )

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> Response:
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
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
        swapped = await asyncio.to_thread(scorer.store.refresh, True)
        model = scorer.store.current
        return _json(
            {
                "reloaded": swapped,
                "model_version": model.version if model else None,
                "last_model_error": scorer.store.last_error,
            }
        )

    _add_body_schemas(app, RankRequest, FeedbackRequest)
    return app


_COMPONENTS = "#/components/schemas/{model}"


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that parses its body
    itself (the size limit and the columnar fast path need the raw bytes)."""
    ref = {"$ref": _COMPONENTS.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _add_body_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put the body models (and the models they nest) into ``components/schemas``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=_COMPONENTS)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several workers read their settings from XMTF_*;
    each worker process configures its own logging)."""
    settings = ScorerSettings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
