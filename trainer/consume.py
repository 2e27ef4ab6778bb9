"""Streaming TSH training from the scorer's session log (SPEC §6).

Reads the stream with a consumer group (at-least-once): own pending entries first (after a
crash), stale pending entries of dead consumers via ``XAUTOCLAIM``, then new ones. Events are
joined into transitions; a transition is stored in the replay buffer, its request id recorded
in a Redis set of trained requests, and only then are its entries acknowledged, so a redelivered
entry is recognised and never trained twice. Malformed entries go to a dead-letter stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.exceptions import ResponseError

from shared.events import EventDecodeError, RankEvent, decode
from shared.manifest import read_current
from trainer.export import ExportResult, export_version, load_agent
from trainer.joiner import RewardConfig, SessionJoiner, Transition
from trainer.replay import ReplayBuffer
from trainer.tsh import TSHAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeConfig:
    redis_url: str
    stream: str = "xmtf:events"
    group: str = "xmtf-trainer"
    consumer: str = "trainer-1"
    read_count: int = 500
    block_ms: int = 500
    claim_idle_ms: int = 600_000  # pending entries idle this long are claimed from dead consumers
    session_timeout_s: float = 1800.0
    until_idle: bool = False
    max_events: int | None = None
    export_every: int = 0  # transitions between exports (0: export when done)
    updates_per_transition: float = 0.25
    min_replay: int = 256
    replay_capacity: int = 200_000
    replay_candidates: int = 64
    reward: RewardConfig = field(default_factory=RewardConfig)

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"

    @property
    def trained_key(self) -> str:
        return f"{self.stream}:trained"


@dataclass
class ConsumeStats:
    events: int = 0
    transitions: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    incomplete: int = 0
    updates: int = 0
    exports: list[str] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class StreamTrainer:
    """Consumes the session log and trains the current model version."""

    def __init__(
        self, model_dir: Path, config: ConsumeConfig, client: redis.Redis | None = None
    ) -> None:
        self.model_dir = Path(model_dir)
        self.config = config
        version = read_current(self.model_dir)
        if version is None:
            raise FileNotFoundError(
                f"{self.model_dir} has no CURRENT version; run `xmtf-train init` first"
            )
        self.base_version = version
        self.agent: TSHAgent = load_agent(self.model_dir / version)
        self.task_names = tuple(t.name for t in self.agent.tasks)
        self.redis = client or redis.Redis.from_url(
            config.redis_url, socket_timeout=10, socket_connect_timeout=5
        )
        self.joiner = SessionJoiner(config.reward)
        self.replay = ReplayBuffer(
            config.replay_capacity,
            self.agent.state_dim,
            len(self.task_names),
            config.replay_candidates,
            seed=self.agent.seed,
        )
        self.stats = ConsumeStats()
        self._update_credit = 0.0
        self._since_export = 0

    # ------------------------------------------------------------------ stream plumbing

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, pending: bool) -> list[tuple[str, dict[bytes, bytes]]]:
        cfg = self.config
        reply = self.redis.xreadgroup(
            cfg.group,
            cfg.consumer,
            {cfg.stream: "0" if pending else ">"},
            count=cfg.read_count,
            block=None if pending else cfg.block_ms,
        )
        entries = []
        for _, items in reply or []:
            for entry_id, fields in items:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                entries.append((eid, fields))
        return entries

    def _claim_stale(self) -> list[tuple[str, dict[bytes, bytes]]]:
        cfg = self.config
        claimed: list[tuple[str, dict[bytes, bytes]]] = []
        start = "0-0"
        while True:
            reply = self.redis.xautoclaim(
                cfg.stream,
                cfg.group,
                cfg.consumer,
                cfg.claim_idle_ms,
                start_id=start,
                count=cfg.read_count,
            )
            start = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            for entry_id, fields in reply[1]:
                if fields:  # entries deleted by MAXLEN come back empty
                    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    claimed.append((eid, fields))
            if start == "0-0":
                return claimed

    def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        cfg = self.config
        body = {b"entry_id": entry_id.encode(), b"reason": reason.encode()[:1000]}
        body |= {b"orig_" + k: v for k, v in fields.items() if isinstance(k, bytes)}
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(cfg.dead_letter_stream, body, maxlen=100_000, approximate=True)
        pipe.xack(cfg.stream, cfg.group, entry_id)
        pipe.execute()
        self.stats.dead_letters += 1
        log.warning("dead-lettered entry %s: %s", entry_id, reason)

    # ------------------------------------------------------------------ events -> replay

    def _check_rank(self, event: RankEvent) -> str | None:
        if event.state.shape[0] != self.agent.state_dim:
            return (
                f"state has {event.state.shape[0]} values, the model expects {self.agent.state_dim}"
            )
        if set(event.tasks) != set(self.task_names):
            return f"tasks {list(event.tasks)} do not match the model's {list(self.task_names)}"
        return None

    def _align(self, event: RankEvent) -> RankEvent:
        if event.tasks == self.task_names:
            return event
        order = [event.tasks.index(name) for name in self.task_names]
        return RankEvent(
            **{
                **{k: getattr(event, k) for k in event.__dataclass_fields__ if k != "type"},
                "tasks": self.task_names,
                "action": event.action[order],
                "noise": event.noise[order],
                "predictions": event.predictions[order],
            }
        )

    def handle(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> list[Transition]:
        ready: list[Transition] = []
        for entry_id, fields in entries:
            self.stats.events += 1
            try:
                event = decode(fields)
            except EventDecodeError as exc:
                self._dead_letter(entry_id, fields, str(exc))
                continue
            if isinstance(event, RankEvent):
                reason = self._check_rank(event)
                if reason:
                    self._dead_letter(entry_id, fields, reason)
                    continue
                event = self._align(event)
            ready += self.joiner.add(entry_id, event)
        return ready

    def store(self, transitions: list[Transition]) -> int:
        """Store new transitions, record their ids as trained and ack their entries (in that
        order). Returns how many were new."""
        if not transitions:
            return 0
        cfg = self.config
        seen = self.redis.smismember(cfg.trained_key, [t.request_id for t in transitions])
        fresh = [t for t, s in zip(transitions, seen, strict=True) if not s]
        self.stats.duplicates += len(transitions) - len(fresh)
        if fresh:
            self.agent.observe(np.stack([t.state for t in fresh]))
            self._add_to_replay(fresh)
        pipe = self.redis.pipeline(transaction=True)
        if fresh:
            pipe.sadd(cfg.trained_key, *[t.request_id for t in fresh])
        pipe.xack(cfg.stream, cfg.group, *[e for t in transitions for e in t.entry_ids])
        pipe.execute()
        self.stats.transitions += len(fresh)
        return len(fresh)

    def _add_to_replay(self, transitions: list[Transition]) -> None:
        by_width: dict[int, list[Transition]] = {}
        for t in transitions:  # requests logged with different candidate counts
            by_width.setdefault(t.predictions.shape[1], []).append(t)
        for group in by_width.values():
            self.replay.add(
                np.stack([t.state for t in group]),
                np.stack([t.action for t in group]),
                np.array([t.reward for t in group], np.float32),
                np.stack([t.next_state for t in group]),
                np.array([t.done for t in group], np.float32),
                np.stack([t.predictions for t in group]),
            )

    # ------------------------------------------------------------------ training

    def train(self, new_transitions: int) -> None:
        if len(self.replay) < min(self.config.min_replay, self.config.replay_capacity):
            return
        self._update_credit += new_transitions * self.config.updates_per_transition
        n = int(self._update_credit)
        self._update_credit -= n
        for _ in range(n):
            self.stats.last_metrics = self.agent.update(
                self.replay.sample(self.agent.config.batch_size)
            )
            self.stats.updates += 1

    def export(self) -> ExportResult | None:
        if self.stats.updates == 0:
            log.info("no training updates since the last export; nothing to publish")
            return None
        result = export_version(
            self.agent,
            self.model_dir,
            training={
                "source": "consume",
                "base_version": self.base_version,
                "stream": self.config.stream,
                **{
                    k: v
                    for k, v in self.stats.as_dict().items()
                    if k in ("events", "transitions", "updates")
                },
                "metrics": self.stats.last_metrics,
            },
        )
        self.stats.exports.append(result.version)
        self._since_export = 0
        return result

    def _process(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
        new = self.store(self.handle(entries))
        expired, dropped = self.joiner.expire(time.time(), self.config.session_timeout_s)
        new += self.store(expired)
        if dropped:
            self.redis.xack(self.config.stream, self.config.group, *dropped)
            self.stats.incomplete += len(dropped)
        self.train(new)
        self._since_export += new
        if self.config.export_every and self._since_export >= self.config.export_every:
            self.export()

    def run(self, progress: Callable[[ConsumeStats], None] | None = None) -> ConsumeStats:
        """Consume until idle (``until_idle``), ``max_events``, or forever."""
        cfg = self.config
        self.ensure_group()
        self._process(self._read(pending=True))  # what this consumer left un-acked last time
        self._process(self._claim_stale())
        while cfg.max_events is None or self.stats.events < cfg.max_events:
            entries = self._read(pending=False)
            if not entries and cfg.until_idle:
                break
            self._process(entries)
            if progress:
                progress(self.stats)
        if self._since_export or (not cfg.export_every and self.stats.updates):
            self.export()
        return self.stats
