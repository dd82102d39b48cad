"""One JSON shape for every refusal, as the staff API: ``{"status_code", "detail"}``, and
``field``/``errors`` on 422."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

# The 5xx answer (logged with a request id) and the error shape are one definition for both
# surfaces (parents_api.hardening).
from .hardening import (  # noqa: F401  (re-exported for the app)
    InputRefused,
    database_input_handler,
    error_response,
    input_refused_handler,
    internal_error_handler,
    server_error,
)


_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


class Unprocessable(HTTPException):
    status_code = 422

    def __init__(self, field: str, message: str, *, source: str = "body") -> None:
        self.field = field
        self.errors = [{"field": field, "message": message, "source": source}]
        super().__init__(detail=f"{field}: {message}")


class TooManyRequests(HTTPException):
    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail=detail, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


def _response(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    return error_response(status, detail, headers, **extra)


def unprocessable_handler(_request: Request, exc: Unprocessable) -> Response:
    return _response(422, exc.detail, field=exc.field, errors=exc.errors)


def validation_handler(_request: Request, exc: ValidationException) -> Response:
    errors: list[dict[str, Any]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message, key = str(item.get("message", "")), str(item.get("key") or "")
            named = _NAMED_FIELD.search(message)
            if named and key in ("", "data"):
                key = named.group(1)  # the body's own field, not Litestar's name for the body
            errors.append({"field": key or "body", "message": message, "source": item.get("source", "body")})
    if not errors:
        errors.append({"field": "body", "message": exc.detail, "source": "body"})
    first = errors[0]
    return _response(422, f"{first['field']}: {first['message']}", field=first["field"], errors=errors)


def http_exception_handler(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        return validation_handler(request, exc)
    if exc.status_code >= 500:
        return server_error(request, exc, exc.status_code, exc.detail)
    return _response(exc.status_code, exc.detail, headers=exc.headers)
