"""Error responses: one JSON shape for every refusal.

``{"status_code": 422, "detail": "...", "field": "grade", "errors": [{"field", "message", "source"}]}``
(``field``/``errors`` only for 422).
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

# Shared with the parents' API (one definition): the error shape, the 5xx log line with its
# request id, the strict input checks.
from parents_api.hardening import (  # noqa: F401  (re-exported for the app)
    InputRefused,
    answers,
    database_input_handler,
    error_response,
    input_refused_handler,
    internal_error_handler,
    server_error,
)

_MISSING_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


class Unprocessable(HTTPException):
    """422 naming the field that is wrong."""

    status_code = 422

    def __init__(
        self, field: str, message: str, *, errors: list[dict[str, Any]] | None = None, detail: str | None = None,
        source: str = "body",
    ) -> None:
        self.field = field
        self.errors = errors or [{"field": field, "message": message, "source": source}]
        super().__init__(detail=detail or f"{field}: {message}")


class Conflict(HTTPException):
    status_code = 409


def _error_response(status: int, detail: str, **extra: Any) -> Response:
    return error_response(status, detail, **extra)


def unprocessable_handler(_request: Request, exc: Unprocessable) -> Response:
    return _error_response(422, exc.detail, field=exc.field, errors=exc.errors)


def validation_handler(request: Request, exc: ValidationException) -> Response:
    """Litestar's own validation failures (body, path, query, headers) become 422 with the field."""
    errors: list[dict[str, Any]] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", ""))
        key = str(item.get("key", ""))
        m = _MISSING_FIELD.search(message)
        if m and key in ("", "data"):
            key = m.group(1)
        errors.append({"field": key, "message": message, "source": item.get("source", "body")})
    if not errors:
        errors.append({"field": "body", "message": exc.detail, "source": "body"})
    first = errors[0]
    return _error_response(422, f"{first['field']}: {first['message']}", field=first["field"], errors=errors)


def unique_violation_handler(_request: Request, exc: asyncpg.UniqueViolationError) -> Response:
    """A race lost to a concurrent request (the same card bound twice at once): a conflict, not a crash."""
    return _error_response(409, f"conflict with a concurrent change: {exc.detail or exc}")


def check_violation_handler(_request: Request, exc: asyncpg.CheckViolationError) -> Response:
    field = exc.constraint_name or "body"
    return _error_response(422, f"{field}: {exc}", field=field,
                           errors=[{"field": field, "message": str(exc), "source": "body"}])


def http_exception_handler(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        return validation_handler(request, exc)
    if exc.status_code >= 500:
        return server_error(request, exc, exc.status_code, exc.detail)
    return error_response(exc.status_code, exc.detail, headers=exc.headers)
