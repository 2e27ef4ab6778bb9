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

from scorer.clusterlog import ClusterEventLogger
from scorer.errors import HTTPError
from scorer.eventlog import EventLogger
from scorer.experiment import ExperimentStore, LiveExperiment, ShadowStats, compare_shadow
from scorer.metrics import Metrics
from scorer.model import LoadedModel, ModelStore
from scorer.parsing import Limits, RankInput
from scorer.prom import MultiprocMetrics, multiprocess_enabled
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
        # Several workers share their metrics through prometheus-client's files (scorer.prom).
        self.metrics: Metrics | MultiprocMetrics = (
            MultiprocMetrics() if multiprocess_enabled() else Metrics()
        )
        self.limits = Limits(settings.max_candidates, settings.max_top_n)
        self.ranker = Ranker(settings.exploration_scale, np.random.default_rng(settings.seed))
        self.events: EventLogger | None = None
        # Encoding the session log's events runs after the response has been sent (the client
        # is reading it meanwhile); one task object serves every request that logs.
        self.encode_events: BackgroundTask | None = None
        if settings.log_events:
            logger = ClusterEventLogger if settings.redis_cluster else EventLogger
            self.events = logger(
                settings.redis_url,
                settings.events_stream,
                maxlen=settings.events_maxlen,
                buffer_size=settings.event_buffer_size,
                batch_size=settings.event_batch_size,
                flush_interval=settings.event_flush_interval_s,
                timeout=settings.redis_timeout_s,
                backoff_max=settings.redis_backoff_max_s,
                log_max_candidates=settings.log_max_candidates,
                shards=settings.event_shards,
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

    async def sync_metrics(self, interval: float = 1.0) -> None:
        """Several workers: copy this worker's own counters into the shared metric files."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.metrics.sync(self.gauges())
            except Exception:
                log.exception("metrics sync failed")

    def gauges(self) -> dict[str, tuple[str, str, float]]:
        """The values other objects own, for ``/metrics``: name -> (type, help, value)."""
        ev = self.events
        gauges: dict[str, tuple[str, str, float]] = {
            "xmtf_model_loaded": (
                "gauge",
                "1 when a model is served.",
                float(self.store.current is not None),
            ),
            "xmtf_model_reloads_total": (
                "counter",
                "Model versions swapped in.",
                self.store.reloads,
            ),
            "xmtf_model_refusals_total": (
                "counter",
                "Model versions refused.",
                self.store.refusals,
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
        return gauges

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
