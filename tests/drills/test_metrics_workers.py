"""``/metrics`` under two uvicorn workers aggregates both (prometheus-client multiprocess mode):
the request counter equals the requests sent, whichever worker answers the scrape."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.conftest import RedisServer
from tests.drills.scorer_process import rank_body
from tests.helpers import wait_until
from trainer.harness import ScorerProcess, running_scorer


def rank_count(text: str) -> float:
    """``xmtf_request_duration_seconds_count`` of ``/v1/rank`` answered 200."""
    total = 0.0
    for line in text.splitlines():
        rank = 'route="/v1/rank"' in line and 'status="200"' in line
        if line.startswith("xmtf_request_duration_seconds_count{") and rank:
            total += float(line.rsplit(" ", 1)[1])
    return total


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_two_workers_count_every_request(
    model_dir: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    scorer = ScorerProcess(model_dir, redis_server.url, workers=2, logfile=tmp_path / "log")
    n = 120
    with running_scorer(scorer):
        wait_until(lambda: len(scorer.pids()) == 2, timeout=30)
        # fresh connections spread the requests over both workers
        for i in range(n):
            with httpx.Client(base_url=scorer.base, timeout=5) as client:
                assert client.post("/v1/rank", json=rank_body(20, seed=i)).status_code == 200
        # one bad request: the rejection counter is shared too
        with httpx.Client(base_url=scorer.base, timeout=5) as client:
            assert client.post("/v1/rank", json={"top_n": 1}).status_code == 422
        texts = []
        for _ in range(12):  # fresh connections: scrapes land on both workers
            with httpx.Client(base_url=scorer.base, timeout=5) as client:
                texts.append(client.get("/metrics").text)
        for text in texts:
            assert rank_count(text) == n, text
            assert sample(text, "xmtf_rank_candidates_count") == n
            assert 'xmtf_rejections_total{code="invalid_input"} 1.0' in text
            assert "xmtf_model_info{" in text
            assert sample(text, "xmtf_model_loaded") == 1

        # the owned counters are synced by each worker once a second: every event counted once
        def logged() -> bool:
            with httpx.Client(base_url=scorer.base, timeout=5) as client:
                return sample(client.get("/metrics").text, "xmtf_events_logged_total") == n

        wait_until(logged, timeout=10)
