"""``make bench``: scorer latency and throughput next to the floors, measured in the same run.

What it does (everything it starts, it stops; it writes only ``results/`` and a temp dir):

1. builds model versions for K in {2, 6, 12, 24} (state_dim 64, default MFC size) with the
   trainer's export path, in a subprocess (torch never enters this process or the scorer);
2. starts a throwaway ``redis-server`` on a free port and ``xmtf-scorer`` (session logging on,
   ``XMTF_BENCH_ECHO=true`` for the echo floor) as subprocesses;
3. measures, on the same pre-encoded bodies (N in {100, 500, 2000}, K = 6):
   the in-process floors (ONNX Runtime calls, JSON -> arrays), the HTTP echo floor and
   ``/v1/rank`` at concurrency 1 (echo and rank alternate in rounds, so that drift in the
   machine's load hits both alike); throughput and p50/p99 at concurrency 8 and 32 for 1 and 2
   workers; latency against K at N = 500; scorer RSS and whether torch is mapped;
4. writes ``results/bench.json``, ``results/bench.md`` and ``results/latency_vs_k.png`` and
   prints the Markdown.

``python -m loadtest.bench --quick`` runs a shorter version (fewer requests) for development.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bodies import TOP_N, make_bodies
from loadtest.build_models import STATE_DIM, task_names
from loadtest.client import RunResult, encode_request, run_async, run_sync
from loadtest.floors import load_model, measure
from trainer import harness
from trainer.harness import HOST, ScorerProcess

NS = (100, 500, 2000)
KS = (2, 6, 12, 24)
MAIN_K, MAIN_N = 6, 500
CONCURRENCY = (8, 32)
IDLE_S = 200e-6  # pause before each in-process floor call in the "after idling" variant
WORKERS = (1, 2)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- processes


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A throwaway ``redis-server`` (the harness's): its URL and port."""
    try:
        harness.redis_server_executable()
    except harness.HarnessError as exc:
        raise SystemExit(f"bench: {exc}") from None
    with harness.redis_server(workdir) as server:
        yield server.url, server.port


def redis_cmd(port: int, *args: str) -> bytes:
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(cmd.encode())
        return s.recv(4096)


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def torch_mapped(pid: int) -> bool:
    try:
        return "torch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@contextmanager
def scorer(
    model_dir: Path, redis_url: str, workers: int, logfile: Path, env: dict[str, str] | None = None
) -> Iterator[ScorerProcess]:
    """``xmtf-scorer`` (the harness's) with session logging and the echo route on, its output
    appended to ``logfile``; ready, and with several workers given 3 s to load their models."""
    s = ScorerProcess(
        model_dir,
        redis_url,
        env={"XMTF_BENCH_ECHO": "true", "XMTF_LOG_EVENTS": "true", **(env or {})},
        workers=workers,
        log_level="warning",
        logfile=logfile,
        stop_timeout=20.0,
    )
    with harness.running_scorer(s):
        if workers > 1:  # every worker must have loaded its model before measuring
            time.sleep(3.0)
        yield s


# ---------------------------------------------------------------------------- measuring


def stats(lat_ns: np.ndarray) -> dict[str, float]:
    ms = lat_ns / 1e6
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "n": int(ms.size),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def c1_pair(s: ScorerProcess, rank: list[bytes], echo: list[bytes], count: int, rounds: int = 5):
    """Echo and rank at concurrency 1, alternating in ``rounds`` blocks; warm-up first.

    Also the scorer's CPU time per request, which, unlike wall time, hardly moves when other
    processes compete for the cores.
    """
    run_sync(HOST, s.port, echo, 300)
    run_sync(HOST, s.port, rank, 500)
    per = max(count // rounds, 1)
    lat: dict[str, list[np.ndarray]] = {"echo": [], "rank": []}
    errors = {"echo": 0, "rank": 0}
    cpu = {"echo": 0.0, "rank": 0.0}
    server_cpu = {"echo": 0.0, "rank": 0.0}
    pid = s.pids()[0]
    for _ in range(rounds):
        for name, reqs in (("echo", echo), ("rank", rank)):
            before = cpu_seconds(pid)
            r = run_sync(HOST, s.port, reqs, per)
            server_cpu[name] += cpu_seconds(pid) - before
            lat[name].append(r.latencies_ns)
            errors[name] += r.errors
            cpu[name] += r.client_cpu_s
    out = {}
    for name in lat:
        all_ns = np.concatenate(lat[name])
        out[name] = {
            **stats(all_ns),
            "errors": errors[name],
            "client_cpu_us_per_req": cpu[name] / all_ns.size * 1e6,
            "server_cpu_us_per_req": server_cpu[name] / all_ns.size * 1e6,
        }
    return out


def load_run(s: ScorerProcess, reqs: list[bytes], count: int, c: int) -> dict[str, Any]:
    r: RunResult = run_async(HOST, s.port, reqs, count, c, warmup=max(200, 4 * c))
    return {
        "concurrency": c,
        "throughput_rps": r.throughput,
        "p50_ms": r.pct_ms(50),
        "p99_ms": r.pct_ms(99),
        "errors": r.errors,
        "requests": r.requests,
        "statuses": {str(k): v for k, v in r.status_counts.items()},
        "client_cpu_share": r.client_cpu_s / r.elapsed_s if r.elapsed_s else 0.0,
    }


def check_answer(s: ScorerProcess, body: bytes) -> None:
    req = urllib.request.Request(
        f"http://{HOST}:{s.port}/v1/rank", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.loads(r.read())
    assert len(answer["items"]) == TOP_N, answer


# ---------------------------------------------------------------------------- report


def fmt(x: float) -> str:
    return f"{x:.3f}"


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Scorer benchmark",
        "",
        f"{res['machine']} · K = {MAIN_K}, state_dim = {STATE_DIM}, top_n = {TOP_N} · "
        f"session logging to Redis on · load average before/after: "
        f"{res['loadavg_before']} / {res['loadavg_after']} · {res['started']}",
        "",
        "## Concurrency 1, one worker (K = 6)",
        "",
        "Floors: ORT = the faster of the scorer's one serving-graph call (MFCs, actor, outer "
        "stage, top-N) and the version's MFC + actor graphs called in turn, in process; parse = "
        "the faster of `orjson.loads` + float32 arrays and a simdjson document + float64 buffers "
        "(no validation either); echo = HTTP `POST /bench/echo` on the same server with the "
        "same body. "
        "`parse_rank` is the scorer's validating parser (reference, not a floor). "
        "Ratio = `/v1/rank` p50 / (echo p50 + parse p50 + ORT p50); target ≤ 1.3. The in-process "
        "floors are timed back to back; `idle floors` times them again after a "
        f"{IDLE_S * 1e6:.0f} µs pause before each call, as the scorer at c = 1 meets every "
        "request after waiting on the network (context for the ratio, not the target).",
        "",
        "| N | body KB | rank p50 | rank p99 | rank p99.9 | p99/p50 | echo p50 | echo p99 "
        "| parse p50 (orjson / simdjson) | ORT p50 (serving / pair) | parse_rank p50 "
        "| floors sum | ratio | idle floors (parse / ORT) | ratio vs idle floors | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["c1"]:
        r, e, f = row["rank"], row["echo"], row["floors"]
        lines.append(
            f"| {row['n']} | {row['body_kb']:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
            f"| {fmt(r['p999_ms'])} | {r['p99_ms'] / r['p50_ms']:.2f} | {fmt(e['p50_ms'])} "
            f"| {fmt(e['p99_ms'])} | {fmt(f['parse_p50_ms'])} "
            f"({fmt(f['parse_orjson_p50_ms'])} / {fmt(f['parse_simdjson_p50_ms'])}) "
            f"| {fmt(f['ort_p50_ms'])} "
            f"({fmt(f['ort_serving_p50_ms'])} / {fmt(f['ort_pair_p50_ms'])}) "
            f"| {fmt(f['parse_rank_p50_ms'])} | {fmt(row['floors_sum_ms'])} "
            f"| **{row['ratio']:.2f}** | {fmt(f['parse_idle_p50_ms'])} / "
            f"{fmt(f['ort_idle_p50_ms'])} | {row['ratio_idle']:.2f} "
            f"| {r['errors'] + e['errors']} |"
        )
    lines += [
        "",
        "All times in ms. Client overhead at c = 1 (client CPU per request, included in both "
        "echo and rank): "
        + ", ".join(
            f"N={row['n']}: {row['rank']['client_cpu_us_per_req']:.0f} µs" for row in res["c1"]
        )
        + ". Scorer CPU per request (all threads; includes the event log's background "
        "flushes), rank / echo: "
        + ", ".join(
            f"N={row['n']}: {row['rank']['server_cpu_us_per_req']:.0f} / "
            f"{row['echo']['server_cpu_us_per_req']:.0f} µs"
            for row in res["c1"]
        )
        + ".",
        "",
        "## Throughput (closed loop, requests/s; p50 / p99 in ms)",
        "",
        "| N | workers | c | rank rps | rank p50 | rank p99 | rank errors | echo rps | echo p50 "
        "| echo p99 | rank/echo rps | client CPU share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["throughput"]:
        r, e = row["rank"], row["echo"]
        lines.append(
            f"| {row['n']} | {row['workers']} | {r['concurrency']} | {r['throughput_rps']:.0f} "
            f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {r['errors']} "
            f"| {e['throughput_rps']:.0f} | {fmt(e['p50_ms'])} | {fmt(e['p99_ms'])} "
            f"| {r['throughput_rps'] / e['throughput_rps']:.2f} | {r['client_cpu_share']:.0%} |"
        )
    lines += [
        "",
        "Client CPU share = the load client's CPU time / wall time (of a core): on 2 cores the "
        "client competes with the workers, so throughput is a lower bound for a remote client.",
        "",
        "## Latency against K (N = 500, c = 1, one worker)",
        "",
        "| K | body KB | rank p50 | rank p99 | rank p99.9 | echo p50 | parse p50 | ORT p50 "
        "| ratio | ratio vs idle floors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["by_k"]:
        r, e, f = row["rank"], row["echo"], row["floors"]
        lines.append(
            f"| {row['k']} | {row['body_kb']:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
            f"| {fmt(r['p999_ms'])} | {fmt(e['p50_ms'])} | {fmt(f['parse_p50_ms'])} "
            f"| {fmt(f['ort_p50_ms'])} | {row['ratio']:.2f} | {row['ratio_idle']:.2f} |"
        )
    lines += ["", "![latency vs K](latency_vs_k.png)", "", "## Scorer process", ""]
    for m in res["memory"]:
        rss = ", ".join(f"{x:.0f}" for x in m["rss_mb"])
        hwm = ", ".join(f"{x:.0f}" for x in m["hwm_mb"])
        lines.append(
            f"- workers = {m['workers']}: RSS per worker {rss} MB (peak {hwm} MB); torch mapped: "
            f"{'yes' if any(m['torch']) else 'no'}"
        )
    ev = res.get("event_log", {})
    lines += [
        f"- session log: {ev.get('xlen', '?')} entries in the Redis stream at the end; "
        f"scorer counters {ev.get('state', {})}",
        "",
        "## Targets (N = 500, K = 6, one worker, c = 1)",
        "",
    ]
    for t in res["targets"]:
        lines.append(f"- {'✅' if t['met'] else '❌'} {t['what']}: {t['value']}")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in res["by_k"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("p50_ms", "rank p50"), ("p99_ms", "rank p99")):
        ax.plot(ks, [r["rank"][key] for r in res["by_k"]], "o-", label=label)
    ax.plot(ks, [r["floors_sum_ms"] for r in res["by_k"]], "s--", label="floors (echo+parse+ORT)")
    ax.plot(ks, [r["floors"]["ort_p50_ms"] for r in res["by_k"]], "^:", label="ORT p50")
    ax.set_xlabel("K (tasks)")
    ax.set_ylabel("latency (ms)")
    ax.set_xticks(ks)
    ax.set_title(f"/v1/rank latency vs K (N = {MAIN_N}, c = 1)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def floors_for(model_dir: Path, bodies: list[bytes], reps: int) -> dict[str, float]:
    """Floors back to back (``<name>_p50_ms``, ``<name>_p99_ms``) and after ``IDLE_S`` of idling
    before each call (``<name>_idle_p50_ms``)."""
    model = load_model(model_dir)
    hot = measure(model, bodies, reps)
    idle = measure(model, bodies, max(reps // 3, 200), idle_s=IDLE_S)
    return (
        {f"{name}_p50_ms": float(np.percentile(v, 50) / 1e6) for name, v in hot.items()}
        | {f"{name}_p99_ms": float(np.percentile(v, 99) / 1e6) for name, v in hot.items()}
        | {f"{name}_idle_p50_ms": float(np.percentile(v, 50) / 1e6) for name, v in idle.items()}
    )


def c1_row(got: dict[str, Any], floors: dict[str, float]) -> dict[str, Any]:
    """Ratios of the rank p50 to the floors' sum: strict (back to back) and after idling."""
    echo = got["echo"]["p50_ms"]
    fsum = echo + floors["parse_p50_ms"] + floors["ort_p50_ms"]
    idle_sum = echo + floors["parse_idle_p50_ms"] + floors["ort_idle_p50_ms"]
    return {
        **got,
        "floors": floors,
        "floors_sum_ms": fsum,
        "ratio": got["rank"]["p50_ms"] / fsum,
        "floors_idle_sum_ms": idle_sum,
        "ratio_idle": got["rank"]["p50_ms"] / idle_sum,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--requests", type=int, default=6000, help="c = 1 requests per N and endpoint")
    p.add_argument("--quick", action="store_true", help="fewer requests (development)")
    p.add_argument("--models", type=Path, help="reuse model dirs built earlier (k<K>/ inside)")
    args = p.parse_args(argv)
    count = 1500 if args.quick else args.requests
    load_count = 1500 if args.quick else 6000
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xmtf-bench-") as tmp_s:
        tmp = Path(tmp_s)
        models = args.models
        if models is None:
            models = tmp / "models"
            log(f"building model versions for K = {KS} (trainer export, in a subprocess)")
            subprocess.run(
                [sys.executable, "-m", "loadtest.build_models", str(models), *map(str, KS)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        logfile = tmp / "scorer.log"
        tasks = task_names(MAIN_K)
        bodies = {n: make_bodies(n, tasks, STATE_DIM) for n in NS}
        with redis_server(tmp) as (redis_url, redis_port):
            # ---- c = 1, one worker, K = 6, every N; floors measured on the same bodies
            res["c1"], res["memory"], res["throughput"] = [], [], []
            with scorer(models / f"k{MAIN_K}", redis_url, 1, logfile) as s:
                check_answer(s, bodies[MAIN_N][0])
                for n in NS:
                    reps = 3000 if n < 2000 else 1000
                    floors = floors_for(
                        models / f"k{MAIN_K}", bodies[n], 600 if args.quick else reps
                    )
                    rank = [encode_request(HOST, s.port, "/v1/rank", b) for b in bodies[n]]
                    echo = [encode_request(HOST, s.port, "/bench/echo", b) for b in bodies[n]]
                    c = count if n < 2000 else count // 2
                    log(f"c=1 N={n}: {c} echo + {c} rank requests")
                    got = c1_pair(s, rank, echo, c)
                    res["c1"].append(
                        {"n": n, "body_kb": len(bodies[n][0]) / 1024, **c1_row(got, floors)}
                    )
                res["memory"].append(_memory(s))
                for n in NS:
                    res["throughput"] += _throughput(s, bodies[n], n, load_count)
                _, body = harness.get(f"{s.base}/readyz")
                ev_state = json.loads(body).get("event_log", {})
            with scorer(models / f"k{MAIN_K}", redis_url, 2, logfile) as s:
                for n in NS:
                    res["throughput"] += _throughput(s, bodies[n], n, load_count)
                res["memory"].append(_memory(s))
            res["throughput"].sort(key=lambda r: (r["n"], r["workers"], r["rank"]["concurrency"]))
            # ---- latency against K (N = 500)
            res["by_k"] = []
            for k in KS:
                kb = make_bodies(MAIN_N, task_names(k), STATE_DIM, seed=k)
                floors = floors_for(models / f"k{k}", kb, 600 if args.quick else 2000)
                with scorer(models / f"k{k}", redis_url, 1, logfile) as s:
                    rank = [encode_request(HOST, s.port, "/v1/rank", b) for b in kb]
                    echo = [encode_request(HOST, s.port, "/bench/echo", b) for b in kb]
                    log(f"K={k}: c=1 N={MAIN_N}")
                    got = c1_pair(s, rank, echo, count // 2)
                res["by_k"].append({"k": k, "body_kb": len(kb[0]) / 1024, **c1_row(got, floors)})
            xlen = redis_cmd(redis_port, "XLEN", "xmtf:events").decode().strip()
            res["event_log"] = {"xlen": xlen.lstrip(":"), "state": ev_state}
    res["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res["duration_s"] = time.monotonic() - t_start
    res["targets"] = _targets(res)
    (args.out / "bench.json").write_text(json.dumps(res, indent=2))
    plot(res, args.out / "latency_vs_k.png")
    md = render(res)
    (args.out / "bench.md").write_text(md)
    print(md)
    log(
        f"done in {res['duration_s']:.0f} s; wrote {args.out}/"
        "bench.md, bench.json, latency_vs_k.png"
    )
    return 0


def _memory(s: ScorerProcess) -> dict[str, Any]:
    pids = s.pids()
    mem = [rss_mb(p) for p in pids]
    return {
        "workers": s.workers,
        "pids": pids,
        "rss_mb": [m.get("VmRSS", 0.0) for m in mem],
        "hwm_mb": [m.get("VmHWM", 0.0) for m in mem],
        "torch": [torch_mapped(p) for p in pids],
    }


def _throughput(
    s: ScorerProcess, bodies: list[bytes], n: int, load_count: int
) -> list[dict[str, Any]]:
    rank = [encode_request(HOST, s.port, "/v1/rank", b) for b in bodies]
    echo = [encode_request(HOST, s.port, "/bench/echo", b) for b in bodies]
    count = load_count if n < 2000 else load_count // 3
    rows = []
    for c in CONCURRENCY:
        log(f"throughput N={n} workers={s.workers} c={c}")
        rows.append(
            {
                "n": n,
                "workers": s.workers,
                "echo": load_run(s, echo, count, c),
                "rank": load_run(s, rank, count, c),
            }
        )
    return rows


def _targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    main = next(r for r in res["c1"] if r["n"] == MAIN_N)
    r = main["rank"]
    c32 = [t for t in res["throughput"] if t["rank"]["concurrency"] == 32]
    errs = sum(t["rank"]["errors"] + t["echo"]["errors"] for t in c32)
    rss = max(x for m in res["memory"] for x in m["rss_mb"])
    torch = any(x for m in res["memory"] for x in m["torch"])
    return [
        {
            "what": "rank p50 ≤ 1.3 × (echo + parse + ORT)",
            "met": main["ratio"] <= 1.3,
            "value": f"{r['p50_ms']:.3f} ms = {main['ratio']:.2f} × {main['floors_sum_ms']:.3f} ms "
            f"(against the floors timed after idling: {main['ratio_idle']:.2f} × "
            f"{main['floors_idle_sum_ms']:.3f} ms)",
        },
        {
            "what": "rank p99 ≤ 3 × p50",
            "met": r["p99_ms"] <= 3 * r["p50_ms"],
            "value": f"p99 {r['p99_ms']:.3f} ms = {r['p99_ms'] / r['p50_ms']:.2f} × p50",
        },
        {"what": "no errors at c = 32", "met": errs == 0, "value": f"{errs} errors"},
        {"what": "RSS ≤ 200 MB per worker", "met": rss <= 200, "value": f"max {rss:.0f} MB"},
        {
            "what": "no torch in the scorer process",
            "met": not torch,
            "value": "torch mapped" if torch else "not mapped",
        },
    ]


if __name__ == "__main__":
    sys.exit(main())
