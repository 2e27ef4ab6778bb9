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
    budget = cfg.budgets[-1]
    n_evals = len(cfg.budgets)
    for method in methods:
        signature = (method.kind, tuple(p for p in method.tsh if p[0] != "lam"))
        if signature in cache:
            per_key[method.key] = cache[signature]
            continue
        t = time.perf_counter()
        fn = fixed_weights_score_fn(np.zeros(len(runner.tasks)), "linear", cfg.formula.beta)
        before = runner.train_sim.requests_served
        evaluate(runner.train_sim, fn, probe_sessions, 999_999)
        probed = max(1, runner.train_sim.requests_served - before)
        per_request = (time.perf_counter() - t) / probed
        eval_requests = tc.eval_sessions * probed / probe_sessions
        if method.kind in ("cem", "cem_xmtf", "es_xmtf"):
            est = per_request * (budget + n_evals * eval_requests)
            if method.kind != "cem":
                est *= 3.0  # the MFCs score every candidate (torch), not a formula
        elif method.kind in ("control", "init"):
            est = per_request * eval_requests * (3.0 if method.kind == "init" else 1.0)
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
                for _ in range(5):
                    t = time.perf_counter()
                    learner.learn()
                    times.append(time.perf_counter() - t)
                learn = float(np.median(times))
            steps = budget / tc.n_users
            scoring = collect / tc.n_users  # per request, with the learner's own scoring
            evals = scoring * eval_requests * (n_evals + 1)
            updates = steps * tc.updates_per_step
            if method.kind == "batchrl" and cfg.td3.offline_updates:
                updates = cfg.td3.offline_updates
            est = init + steps * collect + updates * learn + evals
        cache[signature] = per_key[method.key] = est
    return per_key
