"""``xmtf-train experiment report``: the session log of an experiment, arm by arm (SPEC §13).

Reads the whole event stream (``XRANGE`` in chunks; a read-only pass that leaves the trainer's
consumer group alone), keeps the rank events tagged with the experiment's name, and attributes
each session to the arm of its first rank event. A session counts once it has ended
(``session_end``, or no event for ``session_timeout_s`` before the newest one). Rank events of
the experiment served by ``CURRENT`` because their arm's version was refused carry the arm
``default`` and are counted apart (``fallback_sessions``), not in any arm.

Per arm, at user level (each user's total watch time and sessions; :mod:`.stats`): sessions,
users, watch time per session and session length with 95 % intervals, the positive rate of
every task among the items shown; per treatment arm the relative difference to control with a
95 % interval (delta method) and the guardrail's sequential bound; and the users per arm a +3 %
change needs at 80 % power.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.events import (
    EventDecodeError,
    FeedbackEvent,
    RankEvent,
    SessionEndEvent,
    decode,
)
from shared.experiment import DEFAULT_ARM, Experiment
from trainer.experiment.stats import (
    Ratio,
    guard_look,
    ratio,
    relative_difference,
    users_per_arm,
)

MDE = 0.03  # the relative change the recommended sample size is for


@dataclass
class _Session:
    arm: str
    user: str
    requests: int = 0
    watch: float = 0.0
    ended: bool = False
    last_ts: float = 0.0


@dataclass
class ArmData:
    """Per-user totals of one arm (arrays aligned by user)."""

    watch: np.ndarray  # total watch time of the user's counted sessions
    sessions: np.ndarray  # counted sessions
    requests: np.ndarray  # rank requests in them
    positives: dict[str, int] = field(default_factory=dict)  # task -> items with signal > 0
    items: int = 0  # items with feedback


def read_events(client: Any, stream: str, chunk: int = 2000) -> Iterator[Any]:
    """Every decodable event of ``stream`` in order (malformed entries are skipped)."""
    start = "-"
    while True:
        entries = client.xrange(stream, min=start, max="+", count=chunk)
        if not entries:
            return
        for _entry_id, fields in entries:
            try:
                yield decode(fields)
            except EventDecodeError:
                continue
        last = entries[-1][0]
        last = last.decode() if isinstance(last, bytes) else last
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
        if len(entries) < chunk:
            return


def collect(
    events: Iterable[Any], experiment: str, session_timeout_s: float = 1800.0
) -> tuple[dict[str, ArmData], int]:
    """(per-arm user data, fallback sessions) of ``experiment`` from the session log."""
    sessions: dict[str, _Session] = {}
    request_session: dict[str, str] = {}
    positives: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    items: dict[str, int] = defaultdict(int)
    newest = -math.inf
    for ev in events:
        newest = max(newest, ev.ts)
        if isinstance(ev, RankEvent):
            if ev.experiment != experiment or ev.arm is None:
                continue
            s = sessions.get(ev.session_id)
            if s is None:
                s = sessions[ev.session_id] = _Session(ev.arm, ev.user_id)
            s.requests += 1
            s.last_ts = ev.ts
            request_session[ev.request_id] = ev.session_id
        elif isinstance(ev, FeedbackEvent):
            sid = request_session.get(ev.request_id)
            if sid is None:
                continue
            s = sessions[sid]
            s.watch += sum(i.watch_time for i in ev.items)
            s.last_ts = ev.ts
            s.ended |= ev.session_end
            for item in ev.items:
                items[s.arm] += 1
                for task, value in item.signals.items():
                    if value > 0:
                        positives[s.arm][task] += 1
        elif isinstance(ev, SessionEndEvent):
            s2 = sessions.get(ev.session_id)
            if s2 is not None:
                s2.ended = True
    per_user: dict[str, dict[str, list[float]]] = defaultdict(dict)
    fallback = 0
    for s in sessions.values():
        if not (s.ended or s.last_ts < newest - session_timeout_s):
            continue
        if s.arm == DEFAULT_ARM:
            fallback += 1
            continue
        tot = per_user[s.arm].setdefault(s.user, [0.0, 0.0, 0.0])
        tot[0] += s.watch
        tot[1] += 1
        tot[2] += s.requests
    out = {}
    for arm, users in per_user.items():
        arr = np.array(list(users.values()), np.float64).reshape(-1, 3)
        out[arm] = ArmData(
            arr[:, 0], arr[:, 1], arr[:, 2], dict(positives.get(arm, {})), items.get(arm, 0)
        )
    return out, fallback


def _empty() -> ArmData:
    z = np.zeros(0)
    return ArmData(z, z, z)


def analyse(exp: Experiment, data: dict[str, ArmData], fallback: int = 0) -> dict[str, Any]:
    """The report (SPEC §13's JSON) of ``exp`` from per-arm user data."""
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
    return {
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
    n = report["recommended_users_per_arm"]
    lines += [
        "",
        f"Users per arm to detect a {100 * MDE:.0f} % change with 80 % power: "
        f"{n if n is not None else 'not enough data'}. "
        f"Fallback sessions (arm version refused, served by CURRENT): "
        f"{report['fallback_sessions']}.",
    ]
    return "\n".join(lines)
