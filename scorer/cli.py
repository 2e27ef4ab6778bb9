"""``xmtf-scorer``: run the scorer with uvicorn."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

from pydantic import ValidationError

from scorer.logs import configure_logging
from scorer.settings import ScorerSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xmtf-scorer",
        description="Serve xMTF models (FastAPI + ONNX Runtime). Every option can also be set "
        "with an XMTF_-prefixed environment variable (e.g. XMTF_MODEL_DIR).",
    )
    p.add_argument("--model-dir", help="directory holding CURRENT and version folders")
    p.add_argument(
        "--redis-url", help="Redis for the session log (default redis://127.0.0.1:6379/0)"
    )
    p.add_argument("--events-stream", help="Redis Stream key (default xmtf:events)")
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the Redis URL is a seed node of a Redis Cluster (XMTF_REDIS_CLUSTER)",
    )
    p.add_argument(
        "--event-shards", type=int, help="spread events over S streams by user (default 1)"
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument(
        "--exploration-scale", type=float, help="noise std as a fraction of the action range"
    )
    p.add_argument("--no-events", action="store_true", help="do not log sessions to Redis")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Command-line options become XMTF_ variables so that every worker process sees them.
    for key in (
        "model_dir",
        "redis_url",
        "events_stream",
        "event_shards",
        "host",
        "port",
        "workers",
        "exploration_scale",
        "log_level",
    ):
        value = getattr(args, key)
        if value is not None:
            os.environ[f"XMTF_{key.upper()}"] = str(value)
    if args.redis_cluster:
        os.environ["XMTF_REDIS_CLUSTER"] = "true"
    if args.no_events:
        os.environ["XMTF_LOG_EVENTS"] = "false"
    try:
        settings = ScorerSettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        print(
            f"xmtf-scorer: invalid setting {'.'.join(map(str, err['loc']))}: {err['msg']}",
            file=sys.stderr,
        )
        return 2
    if not settings.model_dir.is_dir():
        print(f"xmtf-scorer: model directory {settings.model_dir} does not exist", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    import uvicorn

    # Several workers share their metrics through prometheus-client's multiprocess files
    # (scorer/prom.py): a fresh folder per run, removed at exit. One worker keeps its registry.
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="xmtf-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve(uvicorn, settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _serve(uvicorn: Any, settings: ScorerSettings) -> None:
    uvicorn.run(
        "scorer.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,  # keep the JSON logging configured above (workers inherit it)
    )


if __name__ == "__main__":
    sys.exit(main())
