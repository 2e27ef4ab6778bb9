"""``make demo``: the whole loop on one machine, with real parts.

init a model -> start the scorer -> simulated users rank and give feedback over HTTP -> the
scorer logs sessions to a Redis Stream -> ``xmtf-train consume --until-idle`` trains and
publishes a version -> the scorer picks it up -> the same users again -> summary.
Uses ``XMTF_REDIS_URL`` (default the local Redis); starts a private ``redis-server`` if none
answers. Everything it starts, it stops; the stream keys it wrote are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
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

from trainer import harness
from trainer import stats as stats_lib
from trainer.sim import Observation, SimConfig, StepResult, UserSimulator

log = logging.getLogger("xmtf-demo")
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def reachable_redis(url: str) -> Iterator[str]:
    """Yield a Redis URL that answers: ``url`` if it does, else a private redis-server."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    try:
        harness.redis_server_executable()
    except harness.HarnessError:
        raise SystemExit(f"no Redis at {url} and redis-server is not installed") from None
    server = harness.RedisServer()
    log.info("no Redis at %s: starting redis-server on port %d", url, server.port)
    server.start()
    try:
        yield server.url
    finally:
        server.stop(graceful=True)


@contextlib.contextmanager
def running_scorer(
    model_dir: Path,
    redis_url: str,
    stream: str,
    env: dict[str, str] | None = None,
    exploration: float = 0.1,
) -> Iterator[str]:
    scorer = harness.ScorerProcess(
        model_dir,
        redis_url,
        env={
            **(env or {}),
            "XMTF_POLL_INTERVAL_S": "0.5",
            "XMTF_EXPLORATION_SCALE": str(exploration),
        },
        log_level="warning",
        args=["--events-stream", stream],
        stop_timeout=15.0,
    )
    try:
        scorer.start(timeout=60)
    except harness.HarnessError as exc:
        scorer.stop()
        raise SystemExit(f"the scorer did not start: {exc}") from None
    try:
        yield scorer.base
    finally:
        scorer.stop()


@dataclass
class Phase:
    returns: np.ndarray
    lengths: np.ndarray
    requests: int
    versions: set[str]
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
    versions: set[str] = set()
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
                versions.add(reply["model_version"])
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
    return Phase(returns, lengths, requests, versions, time.perf_counter() - t0)


def wait_for_version(base: str, version: str, timeout: float = 30) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if httpx.get(f"{base}/v1/model", timeout=2).json().get("version") == version:
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise SystemExit(f"the scorer did not pick up version {version} within {timeout} s")


def run_command(cmd: list[str]) -> str:
    """Run an xmtf CLI command; the last line of its standard output (its JSON answer)."""
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return done.stdout.strip().splitlines()[-1]


def init_model(model_dir: Path, sim: UserSimulator, seed: int, config: Path | None = None) -> dict:
    """``xmtf-train init``: a first, untrained version for ``sim``'s state and tasks
    (``config``: its ``--config``, the learner's TSHConfig overrides)."""
    cmd = [str(BIN / "xmtf-train"), "init", "--model-dir", str(model_dir), "--state-dim",
           str(sim.state_dim), "--tasks", ",".join(sim.tasks), "--seed", str(seed)]  # fmt: skip
    if config is not None:
        cmd += ["--config", str(config)]
    return json.loads(run_command(cmd))


def consume_stream(model_dir: Path, redis_url: str, stream: str, publish: str = "current") -> dict:
    """``xmtf-train consume --until-idle`` on ``stream``; its JSON stats."""
    cmd = [str(BIN / "xmtf-train"), "consume", "--model-dir", str(model_dir), "--redis-url",
           redis_url, "--events-stream", stream, "--until-idle", "--publish", publish]  # fmt: skip
    return json.loads(run_command(cmd))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xmtf-demo", description=__doc__)
    p.add_argument("--sessions", type=int, default=400, help="simulated sessions per phase")
    p.add_argument("--workdir", type=Path, default=Path("demo-run"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", type=Path, default=None, help="init's --config (TSH overrides)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    t_start = time.perf_counter()
    shutil.rmtree(args.workdir, ignore_errors=True)
    model_dir = args.workdir / "models"
    sim = UserSimulator(SimConfig(seed=args.seed))
    url = os.environ.get("XMTF_REDIS_URL", "redis://127.0.0.1:6379/0")
    stream = f"xmtf:demo:{secrets.token_hex(4)}"
    with reachable_redis(url) as redis_url:
        client = redis.Redis.from_url(redis_url)
        try:
            init = init_model(model_dir, sim, args.seed, args.config)
            log.info("initial version %s", init["version"])
            with running_scorer(model_dir, redis_url, stream) as base:
                before = drive_users(base, sim, args.sessions, seed=args.seed, tag="before")
                log.info("phase 1: %d requests in %.1fs", before.requests, before.seconds)
                time.sleep(0.5)  # let the scorer's logger flush
                t0 = time.perf_counter()
                stats = consume_stream(model_dir, redis_url, stream)
                consume_s = time.perf_counter() - t0
                # an export the checks refused leaves the initial version serving
                new_version = (stats["exports"] or [init["version"]])[-1]
                swap_s = wait_for_version(base, new_version)
                after = drive_users(base, sim, args.sessions, seed=args.seed, tag="after")
                logged = client.xlen(stream)
        finally:
            client.delete(stream, f"{stream}:dead", f"{stream}:trained")
    _print_summary(
        init["version"],
        new_version,
        before,
        after,
        stats,
        logged,
        consume_s,
        swap_s,
        time.perf_counter() - t_start,
    )
    return 0


def _print_summary(
    v0: str,
    v1: str,
    before: Phase,
    after: Phase,
    stats: dict,
    logged: int,
    consume_s: float,
    swap_s: float,
    total_s: float,
) -> None:
    def row(name: str, ph: Phase, version: str) -> str:
        sem = ph.returns.std() / np.sqrt(len(ph.returns))
        return (
            f"{name:<8}{version:<24}{ph.returns.mean():>10.1f} ± {sem:<6.1f}"
            f"{ph.lengths.mean():>10.2f}{ph.requests:>10d}"
        )

    change = stats_lib.paired_difference(after.returns, before.returns)
    lines = [
        "",
        "xmtf demo summary",
        f"{'phase':<8}{'model version':<24}{'watch time/session (± s.e.)':>27}"
        f"{'length':>8}{'requests':>10}",
        row("before", before, v0),
        row("after", after, v1),
        "",
        f"events logged to the stream: {logged}; consumed {stats['events']}, transitions trained "
        f"{stats['transitions']}, gradient updates {stats['updates']}, "
        f"dead letters {stats['dead_letters']}",
        f"consume + export took {consume_s:.1f}s; "
        + (
            f"the scorer served the new version {swap_s:.1f}s later"
            if v1 != v0
            else "no new version: " + "; ".join(stats.get("refused_exports", ["nothing exported"]))
        ),
        f"change in watch time per session: {after.returns.mean() - before.returns.mean():+.1f}s "
        f"({(after.returns.mean() / before.returns.mean() - 1) * 100:+.1f}%), paired 95 % CI "
        f"[{change.lo:+.1f}, {change.hi:+.1f}] s (the same simulated users in both phases); "
        f"total demo time {total_s:.0f}s",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
