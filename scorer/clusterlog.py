"""The session log writer on a Redis Cluster (SPEC §14): :class:`ClusterEventLogger`.

Same buffer, background step and writer thread as :class:`scorer.eventlog.EventLogger` (the
request path only appends to a deque; bounded buffer, oldest dropped and counted); what changes
is the write. Each ready command carries its shard; a batch is split by the cluster node that
owns the shard's slot and sent as one pipeline per node, on one connection per node, replies
read one by one. A command whose reply is an error (``MOVED`` after a failover, ``CLUSTERDOWN``)
or whose node cannot be reached goes back to the front of the buffer, in order; the commands
that succeeded are not sent again. After any failure the topology is re-read (once, before the
next attempt) and the circuit breaker waits (50 ms doubling to ``backoff_max``) before the next
batch: no retries inside a write, no retry storm while a master is being replaced. The cluster
client is built in the writer thread on first use, so a cluster that is down at start-up is
just a failed first write.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ResponseError
from redis.retry import Retry

from scorer.eventlog import EventLogger, Item, PendingRank, pack_xadd
from shared.events import encode
from shared.sharding import shard_of, shard_stream

log = logging.getLogger(__name__)


class ClusterEventLogger(EventLogger):
    """Bounded, non-blocking event log to ``shards`` streams on a Redis Cluster."""

    def __init__(self, redis_url: str, stream: str, **kwargs: Any) -> None:
        super().__init__(redis_url, stream, **kwargs)
        self.url = redis_url
        self.cluster: RedisCluster | None = None
        self._slots = [
            key_slot(shard_stream(stream, i, self.shards).encode()) for i in range(self.shards)
        ]
        self._conns: dict[str, Connection] = {}
        self._stale = True  # re-read the topology before the next write

    def _pack(self, item: Item) -> Any:  # (shard, command): the writer needs the shard
        event = (
            item.to_event(self.log_max_candidates, self._rng)
            if isinstance(item, PendingRank)
            else item
        )
        shard = shard_of(event.user_id, self.shards)
        return (shard, pack_xadd(self._xadds[shard], encode(event, self._packer)))

    # ------------------------------------------------------------------ writer thread

    def _topology(self) -> RedisCluster:
        if self.cluster is None:
            self.cluster = RedisCluster.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        elif self._stale:
            self.cluster.nodes_manager.initialize()
        self._stale = False
        return self.cluster

    def _conn(self, node: Any) -> Connection:
        conn = self._conns.get(node.name)
        if conn is None:
            conn = self._conns[node.name] = Connection(
                host=node.host,
                port=node.port,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return conn

    def _write_batch(self, _conn: Any) -> bool:
        with self._lock:
            batch = [self.ready.popleft() for _ in range(min(self.batch_size, len(self.ready)))]
            self._in_flight = len(batch)
        failed: list[Any] = []
        written = 0
        error: str | None = None
        try:
            cluster = self._topology()
            groups: dict[str, tuple[Any, list[Any]]] = {}
            for item in batch:
                node = cluster.nodes_manager.get_node_from_slot(self._slots[item[0]])
                groups.setdefault(node.name, (node, []))[1].append(item)
        except Exception as exc:  # no topology: nothing was sent
            groups, failed, error = {}, list(batch), f"{type(exc).__name__}: {exc}"
        for node, items in groups.values():
            conn = self._conn(node)
            done = 0
            try:
                conn.send_packed_command([cmd for _, cmd in items], check_health=False)
                for item in items:
                    try:
                        conn.read_response()
                        written += 1
                    except ResponseError as exc:  # MOVED, CLUSTERDOWN, ...: this one failed
                        failed.append(item)
                        error = f"{type(exc).__name__}: {exc}"
                    done += 1
            except Exception as exc:  # the node is unreachable: the rest of its items failed
                conn.disconnect()
                self._conns.pop(node.name, None)
                failed.extend(items[done:])
                error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.logged += written
        if error is None:
            with self._lock:
                self._in_flight = 0
            if not self.connected:
                log.info("event log: connected to the Redis Cluster")
            self.connected = True
            self._backoff = 0.0
            return True
        order = {id(item): i for i, item in enumerate(batch)}
        self._requeue(sorted(failed, key=lambda it: order[id(it)]))
        self._stale = True
        self.redis_errors += 1
        self.connected = False
        self.last_error = error
        self._backoff = min(self.backoff_max, max(0.05, self._backoff * 2))
        log.warning(
            "event log: %d of %d cluster writes failed (%s); retry in %.2fs",
            len(failed),
            len(batch),
            error,
            self._backoff,
        )
        return False

    async def stop(self, drain_timeout: float = 2.0) -> None:
        await super().stop(drain_timeout)
        for conn in list(self._conns.values()):
            conn.disconnect()
        if self.cluster is not None:
            self.cluster.close()
