"""``scorer.parsing.parse_rank``: every invalid input class and the columnar happy path."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest

from scorer import parsing
from scorer.errors import InputError
from scorer.parsing import Limits, parse_rank, parse_rank_checked

TASKS = ("click", "like", "skip")
STATE_DIM = 5
LIMITS = Limits(max_candidates=50, max_top_n=100)


def body(n: int = 4, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "request_id": "r-1",
        "session_id": "s-1",
        "user_id": "u-1",
        "user_state": [0.1, 0.2, 0.3, 0.4, 0.5],
        "item_ids": [f"i{j}" for j in range(n)],
        "predictions": {
            t: [round(0.1 * (k + 1) + 0.01 * j, 3) for j in range(n)] for k, t in enumerate(TASKS)
        },
        "top_n": 2,
    }
    data.update(overrides)
    return data


def parse(data: Any, limits: Limits = LIMITS) -> Any:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return parse_rank(raw, TASKS, STATE_DIM, limits)


def rejected(data: Any, limits: Limits = LIMITS) -> InputError:
    with pytest.raises(InputError) as info:
        parse(data, limits)
    return info.value


# ----------------------------------------------------------------------------- happy path


def test_happy_path_shapes_and_dtypes() -> None:
    req = parse(body(4))
    assert req.request_id == "r-1" and req.session_id == "s-1" and req.user_id == "u-1"
    assert req.state.shape == (1, STATE_DIM) and req.state.dtype == np.float32
    assert req.predictions.shape == (3, 4) and req.predictions.dtype == np.float32
    assert req.item_ids == ["i0", "i1", "i2", "i3"]
    assert req.top_n == 2
    np.testing.assert_array_equal(req.state[0], np.asarray([0.1, 0.2, 0.3, 0.4, 0.5], np.float32))


def test_predictions_follow_the_served_task_order_not_the_json_key_order() -> None:
    preds = {
        "skip": [0.9, 0.8, 0.7],
        "click": [0.1, 0.2, 0.3],
        "like": [0.4, 0.5, 0.6],
    }
    raw = orjson.dumps(body(3, predictions=preds))
    assert raw.index(b'"skip"') < raw.index(b'"click"')
    req = parse_rank(raw, TASKS, STATE_DIM, LIMITS)
    np.testing.assert_array_equal(
        req.predictions,
        np.asarray([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.9, 0.8, 0.7]], np.float32),
    )
    # the same body against a model that serves the tasks in another order
    other = parse_rank(raw, ("skip", "like", "click"), STATE_DIM, LIMITS)
    np.testing.assert_array_equal(other.predictions, req.predictions[::-1])


def test_integers_are_numbers() -> None:
    req = parse(body(2, user_state=[0, 1, 2, 3, 4], predictions={t: [0, 1] for t in TASKS}))
    assert req.state.dtype == np.float32 and req.predictions.dtype == np.float32
    np.testing.assert_array_equal(req.predictions, np.asarray([[0, 1]] * 3, np.float32))


def test_request_id_is_generated_when_absent() -> None:
    data = body()
    del data["request_id"]
    a, b = parse(data), parse(data)
    assert len(a.request_id) == 32 and int(a.request_id, 16) >= 0
    assert a.request_id != b.request_id
    assert parse(body(request_id=None)).request_id != ""


def test_limits_at_the_boundary_are_accepted() -> None:
    req = parse(body(50, top_n=100))
    assert len(req.item_ids) == 50 and req.top_n == 100
    long_id = "x" * 256
    req = parse(
        body(
            1,
            item_ids=[long_id],
            session_id=long_id,
            user_id=long_id,
            request_id=long_id,
            predictions={t: [0.5] for t in TASKS},
        )
    )
    assert req.item_ids == [long_id]


def test_float32_boundary_values() -> None:
    big = float(np.finfo(np.float32).max)
    req = parse(body(2, predictions={t: [big, -1e-400] for t in TASKS}))
    assert np.isfinite(req.predictions).all()


# ----------------------------------------------------------------------------- invalid classes


def test_missing_task() -> None:
    data = body()
    del data["predictions"]["like"]
    err = rejected(data)
    assert (err.status, err.code, err.field) == (422, "invalid_input", "predictions.like")


def test_unknown_task() -> None:
    data = body()
    data["predictions"]["long_view"] = [0.1] * 4
    err = rejected(data)
    assert (err.status, err.field) == (422, "predictions.long_view")


@pytest.mark.parametrize("length", [0, 3, 5])
def test_wrong_prediction_length(length: int) -> None:
    data = body(4)
    data["predictions"]["skip"] = [0.1] * length
    err = rejected(data)
    assert (err.status, err.field) == (422, "predictions.skip")


@pytest.mark.parametrize(
    "literal", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"1e309", b"-1e309"]
)
def test_non_finite_literals_are_invalid_json(literal: bytes) -> None:
    raw = orjson.dumps(body(2, predictions={t: [0.1, 0.2] for t in TASKS}))
    raw = raw.replace(b'"click":[0.1,0.2]', b'"click":[0.1,' + literal + b"]", 1)
    assert literal in raw
    err = rejected(raw)
    assert (err.status, err.code) == (422, "invalid_json")


def test_nan_literal_in_the_state_is_invalid_json() -> None:
    raw = orjson.dumps(body()).replace(b"0.3,", b"NaN,", 1)
    err = rejected(raw)
    assert (err.status, err.code) == (422, "invalid_json")


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_value_beyond_float32_range(value: float) -> None:
    data = body(2)
    data["predictions"]["like"] = [0.5, value]
    err = rejected(data)
    assert (err.status, err.field) == (422, "predictions.like")


def test_state_value_beyond_float32_range() -> None:
    err = rejected(body(user_state=[0.0, 0.0, 1e39, 0.0, 0.0]))
    assert (err.status, err.field) == (422, "user_state")


@pytest.mark.parametrize(
    "values",
    [
        [0.1, "0.2"],
        ["a", "b"],
        [0.1, None],
        [None, None],
        [0.1, True],
        [1, False],
        [True, False],
        [0.1, [0.2]],
        [[0.1], [0.2]],
        [0.1, {"x": 1}],
    ],
)
def test_non_numbers_in_prediction_arrays(values: list[Any]) -> None:
    data = body(2)
    data["predictions"]["click"] = values
    err = rejected(data)
    assert (err.status, err.field) == (422, "predictions.click")


@pytest.mark.parametrize(
    "state",
    [
        [0.1, 0.2, 0.3, 0.4, True],
        [0.1, 0.2, 0.3, 0.4, None],
        [0.1, 0.2, 0.3, 0.4, "0.5"],
        None,
        "0.1",
        0.1,
        {"a": 1},
    ],
)
def test_invalid_state(state: Any) -> None:
    err = rejected(body(user_state=state))
    assert (err.status, err.field) == (422, "user_state")


@pytest.mark.parametrize("predictions", [None, [], [[0.1] * 4] * 3, "x", 1])
def test_predictions_must_be_an_object(predictions: Any) -> None:
    err = rejected(body(predictions=predictions))
    assert (err.status, err.field) == (422, "predictions")


@pytest.mark.parametrize("column", [None, "0.1", 0.5, {"a": 1}])
def test_prediction_column_must_be_an_array(column: Any) -> None:
    data = body()
    data["predictions"]["click"] = column
    err = rejected(data)
    assert (err.status, err.field) == (422, "predictions.click")


def test_duplicate_ids() -> None:
    err = rejected(body(3, item_ids=["a", "b", "a"]))
    assert (err.status, err.field) == (422, "item_ids")
    assert "'a'" in err.message


@pytest.mark.parametrize("length", [0, 4, 6, 50])
def test_state_of_wrong_length(length: int) -> None:
    err = rejected(body(user_state=[0.1] * length))
    assert (err.status, err.field) == (422, "user_state")


def test_empty_candidates() -> None:
    err = rejected(body(0))
    assert (err.status, err.field) == (422, "item_ids")


@pytest.mark.parametrize("item_ids", [None, "abc", {"a": 1}, 3])
def test_item_ids_must_be_an_array(item_ids: Any) -> None:
    err = rejected(body(item_ids=item_ids))
    assert (err.status, err.field) == (422, "item_ids")


def test_too_many_candidates_is_413() -> None:
    err = rejected(body(51))
    assert (err.status, err.code, err.field) == (413, "too_many_candidates", "item_ids")
    err = rejected(body(3), Limits(max_candidates=2, max_top_n=100))
    assert err.status == 413


@pytest.mark.parametrize("top", [0, -1, True, False, 2.0, 2.5, "2", None, [2], 101, 10**6])
def test_invalid_top_n(top: Any) -> None:
    err = rejected(body(top_n=top))
    assert (err.status, err.field) == (422, "top_n")


def test_missing_top_n() -> None:
    data = body()
    del data["top_n"]
    assert rejected(data).field == "top_n"


@pytest.mark.parametrize("field", ["request_id", "session_id", "user_id"])
@pytest.mark.parametrize("value", ["", "x" * 257, 5, True, ["a"]])
def test_invalid_ids(field: str, value: Any) -> None:
    err = rejected(body(**{field: value}))
    assert (err.status, err.field) == (422, field)


@pytest.mark.parametrize("field", ["session_id", "user_id"])
def test_missing_required_ids(field: str) -> None:
    data = body()
    del data[field]
    assert rejected(data).field == field


@pytest.mark.parametrize("bad", ["", "x" * 257, 7, None, True])
def test_invalid_item_id(bad: Any) -> None:
    err = rejected(body(3, item_ids=["a", bad, "c"]))
    assert (err.status, err.field) == (422, "item_ids[1]")


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"text"', b"3", b"null", b"true"])
def test_non_object_body(raw: bytes) -> None:
    err = rejected(raw)
    assert err.status == 422
    assert err.code == "invalid_input"


@pytest.mark.parametrize("raw", [b"", b"{", b"{'a': 1}", b'{"a": 1,}', b"\xff\xfe", b"{}{}"])
def test_malformed_json(raw: bytes) -> None:
    err = rejected(raw)
    assert (err.status, err.code) == (422, "invalid_json")


def test_unknown_top_level_field() -> None:
    err = rejected(body(candidates=[1, 2]))
    assert (err.status, err.field) == (422, "candidates")


def test_every_error_has_a_message() -> None:
    for data in (body(0), body(top_n=0), body(user_state=[1.0])):
        err = rejected(data)
        assert isinstance(err.message, str) and err.message


def test_true_false_inside_strings_do_not_reject_numbers() -> None:
    # the boolean check is only armed by a true/false token; ids containing it stay valid
    req = parse(body(2, item_ids=["true", "false"], session_id="true"))
    assert req.item_ids == ["true", "false"]
    assert req.predictions.shape == (3, 2)


# ----------------------------------------------------------------------------- fast == reference

# Values that probe every check: wrong types, booleans posing as 0/1, float32 and float64
# overflow, empty and over-long strings, nesting, huge integers.
_PROBES: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 0.0, 1.0, 0.5, 1e39, -1e39, 3.4e38, 2**63, 2**64 + 1, "",
    "x", "0.5", "i" * 256, "i" * 257, [], [0.5], [[0.5]], {}, {"a": 1}, [True], [None], ["a"],
)  # fmt: skip
_FIELDS = ("request_id", "session_id", "user_id", "user_state", "item_ids", "predictions", "top_n")


def _outcome(parser: Any, raw: bytes) -> Any:
    try:
        got = parser(raw, TASKS, STATE_DIM, LIMITS)
    except InputError as err:
        return ("error", err.status, err.code, err.field, err.message)
    return (
        "ok",
        got.request_id if got.request_id == "r-1" else "generated",
        got.session_id,
        got.user_id,
        got.state.tobytes(),
        got.item_ids,
        got.predictions.tobytes(),
        got.top_n,
    )


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()  # orjson refuses ints > 64 bits


def _mutations() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    base = body(4)
    for field in _FIELDS:
        cases.append((f"drop {field}", _dumps({k: v for k, v in base.items() if k != field})))
        for value in _PROBES:
            cases.append((f"{field}={value!r}"[:60], _dumps({**base, field: value})))
    for value in _PROBES:
        for where in ("user_state", "item_ids"):
            seq = list(base[where])
            seq[1] = value
            cases.append((f"{where}[1]={value!r}"[:60], _dumps({**base, where: seq})))
        for task in (*TASKS, "extra"):
            preds = {t: list(col) for t, col in base["predictions"].items()}
            if task in preds:
                preds[task][2] = value
            else:
                preds[task] = value
            cases.append((f"{task}[2]={value!r}"[:60], _dumps({**base, "predictions": preds})))
    dup = _dumps(base)[:-1] + b',"top_n":3}'  # a duplicate key: the last one wins in both
    cases += [
        ("duplicate key", dup),
        ("unknown field", _dumps({**base, "extra": 1})),
        ("duplicate id", _dumps({**base, "item_ids": ["i0", "i1", "i0", "i3"]})),
        ("top_n too big", _dumps({**base, "top_n": LIMITS.max_top_n + 1})),
        ("too many", _dumps(body(LIMITS.max_candidates + 1))),
        ("no candidates", _dumps(body(0))),
        ("nan", _dumps(base).replace(b"0.1,", b"NaN,", 1)),
        ("1e309", _dumps(base).replace(b"0.1,", b"1e309,", 1)),
        ("not json", b"{"),
        ("array", b"[]"),
        ("deep", b"[" * 10_000 + b"]" * 10_000),
        ("valid", _dumps(base)),
        (
            "valid, no request_id",
            _dumps({k: v for k, v in base.items() if k != "request_id"}),
        ),
    ]
    return cases


@pytest.mark.parametrize(
    ("name", "raw"), _mutations(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_fast_parser_agrees_with_the_reference(name: str, raw: bytes) -> None:
    """Same result, or the same error, for valid bodies and for every probe of every field."""
    assert _outcome(parse_rank, raw) == _outcome(parse_rank_checked, raw)


def test_valid_bodies_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def reference(*_: Any) -> Any:
        raise AssertionError("a valid body reached the reference parser")

    monkeypatch.setattr(parsing, "parse_rank_checked", reference)
    for data in (body(1), body(50, top_n=100), body(3, request_id=None), body(2, top_n=1)):
        assert parse(data).item_ids == data["item_ids"]


def test_nested_arrays_are_refused_though_simdjson_would_flatten_them() -> None:
    data = body(3)
    data["predictions"]["like"][1] = [0.5]  # flattened by as_buffer: same element count
    assert rejected(data).field == "predictions.like"


def test_a_bracket_inside_an_id_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    reference = parsing.parse_rank_checked

    def counting(raw: bytes, *args: Any) -> Any:
        calls.append(raw)
        return reference(raw, *args)

    monkeypatch.setattr(parsing, "parse_rank_checked", counting)
    assert parse(body(2, item_ids=["a[1]", "b"])).item_ids == ["a[1]", "b"]
    assert len(calls) == 1  # unusual, so decided by the reference parser


def test_big_bodies_go_to_the_reference_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = orjson.dumps(body(4))
    monkeypatch.setattr(parsing, "FAST_PATH_MAX_BYTES", len(raw) - 1)
    monkeypatch.setattr(parsing, "_parse_fast", None)  # would fail if it were called
    assert parse(raw).item_ids == body(4)["item_ids"]


def test_the_fast_path_recovers_after_invalid_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in (b"{", b"[1e309]", orjson.dumps(body(2, top_n=True)), b'{"a":[[[]]]}'):
        with pytest.raises(InputError):
            parse(raw)

    def reference(*_: Any) -> Any:
        raise AssertionError("a valid body reached the reference parser")

    monkeypatch.setattr(parsing, "parse_rank_checked", reference)
    assert parse(body(3)).predictions.shape == (3, 3)


def test_a_document_left_alive_costs_the_fast_path_once(monkeypatch: pytest.MonkeyPatch) -> None:
    leaked = parsing._parser().parse(orjson.dumps(body(2)))  # blocks that parser's next parse
    assert parse(body(3)).item_ids == ["i0", "i1", "i2"]  # decided by the reference parser

    def reference(*_: Any) -> Any:
        raise AssertionError("a valid body reached the reference parser")

    monkeypatch.setattr(parsing, "parse_rank_checked", reference)
    assert parse(body(3)).item_ids == ["i0", "i1", "i2"]  # a fresh parser: fast path again
    del leaked
