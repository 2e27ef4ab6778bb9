"""The consumer's compute budget against a real redis-server: ingest runs at stream speed while
the learner is slow; ``max_updates``, the time budget and the export cadences are kept; the
device choice (CPU here)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis
import torch

from tests.conftest import RedisServer
from tests.trainer.stream.test_consume import STREAM, _config, _log_sessions, _pending
from trainer import cli
from trainer.runtime import resolve_device
from trainer.stream.consume import StreamTrainer
from trainer.tsh import TSHAgent


def _slow_updates(trainer: StreamTrainer, seconds: float) -> None:
    """Make every TSH update take at least ``seconds`` (a learner far slower than ingest)."""
    update = trainer.agent.update

    def slow(batch):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return update(batch)

    trainer.agent.update = slow  # type: ignore[method-assign]


def test_ingest_drains_and_acks_while_the_learner_is_slow(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=40, steps=5)  # 200 transitions, 440 entries
    trainer = StreamTrainer(
        model_dir, _config(redis_server, updates_per_transition=1.0, read_count=20, max_updates=12)
    )
    _slow_updates(trainer, 0.25)  # 12 updates: >= 3 s of learning
    done = threading.Event()
    result: dict[str, object] = {}

    def run() -> None:
        result["stats"] = trainer.run()
        done.set()

    t0 = time.monotonic()
    threading.Thread(target=run, daemon=True).start()
    while client.xlen(f"{STREAM}:transitions") < expected or _pending(client):
        assert time.monotonic() - t0 < 30, "ingest did not drain"
        time.sleep(0.01)
    drained_after = time.monotonic() - t0
    updates_then = trainer.learner.updates
    assert updates_then < 12, "ingest finished while the learner was still at work"
    assert done.wait(60)
    stats = trainer.stats
    assert stats.transitions == expected and stats.updates == 12
    assert stats.ingest_seconds < 12 * 0.25, (drained_after, stats.ingest_seconds)
    assert stats.exports, "the final export happened"


def test_max_updates_caps_the_run_and_it_still_exports(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    _log_sessions(client, n_sessions=10, steps=4)  # 40 transitions -> 80 credited updates
    stats = StreamTrainer(
        model_dir, _config(redis_server, updates_per_transition=2.0, max_updates=7)
    ).run()
    assert stats.updates == 7
    assert len(stats.exports) == 1 and _pending(client) == 0


def test_time_budget_bounds_the_run_including_its_export(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=20, steps=4)
    budget = 6.0
    t0 = time.monotonic()
    trainer = StreamTrainer(
        model_dir,
        _config(redis_server, updates_per_transition=50.0, time_budget_s=budget),
        started=t0,
    )
    _slow_updates(trainer, 0.05)  # 4,000 credited updates would take 200 s
    stats = trainer.run()
    elapsed = time.monotonic() - t0
    assert elapsed <= budget + 1.0, elapsed  # 1 s of slack for a loaded machine
    assert stats.seconds <= budget + 1.0
    assert 0 < stats.updates < 4000
    assert len(stats.exports) == 1, "a version is published within the budget"
    assert stats.transitions == expected and _pending(client) == 0


def test_a_time_budget_spent_before_ingest_leaves_the_stream_for_the_next_run(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    expected = _log_sessions(client, n_sessions=5, steps=3)
    spent = time.monotonic() - 100.0  # the budget ran out before reading started
    stats = StreamTrainer(model_dir, _config(redis_server, time_budget_s=10.0), started=spent).run()
    assert stats.stopped_by == "time_budget" and stats.events == 0 and not stats.exports
    stats = StreamTrainer(model_dir, _config(redis_server)).run()  # nothing was lost
    assert stats.transitions == expected and _pending(client) == 0


def test_export_every_updates_publishes_on_the_way(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    _log_sessions(client, n_sessions=10, steps=4)
    stats = StreamTrainer(
        model_dir,
        _config(redis_server, updates_per_transition=1.0, max_updates=9, export_every_updates=4),
    ).run()
    assert stats.updates == 9
    assert len(stats.exports) == 3  # after 4 and 8 updates, then the final one (9)
    assert len(set(stats.exports)) == 3


def test_export_every_seconds_publishes_while_learning(
    model_dir: Path, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    _log_sessions(client, n_sessions=10, steps=4)
    trainer = StreamTrainer(
        model_dir,
        _config(redis_server, updates_per_transition=1.0, max_updates=8, export_every_seconds=0.5),
    )
    _slow_updates(trainer, 0.2)  # 8 updates: >= 1.6 s, so at least two timed exports
    stats = trainer.run()
    assert stats.updates == 8
    assert len(stats.exports) >= 2  # on the way (the last one may be the final one)


def test_export_every_transitions_still_works(model_dir: Path, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    _log_sessions(client, n_sessions=12, steps=5)  # 60 transitions
    stats = StreamTrainer(
        model_dir,
        _config(redis_server, read_count=10, export_every=20, updates_per_transition=0.5),
    ).run()
    assert stats.transitions == 60 and stats.updates > 0
    assert len(stats.exports) >= 2


def test_auto_device_is_the_cpu_here_and_cuda_needs_a_gpu() -> None:
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():  # pragma: no cover - the CI machine has no GPU
        assert resolve_device("auto") == "cuda"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_consume_cli_trains_on_the_chosen_device(
    model_dir: Path,
    redis_server: RedisServer,
    device: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    _log_sessions(client, n_sessions=6, steps=4)
    argv = ["consume", "--model-dir", str(model_dir), "--redis-url", redis_server.url]
    argv += ["--events-stream", STREAM, "--until-idle", "--min-replay", "4", "--device", device]
    argv += ["--max-updates", "3", "--threads", "1"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["device"] == ("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    assert out["updates"] == 3 and len(out["exports"]) == 1


def test_consume_cli_refuses_an_unknown_device(model_dir: Path, redis_server: RedisServer) -> None:
    argv = ["consume", "--model-dir", str(model_dir), "--redis-url", redis_server.url]
    assert cli.main([*argv, "--device", "tpu"]) == 2


def test_agent_moves_between_devices_and_keeps_acting_in_numpy(model_dir: Path) -> None:
    from trainer.export import load_agent

    version = (model_dir / "CURRENT").read_text().strip()
    agent: TSHAgent = load_agent(model_dir / version).to("cpu")
    assert agent.device.type == "cpu"
    action, _ = agent.act(torch.zeros(2, agent.state_dim).numpy(), explore=False)
    assert action.shape == (2, len(agent.tasks))


def test_stored_states_are_observed_even_when_no_update_runs(model_dir: Path) -> None:
    import numpy as np

    from trainer.export import load_agent
    from trainer.replay import ReplayBuffer
    from trainer.stream.learner import BackgroundLearner, LearnBudget

    agent = load_agent(model_dir / (model_dir / "CURRENT").read_text().strip())
    replay = ReplayBuffer(100, agent.state_dim, len(agent.tasks), 4)
    budget = LearnBudget(updates_per_transition=0.0, observe_every=10)
    learner = BackgroundLearner(agent, replay, budget, export=lambda: None)
    count = float(agent.norm.count)
    learner.start()
    for _ in range(5):
        learner.added(np.ones((4, agent.state_dim), np.float32))
    deadline = time.monotonic() + 10
    while float(agent.norm.count) < count + 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert float(agent.norm.count) >= count + 12  # observed without any update
    learner.finish()
    assert learner.updates == 0


def test_a_refused_export_keeps_current_and_is_reported(
    model_dir: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The export checks (parity, monotonicity, ties) refusing a version does not stop the
    consumer: CURRENT keeps its version and the refusal is in the run's stats."""
    from trainer.export import ExportCheckError
    from trainer.stream import consume

    def refuse(*args: object, **kwargs: object) -> None:
        raise ExportCheckError("tie audit failed: 50.0% of probe requests tie", {})

    monkeypatch.setattr(consume, "export_version", refuse)
    current = (model_dir / "CURRENT").read_text()
    client = redis.Redis.from_url(redis_server.url)
    _log_sessions(client, n_sessions=6, steps=4)
    argv = ["consume", "--model-dir", str(model_dir), "--redis-url", redis_server.url]
    argv += ["--events-stream", STREAM, "--until-idle", "--min-replay", "4", "--max-updates", "3"]
    assert cli.main([*argv, "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["updates"] == 3 and out["exports"] == []
    assert out["refused_exports"] == ["tie audit failed: 50.0% of probe requests tie"]
    assert (model_dir / "CURRENT").read_text() == current
