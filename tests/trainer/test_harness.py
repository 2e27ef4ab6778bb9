"""``trainer/harness.py``: torch-free, a Redis that starts and stops on its port, and a scorer
subprocess whose failures say why (its readiness and stopping are exercised by every drill)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import harness
from trainer.harness import HarnessError, RedisServer, ScorerProcess, free_port, redis_ping

REPO = Path(__file__).resolve().parents[2]


def test_harness_and_its_users_import_no_torch() -> None:
    probe = (
        "import json, sys; import trainer.harness, loadtest.bench; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_redis_server_stops_and_comes_back_on_its_port(tmp_path: Path) -> None:
    server = RedisServer(port=free_port(), workdir=tmp_path)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    server.start()
    try:
        assert redis_ping(server.port)
        server.stop()  # killed: an outage
        assert server.proc is None and not redis_ping(server.port)
        server.start()
        assert redis_ping(server.port)
    finally:
        server.stop(graceful=True)
    assert not redis_ping(server.port)


def test_redis_server_context_manager(tmp_path: Path) -> None:
    with harness.redis_server(tmp_path) as server:
        assert redis_ping(server.port)
    assert server.proc is None and not redis_ping(server.port)


def test_missing_redis_server_is_a_harness_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.shutil, "which", lambda _: None)
    with pytest.raises(HarnessError, match="redis-server is not installed"):
        RedisServer().start()


def test_scorer_that_exits_is_a_harness_error_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "scorer.log"
    scorer = ScorerProcess(tmp_path / "missing", "redis://127.0.0.1:1/0", logfile=log)
    assert scorer.command()[1:3] == ["--model-dir", str(tmp_path / "missing")]
    try:
        with pytest.raises(HarnessError, match="exited with 2") as info:
            scorer.start(timeout=60)
    finally:
        scorer.stop()
    assert "does not exist" in str(info.value)  # the tail of the scorer's own output
    assert scorer.proc is None and not scorer.alive() and scorer.pids() == []
