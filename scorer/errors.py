"""The error body of every non-2xx answer: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

import orjson
from starlette.responses import Response


class InputError(Exception):
    """A client error, mapped to its HTTP status and the SPEC's error body."""

    def __init__(
        self, message: str, field: str | None = None, status: int = 422, code: str = "invalid_input"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
