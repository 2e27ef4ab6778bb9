"""Scorer reliability drills (SPEC §10) against real processes: an ``xmtf-scorer`` subprocess
(uvicorn) under a load loop of keep-alive clients, and a ``redis-server`` that the test kills,
pauses and restarts. Each drill prints one summary line with its figures (run pytest with -s).

Latency bounds are generous (behaviour, not benchmark): this runs on 2 shared cores, and the load
generator itself is Python threads in the test process.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import RedisServer
from tests.drills.scorer_process import (
    STATE_DIM,
    TASKS,
    LoadLoop,
    ScorerProcess,
    failures,
    publish,
    rank_body,
    server_errors,
    stats,
    wait_until,
    window,
)
from tests.helpers import metric

STREAM = "xmtf:drill-events"
P99_BOUND_S = 0.25
MAX_BOUND_S = 1.0


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported, unpublished versions (fresh ``TSHAgent``s, as the trainer would export them): one
    of the fixture's schema (published under several version names), one with another task
    list, one with another state_dim. Exports are the slow part, hence only three."""
    torch = pytest.importorskip("torch")
    from shared.tasks import make_tasks
    from trainer.config import TSHConfig
    from trainer.export import export_version
    from trainer.tsh import TSHAgent

    out = tmp_path_factory.mktemp("drill-sources")
    same = make_tasks(list(TASKS), [1, 1, -1])
    specs = {
        "a": (same, STATE_DIM, 21),
        "tasks": (make_tasks(["click", "like"], [1, 1]), STATE_DIM, 23),
        "dim": (same, STATE_DIM + 2, 24),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 busy cores, intra-op threads make export ~10x slower
    try:
        for name, (tasks, dim, seed) in specs.items():
            agent = TSHAgent(tasks, dim, TSHConfig(hidden=32), seed=seed)
            export_version(agent, out, version=name, publish=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def scorers() -> Any:
    started: list[ScorerProcess] = []

    def make(*args: Any, **kwargs: Any) -> ScorerProcess:
        proc = ScorerProcess(*args, **kwargs)
        started.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in started:
            proc.stop()


def readyz(client: httpx.Client) -> dict[str, Any]:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    return resp.json()


def line(name: str, samples: list, **extra: Any) -> str:
    s = stats(samples)
    figures = (
        f"sent={s['sent']} failed={s['failed']} p50={s['p50_ms']:.1f}ms "
        f"p99={s['p99_ms']:.1f}ms max={s['max_ms']:.1f}ms"
    )
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    return f"\nDRILL {name}: {figures} {more}"


def assert_load_ok(samples: list, p99: float = P99_BOUND_S, max_s: float = MAX_BOUND_S) -> None:
    s = stats(samples)
    assert s["sent"] > 0
    assert s["failed"] == 0, failures(samples)
    assert s["p99_ms"] < p99 * 1000, s
    assert s["max_ms"] < max_s * 1000, s


# ----------------------------------------------------------------------------- drill 1


def test_redis_down_at_start_killed_under_load_and_restarted(
    model_dir: Path, redis_server: RedisServer, scorers: Any
) -> None:
    buffer_size = 200
    redis_server.stop()  # down before the scorer starts
    scorer = scorers(
        model_dir,
        redis_server.url,
        env={"XMTF_EVENT_BUFFER_SIZE": str(buffer_size), "XMTF_EVENT_BATCH_SIZE": "50"},
    )
    first = scorer.start()
    assert first["model_version"] == "v0001"
    assert first["event_log"]["connected"] is False

    states: list[dict[str, Any]] = []
    with httpx.Client(base_url=scorer.base, timeout=5) as ctl, LoadLoop(scorer.base, 3) as load:

        def log_state() -> dict[str, Any]:
            state = readyz(ctl)["event_log"]
            states.append(state)
            return state

        def logging_resumes() -> int:
            """Redis is up (again): the logger reconnects and the stream keeps growing; returns
            the stream's length once it has."""
            client = redis.Redis.from_url(redis_server.url)
            try:
                wait_until(lambda: log_state()["connected"], timeout=10)
                wait_until(lambda: client.xlen(STREAM) > 0, timeout=10)
                before = client.xlen(STREAM)
                wait_until(lambda: client.xlen(STREAM) > before, timeout=10)
                return int(client.xlen(STREAM))
            finally:
                client.close()

        # phase 1: Redis down since the start
        wait_until(lambda: load.count() > 100)
        errors_a = log_state()["redis_errors"]
        wait_until(lambda: log_state()["redis_errors"] > errors_a, timeout=5)
        wait_until(lambda: log_state()["dropped"] > 0, timeout=10)
        state = log_state()
        assert state["connected"] is False and state["enabled"] is True
        assert 0 < state["buffered"] <= buffer_size
        text = ctl.get("/metrics").text
        assert metric(text, "xmtf_redis_errors_total") > 0
        assert 0 < metric(text, "xmtf_events_buffered") <= buffer_size
        assert metric(text, "xmtf_events_dropped_total") > 0
        assert metric(text, "xmtf_redis_connected") == 0
        assert metric(text, "xmtf_model_loaded") == 1

        # phase 2: Redis comes up; logging starts
        redis_server.start()
        logging_resumes()

        # phase 3: Redis killed under load
        errors_b = log_state()["redis_errors"]
        dropped_b = log_state()["dropped"]
        redis_server.stop()
        wait_until(lambda: not log_state()["connected"], timeout=10)
        wait_until(lambda: log_state()["redis_errors"] > errors_b, timeout=10)
        wait_until(lambda: log_state()["dropped"] > dropped_b, timeout=10)
        t_down = time.monotonic()
        time.sleep(0.5)
        down_samples = window(load.snapshot(), t_down, time.monotonic())

        # phase 4: restarted on the same port (empty: no persistence); logging resumes
        redis_server.start()
        final_xlen = logging_resumes()
        final = log_state()
        text = ctl.get("/metrics").text

    samples = load.snapshot()
    # every rank event is accounted for once the buffer has drained: logged or dropped
    with httpx.Client(base_url=scorer.base, timeout=5) as ctl:
        final = wait_until(lambda: (e := readyz(ctl)["event_log"])["buffered"] == 0 and e)
    assert final["logged"] + final["dropped"] == len(samples), (final, len(samples))
    assert all(s["buffered"] <= buffer_size for s in states), max(s["buffered"] for s in states)
    assert final["connected"] is True
    assert not server_errors(text)
    assert scorer.alive()
    print(
        line(
            "redis-down/killed/restarted",
            samples,
            logged=final["logged"],
            dropped=final["dropped"],
            redis_errors=final["redis_errors"],
            max_buffered=max(s["buffered"] for s in states),
            buffer_bound=buffer_size,
            xlen_after_restart=final_xlen,
            p99_while_killed_ms=f"{stats(down_samples)['p99_ms']:.1f}",
        )
    )
    assert_load_ok(samples)


# ----------------------------------------------------------------------------- drill 2


def test_redis_slow_does_not_slow_ranking(
    model_dir: Path, redis_server: RedisServer, scorers: Any
) -> None:
    scorer = scorers(model_dir, redis_server.url)
    scorer.start()
    client = redis.Redis.from_url(redis_server.url)
    with httpx.Client(base_url=scorer.base, timeout=5) as ctl, LoadLoop(scorer.base, 3) as load:
        wait_until(lambda: readyz(ctl)["event_log"]["connected"] and client.xlen(STREAM) > 0)
        t0 = time.monotonic()
        time.sleep(1.5)
        t1 = time.monotonic()
        errors_before = readyz(ctl)["event_log"]["redis_errors"]
        # Every client of this redis-server (the scorer's writer included) blocks for 2 s;
        # redis 7 refuses DEBUG SLEEP unless enable-debug-command is set, CLIENT PAUSE is not.
        assert client.execute_command("CLIENT", "PAUSE", "2000", "ALL")
        t2 = time.monotonic()
        time.sleep(1.8)
        t3 = time.monotonic()
        during = readyz(ctl)["event_log"]
        wait_until(lambda: readyz(ctl)["event_log"]["connected"], timeout=10)
        xlen = client.xlen(STREAM)
        wait_until(lambda: client.xlen(STREAM) > xlen, timeout=10)
        final = readyz(ctl)["event_log"]
    samples = load.snapshot()
    with httpx.Client(base_url=scorer.base, timeout=5) as ctl:  # nothing lost: all logged
        final = wait_until(lambda: (e := readyz(ctl)["event_log"])["logged"] == len(samples) and e)
    xlen = client.xlen(STREAM)  # >=: a write that timed out may have landed (at-least-once)
    assert final["dropped"] == 0 and xlen >= len(samples)
    client.close()
    baseline, paused = window(samples, t0, t1), window(samples, t2, t3)
    b, p = stats(baseline), stats(paused)
    print(
        line(
            "redis-slow (CLIENT PAUSE 2000)",
            samples,
            baseline_sent=b["sent"],
            baseline_p99_ms=f"{b['p99_ms']:.1f}",
            baseline_max_ms=f"{b['max_ms']:.1f}",
            paused_sent=p["sent"],
            paused_p99_ms=f"{p['p99_ms']:.1f}",
            paused_max_ms=f"{p['max_ms']:.1f}",
            redis_errors=final["redis_errors"],
            logged=final["logged"],
            dropped=final["dropped"],
            xlen=xlen,
        )
    )
    assert during["redis_errors"] > errors_before, "the writer should have timed out"
    assert b["sent"] > 20 and p["sent"] > 20, "the load kept flowing during the pause"
    assert_load_ok(samples)
    assert_load_ok(paused)


# ----------------------------------------------------------------------------- drill 3


def _overwrite_mfc_bytes(d: Path) -> None:
    data = bytearray((d / "mfc.onnx").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    (d / "mfc.onnx").write_bytes(bytes(data))


def _wrong_sha(d: Path) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"]["actor.onnx"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(manifest))


def test_model_swap_under_load(
    model_dir: Path, redis_server: RedisServer, sources: Path, scorers: Any
) -> None:
    scorer = scorers(model_dir, redis_server.url)
    scorer.start()
    published = ["v0001"]
    swaps = ["v0002", "v0003", "v0004", "v0005"]
    refused = {
        "v0006-corrupt": ("a", _overwrite_mfc_bytes),
        "v0007-badsha": ("a", _wrong_sha),
        "v0008-tasks": ("tasks", None),
        "v0009-dim": ("dim", None),
    }
    with (
        httpx.Client(base_url=scorer.base, timeout=5) as ctl,
        LoadLoop(scorer.base, 16, deadline_s=90) as load,
    ):
        wait_until(lambda: load.count() > 100)
        for version in swaps:
            publish(sources / "a", model_dir, version)
            published.append(version)
            wait_until(lambda v=version: readyz(ctl)["model_version"] == v)
            n = load.count()
            wait_until(lambda n=n: load.count() > n + 100)
        t_last = time.monotonic()
        assert readyz(ctl)["last_model_error"] is None

        refusals = metric(ctl.get("/metrics").text, "xmtf_model_refusals_total")
        for name, (src, prepare) in refused.items():
            publish(sources / src, model_dir, name, prepare)
            ready = wait_until(
                lambda n=name: (
                    (r := readyz(ctl))["last_model_error"]
                    and n in (r["last_model_error"] or "")
                    and r
                )
            )
            assert ready["model_version"] == swaps[-1]
            refusals += 1
            assert metric(ctl.get("/metrics").text, "xmtf_model_refusals_total") == refusals
            n = load.count()
            wait_until(lambda n=n: load.count() > n + 100)
        info = ctl.get("/v1/model").json()
        text = ctl.get("/metrics").text
        last_error = readyz(ctl)["last_model_error"]

    samples = load.snapshot()
    versions = {s.version for s in samples}
    after_last = window(samples, t_last, float("inf"))
    print(
        line(
            "model-swap c=16",
            samples,
            swaps=len(swaps),
            refused=len(refused),
            versions_seen=",".join(sorted(v for v in versions if v)),
            reloads=int(metric(text, "xmtf_model_reloads_total")),
            refusals=int(metric(text, "xmtf_model_refusals_total")),
        )
    )
    assert stats(samples)["failed"] == 0, failures(samples)
    assert versions <= set(published), versions
    assert {s.version for s in after_last} == {swaps[-1]}, "after the last swap: the last version"
    assert info["version"] == swaps[-1]
    assert metric(text, "xmtf_model_reloads_total") == 1 + len(swaps)
    assert metric(text, "xmtf_model_refusals_total") == len(refused)
    assert "v0009-dim" in last_error and "state_dim" in last_error
    assert not server_errors(text)
    assert stats(samples)["max_ms"] < 3000  # c=16 on 2 cores, client threads included


# ----------------------------------------------------------------------------- drill 4


def test_scorer_restart_serves_current_and_never_half_written(
    model_dir: Path, redis_server: RedisServer, sources: Path, scorers: Any
) -> None:
    scorer = scorers(model_dir, redis_server.url)
    scorer.start()
    publish(sources / "a", model_dir, "v0002")
    with httpx.Client(base_url=scorer.base, timeout=5) as ctl:
        wait_until(lambda: readyz(ctl)["model_version"] == "v0002")
    scorer.kill()

    # half-written versions beside the served one; CURRENT still names v0002
    shutil.copytree(sources / "a", model_dir / ".tmp-v0003")
    (model_dir / ".tmp-v0003" / "actor.onnx").unlink()
    shutil.copytree(sources / "a", model_dir / "v0004")
    (model_dir / "v0004" / "manifest.json").unlink()

    t0 = time.monotonic()
    first = scorer.start()
    restart_s = time.monotonic() - t0
    assert first["model_version"] == "v0002", first
    with httpx.Client(base_url=scorer.base, timeout=5) as ctl:
        assert ctl.get("/v1/model").json()["version"] == "v0002"
        for i in range(20):
            resp = ctl.post("/v1/rank", json=rank_body(200, seed=i))
            assert resp.status_code == 200 and resp.json()["model_version"] == "v0002"
            time.sleep(0.02)  # several polls of CURRENT
        ready = readyz(ctl)
        assert ready["model_version"] == "v0002" and ready["last_model_error"] is None
        assert metric(ctl.get("/metrics").text, "xmtf_model_refusals_total") == 0
    print(
        f"\nDRILL restart: first /readyz names {first['model_version']} "
        f"{restart_s:.2f}s after the start; .tmp-v0003 and v0004 (no manifest) never served"
    )


def _server_pid_of(scorer: ScorerProcess, local_port: int) -> int | None:
    """The worker process holding the server side of the connection from ``local_port``."""
    want = f"0100007F:{local_port:04X}"
    me = f"0100007F:{scorer.port:04X}"
    inode = None
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = row.split()
        if cols[1] == me and cols[2] == want:
            inode = cols[9]
    if inode is None:
        return None
    for pid in scorer.pids():
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if fd.readlink().as_posix() == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def test_two_workers_all_swap(
    model_dir: Path, redis_server: RedisServer, sources: Path, scorers: Any
) -> None:
    scorer = scorers(model_dir, redis_server.url, workers=2)
    scorer.start()
    wait_until(lambda: len(scorer.pids()) == 2, timeout=30)
    for _ in range(40):  # both workers up and ready (a fresh connection lands on either)
        assert httpx.get(f"{scorer.base}/readyz", timeout=5).status_code == 200

    def probe(seen: dict[int, list[tuple[float, str, str]]]) -> None:
        """One fresh connection: /v1/rank then /v1/model on it (the same worker answers both)."""
        with httpx.Client(base_url=scorer.base, timeout=5) as client:
            resp = client.post("/v1/rank", json=rank_body(150, seed=len(seen)))
            assert resp.status_code == 200, resp.text
            local = resp.extensions["network_stream"].get_extra_info("client_addr")[1]
            pid = _server_pid_of(scorer, local)
            model = client.get("/v1/model").json()["version"]
            ranked = resp.json()["model_version"]
            # the model can swap between the two calls, never back
            assert (ranked, model) in {("v0001", "v0001"), ("v0001", "v0002"), ("v0002", "v0002")}
            seen.setdefault(pid or -1, []).append((time.monotonic(), ranked, model))

    before: dict[int, list[tuple[float, str, str]]] = {}
    deadline = time.monotonic() + 20
    while len([p for p in before if p > 0]) < 2 and time.monotonic() < deadline:
        probe(before)
    assert len([p for p in before if p > 0]) == 2, f"both workers answered: {list(before)}"

    publish(sources / "a", model_dir, "v0002")
    t_pub = time.monotonic()
    seen: dict[int, list[tuple[float, str, str]]] = {}
    deadline = t_pub + 30
    converged_at = None
    while time.monotonic() < deadline:
        probe(seen)
        now = time.monotonic()
        recent = [s for rows in seen.values() for s in rows if s[0] > now - 2.0]
        workers_recent = {p for p, rows in seen.items() if any(r[0] > now - 2.0 for r in rows)}
        if (
            now - t_pub > 2.0
            and len(workers_recent - {-1}) == 2
            and all(r[1] == r[2] == "v0002" for r in recent)
        ):
            converged_at = now
            break
    total = sum(len(rows) for rows in seen.values())
    per_worker = {pid: len(rows) for pid, rows in seen.items()}
    print(
        f"\nDRILL workers=2 swap: {total} probes after publishing, per worker {per_worker}, "
        f"all on v0002 over a 2 s window "
        f"{'after ' + format(converged_at - t_pub, '.2f') + 's' if converged_at else 'NEVER'}"
    )
    assert converged_at is not None, "every worker should serve v0002"
    for pid, rows in seen.items():
        assert rows[-1][1:] == ("v0002", "v0002"), (pid, rows[-3:])
