"""One run of the study: train one method with one seed in the study's world, and evaluate it
each time its training has used one of the budgets.

The protocol (results/worlds.md, SPEC §8): every method spends simulated requests through one
counter, the training simulator's ``requests_served`` plus, for learners with checkpoint
selection, the validation simulator's; CEM's candidate evaluations are its training. At each
budget the method's current model (for a learner: the checkpoint that validation selected, or
its start) is evaluated on the evaluation users, a seed never used for training or selection,
and each user's total watch time is kept so that methods compare user by user.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer import losses
from trainer.loop import Learner, ScoreFn, TSHLearner, run_online
from trainer.policy_search import PolicySearchLearner
from trainer.replay import ReplayBuffer
from trainer.selection import Selector
from trainer.sim import UserSimulator, evaluate
from trainer.study.config import PaperConfig
from trainer.study.methods.cem import CandidateSessions, SearchedWeights, cem_optimize
from trainer.study.methods.formulas import calibrated, fixed_weights_score_fn, task_directions
from trainer.study.methods.myopic import MyopicMFCLearner
from trainer.study.methods.td3 import TD3Agent, TD3Learner
from trainer.study.registry import METHOD_BY_KEY, MFC_KINDS, Method
from trainer.tsh import TSHAgent

log = logging.getLogger(__name__)

#: Points of the monotonicity probe grid of the study's MFC violation metric.
STUDY_GRID = 33
#: Seeds of the users CEM scores its candidates on (common random numbers within a population).
CEM_USERS = 1_000_000


def mfc_violation_rate(agent: TSHAgent, states: np.ndarray, grid: int = STUDY_GRID) -> float:
    """Share of adjacent grid steps (each task's [low, high], each state) where the inner stage
    moves against the task's direction: 0 for a monotone fusion."""
    probe = losses.probe_grid(agent.tasks, grid)
    q = agent.inner(states, np.broadcast_to(probe, (len(states), *probe.shape)).astype(np.float32))
    return float(losses.grid_violations(q, agent.tasks).mean())


class _StateRecorder:
    """Wraps a score_fn and keeps a sample of the states it sees (for the audits)."""

    def __init__(self, fn: ScoreFn, keep: int = 512, per_call: int = 16) -> None:
        self.fn, self.keep, self.per_call = fn, keep, per_call
        self.states: list[np.ndarray] = []
        self.count = 0

    def __call__(self, state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        if self.count < self.keep:
            take = state[:: max(1, len(state) // self.per_call)][: self.keep - self.count]
            self.states.append(take.copy())
            self.count += len(take)
        return self.fn(state, predictions)


@dataclass
class Trial:
    """One (method, seed): its evaluation at every budget (the last one is ``eval``)."""

    seed: int
    budgets: list[dict[str, Any]]
    seconds: float
    curve: list[dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eval(self) -> dict[str, Any]:
        return self.budgets[-1]

    def as_dict(self) -> dict[str, Any]:
        last = self.eval
        return {
            "seed": self.seed,
            "return_mean": last["return_mean"],
            "length_mean": last["length_mean"],
            "requests": last["requests"],
            "seconds": self.seconds,
            **self.extra,
            "budgets": self.budgets,
            "curve": self.curve,
        }


class Runner:
    """Builds the study's world once and runs (method, seed) pairs in it."""

    def __init__(self, config: PaperConfig, progress: bool = False) -> None:
        self.config = config
        self.progress = progress
        world = config.world
        real = bool(world.data_dir)
        self.train_sim = UserSimulator(replace(world, user_fold="train" if real else ""))
        self.val_world = replace(world, user_fold="validation" if real else "")
        self.eval_sim = UserSimulator(replace(world, user_fold="evaluation" if real else ""))
        self.tasks = self.train_sim.task_specs()
        self.directions = task_directions(self.tasks)
        self.state_dim = self.train_sim.state_dim

    # -- evaluation
    def evaluate_users(self, fn: ScoreFn) -> tuple[np.ndarray, np.ndarray]:
        """Per-user returns and lengths on the evaluation users (not counted in any budget)."""
        tc = self.config.train
        res = evaluate(self.eval_sim, fn, tc.eval_sessions, tc.eval_seed)
        return res.returns, res.lengths

    def evaluate(self, fn: ScoreFn, n_sessions: int | None = None) -> dict[str, float]:
        """Summary of ``fn`` on the evaluation users."""
        tc = self.config.train
        return evaluate(self.eval_sim, fn, n_sessions or tc.eval_sessions, tc.eval_seed).summary()

    def _budget_row(self, budget: int, used: int, fn: ScoreFn) -> dict[str, Any]:
        returns, lengths = self.evaluate_users(fn)
        cap = self.config.world.max_steps
        return {
            "budget": budget,
            "requests": used,
            "return_mean": float(returns.mean()),
            "length_mean": float(lengths.mean()),
            "cap_share": float((lengths >= cap).mean()),
            "returns": np.round(returns, 1).tolist(),
        }

    # -- builders
    def _replay(self, seed: int) -> ReplayBuffer:
        tc = self.config.train
        k = len(self.tasks)
        return ReplayBuffer(tc.replay_capacity, self.state_dim, k, tc.replay_candidates, seed=seed)

    def make_learner(self, method: Method, seed: int) -> Learner:
        cfg, tc = self.config, self.config.train
        tsh = method.tsh_config(cfg.tsh)
        if method.kind in ("tsh", "init", "cem_xmtf"):
            agent = TSHAgent(self.tasks, self.state_dim, tsh, seed=seed)
            return TSHLearner(agent, self._replay(seed), tsh.batch_size)
        if method.kind == "myopic":
            agent = TSHAgent(self.tasks, self.state_dim, tsh, seed=seed)
            m = max(tc.replay_candidates, cfg.world.top_n)
            return MyopicMFCLearner(agent, tc.replay_capacity, m, cfg.world.top_n, seed=seed)
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

    def make_es_learner(self, method: Method, seed: int) -> PolicySearchLearner:
        """xMTF whose outer stage is searched by ES; its actor is wide enough to hold a linear
        policy of the state (``write_linear_actor``)."""
        cfg = self.config
        tsh = method.tsh_config(cfg.tsh)
        tsh = replace(tsh, hidden=max(tsh.hidden, 2 * self.state_dim))
        agent = TSHAgent(self.tasks, self.state_dim, tsh, seed=seed)
        es = method.es_config(cfg.es)
        es = replace(es, personalise=es.personalise and tsh.use_state)
        return PolicySearchLearner(agent, es, seed)

    def formula_fn(self, method: Method, log_weights: np.ndarray) -> ScoreFn:
        """A fixed-weight formula (raw or calibrated predictions, as the method asks)."""
        assert method.formula is not None
        beta = self.config.formula.beta
        if not method.calibrated:
            return fixed_weights_score_fn(log_weights, method.formula, beta, self.directions)
        # calibrated() already orients each task; standardised, then shifted positive (the
        # formula's inputs): the shift does not change a linear formula's ranking
        fn = fixed_weights_score_fn(log_weights, method.formula, beta, None)
        tasks = self.tasks
        return lambda s, p: fn(s, calibrated(p, tasks) + 10.0)

    # -- runs
    def run(self, method: Method, seed: int, checkpoint: Path | None = None) -> Trial:
        t0 = time.perf_counter()
        if method.kind in ("cem", "cem_xmtf"):
            return self._run_cem(method, seed, checkpoint, t0)
        if method.kind in ("control", "init"):
            return self._run_fixed(method, seed, checkpoint, t0)
        if method.kind == "es_xmtf":
            return self._run_es(method, seed, checkpoint, t0)
        return self._run_online(method, seed, checkpoint, t0)

    def _run_fixed(self, method: Method, seed: int, checkpoint: Path | None, t0: float) -> Trial:
        """A control: no training, the same row at every budget."""
        extra: dict[str, Any] = {}
        if method.kind == "init":
            learner = self.make_learner(method, seed)
            recorder = _StateRecorder(learner.score_fn())
            row = self._budget_row(0, 0, recorder)
            agent = learner.agent  # type: ignore[attr-defined]
            extra["mono_violation"] = mfc_violation_rate(agent, np.concatenate(recorder.states))
            if checkpoint is not None:
                learner.save(checkpoint)
        else:
            k = len(self.tasks)
            row = self._budget_row(0, 0, self.formula_fn(method, np.zeros(k)))
        rows = [{**row, "budget": b} for b in self.config.budgets]
        return Trial(seed, rows, time.perf_counter() - t0, [], extra)

    def _run_online(self, method: Method, seed: int, checkpoint: Path | None, t0: float) -> Trial:
        cfg, tc = self.config, self.config.train
        learner = self.make_learner(method, seed)
        start_requests = self.train_sim.requests_served
        selector = None
        if tc.select_every and method.kind != "batchrl":
            selector = self._selector()
            selector.start(learner)
        pending = list(cfg.budgets)
        rows: list[dict[str, Any]] = []
        # the last budget's evaluation also samples the states for the audits below
        recorder: _StateRecorder | None = None

        def used() -> int:
            spent = self.train_sim.requests_served - start_requests
            return spent + (selector.requests if selector is not None else 0)

        def score_fn() -> ScoreFn:
            nonlocal recorder
            if pending:
                return learner.score_fn()
            recorder = _StateRecorder(learner.score_fn())
            return recorder

        def at_budget(budget: int) -> None:
            nonlocal recorder
            if selector is None:
                rows.append(self._budget_row(budget, used(), score_fn()))
                return
            row, sampled = self._selected_row(budget, used, learner, selector, not pending)
            rows.append(row)
            recorder = sampled or recorder

        def on_step(step: int, res: Any, metrics: dict[str, float]) -> bool:
            if selector is not None and step % tc.select_every == 0:
                selector.consider(step, learner)
            while pending and used() >= pending[0]:
                at_budget(pending.pop(0))
            return not pending

        steps = math.ceil(cfg.budgets[-1] / tc.n_users) * 4 + 10  # the budget stops it first
        desc = f"{method.key} s{seed}"
        if method.kind == "batchrl":
            steps = math.ceil(cfg.budgets[-1] / tc.n_users)
            log_every = cfg.log_every
            curve = run_online(self.train_sim, learner, tc, seed, steps=steps,
                               log_every=log_every, progress=self.progress, desc=desc)  # fmt: skip
            assert isinstance(learner, TD3Learner)
            curve = self._offline(learner, desc)
            pending.clear()  # one model after all its budgets: evaluated once
            row = self._budget_row(cfg.budgets[-1], used(), score_fn())
            rows = [{**row, "budget": b} for b in cfg.budgets]
        else:
            curve = run_online(self.train_sim, learner, tc, seed, steps=steps,
                               log_every=cfg.log_every, progress=self.progress, desc=desc,
                               on_step=on_step)  # fmt: skip
        if selector is not None:
            extra: dict[str, Any] = {"validation": selector.finish(learner)["validation"]}
        else:
            extra = {}
        assert recorder is not None, "the run ended before its last budget"
        states = np.concatenate(recorder.states)
        if method.kind in MFC_KINDS and method.tsh_config(cfg.tsh).use_inner:
            extra["mono_violation"] = mfc_violation_rate(learner.agent, states)  # type: ignore[attr-defined]
        extra["action_at_bound"] = _saturation(learner, states)
        if checkpoint is not None:
            learner.save(checkpoint)
        return Trial(seed, rows, time.perf_counter() - t0, curve, extra)

    def _offline(self, learner: TD3Learner, desc: str) -> list[dict[str, float]]:
        """BatchRL-MTF: train on the fixed log only (TD3+BC), never interacting."""
        cfg, tc = self.config, self.config.train
        replay, agent = learner.replay, learner.agent
        agent.observe(replay.state[: len(replay)])  # normalise with the whole log's moments
        n_updates = cfg.td3.offline_updates or (
            math.ceil(cfg.budgets[-1] / tc.n_users) * tc.updates_per_step
        )
        every = max(1, cfg.log_every * tc.updates_per_step)
        curve: list[dict[str, float]] = []
        for u in range(n_updates):
            metrics = learner.learn()
            if (u + 1) % every == 0 or u + 1 == n_updates:
                curve.append({"step": (u + 1) / tc.updates_per_step, **metrics})
        return curve

    def _selected_row(
        self,
        budget: int,
        used: Callable[[], int],
        learner: Any,
        selector: Selector,
        record: bool,
    ) -> tuple[dict[str, Any], _StateRecorder | None]:
        """The budget's evaluation of the checkpoint ``selector`` chose (the learner is put back
        as it was afterwards); ``record``: also sample the states it sees, for the audits.
        The requests ``used()`` are counted after the choice, so a confirmation test the choice
        ran (``train.confirm_sessions``) is in the row's count."""
        current = learner.snapshot()
        decision = selector.finish(learner)  # the selected checkpoint, put in place
        fn = learner.score_fn()
        recorder = _StateRecorder(fn) if record else None
        row = self._budget_row(budget, used(), recorder or fn)
        row["selected_step"] = decision["selected_step"]
        row["kept_start"] = decision["kept_start"]
        learner.restore(current)
        return row, recorder

    def _selector(self, sessions: int = 0) -> Selector:
        tc = self.config.train
        return Selector(
            UserSimulator(self.val_world),
            sessions or tc.val_sessions,
            tc.val_seed,
            tc.eval_seed,
            confirm_sessions=tc.confirm_sessions,
        )

    def _run_es(self, method: Method, seed: int, checkpoint: Path | None, t0: float) -> Trial:
        """xMTF with the outer stage searched by ES (trainer/policy_search.py) until each budget
        is spent; checkpoints are selected on validation users, as for the online learners."""
        cfg = self.config
        learner = self.make_es_learner(method, seed)
        start_requests = self.train_sim.requests_served
        # the policy's state standardisation, from states along neutral-policy sessions (counted)
        sampler = _StateRecorder(learner.score_fn(), keep=8192)
        evaluate(self.train_sim, sampler, 128, CEM_USERS - 1)
        learner.start(np.concatenate(sampler.states))
        selector = self._selector(cfg.es.val_sessions)
        selector.start(learner)
        val_cost = selector.requests  # one look at the validation users, in requests
        pending = list(cfg.budgets)
        rows: list[dict[str, Any]] = []
        curve: list[dict[str, float]] = []
        recorder: _StateRecorder | None = None
        extra: dict[str, Any] = {}

        def used() -> int:
            return self.train_sim.requests_served - start_requests + selector.requests

        def budget_row(look_at: int | None) -> None:
            """The next budget's row; ``look_at``: validate the learner as step ``look_at``
            first (else the selector's choice so far is evaluated)."""
            nonlocal recorder
            if look_at is not None:
                curve.append({"step": float(look_at), **selector.consider(look_at, learner)})
            budget = pending.pop(0)
            row, sampled = self._selected_row(budget, used, learner, selector, not pending)
            rows.append(row)
            recorder = sampled or recorder

        if learner.es.config.warm_share:
            warm = int(learner.es.config.warm_share * pending[-1]) - val_cost
            if warm > used():
                warm_curve, extra["warm_solution"] = self._warm_start(
                    learner, seed, used, warm, lambda: pending[0], lambda: budget_row(None)
                )
                curve += warm_curve
            else:
                log.warning(
                    "%s seed %d: es.warm_share leaves no requests for the global warm start "
                    "before the last budget (%d) and its validation look; ES starts from the "
                    "cells as initialised", method.key, seed, pending[-1],
                )  # fmt: skip
        it, per_iteration = 0, 0
        while pending:
            if used() + per_iteration + val_cost > pending[0]:
                # no room for another iteration and a look: look now, if a look still fits (the
                # warm start can end closer to a budget than one look; then the budget reports
                # the choice so far, the start, as the warm start's own rows do)
                fits = used() + val_cost <= pending[0]
                budget_row(look_at=it if fits else None)
                continue
            before = self.train_sim.requests_served
            users = CEM_USERS + 1000 * seed + it  # never the validation or evaluation users
            metrics = learner.iterate(self.train_sim, users)
            per_iteration = self.train_sim.requests_served - before
            it += 1
            curve.append({"step": float(it), "train_return": metrics["population_mean"], **metrics})
        extra["validation"] = selector.finish(learner)["validation"]
        assert recorder is not None
        states = np.concatenate(recorder.states)
        extra["mono_violation"] = mfc_violation_rate(learner.agent, states)
        extra["action_at_bound"] = _saturation(learner, states)
        if checkpoint is not None:
            learner.save(checkpoint)
        return Trial(seed, rows, time.perf_counter() - t0, curve, extra)

    def _warm_start(
        self,
        learner: PolicySearchLearner,
        seed: int,
        used: Callable[[], int],
        limit: int,
        next_budget: Callable[[], int],
        budget_row: Callable[[], None],
    ) -> tuple[list[dict[str, float]], dict[str, float]]:
        """The global warm start (``es.warm_share``): CEM over one weight vector of the linear
        formula on calibrated predictions (``cem1_cal``'s search, ``es.warm_sessions`` users
        per candidate) while its next iteration fits in ``limit`` requests, then its mean
        distilled into the cells. The requests of the first candidates of every population are
        the distillation data. A budget the search would pass is reported first
        (``budget_row``: nothing is distilled yet, so it is the start's row).
        Returns the curve rows and the solution (log-weights by task)."""
        cfg = self.config
        formula = METHOD_BY_KEY["cem1_cal"]
        objective = CandidateSessions(
            self.train_sim,
            lambda u: self.formula_fn(formula, u),
            learner.es.config.warm_sessions,
            lambda it: CEM_USERS + 1000 * seed + 500 + it,  # not the ES iterations' users
            wrap=lambda i, fn: (
                learner.recording(fn) if i < PolicySearchLearner.RECORDED_CANDIDATES else fn
            ),
        )

        def stop(done: int, mean: np.ndarray) -> bool:
            if used() + objective.cost > limit:
                return True
            while used() + objective.cost > next_budget():
                budget_row()
            return False

        k = len(self.tasks)
        result = cem_optimize(
            objective, k, cfg.cem, np.random.default_rng(seed),
            cfg.formula.log_weight_low, cfg.formula.log_weight_high,
            init_mean=np.zeros(k), init_std=np.full(k, cfg.cem.init_std),
            should_stop=stop,
        )  # fmt: skip
        rows = [
            {"step": 0.0, "warm_iteration": r["iteration"], "train_return": r["population_mean"]}
            for r in result.history
        ]
        metrics = learner.distill_formula(result.mean, cfg.world.top_n)
        solution = {t.name: float(u) for t, u in zip(self.tasks, result.mean, strict=True)}
        rows.append({"step": 0.0, "warm_requests": float(used()), **metrics})
        return rows, solution

    def _run_cem(self, method: Method, seed: int, checkpoint: Path | None, t0: float) -> Trial:
        """CEM until each budget is spent (the candidates' sessions are its training).

        Unguarded, a budget's row is the search's mean after the iteration that spent it.
        ``method.guarded``: guarded as the xMTF learners are, against the same reference, the
        model they start from and would replace (xMTF as initialised, this seed's): the search
        stops before an iteration would leave no room for a validation look, the look decides
        the row (xMTF as initialised unless the search's mean beats it with 95 % confidence),
        and the looks are paid from the budget."""
        cfg = self.config
        start_requests = self.train_sim.requests_served
        make_fn, low, high, init = self._cem_family(method, seed)
        pending = list(cfg.budgets)
        rows: list[dict[str, Any]] = []
        selector = self._selector(cfg.es.val_sessions) if method.guarded else None
        if selector is not None:  # the guard's reference: xMTF as initialised (params None)
            served = self.make_learner(METHOD_BY_KEY["xmtf_init"], seed).score_fn()
            weights = SearchedWeights(make_fn, None, served)
            selector.start(weights)
        val_cost = selector.requests if selector is not None else 0
        objective = CandidateSessions(
            self.train_sim,
            make_fn,
            cfg.cem.sessions,
            lambda it: CEM_USERS + 1000 * seed + it,  # never the validation or evaluation users
        )

        def used() -> int:
            looks = selector.requests if selector is not None else 0
            return self.train_sim.requests_served - start_requests + looks

        def budget_row(mean: np.ndarray, step: int) -> None:
            budget = pending.pop(0)
            if selector is None:
                rows.append(self._budget_row(budget, used(), make_fn(mean)))
                return
            weights.restore({"params": mean})
            selector.consider(step, weights)
            rows.append(self._selected_row(budget, used, weights, selector, False)[0])

        def should_stop(done: int, mean: np.ndarray) -> bool:
            while pending and (
                used() + objective.cost + val_cost > pending[0]
                if selector
                else used() >= pending[0]
            ):
                budget_row(mean, done)
            return not pending

        std = np.full(len(self.tasks), cfg.cem.init_std if method.kind == "cem" else 0.5)
        result = cem_optimize(
            objective, len(self.tasks), cfg.cem, np.random.default_rng(seed), low, high,
            init_mean=init, progress=self.progress, desc=f"{method.key} s{seed}",
            init_std=std, should_stop=should_stop,
        )  # fmt: skip
        while pending:  # the iteration cap came first: what the search reached
            budget_row(result.mean, len(result.history))
        extra: dict[str, Any] = {}
        chosen: np.ndarray | None = result.mean
        if selector is not None:  # the guarded solution is the selected one
            extra["validation"] = selector.finish(weights)["validation"]
            chosen = weights.params
        solution = (
            None  # the guard kept xMTF as initialised
            if chosen is None
            else {t.name: float(u) for t, u in zip(self.tasks, chosen, strict=True)}
        )
        if checkpoint is not None:
            checkpoint.write_text(json.dumps({"kind": method.kind, "solution": solution}))
        curve = [
            {"step": row["iteration"], "train_return": row["population_mean"], **row}
            for row in result.history
        ]
        extra["solution"] = solution
        return Trial(seed, rows, time.perf_counter() - t0, curve, extra)

    def _cem_family(
        self, method: Method, seed: int
    ) -> tuple[Callable[[np.ndarray], ScoreFn], float, float, np.ndarray]:
        """What CEM searches: a formula's log-weights, or (``cem_xmtf``) a constant action on
        the untrained xMTF of this seed (its cells as initialised, ``a`` the same for all)."""
        k = len(self.tasks)
        if method.kind == "cem":
            lo, hi = self.config.formula.log_weight_low, self.config.formula.log_weight_high
            return (lambda u: self.formula_fn(method, u)), lo, hi, np.zeros(k)
        tsh = method.tsh_config(self.config.tsh)
        agent = TSHAgent(self.tasks, self.state_dim, tsh, seed=seed)
        agent.observe(self.train_sim.reset(512, seed=CEM_USERS - 1).state)

        def make(action: np.ndarray) -> ScoreFn:
            a = np.asarray(action, np.float32)
            return lambda s, p: agent.scores(s, p, np.tile(a, (len(s), 1)))

        return make, tsh.action_low, tsh.action_high, np.zeros(k)


def _saturation(learner: object, states: np.ndarray) -> float | None:
    """Share of action dimensions within 1 % of the range of a bound (greedy actions)."""
    agent = getattr(learner, "agent", None)
    if isinstance(agent, TSHAgent):
        action, _ = agent.act(states, explore=False)
        lo, hi = agent.config.action_low, agent.config.action_high
    elif isinstance(agent, TD3Agent):
        action, lo, hi = agent.act(states, explore=False), agent.low, agent.high
    else:
        return None
    margin = 0.01 * (hi - lo)
    return float(((action <= lo + margin) | (action >= hi - margin)).mean())
