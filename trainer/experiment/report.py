"""``xmtf-train experiment report``: the session log of an experiment, arm by arm (SPEC §13).

The sessions come from :mod:`.sessions` (every event stream, sharded or not; each ended session
attributed to the arm of its first request). Per arm, at user level (each user's total watch
time and sessions; :mod:`.stats`): sessions, users, watch time per session and session length
with 95 % intervals, the positive rate of every task among the items shown; per treatment arm
the relative difference to control with a 95 % interval (delta method) and the guardrail's
sequential bound; and the users per arm a +3 % change needs at 80 % power. With ``cuped``, the
same difference CUPED-adjusted by each user's watch time per session before the experiment
(:mod:`.cuped`), with the variance reduction it achieved.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shared.experiment import Experiment
from trainer.experiment.cuped import ArmInput, covariate, cuped
from trainer.experiment.sessions import ArmData
from trainer.experiment.stats import (
    Ratio,
    guard_look,
    ratio,
    relative_difference,
    users_per_arm,
)

MDE = 0.03  # the relative change the recommended sample size is for


def _empty() -> ArmData:
    z = np.zeros(0)
    return ArmData(z, z, z)


def analyse(
    exp: Experiment,
    data: dict[str, ArmData],
    fallback: int = 0,
    *,
    with_cuped: bool = False,
    cutoff: float | None = None,
) -> dict[str, Any]:
    """The report (SPEC §13's JSON) of ``exp`` from per-arm user data; ``with_cuped`` adds the
    CUPED-adjusted figures (the data must carry the pre-period, ``cutoff`` its end)."""
    control = exp.control
    ratios: dict[str, tuple[Ratio, Ratio]] = {}
    for arm in exp.arms:
        d = data.get(arm.name, _empty())
        ratios[arm.name] = (ratio(d.watch, d.sessions), ratio(d.requests, d.sessions))
    c_watch = ratios[control.name][0]
    c_sessions = int(data.get(control.name, _empty()).sessions.sum())
    g = exp.guardrail
    arms_out = []
    looks = {}
    for arm in exp.arms:
        d = data.get(arm.name, _empty())
        watch, length = ratios[arm.name]
        row: dict[str, Any] = {
            "name": arm.name,
            "version": arm.version,
            "share": arm.share,
            "status": arm.status,
            "sessions": int(d.sessions.sum()),
            "users": len(d.sessions),
            "watch_time_per_session": watch.as_dict(),
            "session_length": length.as_dict(),
            "positive_rates": {
                t: (n / d.items if d.items else None) for t, n in sorted(d.positives.items())
            },
        }
        if arm.name != control.name:
            diff = relative_difference(watch, c_watch)
            row["vs_control"] = diff.as_dict()
            look = guard_look(diff, (row["sessions"], c_sessions), g.max_drop, g.min_sessions)
            looks[arm.name] = look
            row["guardrail"] = {"decision": look.decision, "sequence95": list(look.sequence)}
        arms_out.append(row)
    report: dict[str, Any] = {
        "experiment": exp.name,
        "status": exp.status,
        "arms": arms_out,
        "fallback_sessions": fallback,
        "guardrail": {
            **g.model_dump(),
            "test": "normal-mixture confidence sequence on the user-level relative difference",
            "alpha": 0.05,
            "decisions": {name: look.decision for name, look in looks.items()},
        },
        "recommended_users_per_arm": users_per_arm(c_watch, MDE),
        "recommended_for": {"relative_change": MDE, "power": 0.8, "alpha": 0.05},
    }
    if with_cuped:
        report["cuped"] = _cuped(exp, data, cutoff, arms_out)
    return report


def _cuped(
    exp: Experiment, data: dict[str, ArmData], cutoff: float | None, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``cuped`` block of the report; adds ``cuped`` to each arm's row and
    ``vs_control_cuped`` to each treatment's (see :mod:`.cuped`)."""
    inputs = {}
    for name, d in data.items():
        zeros = np.zeros(len(d.watch))
        pre_w = d.pre_watch if d.pre_watch is not None else zeros
        pre_s = d.pre_sessions if d.pre_sessions is not None else zeros
        inputs[name] = ArmInput(d.watch, d.sessions, covariate(pre_w, pre_s))
    block: dict[str, Any] = {
        "covariate": "each user's watch time per session before the experiment",
        "pre_period_end": cutoff,
    }
    result = cuped({a.name: inputs[a.name] for a in exp.arms if a.name in inputs})
    if result is None:
        return {**block, "available": False, "reason": "no user with pre-period sessions"}
    control = exp.control.name
    for row in rows:
        adj = result.adjusted.get(row["name"])
        if adj is None:
            continue
        row["cuped"] = {
            "watch_time_per_session": adj.as_dict(),
            "users_with_pre_period": result.users_with_covariate[row["name"]],
            "variance_reduction": result.variance_reduction[row["name"]],
        }
        if "vs_control" in row and control in result.adjusted:
            diff = relative_difference(adj, result.adjusted[control])
            raw_se = row["vs_control"]["se"]
            row["vs_control_cuped"] = {
                **diff.as_dict(),
                "variance_reduction": 1.0 - (diff.se / raw_se) ** 2 if raw_se > 0 else None,
            }
    return {
        **block,
        "available": True,
        "theta": result.theta,
        "pre_period_mean": result.x_mean,
        "users_with_pre_period": sum(result.users_with_covariate.values()),
        "users": sum(r.users for r in result.adjusted.values()),
        "variance_reduction": result.pooled_variance_reduction,
    }


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:+.1f} %" if pct else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## Experiment {report['experiment']} ({report['status']})",
        "",
        "| arm | version | share | status | sessions | users | watch time / session (95 % CI) "
        "| session length (95 % CI) | vs control (95 % CI) | guard |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["arms"]:
        w, s = a["watch_time_per_session"], a["session_length"]
        vs = a.get("vs_control")
        vs_text = (
            f"{_fmt(vs['relative'], True)} [{_fmt(vs['ci95'][0], True)}, "
            f"{_fmt(vs['ci95'][1], True)}]"
            if vs
            else "control"
        )
        lines.append(
            f"| {a['name']} | {a['version']} | {a['share']:.3g} | {a['status']} | "
            f"{a['sessions']} | {a['users']} | {_fmt(w['mean'])} [{_fmt(w['ci95'][0])}, "
            f"{_fmt(w['ci95'][1])}] | {_fmt(s['mean'])} [{_fmt(s['ci95'][0])}, "
            f"{_fmt(s['ci95'][1])}] | {vs_text} | {a.get('guardrail', {}).get('decision', '')} |"
        )
    tasks = sorted({t for a in report["arms"] for t in a["positive_rates"]})
    if tasks:
        lines += ["", "| arm | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for a in report["arms"]:
            rates = [a["positive_rates"].get(t) for t in tasks]
            lines.append(
                f"| {a['name']} | "
                + " | ".join("–" if r is None else f"{r:.4f}" for r in rates)
                + " |"
            )
    lines += _cuped_markdown(report)
    n = report["recommended_users_per_arm"]
    lines += [
        "",
        f"Users per arm to detect a {100 * MDE:.0f} % change with 80 % power: "
        f"{n if n is not None else 'not enough data'}. "
        f"Fallback sessions (arm version refused, served by CURRENT): "
        f"{report['fallback_sessions']}.",
    ]
    ev = report.get("event_streams")
    if ev:
        lines[-1] += (
            f" Read {sum(ev['events'].values())} events from {ev['streams_read']} of "
            f"{ev['shards']} event stream(s)."
        )
    return "\n".join(lines)


def _cuped_markdown(report: dict[str, Any]) -> list[str]:
    c = report.get("cuped")
    if c is None:
        return []
    if not c["available"]:
        return ["", f"CUPED: not available ({c['reason']})."]
    lines = [
        "",
        f"CUPED (covariate: {c['covariate']}; {c['users_with_pre_period']} of {c['users']} "
        f"users have one, the others get the pooled mean {c['pre_period_mean']:.2f}; "
        f"theta = {c['theta']:.3g}; variance reduction {100 * c['variance_reduction']:.1f} %):",
        "",
        "| arm | adjusted watch time / session (95 % CI) | variance reduction "
        "| adjusted vs control (95 % CI) | variance reduction of the difference |",
        "|---|---|---|---|---|",
    ]
    for a in report["arms"]:
        cu = a.get("cuped")
        if cu is None:
            continue
        w, vs = cu["watch_time_per_session"], a.get("vs_control_cuped")
        vs_text = (
            f"{_fmt(vs['relative'], True)} [{_fmt(vs['ci95'][0], True)}, "
            f"{_fmt(vs['ci95'][1], True)}] | {_share(vs['variance_reduction'])}"
            if vs
            else "control | "
        )
        lines.append(
            f"| {a['name']} | {_fmt(w['mean'])} [{_fmt(w['ci95'][0])}, {_fmt(w['ci95'][1])}] "
            f"| {_share(cu['variance_reduction'])} | {vs_text} |"
        )
    return lines


def _share(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"
