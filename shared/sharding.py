"""Event shards (SPEC §14): which stream a user's events go to, and the keys derived from it.

``XMTF_EVENT_SHARDS = S`` spreads events over ``<stream>:{<shard>}`` by a stable hash of
``user_id`` (BLAKE2b, the same in every scorer process, replica and restart; never Python's
salted ``hash``). With S = 1 the key is ``<stream>`` unchanged (SPEC §6). The braces are a Redis
Cluster hash tag: a shard's derived keys (``<stream>:{<shard>}:transitions``, ``:trained``,
``:dead``) hash to the same slot as its stream, so the consumer's MULTI/EXEC over them is legal
on a cluster. A session belongs to one user, so it never spans shards and joins stay local.
"""

from __future__ import annotations

import hashlib

DERIVED_SUFFIXES = (":transitions", ":trained", ":dead")


def shard_of(user_id: str, shards: int) -> int:
    """The shard of ``user_id`` among ``shards`` (0 when there is one)."""
    if shards <= 1:
        return 0
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, person=b"xmtf-shard").digest()
    return int.from_bytes(digest, "big") % shards


def shard_key(stream: str, shard: int) -> str:
    """The key of shard stream ``shard``: ``<stream>:{shard}`` (a Redis Cluster hash tag)."""
    return f"{stream}:{{{shard}}}"


def shard_stream(stream: str, shard: int, shards: int) -> str:
    """The stream key of ``shard``: ``<stream>`` when ``shards`` is 1, else ``<stream>:{shard}``."""
    if not 0 <= shard < max(shards, 1):
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return stream if shards <= 1 else shard_key(stream, shard)


def shard_streams(stream: str, shards: int) -> list[str]:
    return [shard_stream(stream, s, shards) for s in range(max(shards, 1))]


def parse_shards(text: str | None, shards: int) -> list[int]:
    """``--shards``: ``all`` (or empty), ``2``, ``0-3``, ``0,2,5-7`` -> sorted shard numbers."""
    if text is None or text.strip() in ("", "all"):
        return list(range(max(shards, 1)))
    picked: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ValueError(f"bad shard list {text!r} (use all, 3, 0-3 or 0,2,5-7)") from None
        if first > last or first < 0 or last >= max(shards, 1):
            raise ValueError(f"shards {part.strip()!r} outside 0-{max(shards, 1) - 1}")
        picked.update(range(first, last + 1))
    return sorted(picked)
