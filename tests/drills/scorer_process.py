"""Helpers for drills and fuzzing against a real ``xmtf-scorer`` process (uvicorn).

``ScorerProcess`` is the harness's (``trainer/harness.py``: the installed console script in its
own session, ready on ``/readyz``) with the drills' settings; ``LoadLoop`` keeps a few
keep-alive ``httpx.Client`` threads calling ``/v1/rank`` with realistic bodies and records every
request (start time, latency, status, ``model_version``), so that a drill can look at windows of
the run.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from tests import helpers
from tests.helpers import wait_until as _wait_until
from trainer import harness

TASKS = ("click", "like", "skip")  # the ``exported_model`` fixture's tasks
STATE_DIM = 5


def rank_body(
    n: int,
    seed: int,
    tasks: tuple[str, ...] = TASKS,
    state_dim: int = STATE_DIM,
    top_n: int = 10,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "request_id": f"r-{seed}",
        "session_id": f"s-{seed % 97}",
        "user_id": f"u-{seed % 31}",
        "user_state": rng.normal(size=state_dim).round(5).tolist(),
        "item_ids": [f"video-{seed}-{j}" for j in range(n)],
        "predictions": {t: rng.random(n).round(6).tolist() for t in tasks},
        "top_n": top_n,
    }


#: The drills wait longer by default: they run against real processes under load.
wait_until = functools.partial(_wait_until, timeout=15.0)


def server_errors(metrics_text: str) -> list[str]:
    """Latency-histogram series that ended in a 5xx other than the documented 503."""
    return [
        line
        for line in metrics_text.splitlines()
        if line.startswith("xmtf_request_duration_seconds_count")
        and 'status="5' in line
        and 'status="503"' not in line
    ]


# drills copy one exported version in under several names
publish = functools.partial(helpers.publish, match_manifest=True)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


#: What the drills' scorers run with unless a drill says otherwise.
DRILL_ENV = {
    "XMTF_POLL_INTERVAL_S": "0.1",
    "XMTF_EVENTS_STREAM": "xmtf:drill-events",
    "XMTF_REDIS_BACKOFF_MAX_S": "0.2",
}


@dataclass
class ScorerProcess(harness.ScorerProcess):
    """The harness's ``xmtf-scorer`` subprocess with the drills' settings (:data:`DRILL_ENV`,
    fast ``CURRENT`` polls and Redis back-off) and its RSS."""

    def __post_init__(self) -> None:
        self.env = {**DRILL_ENV, **self.env}

    def rss_mib(self) -> float:
        return sum(_rss_kib(p) for p in self.pids()) / 1024


@dataclass
class Sample:
    start: float  # time.monotonic() when the request was sent
    latency: float
    status: int  # 0: transport error
    version: str | None
    error: str | None = None


class LoadLoop:
    """``threads`` keep-alive clients calling ``/v1/rank`` until stopped, ``max_requests`` or
    ``deadline_s``; bodies N = 100..500 are serialised once, up front."""

    def __init__(
        self,
        base: str,
        threads: int = 3,
        max_requests: int = 20_000,
        deadline_s: float = 60.0,
        n_bodies: int = 32,
        pause_s: float = 0.0,
    ) -> None:
        rng = np.random.default_rng(0)
        self.bodies = [
            orjson.dumps(rank_body(int(rng.integers(100, 501)), seed=i)) for i in range(n_bodies)
        ]
        self.base = base
        self.n_threads = threads
        self.max_requests = max_requests
        self.deadline_s = deadline_s
        self.pause_s = pause_s
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent = 0

    def _worker(self, idx: int, until: float) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i = idx
            while not self._stop.is_set() and time.monotonic() < until:
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                body = self.bodies[i % len(self.bodies)]
                i += self.n_threads
                t0 = time.monotonic()
                try:
                    resp = client.post("/v1/rank", content=body, headers=headers)
                    dt = time.monotonic() - t0
                    version = resp.json().get("model_version") if resp.status_code == 200 else None
                    err = None if resp.status_code == 200 else resp.text[:300]
                    sample = Sample(t0, dt, resp.status_code, version, err)
                except httpx.HTTPError as exc:
                    sample = Sample(t0, time.monotonic() - t0, 0, None, repr(exc))
                with self._lock:
                    self.samples.append(sample)
                if self.pause_s:
                    time.sleep(self.pause_s)

    def start(self) -> LoadLoop:
        until = time.monotonic() + self.deadline_s
        self._threads = [
            threading.Thread(target=self._worker, args=(i, until), daemon=True)
            for i in range(self.n_threads)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> LoadLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def count(self) -> int:
        with self._lock:
            return len(self.samples)


def stats(samples: list[Sample]) -> dict[str, float]:
    lat = np.array([s.latency for s in samples]) if samples else np.zeros(1)
    return {
        "sent": len(samples),
        "failed": sum(1 for s in samples if s.status != 200),
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "max_ms": float(lat.max() * 1000),
    }


def window(samples: list[Sample], t0: float, t1: float) -> list[Sample]:
    return [s for s in samples if t0 <= s.start < t1]


def failures(samples: list[Sample]) -> list[str]:
    return [f"{s.status}: {s.error}" for s in samples if s.status != 200][:5]


@contextlib.contextmanager
def scorer_with_redis(model_dir: Path, workdir: Path, stream: str) -> Iterator[ScorerProcess]:
    """A throwaway ``redis-server`` and a scorer process logging to ``stream`` on it."""
    with harness.redis_server(workdir, graceful=False) as server:
        scorer = ScorerProcess(model_dir, server.url, env={"XMTF_EVENTS_STREAM": stream})
        with harness.running_scorer(scorer):
            yield scorer
