"""Session log writer: a bounded in-process buffer flushed to a Redis Stream in the background.

The request path only appends to a deque (no I/O, no serialisation). Routes that log encode
what they appended *after their response is on the wire* (:meth:`EventLogger.encode_pending`
as the response's background step): each event becomes one ready-to-send ``XADD ... MAXLEN ~``
command (RESP bytes). A background task writes the commands in batches: one write on a pooled
redis-py connection, then the replies, all under one timeout. No retries; after a failure a
circuit breaker waits (exponential backoff up to ``backoff_max``) before the next attempt, while
the buffer keeps filling up to its bound; past the bound the oldest events are dropped and
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared.events import EVENT_FIELDS, Event, RankEvent, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingRank:
    """What the request path hands to the logger; sampled and encoded off the request path."""

    request_id: str
    session_id: str
    user_id: str
    ts: float
    model_version: str
    tasks: tuple[str, ...]
    state: np.ndarray
    action: np.ndarray
    noise: np.ndarray
    exploration_scale: float
    item_ids: list[str]
    predictions: np.ndarray  # (K, N)
    returned_ids: list[str]

    def to_event(self, max_candidates: int, rng: np.random.Generator) -> RankEvent:
        n = len(self.item_ids)
        if n > max_candidates:  # uniform sample without replacement, in input order
            keep = np.sort(rng.permutation(n)[:max_candidates])
            picked = operator.itemgetter(*keep.tolist())(self.item_ids)
            ids = picked if max_candidates > 1 else (picked,)
            preds = self.predictions.take(keep, axis=1)
        else:
            ids, preds = tuple(self.item_ids), self.predictions
        return RankEvent(
            request_id=self.request_id,
            session_id=self.session_id,
            user_id=self.user_id,
            ts=self.ts,
            model_version=self.model_version,
            tasks=self.tasks,
            state=self.state.reshape(-1),
            action=self.action,
            noise=self.noise,
            exploration_scale=self.exploration_scale,
            n_candidates=n,
            sample_rate=len(ids) / n,
            sampled_ids=ids,
            predictions=preds,
            returned_ids=tuple(self.returned_ids),
        )


Item = Event | PendingRank


def xadd_prefix(stream: bytes, maxlen: bytes, n_fields: int) -> bytes:
    """The RESP head of ``XADD stream MAXLEN ~ maxlen * <n_fields field-value pairs>``."""
    parts = (b"XADD", stream, b"MAXLEN", b"~", maxlen, b"*")
    head = b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    return b"*%d\r\n" % (len(parts) + 2 * n_fields) + head


def pack_xadd(prefix: bytes, fields: dict[bytes, bytes]) -> bytes:
    """One RESP ``XADD`` command: ``prefix`` (:func:`xadd_prefix`) and the field-value pairs."""
    out = [prefix]
    for key, value in fields.items():
        out += (b"$%d\r\n" % len(key), key, b"\r\n$%d\r\n" % len(value), value, b"\r\n")
    return b"".join(out)


class EventLogger:
    """Bounded, non-blocking event log to one Redis Stream.

    Two FIFO queues make up the buffer: ``pending`` (events as handed over by the request path)
    and ``ready`` (their packed ``XADD`` commands, in the same order). Events always move from
    the front of ``pending`` to the back of ``ready``, so the stream keeps the order of
    :meth:`emit` calls whoever does the encoding.
    """

    def __init__(
        self,
        redis_url: str,
        stream: str,
        *,
        maxlen: int = 1_000_000,
        buffer_size: int = 100_000,
        batch_size: int = 50,
        flush_interval: float = 0.02,
        timeout: float = 0.25,
        backoff_max: float = 5.0,
        log_max_candidates: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.maxlen = maxlen
        self.pending: deque[Item] = deque()
        self.ready: deque[bytes] = deque()
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.backoff_max = backoff_max
        self.log_max_candidates = log_max_candidates
        self.clock = clock
        self.redis = Redis.from_url(
            redis_url,
            # no per-call socket timeout: redis-py would wrap every write in a task; _write puts
            # one deadline around the whole batch instead
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.logged = 0
        self.dropped = 0
        self.redis_errors = 0
        self.encode_errors = 0
        self.connected = False
        self.last_error: str | None = None
        self._xadd = xadd_prefix(stream.encode(), str(maxlen).encode(), EVENT_FIELDS)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._backoff = 0.0
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = np.random.default_rng()

    @property
    def buffered(self) -> int:
        return len(self.pending) + len(self.ready)

    # ------------------------------------------------------------------ request path

    def emit(self, item: Item) -> None:
        """Queue an event; never blocks. Drops (and counts) the oldest when the buffer is full."""
        if self.buffered >= self.buffer_size:
            (self.ready or self.pending).popleft()
            self.dropped += 1
        self.pending.append(item)
        if self.buffered >= self.batch_size:
            self._wake.set()

    async def encode_pending(self) -> None:
        """Encode the queued events into ``ready``, oldest first (a route's background step)."""
        pending, ready = self.pending, self.ready
        while pending:
            item = pending.popleft()
            try:
                ready.append(self._pack(item))
            except Exception:  # an event that cannot be encoded is lost, never the server
                self.encode_errors += 1
                self.dropped += 1
                log.exception("event log: cannot encode a %s event", type(item).__name__)

    def _pack(self, item: Item) -> bytes:
        event = (
            item.to_event(self.log_max_candidates, self._rng)
            if isinstance(item, PendingRank)
            else item
        )
        return pack_xadd(self._xadd, encode(event, self._packer))

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="xmtf-event-logger")

    async def stop(self, drain_timeout: float = 2.0) -> None:
        """Try to flush what is buffered (bounded by ``drain_timeout``), then stop.

        The background task is told to stop by a flag as well as cancelled: redis-py can swallow
        a cancellation that lands during a write (the write completes instead), and a loop that
        relied on the cancellation alone would then run on, and ``stop`` would never return.
        """
        self._stopping = True
        self._wake.set()
        deadline = self.clock() + drain_timeout
        while self.buffered and self.clock() < deadline and self.clock() >= self._retry_at:
            if not await self.flush_once():
                break
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    self.flush_interval
                ):  # no task per wait, unlike wait_for
                    await self._wake.wait()
            self._wake.clear()
            wait = self._retry_at - self.clock()
            if wait > 0:  # circuit open: do not touch Redis until the backoff has passed
                await asyncio.sleep(wait)
            while not self._stopping and await self.flush_once() and self.ready:
                pass  # a full batch went out and more is ready

    async def flush_once(self) -> bool:
        """Write up to one batch; True on success (or nothing to do)."""
        await self.encode_pending()  # normally done already, after each response
        batch = [self.ready.popleft() for _ in range(min(self.batch_size, len(self.ready)))]
        if not batch:
            return True
        try:
            await self._write(batch)
        except Exception as exc:  # any Redis/network failure: keep the events, open the breaker
            self._requeue(batch)
            self.redis_errors += 1
            self.connected = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._backoff = min(self.backoff_max, max(0.05, self._backoff * 2))
            self._retry_at = self.clock() + self._backoff
            log.warning(
                "event log: Redis write failed (%s); retry in %.2fs", self.last_error, self._backoff
            )
            return False
        self.logged += len(batch)
        if not self.connected:
            log.info("event log: connected to Redis")
        self.connected = True
        self._backoff = 0.0
        self._retry_at = 0.0
        return True

    async def _write(self, commands: list[bytes]) -> None:
        """Pipeline ``commands`` on one pooled connection; raise if any of them failed.

        One timeout covers the write and every reply (a timeout per reply costs more than
        reading the reply); on any failure the connection is dropped, so that it never goes
        back to the pool with replies still unread. An error reply raises ``ResponseError``.
        """
        pool = self.redis.connection_pool
        async with asyncio.timeout(self.timeout):
            conn = await pool.get_connection()  # may connect (and say hello): inside the deadline
            try:
                await conn.send_packed_command(commands, check_health=False)
                for _ in commands:
                    await conn.read_response(timeout=math.inf)
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            finally:
                await pool.release(conn)

    def _requeue(self, batch: list[bytes]) -> None:
        room = self.buffer_size - self.buffered
        keep = batch[-room:] if room > 0 else []
        self.dropped += len(batch) - len(keep)
        self.ready.extendleft(reversed(keep))

    def state(self) -> dict[str, object]:
        return {
            "enabled": True,
            "connected": self.connected,
            "buffered": self.buffered,
            "logged": self.logged,
            "dropped": self.dropped,
            "redis_errors": self.redis_errors,
            "last_error": self.last_error,
        }
