"""Locust load test of ``/v1/rank`` with realistic bodies (K tasks, N candidates).

Headless, against a running scorer::

    locust -f loadtest/locustfile.py --headless -u 32 -r 32 -t 60s --host http://127.0.0.1:8000

``XMTF_LOAD_N`` (candidates, default 500) sets the body size; the task list and state_dim are
read from the scorer's ``/v1/model``. Locust rounds response times under 100 ms to whole
milliseconds: take precise percentiles from ``make bench`` instead.
"""

from __future__ import annotations

import os
import random
import uuid

from locust import FastHttpUser, task


class RankUser(FastHttpUser):
    def on_start(self) -> None:
        model = self.client.get("/v1/model").json()
        self.tasks_names = [t["name"] for t in model["tasks"]]
        self.state_dim = int(model["state_dim"])
        self.n = int(os.environ.get("XMTF_LOAD_N", "500"))

    @task
    def rank(self) -> None:
        n = self.n
        body = {
            "session_id": uuid.uuid4().hex,
            "user_id": f"u{random.randrange(100_000)}",
            "user_state": [random.gauss(0, 1) for _ in range(self.state_dim)],
            "item_ids": [f"item-{i}" for i in range(n)],
            "predictions": {k: [random.random() for _ in range(n)] for k in self.tasks_names},
            "top_n": 10,
        }
        self.client.post("/v1/rank", json=body, name="/v1/rank")
