"""Error responses: one JSON shape for every refusal.

``{"status_code": 409, "detail": "...", "code": "device_revoked", "params": {"device_id": 7}}``;
a 422 adds ``"field": "grade", "errors": [{"field", "message", "source"}]`` (an error item made from
a refusal code carries its ``code`` and ``params`` too). ``detail`` is English, for programs and
logs; ``code`` (``refusals.Refusal``) and ``params`` are what a client turns into its own language
(the console: ``console_ru.REFUSAL``). A refusal with no code (Litestar's own: an unknown route,
a method not allowed; msgspec's validation messages) has no ``code``.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

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
    internal_error_handler,
    server_error,
)

from .refusals import Refusal, recognise

_MISSING_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")

E = TypeVar("E", bound=HTTPException)


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


def refuse(kind: type[E], code: Refusal, /, **params: Any) -> E:
    """A refusal of ``kind`` (Conflict, NotFoundException, PermissionDeniedException, ...) with its
    code: the English detail from the code's template, the code and parameters beside it."""
    exc = kind(detail=code.detail(**params))
    exc.code, exc.params = code, params  # type: ignore[attr-defined]
    return exc


def invalid(field: str, code: Refusal, /, *, source: str = "body", errors: list[dict[str, Any]] | None = None,
            unnamed: bool = False, **params: Any) -> Unprocessable:
    """A 422 naming ``field``, its message from the code's template. ``errors`` (several items at
    fault) are given by the caller (with ``error_item``'s code where they have one); ``unnamed``:
    the detail is the message alone, not ``"<field>: <message>"`` (a summary of several)."""
    message = code.detail(**params)
    exc = Unprocessable(field, message, source=source, detail=message if unnamed else None,
                        errors=errors or [error_item(field, code, source=source, **params)])
    exc.code, exc.params = code, params  # type: ignore[attr-defined]
    return exc


def error_item(field: str, code: Refusal, /, *, source: str = "body", **params: Any) -> dict[str, Any]:
    return {"field": field, "message": code.detail(**params), "source": source, "code": code.value, "params": params}


def _coded(exc: HTTPException) -> dict[str, Any]:
    """``code``/``params`` of a refusal: its own, or those of a known template its detail was made
    from elsewhere (the path ids' 404, storage's refusals passed on); nothing for any other."""
    code = getattr(exc, "code", None)
    if isinstance(code, Refusal):
        return {"code": code.value, "params": getattr(exc, "params", {})}
    known = recognise(str(exc.detail))
    return {"code": known[0].value, "params": known[1]} if known else {}


def _coded_items(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in errors:
        if "code" not in item and isinstance(item.get("message"), str):
            known = recognise(item["message"])
            if known is not None:
                item = {**item, "code": known[0].value, "params": known[1]}
        out.append(item)
    return out


def _error_response(status: int, detail: str, **extra: Any) -> Response:
    return error_response(status, detail, **extra)


def unprocessable_handler(_request: Request, exc: Unprocessable) -> Response:
    errors = _coded_items(exc.errors)
    coded = _coded(exc)
    if not coded and errors and "code" in errors[0]:
        coded = {"code": errors[0]["code"], "params": errors[0]["params"]}
    return _error_response(422, exc.detail, field=exc.field, errors=errors, **coded)


def input_refused_handler(_request: Request, exc: InputRefused) -> Response:
    """The strict input checks' 422 (parents_api.hardening): msgspec's and the text rule's messages."""
    return _error_response(422, exc.detail, field=exc.field, errors=_coded_items(exc.errors))


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
    params = {"reason": str(exc.detail or exc)}
    return _error_response(409, Refusal.CONCURRENT_CHANGE.detail(**params), code=Refusal.CONCURRENT_CHANGE.value,
                           params=params)


def check_violation_handler(_request: Request, exc: asyncpg.CheckViolationError) -> Response:
    field = exc.constraint_name or "body"
    item = error_item(field, Refusal.VALUE_NOT_STORABLE, reason=str(exc))
    return _error_response(422, f"{field}: {exc}", field=field, errors=[item], code=item["code"],
                           params=item["params"])


def http_exception_handler(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        return validation_handler(request, exc)
    if exc.status_code >= 500:
        return server_error(request, exc, exc.status_code, exc.detail)
    return error_response(exc.status_code, exc.detail, headers=exc.headers, **_coded(exc))
