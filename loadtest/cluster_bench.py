"""``make bench`` (last line): /v1/rank latency with session logging to one Redis against
logging to a Redis Cluster (3 masters + 3 replicas on loopback, 4 event shards).

Both scorers (one worker each, K = 6, state_dim 64, N = 500) run side by side; rank requests at
concurrency 1 alternate between them in rounds, so drift in the machine's load hits both alike.
Prints one Markdown line per setup (p50, p99, events logged / dropped) and the p50 difference.
``--quick`` for development.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from loadtest.bodies import make_bodies
from loadtest.build_models import STATE_DIM, task_names
from loadtest.client import encode_request, run_sync
from trainer.harness import HOST, ScorerProcess, redis_cluster, redis_server, running_scorer


def _event_log(s: ScorerProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"{s.base}/readyz", timeout=5) as r:
        state: dict[str, object] = json.loads(r.read())["event_log"]
        return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    per_round, rounds = (200, 3) if args.quick else (600, 5)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "loadtest.build_models", str(work / "models"), "6"], check=True
        )
        model_dir = work / "models" / "k6"
        bodies = make_bodies(500, task_names(6), STATE_DIM)
        with redis_server(work) as single, redis_cluster(work / "cluster") as cluster:
            one = ScorerProcess(model_dir, single.url, logfile=work / "one.log")
            env = {"XMTF_REDIS_CLUSTER": "true", "XMTF_EVENT_SHARDS": "4"}
            many = ScorerProcess(model_dir, cluster.url, env=env, logfile=work / "cl.log")
            with running_scorer(one), running_scorer(many):
                setups = {"one Redis": one, "Redis Cluster 3+3, 4 shards": many}
                reqs = {
                    name: [encode_request(HOST, s.port, "/v1/rank", b) for b in bodies]
                    for name, s in setups.items()
                }
                lat: dict[str, list[np.ndarray]] = {name: [] for name in setups}
                errors = dict.fromkeys(setups, 0)
                for name, s in setups.items():
                    run_sync(HOST, s.port, reqs[name], 300)  # warm-up
                for _ in range(rounds):
                    for name, s in setups.items():
                        r = run_sync(HOST, s.port, reqs[name], per_round)
                        lat[name].append(r.latencies_ns)
                        errors[name] += r.errors
                time.sleep(0.5)  # let the writers flush
                p50 = {}
                print("| event log | rank p50 ms | rank p99 ms | errors | logged | dropped |")
                print("|---|---|---|---|---|---|")
                for name, s in setups.items():
                    ns = np.concatenate(lat[name]) / 1e6
                    p50[name] = float(np.percentile(ns, 50))
                    ev = _event_log(s)
                    print(
                        f"| {name} | {p50[name]:.3f} | {np.percentile(ns, 99):.3f} | "
                        f"{errors[name]} | {ev['logged']} | {ev['dropped']} |"
                    )
                a, b = p50.values()
                print(f"cluster logging: rank p50 {b - a:+.3f} ms ({(b / a - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
