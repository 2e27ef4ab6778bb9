"""Shared fixtures: a throwaway ``redis-server`` on a free port, and exported model versions."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A real ``redis-server`` owned by one test (never the shared one on 6379)."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir with one published version: tasks click, like, skip (-1), state_dim 5.

    Tests that modify the directory use the ``model_dir`` fixture (a private copy).
    """
    pytest.importorskip("torch")
    import torch

    from shared.tasks import make_tasks
    from trainer.config import TSHConfig
    from trainer.export import export_version
    from trainer.tsh import TSHAgent

    model_dir = tmp_path_factory.mktemp("models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more intra-op threads only contend on 2 cores
    try:
        tasks = make_tasks(["click", "like", "skip"], [1, 1, -1])
        agent = TSHAgent(tasks, 5, TSHConfig(hidden=32), seed=3)
        export_version(agent, model_dir, version="v0001")
    finally:
        torch.set_num_threads(threads)
    return model_dir


@pytest.fixture
def model_dir(exported_model: Path, tmp_path: Path) -> Path:
    """A private copy of ``exported_model`` that a test may change."""
    dst = tmp_path / "models"
    shutil.copytree(exported_model, dst)
    return dst
