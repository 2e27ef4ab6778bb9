"""Throwaway processes for the demo, the benchmark and the tests: a free port, a private
``redis-server`` and an ``xmtf-scorer`` subprocess.

Standard library only (no torch, nothing from ``trainer`` that imports it): the benchmark's load
client and the test helpers import this module, and torch must never enter them.

- :func:`free_port`: a TCP port on 127.0.0.1 that was free a moment ago;
- :class:`RedisServer`: ``redis-server`` on 127.0.0.1 without persistence, ready once it answers
  ``PING``; :meth:`RedisServer.stop` kills it (an outage), ``graceful=True`` terminates it; it can
  be started again on the same port;
- :class:`ScorerProcess`: the installed ``xmtf-scorer`` console script in its own session
  (process group), ready once ``/readyz`` answers 200; stopping it ends the whole group (a
  uvicorn supervisor and its workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class HarnessError(RuntimeError):
    """A process of the harness could not be started (missing, exited, never ready)."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that the OS just handed out (free unless someone takes it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- redis-server


def redis_server_executable() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise HarnessError("redis-server is not installed (Debian: apt-get install redis-server)")
    return exe


def redis_ping(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """Whether a Redis server answers ``PING`` on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A private ``redis-server`` on 127.0.0.1:``port`` (never a shared one), no persistence.

    ``workdir`` is its working directory (None: the caller's). Start and stop it as often as
    wanted: it comes back on the same port, empty.
    """

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait (at most ``timeout`` s) until it answers ``PING``."""
        cmd = [redis_server_executable(), "--port", str(self.port), "--bind", HOST]
        cmd += ["--save", "", "--appendonly", "no"]
        if self.workdir is not None:
            cmd += ["--dir", str(self.workdir)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if redis_ping(self.port):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise HarnessError(f"redis-server did not start on port {self.port}")

    def stop(self, graceful: bool = False) -> None:
        """Kill it (``graceful``: terminate it) and wait for it to exit."""
        if self.proc is not None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@contextlib.contextmanager
def redis_server(workdir: Path | None = None, graceful: bool = True) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` on a free port, stopped on exit."""
    server = RedisServer(workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful=graceful)


# ----------------------------------------------------------------------------- xmtf-scorer


def scorer_executable() -> str:
    """The ``xmtf-scorer`` console script beside this interpreter, else the one on ``PATH``."""
    exe = Path(sys.executable).with_name("xmtf-scorer")
    return str(exe) if exe.exists() else "xmtf-scorer"


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in task.read_text().split()]
    return out


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """``GET url``: (status, body); an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class ScorerProcess:
    """One ``xmtf-scorer`` subprocess (``workers`` > 1: a uvicorn supervisor and its workers).

    ``env`` is added to this process's environment; ``args`` are further CLI arguments;
    ``logfile`` (appended to) takes its stdout and stderr, else they are this process's.
    :meth:`stop` sends SIGTERM to the group, waits ``stop_timeout`` s, then kills what is left.
    The port is fixed when the object is made, so a restarted scorer answers at the same place.
    """

    model_dir: Path
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    port: int = field(default_factory=free_port)
    log_level: str = "error"
    args: list[str] = field(default_factory=list)
    logfile: Path | None = None
    stop_timeout: float = 10.0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        cmd = [scorer_executable(), "--model-dir", str(self.model_dir)]
        cmd += ["--redis-url", self.redis_url, "--port", str(self.port)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        return [*cmd, "--log-level", self.log_level, *self.args]

    def start(self, wait: bool = True, timeout: float = 60.0) -> dict[str, Any] | None:
        """Start it; with ``wait``, return the body of the first ``/readyz`` that answers 200."""
        env = {**os.environ, **self.env}
        if self.logfile is None:
            self.proc = subprocess.Popen(self.command(), env=env, start_new_session=True)
        else:
            with self.logfile.open("ab") as out:
                self.proc = subprocess.Popen(
                    self.command(), env=env, stdout=out, stderr=out, start_new_session=True
                )
        return self.wait_ready(timeout) if wait else None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """The body of the first ``/readyz`` that answers 200; :class:`HarnessError` (with the
        log's tail) if the process exits or is not ready within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise HarnessError(f"xmtf-scorer exited with {code}{self._log_tail()}")
            with contextlib.suppress(OSError):
                status, body = get(f"{self.base}/readyz")
                if status == 200:
                    ready: dict[str, Any] = json.loads(body)
                    return ready
            time.sleep(0.05)
        raise HarnessError(f"xmtf-scorer was not ready after {timeout:g} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.logfile is None or not self.logfile.exists():
            return ""
        return ":\n" + self.logfile.read_text(errors="replace")[-2000:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The serving processes: the workers, or the single process."""
        if self.proc is None:
            return []
        if self.workers == 1:
            return [self.proc.pid]
        workers = []  # uvicorn's spawned workers (not multiprocessing's resource tracker)
        for pid in child_pids(self.proc.pid):
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    workers.append(pid)
        return workers

    def kill(self) -> None:
        """SIGKILL the whole process group (the supervisor and its workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM the group, wait up to ``stop_timeout`` s, then SIGKILL whatever is left of it
        (workers of a supervisor that died first)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=self.stop_timeout)
        self.kill()


@contextlib.contextmanager
def running_scorer(scorer: ScorerProcess, timeout: float = 60.0) -> Iterator[ScorerProcess]:
    """``scorer`` started and ready (within ``timeout`` s), stopped on exit."""
    try:
        scorer.start(timeout=timeout)
        yield scorer
    finally:
        scorer.stop()


# ----------------------------------------------------------------------------- Redis Cluster


def redis_cli_executable() -> str:
    exe = shutil.which("redis-cli")
    if exe is None:
        raise HarnessError("redis-cli is not installed (Debian: apt-get install redis-tools)")
    return exe


def _redis_command(port: int, *args: str, timeout: float = 2.0) -> str:
    out = subprocess.run(
        [redis_cli_executable(), "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return out.stdout.decode(errors="replace")


def cluster_port() -> int:
    """A free port P below 55536 whose cluster bus port P + 10000 is free too."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
            return port
        except OSError:
            continue
    raise HarnessError("no free port pair for a cluster node")


@dataclass
class RedisCluster:
    """A private Redis Cluster on loopback: ``n_masters`` masters with ``replicas`` replicas
    each (``redis-server --cluster-enabled yes`` on free ports, joined by ``redis-cli --cluster
    create``), node timeout ``node_timeout_ms`` (how fast a dead master's replica is promoted).
    :meth:`kill` stops one node (a crash); ``url`` is a seed node's URL."""

    workdir: Path
    n_masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        live = [n for n in self.nodes if n.proc is not None]
        return f"redis://{HOST}:{live[0].port}/0"

    def start(self, timeout: float = 30.0) -> None:
        exe = redis_server_executable()
        for i in range(self.n_masters * (1 + self.replicas)):
            node = RedisServer(port=cluster_port(), workdir=self.workdir)
            folder = self.workdir / f"node-{node.port}"
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [exe, "--port", str(node.port), "--bind", HOST, "--save", "", "--appendonly"]
            cmd += ["no", "--dir", str(folder), "--cluster-enabled", "yes"]
            cmd += ["--cluster-config-file", f"nodes-{i}.conf"]
            cmd += ["--cluster-node-timeout", str(self.node_timeout_ms)]
            node.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while not all(redis_ping(n.port) for n in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise HarnessError("cluster nodes did not start")
            time.sleep(0.05)
        create = [redis_cli_executable(), "--cluster", "create"]
        create += [f"{HOST}:{n.port}" for n in self.nodes]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            self.stop()
            raise HarnessError(f"redis-cli --cluster create failed: {done.stdout[-500:]!r}")
        self.wait_ok(deadline - time.monotonic())

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and agrees on the masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc is not None]
            if all("cluster_state:ok" in _redis_command(n.port, "CLUSTER", "INFO") for n in live):
                return
            time.sleep(0.1)
        raise HarnessError("the Redis Cluster did not reach cluster_state:ok")

    def masters(self) -> list[RedisServer]:
        """The live nodes that are masters now (as the first live node sees it)."""
        live = [n for n in self.nodes if n.proc is not None]
        out = _redis_command(live[0].port, "CLUSTER", "NODES")
        ports = {
            int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
            for line in out.splitlines()
            if " master " in f" {line.split()[2].replace(',', ' ')} " and "fail" not in line
        }
        return [n for n in live if n.port in ports]

    def kill(self, node: RedisServer) -> None:
        node.stop()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def redis_cluster(workdir: Path, n_masters: int = 3, replicas: int = 1) -> Iterator[RedisCluster]:
    """A started :class:`RedisCluster`, stopped on exit."""
    cluster = RedisCluster(workdir, n_masters, replicas)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
