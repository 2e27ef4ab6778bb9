"""Session-log events in the Redis Stream (SPEC §6).

A stream entry has three fields: ``type`` (``rank`` | ``feedback`` | ``session_end``), ``v`` (the
schema version) and ``data``: a msgpack map whose arrays are raw little-endian float32 bytes.
Nothing here uses pickle; decoding validates every field and raises :class:`EventDecodeError`
on anything malformed, so a consumer can dead-letter the entry instead of crashing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from shared.api import MAX_ID_LENGTH

EVENT_SCHEMA_VERSION = b"1"
DEFAULT_STREAM = "xmtf:events"
EVENT_FIELDS = 3  # every stream entry has the fields type, v and data

RANK = "rank"
FEEDBACK = "feedback"
SESSION_END = "session_end"
EVENT_TYPES = (RANK, FEEDBACK, SESSION_END)

_F32 = np.dtype("<f4")


class EventDecodeError(ValueError):
    """A stream entry that does not follow the event schema."""


@dataclass(frozen=True)
class RankEvent:
    """What the scorer did for one ``/v1/rank`` request."""

    request_id: str
    session_id: str
    user_id: str
    ts: float
    model_version: str
    tasks: tuple[str, ...]
    state: np.ndarray  # (D,) float32, raw
    action: np.ndarray  # (K,) float32, applied (actor output + noise, clipped)
    noise: np.ndarray  # (K,) float32, the exploration noise that was added
    exploration_scale: float
    n_candidates: int
    sample_rate: float  # len(sampled_ids) / n_candidates
    sampled_ids: tuple[str, ...]
    predictions: np.ndarray  # (K, M) float32 raw predictions of the sampled candidates
    returned_ids: tuple[str, ...]
    # SPEC §13: the experiment and arm that served the request (absent outside experiments;
    # entries written before these fields existed decode with None)
    experiment: str | None = None
    arm: str | None = None

    type: str = field(default=RANK, init=False)


@dataclass(frozen=True)
class FeedbackItemEvent:
    item_id: str
    watch_time: float
    signals: Mapping[str, int]


@dataclass(frozen=True)
class FeedbackEvent:
    """What the user did with the items returned for one rank request."""

    request_id: str
    session_id: str
    user_id: str
    ts: float
    items: tuple[FeedbackItemEvent, ...]
    session_end: bool

    type: str = field(default=FEEDBACK, init=False)


@dataclass(frozen=True)
class SessionEndEvent:
    """The user left after ``request_id``."""

    request_id: str
    session_id: str
    user_id: str
    ts: float

    type: str = field(default=SESSION_END, init=False)


Event = RankEvent | FeedbackEvent | SessionEndEvent


def _f32_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=_F32).tobytes()


def encode(event: Event, packer: msgpack.Packer | None = None) -> dict[bytes, bytes]:
    """Stream entry fields for ``event``.

    A long-lived writer passes its own ``packer`` (``msgpack.Packer(use_bin_type=True)``, not
    shared between threads): ``msgpack.packb`` allocates a fresh 256 KiB buffer on every call.
    """
    common = {
        "request_id": event.request_id,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "ts": float(event.ts),
    }
    if isinstance(event, RankEvent):
        k, m = event.predictions.shape
        data: dict[str, Any] = {
            **common,
            "model_version": event.model_version,
            "tasks": event.tasks,  # tuples pack as msgpack arrays
            "state": _f32_bytes(event.state),
            "action": _f32_bytes(event.action),
            "noise": _f32_bytes(event.noise),
            "exploration_scale": float(event.exploration_scale),
            "n_candidates": int(event.n_candidates),
            "sample_rate": float(event.sample_rate),
            "sampled_ids": event.sampled_ids,
            "predictions": _f32_bytes(event.predictions),
            "predictions_shape": [int(k), int(m)],
            "returned_ids": event.returned_ids,
        }
        if event.experiment is not None:
            data["experiment"] = event.experiment
            data["arm"] = event.arm
    elif isinstance(event, FeedbackEvent):
        data = {
            **common,
            "items": [
                {
                    "item_id": i.item_id,
                    "watch_time": float(i.watch_time),
                    "signals": dict(i.signals),
                }
                for i in event.items
            ],
            "session_end": bool(event.session_end),
        }
    else:
        data = common
    return {
        b"type": event.type.encode(),
        b"v": EVENT_SCHEMA_VERSION,
        b"data": packer.pack(data) if packer else msgpack.packb(data, use_bin_type=True),
    }


# ----------------------------------------------------------------------------- decoding


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise EventDecodeError(f"missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise EventDecodeError(f"field {key!r} must be a number, got a boolean")
    if not isinstance(value, kind):
        raise EventDecodeError(f"field {key!r} has type {type(value).__name__}")
    return value


def _id(data: Mapping[str, Any], key: str) -> str:
    value = _get(data, key, str)
    if not 0 < len(value) <= MAX_ID_LENGTH:
        raise EventDecodeError(f"field {key!r} must be a non-empty id of <= {MAX_ID_LENGTH} chars")
    return str(value)


def _finite(data: Mapping[str, Any], key: str) -> float:
    value = float(_get(data, key, (int, float)))
    if not math.isfinite(value):
        raise EventDecodeError(f"field {key!r} is not finite")
    return value


def _f32_array(data: Mapping[str, Any], key: str, length: int) -> np.ndarray:
    raw = _get(data, key, bytes)
    if len(raw) != 4 * length:
        raise EventDecodeError(f"field {key!r} holds {len(raw)} bytes, expected {4 * length}")
    arr = np.frombuffer(raw, dtype=_F32).astype(np.float32)
    if not np.isfinite(arr).all():
        raise EventDecodeError(f"field {key!r} holds non-finite values")
    return arr


def _str_list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = _get(data, key, list)
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_ID_LENGTH for v in values):
        raise EventDecodeError(f"field {key!r} must be a list of ids")
    return tuple(values)


def _decode_rank(data: Mapping[str, Any], common: dict[str, Any]) -> RankEvent:
    tasks = _str_list(data, "tasks")
    shape = _get(data, "predictions_shape", list)
    if len(shape) != 2 or not all(isinstance(x, int) and x >= 0 for x in shape):
        raise EventDecodeError("field 'predictions_shape' must be [K, M]")
    k, m = shape
    if k != len(tasks):
        raise EventDecodeError("predictions_shape[0] does not match the number of tasks")
    state = _get(data, "state", bytes)
    if len(state) % 4 or not state:
        raise EventDecodeError("field 'state' must hold float32 values")
    sampled = _str_list(data, "sampled_ids")
    if len(sampled) != m:
        raise EventDecodeError("sampled_ids does not match predictions_shape[1]")
    n_candidates = _get(data, "n_candidates", int)
    if n_candidates < m or n_candidates < 1:
        raise EventDecodeError("n_candidates must be >= the number of sampled candidates")
    return RankEvent(
        **common,
        model_version=_id(data, "model_version"),
        tasks=tasks,
        state=_f32_array(data, "state", len(state) // 4),
        action=_f32_array(data, "action", k),
        noise=_f32_array(data, "noise", k),
        exploration_scale=_finite(data, "exploration_scale"),
        n_candidates=n_candidates,
        sample_rate=_finite(data, "sample_rate"),
        sampled_ids=sampled,
        predictions=_f32_array(data, "predictions", k * m).reshape(k, m),
        returned_ids=_str_list(data, "returned_ids"),
        experiment=_id(data, "experiment") if "experiment" in data else None,
        arm=_id(data, "arm") if "arm" in data else None,
    )


def _decode_feedback(data: Mapping[str, Any], common: dict[str, Any]) -> FeedbackEvent:
    items = []
    for raw in _get(data, "items", list):
        if not isinstance(raw, dict):
            raise EventDecodeError("feedback items must be maps")
        signals = _get(raw, "signals", dict)
        if not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in signals.items()
        ):
            raise EventDecodeError("feedback signals must map task names to integers")
        watch_time = _finite(raw, "watch_time")
        if watch_time < 0:
            raise EventDecodeError("watch_time must be >= 0")
        items.append(FeedbackItemEvent(_id(raw, "item_id"), watch_time, signals))
    return FeedbackEvent(
        **common, items=tuple(items), session_end=bool(_get(data, "session_end", bool))
    )


def decode(fields: Mapping[bytes, bytes]) -> Event:
    """Decode stream entry fields into an event, validating everything."""
    try:
        kind = fields[b"type"].decode()
        version = fields[b"v"]
        payload = fields[b"data"]
    except (KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise EventDecodeError(f"entry lacks type/v/data: {exc!r}") from exc
    if version != EVENT_SCHEMA_VERSION:
        raise EventDecodeError(f"unsupported event schema version {version!r}")
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=64 << 20)
    except Exception as exc:
        raise EventDecodeError(f"data is not valid msgpack: {exc!r}") from exc
    if not isinstance(data, dict):
        raise EventDecodeError("data must be a map")
    common: dict[str, Any] = {
        "request_id": _id(data, "request_id"),
        "session_id": _id(data, "session_id"),
        "user_id": _id(data, "user_id"),
        "ts": _finite(data, "ts"),
    }
    if kind == RANK:
        return _decode_rank(data, common)
    if kind == FEEDBACK:
        return _decode_feedback(data, common)
    if kind == SESSION_END:
        return SessionEndEvent(**common)
    raise EventDecodeError(f"unknown event type {kind!r}")
