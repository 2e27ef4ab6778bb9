"""What ``bench_train``'s scenario needs from ``trainer/demo.py``: a real scorer subprocess and
simulated users over HTTP. A copy for now; the shared harness (``trainer/harness.py``) replaces
it when it lands."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import redis

from trainer.sim import Observation, StepResult, UserSimulator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_scorer(
    model_dir: Path, redis_url: str, stream: str, env: dict[str, str]
) -> Iterator[str]:
    port = _free_port()
    env = {**env, "XMTF_POLL_INTERVAL_S": "0.5", "XMTF_EXPLORATION_SCALE": "0.1"}
    cmd = [sys.executable, "-m", "scorer.cli", "--model-dir", str(model_dir)]
    cmd += ["--redis-url", redis_url, "--events-stream", stream, "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise SystemExit("the scorer exited during start-up")
            time.sleep(0.1)
        else:
            raise SystemExit("the scorer did not become ready within 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class Phase:
    returns: np.ndarray
    lengths: np.ndarray
    requests: int
    seconds: float


def _rank_body(
    tag: str, seed: int, u: int, step: int, obs: Observation, names: tuple[str, ...], top_n: int
) -> dict:
    return {
        "request_id": f"{tag}-{u}-{step}",
        "session_id": f"{tag}-{u}",
        "user_id": f"user-{seed}-{u}",
        "user_state": obs.state[u].tolist(),
        "item_ids": [str(x) for x in obs.item_ids[u]],
        "predictions": {k: obs.predictions[u, i].tolist() for i, k in enumerate(names)},
        "top_n": top_n,
    }


def _feedback_body(
    rank_body: dict, shown_ids: list[str], res: StepResult, u: int, names: tuple[str, ...]
) -> dict:
    items = [
        {
            "item_id": item,
            "watch_time": float(res.watch_time[u, j]),
            "signals": {k: int(res.signals[u, j, i]) for i, k in enumerate(names)},
        }
        for j, item in enumerate(shown_ids)
    ]
    ids = {k: rank_body[k] for k in ("request_id", "session_id", "user_id")}
    return {**ids, "items": items, "session_end": bool(res.done[u])}


def drive_users(base: str, sim: UserSimulator, n_sessions: int, seed: int, tag: str) -> Phase:
    """Run ``n_sessions`` simulated sessions through ``/v1/rank`` and ``/v1/feedback``."""
    t0 = time.perf_counter()
    obs = sim.reset(n_sessions, seed=seed, auto_reset=False)
    names, top_n = sim.tasks, sim.config.top_n
    returns = np.zeros(n_sessions)
    lengths = np.zeros(n_sessions, int)
    requests = 0
    with httpx.Client(base_url=base, timeout=10) as client, ThreadPoolExecutor(4) as pool:

        def post(path: str, body: dict) -> dict:
            r = client.post(path, json=body)
            r.raise_for_status()
            return r.json()

        while obs.active.any():
            users = [int(u) for u in np.flatnonzero(obs.active)]
            bodies = [_rank_body(tag, seed, u, lengths[u], obs, names, top_n) for u in users]
            replies = list(pool.map(lambda b: post("/v1/rank", b), bodies))
            shown = np.tile(np.arange(top_n), (n_sessions, 1))
            shown_ids: dict[int, list[str]] = {}
            for u, body, reply in zip(users, bodies, replies, strict=True):
                index = {item: i for i, item in enumerate(body["item_ids"])}
                shown_ids[u] = [it["item_id"] for it in reply["items"]]
                shown[u] = [index[item] for item in shown_ids[u]]
            requests += len(users)
            res = sim.step(shown)
            feedback = [
                _feedback_body(b, shown_ids[u], res, u, names)
                for u, b in zip(users, bodies, strict=True)
            ]
            list(pool.map(lambda b: post("/v1/feedback", b), feedback))
            returns[users] += res.reward[users]
            lengths[users] += 1
            obs = res.observation
    return Phase(returns, lengths, requests, time.perf_counter() - t0)


def wait_for_version(base: str, version: str, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if httpx.get(f"{base}/v1/model", timeout=2).json().get("version") == version:
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise SystemExit(f"the scorer did not pick up version {version} within {timeout} s")


def stream_length(url: str, stream: str) -> int:
    return int(redis.Redis.from_url(url).xlen(stream))
