"""``xmtf-train headroom``: how much personalisation can win in each world, without any learner.

For every world of the family (``results/worlds.md``) three fusions of the same form, formula 1
on calibrated predictions ``z = sum_k exp(u_k) x_k`` (``x_k`` each task's standardised
prediction in its direction), are fitted by CEM on training users at the same budget of
simulated requests and evaluated on the same held-out evaluation users:

* ``global``: one weight vector ``u`` for everyone;
* ``segment``: ``u = u_0 + A f`` with ``f`` the observable ``profile_latent0, 1`` features;
* ``oracle``: ``u = u_0 + A z`` with ``z`` the user's hidden tastes (what no policy can see).

``headroom(d) = oracle - global`` and ``observable = segment - global``, as paired differences
over the evaluation users (and the CEM seeds) with 95 % bootstrap intervals
(:mod:`trainer.study.stats`). Numpy only.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shared.tasks import TaskSpec
from trainer import stats
from trainer.config import to_dict
from trainer.loop import ScoreFn
from trainer.sim import SimConfig, UserSimulator, evaluate
from trainer.study.methods.cem import CEMConfig, cem_optimize
from trainer.study.methods.formulas import calibrated

log = logging.getLogger(__name__)

POLICIES = ("global", "segment", "oracle")
SEGMENT_FEATURES = ("profile_latent0", "profile_latent1")
#: Seeds of the study's user sets (results/worlds.md).
VALIDATION_USERS = 20_000
EVALUATION_USERS = 30_000
TRAINING_USERS = 1_000_000


@dataclass(frozen=True)
class HeadroomConfig:
    """One headroom study: a world family slice, the CEM budget and the evaluation."""

    sim: SimConfig = field(default_factory=lambda: SimConfig(max_steps=80, seed=101))
    doses: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    cem: CEMConfig = field(
        default_factory=lambda: CEMConfig(iterations=20, population=24, sessions=150)
    )
    seeds: int = 1  # CEM seeds per (dose, policy)
    eval_sessions: int = 10_000
    log_weight_low: float = -3.0
    log_weight_high: float = 3.0
    quick: bool = False

    @classmethod
    def quick_config(cls) -> HeadroomConfig:
        return cls(
            sim=SimConfig(max_steps=20, seed=101, n_items=500, n_candidates=20),
            doses=(0.0, 1.0),
            cem=CEMConfig(iterations=2, population=4, sessions=16),
            eval_sessions=64,
            quick=True,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "sim": to_dict(self.sim),
            "doses": list(self.doses),
            "cem": to_dict(self.cem),
            "seeds": self.seeds,
            "eval_sessions": self.eval_sessions,
            "log_weight_low": self.log_weight_low,
            "log_weight_high": self.log_weight_high,
            "quick": self.quick,
        }


def personalised_score_fn(
    params: np.ndarray,
    tasks: Sequence[TaskSpec],
    features: Callable[[np.ndarray], np.ndarray] | None,
    low: float,
    high: float,
) -> ScoreFn:
    """``z = sum_k exp(u_k) x_k`` with ``u = u_0 + A f(state)`` (``A`` absent: global)."""
    k = len(tasks)
    u0, coef = params[:k], params[k:].reshape(k, -1) if features is not None else None

    def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        u = np.broadcast_to(u0, (len(state), k))
        if features is not None and coef is not None:
            u = u + features(state) @ coef.T
        w = np.exp(np.clip(u, low, high))
        return (w[:, :, None] * calibrated(predictions, tasks)).sum(axis=1)

    return score


def _features(policy: str, sim: UserSimulator) -> Callable[[np.ndarray], np.ndarray] | None:
    if policy == "global":
        return None
    if policy == "segment":
        cols = [sim.state_feature_names.index(n) for n in SEGMENT_FEATURES]
        return lambda state: np.asarray(state[:, cols], np.float64)
    if policy == "oracle":
        return lambda state: sim.hidden_tastes(active_only=True).astype(np.float64)
    raise ValueError(f"unknown policy {policy!r}")


@dataclass
class Fit:
    dose: float
    policy: str
    seed: int
    params: list[float]
    requests: int
    returns: list[float]  # per evaluation user
    lengths: list[int]
    seconds: float


def fit_world(config: HeadroomConfig, dose: float, seed: int) -> list[Fit]:
    """The three policies of one world and CEM seed. ``segment`` and ``oracle`` start from the
    ``global`` solution with ``A = 0``, so they can only add to it (their requests include the
    global fit's)."""
    world = replace(config.sim, heterogeneity=dose)
    real = bool(world.data_dir)
    train = UserSimulator(replace(world, user_fold="train" if real else ""))
    evaluator = UserSimulator(replace(world, user_fold="evaluation" if real else ""))
    tasks = train.task_specs()
    train.requests_served = 0  # the calibration sample is not part of the budget
    fits, start = [], None
    for policy in POLICIES:
        t0 = time.perf_counter()
        params = _cem(config, train, tasks, policy, seed, start)
        if policy == "global":
            start = params
        fn = personalised_score_fn(
            params, tasks, _features(policy, evaluator), config.log_weight_low,
            config.log_weight_high,
        )  # fmt: skip
        res = evaluate(evaluator, fn, config.eval_sessions, EVALUATION_USERS)
        returns, lengths = res.returns.tolist(), res.lengths.tolist()
        seconds = time.perf_counter() - t0
        used = train.requests_served
        fits.append(Fit(dose, policy, seed, params.tolist(), used, returns, lengths, seconds))
    return fits


def _cem(
    config: HeadroomConfig,
    train: UserSimulator,
    tasks: Sequence[TaskSpec],
    policy: str,
    seed: int,
    start: np.ndarray | None,
) -> np.ndarray:
    k = len(tasks)
    n_coef = 0 if policy == "global" else k * len(SEGMENT_FEATURES)
    lo, hi = config.log_weight_low, config.log_weight_high
    features = _features(policy, train)

    def objective(pop: np.ndarray, it: int) -> np.ndarray:
        users = TRAINING_USERS + 100_000 * POLICIES.index(policy) + 1000 * seed + it
        return np.array(
            [
                evaluate(
                    train,
                    personalised_score_fn(p, tasks, features, lo, hi),
                    config.cem.sessions,
                    users,
                ).returns.mean()
                for p in pop
            ]
        )

    if start is None:
        init, std = np.ones(k), np.full(k, config.cem.init_std)
    else:  # warm start: the global solution, a narrower search around it, A from 0
        init = np.concatenate([start[:k], np.zeros(n_coef)])
        std = np.concatenate([np.full(k, 0.3), np.full(n_coef, 0.5)])
    result = cem_optimize(
        objective, k + n_coef, config.cem, np.random.default_rng(seed), init_mean=init,
        init_std=std,
    )  # fmt: skip
    return np.concatenate([np.clip(result.mean[:k], lo, hi), result.mean[k:]])


def _run(args: tuple[HeadroomConfig, float, int]) -> list[Fit]:
    return fit_world(*args)


def run_headroom(
    config: HeadroomConfig, out: Path, jobs: int = 1, echo: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Fit every (dose, policy, seed), write ``out/headroom.json`` and ``out/headroom.md``."""
    t0 = time.perf_counter()
    tasks = [(config, d, s) for d in config.doses for s in range(config.seeds)]
    fits: list[Fit] = []
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            for world_fits in pool.map(_run, tasks):
                fits += world_fits
    else:
        for t in tasks:
            fits += _run(t)
            seconds = sum(f.seconds for f in fits[-3:])
            echo(f"headroom: d={t[1]:g} seed {t[2]} done ({seconds:.0f} s)")
    report = summarise(config, fits)
    report["meta"] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": time.perf_counter() - t0,
        "jobs": jobs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "headroom.json").write_text(json.dumps(report, indent=1))
    (out / "headroom.md").write_text(render(report))
    return report


def summarise(config: HeadroomConfig, fits: list[Fit]) -> dict[str, Any]:
    """Per dose: each policy's mean return with its CI, and the two headrooms."""
    by = {(f.dose, f.policy): [] for f in fits}  # type: dict[tuple[float, str], list[Fit]]
    for f in fits:
        by[(f.dose, f.policy)].append(f)
    doses = []
    cap = config.sim.max_steps
    for d in config.doses:
        ret = {
            p: np.array([f.returns for f in sorted(by[(d, p)], key=lambda f: f.seed)])
            for p in POLICIES
        }
        row: dict[str, Any] = {"dose": d, "policies": {}}
        for p in POLICIES:
            lengths = np.array([f.lengths for f in by[(d, p)]])
            row["policies"][p] = {
                "return": stats.estimate(ret[p]).as_dict(),
                "length_mean": float(lengths.mean()),
                "cap_share": float((lengths >= cap).mean()),
                "requests": int(np.mean([f.requests for f in by[(d, p)]])),
                "params": [f.params for f in by[(d, p)]],
            }
        row["headroom"] = stats.paired_difference(ret["oracle"], ret["global"]).as_dict()
        row["observable"] = stats.paired_difference(ret["segment"], ret["global"]).as_dict()
        doses.append(row)
    return {"config": config.as_dict(), "doses": doses}


def _ci(e: dict[str, Any], digits: int = 0) -> str:
    lo, hi = e["ci95"]
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def render(report: dict[str, Any]) -> str:
    cfg, meta = report["config"], report.get("meta", {})
    quick = "\n> **Quick mode**: tiny budgets; these numbers say nothing.\n" if cfg["quick"] else ""
    sim = cfg["sim"]
    population = "real KuaiRand users" if sim.get("data_dir") else "synthetic users"
    lines = [
        "# Personalisation headroom of the world family (no learner)",
        quick,
        f"Generated by `xmtf-train headroom` on {meta.get('created', '?')} in "
        f"{meta.get('seconds', 0) / 60:.1f} min. World seed {sim['seed']}, {population}, "
        f"`max_steps` {sim['max_steps']}; family and protocol: `results/worlds.md`.",
        "",
        f"Each policy: CEM ({cfg['cem']['iterations']} iterations x {cfg['cem']['population']} "
        f"candidates x {cfg['cem']['sessions']} training sessions; the requests it used are in "
        f"the table), {cfg['seeds']} CEM seed(s), evaluated on the same {cfg['eval_sessions']} "
        "held-out evaluation users. Watch time per session (s), mean and 95 % bootstrap CI over "
        "users (and seeds); headrooms are paired differences over the same users.",
        "",
        "| d | global | 95 % CI | segment (observable) | 95 % CI | oracle (hidden tastes) "
        "| 95 % CI | headroom = oracle − global | 95 % CI | observable = segment − global "
        "| 95 % CI | sessions at the cap (global / oracle) | requests per CEM run |",
        "|---:|---:|---|---:|---|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for row in report["doses"]:
        p = row["policies"]
        cells = [f"{row['dose']:g}"]
        for name in POLICIES:
            cells += [f"{p[name]['return']['mean']:.0f}", _ci(p[name]["return"])]
        for key in ("headroom", "observable"):
            cells += [f"{row[key]['mean']:+.0f}", _ci(row[key])]
        cells.append(
            f"{100 * p['global']['cap_share']:.1f} % / {100 * p['oracle']['cap_share']:.1f} %"
        )
        cells.append(f"{p['global']['requests']:,}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", verdict(report), ""]
    return "\n".join(lines)


def verdict(report: dict[str, Any]) -> str:
    """Does the family do what it claims: no headroom at d = 0, growing with d?"""
    rows = sorted(report["doses"], key=lambda r: r["dose"])
    if len(rows) < 2:
        return "One dose only: the growth of the headroom with d is not assessed."
    zero, top = rows[0], rows[-1]
    flat = zero["dose"] == 0 and not _excludes_zero(zero["headroom"])
    doses = np.array([r["dose"] for r in rows])
    means = np.array([r["headroom"]["mean"] for r in rows])
    rising = float(np.corrcoef(doses, means)[0, 1]) > 0.8 if means.std() > 0 else False
    grows = rising and top["headroom"]["ci95"][0] > 0
    text = (
        f"Headroom at d = {zero['dose']:g}: {zero['headroom']['mean']:+.0f} s "
        f"{_ci(zero['headroom'])}; at d = {top['dose']:g}: {top['headroom']['mean']:+.0f} s "
        f"{_ci(top['headroom'])}. "
    )
    if flat and grows:
        return text + "The family does what it claims: no headroom at d = 0, growing with d."
    reasons = []
    if not flat:
        reasons.append("the headroom at d = 0 is not within its CI of 0")
    if not grows:
        reasons.append("the headroom does not rise with d to a value above 0")
    return (
        text
        + f"The family does NOT do what it claims ({'; '.join(reasons)}): fix the family (a new "
        "registered one) before running methods on it."
    )


def _excludes_zero(e: dict[str, Any]) -> bool:
    lo, hi = e["ci95"]
    return bool(lo > 0 or hi < 0)
