"""What one scorer application holds, as ``app.state.scorer``: :class:`ScorerState`.

Built by :func:`scorer.app.create_app` from the settings; the lifespan starts and stops its
background parts (model refresh, ``CURRENT`` poller, event logger) and the routes
(:mod:`scorer.routes`) read it from ``request.app.state.scorer``.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from starlette.background import BackgroundTask

from scorer.errors import HTTPError
from scorer.eventlog import EventLogger
from scorer.metrics import Metrics
from scorer.model import LoadedModel, ModelStore
from scorer.parsing import Limits
from scorer.ranker import Ranker
from scorer.settings import ScorerSettings

log = logging.getLogger("scorer")


class ScorerState:
    """Settings, model store, ranker, input limits, metrics and event logger of one app."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_dir)
        self.metrics = Metrics()
        self.limits = Limits(settings.max_candidates, settings.max_top_n)
        self.ranker = Ranker(settings.exploration_scale, np.random.default_rng(settings.seed))
        self.events: EventLogger | None = None
        # Encoding the session log's events runs after the response has been sent (the client
        # is reading it meanwhile); one task object serves every request that logs.
        self.encode_events: BackgroundTask | None = None
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
            self.encode_events = BackgroundTask(self.events.encode_pending)

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
