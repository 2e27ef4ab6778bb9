"""Streaming TSH training from the scorer's session log (SPEC §6).

Reads the stream with a consumer group (at-least-once): own pending entries first (after a
crash), stale pending entries of dead consumers via ``XAUTOCLAIM``, then new ones. Events are
joined into transitions. Storing a transition is one Redis transaction (MULTI/EXEC) that appends
it to the durable replay stream ``<stream>:transitions``, records its request id in the
``<stream>:trained`` sorted set and ``XACK``s its entries; only then does it enter the in-memory
replay buffer. So a crash loses nothing (a restarted trainer rebuilds its replay buffer from the
replay stream and re-reads what was not acknowledged) and counts nothing twice (a redelivered
request id is recognised). Malformed entries go to a dead-letter stream. Entries that
``MAXLEN ~`` trimmed before the group read them are counted as lost.

Ingest is decoupled from learning: this module's loop (read, decode, join, store, ack) runs at
stream speed on the main thread and hands stored transitions to a
:class:`~trainer.stream.learner.BackgroundLearner`, which trains on its own thread at the
configured compute budget (updates per transition, ``max_updates``, ``time_budget_s``) and
publishes versions every N transitions, updates or seconds. ``until_idle``: ingest until the
stream is drained, let the learner spend what the budget allows, export, exit. A time budget
bounds the whole run, start-up and the final export included (ingest stops early if it must;
what it did not read stays in the stream for the next run).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.exceptions import ResponseError

from shared.events import DEFAULT_STREAM, EventDecodeError, RankEvent, decode
from shared.manifest import read_current
from trainer.export import ExportCheckError, ExportResult, export_version, load_agent
from trainer.replay import ReplayBuffer
from trainer.stream.codec import Transition, decode_transition, encode_transition
from trainer.stream.joiner import RewardConfig, SessionJoiner
from trainer.stream.learner import BackgroundLearner, LearnBudget
from trainer.tsh import TSHAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeConfig:
    redis_url: str
    stream: str = DEFAULT_STREAM
    group: str = "xmtf-trainer"
    consumer: str = "trainer-1"
    read_count: int = 2000  # entries per XREADGROUP (one round trip, one transaction to store)
    block_ms: int = 500
    claim_idle_ms: int = 600_000  # pending entries idle this long are claimed from dead consumers
    dedupe_retention_s: float = 7 * 86400.0  # how long trained request ids are remembered
    session_timeout_s: float = 1800.0
    until_idle: bool = False
    max_events: int | None = None
    export_every: int = 0  # transitions between exports (0: export when done)
    export_every_updates: int = 0  # updates between exports (0: off)
    export_every_seconds: float = 0.0  # seconds between exports that have new updates (0: off)
    updates_per_transition: float = 0.25
    max_updates: int | None = None  # updates in this run (None: no cap)
    time_budget_s: float | None = None  # the whole run, final export included (None: no cap)
    export_reserve_s: float = 4.0  # kept for the final export (<= budget / 4) until one is timed
    min_replay: int = 256
    replay_capacity: int = 200_000
    replay_candidates: int = 64
    restore_chunk: int = 5000  # replay entries per XRANGE while restoring
    device: str = "cpu"  # where the learner's networks live: "cpu", "cuda", "cuda:1", ...
    reward: RewardConfig = field(default_factory=RewardConfig)
    # SPEC §13: publish each version as a canary arm of this share instead of switching CURRENT
    canary_share: float | None = None

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"

    @property
    def trained_key(self) -> str:
        return f"{self.stream}:trained"

    @property
    def transitions_stream(self) -> str:
        return f"{self.stream}:transitions"


@dataclass
class ConsumeStats:
    events: int = 0
    transitions: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    incomplete: int = 0
    updates: int = 0
    exports: list[str] = field(default_factory=list)
    # exports the checks refused (trainer.export.ExportCheckError): CURRENT kept its version
    refused_exports: list[str] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)

    restored: int = 0  # transitions reloaded from the replay stream at start
    lost: int = 0  # entries trimmed from the stream before this group read them
    ingest_seconds: float = 0.0  # start of reading to drained (or stopped)
    seconds: float = 0.0  # the whole run, final export included
    stopped_by: str = ""  # "idle", "max_events", "time_budget" (or "" while running)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class StreamTrainer:
    """Consumes the session log and trains the current model version."""

    def __init__(
        self,
        model_dir: Path,
        config: ConsumeConfig,
        client: redis.Redis | None = None,
        started: float | None = None,
    ) -> None:
        """``started``: the ``time.monotonic()`` the time budget counts from (default now)."""
        self.started = time.monotonic() if started is None else started
        self.model_dir = Path(model_dir)
        self.config = config
        version = read_current(self.model_dir)
        if version is None:
            raise FileNotFoundError(
                f"{self.model_dir} has no CURRENT version; run `xmtf-train init` first"
            )
        self.base_version = version
        self.agent: TSHAgent = load_agent(self.model_dir / version).to(config.device)
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
        self.learner = BackgroundLearner(
            self.agent, self.replay, self._budget(), self.export, self._record_update
        )
        self._export_seconds = 0.0  # the longest export of this run

    def _budget(self) -> LearnBudget:
        cfg = self.config
        return LearnBudget(
            updates_per_transition=cfg.updates_per_transition,
            min_replay=cfg.min_replay,
            max_updates=cfg.max_updates,
            deadline=None,  # set by run(), once the export reserve is known
            export_every_transitions=cfg.export_every,
            export_every_updates=cfg.export_every_updates,
            export_every_seconds=cfg.export_every_seconds,
        )

    def _record_update(self, metrics: dict[str, float]) -> None:
        self.stats.last_metrics = metrics
        self.stats.updates += 1

    # ------------------------------------------------------------------ stream plumbing

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, start: str = ">") -> list[tuple[str, dict[bytes, bytes]]]:
        """New entries (``start=">"``) or this consumer's pending entries after ``start``."""
        cfg = self.config
        block = None
        if start == ">":
            block = cfg.block_ms
            deadline = self._deadline()
            if deadline is not None:  # never wait past the time budget
                block = max(1, min(block, int(1000 * (deadline - time.monotonic()))))
        reply: Any = self.redis.xreadgroup(
            cfg.group, cfg.consumer, {cfg.stream: start}, count=cfg.read_count, block=block
        )
        return self._live([(eid, fields) for _, items in reply or [] for eid, fields in items])

    def _live(self, entries: list[tuple[Any, Any]]) -> list[tuple[str, dict[bytes, bytes]]]:
        """Decode ids; ack and count entries that ``MAXLEN ~`` deleted while pending."""
        live, gone = [], []
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if fields:
                live.append((eid, fields))
            else:
                gone.append(eid)
        if gone:
            self.redis.xack(self.config.stream, self.config.group, *gone)
            self.stats.lost += len(gone)
            log.warning(
                "%d pending entries were trimmed from the stream before training", len(gone)
            )
        return live

    def _read_own_pending(self) -> None:
        """Re-process everything this consumer name left unacknowledged (after a crash)."""
        start = "0"
        while not self._out_of_time():
            entries = self._read(start)
            if not entries:
                return
            self._process(entries)
            start = entries[-1][0]

    def _claim_stale(self) -> None:
        """Take over entries that other (dead) consumers of the group left pending."""
        cfg = self.config
        start = "0-0"
        while not self._out_of_time():
            reply = self.redis.xautoclaim(
                cfg.stream,
                cfg.group,
                cfg.consumer,
                cfg.claim_idle_ms,
                start_id=start,
                count=cfg.read_count,
            )
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            self._process(self._live(reply[1]))
            if len(reply) > 2 and reply[2]:  # Redis >= 7: ids deleted while pending
                self.stats.lost += len(reply[2])
            if start == "0-0":
                return

    def _count_trimmed_unread(self) -> None:
        """Entries appended but trimmed before the group read them (Redis >= 7 lag info)."""
        cfg = self.config
        try:
            added = int(self.redis.xinfo_stream(cfg.stream)["entries-added"])
            group = next(
                g
                for g in self.redis.xinfo_groups(cfg.stream)
                if g["name"] in (cfg.group, cfg.group.encode())
            )
            read, lag = group.get("entries-read"), group.get("lag")
        except (KeyError, StopIteration, redis.ResponseError):
            return
        if read is None and group.get("last-delivered-id") in ("0-0", b"0-0"):
            read = 0  # a group that has read nothing yet
        if read is not None and lag is not None:
            trimmed = max(0, added - int(read) - int(lag))
            if trimmed:
                self.stats.lost += trimmed
                log.warning(
                    "%d entries were trimmed by MAXLEN before this group read them: "
                    "raise XMTF_EVENTS_MAXLEN or consume faster",
                    trimmed,
                )

    def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        cfg = self.config
        body = {b"entry_id": entry_id.encode(), b"reason": reason.encode()[:1000]}
        body |= {b"orig_" + k: v for k, v in fields.items() if isinstance(k, bytes)}
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(cfg.dead_letter_stream, body, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
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
        """Durably store the new transitions, record their ids and ack their entries in one
        transaction, then add them to the replay buffer. Returns how many were new."""
        if not transitions:
            return 0
        cfg = self.config
        scores = self.redis.zmscore(cfg.trained_key, [t.request_id for t in transitions])
        fresh = [t for t, score in zip(transitions, scores, strict=True) if score is None]
        self.stats.duplicates += len(transitions) - len(fresh)
        pipe = self.redis.pipeline(transaction=True)
        for t in fresh:
            pipe.xadd(
                cfg.transitions_stream,
                encode_transition(t),  # type: ignore[arg-type]
                maxlen=cfg.replay_capacity,
                approximate=True,
            )
        if fresh:
            now = time.time()
            pipe.zadd(cfg.trained_key, {t.request_id: now for t in fresh})
        pipe.xack(cfg.stream, cfg.group, *[e for t in transitions for e in t.entry_ids])
        pipe.execute()
        if fresh:  # stored: now the learner may see them (its normaliser observes the states)
            self._add_to_replay(fresh)
            self.learner.added(np.stack([t.state for t in fresh]))
        self.stats.transitions += len(fresh)
        return len(fresh)

    def restore_replay(self) -> int:
        """Reload the newest ``replay_capacity`` transitions from the replay stream, oldest
        first, ``restore_chunk`` entries at a time (the ring keeps the newest; memory stays
        that of the buffer)."""
        cfg = self.config
        start, restored = "-", 0
        while True:
            entries: Any = self.redis.xrange(
                cfg.transitions_stream, min=start, count=cfg.restore_chunk
            )
            if not entries:
                break
            chunk = []
            for entry_id, fields in entries:
                try:
                    chunk.append(decode_transition(fields))
                except ValueError as exc:
                    log.warning("skipping replay entry %s: %s", entry_id, exc)
            if chunk:  # no update credit: the model has already learned from them
                self._add_to_replay(chunk)
            restored += len(chunk)
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        self.stats.restored = min(restored, cfg.replay_capacity)
        return self.stats.restored

    def _add_to_replay(self, transitions: list[Transition]) -> None:
        by_width: dict[int, list[Transition]] = {}
        for t in transitions:  # requests logged with different candidate counts
            by_width.setdefault(t.predictions.shape[1], []).append(t)
        for group in by_width.values():
            with self.learner.lock:  # the learner samples from the same buffer
                self.replay.add(
                    np.stack([t.state for t in group]),
                    np.stack([t.action for t in group]),
                    np.array([t.reward for t in group], np.float32),
                    np.stack([t.next_state for t in group]),
                    np.array([t.done for t in group], np.float32),
                    np.stack([t.predictions for t in group]),
                )

    # ------------------------------------------------------------------ learning

    def export(self) -> ExportResult | None:
        """Publish the current model (on the learner's thread, or after it stopped)."""
        if self.stats.updates == 0:
            log.info("no training updates in this run; nothing to publish")
            return None
        t0 = time.monotonic()
        device = self.agent.device
        if device.type != "cpu":  # ONNX export and its checks run on the CPU
            self.agent.to("cpu")
        try:
            result: ExportResult | None = export_version(
                self.agent,
                self.model_dir,
                publish=self.config.canary_share is None,
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
        except ExportCheckError as exc:
            # the served version stays; training goes on, and the next export is checked anew
            log.warning("export refused, %s keeps serving its version: %s", self.model_dir, exc)
            self.stats.refused_exports.append(str(exc))
            result = None
        finally:
            if device.type != "cpu":
                self.agent.to(device)
        if result is None:
            return None
        self.stats.exports.append(result.version)
        if self.config.canary_share is not None:
            from trainer.experiment.commands import publish_canary

            publish_canary(self.model_dir, result.version, self.config.canary_share)
        self._export_seconds = max(self._export_seconds, time.monotonic() - t0)
        # a slow export moves the learner's stop time earlier (the final one must still fit)
        self.learner.budget = dataclasses.replace(self.learner.budget, deadline=self._deadline())
        return result

    def _process(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
        self.store(self.handle(entries))
        expired, dropped = self.joiner.expire(time.time(), self.config.session_timeout_s)
        self.store(expired)
        if dropped:
            self.redis.xack(self.config.stream, self.config.group, *dropped)
            self.stats.incomplete += len(dropped)
        self.learner.check()

    def _deadline(self) -> float | None:
        """When ingest and learning must stop so the final export fits the time budget."""
        if self.config.time_budget_s is None:
            return None
        budget = self.config.time_budget_s
        # until an export has been timed: export_reserve_s, at most a quarter of the budget
        reserve = max(min(self.config.export_reserve_s, budget / 4), 2.0 * self._export_seconds)
        return self.started + budget - reserve

    def _out_of_time(self) -> bool:
        deadline = self._deadline()
        return deadline is not None and time.monotonic() >= deadline

    def _prepare(self) -> None:
        """Before ingest: the group, the dedupe set's retention, the replay, trimmed entries."""
        cfg = self.config
        self.ensure_group()
        self.redis.zremrangebyscore(cfg.trained_key, "-inf", time.time() - cfg.dedupe_retention_s)
        self.restore_replay()
        self._count_trimmed_unread()

    def _recover(self) -> None:
        """This consumer's own pending entries (after a crash), then dead consumers' ones."""
        self._read_own_pending()
        self._claim_stale()

    def _ingest_round(self) -> int:
        """One read and its processing; returns how many entries it read (0: drained). A
        drained read under ``until_idle`` is not processed: the loop stops on it."""
        entries = self._read()
        if entries or not self.config.until_idle:
            self._process(entries)
        return len(entries)

    def run(self, progress: Callable[[ConsumeStats], None] | None = None) -> ConsumeStats:
        """Consume until idle (``until_idle``), ``max_events``, the time budget, or forever."""
        self.learner.budget = dataclasses.replace(self.learner.budget, deadline=self._deadline())
        self._prepare()
        self.learner.start()
        t_ingest = time.monotonic()
        try:
            self._recover()
            while True:
                cfg = self.config
                if cfg.max_events is not None and self.stats.events >= cfg.max_events:
                    self.stats.stopped_by = "max_events"
                    break
                if self._out_of_time():
                    self.stats.stopped_by = "time_budget"
                    break
                if not self._ingest_round() and self.config.until_idle:
                    self.stats.stopped_by = "idle"
                    break
                if progress:
                    progress(self.stats)
            self.stats.ingest_seconds = time.monotonic() - t_ingest
            self.learner.finish()  # spends the remaining credit within the caps
        except BaseException:
            self.learner.stop()
            raise
        if self.learner.has_unexported:
            self.learner.export_now()
        self.stats.seconds = time.monotonic() - self.started
        return self.stats
