"""One run of the study: train one method with one seed in the shared world, then evaluate it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trainer import losses
from trainer.loop import Learner, ScoreFn, TSHLearner, plain_sum_score, run_online
from trainer.replay import ReplayBuffer
from trainer.sim import UserSimulator, evaluate
from trainer.study.config import PaperConfig
from trainer.study.methods.cem import cem_optimize
from trainer.study.methods.formulas import fixed_weights_score_fn, task_directions
from trainer.study.methods.myopic import MyopicMFCLearner
from trainer.study.methods.td3 import TD3Agent, TD3Learner
from trainer.study.registry import MFC_KINDS, Method
from trainer.tsh import TSHAgent

#: Points of the monotonicity probe grid of the study's MFC violation metric.
STUDY_GRID = 33


def mfc_violation_rate(agent: TSHAgent, states: np.ndarray, grid: int = STUDY_GRID) -> float:
    """Share of adjacent grid steps (each task's [low, high], each state) where the inner stage
    moves against the task's direction: 0 for a monotone fusion."""
    probe = losses.probe_grid(agent.tasks, grid)
    q = agent.inner(states, np.broadcast_to(probe, (len(states), *probe.shape)).astype(np.float32))
    return float(losses.grid_violations(q, agent.tasks).mean())


class _StateRecorder:
    """Wraps a score_fn and keeps a sample of the states it sees (for the violation audit)."""

    def __init__(self, fn: ScoreFn, keep: int = 512) -> None:
        self.fn, self.keep = fn, keep
        self.states: list[np.ndarray] = []
        self.count = 0

    def __call__(self, state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        if self.count < self.keep:
            take = state[:: max(1, len(state) // 16)][: self.keep - self.count]
            self.states.append(take.copy())
            self.count += len(take)
        return self.fn(state, predictions)


@dataclass
class Trial:
    seed: int
    eval: dict[str, float]
    seconds: float
    curve: list[dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            **self.eval,
            "seconds": self.seconds,
            **self.extra,
            "curve": self.curve,
        }


class Runner:
    """Builds the shared world once and runs (method, seed) pairs."""

    def __init__(self, config: PaperConfig, progress: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.train_sim = UserSimulator(config.sim)
        self.eval_sim = UserSimulator(config.sim)
        self.tasks = self.train_sim.task_specs()
        self.directions = task_directions(self.tasks)
        self.state_dim = self.train_sim.state_dim

    # -- evaluation
    def evaluate(self, fn: ScoreFn, n_sessions: int | None = None) -> dict[str, float]:
        tc = self.config.train
        return evaluate(self.eval_sim, fn, n_sessions or tc.eval_sessions, tc.eval_seed).summary()

    def plain_sum(self) -> dict[str, float]:
        return self.evaluate(plain_sum_score)

    # -- builders
    def _replay(self, seed: int) -> ReplayBuffer:
        tc = self.config.train
        k = len(self.tasks)
        return ReplayBuffer(tc.replay_capacity, self.state_dim, k, tc.replay_candidates, seed=seed)

    def make_learner(self, method: Method, seed: int) -> Learner:
        cfg, tc = self.config, self.config.train
        tsh = method.tsh_config(cfg.tsh)
        if method.kind in ("tsh", "init"):
            agent = TSHAgent(self.tasks, self.state_dim, tsh, seed=seed)
            return TSHLearner(agent, self._replay(seed), tsh.batch_size)
        if method.kind == "myopic":
            agent = TSHAgent(self.tasks, self.state_dim, tsh, seed=seed)
            m = max(tc.replay_candidates, cfg.sim.top_n)
            return MyopicMFCLearner(agent, tc.replay_capacity, m, cfg.sim.top_n, seed=seed)
        if method.kind in ("td3", "batchrl"):
            assert method.formula is not None
            td3 = TD3Agent(
                self.state_dim,
                len(self.tasks),
                method.formula,
                tsh,
                cfg.td3,
                cfg.formula,
                seed=seed,
                bc_alpha=cfg.td3.bc_alpha if method.kind == "batchrl" else None,
                directions=self.directions,
            )
            return TD3Learner(
                td3, self._replay(seed), tsh.batch_size, behaviour=method.kind == "batchrl"
            )
        raise ValueError(f"method {method.key} has no learner")

    # -- runs
    def run(self, method: Method, seed: int, checkpoint: Path | None = None) -> Trial:
        t0 = time.perf_counter()
        if method.kind == "cem":
            return self._run_cem(method, seed, checkpoint, t0)
        cfg, tc = self.config, self.config.train
        desc = f"{method.key} s{seed}"
        learner = self.make_learner(method, seed)
        extra: dict[str, Any] = {}
        curve: list[dict[str, float]] = []
        if method.kind != "init":  # "init": the control, evaluated as `xmtf-train init` makes it
            curve = run_online(
                self.train_sim, learner, tc, seed, log_every=cfg.log_every,
                progress=self.progress, desc=desc,
            )  # fmt: skip
        if method.kind == "batchrl":
            assert isinstance(learner, TD3Learner)
            extra["behaviour_return"] = _mean_curve(curve, "train_return")
            curve = self._offline(learner, desc)
        recorder = _StateRecorder(learner.score_fn())
        summary = self.evaluate(recorder)
        if method.kind in MFC_KINDS and method.tsh_config(cfg.tsh).use_inner:
            agent = learner.agent  # type: ignore[attr-defined]
            states = np.concatenate(recorder.states)
            extra["mono_violation"] = mfc_violation_rate(agent, states)
        if checkpoint is not None:
            learner.save(checkpoint)
        return Trial(seed, summary, time.perf_counter() - t0, curve, extra)

    def _offline(self, learner: TD3Learner, desc: str) -> list[dict[str, float]]:
        """BatchRL-MTF: train on the fixed log only (TD3+BC), never interacting."""
        cfg, tc = self.config, self.config.train
        replay, agent = learner.replay, learner.agent
        agent.observe(replay.state[: len(replay)])  # normalise with the whole log's moments
        n_updates = tc.total_steps * tc.updates_per_step
        every = max(1, cfg.log_every * tc.updates_per_step)
        curve: list[dict[str, float]] = []
        bar = tqdm(range(n_updates), desc=f"{desc} offline", disable=not self.progress, leave=False)
        for u in bar:
            metrics = learner.learn()
            if (u + 1) % every == 0 or u + 1 == n_updates:
                step = (u + 1) / tc.updates_per_step
                curve.append({"step": step, **{k: v for k, v in metrics.items()}})
        return curve

    def _run_cem(self, method: Method, seed: int, checkpoint: Path | None, t0: float) -> Trial:
        cfg = self.config
        assert method.formula is not None
        formula, beta = method.formula, cfg.formula.beta

        def objective(pop: np.ndarray, it: int) -> np.ndarray:
            # the same simulated users for the whole population (common random numbers), and
            # never the evaluation users
            users = 1_000_000 + 1000 * seed + it
            return np.array(
                [
                    evaluate(
                        self.train_sim,
                        fixed_weights_score_fn(u, formula, beta, self.directions),
                        cfg.cem.sessions,
                        users,
                    ).returns.mean()
                    for u in pop
                ]
            )

        result = cem_optimize(
            objective,
            len(self.tasks),
            cfg.cem,
            np.random.default_rng(seed),
            cfg.formula.log_weight_low,
            cfg.formula.log_weight_high,
            progress=self.progress,
            desc=f"{method.key} s{seed}",
        )
        fn = fixed_weights_score_fn(result.mean, formula, beta, self.directions)
        summary = self.evaluate(fn)
        weights = {t.name: float(np.exp(u)) for t, u in zip(self.tasks, result.mean, strict=True)}
        if checkpoint is not None:
            checkpoint.write_text(
                json.dumps({"formula": formula, "beta": beta, "weights": weights}, indent=2)
            )
        curve = [
            {"step": row["iteration"], "train_return": row["population_mean"], **row}
            for row in result.history
        ]
        return Trial(seed, summary, time.perf_counter() - t0, curve, {"weights": weights})


def _mean_curve(curve: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in curve if key in r]
    return float(np.mean(values)) if values else None
