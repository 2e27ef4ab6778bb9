"""Do the experiment statistics hold up? Measured on the user simulator (no HTTP, no torch).

``python -m trainer.experiment.stats_check [--out results/rollout-stats.md] [--trials 500]``

1. Pools of simulated sessions under two rankings: *control* (the neutral fusion, the plain
   sum of the predictions) and *bad* (clicks only). Sessions are grouped into users of 1-3
   sessions each, so the user-level analysis has clusters to handle.
2. **A/A**: one pool, split 50/50 by the production assignment (``shared.experiment.bucket``)
   with a fresh salt per experiment. False-positive rate of the report's 95 % interval of the
   relative difference; false rollbacks of the guard looking after every tenth of the users
   (10 looks), with the configured margin (2 %) and with none (0 %, the strictest case), next to
   a naive fixed-n interval looked at as often.
3. **Bad arm**: control and bad pools interleaved in arrival order; the guard looks every 50
   sessions; the sessions (both arms) seen when it rolls the arm back.
4. **Power**: users per arm recommended by the report for a +3 % change
   (:func:`~trainer.experiment.stats.users_per_arm`, which counts the treatment's larger
   variance under the alternative); experiments of that size drawn from the control pool (users
   resampled), the treatment's watch time scaled by 1.03; the share whose 95 % interval lies
   above 0.
5. **CUPED** (with ``--kuairand DIR``, the KuaiRand-Pure user features: real users with traits
   that persist from session to session; the synthetic population draws a new user for every
   session, so it has no pre-period to use): sessions of the users of the ``evaluation`` fold,
   in random order, the first half before the experiment and the second half in it; A/A splits
   by the production hash; the variance reduction the report's CUPED achieves, the spread of
   the adjusted differences against the plain ones, and the false-positive rate of both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.experiment import bucket
from trainer.experiment.cuped import ArmInput, covariate, cuped
from trainer.experiment.stats import (
    Z95,
    guard_look,
    ratio,
    relative_difference,
    users_per_arm,
)
from trainer.sim import SimConfig, UserSimulator
from trainer.sim.evaluate import evaluate


@dataclass(frozen=True)
class Pool:
    """Per-user totals: watch time, sessions, requests (arrays aligned by user)."""

    watch: np.ndarray
    sessions: np.ndarray
    requests: np.ndarray

    def take(self, idx: np.ndarray) -> Pool:
        return Pool(self.watch[idx], self.sessions[idx], self.requests[idx])

    def __len__(self) -> int:
        return len(self.watch)


def make_pool(sim: UserSimulator, policy: str, n_sessions: int, seed: int) -> Pool:
    click = sim.tasks.index("click")

    def score(_: np.ndarray, preds: np.ndarray) -> np.ndarray:
        return preds[:, click, :] if policy == "bad" else preds.sum(axis=1)

    res = evaluate(sim, score, n_sessions, seed)
    rng = np.random.default_rng(seed)
    per_user = rng.integers(1, 4, size=n_sessions)  # 1-3 sessions per user
    owner = np.repeat(np.arange(n_sessions), per_user)[:n_sessions]
    n_users = int(owner.max()) + 1
    return Pool(
        np.bincount(owner, res.returns.astype(np.float64), n_users),
        np.bincount(owner, None, n_users).astype(np.float64),
        np.bincount(owner, res.lengths.astype(np.float64), n_users),
    )


def _diff(t: Pool, c: Pool) -> Any:
    return relative_difference(ratio(t.watch, t.sessions), ratio(c.watch, c.sessions))


def aa(pool: Pool, trials: int, looks: int = 10) -> dict[str, float]:
    fp = rb_margin = rb_zero = naive = 0
    users = [f"user-{i}" for i in range(len(pool))]
    for trial in range(trials):
        u = np.array([bucket(f"aa-{trial}", x) for x in users])
        treat = u >= 0.5
        order = np.random.default_rng(trial).permutation(len(pool))  # arrival order
        d = _diff(pool.take(np.flatnonzero(treat)), pool.take(np.flatnonzero(~treat)))
        lo, hi = d.ci95
        fp += not lo <= 0 <= hi
        hit_margin = hit_zero = hit_naive = False
        for k in range(1, looks + 1):
            seen = order[: len(order) * k // looks]
            t, c = seen[treat[seen]], seen[~treat[seen]]
            dk = _diff(pool.take(t), pool.take(c))
            sessions = (int(pool.sessions[t].sum()), int(pool.sessions[c].sum()))
            hit_margin |= guard_look(dk, sessions, 0.02, 100).decision == "rolled_back"
            hit_zero |= guard_look(dk, sessions, 0.0, 100).decision == "rolled_back"
            hit_naive |= dk.ci95[1] < 0
        rb_margin += hit_margin
        rb_zero += hit_zero
        naive += hit_naive
    return {
        "trials": trials,
        "looks": looks,
        "false_positive_rate": fp / trials,
        "false_rollbacks_margin_2pct": rb_margin / trials,
        "false_rollbacks_margin_0": rb_zero / trials,
        "naive_fixed_ci_false_rollbacks": naive / trials,
    }


def bad_arm(control: Pool, bad: Pool, trials: int, every: int = 50) -> dict[str, Any]:
    sessions_at: list[float] = []
    effect = _diff(bad, control).relative
    for trial in range(trials):
        rng = np.random.default_rng(10_000 + trial)
        c_idx, b_idx = rng.permutation(len(control)), rng.permutation(len(bad))
        n = min(len(c_idx), len(b_idx))
        found = math.nan
        for k in range(every // 2, n + 1, every // 2):
            t, c = bad.take(b_idx[:k]), control.take(c_idx[:k])
            s = (int(t.sessions.sum()), int(c.sessions.sum()))
            if guard_look(_diff(t, c), s, 0.02, 100).decision == "rolled_back":
                found = float(sum(s))
                break
        sessions_at.append(found)
    arr = np.array(sessions_at)
    return {
        "trials": trials,
        "true_relative_difference": effect,
        "rolled_back_share": float(np.isfinite(arr).mean()),
        "sessions_at_rollback_median": float(np.nanmedian(arr)) if np.isfinite(arr).any() else None,
        "sessions_at_rollback_p90": float(np.nanpercentile(arr, 90))
        if np.isfinite(arr).any()
        else None,
    }


def power(pool: Pool, trials: int, lift: float = 0.03) -> dict[str, Any]:
    n = users_per_arm(ratio(pool.watch, pool.sessions), lift)
    assert n is not None
    wins = 0
    for trial in range(trials):
        rng = np.random.default_rng(20_000 + trial)
        c = pool.take(rng.integers(0, len(pool), n))
        t = pool.take(rng.integers(0, len(pool), n))
        t = Pool(t.watch * (1 + lift), t.sessions, t.requests)
        wins += _diff(t, c).ci95[0] > 0
    return {"trials": trials, "lift": lift, "users_per_arm": n, "power": wins / trials}


def cuped_users(data_dir: str, sessions: int, seed: int = 0) -> tuple[Pool, np.ndarray, int]:
    """(experiment users' totals, their covariate, sessions run) on the KuaiRand population:
    each session's user is a real user; half the sessions (at random) come before."""
    sim = UserSimulator(SimConfig(data_dir=data_dir, user_fold="evaluation"))
    if sim.population != "kuairand":
        raise SystemExit(f"stats_check: no KuaiRand-Pure user features in {data_dir}")
    res = evaluate(sim, lambda _, preds: preds.sum(axis=1), sessions, seed)
    uid = sim.user_ids()
    order = np.random.default_rng(seed).permutation(sessions)
    before, during = order[: sessions // 2], order[sessions // 2 :]
    users, inv = np.unique(uid[during], return_inverse=True)
    n = len(users)
    pool = Pool(
        np.bincount(inv, res.returns[during].astype(np.float64), n),
        np.bincount(inv, None, n).astype(np.float64),
        np.bincount(inv, res.lengths[during].astype(np.float64), n),
    )
    row = np.searchsorted(users, uid[before])
    known = (row < n) & (users[np.minimum(row, n - 1)] == uid[before])
    pre_watch = np.bincount(row[known], res.returns[before][known].astype(np.float64), n)
    pre_sessions = np.bincount(row[known], None, n).astype(np.float64)
    return pool, covariate(pre_watch, pre_sessions), sessions


def cuped_aa(data_dir: str, sessions: int, trials: int) -> dict[str, Any]:
    """CUPED on A/A splits of real-population users (see the module docstring, 5.)."""
    pool, x, _ = cuped_users(data_dir, sessions)
    names = [f"user-{i}" for i in range(len(pool))]
    reduction, plain, adjusted, fp_plain, fp_adj = [], [], [], 0, 0
    for trial in range(trials):
        treat = np.array([bucket(f"cuped-{trial}", u) >= 0.5 for u in names])
        arms = {
            name: ArmInput(pool.watch[idx], pool.sessions[idx], x[idx])
            for name, idx in (("control", ~treat), ("treatment", treat))
        }
        got = cuped(arms)
        assert got is not None
        d_adj = relative_difference(got.adjusted["treatment"], got.adjusted["control"])
        d_plain = _diff(pool.take(np.flatnonzero(treat)), pool.take(np.flatnonzero(~treat)))
        reduction.append(got.pooled_variance_reduction)
        plain.append(d_plain.relative)
        adjusted.append(d_adj.relative)
        fp_plain += not d_plain.ci95[0] <= 0 <= d_plain.ci95[1]
        fp_adj += not d_adj.ci95[0] <= 0 <= d_adj.ci95[1]
    return {
        "population": "kuairand, evaluation fold",
        "sessions": sessions,
        "users": len(pool),
        "users_with_pre_period": int(np.isfinite(x).sum()),
        "trials": trials,
        "variance_reduction": float(np.mean(reduction)),
        "spread_ratio": float(np.std(adjusted) / np.std(plain)),
        "false_positive_rate_cuped": fp_adj / trials,
        "false_positive_rate_plain": fp_plain / trials,
    }


def run(trials: int, sessions: int, seed: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    sim = UserSimulator(SimConfig())
    control = make_pool(sim, "control", sessions, seed)
    bad = make_pool(sim, "bad", sessions, seed + 1)
    out: dict[str, Any] = {
        "pool": {
            "sessions": sessions,
            "users": len(control),
            "watch_time_per_session": ratio(control.watch, control.sessions).mean,
        },
        "aa": aa(control, trials),
        "bad_arm": bad_arm(control, bad, min(trials, 100)),
        "power": power(control, trials),
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(r: dict[str, Any]) -> str:
    aa_, bad, pw = r["aa"], r["bad_arm"], r["power"]
    sd = math.sqrt(0.05 * 0.95 / aa_["trials"])
    return "\n".join(
        [
            "# Experiment statistics on the simulator (`python -m trainer.experiment.stats_check`)",
            "",
            f"Pool: {r['pool']['sessions']} simulated sessions per ranking, grouped into "
            f"{r['pool']['users']} users of 1-3 sessions; control = plain sum of predictions "
            f"({r['pool']['watch_time_per_session']:.1f} s watch time per session). "
            f"Run time {r['seconds']} s.",
            "",
            "| check | measured | target |",
            "|---|---|---|",
            f"| A/A false-positive rate of the report's 95 % interval ({aa_['trials']} "
            f"experiments, 50/50 by the production hash, fresh salt each) "
            f"| {100 * aa_['false_positive_rate']:.1f} % | 5 % ± 2 % "
            f"(binomial sd {100 * sd:.1f} %) |",
            f"| A/A false rollbacks, guard with 2 % margin, {aa_['looks']} looks "
            f"| {100 * aa_['false_rollbacks_margin_2pct']:.1f} % | ≤ 5 % |",
            f"| A/A false rollbacks, guard with 0 margin, {aa_['looks']} looks "
            f"| {100 * aa_['false_rollbacks_margin_0']:.1f} % | ≤ 5 % |",
            f"| A/A: a naive fixed-n 95 % interval looked at {aa_['looks']} times "
            f"| {100 * aa_['naive_fixed_ci_false_rollbacks']:.1f} % | (why the guard uses a "
            "confidence sequence) |",
            f"| bad arm (clicks only, true difference "
            f"{100 * bad['true_relative_difference']:+.1f} %): rolled back "
            f"| {100 * bad['rolled_back_share']:.0f} % of {bad['trials']} | 100 % |",
            f"| bad arm: sessions (both arms) seen at rollback, median / p90 "
            f"| {bad['sessions_at_rollback_median']:.0f} / {bad['sessions_at_rollback_p90']:.0f} "
            "| |",
            f"| power for +3 % at the recommended {pw['users_per_arm']} users per arm "
            f"({pw['trials']} experiments) | {100 * pw['power']:.1f} % | 80 % (design; "
            f"binomial sd {100 * math.sqrt(0.8 * 0.2 / pw['trials']):.1f} %) |",
            *_cuped_rows(r.get("cuped")),
            "",
            f"z = {Z95:.3f}; guard: normal-mixture confidence sequence (tau = 0.05, alpha = 0.05), "
            "minimum 100 sessions per arm, looks every 10 % of the A/A users and every 50 "
            "sessions for the bad arm. Recommended users per arm: "
            "n = 2 cv² (1 + δ)² (z_0.975 + z_0.8)² / δ², cv² the control's per-user relative "
            "variance; (1 + δ)² is the relative difference's variance under the alternative "
            "(without it the recommendation is 6 % short: 78 % power).",
            "",
            "```json",
            json.dumps(r, indent=1),
            "```",
            "",
        ]
    )


def _cuped_rows(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return [
            "| CUPED | not measured (no `--kuairand`: the synthetic users are new every "
            "session) | |"
        ]
    sd = 100 * math.sqrt(0.05 * 0.95 / c["trials"])
    who = (
        f"{c['users']} users of the KuaiRand evaluation fold, {c['users_with_pre_period']} "
        f"with sessions before; {c['sessions']} sessions, half before"
    )
    return [
        f"| CUPED ({who}): variance reduction, mean of {c['trials']} A/A splits "
        f"| {100 * c['variance_reduction']:.1f} % | (more is better) |",
        f"| CUPED: spread of the A/A differences, adjusted / plain "
        f"| {c['spread_ratio']:.3f} | √(1 − reduction) = "
        f"{math.sqrt(max(1 - c['variance_reduction'], 0)):.3f} |",
        f"| CUPED: A/A false-positive rate, adjusted / plain "
        f"| {100 * c['false_positive_rate_cuped']:.1f} % / "
        f"{100 * c['false_positive_rate_plain']:.1f} % | 5 % (binomial sd {sd:.1f} %) |",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.experiment.stats_check")
    p.add_argument("--out", type=Path, default=Path("results/rollout-stats.md"))
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--sessions", type=int, default=8000)
    p.add_argument(
        "--kuairand",
        default=os.environ.get("XMTF_KUAIRAND_DIR"),
        help="KuaiRand-Pure folder for the CUPED check (default $XMTF_KUAIRAND_DIR; else skipped)",
    )
    p.add_argument("--cuped-sessions", type=int, default=20_000)
    args = p.parse_args(argv)
    r = run(args.trials, args.sessions)
    if args.kuairand:
        t0 = time.perf_counter()
        r["cuped"] = cuped_aa(args.kuairand, args.cuped_sessions, min(args.trials, 200))
        r["seconds"] = round(r["seconds"] + time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(r))
    print(json.dumps(r), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
