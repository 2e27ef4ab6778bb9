"""What one scorer application holds, as ``app.state.scorer``: :class:`ScorerState`.

Built by :func:`scorer.app.create_app` from the settings; the lifespan starts and stops its
background parts (model refresh, ``CURRENT`` poller, event logger) and the routes
(:mod:`scorer.routes`) read it from ``request.app.state.scorer``.
"""

from __future__ import annotations

import asyncio
import logging
import random

import numpy as np
from starlette.background import BackgroundTask, BackgroundTasks

from scorer.errors import HTTPError
from scorer.eventlog import EventLogger
from scorer.experiment import ExperimentStore, LiveExperiment, ShadowStats, compare_shadow
from scorer.metrics import Metrics
from scorer.model import LoadedModel, ModelStore
from scorer.parsing import Limits, RankInput
from scorer.ranker import Ranker, RankResult
from scorer.settings import ScorerSettings

log = logging.getLogger("scorer")


class ScorerState:
    """Settings, model store, ranker, input limits, metrics and event logger of one app."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_dir)
        self.experiments = ExperimentStore(settings.model_dir, self.store)
        self.shadow_stats = ShadowStats()
        self._sample = random.Random(settings.seed).random  # shadow sampling
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

    def refresh_models(self, force: bool = False) -> bool:
        """Follow ``CURRENT``, then EXPERIMENT.json (blocking: run it in a thread)."""
        swapped = self.store.refresh(force)
        try:
            self.experiments.refresh(force)
        except Exception:  # an experiment must never stop CURRENT from being followed
            log.exception("experiment refresh failed")
        return swapped

    async def poll_current(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await asyncio.to_thread(self.refresh_models)
            except Exception:  # keep polling whatever happened
                log.exception("model refresh failed")

    def after_response(
        self, live: LiveExperiment, req: RankInput, result: RankResult
    ) -> BackgroundTask | None:
        """The background work of a request served during an experiment: encoding its events,
        and for a sampled share the shadow's scoring (both after the response is sent)."""
        shadow = live.shadow
        if shadow is None or self._sample() >= live.shadow_rate:
            return self.encode_events
        tasks = BackgroundTasks()
        if self.encode_events is not None:
            tasks.tasks.append(self.encode_events)
        tasks.add_task(compare_shadow, shadow, req, result, self.shadow_stats)
        return tasks

    def model_or_503(self) -> LoadedModel:
        model = self.store.current
        if model is None:
            raise HTTPError(status=503, code="not_ready", message="no model is loaded yet")
        return model
