"""Simulator throughput: user-requests per second of :class:`trainer.sim.UserSimulator`.

``python -m loadtest.simbench`` (``make bench-sim``) steps ``n_users`` concurrent simulated users
(auto-reset, so the batch stays full) ranking by the plain sum of the predictions, for each
population available (synthetic always; the real KuaiRand-Pure features when
``$XMTF_KUAIRAND_DIR`` names them), and prints a table of user-requests per second. One
user-request = one user's request answered: candidates drawn, predictions made, the top items
shown, feedback, watch time, satisfaction and exit computed. The policy's own cost (a sum) is
included, so the figure is what a training loop gets before its networks.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from trainer.sim import SimConfig, UserSimulator
from trainer.sim.kuairand import ENV_DIR

TARGET = 20_000  # user-requests per second on the 2-core reference machine (issue 3)


@dataclass(frozen=True)
class SimBenchRow:
    population: str
    n_users: int
    steps: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.n_users * self.steps / self.seconds


def measure(config: SimConfig, n_users: int, steps: int, warmup: int = 3) -> SimBenchRow:
    """Step ``n_users`` auto-reset users ``steps`` times (after ``warmup`` untimed steps)."""
    sim = UserSimulator(config)
    obs = sim.reset(n_users, seed=1, auto_reset=True)
    for _ in range(warmup):
        obs = sim.step_scores(obs.predictions.sum(axis=1)).observation
    t0 = time.perf_counter()
    for _ in range(steps):
        obs = sim.step_scores(obs.predictions.sum(axis=1)).observation
    return SimBenchRow(sim.population, n_users, steps, time.perf_counter() - t0)


def render(rows: list[SimBenchRow], config: SimConfig) -> str:
    lines = [
        f"Simulator throughput (n_candidates = {config.n_candidates}, top_n = {config.top_n}, "
        f"plain-sum policy; target ≥ {TARGET:,} user-requests/s)",
        "",
        "| population | concurrent users | steps | user-requests/s | vs target |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.population} | {r.n_users} | {r.steps} | {r.rate:,.0f} | {r.rate / TARGET:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.simbench", description=__doc__)
    p.add_argument("--users", default="1024,4096", help="comma-separated concurrent users")
    p.add_argument("--steps", type=int, default=30, help="timed steps per row")
    args = p.parse_args(argv)
    users = [int(u) for u in str(args.users).split(",") if u.strip()]
    if not users or min(users) < 1 or args.steps < 1:
        p.error("--users needs positive integers and --steps must be >= 1")
    configs = [SimConfig(data_dir="")]  # "": synthetic, whatever the environment says
    if os.environ.get(ENV_DIR):
        configs.append(SimConfig())  # None: the real features from $XMTF_KUAIRAND_DIR
    rows = [measure(c, n, args.steps) for c in configs for n in users]
    print(render(rows, configs[0]))
    return 0 if np.isfinite([r.rate for r in rows]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
