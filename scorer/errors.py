"""The error body of every non-2xx answer: ``{"error": {"code", "message", "field"}}``.

:class:`HTTPError` is any such answer, built with keyword arguments; :class:`InputError` is the
client's own mistake in what it sent (422 by default, or 413/415 with their codes), raised all
over the body parser with the field it names.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response


class HTTPError(Exception):
    """An answer with ``status`` and the SPEC's error body (``code``, ``message``, ``field``).

    Raised as such for answers that are not about the body's content: 401 (admin token),
    404 (admin routes disabled), 499 (the client went away mid-body), 503 (no model yet).
    """

    def __init__(self, *, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class InputError(HTTPError):
    """What the client sent is invalid: 422 (``invalid_input``, ``invalid_json``), or 413 / 415
    with their own codes (too large, wrong content type)."""

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        status: int = 422,
        code: str = "invalid_input",
    ) -> None:
        super().__init__(status=status, code=code, message=message, field=field)


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
