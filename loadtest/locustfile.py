"""Locust load test of ``/v1/rank`` with realistic bodies (K tasks, N candidates).

Headless, against a running scorer::

    locust -f loadtest/locustfile.py --headless -u 32 -r 32 -t 60s --host http://127.0.0.1:8000

``XMTF_LOAD_N`` (candidates, default 500) sets the body size; the task list and state_dim are
read from the scorer's ``/v1/model``. Bodies are the benchmark's (``loadtest/bodies.py``),
built once per user and replayed as bytes, so the load generator spends its CPU on HTTP, not
on JSON. Locust rounds response times under 100 ms to whole milliseconds: take precise
percentiles from ``make bench`` instead.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, task

try:
    from loadtest.bodies import make_bodies
except ImportError:  # locust puts this file's directory, not the repository root, on sys.path
    from bodies import make_bodies  # type: ignore[no-redef]

HEADERS = {"content-type": "application/json"}


class RankUser(FastHttpUser):
    def on_start(self) -> None:
        model = self.client.get("/v1/model").json()
        tasks = [t["name"] for t in model["tasks"]]
        n = int(os.environ.get("XMTF_LOAD_N", "500"))
        self.bodies = make_bodies(
            n, tasks, int(model["state_dim"]), count=8, seed=random.randrange(1 << 30)
        )

    @task
    def rank(self) -> None:
        body = random.choice(self.bodies)
        with self.client.post(
            "/v1/rank", data=body, headers=HEADERS, name="/v1/rank", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
