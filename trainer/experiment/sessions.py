"""The session log of an experiment (SPEC §6, §13, §14): every event stream, read, and each
user's sessions per arm, and before the experiment.

:class:`EventStreams` reads the stream the scorers write (``XRANGE`` in chunks; a read-only pass
that leaves the trainer's consumer group alone): ``<stream>``, or with ``XMTF_EVENT_SHARDS = S``
the shard streams ``<stream>:{0}`` .. ``<stream>:{S-1}`` one after the other. A session belongs
to one user and a user to one shard, so a session's events stay in order; the report's figures do
not depend on how the users were spread over the shards.

:func:`collect` keeps the rank events tagged with the experiment's name and attributes each
session to the arm of its first such event. A session counts once it has ended
(``session_end``, or no event for ``session_timeout_s`` before the newest one). Rank events of
the experiment served by ``CURRENT`` because their arm's version was refused carry the arm
``default`` and are counted apart (``fallback_sessions``), not in any arm.

With ``pre_period=True`` it also totals, for each user of the experiment, the watch time and
sessions of their requests logged before the experiment began (the covariate of CUPED): rank
events not tagged with the experiment and older than the cutoff, ``min(started_at, first tagged
rank event)``, so that no request the experiment could have influenced is counted (the scorers
pick the file up at their next poll, and their clocks need not match the trainer's). Only what
the stream still holds counts (``MAXLEN`` trims the oldest events).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.events import EventDecodeError, FeedbackEvent, RankEvent, SessionEndEvent, decode
from shared.experiment import DEFAULT_ARM
from shared.sharding import shard_key, shard_streams


class StreamsError(ValueError):
    """The event streams in Redis do not match the shard count given."""


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


@dataclass
class EventStreams:
    """The scorers' event streams: ``<stream>``, or its ``shards`` shard streams (SPEC §14)."""

    client: Any
    stream: str
    shards: int = 1
    counts: dict[str, int] = field(default_factory=dict)  # stream -> events read

    @property
    def keys(self) -> list[str]:
        return shard_streams(self.stream, self.shards)

    def check(self) -> None:
        """Refuse a shard count that misses streams: ``<stream>:{S}`` exists (the scorers write
        more shards than ``S``), or ``S`` is 1 and only shard streams exist."""
        beyond = shard_key(self.stream, max(self.shards, 1))
        if self.client.exists(beyond):
            raise StreamsError(
                f"{beyond} exists: the scorers write more than {self.shards} event shard(s); "
                "pass --event-shards S (XMTF_EVENT_SHARDS) as the scorers have it"
            )
        first = shard_key(self.stream, 0)
        if self.shards <= 1 and not self.client.exists(self.stream) and self.client.exists(first):
            raise StreamsError(
                f"{self.stream} does not exist but {first} does: the scorers write sharded "
                "streams; pass --event-shards S (XMTF_EVENT_SHARDS) as the scorers have it"
            )

    def events(self) -> Iterator[Any]:
        """Every decodable event of every stream, one stream after the other."""
        for key in self.keys:
            self.counts[key] = 0
            for event in read_events(self.client, key):
                self.counts[key] += 1
                yield event

    def describe(self) -> dict[str, Any]:
        return {"shards": self.shards, "streams_read": len(self.counts), "events": self.counts}


@dataclass
class ArmData:
    """Per-user totals of one arm (arrays aligned by user)."""

    watch: np.ndarray  # total watch time of the user's counted sessions
    sessions: np.ndarray  # counted sessions
    requests: np.ndarray  # rank requests in them
    positives: dict[str, int] = field(default_factory=dict)  # task -> items with signal > 0
    items: int = 0  # items with feedback
    pre_watch: np.ndarray | None = None  # with pre_period: watch time before the experiment
    pre_sessions: np.ndarray | None = None  # ... and sessions (0: none logged)


@dataclass
class SessionLog:
    """What :func:`collect` found: per-arm user data, fallback sessions and the pre-period's
    cutoff (None without ``pre_period`` or without any event of the experiment)."""

    arms: dict[str, ArmData]
    fallback: int
    cutoff: float | None = None


@dataclass
class _Session:
    arm: str
    user: str
    requests: int = 0
    watch: float = 0.0
    ended: bool = False
    last_ts: float = 0.0


class _Collector:
    """One pass over the events (see :func:`collect`)."""

    def __init__(self, experiment: str, pre_period: bool) -> None:
        self.experiment = experiment
        self.pre_period = pre_period
        self.sessions: dict[str, _Session] = {}
        self.request_session: dict[str, str] = {}
        self.positives: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.items: dict[str, int] = defaultdict(int)
        self.newest = -math.inf
        self.first_tagged = math.inf
        self.other: dict[str, tuple[str, str, float]] = {}  # request -> (session, user, ts)
        self.other_watch: dict[str, float] = defaultdict(float)

    def add(self, ev: Any) -> None:
        self.newest = max(self.newest, ev.ts)
        if isinstance(ev, RankEvent):
            self._rank(ev)
        elif isinstance(ev, FeedbackEvent):
            self._feedback(ev)
        elif isinstance(ev, SessionEndEvent):
            s = self.sessions.get(ev.session_id)
            if s is not None:
                s.ended = True

    def _rank(self, ev: RankEvent) -> None:
        if ev.experiment != self.experiment or ev.arm is None:
            if self.pre_period:
                self.other[ev.request_id] = (ev.session_id, ev.user_id, ev.ts)
            return
        self.first_tagged = min(self.first_tagged, ev.ts)
        s = self.sessions.get(ev.session_id)
        if s is None:
            s = self.sessions[ev.session_id] = _Session(ev.arm, ev.user_id)
        s.requests += 1
        s.last_ts = ev.ts
        self.request_session[ev.request_id] = ev.session_id

    def _feedback(self, ev: FeedbackEvent) -> None:
        sid = self.request_session.get(ev.request_id)
        if sid is None:
            if ev.request_id in self.other:
                self.other_watch[ev.request_id] += sum(i.watch_time for i in ev.items)
            return
        s = self.sessions[sid]
        s.watch += sum(i.watch_time for i in ev.items)
        s.last_ts = ev.ts
        s.ended |= ev.session_end
        for item in ev.items:
            self.items[s.arm] += 1
            for task, value in item.signals.items():
                if value > 0:
                    self.positives[s.arm][task] += 1

    def per_user(self, timeout_s: float) -> tuple[dict[str, dict[str, list[float]]], int]:
        """arm -> user -> [watch, sessions, requests] of the counted sessions; fallback."""
        out: dict[str, dict[str, list[float]]] = defaultdict(dict)
        fallback = 0
        for s in self.sessions.values():
            if not (s.ended or s.last_ts < self.newest - timeout_s):
                continue
            if s.arm == DEFAULT_ARM:
                fallback += 1
                continue
            tot = out[s.arm].setdefault(s.user, [0.0, 0.0, 0.0])
            tot[0] += s.watch
            tot[1] += 1
            tot[2] += s.requests
        return out, fallback

    def before(self, cutoff: float) -> dict[str, tuple[float, int]]:
        """user -> (watch time, sessions) of their requests outside the experiment before
        ``cutoff``."""
        sessions: dict[str, set[str]] = defaultdict(set)
        watch: dict[str, float] = defaultdict(float)
        for rid, (sid, user, ts) in self.other.items():
            if ts < cutoff:
                sessions[user].add(sid)
                watch[user] += self.other_watch.get(rid, 0.0)
        return {user: (watch[user], len(sids)) for user, sids in sessions.items()}


def collect(
    events: Iterable[Any],
    experiment: str,
    session_timeout_s: float = 1800.0,
    *,
    pre_period: bool = False,
    started_at: float | None = None,
) -> SessionLog:
    """Per-arm user data of ``experiment`` from the session log (see the module docstring);
    with ``pre_period`` each user's watch time and sessions before ``min(started_at, first
    rank event of the experiment)`` as well."""
    c = _Collector(experiment, pre_period)
    for ev in events:
        c.add(ev)
    users, fallback = c.per_user(session_timeout_s)
    cutoff = min(started_at if started_at is not None else math.inf, c.first_tagged)
    before = c.before(cutoff) if pre_period and math.isfinite(cutoff) else {}
    arms = {}
    for arm, totals in users.items():
        arr = np.array(list(totals.values()), np.float64).reshape(-1, 3)
        data = ArmData(
            arr[:, 0], arr[:, 1], arr[:, 2], dict(c.positives.get(arm, {})), c.items.get(arm, 0)
        )
        if pre_period:
            pre = np.array([before.get(u, (0.0, 0)) for u in totals], np.float64).reshape(-1, 2)
            data.pre_watch, data.pre_sessions = pre[:, 0], pre[:, 1]
        arms[arm] = data
    return SessionLog(arms, fallback, cutoff if pre_period and math.isfinite(cutoff) else None)
