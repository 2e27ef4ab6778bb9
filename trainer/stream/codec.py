"""The transition wire format of the durable replay stream (``<stream>:transitions``):
msgpack with raw float32 bytes, strictly checked on decode; never pickle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
import numpy as np


@dataclass(frozen=True)
class Transition:
    request_id: str
    state: np.ndarray
    action: np.ndarray
    reward: float
    next_state: np.ndarray
    done: bool
    predictions: np.ndarray  # (K, M)
    entry_ids: tuple[str, ...]  # stream entries to acknowledge once stored


def encode_transition(t: Transition) -> dict[bytes, bytes]:
    """A transition as a stream entry (msgpack + raw float32 bytes; no pickle)."""
    k, m = t.predictions.shape
    data = {
        "request_id": t.request_id,
        "state": np.ascontiguousarray(t.state, np.float32).tobytes(),
        "action": np.ascontiguousarray(t.action, np.float32).tobytes(),
        "reward": float(t.reward),
        "next_state": np.ascontiguousarray(t.next_state, np.float32).tobytes(),
        "done": bool(t.done),
        "predictions": np.ascontiguousarray(t.predictions, np.float32).tobytes(),
        "shape": [int(k), int(m)],
    }
    return {b"v": b"1", b"data": msgpack.packb(data, use_bin_type=True)}


def decode_transition(fields: Mapping[bytes, bytes]) -> Transition:
    """Inverse of :func:`encode_transition`; raises ValueError on anything malformed."""
    try:
        data = msgpack.unpackb(fields[b"data"], raw=False)
        k, m = data["shape"]
        state = np.frombuffer(data["state"], np.float32)
        return Transition(
            request_id=str(data["request_id"]),
            state=state,
            action=np.frombuffer(data["action"], np.float32).reshape(k),
            reward=float(data["reward"]),
            next_state=np.frombuffer(data["next_state"], np.float32).reshape(state.shape),
            done=bool(data["done"]),
            predictions=np.frombuffer(data["predictions"], np.float32).reshape(k, m),
            entry_ids=(),
        )
    except (KeyError, TypeError, ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise ValueError(f"malformed transition entry: {exc!r}") from exc
