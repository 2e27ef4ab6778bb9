"""Shared fixtures: a throwaway ``redis-server`` on a free port, and exported model versions.

``RedisServer`` and ``free_port`` come from the one harness (``trainer/harness.py``) that the
demo and the benchmark use too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.harness import HarnessError, RedisServer, free_port

__all__ = ["RedisServer", "free_port"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path)
    try:
        server.start()
    except HarnessError as exc:
        pytest.fail(str(exc))
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
