"""``xmtf-train experiment start | stop | report | guard`` and ``consume --publish canary:SHARE``.

No torch here: these commands read and write ``EXPERIMENT.json`` / ``CURRENT`` and the session
log. The parser is added to ``xmtf-train`` by :func:`add_parser`; :func:`run` dispatches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from shared.events import DEFAULT_STREAM
from shared.experiment import (
    CONTROL,
    Experiment,
    ExperimentError,
    read_experiment,
    roll_back,
    write_experiment,
)
from shared.manifest import ManifestError, read_current, read_manifest, write_current
from trainer.cli_args import env_default
from trainer.experiment.report import analyse, markdown
from trainer.experiment.sessions import EventStreams, StreamsError, collect


class ExperimentCommandError(ValueError):
    """A one-line, user-facing failure of an experiment command."""


def add_parser(sub: Any) -> None:
    """``experiment`` and its four subcommands on ``xmtf-train``'s subparsers."""
    p = sub.add_parser("experiment", help="A/B experiments: start, stop, report, guard")
    esub = p.add_subparsers(dest="experiment_command", required=True)

    def common(q: argparse.ArgumentParser, redis: bool = False) -> None:
        q.add_argument(
            "--model-dir",
            default=env_default("model-dir"),
            required=env_default("model-dir") is None,
        )
        if redis:
            q.add_argument(
                "--redis-url", default=env_default("redis-url", "redis://127.0.0.1:6379/0")
            )
            q.add_argument("--events-stream", default=env_default("events-stream", DEFAULT_STREAM))
            q.add_argument(
                "--event-shards",
                type=int,
                default=int(env_default("event-shards", 1)),
                help="the scorers' event shards: read <stream>:{0..S-1} (default 1: <stream>)",
            )
            q.add_argument(
                "--redis-cluster",
                action="store_true",
                default=str(env_default("redis-cluster", "false")).lower() in ("1", "true", "yes"),
                help="the Redis URL is a seed node of a Redis Cluster (SPEC §14)",
            )

    q = esub.add_parser("start", help="write EXPERIMENT.json (arms, shares, shadow, guardrail)")
    common(q)
    q.add_argument("--name", required=True)
    q.add_argument(
        "--arm",
        action="append",
        required=True,
        metavar="NAME=VERSION:SHARE",
        help="in order; the arm named 'control' (else the first) is the control",
    )
    q.add_argument("--salt", default=None, help="assignment salt (default: the name)")
    q.add_argument("--shadow", default=None, metavar="VERSION:RATE")
    q.add_argument("--max-drop", type=float, default=0.02, help="guardrail margin (relative)")
    q.add_argument("--min-sessions", type=int, default=500, help="per arm before the guard acts")
    q = esub.add_parser("stop", help="stop the experiment: every request served by CURRENT")
    common(q)
    q = esub.add_parser("report", help="per-arm results from the session log")
    common(q, redis=True)
    q.add_argument("--json", action="store_true", help="only the JSON line")
    q.add_argument(
        "--cuped",
        action="store_true",
        help="also the difference adjusted by each user's pre-experiment watch time per session",
    )
    q = esub.add_parser("guard", help="roll back a losing arm (sequential test); --promote")
    common(q, redis=True)
    q.add_argument(
        "--promote", action="store_true", help="make a significantly winning arm CURRENT"
    )


def _split(text: str, sep: str, what: str) -> tuple[str, str]:
    head, found, tail = text.rpartition(sep)
    if not found or not head or not tail:
        raise ExperimentCommandError(f"{what} must look like {what.upper()}, got {text!r}")
    return head, tail


def _share(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ExperimentCommandError(f"{what}: {text!r} is not a number") from None


def _check_version(model_dir: Path, version: str) -> None:
    try:
        read_manifest(model_dir / version)
    except (ManifestError, OSError) as exc:
        raise ExperimentCommandError(f"version {version!r}: {exc}") from exc


def _load(model_dir: Path) -> Experiment:
    try:
        exp = read_experiment(model_dir)
    except ExperimentError as exc:
        raise ExperimentCommandError(str(exc)) from exc
    if exp is None:
        raise ExperimentCommandError(f"{model_dir} has no EXPERIMENT.json")
    return exp


def _validate(data: dict[str, Any]) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValueError as exc:
        raise ExperimentCommandError(f"invalid experiment: {exc}") from exc


def cmd_start(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model_dir)
    arms = []
    for spec in args.arm:
        name, rest = _split(spec, "=", "name=version:share")
        version, share = _split(rest, ":", "version:share")
        _check_version(model_dir, version)
        arms.append({"name": name, "version": version, "share": _share(share, "--arm")})
    shadow = None
    if args.shadow:
        version, rate = _split(args.shadow, ":", "version:rate")
        _check_version(model_dir, version)
        shadow = {"version": version, "sample_rate": _share(rate, "--shadow")}
    exp = _validate(
        {
            "name": args.name,
            "salt": args.salt or args.name,
            "status": "running",
            "started_at": time.time(),
            "arms": arms,
            "shadow": shadow,
            "guardrail": {"max_drop": args.max_drop, "min_sessions": args.min_sessions},
        }
    )
    try:
        previous = read_experiment(model_dir)
    except ExperimentError:
        previous = None
    path = write_experiment(model_dir, exp)
    return {
        "started": exp.name,
        "path": str(path),
        "arms": [a.model_dump() for a in exp.arms],
        "replaced": previous.name if previous and previous.running else None,
    }


def cmd_stop(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model_dir)
    exp = _load(model_dir)
    write_experiment(model_dir, exp.model_copy(update={"status": "stopped"}))
    return {"stopped": exp.name, "current": read_current(model_dir)}


def _report(args: argparse.Namespace, exp: Experiment, cuped: bool = False) -> dict[str, Any]:
    """The report of ``exp`` from every event stream (all shards)."""
    import redis

    from shared.redis_client import make_client

    if args.event_shards < 1:
        raise ExperimentCommandError(f"--event-shards must be >= 1, got {args.event_shards}")
    client = make_client(
        args.redis_url, args.redis_cluster, socket_timeout=10, socket_connect_timeout=3
    )
    streams = EventStreams(client, args.events_stream, args.event_shards)
    try:
        client.ping()
        streams.check()
        log = collect(streams.events(), exp.name, pre_period=cuped, started_at=exp.started_at)
    except redis.RedisError as exc:
        raise ExperimentCommandError(f"cannot read {args.redis_url}: {exc}") from exc
    except StreamsError as exc:
        raise ExperimentCommandError(str(exc)) from exc
    finally:
        client.close()
    report = analyse(exp, log.arms, log.fallback, with_cuped=cuped, cutoff=log.cutoff)
    return {**report, "event_streams": streams.describe()}


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    exp = _load(Path(args.model_dir))
    report = _report(args, exp, cuped=args.cuped)
    if not args.json:
        print(markdown(report), file=sys.stdout)
        print(file=sys.stdout)
    return report


def cmd_guard(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model_dir)
    exp = _load(model_dir)
    if not exp.running:
        return {"experiment": exp.name, "decision": "none", "reason": "experiment is stopped"}
    report = _report(args, exp)
    decisions = report["guardrail"]["decisions"]
    rows = {a["name"]: a for a in report["arms"]}
    losing = [
        n for n, d in decisions.items() if d == "rolled_back" and rows[n]["status"] == "active"
    ]
    summary = {
        n: {"decision": d, **{k: rows[n][k] for k in ("sessions", "vs_control")}}
        for n, d in decisions.items()
    }
    read = {"event_streams": report["event_streams"]}
    if losing:
        for name in losing:
            exp = roll_back(exp, name)
        write_experiment(model_dir, exp)
        return {
            "experiment": exp.name,
            "decision": "rolled_back",
            "arms_rolled_back": losing,
            "shares": {a.name: a.share for a in exp.arms},
            "arms": summary,
            **read,
        }
    winners = [n for n, d in decisions.items() if d == "promote" and rows[n]["status"] == "active"]
    if args.promote and winners:
        best = max(winners, key=lambda n: rows[n]["guardrail"]["sequence95"][0])
        version = exp.arm(best).version
        write_current(model_dir, version)
        write_experiment(model_dir, exp.model_copy(update={"status": "stopped"}))
        return {
            "experiment": exp.name,
            "decision": "promoted",
            "arm": best,
            "current": version,
            "arms": summary,
            **read,
        }
    return {
        "experiment": exp.name,
        "decision": "none",
        "promotable": winners,
        "arms": summary,
        **read,
    }


def publish_canary(model_dir: Path, version: str, share: float) -> dict[str, Any]:
    """Start (or update) a canary experiment: ``version`` as the treatment arm with ``share``
    of the users, ``CURRENT`` as control; ``CURRENT`` itself is left alone."""
    if not 0.0 < share < 1.0:
        raise ExperimentCommandError(f"canary share must be in (0, 1), got {share}")
    current = read_current(model_dir)
    if current is None:
        raise ExperimentCommandError("no CURRENT to use as control")
    try:
        previous = read_experiment(model_dir)
    except ExperimentError:
        previous = None
    name = f"canary-{version}"
    started = previous.started_at if previous is not None and previous.name == name else None
    exp = _validate(
        {
            "name": name,
            "salt": previous.salt if previous else name,
            "started_at": started if started is not None else time.time(),
            "arms": [
                {"name": CONTROL, "version": current, "share": 1.0 - share},
                {"name": "canary", "version": version, "share": share},
            ],
            "guardrail": previous.guardrail.model_dump() if previous else {},
        }
    )
    write_experiment(model_dir, exp)
    return {"experiment": name, "control": current, "canary": version, "share": share}


COMMANDS = {"start": cmd_start, "stop": cmd_stop, "report": cmd_report, "guard": cmd_guard}


def run(args: argparse.Namespace) -> dict[str, Any]:
    return COMMANDS[args.experiment_command](args)
