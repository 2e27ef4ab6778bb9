"""Metrics shared by several uvicorn workers: ``prometheus-client`` in multiprocess mode.

With ``--workers W > 1`` the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary folder
(removed when it exits) before the workers start; every worker then records into memory-mapped
files there, and a scrape, whichever worker takes it, aggregates all of them: the request
counter and the latency histogram cover every worker. One worker keeps the in-process registry
of :mod:`scorer.metrics` (no files, cheaper).

:class:`MultiprocMetrics` has the interface of :class:`scorer.metrics.Metrics` (``latency``,
``candidates``, ``reject``, ``render``). The values other objects own (events logged, model
reloads, ...) are per process: :meth:`MultiprocMetrics.sync` copies them into the shared files
(counters as deltas, gauges per process with a multiprocess mode that combines them), called
once a second by each worker and by the worker that answers a scrape. ``xmtf_model_info`` and
the experiment/shadow lines stay those of the answering worker (every worker follows the same
``CURRENT`` and ``EXPERIMENT.json``).

Cost on the rank path (two observations per request): measured in ``tests/scorer/test_prom.py``
and the README (a few microseconds more than the in-process registry).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from scorer.metrics import CANDIDATE_BUCKETS, LATENCY_BUCKETS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# How each per-process gauge combines over the live workers.
GaugeMode = Literal["livesum", "livemin"]
GAUGE_MODES: dict[str, GaugeMode] = {
    "xmtf_events_buffered": "livesum",
    "xmtf_redis_connected": "livemin",
    "xmtf_model_loaded": "livemin",
}


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _Hist:
    """A prometheus histogram with the ``observe(value, **labels)`` call of ours; the labelled
    children are cached (``labels()`` takes a lock and builds a key each time)."""

    def __init__(
        self, name: str, help_text: str, buckets: Iterable[float], labels: tuple[str, ...]
    ):
        self._h = Histogram(name, help_text, labels, buckets=tuple(buckets), registry=None)
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, value: float, **labels: str) -> None:
        if not labels:
            self._h.observe(value)
            return
        key = tuple(labels.values())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._h.labels(**labels)
        child.observe(value)


class MultiprocMetrics:
    """Scorer metrics of one worker among several (see the module docstring)."""

    def __init__(self) -> None:
        self.latency = _Hist(
            "xmtf_request_duration_seconds",
            "Request latency by route and status.",
            LATENCY_BUCKETS,
            ("route", "status"),
        )
        self.candidates = _Hist(
            "xmtf_rank_candidates", "Candidates per /v1/rank request.", CANDIDATE_BUCKETS, ()
        )
        self._rejections = Counter(
            "xmtf_rejections", "Rejected requests by error code.", ["code"], registry=None
        )
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._synced: dict[str, float] = {}

    def reject(self, code: str) -> None:
        self._rejections.labels(code=code).inc()

    def sync(self, gauges: dict[str, tuple[str, str, float]]) -> None:
        """Copy this process's owned values into the shared files."""
        for name, (kind, help_text, value) in gauges.items():
            if kind == "counter":
                counter = self._counters.get(name)
                if counter is None:
                    base = name.removesuffix("_total")
                    counter = self._counters[name] = Counter(base, help_text, registry=None)
                delta = value - self._synced.get(name, 0.0)
                if delta > 0:
                    counter.inc(delta)
                    self._synced[name] = value
            else:
                gauge = self._gauges.get(name)
                if gauge is None:
                    mode: GaugeMode = GAUGE_MODES.get(name, "livesum")
                    gauge = self._gauges[name] = Gauge(
                        name, help_text, registry=None, multiprocess_mode=mode
                    )
                gauge.set(value)

    def render(self, gauges: dict[str, tuple[str, str, float]], info: dict[str, str]) -> str:
        self.sync(gauges)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry).decode()
        if info:
            labels = ",".join(f'{k}="{v}"' for k, v in info.items())
            text += (
                "# HELP xmtf_model_info The served model version.\n"
                "# TYPE xmtf_model_info gauge\n"
                f"xmtf_model_info{{{labels}}} 1\n"
            )
        return text

    @staticmethod
    def process_exit() -> None:
        """Drop this worker's live gauges from the aggregate (its counters stay counted)."""
        multiprocess.mark_process_dead(os.getpid())
