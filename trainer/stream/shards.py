"""Consuming several event shards in one trainer, and one publisher at a time (SPEC §14).

:class:`ShardedStreamTrainer` is :class:`~trainer.stream.consume.StreamTrainer` over the shard
streams ``<stream>:{i}`` it was given (``xmtf-train consume --shards 0-3``, default all): one
model, one learner, one consumer group per job on every shard, one session joiner per shard
(a session lives in one shard). It visits its shards in turn; while it works on a shard, its
``config`` is that shard's, so every key it touches (the stream, ``:transitions``, ``:trained``,
``:dead``) carries the shard's hash tag and each MULTI/EXEC stays in one cluster slot.

Publishing takes :class:`PublishLock`, a Redis key (``<stream>:publish-lock``) set with
``SET NX PX`` to a token of this process for a lease, deleted by a compare-and-delete script when
the export is done (a lease that ran out is never deleted by its former holder). Several
trainers that split the shards therefore never write ``CURRENT`` or ``EXPERIMENT.json`` at the
same time; an export that finds the lock held waits for it (at most ``lock_wait_s``), else is
skipped and logged (the next export publishes the model, which kept training).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from shared.sharding import shard_stream
from trainer.export import ExportResult
from trainer.stream.consume import ConsumeConfig, StreamTrainer
from trainer.stream.joiner import SessionJoiner

log = logging.getLogger(__name__)

_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class PublishLock:
    """A lease on a Redis key: at most one holder at a time (see the module docstring)."""

    def __init__(self, client: Any, key: str, lease_s: float = 600.0) -> None:
        self.client, self.key, self.lease_ms = client, key, int(lease_s * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.1) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            if self.client.set(self.key, self.token, nx=True, px=self.lease_ms):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def release(self) -> bool:
        return bool(self.client.eval(_RELEASE, 1, self.key, self.token))

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value


class ShardedStreamTrainer(StreamTrainer):
    """A :class:`StreamTrainer` over several shard streams (see the module docstring)."""

    def __init__(
        self,
        model_dir: Path,
        config: ConsumeConfig,
        client: Any,
        shards: list[int],
        n_shards: int,
        started: float | None = None,
        lock_wait_s: float = 300.0,
    ) -> None:
        super().__init__(model_dir, config, client, started)
        block = max(10, config.block_ms // max(1, len(shards)))
        self.shards = list(shards)
        self.shard_configs = [
            dataclasses.replace(
                config, stream=shard_stream(config.stream, s, n_shards), block_ms=block
            )
            for s in shards
        ]
        self.joiners = [self.joiner] + [SessionJoiner(config.reward) for _ in shards[1:]]
        self.lock = PublishLock(self.redis, f"{config.stream}:publish-lock")
        self.lock_wait_s = lock_wait_s
        self.skipped_exports = 0
        self._use(0)

    def _use(self, i: int) -> None:
        self.config, self.joiner = self.shard_configs[i], self.joiners[i]

    def export(self) -> ExportResult | None:
        if not self.lock.acquire(self.lock_wait_s):
            self.skipped_exports += 1
            log.warning("publish lock held by %s; export skipped", self.lock.holder())
            return None
        try:
            return super().export()
        finally:
            self.lock.release()

    def _prepare(self) -> None:
        restored = 0
        for i in range(len(self.shards)):
            self._use(i)
            super()._prepare()
            restored += self.stats.restored
        self.stats.restored = min(restored, self.config.replay_capacity)

    def _recover(self) -> None:
        for i in range(len(self.shards)):
            self._use(i)
            super()._recover()

    def _ingest_round(self) -> int:
        """One read of every shard in turn, each processed (empty ones too)."""
        got = 0
        for i in range(len(self.shards)):
            self._use(i)
            entries = self._read()
            got += len(entries)
            self._process(entries)
        return got
