"""TSH training against the user simulator, read top to bottom like CleanRL's TD3 script:
collect -> (critic -> actor -> inner -> target sync) -> periodic evaluation -> export.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trainer.config import TSHConfig, from_dict, load_json, to_dict
from trainer.replay import ReplayBuffer
from trainer.simulator import EvalResult, SimConfig, UserSimulator, evaluate
from trainer.tsh import TSHAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop: how much to collect and train, and how to evaluate."""

    seed: int = 0
    n_users: int = 256  # concurrent simulated users while collecting
    total_steps: int = 400  # collection steps (each adds n_users transitions)
    learning_starts: int = 2048  # transitions in the replay buffer before updates begin
    updates_per_step: int = 4
    replay_capacity: int = 200_000
    replay_candidates: int = 32
    eval_every: int = 100  # steps
    eval_sessions: int = 1000
    eval_seed: int = 12345


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


def policy_score_fn(agent: TSHAgent) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Greedy (no exploration) xMTF ranking as a simulator ``score_fn``."""

    def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        preds = predictions.transpose(0, 2, 1)  # simulator (U, C, K) -> model (U, K, C)
        action, _ = agent.act(state, explore=False)
        return agent.scores(state, preds, action)

    return score


def plain_sum_score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The neutral baseline: rank by the plain sum of the predictions."""
    return predictions.sum(axis=2)


@dataclass
class TrainResult:
    agent: TSHAgent
    history: list[dict[str, float]]
    final_eval: dict[str, float]
    baseline_eval: dict[str, float]
    seconds: float


def train_on_simulator(
    config: SimulateConfig,
    progress: bool = True,
    log_metrics: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train xMTF with TSH against the simulator and evaluate it against the plain sum."""
    t0 = time.perf_counter()
    tc = config.train
    sim = UserSimulator(config.sim.replace(seed=tc.seed))
    tasks = sim.task_specs()
    agent = TSHAgent(tasks, sim.state_dim, config.tsh, seed=tc.seed)
    replay = ReplayBuffer(
        tc.replay_capacity, sim.state_dim, len(tasks), tc.replay_candidates, seed=tc.seed
    )
    history: list[dict[str, float]] = []
    eval_sim = UserSimulator(config.sim.replace(seed=tc.seed))  # same world, other users

    def run_eval(step: int) -> dict[str, float]:
        result: EvalResult = evaluate(
            eval_sim, policy_score_fn(agent), tc.eval_sessions, tc.eval_seed
        )
        summary = result.summary()
        row = {"step": float(step), **{f"eval_{k}": v for k, v in summary.items()}}
        history.append(row)
        if log_metrics:
            log_metrics(row)
        return summary

    baseline = evaluate(eval_sim, plain_sum_score, tc.eval_sessions, tc.eval_seed).summary()
    obs = sim.reset(tc.n_users, seed=tc.seed, auto_reset=True)
    metrics: dict[str, float] = {}
    bar = tqdm(range(tc.total_steps), desc="simulate", disable=not progress, unit="step")
    for step in bar:
        # collect: one request per concurrent user, with exploration noise on the action
        agent.observe(obs.state)
        preds = obs.predictions.transpose(0, 2, 1)
        action, _ = agent.act(obs.state, explore=True)
        res = sim.step_scores(agent.scores(obs.state, preds, action))
        replay.add(obs.state, action, res.reward, res.observation.state, res.done, preds)
        obs = res.observation

        # learn: critic -> actor -> inner stage -> target sync (inside agent.update)
        if len(replay) >= tc.learning_starts:
            for _ in range(tc.updates_per_step):
                metrics = agent.update(replay.sample(config.tsh.batch_size))
            if log_metrics and step % 10 == 0:
                log_metrics({"step": float(step), **metrics})
        if res.finished_returns.size:
            bar.set_postfix(
                ret=f"{res.finished_returns.mean():.0f}", q=f"{metrics.get('q_mean', 0):.2f}"
            )
        if tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.total_steps:
            run_eval(step + 1)
    final = run_eval(tc.total_steps)
    return TrainResult(agent, history, final, baseline, time.perf_counter() - t0)


def write_outputs(result: TrainResult, config: SimulateConfig, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": config.as_dict(),
        "seconds": result.seconds,
        "updates": result.agent.updates,
        "plain_sum": result.baseline_eval,
        "xmtf": result.final_eval,
        "history": result.history,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    result.agent.save(out / "checkpoint.safetensors")
    return summary
