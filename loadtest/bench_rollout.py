"""``make bench`` (rollout lines): what experiments, shadow scoring and explanations cost
``/v1/rank`` (SPEC §13; issue 14's bars: "10 % shadow: p99 within 10 %", "no experiment costs
nothing measurable").

What it does (everything it starts, it stops; it writes only ``--out`` and a temp dir):

1. builds two model versions with different weights (K = 6, state_dim 64; ``seed0`` is
   ``CURRENT``, ``seed1`` the other) with the trainer's export path, in a subprocess;
2. starts a throwaway ``redis-server`` and one ``xmtf-scorer`` (one worker, session logging on,
   the admin route on);
3. measures ``/v1/rank`` at concurrency 1 (N = 500 candidates, the bodies of ``make bench``) in
   five configurations, interleaved in rounds with the order rotated every round, so that drift
   in the machine's load hits all of them alike: (a) no experiment (no EXPERIMENT.json);
   (a') the same again, a second block of every round (an A/A pair: how far two measurements
   of one configuration differ in this run, the resolution of the comparison); (b) a two-arm
   50/50 experiment ``seed0`` / ``seed1``; (c) 10 % shadow scoring of ``seed1`` (SPEC §13 keeps
   the shadow in EXPERIMENT.json, so this is a one-arm experiment, control = ``CURRENT`` with
   share 1, and pays its routing too); (d) no experiment with ``"explain": true`` (its
   baseline, explain off, is (a)). Before each block the scorer is switched to the block's
   configuration (EXPERIMENT.json written or removed, ``POST /admin/reload``, the result checked
   on ``/v1/experiment``) and warmed up with unmeasured requests;
4. reports p50 / p99 / mean per configuration and each one's ratio to (a) with bootstrap 95 %
   intervals for the p50 and p99 ratios (rounds resampled, the same rounds for numerator and
   denominator, then requests within each round), the load average at the start, and whether
   each bar is met as measured; writes ``bench-rollout.md`` and ``bench-rollout.json``.

"No experiment" costs the request path one check, ``experiments.live is None``; it is timed
in process (``timeit``) and compared with the resolution of the HTTP comparison (the half-width
of the A/A pair's p50 interval): below it, the cost is not measurable here.

``python -m loadtest.bench_rollout --quick`` (a few hundred requests each) for development.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtest.bench import log, redis_server, scorer
from loadtest.bench import stats as latency_stats
from loadtest.bodies import make_bodies
from loadtest.build_models import STATE_DIM, task_names
from loadtest.client import encode_request, run_sync
from shared.experiment import Experiment, experiment_path, write_experiment
from trainer import harness
from trainer.harness import HOST, ScorerProcess

K, N = 6, 500
V1, V2 = "seed0", "seed1"
SHADOW_RATE = 0.1
BASE = "none"
TOKEN = "bench-rollout"


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    experiment: str | None  # the EXPERIMENT.json it runs under (a key of experiments())
    explain: bool = False


CONFIGS = (
    Config(BASE, "(a) no experiment", None),
    Config("aa", "(a') no experiment, a second block (A/A)", None),
    Config("two_arm", f"(b) two-arm 50/50 experiment, {V1} / {V2}", "two_arm"),
    Config("shadow", f"(c) {SHADOW_RATE * 100:.0f} % shadow scoring of {V2}", "shadow"),
    Config("explain", '(d) "explain": true, no experiment (vs off = (a))', None, explain=True),
)


def experiments() -> dict[str, Experiment]:
    """The EXPERIMENT.json files of (b) and (c)."""

    def arm(name: str, version: str, share: float) -> dict[str, Any]:
        return {"name": name, "version": version, "share": share}

    two = {"arms": [arm("control", V1, 0.5), arm("treatment", V2, 0.5)]}
    shadow = {
        "arms": [arm("control", V1, 1.0)],
        "shadow": {"version": V2, "sample_rate": SHADOW_RATE},
    }
    return {
        "two_arm": Experiment.model_validate({"name": "bench-ab", "salt": "bench", **two}),
        "shadow": Experiment.model_validate({"name": "bench-shadow", "salt": "bench", **shadow}),
    }


# ----------------------------------------------------------------------------- the scorer


def build_models(work: Path) -> Path:
    """``work/models/k6`` with versions seed0 (CURRENT) and seed1 (a subprocess: no torch here)."""
    log(f"building model versions {V1} and {V2} (trainer export, in a subprocess)")
    cmd = [sys.executable, "-m", "loadtest.build_models", str(work / "models"), str(K)]
    subprocess.run([*cmd, "--seeds", "0,1"], check=True, stdout=subprocess.DEVNULL)
    return work / "models" / f"k{K}"


@contextlib.contextmanager
def bench_scorer(models: Path, work: Path, redis_url: str) -> Iterator[ScorerProcess]:
    """One scorer on a copy of ``models`` (EXPERIMENT.json is written there), admin route on."""
    model_dir = work / "served"
    shutil.copytree(models, model_dir)
    experiment_path(model_dir).unlink(missing_ok=True)
    env = {"XMTF_ADMIN_TOKEN": TOKEN}
    with scorer(model_dir, redis_url, 1, work / "scorer.log", env) as s:
        yield s


class Switch:
    """Puts the scorer into a configuration's experiment and counts what it served there."""

    def __init__(self, s: ScorerProcess) -> None:
        self.s = s
        self.current: str | None = None
        self.requests: dict[str, dict[str, int]] = {}  # experiment -> arm -> requests

    def to(self, experiment: str | None) -> None:
        if experiment == self.current:
            return
        self._count()
        path = experiment_path(self.s.model_dir)
        if experiment is None:
            path.unlink(missing_ok=True)
        else:
            write_experiment(self.s.model_dir, experiments()[experiment])
        req = urllib.request.Request(
            f"{self.s.base}/admin/reload",
            method="POST",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
        state = self._state()
        want = experiments()[experiment].name if experiment else None
        running = state["config"]["name"] if state["running"] else None
        if running != want or state.get("refused"):
            raise SystemExit(f"bench_rollout: the scorer runs {state}, expected {want}")
        self.current = experiment

    def _state(self) -> dict[str, Any]:
        _, body = harness.get(f"{self.s.base}/v1/experiment")
        state: dict[str, Any] = json.loads(body)
        return state

    def _count(self) -> None:
        """Add the live experiment's per-arm counters (they restart with every switch)."""
        if self.current is None:
            return
        counts = self.requests.setdefault(self.current, {})
        for arm, n in self._state().get("requests", {}).items():
            counts[arm] = counts.get(arm, 0) + int(n)

    def finish(self) -> dict[str, Any]:
        """Per-arm requests of (b), shadow scorings of (c), warm-ups included."""
        self._count()
        self.current = None
        _, text = harness.get(f"{self.s.base}/metrics")
        values = {}
        for line in text.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in ("xmtf_shadow_scored_total", "xmtf_shadow_errors_total"):
                values[name] = float(value)
        return {
            "two_arm_requests": self.requests.get("two_arm", {}),
            "shadow_requests": sum(self.requests.get("shadow", {}).values()),
            "shadow_scored": values.get("xmtf_shadow_scored_total", 0.0),
            "shadow_errors": values.get("xmtf_shadow_errors_total", 0.0),
        }


def bodies(explain: bool) -> list[bytes]:
    """The ``make bench`` bodies at N = 500 (64 users, so both arms get some)."""
    raw = make_bodies(N, task_names(K), STATE_DIM, count=64)
    if not explain:
        return raw
    return [orjson.dumps({**orjson.loads(b), "explain": True}) for b in raw]


# ----------------------------------------------------------------------------- measuring


def measure(
    s: ScorerProcess, rounds: int, per_round: int, warmup: int
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, Any]]:
    """(config -> latencies (rounds, per_round) in ns, config -> errors, counters)."""
    plain, explain = (
        [encode_request(HOST, s.port, "/v1/rank", b) for b in bodies(e)] for e in (False, True)
    )
    switch = Switch(s)
    lat = {c.key: np.empty((rounds, per_round), np.int64) for c in CONFIGS}
    errors = dict.fromkeys(lat, 0)
    run_sync(HOST, s.port, plain, 4 * warmup)  # the first requests of a process are slower
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        for c in order:
            switch.to(c.experiment)
            reqs = explain if c.explain else plain
            run_sync(HOST, s.port, reqs, warmup)
            got = run_sync(HOST, s.port, reqs, per_round)
            lat[c.key][r] = got.latencies_ns
            errors[c.key] += got.errors
        log(f"round {r + 1}/{rounds}")
    return lat, errors, switch.finish()


def bootstrap_ratios(
    num: np.ndarray, den: np.ndarray, reps: int, seed: int = 0, batch: int = 50
) -> dict[str, list[float]]:
    """95 % intervals of the p50 and p99 ratios ``num / den`` (arrays (rounds, per_round)):
    the same rounds drawn for both (paired), then requests within each drawn round."""
    rng = np.random.default_rng(seed)
    rounds, per = num.shape
    out: dict[str, list[float]] = {"p50": [], "p99": []}
    for start in range(0, reps, batch):
        b = min(batch, reps - start)
        picked = rng.integers(0, rounds, (b, rounds))
        sample = {}
        for name, lat in (("num", num), ("den", den)):
            within = rng.integers(0, per, (b, rounds, per))
            sample[name] = lat[picked[:, :, None], within].reshape(b, -1)
        for q, key in ((50, "p50"), (99, "p99")):
            ratio = np.percentile(sample["num"], q, axis=1) / np.percentile(
                sample["den"], q, axis=1
            )
            out[key] += ratio.tolist()
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in out.items()
    }


def no_experiment_check_ns(model_dir: Path, number: int = 2_000_000) -> float:
    """ns per ``experiments.live is None`` on a real scorer state (without an experiment), net
    of ``timeit``'s loop."""
    from scorer.settings import ScorerSettings
    from scorer.state import ScorerState

    state = ScorerState(ScorerSettings(model_dir=model_dir, log_events=False))
    env = {"scorer": state}
    best = min(timeit.repeat("scorer.experiments.live is None", globals=env, number=number))
    loop = min(timeit.repeat("pass", number=number))
    return max(best - loop, 0.0) / number * 1e9


# ----------------------------------------------------------------------------- results


def analyse(
    lat: dict[str, np.ndarray], errors: dict[str, int], reps: int, check_ns: float
) -> dict[str, Any]:
    """Per configuration: stats, ratios to (a) with intervals; then the bars."""
    base = lat[BASE]
    rows: list[dict[str, Any]] = []
    for c in CONFIGS:
        row: dict[str, Any] = {"key": c.key, "label": c.label}
        row |= latency_stats(lat[c.key].ravel())
        row["errors"] = errors[c.key]
        if c.key != BASE:
            ci = bootstrap_ratios(lat[c.key], base, reps, seed=len(rows))
            row["ratio"] = {
                q: {"value": row[f"{q}_ms"] / rows[0][f"{q}_ms"], "ci95": ci.get(q)}
                for q in ("p50", "p99", "mean")
            }
        rows.append(row)
    by = {r["key"]: r for r in rows}
    return {"rows": rows, "bars": bars(by, check_ns), "no_experiment_check_ns": check_ns}


MARKS = {"met": "✅", "not met": "❌", "not shown": "⚠️"}


def verdict(lo: float, value: float, hi: float, bound: float) -> str:
    """``met`` when the whole 95 % interval is within ``bound``, ``not met`` when the estimate
    is past it, else ``not shown`` (the estimate within, the interval reaching past)."""
    if hi <= bound:
        return "met"
    return "not met" if value > bound else "not shown"


def bars(by: dict[str, dict[str, Any]], check_ns: float) -> list[dict[str, Any]]:
    """Issue 14's two bars, as measured."""
    shadow = by["shadow"]["ratio"]["p99"]
    aa = by["aa"]["ratio"]["p50"]
    p50_ms = by[BASE]["p50_ms"]
    resolution = max(abs(aa["ci95"][0] - 1.0), abs(aa["ci95"][1] - 1.0))
    resolution_ns = resolution * p50_ms * 1e6
    lo, hi = shadow["ci95"]
    return [
        {
            "what": f"{SHADOW_RATE * 100:.0f} % shadow: p99 within 10 % of no experiment",
            "verdict": verdict(lo, shadow["value"], hi, 1.10),
            "value": f"p99 ratio {shadow['value']:.3f} [{lo:.3f}, {hi:.3f}]",
        },
        {
            "what": "no experiment costs nothing measurable",
            "verdict": "met" if check_ns < resolution_ns else "not shown",
            "value": f"`experiments.live is None` costs {check_ns:.0f} ns per request "
            f"({100 * check_ns / (p50_ms * 1e6):.4f} % of the rank p50); "
            f"{'below' if check_ns < resolution_ns else 'not below'} this run's resolution, the "
            f"A/A pair's p50 ratio {aa['value']:.3f} [{aa['ci95'][0]:.3f}, "
            f"{aa['ci95'][1]:.3f}]: ±{100 * resolution:.1f} % = {resolution_ns / 1e3:.0f} µs",
        },
    ]


def _ratio(r: dict[str, Any], q: str) -> str:
    x = r["ratio"][q]
    ci = x.get("ci95")
    return f"{x['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = [
        "# Rollout benchmark: experiments, shadow scoring and explanations on `/v1/rank`",
        "",
        f"{m['machine']} · K = {K}, N = {N}, top_n 10, concurrency 1, one scorer process (one "
        f"worker, session logging to Redis on) · **load average at start {m['loadavg_start']}** "
        f"(end {m['loadavg_end']}) · {m['started']} · {m['rounds']} rounds of one block per "
        f"configuration, order rotated each round; a block = switch (EXPERIMENT.json, "
        f"`/admin/reload`), {m['warmup']} unmeasured requests, {m['per_round']} measured · "
        f"bootstrap {m['bootstrap']} resamples (rounds paired, then requests within rounds)",
        "",
        "| configuration | requests | p50 ms | p99 ms | mean ms | p50 ratio (95 % CI) "
        "| p99 ratio (95 % CI) | mean ratio | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ratios = (
            f"{_ratio(r, 'p50')} | {_ratio(r, 'p99')} | {_ratio(r, 'mean')}"
            if "ratio" in r
            else "1 | 1 | 1"
        )
        lines.append(
            f"| {r['label']} | {r['n']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['mean_ms']:.3f} | {ratios} | {r['errors']} |"
        )
    c = res["counters"]
    lines += [
        "",
        "Ratios are to (a), for (d) explain on / off. (c) runs a one-arm experiment (control "
        "= CURRENT, share 1) with the shadow, as SPEC §13 has it. Counted by the scorer "
        f"(warm-ups included): (b) requests per arm {c['two_arm_requests']}; (c) shadow "
        f"scorings {c['shadow_scored']:.0f} of {c['shadow_requests']} requests "
        f"({100 * c['shadow_scored'] / max(c['shadow_requests'], 1):.1f} %), "
        f"{c['shadow_errors']:.0f} failed.",
        "",
        "## Bars (as measured)",
        "",
    ]
    lines += [
        f"- {MARKS[b['verdict']]} {b['verdict']}: {b['what']}: {b['value']}" for b in res["bars"]
    ]
    lines += [
        "",
        "Met: the whole 95 % interval is within the bar; not met: the estimate is past it; not "
        "shown: the estimate is within, the interval reaches past.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_rollout", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--quick", action="store_true", help="a few hundred requests each")
    p.add_argument("--models", type=Path, help="a model dir built earlier (seed0, seed1)")
    args = p.parse_args(argv)
    rounds, per_round, warmup, reps = (3, 100, 30, 300) if args.quick else (20, 300, 100, 2000)
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": rounds,
        "per_round": per_round,
        "warmup": warmup,
        "bootstrap": reps,
    }
    log(f"load average at start: {meta['loadavg_start']}")
    with tempfile.TemporaryDirectory(prefix="xmtf-bench-rollout-") as tmp:
        work = Path(tmp)
        models = args.models or build_models(work)
        with redis_server(work) as (redis_url, _), bench_scorer(models, work, redis_url) as s:
            lat, errors, found = measure(s, rounds, per_round, warmup)
        check_ns = no_experiment_check_ns(models)
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res = {"meta": meta, **analyse(lat, errors, reps, check_ns), "counters": found}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-rollout.json").write_text(json.dumps(res, indent=2))
    md = render(res)
    (args.out / "bench-rollout.md").write_text(md)
    print(md)
    log(f"wrote {args.out}/bench-rollout.md and bench-rollout.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
