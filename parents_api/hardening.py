"""What both HTTP surfaces do to client input before a handler runs, how they answer a 5xx,
and how their OpenAPI documents are finished. One definition, shared by the parents' API and
the staff API (the staff API may import the parents' API; the parents' API imports no other
surface: pyproject.toml's import-linter contracts).

- **Strict bodies.** Litestar converts a JSON body to its msgspec Struct in non-strict mode
  (``"100"`` becomes 100). ``strict_input`` (a ``before_request`` hook: after the guards, so
  401 still comes before 422) decodes the raw body again with ``strict=True`` and answers 422
  naming the field.
- **Text.** No string a client sends (body, query, path) may carry a control character, a
  bidi override or isolate, or a line/paragraph separator (``TEXT_FORBIDDEN``): PostgreSQL
  refuses NUL (a 500 before), and the rest reach till screens, pages and spreadsheets. Names
  must also hold something visible: ``NAME_PATTERN``.
- **Integers.** Every integer a client sends fits a PostgreSQL bigint (``INT64_MAX``); a path
  id beyond its column's range is something that cannot exist: 404 (``PathIds``).
- **5xx.** Whatever still fails is logged with its traceback and a request id, and the answer
  names the id (``internal_error_handler``).
- **OpenAPI.** ``StrictStructSchemaPlugin`` marks Structs that forbid unknown fields
  ``additionalProperties: false``; ``finish_openapi`` adds the error answers each operation
  gives and what Litestar cannot say (a required header the handler checks itself, a CSV body).
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import asyncpg
import msgspec
from litestar import Litestar, Request, Response
from litestar._openapi.plugin import OpenAPIPlugin  # the built document, to finish it
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi.spec import Schema
from litestar.routes import HTTPRoute
from litestar.typing import FieldDefinition

# PostgreSQL's integer and bigint: a value beyond them cannot be stored or looked up.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# --- the text rule ------------------------------------------------------------------------------

# C0 controls and DEL, C1 controls, the line and paragraph separators, and the bidi
# embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069): none belongs in a name
# or a note, and the bidi ones make a till screen or a spreadsheet show another text than the
# one stored ("Trojan Source"). As a regex character class body, valid in Python and in
# ECMA-262 (the OpenAPI document's pattern dialect).
TEXT_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_FORBIDDEN = re.compile(f"[{TEXT_FORBIDDEN}]")
# A text field: any number of allowed characters. A name: at least one that is not white space.
# (Python's "$" also matches before one trailing line break: ``text_problem`` closes that gap for
# every string of every request, so the patterns are the documentation and a first check.)
TEXT_PATTERN = f"^[^{TEXT_FORBIDDEN}]*$"
NAME_PATTERN = f"^[^{TEXT_FORBIDDEN}]*[^\\s{TEXT_FORBIDDEN}][^{TEXT_FORBIDDEN}]*$"
NAME_RULE = "must hold a visible character, and no control characters or bidi overrides"


def text_problem(value: str) -> str | None:
    """Why a client's string may not be taken, or None."""
    m = _FORBIDDEN.search(value)
    if m is None:
        return None
    return f"must not contain control characters, line breaks or bidi overrides (U+{ord(m.group()):04X} at {m.start()})"


def name_problem(value: str) -> str | None:
    """``text_problem``, and a name must hold a visible character (not empty, not only spaces)."""
    return text_problem(value) or (None if value.strip() else "must not be empty or only white space")


# --- errors -------------------------------------------------------------------------------------

log = logging.getLogger("ecard.http")
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_BYTES = 8  # 16 hex digits: unique enough to find one line in a day's log


class InputRefused(HTTPException):
    """422 naming the field; each surface's ``Unprocessable`` handler shape (``errors_of``)."""

    status_code = 422

    def __init__(self, field: str, message: str, source: str = "body") -> None:
        self.field = field
        self.errors = [{"field": field, "message": message, "source": source}]
        super().__init__(detail=f"{field}: {message}")


def error_response(status: int, detail: str, headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    """The one JSON shape of every refusal: ``{"status_code", "detail"}`` (+ field/errors on 422)."""
    return Response({"status_code": status, "detail": detail, **extra}, status_code=status,
                    headers=dict(headers) if headers else None)


def input_refused_handler(_request: Request, exc: InputRefused) -> Response:
    return error_response(422, exc.detail, field=exc.field, errors=exc.errors)


def server_error(request: Request, exc: BaseException, status: int = 500, detail: str = "internal error") -> Response:
    """A 5xx: logged with its traceback and a fresh request id, which the answer names."""
    request_id = secrets.token_hex(REQUEST_ID_BYTES)
    log.error("%s %s %s (request %s)", status, request.method, request.url.path, request_id, exc_info=exc)
    return error_response(status, f"{detail}; request id {request_id}", headers={REQUEST_ID_HEADER: request_id},
                          request_id=request_id)


def internal_error_handler(request: Request, exc: Exception) -> Response:
    """The last resort: an exception no other handler took."""
    return server_error(request, exc)


def database_input_handler(request: Request, exc: asyncpg.DataError) -> Response:
    """PostgreSQL refused a value the validation let through (a gap to close, hence logged as an
    error): a 422 for the client, not a 500."""
    request_id = secrets.token_hex(REQUEST_ID_BYTES)
    log.error("422 from the database: %s %s (request %s)", request.method, request.url.path, request_id, exc_info=exc)
    return error_response(422, f"body: a value cannot be stored ({type(exc).__name__}); request id {request_id}",
                          headers={REQUEST_ID_HEADER: request_id}, field="body", request_id=request_id,
                          errors=[{"field": "body", "message": str(exc), "source": "body"}])


# --- strict input -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathIds:
    """Path parameters that name a row by id: the column's largest value and the API's own 404
    detail for a missing one (``"no school {}"``). Anything beyond cannot exist."""

    ranges: Mapping[str, tuple[int, str]] = field(default_factory=dict)


_AT = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")  # "... - at `$.a[0].b`", "... - at `key` in `$.a`"
_NAMED = re.compile(r"(?:missing required field|unknown field) `(?P<name>[^`]+)`")


def _field_of(message: str) -> tuple[str, str]:
    """(field path, message) from a msgspec ValidationError text."""
    path = ""
    at = _AT.search(message)
    if at is not None:
        path = at.group("path")
        message = message[: at.start()]
    named = _NAMED.search(message)
    if named is not None:
        path = f"{path}.{named.group('name')}"
    return path.lstrip(".") or "body", message


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(k, f"{path}.{k}" if path else str(k))  # keys are input too
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def check_value(value: Any, field_path: str, source: str) -> None:
    """Every string and integer inside ``value`` (a decoded body, a query or path value)."""
    for path, item in _walk(value, field_path):
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                raise InputRefused(path or "body", problem, source)
        elif isinstance(item, int) and not isinstance(item, bool) and not -INT64_MAX - 1 <= item <= INT64_MAX:
            raise InputRefused(path or "body", f"must be between {-INT64_MAX - 1} and {INT64_MAX}", source)


def _json_struct(handler: Any) -> type[msgspec.Struct] | None:
    data: FieldDefinition | None = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    kwarg = data.kwarg_definition
    media_type = getattr(kwarg, "media_type", RequestEncodingType.JSON)
    if media_type != RequestEncodingType.JSON:
        return None
    t = data.annotation
    return t if isinstance(t, type) and issubclass(t, msgspec.Struct) else None


def _int_params(handler: Any) -> dict[str, str]:
    """The handler's integer query parameters: query key -> its name in errors."""
    out: dict[str, str] = {}
    for name, fd in handler.parsed_fn_signature.parameters.items():
        inner = [t.annotation for t in fd.inner_types] if fd.is_union else [fd.annotation]
        if any(t is int for t in inner):
            key = getattr(fd.kwarg_definition, "query", None) or name
            out[key] = key
    return out


def strict_input(path_ids: PathIds):
    """A ``before_request`` hook: path, query and JSON body checked before Litestar parses them."""

    async def hook(request: Request) -> None:
        handler = request.route_handler
        for name, value in request.path_params.items():
            if isinstance(value, int) and not isinstance(value, bool):
                limit = path_ids.ranges.get(name)
                if limit is not None and not 0 <= value <= limit[0]:
                    raise NotFoundException(limit[1].format(value))
            check_value(value, name, "path")
        ints = _int_params(handler)
        for key, value in request.query_params.multi_items():
            check_value(value, key, "query")
            if key in ints and re.fullmatch(r"[+-]?[0-9]+", value.strip()) and not (
                    -INT64_MAX - 1 <= int(value) <= INT64_MAX):
                raise InputRefused(key, f"must be between {-INT64_MAX - 1} and {INT64_MAX}", "query")
        struct = _json_struct(handler)
        if struct is None:
            return None
        body = await request.body()
        try:
            msgspec.json.decode(body, type=struct, strict=True)
        except msgspec.ValidationError as exc:
            where, message = _field_of(str(exc))
            raise InputRefused(where, message) from None
        except msgspec.DecodeError as exc:
            raise InputRefused("body", f"not a JSON document: {exc}") from None
        check_value(msgspec.json.decode(body), "", "body")
        return None

    return hook


# --- OpenAPI ------------------------------------------------------------------------------------

class StrictStructSchemaPlugin(StructSchemaPlugin):
    """A Struct with ``forbid_unknown_fields`` is ``additionalProperties: false`` in the document,
    as in the code."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if getattr(info, "forbid_unknown_fields", False):
            schema.additional_properties = False
        return schema


ERROR_SCHEMA_NAME = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status_code", "detail"],
    "properties": {
        "status_code": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string", "description": "422: the field that is wrong"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["field", "message"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"},
                           "source": {"type": "string"}, "row": {"type": "integer"},
                           "code": {"type": "string"}, "params": {"type": "object"}},
        }},
        "code": {"type": "string", "description": "the staff API: the refusal's code (staff_api.refusals), "
                                                  "for a client to say it in its own language"},
        "params": {"type": "object", "description": "the staff API: the values the code's text names"},
        "request_id": {"type": "string", "description": "5xx (and a value the database refused): in the log"},
    },
}
ERROR_DESCRIPTIONS = {
    202: "Accepted", 400: "Bad request", 401: "Not authenticated: no, unknown, expired or revoked credentials",
    403: "Not allowed for the caller's role or school", 404: "No such resource (or not the caller's)",
    409: "Conflict with the resource's state", 415: "Unsupported media type",
    422: "Invalid input: the field that is wrong is named", 429: "Too many requests: see Retry-After",
}
# Handler ``opt`` keys read by ``finish_openapi``: extra statuses (e.g. (409, 202)), headers the
# handler itself requires, and a request body Litestar does not see (the CSV import).
OPT_ANSWERS = "answers"
OPT_REQUIRED_HEADERS = "required_headers"
OPT_REQUEST_BODY = "request_body"
OPT_PUBLIC = "public"  # no credentials: no 401/403 answer from the guard
OPT_SUCCESS_CONTENT = "success_content"  # the success answer's media types, when Litestar cannot tell them


def _handlers(app: Litestar) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method, handler in route.route_handler_map.items():
                out[(route.path_format, method.lower())] = handler[0] if isinstance(handler, tuple) else handler
    return out


def _error_response(status: int) -> dict[str, Any]:
    return {"description": ERROR_DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}}}}


def finish_openapi(
    app: Litestar, *, guarded: Callable[[Any], bool], guard_answers: tuple[int, ...],
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """Finish the app's OpenAPI document (built once, served as built): per operation, the error
    answers it gives: ``guard_answers`` (401, 403) when ``guarded(handler)`` (and then its
    ``security``, when the document has no default), 404 with a path parameter, 422 with any
    input (the API's validation answer; Litestar's generic 400 never happens), plus the handler's
    own (``opt["answers"]``); required headers the handler checks itself; bodies Litestar cannot see."""
    plugin = app.plugins.get(OpenAPIPlugin)
    document = plugin.provide_openapi_schema()
    document.setdefault("components", {}).setdefault("schemas", {})[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    handlers = _handlers(app)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            handler = handlers.get((path, method))
            if handler is None or not isinstance(operation, dict):
                continue
            opt = handler.opt or {}
            responses = operation.setdefault("responses", {})
            responses.pop("400", None)
            statuses: set[int] = set(opt.get(OPT_ANSWERS, ()))
            if guarded(handler) and not opt.get(OPT_PUBLIC):
                statuses |= set(guard_answers)
                if security is not None:
                    operation["security"] = security
            params = operation.get("parameters", [])
            if any(p.get("in") == "path" for p in params):
                statuses.add(404)
            if params or "requestBody" in operation or opt.get(OPT_REQUEST_BODY):
                statuses.add(422)
            if opt.get(OPT_PUBLIC):
                operation["security"] = []  # no credentials: the document's default does not apply
            for status in sorted(statuses):
                if status == 202:
                    success = next((v for k, v in responses.items() if k.startswith("2")), None)
                    responses.setdefault("202", {**(success or {}), "description": "Accepted: still pending"})
                else:
                    responses.setdefault(str(status), _error_response(status))
            for header in opt.get(OPT_REQUIRED_HEADERS, ()):
                for p in params:
                    if p.get("in") == "header" and p.get("name", "").lower() == header.lower():
                        p["required"] = True
                        schema = p.get("schema", {})
                        if "oneOf" in schema:  # Optional[str] -> str: it is required
                            p["schema"] = next((s for s in schema["oneOf"] if s.get("type") != "null"), schema)
            if opt.get(OPT_REQUEST_BODY):
                operation["requestBody"] = opt[OPT_REQUEST_BODY]
            if opt.get(OPT_SUCCESS_CONTENT):
                responses[str(handler.status_code)]["content"] = opt[OPT_SUCCESS_CONTENT]
    return document


def answers(*statuses: int, required_headers: Iterable[str] = (), request_body: dict | None = None,
            public: bool = False, success_content: dict | None = None) -> dict[str, Any]:
    """A handler's ``opt`` for ``finish_openapi``: ``@post(..., opt=answers(409, 202))``."""
    opt: dict[str, Any] = {OPT_ANSWERS: tuple(statuses)}
    if required_headers:
        opt[OPT_REQUIRED_HEADERS] = tuple(required_headers)
    if request_body is not None:
        opt[OPT_REQUEST_BODY] = request_body
    if public:
        opt[OPT_PUBLIC] = True
    if success_content is not None:
        opt[OPT_SUCCESS_CONTENT] = success_content
    return opt
