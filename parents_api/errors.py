"""One JSON shape for every refusal, as the staff API: ``{"status_code", "detail"}``, and
``field``/``errors`` on 422."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException


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
    return Response({"status_code": status, "detail": detail, **extra}, status_code=status, headers=headers)


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
    return _response(exc.status_code, exc.detail, headers=exc.headers)


log = logging.getLogger("parents_api")


def internal_error_handler(request: Request, exc: Exception) -> Response:
    """A 5xx that got through: logged with its traceback and a request id the answer names."""
    request_id = secrets.token_hex(8)
    log.error("500 %s %s (request %s)", request.method, request.url.path, request_id, exc_info=exc)
    return _response(500, f"internal error; request id {request_id}", request_id=request_id)
