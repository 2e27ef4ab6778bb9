"""Scorer configuration; every field is readable from an ``XMTF_``-prefixed environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.events import DEFAULT_STREAM


class ScorerSettings(BaseSettings):
    """Settings of one scorer process (passed explicitly to ``create_app``)."""

    model_config = SettingsConfigDict(env_prefix="XMTF_", extra="ignore", protected_namespaces=())

    model_dir: Path = Path("models")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # SPEC §14: the URL names a seed node of a Redis Cluster
    events_stream: str = DEFAULT_STREAM
    event_shards: int = Field(default=1, ge=1, le=1024)  # streams <stream>:{0..S-1} (SPEC §14)
    events_maxlen: int = Field(default=1_000_000, ge=1000)
    admin_token: SecretStr | None = None
    exploration_scale: float = Field(default=0.1, ge=0.0, le=1.0)
    seed: int | None = None  # of the exploration noise; None draws from the OS

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_candidates: int = Field(default=5000, ge=1)
    max_top_n: int = Field(default=1000, ge=1)
    log_max_candidates: int = Field(default=64, ge=1)  # M: candidates logged per rank event

    poll_interval_s: float = Field(default=2.0, gt=0)
    log_events: bool = True
    event_buffer_size: int = Field(default=100_000, ge=1)
    event_batch_size: int = Field(default=50, ge=1)
    event_flush_interval_s: float = Field(default=0.02, gt=0)
    redis_timeout_s: float = Field(default=0.25, gt=0)
    redis_backoff_max_s: float = Field(default=5.0, gt=0)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"
    gc_freeze: bool = True  # gc.freeze() after start-up (see the lifespan in scorer/app.py)
    # Benchmark only: adds ``POST /bench/echo`` (reads the body, answers a small fixed JSON) so
    # that ``make bench`` measures the HTTP floor of this very server stack. Off by default.
    bench_echo: bool = False
