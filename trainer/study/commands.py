"""``xmtf-train paper | headroom | family``: the offline study's commands (parsers and handlers;
:mod:`trainer.cli` adds them to ``xmtf-train``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trainer.cli_args import CLIError, add_option, positive_int


def add_study_parsers(sub: Any) -> None:
    """The ``paper``, ``headroom`` and ``family`` subcommands on ``xmtf-train``'s subparsers."""
    p = sub.add_parser("paper", help="the paper's offline study (Tables 3 and 4) on the simulator")
    add_option(p, "trials", None, type=positive_int, help="seeds per method (default 5; quick: 2)")
    add_option(p, "out", "results", type=Path)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in seconds")
    p.add_argument(
        "--merge",
        action="store_true",
        help="add these --methods to the study already in <out>/paper.json (same config)",
    )
    p.add_argument(
        "--add-seeds",
        action="store_true",
        help="with --merge: run only the seeds up to --trials that these methods lack, and "
        "append them (grow a study in resumable parts)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="only re-render <out>/paper.md from its paper.json and paper-notes.md",
    )
    add_option(
        p, "methods", None, help="comma-separated subset of the methods (default: the study's)"
    )
    add_option(
        p, "budget", None, help="comma-separated budgets in simulated requests, e.g. 1e5,3e5"
    )
    add_option(p, "dose", None, type=float, help="heterogeneity d of the world (results/worlds.md)")
    add_option(p, "world-seed", None, type=int, help="world seed (default 101, a held-out world)")
    add_option(p, "data-dir", None, help="a KuaiRand-Pure folder: real users (disjoint folds)")
    add_option(p, "eval-sessions", None, type=positive_int, help="evaluation users per cell")
    add_option(
        p, "config", None, type=Path, help="JSON overrides: sim tsh train cem td3 es formula"
    )
    add_option(p, "threads", None, type=positive_int, help="torch threads per run (default 1)")
    add_option(p, "jobs", 1, type=positive_int, help="runs in parallel processes (default 1)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "headroom", help="personalisation headroom of the world family, without any learner"
    )
    add_option(p, "out", "results", type=Path)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in seconds")
    add_option(
        p, "doses", None, help="comma-separated heterogeneity doses d (default 0,0.25,0.5,1)"
    )
    add_option(p, "world-seed", None, type=int, help="world seed (default 101, a held-out world)")
    add_option(p, "seeds", None, type=positive_int, help="CEM seeds per policy (default 1)")
    add_option(p, "eval-sessions", None, type=positive_int, help="evaluation users (default 10000)")
    add_option(p, "data-dir", None, help="a KuaiRand-Pure folder: real users (disjoint folds)")
    add_option(p, "jobs", 1, type=positive_int, help="fits in parallel processes (default 1)")

    p = sub.add_parser("family", help="dose-response table across the study's worlds")
    add_option(p, "papers", None, required=True, help="comma-separated `paper` output folders")
    add_option(
        p, "headroom", None, help="comma-separated headroom.json files of `xmtf-train headroom`"
    )
    add_option(p, "out", "results", type=Path)


def cmd_paper(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from trainer.study.config import PaperConfig
    from trainer.study.report import render_run
    from trainer.study.run import StudyMismatch, run_paper

    if args.render_only:
        if not (Path(args.out) / "paper.json").is_file():
            raise CLIError(f"{args.out} has no paper.json to render")
        return {"out": str(args.out), "rendered": str(render_run(Path(args.out)))}

    if args.add_seeds and not args.merge:
        raise CLIError("--add-seeds grows an existing study: it needs --merge")
    trials = int(args.trials) if args.trials else None
    try:
        config = PaperConfig.quick_config(trials or 2) if args.quick else PaperConfig()
        if args.config:
            config = config.with_overrides(args.config)
        changes: dict[str, Any] = {}
        if trials and not args.quick:
            changes["trials"] = trials
        if args.threads:
            changes["torch_threads"] = int(args.threads)
        if args.methods:
            changes["methods"] = tuple(m.strip() for m in str(args.methods).split(",") if m)
        if args.budget:
            try:
                changes["budgets"] = tuple(int(float(b)) for b in str(args.budget).split(",") if b)
            except ValueError:
                msg = f"--budget: expected comma-separated numbers, got {args.budget!r}"
                raise ValueError(msg) from None
        if args.dose is not None:
            changes["dose"] = float(args.dose)
        if args.world_seed is not None or args.data_dir:
            sim = config.sim
            if args.world_seed is not None:
                sim = sim.replace(seed=int(args.world_seed))
            if args.data_dir:
                sim = sim.replace(data_dir=str(args.data_dir))
            changes["sim"] = sim
        if args.eval_sessions:
            changes["train"] = dataclasses.replace(
                config.train, eval_sessions=int(args.eval_sessions)
            )
        if changes:
            config = dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    try:
        report = run_paper(
            config,
            args.out,
            progress=not args.no_progress,
            echo=lambda s: print(s, file=sys.stderr),
            jobs=int(args.jobs),
            merge=bool(args.merge),
            add_seeds=bool(args.add_seeds),
        )
    except StudyMismatch as exc:
        raise CLIError(str(exc)) from exc
    return {
        "out": str(args.out),
        "seconds": round(report["meta"]["seconds"], 1),
        "projected_seconds": round(report["meta"]["projected_seconds"], 1),
        "verdict": report["verdict"].get("text", ""),
    }


def cmd_headroom(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from trainer.study.headroom import HeadroomConfig, run_headroom

    try:
        config = HeadroomConfig.quick_config() if args.quick else HeadroomConfig()
        sim = config.sim
        if args.world_seed is not None:
            sim = sim.replace(seed=int(args.world_seed))
        if args.data_dir:
            sim = sim.replace(data_dir=str(args.data_dir))
        changes: dict[str, Any] = {"sim": sim}
        if args.doses:
            changes["doses"] = tuple(float(d) for d in str(args.doses).split(",") if d.strip())
        if args.seeds:
            changes["seeds"] = int(args.seeds)
        if args.eval_sessions:
            changes["eval_sessions"] = int(args.eval_sessions)
        config = dataclasses.replace(config, **changes)
        if any(d < 0 for d in config.doses):
            raise ValueError("--doses must be >= 0")
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--doses/--world-seed: {exc}") from exc
    report = run_headroom(
        config, Path(args.out), jobs=int(args.jobs), echo=lambda s: print(s, file=sys.stderr)
    )
    return {
        "out": str(args.out),
        "headroom": {str(r["dose"]): r["headroom"] for r in report["doses"]},
        "seconds": round(report["meta"]["seconds"], 1),
    }


def cmd_family(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.study.family import run_family

    papers = [Path(p.strip()) for p in str(args.papers).split(",") if p.strip()]
    missing = [str(p) for p in papers if not (p / "paper.json").is_file()]
    if missing:
        raise CLIError(f"--papers: no paper.json in {', '.join(missing)}")
    rooms = [Path(p.strip()) for p in str(args.headroom or "").split(",") if p.strip()]
    absent = [str(p) for p in rooms if not p.is_file()]
    if absent:
        raise CLIError(f"--headroom: no such file {', '.join(absent)}")
    try:
        return run_family(papers, rooms, Path(args.out))
    except ValueError as exc:
        raise CLIError(f"--headroom: {exc}") from exc


STUDY_COMMANDS = {"paper": cmd_paper, "headroom": cmd_headroom, "family": cmd_family}
