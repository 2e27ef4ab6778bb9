"""``xmtf-train simulate``: TSH training against the user simulator (the loop of
:mod:`trainer.loop`), periodic evaluation against the plain sum, and the run's outputs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import TSHConfig, from_dict, load_json, to_dict
from trainer.loop import TrainConfig, TSHLearner, plain_sum_score, run_online
from trainer.replay import ReplayBuffer
from trainer.selection import Selector
from trainer.sim import SimConfig, StepResult, UserSimulator, evaluate
from trainer.tsh import TSHAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulateConfig:
    """Everything ``xmtf-train simulate`` needs; load it from a JSON file with three sections."""

    sim: SimConfig = field(default_factory=SimConfig)
    tsh: TSHConfig = field(default_factory=TSHConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_file(cls, path: Path) -> SimulateConfig:
        data = load_json(path)
        unknown = sorted(set(data) - {"sim", "tsh", "train"})
        if unknown:
            raise ValueError(
                f"unknown config section(s): {', '.join(unknown)} (expected sim, tsh, train)"
            )
        sim = SimConfig().replace(**data["sim"]) if "sim" in data else SimConfig()
        return cls(
            sim=sim,
            tsh=from_dict(TSHConfig, data.get("tsh", {})),
            train=from_dict(TrainConfig, data.get("train", {})),
        )

    def as_dict(self) -> dict[str, Any]:
        return {"sim": to_dict(self.sim), "tsh": to_dict(self.tsh), "train": to_dict(self.train)}


@dataclass
class TrainResult:
    agent: TSHAgent
    history: list[dict[str, float]]
    final_eval: dict[str, float]
    baseline_eval: dict[str, float]
    seconds: float
    #: what checkpoint selection decided (``trainer.selection.Selector.finish``); empty when off
    selection: dict[str, Any] = field(default_factory=dict)
    #: TSH updates the run performed (the selected checkpoint may have fewer: ``agent.updates``)
    updates: int = 0


def train_on_simulator(
    config: SimulateConfig,
    progress: bool = True,
    log_metrics: Callable[[dict[str, float]], None] | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train xMTF with TSH against the simulator, keep the checkpoint that validation users
    prefer (never one worse than the start: :mod:`trainer.selection`), and evaluate it on the
    evaluation users against the plain sum (``device``: where the networks live; the simulator
    and the replay stay on the CPU)."""
    t0 = time.perf_counter()
    tc = config.train
    world = config.sim.replace(seed=tc.seed)
    sim = UserSimulator(world)
    tasks = sim.task_specs()
    agent = TSHAgent(tasks, sim.state_dim, config.tsh, seed=tc.seed).to(device)
    replay = ReplayBuffer(
        tc.replay_capacity, sim.state_dim, len(tasks), tc.replay_candidates, seed=tc.seed
    )
    learner = TSHLearner(agent, replay, config.tsh.batch_size)
    history: list[dict[str, float]] = []
    eval_sim = UserSimulator(world)  # same world, other users
    selector = None
    if tc.select_every:
        selector = Selector(
            UserSimulator(world),
            tc.val_sessions,
            tc.val_seed,
            tc.eval_seed,
            confirm_sessions=tc.confirm_sessions,
        )
        selector.start(learner)

    def run_eval(step: int) -> dict[str, float]:
        result = evaluate(eval_sim, learner.score_fn(), tc.eval_sessions, tc.eval_seed)
        summary = result.summary()
        row = {"step": float(step), **{f"eval_{k}": v for k, v in summary.items()}}
        history.append(row)
        if log_metrics:
            log_metrics(row)
        return summary

    def on_step(step: int, res: StepResult, metrics: dict[str, float]) -> None:
        if log_metrics and metrics and (step - 1) % 10 == 0:
            log_metrics({"step": float(step - 1), **metrics})
        if selector is not None and step % tc.select_every == 0:
            row = selector.consider(step, learner)
            if log_metrics:
                log_metrics(row)
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.total_steps:
            run_eval(step)

    baseline = evaluate(eval_sim, plain_sum_score, tc.eval_sessions, tc.eval_seed).summary()
    run_online(sim, learner, tc, tc.seed, progress=progress, desc="simulate", on_step=on_step)
    selection: dict[str, Any] = {}
    updates = learner.agent.updates
    if selector is not None:
        selection = selector.finish(learner)
        if selection["kept_start"]:
            log.warning(
                "no checkpoint beat the start on validation users: the start is kept (training "
                "did not improve the fusion)"
            )
    final = run_eval(tc.total_steps)
    assert isinstance(learner.agent, TSHAgent)
    seconds = time.perf_counter() - t0
    return TrainResult(learner.agent, history, final, baseline, seconds, selection, updates)


def write_outputs(result: TrainResult, config: SimulateConfig, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": config.as_dict(),
        "seconds": result.seconds,
        "updates": result.updates,
        "selected_updates": result.agent.updates,
        "plain_sum": result.baseline_eval,
        "xmtf": result.final_eval,
        "selection": result.selection,
        "history": result.history,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    result.agent.save(out / "checkpoint.safetensors")
    return summary
