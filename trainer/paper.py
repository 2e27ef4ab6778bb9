"""``xmtf-train paper``: the paper's offline study (Tables 3 and 4) on the user simulator.

Every method is trained with ``trials`` seeds (training seed = trial index) in the same
simulated world (``PaperConfig.sim``, its item pool fixed by ``sim.seed``) and evaluated on the
same users (``evaluate(..., seed=train.eval_seed)``). The metric is the total watch time per
session; a method's row is the mean ± sample std over its seeds of the per-seed mean over the
evaluation sessions, plus the mean session length. The RL methods share one actor/critic
architecture and one set of RL hyper-parameters (:class:`TSHConfig`) and one budget
(:class:`TrainConfig`: collection steps x users, updates per step). See
:mod:`trainer.baselines` for the design of each baseline.

Outputs in ``--out``: ``paper.json`` (everything, including per-seed results and training
curves), ``paper.md`` (the tables, rendered from the JSON) and ``checkpoints/`` (the first
seed's model of each method, for ``xmtf-train plot``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.baselines import (
    CEMConfig,
    FormulaConfig,
    Learner,
    MyopicMFCLearner,
    ScoreFn,
    TD3Agent,
    TD3Config,
    TD3Learner,
    cem_optimize,
    fixed_weights_score_fn,
    task_directions,
)
from trainer.config import TSHConfig, from_dict, load_json, to_dict
from trainer.replay import ReplayBuffer
from trainer.simulate import TrainConfig, plain_sum_score, policy_score_fn
from trainer.simulator import Observation, SimConfig, StepResult, UserSimulator, evaluate
from trainer.tsh import TSHAgent

# ------------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # cem | td3 | batchrl | tsh | myopic
    table: int = 3
    formula: str | None = None
    tsh: tuple[tuple[str, Any], ...] = ()  # TSHConfig overrides

    def tsh_config(self, base: TSHConfig) -> TSHConfig:
        return dataclasses.replace(base, **dict(self.tsh))


METHODS: tuple[Method, ...] = (
    Method("cem1", "CEM-1", "cem", formula="linear"),
    Method("cem2", "CEM-2", "cem", formula="log"),
    Method("td3_1", "TD3-1", "td3", formula="linear"),
    Method("td3_2", "TD3-2", "td3", formula="log"),
    Method("batchrl1", "BatchRL-MTF-1", "batchrl", formula="linear"),
    Method("batchrl2", "BatchRL-MTF-2", "batchrl", formula="log"),
    Method("xmtf_init", "xMTF as initialised (a ≈ 0, no training)", "init"),
    Method("xmtf", "xMTF", "tsh"),
    Method("xmtf_no_outer", "xMTF w/o outer stage", "myopic"),
    Method("xmtf_no_inner", "xMTF w/o inner stage", "tsh", tsh=(("use_inner", False),)),
    Method(
        "xmtf_monotone",
        "xMTF, MFCs monotone by construction",
        "tsh",
        tsh=(("monotone_by_construction", True),),
    ),
    Method("xmtf_lam0", "λ = 0", "tsh", table=4, tsh=(("lam", 0.0),)),
    Method("xmtf_lam0.1", "λ = 0.1", "tsh", table=4, tsh=(("lam", 0.1),)),
    Method("xmtf_lam0.9", "λ = 0.9", "tsh", table=4, tsh=(("lam", 0.9),)),
    Method("xmtf_lam1", "λ = 1", "tsh", table=4, tsh=(("lam", 1.0),)),
    # Table 5 (not in the default run): this implementation's deviations from the paper, undone
    # one at a time, to show what each is worth. `--methods xmtf_no_action_l2,xmtf_soft`.
    Method(
        "xmtf_no_action_l2",
        "xMTF without the action penalty (action_l2 = 0)",
        "tsh",
        table=5,
        tsh=(("action_l2", 0.0),),
    ),
    Method(
        "xmtf_soft",
        "xMTF with the soft transfer label",
        "tsh",
        table=5,
        tsh=(("transfer", "soft"),),
    ),
)
METHOD_BY_KEY = {m.key: m for m in METHODS}
#: Formula-based methods: xMTF must beat the best of these to support the paper's claim.
FORMULA_BASELINES = ("cem1", "cem2", "td3_1", "td3_2", "batchrl1", "batchrl2", "xmtf_no_inner")
MFC_KINDS = ("tsh", "myopic", "init")


# ------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PaperConfig:
    sim: SimConfig = field(default_factory=SimConfig)
    tsh: TSHConfig = field(default_factory=TSHConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            total_steps=400, updates_per_step=4, eval_every=0, eval_sessions=2000
        )
    )
    cem: CEMConfig = field(default_factory=CEMConfig)
    td3: TD3Config = field(default_factory=TD3Config)
    formula: FormulaConfig = field(default_factory=FormulaConfig)
    trials: int = 5
    methods: tuple[str, ...] = tuple(m.key for m in METHODS if m.table != 5)
    log_every: int = 10  # training-curve resolution, in collection steps
    quick: bool = False
    # torch intra-op threads. 1 by default: these networks are small, and on a busy 2-core
    # machine two threads per process thrash (10x and worse slow-downs were measured).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.torch_threads < 1:
            raise ValueError("torch_threads must be >= 1")
        unknown = [m for m in self.methods if m not in METHOD_BY_KEY]
        if unknown:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHOD_BY_KEY)}"
            )

    @classmethod
    def quick_config(cls, trials: int = 2) -> PaperConfig:
        """Tiny budgets: every method end to end in seconds (tests, smoke runs)."""
        return cls(
            sim=SimConfig(n_candidates=20, max_steps=8, n_items=500),
            tsh=TSHConfig(hidden=32, batch_size=64, inner_batch_size=16, neutral_fit_steps=10),
            train=TrainConfig(
                n_users=32,
                total_steps=6,
                learning_starts=64,
                updates_per_step=2,
                replay_capacity=4096,
                replay_candidates=16,
                eval_every=0,
                eval_sessions=40,
            ),
            cem=CEMConfig(iterations=2, population=4, sessions=16),
            trials=trials,
            log_every=2,
            quick=True,
        )

    def with_overrides(self, path: Path) -> PaperConfig:
        """Apply a JSON file with optional sections sim, tsh, train, cem, td3, formula."""
        data = load_json(path)
        sections = {"sim", "tsh", "train", "cem", "td3", "formula"}
        unknown = sorted(set(data) - sections)
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
        changes: dict[str, Any] = {}
        if "sim" in data:
            changes["sim"] = self.sim.replace(**data["sim"])
        for name, cls in (
            ("tsh", TSHConfig),
            ("train", TrainConfig),
            ("cem", CEMConfig),
            ("td3", TD3Config),
            ("formula", FormulaConfig),
        ):
            if name in data:
                merged = {**to_dict(getattr(self, name)), **data[name]}
                changes[name] = from_dict(cls, merged)
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sim": to_dict(self.sim),
            "tsh": to_dict(self.tsh),
            "train": to_dict(self.train),
            "cem": to_dict(self.cem),
            "td3": to_dict(self.td3),
            "formula": to_dict(self.formula),
            "trials": self.trials,
            "methods": list(self.methods),
            "quick": self.quick,
            "torch_threads": self.torch_threads,
        }


# ----------------------------------------------------------------------------- learners, loop


class TSHLearner:
    """xMTF (and its flag variants) behind the runner's :class:`Learner` protocol."""

    def __init__(self, agent: TSHAgent, replay: ReplayBuffer, batch_size: int) -> None:
        self.agent, self.replay, self.batch_size = agent, replay, batch_size
        self._action: np.ndarray | None = None

    def act(self, state: np.ndarray, preds: np.ndarray, explore: bool) -> np.ndarray:
        self.agent.observe(state)
        self._action, _ = self.agent.act(state, explore=explore)
        return self.agent.scores(state, preds, self._action)

    def record(self, obs: Observation, preds: np.ndarray, res: StepResult) -> None:
        assert self._action is not None
        self.replay.add(obs.state, self._action, res.reward, res.observation.state, res.done, preds)

    def ready(self, learning_starts: int) -> bool:
        return len(self.replay) >= learning_starts

    def learn(self) -> dict[str, float]:
        return self.agent.update(self.replay.sample(self.batch_size))

    def score_fn(self) -> ScoreFn:
        return policy_score_fn(self.agent)

    def save(self, path: Path) -> None:
        self.agent.save(path)


def run_online(
    sim: UserSimulator,
    learner: Learner,
    tc: TrainConfig,
    seed: int,
    steps: int | None = None,
    log_every: int = 10,
    progress: bool = False,
    desc: str = "train",
) -> list[dict[str, float]]:
    """The CleanRL-style loop of :func:`trainer.simulate.train_on_simulator` for any learner:
    collect one request per concurrent user (with exploration) -> store -> learn. Returns the
    training curve: every ``log_every`` steps the mean return of the sessions finished since
    the last row and the last learning metrics."""
    steps = tc.total_steps if steps is None else steps
    obs = sim.reset(tc.n_users, seed=seed, auto_reset=True)
    curve: list[dict[str, float]] = []
    finished: list[np.ndarray] = []
    metrics: dict[str, float] = {}
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", leave=False)
    for step in bar:
        preds = obs.predictions.transpose(0, 2, 1)  # (U, C, K) -> (U, K, C)
        res = sim.step_scores(learner.act(obs.state, preds, explore=True))
        learner.record(obs, preds, res)
        obs = res.observation
        if learner.ready(tc.learning_starts):
            for _ in range(tc.updates_per_step):
                metrics = learner.learn()
        finished.append(res.finished_returns)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            done = np.concatenate(finished)
            row = {"step": float(step + 1), "transitions": float((step + 1) * tc.n_users)}
            if done.size:
                row["train_return"] = float(done.mean())
            row |= {k: v for k, v in metrics.items() if math.isfinite(v)}
            curve.append(row)
            finished = []
            if "train_return" in row:
                bar.set_postfix(ret=f"{row['train_return']:.0f}")
    return curve


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


def mfc_violation_rate(agent: TSHAgent, states: np.ndarray, grid: int = 33) -> float:
    """Share of adjacent grid steps (each task's [low, high], each state) where the inner stage
    moves against the task's direction: 0 for a monotone fusion."""
    k = len(agent.tasks)
    lo = np.array([t.low for t in agent.tasks], np.float32)[:, None]
    hi = np.array([t.high for t in agent.tasks], np.float32)[:, None]
    probe = lo + (hi - lo) * np.linspace(0.0, 1.0, grid, dtype=np.float32)[None, :]
    preds = np.broadcast_to(probe, (len(states), k, grid)).astype(np.float32)
    q = agent.inner(states, preds)
    direction = np.array([t.direction for t in agent.tasks], np.float32)[None, :, None]
    return float((direction * np.diff(q, axis=2) < -1e-6).mean())


# ------------------------------------------------------------------------------------ one run


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
            extra["mono_violation"] = mfc_violation_rate(agent, np.concatenate(recorder.states))
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


# ----------------------------------------------------------------------------------- budget


def estimate_seconds(runner: Runner, methods: Sequence[Method]) -> dict[str, float]:
    """Projected seconds per method and seed, from a short probe of each kind of learner:
    init, a collection step, a learning step and an evaluated session are timed and scaled
    to the configured budget. Costs a few seconds."""
    cfg, tc = runner.config, runner.config.train
    per_key: dict[str, float] = {}
    probe_sessions = min(200, tc.eval_sessions)
    cache: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    for method in methods:
        signature = (method.kind, tuple(p for p in method.tsh if p[0] != "lam"))
        if signature in cache:
            per_key[method.key] = cache[signature]
            continue
        if method.kind == "cem":
            t = time.perf_counter()
            fn = fixed_weights_score_fn(np.zeros(len(runner.tasks)), method.formula or "linear",
                                        cfg.formula.beta)  # fmt: skip
            evaluate(runner.train_sim, fn, probe_sessions, 999_999)
            per_session = (time.perf_counter() - t) / probe_sessions
            sessions = cfg.cem.iterations * cfg.cem.population * cfg.cem.sessions
            est = per_session * (sessions + tc.eval_sessions)
        elif method.kind == "init":
            t = time.perf_counter()
            learner = runner.make_learner(method, seed=0)
            runner.evaluate(learner.score_fn(), probe_sessions)
            est = (time.perf_counter() - t) * tc.eval_sessions / probe_sessions
        else:
            t = time.perf_counter()
            learner = runner.make_learner(method, seed=0)
            init = time.perf_counter() - t
            warm = max(2, math.ceil(cfg.tsh.batch_size / tc.n_users))
            t = time.perf_counter()
            run_online(runner.train_sim, learner, tc, seed=0, steps=warm, log_every=warm)
            collect = (time.perf_counter() - t) / warm
            learn = 0.0
            if method.kind == "batchrl" or learner.ready(0):
                learner.learn()  # warm-up
                times = []
                for _ in range(9):
                    t = time.perf_counter()
                    learner.learn()
                    times.append(time.perf_counter() - t)
                learn = float(np.median(times))
            t = time.perf_counter()
            runner.evaluate(learner.score_fn(), probe_sessions)
            per_session = (time.perf_counter() - t) / probe_sessions
            updates = tc.total_steps * tc.updates_per_step
            est = init + tc.total_steps * collect + updates * learn + per_session * tc.eval_sessions
        cache[signature] = per_key[method.key] = est
    return per_key


# ---------------------------------------------------------------------------------- the study


def summarise(trials: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 with one seed) over seeds."""
    out: dict[str, float] = {"n_seeds": float(len(trials))}
    for key in ("return_mean", "length_mean", "seconds", "mono_violation"):
        values = [t[key] for t in trials if t.get(key) is not None]
        if not values:
            continue
        arr = np.asarray(values, np.float64)
        name = key.removesuffix("_mean")
        out[f"{name}_mean"] = float(arr.mean())
        out[f"{name}_std"] = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return out


def run_paper(
    config: PaperConfig,
    out: Path,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    jobs: int = 1,
    merge: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every method ``config.trials`` times; write paper.json/paper.md.

    ``jobs`` > 1 runs (method, seed) pairs in that many worker processes (each with
    ``config.torch_threads`` torch threads). Every run reseeds its simulator, networks and
    replay from its seed, so the results do not depend on ``jobs`` or on the order of runs.

    ``merge`` adds the methods run now to an existing ``out/paper.json`` of the same study (same
    configuration but for the method list, same plain-sum result), replacing their old entries:
    one more method does not need the whole study again."""
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        prior = _prior_study(config, out) if merge else None
        return _run_paper(config, out, progress, echo, jobs, prior)
    finally:
        torch.set_num_threads(threads_before)


class StudyMismatch(ValueError):
    """``merge`` asked for a study that is absent or was run with another configuration."""


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "methods"}


def _prior_study(config: PaperConfig, out: Path) -> dict[str, Any]:
    path = out / "paper.json"
    if not path.is_file():
        raise StudyMismatch(f"nothing to merge into: {path} does not exist")
    prior: dict[str, Any] = json.loads(path.read_text())
    mine, theirs = _comparable(config.as_dict()), _comparable(prior["config"])
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise StudyMismatch(
            f"cannot merge into {path}: its configuration differs in {', '.join(differ)}"
        )
    return prior


def _run_paper(
    config: PaperConfig,
    out: Path,
    progress: bool,
    echo: Callable[[str], None],
    n_jobs: int,
    prior: dict[str, Any] | None = None,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    torch_threads = torch.get_num_threads()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    runner = Runner(config, progress=progress)
    methods = [METHOD_BY_KEY[k] for k in config.methods]

    t = time.perf_counter()
    estimates = estimate_seconds(runner, methods)
    probe_s = time.perf_counter() - t
    plain = runner.plain_sum()
    projected = sum(estimates.values()) * config.trials
    echo(
        f"paper: {len(methods)} methods x {config.trials} seeds, {n_jobs} job(s); projected "
        f"{projected / 60 / n_jobs:.1f} min (probe {probe_s:.1f} s; per seed: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in estimates.items())
        + ")"
    )

    results: dict[str, Any] = {}
    jobs = [(m, s) for m in methods for s in range(config.trials)]

    def checkpoint_of(method: Method, seed: int) -> Path | None:
        if seed != 0:
            return None
        return ckpt_dir / f"{method.key}{'.json' if method.kind == 'cem' else '.safetensors'}"

    trials: dict[tuple[str, int], Trial] = {}
    bar = tqdm(total=len(jobs), desc="paper", disable=not progress, unit="run")
    spent = estimated = 0.0  # of the finished runs: the probe's error so far rescales the rest
    for method, seed, trial in _execute(runner, jobs, checkpoint_of, jobs_n=n_jobs):
        trials[(method.key, seed)] = trial
        spent += trial.seconds
        estimated += estimates[method.key]
        left = sum(estimates[m.key] for m, s in jobs if (m.key, s) not in trials)
        scale = spent / estimated if estimated > 0 else 1.0
        bar.set_postfix_str(
            f"{method.key} seed {seed} done, ~{left * scale / 60 / n_jobs:.0f} min left"
        )
        bar.update()
    bar.close()
    for method, seed in jobs:  # assemble in a fixed order, whatever order the runs finished in
        first_ckpt = checkpoint_of(method, 0)  # seed 0's model is the one kept
        assert first_ckpt is not None
        entry = results.setdefault(
            method.key,
            {
                "label": method.label,
                "kind": method.kind,
                "table": method.table,
                "formula": method.formula,
                "tsh_overrides": dict(method.tsh),
                "projected_seconds_per_seed": estimates[method.key],
                "checkpoint": str(first_ckpt.relative_to(out)),
                "trials": [],
            },
        )
        entry["trials"].append(trials[(method.key, seed)].as_dict())
        entry["summary"] = summarise(entry["trials"])

    seconds = time.perf_counter() - t_start
    meta = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": seconds,
        "projected_seconds": projected,
        "probe_seconds": probe_s,
        "torch_threads": torch_threads,
        "jobs": n_jobs,
        "machine": platform.platform(),
        "seeds": list(range(config.trials)),
        "world_seed": config.sim.seed,
        "population": runner.train_sim.population,
        "eval_seed": config.train.eval_seed,
        "eval_sessions": config.train.eval_sessions,
    }
    report: dict[str, Any] = {
        "meta": meta,
        "config": config.as_dict(),
        "plain_sum": plain,
        "methods": results,
    }
    if prior is not None:
        if prior["plain_sum"] != plain:
            raise RuntimeError("the plain sum changed since the merged study: not the same world")
        merged = {k: v for k, v in prior["methods"].items() if k not in results} | results
        keys = [m.key for m in METHODS if m.key in merged]
        report = prior | {"methods": {k: merged[k] for k in keys}}
        report["config"] = prior["config"] | {"methods": keys}
        report["meta"] = prior["meta"] | {
            "merged": [*prior["meta"].get("merged", []), {**meta, "methods": list(results)}]
        }
    report["verdict"] = verdict(report)
    (out / "paper.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, out)
    echo(render_tables(report))
    echo(
        f"paper: done in {seconds / 60:.1f} min (projected {projected / 60 / n_jobs:.1f} min); "
        f"wrote {out / 'paper.md'}"
    )
    return report


# ------------------------------------------------------------------------------ parallel runs

_WORKER_RUNNER: Runner | None = None


def _worker_init(config: PaperConfig) -> None:
    global _WORKER_RUNNER
    torch.set_num_threads(config.torch_threads)
    _WORKER_RUNNER = Runner(config)


def _worker_run(key: str, seed: int, checkpoint: Path | None) -> Trial:
    assert _WORKER_RUNNER is not None
    return _WORKER_RUNNER.run(METHOD_BY_KEY[key], seed, checkpoint)


def _execute(
    runner: Runner,
    jobs: Sequence[tuple[Method, int]],
    checkpoint_of: Callable[[Method, int], Path | None],
    jobs_n: int,
) -> Iterator[tuple[Method, int, Trial]]:
    """Run every (method, seed), in this process or in ``jobs_n`` spawned workers; yields as
    runs finish. The longest projected runs are not reordered: the list is already grouped
    by method, and worker start-up is a few seconds against minutes of work."""
    if jobs_n == 1:
        for method, seed in jobs:
            yield method, seed, runner.run(method, seed, checkpoint_of(method, seed))
        return
    ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
    with ProcessPoolExecutor(
        jobs_n, mp_context=ctx, initializer=_worker_init, initargs=(runner.config,)
    ) as pool:
        futures = {pool.submit(_worker_run, m.key, s, checkpoint_of(m, s)): (m, s) for m, s in jobs}
        for future in as_completed(futures):
            method, seed = futures[future]
            yield method, seed, future.result()


# ------------------------------------------------------------------------------------ report


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Where xMTF stands against the best formula-based method and the plain sum."""
    methods = report["methods"]
    out: dict[str, Any] = {}
    present = [k for k in FORMULA_BASELINES if k in methods]
    if "xmtf" not in methods or not present:
        out["text"] = "xMTF or every formula baseline is missing from this run: no comparison."
        return out
    x = methods["xmtf"]["summary"]
    best = max(present, key=lambda k: methods[k]["summary"]["return_mean"])
    b = methods[best]["summary"]
    diff = x["return_mean"] - b["return_mean"]
    se = math.sqrt(x["return_std"] ** 2 / x["n_seeds"] + b["return_std"] ** 2 / b["n_seeds"])
    z = diff / se if se > 0 else None
    plain = report["plain_sum"]["return_mean"]
    out |= {
        "best_formula_baseline": best,
        "xmtf_minus_best": diff,
        "z": z,
        "xmtf_beats_best_formula": bool(diff > 0),
        "xmtf_vs_plain_sum_pct": 100.0 * (x["return_mean"] / plain - 1.0),
    }
    label = methods[best]["label"]
    if z is None:
        noise = " (no spread over seeds, e.g. a single seed: significance not assessed)"
    else:
        noise = f" (difference / s.e. = {z:.1f}" + (
            "; within noise, |difference| < 2 s.e.)" if abs(z) < 2 else ")"
        )
    if diff > 0:
        text = (
            f"xMTF beats the best formula-based method, {label}, by {diff:.1f} s of watch time "
            f"per session{noise}."
        )
    else:
        text = (
            f"xMTF does NOT beat the best formula-based method: {label} is ahead by "
            f"{-diff:.1f} s of watch time per session{noise}. "
            "The paper's claim is not reproduced on this simulator with this budget."
        )
    text += f" xMTF vs the plain sum: {out['xmtf_vs_plain_sum_pct']:+.1f} %."
    lam_keys = [k for k in methods if methods[k]["table"] == 4] + ["xmtf"]
    if len(lam_keys) > 1:
        best_lam = max(lam_keys, key=lambda k: methods[k]["summary"]["return_mean"])
        out["best_lambda"] = _lam_of(methods[best_lam], report)
        text += f" Best λ in Table 4: {out['best_lambda']:g} (the paper's: 0.4)."
    ranking = sorted(methods, key=lambda k: -methods[k]["summary"]["return_mean"])
    out["ranking"] = ranking
    out["text"] = text
    return out


def _lam_of(entry: dict[str, Any], report: dict[str, Any]) -> float:
    return float(entry["tsh_overrides"].get("lam", report["config"]["tsh"]["lam"]))


METHOD_NOTES = """\
* Formula 1: `z = Σ a_k o_k`; formula 2: `z = Σ a_k log(o_k + β)`, β = {beta:g}.
  Formula methods search log-weights `u_k`, `a_k = exp(u_k)`, `u_k ∈ [{low:g}, {high:g}]`:
  monotone by construction; `u = 0` is the plain sum (formula 1).
* CEM-1/2: cross-entropy method over the 6 non-personalised log-weights, each candidate scored
  by the mean watch time of simulated training sessions (never the evaluation users).
* TD3-1/2: TD3 (twin critics with the min target, target-policy smoothing, delayed actor and
  target updates) whose action is the per-request log-weights of the formula.
* BatchRL-MTF-1/2: TD3+BC (behaviour-cloning regularised offline actor-critic) trained only on
  a fixed log collected by the neutral weights plus Gaussian noise.
* xMTF: TSH (critic, actor, inner stage with `λ Σ L_mono + (1-λ) L_transfer`), λ = 0.4 unless
  stated; "monotone by construction": non-negative weights on the MFCs' prediction path.
* xMTF w/o outer stage: no RL; the MFCs are trained with eq. 18 whose transfer label is each
  shown item's observed watch time (BPR over shown-item pairs), i.e. myopic.
* xMTF w/o inner stage: no MFCs; TSH's actor-critic drives `z = Σ o_k (1 + a_k o_k)`.
* Formula-based methods for the verdict: CEM, TD3, BatchRL-MTF and xMTF w/o inner stage."""


def _row(label: str, s: dict[str, float], plain: float, violation: bool) -> str:
    ret = _pm(s["return_mean"], s.get("return_std", 0.0), 1)
    length = _pm(s["length_mean"], s.get("length_std", 0.0), 2)
    gain = 100.0 * (s["return_mean"] / plain - 1.0)
    viol = (
        _pm(100.0 * s["mono_violation_mean"], 100.0 * s["mono_violation_std"], 2)
        if violation and "mono_violation_mean" in s
        else "–"
    )
    seconds = f"{s['seconds_mean']:.0f}" if "seconds_mean" in s else "–"
    return f"| {label} | {ret} | {length} | {gain:+.1f} % | {viol} | {seconds} |"


_HEADER = (
    "| {first} | watch time / session (s) | session length (requests) | vs plain sum "
    "| MFC monotonicity violations (%) | train s / seed |\n|---|---:|---:|---:|---:|---:|"
)


def render_tables(report: dict[str, Any]) -> str:
    methods = report["methods"]
    plain_eval = report["plain_sum"]
    plain = plain_eval["return_mean"]
    plain_row = {
        "return_mean": plain,
        "return_std": 0.0,
        "length_mean": plain_eval["length_mean"],
        "length_std": 0.0,
    }
    lines = ["### Table 3: offline performance of the methods", "", _HEADER.format(first="method")]
    lines.append(_row("plain sum (no training)", plain_row, plain, False))
    for m in METHODS:
        if m.table == 3 and m.key in methods:
            mfc = m.kind in MFC_KINDS and dict(m.tsh).get("use_inner", True)
            lines.append(_row(m.label, methods[m.key]["summary"], plain, mfc))
    lam_rows = [(_lam_of(methods[k], report), k) for k in methods if methods[k]["table"] == 4]
    if "xmtf" in methods:
        lam_rows.append((_lam_of(methods["xmtf"], report), "xmtf"))
    if lam_rows:
        lines += ["", "### Table 4: xMTF under different λ (eq. 18)", ""]
        lines.append(_HEADER.format(first="λ"))
        for lam, k in sorted(lam_rows):
            lines.append(_row(f"λ = {lam:g}", methods[k]["summary"], plain, True))
    deviations = [m for m in METHODS if m.table == 5 and m.key in methods]
    if deviations:
        lines += ["", "### Table 5: this implementation's deviations from the paper, undone", ""]
        lines.append(_HEADER.format(first="method"))
        for m in deviations:
            lines.append(_row(m.label, methods[m.key]["summary"], plain, True))
    return "\n".join(lines)


#: Hand-written findings kept next to paper.json; appended to paper.md on every run.
NOTES_FILE = "paper-notes.md"


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    """Write ``out/paper.md``: the report's tables plus the findings in ``out/NOTES_FILE``."""
    notes = out / NOTES_FILE
    path = out / "paper.md"
    path.write_text(render_markdown(report, notes.read_text() if notes.is_file() else None))
    return path


def render_run(out: Path) -> Path:
    """Re-render ``out/paper.md`` from ``out/paper.json`` and the notes file (no training)."""
    return write_markdown(json.loads((out / "paper.json").read_text()), out)


def render_markdown(report: dict[str, Any], findings: str | None = None) -> str:
    meta, cfg = report["meta"], report["config"]
    tc = cfg["train"]
    quick = (
        "\n> **Quick mode**: tiny budgets for a smoke test; these numbers say nothing about "
        "the methods.\n"
        if cfg["quick"]
        else ""
    )
    n = cfg["trials"]
    jobs = int(meta.get("jobs", 1))
    merged = "".join(
        f"; {', '.join(m['methods'])} added on {m['created']} in {m['seconds'] / 60:.1f} min"
        for m in meta.get("merged", [])
    )
    population = {
        "kuairand": "real KuaiRand-Pure user profiles and videos (`XMTF_KUAIRAND_DIR`)",
        "synthetic": "synthetic users and videos with KuaiRand's columns (no `XMTF_KUAIRAND_DIR`"
        " set: what a fresh clone reproduces)",
    }.get(meta.get("population", ""), "not recorded in this run's paper.json")
    head = f"""# xMTF offline study on the simulator (paper Tables 3 and 4)
{quick}
Generated by `xmtf-train paper` on {meta["created"]} in {meta["seconds"] / 60:.1f} min with
{jobs} parallel job(s) of {meta["torch_threads"]} torch thread(s) (projected
{meta["projected_seconds"] / 60 / jobs:.1f} min){merged}.

* Population: {population}.
* Metric: total watch time per session (s) on the same {meta["eval_sessions"]} evaluation
  users (`evaluate(..., seed={meta["eval_seed"]})`) of one simulated world (world seed
  {meta["world_seed"]}); each cell is the mean ± sample std over {n} training seed(s)
  ({", ".join(map(str, meta["seeds"]))}) of the per-seed mean over those sessions. The plain sum
  is deterministic (one evaluation, no training), so it has no spread over seeds.
* Budget of every learning method: {tc["total_steps"]} collection steps x {tc["n_users"]}
  concurrent users, {tc["updates_per_step"]} updates per step (batch {cfg["tsh"]["batch_size"]});
  the same five-layer actor/critic MLPs (width {cfg["tsh"]["hidden"]}) and RL hyper-parameters
  for every RL method. CEM: {cfg["cem"]["iterations"]} iterations x {cfg["cem"]["population"]}
  candidates x {cfg["cem"]["sessions"]} sessions. BatchRL-MTF: the same number of transitions,
  logged once by the neutral weights plus noise, then the same number of updates offline.
* MFC monotonicity violations: share of adjacent steps of a 33-point grid over each task's
  prediction range, at states met during evaluation, where the inner stage moves against the
  task's direction (formula methods are monotone by construction).
"""
    verdict_text = report.get("verdict", {}).get("text", "")
    ranking = report.get("verdict", {}).get("ranking", [])
    labels = {k: report["methods"][k]["label"] for k in report["methods"]}
    body = render_tables(report)
    form = cfg["formula"]
    notes = METHOD_NOTES.format(
        beta=form["beta"], low=form["log_weight_low"], high=form["log_weight_high"]
    )
    tail = f"""

### Verdict

{verdict_text}

Ranking by mean watch time: {" > ".join(labels[k] for k in ranking)}.

The paper's ordering (CEM < TD3/BatchRL < xMTF; λ = 0.4 best) is the hypothesis under test,
not a target: these are the numbers that came out.

### Methods (details in `trainer/baselines.py`)

{notes}
"""
    extra = f"\n{findings.strip()}\n" if findings else ""
    return head + "\n" + body + tail + extra
