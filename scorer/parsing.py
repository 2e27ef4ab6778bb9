"""Columnar fast path for ``/v1/rank`` bodies: JSON bytes -> float32 arrays, with the SPEC's 4xx.

Each check names the offending field. Predictions go straight from JSON lists into one (K, N)
float32 array in the served model's task order; no per-candidate objects are built.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from scorer.errors import InputError
from shared.api import MAX_ID_LENGTH

_ALLOWED_KEYS = frozenset(
    {"request_id", "session_id", "user_id", "user_state", "item_ids", "predictions", "top_n"}
)


@dataclass(frozen=True)
class Limits:
    max_candidates: int
    max_top_n: int


@dataclass(frozen=True)
class RankInput:
    request_id: str
    session_id: str
    user_id: str
    state: np.ndarray  # (1, D) float32
    item_ids: list[str]
    predictions: np.ndarray  # (K, N) float32, served task order
    top_n: int


def load_json(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity literals and numbers beyond float range are rejected."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"body is not valid JSON: {exc}", None, code="invalid_json") from exc


def _id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise InputError(f"must be a non-empty string of at most {MAX_ID_LENGTH} characters", field)
    return value


def _numbers(value: Any, field: str, length: int | None, maybe_bools: bool = True) -> np.ndarray:
    """A JSON list of finite numbers -> float32 (1-D).

    numpy silently turns ``true``/``false`` mixed with numbers into 1/0, so booleans are looked
    for explicitly, but only when the body holds a ``true``/``false`` token (``maybe_bools``).
    """
    if not isinstance(value, list):
        raise InputError("must be an array of numbers", field)
    if length is not None and len(value) != length:
        raise InputError(f"must have length {length}, got {len(value)}", field)
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError("must be an array of numbers", field) from exc
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        if arr.size == 0 and arr.ndim == 1:
            return arr.astype(np.float32)
        raise InputError("must be an array of numbers", field)
    if maybe_bools and bool in set(map(type, value)):
        raise InputError("must be an array of numbers", field)
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError("every number must be finite (and within float32 range)", field)
    return out


def parse_rank(
    body: bytes, task_names: tuple[str, ...], state_dim: int, limits: Limits
) -> RankInput:
    """Validate a rank body against the served model and the configured limits."""
    data = load_json(body)
    maybe_bools = b"true" in body or b"false" in body
    if not isinstance(data, dict):
        raise InputError("body must be a JSON object", None)
    unknown = data.keys() - _ALLOWED_KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise InputError(f"unknown field {name!r}", name)

    request_id = data.get("request_id")
    request_id = uuid.uuid4().hex if request_id is None else _id(request_id, "request_id")
    session_id = _id(data.get("session_id"), "session_id")
    user_id = _id(data.get("user_id"), "user_id")

    item_ids = data.get("item_ids")
    if not isinstance(item_ids, list):
        raise InputError("must be an array of ids", "item_ids")
    n = len(item_ids)
    if n == 0:
        raise InputError("at least one candidate is required", "item_ids")
    if n > limits.max_candidates:
        raise InputError(
            f"{n} candidates exceed the limit of {limits.max_candidates}",
            "item_ids",
            status=413,
            code="too_many_candidates",
        )
    for i, item in enumerate(item_ids):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ID_LENGTH:
            _id(item, f"item_ids[{i}]")
    if len(set(item_ids)) != n:
        seen: set[str] = set()
        dup = next(x for x in item_ids if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise InputError(f"duplicate item id {dup!r}", "item_ids")

    state = _numbers(data.get("user_state"), "user_state", state_dim, maybe_bools)

    preds = data.get("predictions")
    if not isinstance(preds, dict):
        raise InputError("must be an object mapping task names to arrays", "predictions")
    extra = preds.keys() - set(task_names)
    if extra:
        name = sorted(extra)[0]
        raise InputError(f"unknown task {name!r} for the served model", f"predictions.{name}")
    matrix = np.empty((len(task_names), n), np.float32)
    for k, name in enumerate(task_names):
        if name not in preds:
            raise InputError(f"missing task {name!r}", f"predictions.{name}")
        matrix[k] = _numbers(preds[name], f"predictions.{name}", n, maybe_bools)

    top_n = data.get("top_n")
    if not isinstance(top_n, int) or isinstance(top_n, bool):
        raise InputError("must be an integer", "top_n")
    if not 1 <= top_n <= limits.max_top_n:
        raise InputError(f"must be between 1 and {limits.max_top_n}", "top_n")

    return RankInput(request_id, session_id, user_id, state[None, :], item_ids, matrix, top_n)
