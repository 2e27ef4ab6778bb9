"""``xmtf-rounds``: the production loop over several rounds, with a held-out evaluation.

Issue 12's production check: does the documented loop (scorer -> Redis -> ``xmtf-train
consume`` -> a new version -> the scorer) improve the fusion over several rounds, or drift?

* an evaluation scorer without exploration ranks ``--eval-sessions`` evaluation users (their own
  seed, never trained on; their events go to a stream nobody consumes) with the initial version;
* each round, a serving scorer with the default exploration drives ``--sessions`` new training
  users, then ``consume --until-idle`` trains on what it logged and publishes a version:
  ``--publish current`` switches ``CURRENT`` blindly; ``--publish canary:SHARE`` (the rollout
  path, SPEC §13) starts each version as a canary arm against ``CURRENT``, and after the next
  round's users ``experiment guard --promote`` rolls a losing canary back or makes a
  significantly winning one ``CURRENT`` (an undecided canary is replaced by the next version);
  the experiment is stopped before the final evaluation, which is served by ``CURRENT``;
* the evaluation users are ranked again by the final version; the paired difference with its 95 %
  CI says whether the loop ended above or below its start, and every round's own sessions show
  the path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from shared.manifest import read_current
from trainer import stats
from trainer.cli_args import CLIError, canary_share
from trainer.demo import (
    BIN,
    Phase,
    consume_stream,
    drive_users,
    init_model,
    reachable_redis,
    run_command,
    running_scorer,
    wait_for_version,
)
from trainer.sim import SimConfig, UserSimulator

log = logging.getLogger("xmtf-rounds")
EVAL_SEED = 30_000  # the study's evaluation users (results/worlds.md)


def run_rounds(args: argparse.Namespace, redis_url: str, client: redis.Redis) -> dict[str, Any]:
    """Start, ``args.rounds`` rounds of serve -> consume -> publish, end; the measurements."""
    model_dir = args.workdir / "models"
    world = SimConfig(seed=args.world_seed, heterogeneity=args.dose, max_steps=args.max_steps)
    train_sim, eval_sim = UserSimulator(world), UserSimulator(world)
    init = init_model(model_dir, train_sim, args.seed, args.config)
    tag = secrets.token_hex(4)
    serve_stream, eval_stream = f"xmtf:rounds:{tag}", f"xmtf:rounds:{tag}:eval"
    streams = [serve_stream, eval_stream, f"{serve_stream}:dead", f"{serve_stream}:trained"]
    rounds: list[dict[str, Any]] = []
    canary = canary_share(args.publish) is not None
    try:
        with running_scorer(model_dir, redis_url, eval_stream, exploration=0.0) as eval_base:
            start = drive_users(eval_base, eval_sim, args.eval_sessions, EVAL_SEED, "eval0")
            with running_scorer(model_dir, redis_url, serve_stream) as base:
                for r in range(args.rounds):
                    phase = drive_users(base, train_sim, args.sessions, args.seed + 1 + r, f"r{r}")
                    time.sleep(0.5)  # let the scorer's logger flush
                    guard = _guard(model_dir, redis_url, serve_stream) if canary else None
                    trained = consume_stream(model_dir, redis_url, serve_stream, args.publish)
                    rounds.append(_round_row(r, phase, trained, read_current(model_dir), guard))
                    log.info("round %d: %s", r, rounds[-1])
            if canary:  # the last canary never met users of a further round: stop it
                _experiment(model_dir, "stop")
                _wait_until_no_experiment(eval_base)
            wait_for_version(eval_base, str(read_current(model_dir)))
            end = drive_users(eval_base, eval_sim, args.eval_sessions, EVAL_SEED, "eval1")
    finally:
        client.delete(*streams)
    change = stats.paired_difference(end.returns, start.returns)
    return {
        "world": {"seed": args.world_seed, "dose": args.dose, "max_steps": args.max_steps},
        "initial_version": init["version"],
        "final_version": read_current(model_dir),
        "publish": args.publish,
        "config": json.loads(args.config.read_text()) if args.config else None,
        "rounds": rounds,
        "start": _phase(start),
        "end": _phase(end),
        "end_minus_start": change.as_dict(),
    }


def _experiment(model_dir: Path, command: str, *extra: str) -> dict[str, Any]:
    """``xmtf-train experiment <command>`` on ``model_dir``; its JSON answer."""
    cmd = [str(BIN / "xmtf-train"), "experiment", command, "--model-dir", str(model_dir), *extra]
    answer: dict[str, Any] = json.loads(run_command(cmd))
    return answer


def _wait_until_no_experiment(base: str, timeout: float = 30) -> None:
    """Until the scorer at ``base`` serves every request by CURRENT (it polls EXPERIMENT.json)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if not httpx.get(f"{base}/v1/experiment", timeout=2).json().get("running"):
            return
        time.sleep(0.1)
    raise SystemExit(f"the scorer still runs an experiment {timeout} s after it was stopped")


def _guard(model_dir: Path, redis_url: str, stream: str) -> dict[str, Any] | None:
    """``experiment guard --promote`` on the running canary, if any: its decision."""
    if not (model_dir / "EXPERIMENT.json").is_file():
        return None
    extra = ("--redis-url", redis_url, "--events-stream", stream, "--promote")
    return _experiment(model_dir, "guard", *extra)


def _phase(ph: Phase) -> dict[str, Any]:
    sem = float(ph.returns.std() / np.sqrt(len(ph.returns)))
    return {"sessions": len(ph.returns), "return_mean": float(ph.returns.mean()), "sem": sem,
            "length_mean": float(ph.lengths.mean()), "versions": sorted(ph.versions)}  # fmt: skip


def _round_row(
    r: int, ph: Phase, trained: dict[str, Any], current: str | None, guard: dict[str, Any] | None
) -> dict[str, Any]:
    return {"round": r, **_phase(ph), "transitions": trained.get("transitions"),
            "updates": trained.get("updates"), "exports": trained.get("exports"),
            "refused_exports": trained.get("refused_exports", []),
            "guard": guard, "current_after": current}  # fmt: skip


def _guarded(r: dict[str, Any]) -> str:
    """The guard's look at the canary these users met, in words."""
    g = r.get("guard")
    if not g:
        return "no canary"
    arm = g.get("arms", {}).get("canary", {})
    vs = arm.get("vs_control") or {}
    rel = vs.get("relative")
    if rel is None:
        return str(g["decision"])
    return f"{g['decision']} (canary {rel * 100:+.1f} % vs control)"


def _published(r: dict[str, Any]) -> str:
    if r.get("exports"):
        return ", ".join(r["exports"])
    if r.get("refused_exports"):
        return "none: the export checks refused it (" + r["refused_exports"][-1][:60] + "…)"
    return "none"


def render(result: dict[str, Any]) -> str:
    """The rounds as a Markdown table and the verdict."""
    w = result["world"]
    lines = [
        f"# Production loop over {len(result['rounds'])} rounds (world {w['seed']}, d = "
        f"{w['dose']:g}, publish {result['publish']})",
        "",
        "| phase | sessions | watch time per session | s.e. | session length | served by "
        "| guard on the canary these users met | consume then published |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    s = result["start"]
    lines.append(f"| evaluation, start (no exploration) | {s['sessions']} | "
                 f"{s['return_mean']:.1f} | {s['sem']:.1f} | {s['length_mean']:.2f} | "
                 f"{', '.join(s['versions'])} | | |")  # fmt: skip
    for r in result["rounds"]:
        lines.append(f"| round {r['round']} (training users, exploring) | {r['sessions']} | "
                     f"{r['return_mean']:.1f} | {r['sem']:.1f} | {r['length_mean']:.2f} | "
                     f"{', '.join(r['versions'])} | {_guarded(r)} | {_published(r)} |")  # fmt: skip
    e = result["end"]
    lines.append(f"| evaluation, end (no exploration) | {e['sessions']} | "
                 f"{e['return_mean']:.1f} | {e['sem']:.1f} | {e['length_mean']:.2f} | "
                 f"{', '.join(e['versions'])} | | |")  # fmt: skip
    d = result["end_minus_start"]
    lo, hi = d["ci95"]
    sign = "above" if lo > 0 else "below" if hi < 0 else "within noise of"
    lines += ["", f"End − start on the same evaluation users: {d['mean']:+.1f} s per session, "
              f"95 % CI [{lo:.1f}, {hi:.1f}]: the loop ended {sign} its start."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xmtf-rounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--sessions", type=int, default=256, help="training sessions per round")
    p.add_argument("--eval-sessions", type=int, default=1000)
    p.add_argument("--world-seed", type=int, default=102, help="a held-out world of the family")
    p.add_argument("--dose", type=float, default=0.0)
    p.add_argument("--max-steps", type=int, default=80)
    p.add_argument(
        "--publish",
        default="current",
        help="consume's --publish: current (switch CURRENT) or canary:SHARE (guarded rollout)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", type=Path, default=None, help="init's --config (TSH overrides)")
    p.add_argument("--workdir", type=Path, default=Path("rounds-run"))
    p.add_argument("--out", type=Path, default=None, help="write rounds.md and rounds.json here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.sessions < 1 or args.eval_sessions < 2:
        p.error("--rounds and --sessions must be >= 1, --eval-sessions >= 2")
    try:
        canary_share(args.publish)
    except CLIError as exc:
        p.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    shutil.rmtree(args.workdir, ignore_errors=True)
    t0 = time.perf_counter()
    url = os.environ.get("XMTF_REDIS_URL", "redis://127.0.0.1:6379/0")
    with reachable_redis(url) as redis_url:
        result = run_rounds(args, redis_url, redis.Redis.from_url(redis_url))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = render(result)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rounds.md").write_text(text)
        (args.out / "rounds.json").write_text(json.dumps(result, indent=1))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
