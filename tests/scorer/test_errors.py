"""The two error types and the SPEC error body they become."""

from __future__ import annotations

import orjson
import pytest

from scorer.errors import HTTPError, InputError, error_response
from shared.api import ErrorBody, ErrorDetail


def test_http_error_takes_keyword_arguments_only() -> None:
    err = HTTPError(status=503, code="not_ready", message="no model is loaded yet")
    assert (err.status, err.code, err.message, err.field) == (
        503,
        "not_ready",
        "no model is loaded yet",
        None,
    )
    assert str(err) == "no model is loaded yet"
    with pytest.raises(TypeError):
        HTTPError(503, "not_ready", "no model")  # type: ignore[call-arg]


def test_input_error_defaults_to_422_and_keeps_its_field() -> None:
    err = InputError("must be an integer", "top_n")
    assert isinstance(err, HTTPError)
    assert (err.status, err.code, err.field) == (422, "invalid_input", "top_n")
    big = InputError("body exceeds 10 bytes", status=413, code="body_too_large")
    assert (big.status, big.code, big.field) == (413, "body_too_large", None)
    with pytest.raises(TypeError):
        InputError("x", None, 413, "body_too_large")  # type: ignore[call-arg]


def test_error_response_is_the_spec_body() -> None:
    resp = error_response(401, "unauthorized", "missing or wrong bearer token", "Authorization")
    assert resp.status_code == 401
    assert resp.media_type == "application/json"
    assert orjson.loads(resp.body) == {
        "error": {
            "code": "unauthorized",
            "message": "missing or wrong bearer token",
            "field": "Authorization",
        }
    }
    assert ErrorBody.model_validate_json(bytes(resp.body)) == ErrorBody(
        error=ErrorDetail(
            code="unauthorized", message="missing or wrong bearer token", field="Authorization"
        )
    )
    assert orjson.loads(error_response(503, "not_ready", "no model").body)["error"]["field"] is None
