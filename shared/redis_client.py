"""A Redis client from settings: one server, or a Redis Cluster through its seed node (SPEC §14).

``redis`` is imported here, not at module level of ``shared``: only the scorer and the trainer
(which both depend on redis-py) call this.
"""

from __future__ import annotations

from typing import Any


def make_client(url: str, cluster: bool = False, **kwargs: Any) -> Any:
    """``redis.Redis`` for ``url``, or with ``cluster`` a ``redis.RedisCluster`` that discovers
    the cluster from the seed node in ``url`` (the database number must be 0 on a cluster)."""
    import redis

    if not cluster:
        return redis.Redis.from_url(url, **kwargs)
    from redis.cluster import RedisCluster

    kwargs.pop("health_check_interval", None)
    return RedisCluster.from_url(url, **kwargs)
