"""How long a study will take: a short timed probe of each kind of learner, scaled up."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.loop import run_online
from trainer.sim import evaluate
from trainer.study.methods.formulas import fixed_weights_score_fn
from trainer.study.registry import Method
from trainer.study.runner import Runner


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
