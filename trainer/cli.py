"""``xmtf-train``: init, consume, simulate, export, paper, plot.

Every option also reads an ``XMTF_``-prefixed environment variable (``--model-dir`` from
``XMTF_MODEL_DIR``, ``--redis-url`` from ``XMTF_REDIS_URL``, ...). Bad arguments and unreachable
services end the command with a one-line reason and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.events import DEFAULT_STREAM
from shared.tasks import DEFAULT_TASK_NAMES
from trainer.cli_args import (
    CLIError,
    add_option,
    canary_share,
    env_default,
    non_negative_int,
    positive_int,
    seconds_arg,
)
from trainer.study.commands import STUDY_COMMANDS, add_study_parsers

if TYPE_CHECKING:
    from shared.tasks import TaskSpec
    from trainer.config import TSHConfig

log = logging.getLogger("xmtf-train")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    add_option(
        p, "device", "cpu", help="auto | cpu | cuda | cuda:N (auto: cuda when torch sees one)"
    )
    add_option(p, "threads", 1, type=positive_int, help="torch intra-op threads (default 1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmtf-train", description="Train and publish xMTF models."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="publish a first, untrained (neutral) model version")
    add_option(p, "model-dir", required=env_default("model-dir") is None, type=Path)
    add_option(p, "state-dim", required=env_default("state-dim") is None, type=positive_int)
    add_option(p, "tasks", ",".join(DEFAULT_TASK_NAMES), help="comma-separated task names")
    add_option(p, "directions", None, help="comma-separated 1/-1 per task (default all 1)")
    add_option(
        p,
        "predictions-sample",
        None,
        type=Path,
        help="a .npy float array (n, K) of logged predictions: fits each task's input "
        "normalisation and range (default: every task in [0, 1], unnormalised)",
    )
    add_option(
        p,
        "config",
        None,
        type=Path,
        help="JSON with a tsh section: TSHConfig overrides for this model's learner (consume "
        "trains every later version with them)",
    )
    add_option(p, "seed", 0, type=int)
    add_option(p, "threads", 1, type=positive_int, help="torch intra-op threads (default 1)")

    p = sub.add_parser("consume", help="train on the sessions logged in Redis and publish versions")
    add_option(p, "model-dir", required=env_default("model-dir") is None, type=Path)
    add_option(p, "redis-url", "redis://127.0.0.1:6379/0")
    add_option(p, "events-stream", DEFAULT_STREAM)
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        default=str(env_default("redis-cluster", "false")).lower() in ("1", "true", "yes"),
        help="the Redis URL is a seed node of a Redis Cluster (SPEC §14)",
    )
    add_option(p, "event-shards", 1, type=positive_int, help="event streams <stream>:{0..S-1}")
    add_option(
        p, "shards", "all", help="the shards this job consumes: all, 3, 0-3, 0,2 (default all)"
    )
    add_option(p, "group", "xmtf-trainer")
    add_option(p, "consumer", "trainer-1")
    p.add_argument("--until-idle", action="store_true", help="stop once the stream is drained")
    add_option(p, "max-events", None, type=positive_int)
    add_option(
        p,
        "export-every",
        0,
        type=non_negative_int,
        help="publish a version every N transitions (0: at the end)",
    )
    add_option(
        p, "export-every-updates", 0, type=non_negative_int, help="... every N updates (0: off)"
    )
    add_option(
        p,
        "export-every-seconds",
        0.0,
        type=seconds_arg,
        help="... every S seconds that saw updates (0: off)",
    )
    add_option(
        p, "updates-per-transition", 0.25, type=float, help="update credit per new transition"
    )
    add_option(p, "max-updates", None, type=non_negative_int, help="at most N updates in this run")
    add_option(
        p,
        "time-budget",
        None,
        type=seconds_arg,
        help="finish (final export included) within S seconds of start; ingest stops early "
        "if it must, what it did not read stays in the stream",
    )
    add_option(
        p, "min-replay", 256, type=positive_int, help="transitions stored before training starts"
    )
    add_option(p, "read-count", 2000, type=positive_int, help="stream entries per read")
    add_option(
        p,
        "publish",
        "current",
        help="current: switch CURRENT (default); canary:SHARE: start an experiment with the new "
        "version as a treatment arm of that share against CURRENT (SPEC §13)",
    )
    _add_runtime(p)

    p = sub.add_parser("simulate", help="train with TSH against the user simulator")
    add_option(p, "config", None, type=Path, help="JSON file with sections sim, tsh, train")
    add_option(p, "out", "results/simulate", type=Path)
    add_option(p, "publish-to", None, type=Path, help="also export the result into this model dir")
    _add_runtime(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="export a checkpoint (checkpoint.safetensors) as a version")
    add_option(p, "checkpoint", required=env_default("checkpoint") is None, type=Path)
    add_option(p, "model-dir", required=env_default("model-dir") is None, type=Path)
    p.add_argument("--no-publish", action="store_true", help="write the version but leave CURRENT")
    add_option(p, "threads", 1, type=positive_int, help="torch intra-op threads (default 1)")

    add_study_parsers(sub)

    from trainer.experiment.commands import add_parser as add_experiment_parser

    add_experiment_parser(sub)

    p = sub.add_parser("plot", help="MFC figures (paper Figs. 5-7) and training curves as PNG")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="one xMTF checkpoint (Figs. 5 and 6 only)")
    src.add_argument("--run", type=Path, help="an `xmtf-train paper` output folder (default)")
    add_option(p, "out", None, type=Path, help="where to write the PNGs (default: <run>/figures)")
    return parser


def cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    from shared.tasks import make_tasks
    from trainer.export import export_version
    from trainer.runtime import set_threads
    from trainer.tsh import TSHAgent

    set_threads(int(args.threads))
    names = [n for n in str(args.tasks).split(",") if n.strip()]
    directions = None
    if args.directions:
        try:
            directions = [int(d) for d in str(args.directions).split(",")]
        except ValueError as exc:
            raise CLIError(
                f"--directions must be comma-separated 1/-1 values: {args.directions}"
            ) from exc
    try:
        tasks = make_tasks(names, directions)
    except ValueError as exc:
        raise CLIError(f"--tasks/--directions: {exc}") from exc
    if args.predictions_sample is not None:
        tasks = _calibrated(tasks, Path(args.predictions_sample))
    agent = TSHAgent(tasks, int(args.state_dim), _tsh_config(args.config), seed=int(args.seed))
    result = export_version(agent, args.model_dir, training={"source": "init"})
    return {"version": result.version, "path": str(result.path)}


def _tsh_config(path: Path | None) -> TSHConfig | None:
    """``init --config``: the ``tsh`` section of a JSON file as a TSHConfig (None: defaults)."""
    from trainer.config import TSHConfig, from_dict, load_json

    if path is None:
        return None
    try:
        data = load_json(Path(path))
        other = sorted(set(data) - {"tsh"})
        if other:
            raise ValueError(f"init reads only a tsh section, not {', '.join(other)}")
        return from_dict(TSHConfig, data.get("tsh", {}))
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--config: {exc}") from exc


def _calibrated(tasks: tuple[TaskSpec, ...], path: Path) -> tuple[TaskSpec, ...]:
    import numpy as np

    from shared.tasks import calibrate_tasks

    try:
        sample = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--predictions-sample: cannot read {path} as .npy: {exc}") from exc
    if sample.dtype.kind not in "fiu" or sample.ndim != 2 or len(sample) < 2:
        raise CLIError(
            f"--predictions-sample: need a numeric (n >= 2, {len(tasks)}) array, "
            f"got {sample.dtype} {sample.shape}"
        )
    if not np.isfinite(sample).all():
        raise CLIError("--predictions-sample: the array holds NaN or infinite values")
    try:
        return calibrate_tasks(tasks, sample)
    except ValueError as exc:
        raise CLIError(f"--predictions-sample: {exc}") from exc


def cmd_consume(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from trainer.runtime import resolve_device, set_threads
    from trainer.stream.consume import ConsumeConfig, StreamTrainer

    if float(args.updates_per_transition) < 0:
        raise CLIError("--updates-per-transition must be >= 0")
    canary = canary_share(str(args.publish))
    set_threads(int(args.threads))
    device = resolve_device(str(args.device))
    from shared.redis_client import make_client
    from shared.sharding import parse_shards

    n_shards = int(args.event_shards)
    try:
        shards = parse_shards(str(args.shards), n_shards)
    except ValueError as exc:
        raise CLIError(f"--shards: {exc}") from exc
    if args.redis_cluster and n_shards == 1 and "{" not in str(args.events_stream):
        # <stream> and <stream>:transitions would hash to different slots: no MULTI/EXEC
        raise CLIError(
            "on a Redis Cluster use --event-shards >= 2 (streams <stream>:{i}) or a stream "
            "name with a hash tag, e.g. {xmtf}:events"
        )
    try:
        client = make_client(
            args.redis_url, bool(args.redis_cluster), socket_timeout=10, socket_connect_timeout=3
        )
        client.ping()
    except redis.RedisError as exc:
        raise CLIError(f"cannot reach Redis at {args.redis_url}: {exc}") from exc
    config = ConsumeConfig(
        redis_url=args.redis_url,
        stream=args.events_stream,
        group=args.group,
        consumer=args.consumer,
        until_idle=args.until_idle,
        max_events=args.max_events,
        export_every=int(args.export_every),
        export_every_updates=int(args.export_every_updates),
        export_every_seconds=float(args.export_every_seconds),
        updates_per_transition=float(args.updates_per_transition),
        max_updates=None if args.max_updates is None else int(args.max_updates),
        time_budget_s=None if args.time_budget is None else float(args.time_budget),
        min_replay=int(args.min_replay),
        read_count=int(args.read_count),
        device=device,
        canary_share=canary,
    )
    try:
        if n_shards > 1 or args.redis_cluster:
            from trainer.stream.shards import ShardedStreamTrainer

            trainer: StreamTrainer = ShardedStreamTrainer(
                args.model_dir, config, client, shards, n_shards, started=args.started
            )
        else:
            trainer = StreamTrainer(args.model_dir, config, client, started=args.started)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    stats = trainer.run(
        progress=lambda s: log.info(
            "events %d transitions %d updates %d", s.events, s.transitions, s.updates
        )
    )
    return {**stats.as_dict(), "device": device}


def cmd_experiment(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.experiment.commands import run

    return run(args)


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.export import export_version
    from trainer.runtime import resolve_device, set_threads
    from trainer.simulate import SimulateConfig, train_on_simulator, write_outputs

    try:
        config = SimulateConfig.from_file(args.config) if args.config else SimulateConfig()
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--config: {exc}") from exc
    set_threads(int(args.threads))
    device = resolve_device(str(args.device))
    result = train_on_simulator(config, progress=not args.no_progress, device=device)
    result.agent.to("cpu")  # the checkpoint and the ONNX export are written from the CPU
    summary = write_outputs(result, config, args.out)
    table = _summary_table(summary)
    print(table, file=sys.stderr)
    out: dict[str, Any] = {
        "out": str(args.out),
        "plain_sum": summary["plain_sum"],
        "xmtf": summary["xmtf"],
        "seconds": round(result.seconds, 1),
        "device": device,
    }
    if result.selection:
        sel = result.selection
        out["selection"] = {
            "selected_step": sel["selected_step"],
            "kept_start": sel["kept_start"],
            "val_gain": round(sel["val_gain"], 1),
        }
        if sel["kept_start"]:
            print(
                "guard: no checkpoint beat the untrained start on validation users; the start "
                "is what is reported and published",
                file=sys.stderr,
            )
    if args.publish_to:
        exported = export_version(
            result.agent, args.publish_to, training={"source": "simulate", **summary["xmtf"]}
        )
        out["version"] = exported.version
    return out


def _summary_table(summary: dict[str, Any]) -> str:
    rows = [("plain sum (neutral)", summary["plain_sum"]), ("xMTF (TSH)", summary["xmtf"])]
    lines = ["", f"{'method':<22}{'watch time / session':>24}{'session length':>18}"]
    for name, s in rows:
        wt = f"{s['return_mean']:.1f} ± {s['return_std']:.1f}"
        ln = f"{s['length_mean']:.2f} ± {s['length_std']:.2f}"
        lines.append(f"{name:<22}{wt:>24}{ln:>18}")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.export import export_version
    from trainer.runtime import set_threads
    from trainer.tsh import TSHAgent

    set_threads(int(args.threads))
    if not Path(args.checkpoint).is_file():
        raise CLIError(f"checkpoint {args.checkpoint} does not exist")
    agent = TSHAgent.load(args.checkpoint)
    result = export_version(
        agent, args.model_dir, training={"source": "export"}, publish=not args.no_publish
    )
    return {
        "version": result.version,
        "path": str(result.path),
        "checks": result.manifest.checks.model_dump(),
    }


def cmd_plot(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.study.plots import plot_checkpoint, plot_run

    if args.checkpoint is not None:
        if not Path(args.checkpoint).is_file():
            raise CLIError(f"checkpoint {args.checkpoint} does not exist")
        out = args.out or Path(args.checkpoint).parent / "figures"
        files = plot_checkpoint(args.checkpoint, out)
    else:
        run = args.run or Path("results")
        if not (run / "paper.json").is_file():
            raise CLIError(f"{run} has no paper.json (run `xmtf-train paper --out {run}` first)")
        files = plot_run(run, args.out or run / "figures")
    return {"files": [str(f) for f in files]}


COMMANDS = {
    "init": cmd_init,
    "consume": cmd_consume,
    "simulate": cmd_simulate,
    "export": cmd_export,
    **STUDY_COMMANDS,
    "plot": cmd_plot,
    "experiment": cmd_experiment,
}


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # what `consume --time-budget` counts from
    args = _parser().parse_args(argv)
    args.started = started
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    from trainer.export import ExportCheckError

    try:
        result = COMMANDS[args.command](args)
    except CLIError as exc:
        print(f"xmtf-train {args.command}: {exc}", file=sys.stderr)
        return 2
    except ExportCheckError as exc:
        print(f"xmtf-train {args.command}: export refused: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"xmtf-train {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
