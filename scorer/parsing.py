"""Columnar fast path for ``/v1/rank`` bodies: JSON bytes -> float32 arrays, with the SPEC's 4xx.

Two parsers, one behaviour. :func:`parse_rank` first decodes the body with msgspec into a typed
struct: types, string lengths, unknown fields, booleans posing as numbers and numbers beyond
float64 are all checked in C while decoding. Whatever that decoder refuses, and every check
after it that fails, hands the body to :func:`parse_rank_checked`, the reference parser, which
raises the SPEC error naming the first offending field. So the fast path decides only *that* a
body is valid; *why* one is not always comes from the reference. Predictions go straight from
JSON lists into one (K, N) float32 array in the served model's task order; no per-candidate
objects are built.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
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


def _has_bools(arr: np.ndarray, values: list[Any]) -> bool:
    """Whether ``values`` (converted to ``arr``) held JSON ``true``/``false``.

    numpy silently turns booleans mixed with numbers into 1/0, so the (slow) per-element type
    check only runs when the array holds an exact 0 or 1; real predictions rarely do.
    """
    if not ((arr == 0) | (arr == 1)).any():
        return False
    return bool in set(map(type, values))


def _numbers(value: Any, field: str, length: int | None) -> np.ndarray:
    """A JSON list of finite numbers -> float32 (1-D)."""
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
    if _has_bools(arr, value):
        raise InputError("must be an array of numbers", field)
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError("every number must be finite (and within float32 range)", field)
    return out


def _item_ids_ok(item_ids: list[Any]) -> bool:
    """Fast check: unique non-empty strings of at most MAX_ID_LENGTH characters.

    ``set`` refuses unhashable JSON values (lists, objects) and ``len`` the other non-strings,
    so both raising TypeError means "not all strings".
    """
    try:
        unique = set(item_ids)
        longest = max(map(len, item_ids))
    except TypeError:
        return False
    return len(unique) == len(item_ids) and "" not in unique and longest <= MAX_ID_LENGTH


def _check_item_ids(item_ids: list[Any]) -> None:
    """The exact checks, in input order; raises the first error found."""
    for i, item in enumerate(item_ids):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ID_LENGTH:
            _id(item, f"item_ids[{i}]")
    seen: set[str] = set()
    dup = next((x for x in item_ids if x in seen or seen.add(x)), None)  # type: ignore[func-returns-value]
    if dup is not None:
        raise InputError(f"duplicate item id {dup!r}", "item_ids")


def _prediction_matrix(preds: dict[str, Any], task_names: tuple[str, ...], n: int) -> np.ndarray:
    """The (K, N) float32 matrix in served task order, from one ``np.array`` over all columns.

    Any doubt (missing task, wrong type or length, non-number, boolean, non-finite) falls back to
    the column-by-column checks, which raise the SPEC error naming the first offending field.
    """
    rows = [preds.get(name) for name in task_names]
    if all(type(r) is list and len(r) == n for r in rows):
        try:
            arr = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            arr = None
        if arr is not None and arr.shape == (len(task_names), n) and arr.dtype.kind in "iuf":
            with np.errstate(over="ignore"):
                matrix = arr.astype(np.float32)
            if np.isfinite(matrix).all():
                # booleans became exact 0/1: only rows holding such a value need a type check
                suspects = np.flatnonzero(((arr == 0) | (arr == 1)).any(axis=1))
                if not any(bool in set(map(type, rows[k])) for k in suspects):  # type: ignore[arg-type]
                    return matrix
    matrix = np.empty((len(task_names), n), np.float32)
    for k, name in enumerate(task_names):
        if name not in preds:
            raise InputError(f"missing task {name!r}", f"predictions.{name}")
        matrix[k] = _numbers(preds[name], f"predictions.{name}", n)
    return matrix


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class _RankBody(msgspec.Struct, forbid_unknown_fields=True):
    """The shape of a valid rank body (``shared.api.RankRequest``), for msgspec's decoder."""

    session_id: _Id
    user_id: _Id
    user_state: list[float]
    item_ids: list[_Id]
    predictions: dict[str, list[float]]
    top_n: int
    request_id: _Id | None = None


_decode_rank = msgspec.json.Decoder(_RankBody).decode


def parse_rank(
    body: bytes, task_names: tuple[str, ...], state_dim: int, limits: Limits
) -> RankInput:
    """Validate a rank body against the served model and the configured limits.

    Raises :class:`InputError` (from the reference parser) for anything invalid.
    """
    try:
        req = _decode_rank(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return parse_rank_checked(body, task_names, state_dim, limits)
    n = len(req.item_ids)
    preds = req.predictions
    if not (
        0 < n <= limits.max_candidates
        and 1 <= req.top_n <= limits.max_top_n
        and len(req.user_state) == state_dim
        and len(preds) == len(task_names)
        and all(len(preds.get(t, ())) == n for t in task_names)
        and len(set(req.item_ids)) == n
    ):
        return parse_rank_checked(body, task_names, state_dim, limits)
    # msgspec let only numbers through, so the conversion cannot parse strings or take booleans
    with np.errstate(over="ignore"):
        state = np.array(req.user_state, np.float32)
        matrix = np.array([preds[t] for t in task_names], np.float32)
    if not (np.isfinite(matrix).all() and np.isfinite(state).all()):  # beyond float32 range
        return parse_rank_checked(body, task_names, state_dim, limits)
    request_id = uuid.uuid4().hex if req.request_id is None else req.request_id
    return RankInput(
        request_id, req.session_id, req.user_id, state[None, :], req.item_ids, matrix, req.top_n
    )


def parse_rank_checked(
    body: bytes, task_names: tuple[str, ...], state_dim: int, limits: Limits
) -> RankInput:
    """The reference parser: every check in order, raising the SPEC error for the first failure."""
    data = load_json(body)
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
    if not _item_ids_ok(item_ids):
        _check_item_ids(item_ids)  # raises the first error in input order

    state = _numbers(data.get("user_state"), "user_state", state_dim)

    preds = data.get("predictions")
    if not isinstance(preds, dict):
        raise InputError("must be an object mapping task names to arrays", "predictions")
    extra = preds.keys() - set(task_names)
    if extra:
        name = sorted(extra)[0]
        raise InputError(f"unknown task {name!r} for the served model", f"predictions.{name}")
    matrix = _prediction_matrix(preds, task_names, n)

    top_n = data.get("top_n")
    if not isinstance(top_n, int) or isinstance(top_n, bool):
        raise InputError("must be an integer", "top_n")
    if not 1 <= top_n <= limits.max_top_n:
        raise InputError(f"must be between 1 and {limits.max_top_n}", "top_n")

    return RankInput(request_id, session_id, user_id, state[None, :], item_ids, matrix, top_n)
