"""The scorer's HTTP application: ``create_app(settings)``.

It builds the app's :class:`~scorer.state.ScorerState` (``app.state.scorer``), the lifespan,
the latency middleware and the error handlers (every non-2xx answer has the SPEC's error body),
and includes the routers of :mod:`scorer.routes`. Lifecycle (as in Feast's feature server): the
lifespan loads the model (in a thread) and starts the event logger and the ``CURRENT`` poller;
``/readyz`` is 503 until a model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from scorer import routes
from scorer.errors import HTTPError, error_response
from scorer.logs import configure_logging
from scorer.metrics import Metrics
from scorer.prom import MultiprocMetrics
from scorer.settings import ScorerSettings
from scorer.state import ScorerState

log = logging.getLogger("scorer")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class LatencyMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): latency by route and status.

    The latency ends when the last byte of the response is handed to the server, not when the
    app returns: work a route does after its response (a background step) is not client time.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | MultiprocMetrics) -> None:
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


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model (in a thread), start the event logger and the ``CURRENT`` poller; stop
    them (the logger drains what it buffered) at shutdown."""
    scorer: ScorerState = app.state.scorer
    await asyncio.to_thread(scorer.refresh_models)
    if scorer.settings.gc_freeze:
        # Everything allocated so far (modules, FastAPI, ORT wrappers) lives as long as the
        # process: move it out of the collector's reach, so that a full collection only walks
        # recent objects (a multi-millisecond pause otherwise, every few thousand requests,
        # because logged events survive long enough to reach the old generation).
        gc.collect()
        gc.freeze()
    if scorer.events:
        scorer.events.start()
    tasks = [asyncio.create_task(scorer.poll_current(), name="xmtf-current-poller")]
    if isinstance(scorer.metrics, MultiprocMetrics):
        tasks.append(asyncio.create_task(scorer.sync_metrics(), name="xmtf-metrics-sync"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if scorer.events:
            await scorer.events.stop()
        scorer.metrics.sync(scorer.gauges())
        scorer.metrics.process_exit()


# ----------------------------------------------------------------------------- error handlers


async def scorer_error(request: Request, exc: HTTPError) -> Response:
    """An :class:`HTTPError` raised by a route: its status and error body, counted and logged."""
    routes.scorer_state(request).metrics.reject(exc.code)
    log.info(
        "rejected %s %s: %s",
        request.method,
        request.url.path,
        exc.message,
        extra={"status": exc.status, "code": exc.code, "field": exc.field},
    )
    return error_response(exc.status, exc.code, exc.message, exc.field)


async def validation_error(_: Request, exc: RequestValidationError) -> Response:
    err = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    return error_response(422, "invalid_input", err.get("msg", "invalid input"), field)


async def starlette_error(_: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own answers (unknown route, wrong method) in the SPEC's error body."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def internal_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal", "internal error")


EXCEPTION_HANDLERS: dict[
    int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]
] = {
    HTTPError: scorer_error,
    RequestValidationError: validation_error,
    StarletteHTTPException: starlette_error,
    Exception: internal_error,
}


# ----------------------------------------------------------------------------- the app


def create_app(settings: ScorerSettings) -> FastAPI:
    """Build the scorer application for ``settings``."""
    app = FastAPI(
        title="xmtf scorer",
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.scorer = scorer = ScorerState(settings)
    app.add_middleware(LatencyMiddleware, metrics=scorer.metrics)
    app.include_router(routes.router)
    if settings.bench_echo:
        app.include_router(routes.bench_router)
    _add_body_schemas(app, *routes.BODY_MODELS)
    return app


def _add_body_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put the body models (and the models they nest) into ``components/schemas``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=routes.COMPONENTS)
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
