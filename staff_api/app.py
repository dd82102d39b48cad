"""The Litestar application: pool, authentication guard, error shapes, OpenAPI."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import asyncpg
from litestar import Litestar, Request, Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Tag
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from parents_api.hardening import INT32_MAX, INT64_MAX, PathIds, StrictStructSchemaPlugin, finish_openapi, strict_input
from storage import commands

from . import db
from .admin import AuditController, MeController, StaffController
from .auth import Principal, authenticate
from .building import BuildingController, FireController
from .cards import CardController
from .console import CONSOLE_PATH, STATIC_DIR, STATIC_PATH, TEMPLATES_DIR, ConsoleController
from .desk import DeskController
from .devices import DEVICE_ID_MAX, ENROL_PATH, DeviceController
from .errors import (
    InputRefused,
    Unprocessable,
    check_violation_handler,
    database_input_handler,
    http_exception_handler,
    input_refused_handler,
    internal_error_handler,
    unique_violation_handler,
    unprocessable_handler,
    validation_handler,
)
from .money import MoneyController
from .preorders import PreorderController
from .reports import ReportController
from .pupils import PupilController
from .representatives import RepresentativeController
from .schools import SchoolController
from .trusted_cards import TrustedCardController

SCHEMA_PATH = "/schema"
POOL_SIZE_MIN, POOL_SIZE_MAX = 1, 10
# A statement that runs longer than this is a bug or a lock pile-up, not a slow request.
STATEMENT_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 10.0
# Path ids and their columns' ranges (schools.id is integer, the others bigint; a device id is a
# u32 on the wire): an id beyond cannot exist, so it is 404 like any unknown id, not a 500.
PATH_IDS = PathIds({
    "school_id": (INT32_MAX, "no school {}"),
    "account_id": (INT64_MAX, "no account {}"),
    "representative_id": (INT64_MAX, "no representative {}"),
    "device_id": (DEVICE_ID_MAX, "device {} does not exist"),
})


async def auth_guard(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    """Runs before any parameter or body is parsed: 401 comes before 422."""
    if connection.scope["path"].startswith(SCHEMA_PATH):
        return  # the OpenAPI document is public
    if connection.scope["path"] == ENROL_PATH:
        return  # a device enrolling itself: its one-time code is the credential (staff_api.devices)
    if connection.scope["path"] == CONSOLE_PATH or connection.scope["path"].startswith(CONSOLE_PATH + "/"):
        return  # the console's pages: signed out, they send the person to the sign-in page (staff_api.console)
    pool: asyncpg.Pool = connection.app.state.pool
    connection.state.principal = await authenticate(connection, pool, connection.app.state.clock())  # type: ignore[arg-type]


def _principal(request: Request) -> Principal:
    return request.state.principal


def create_app(
    dsn: str,
    *,
    command_wait_ms: int = commands.COMMAND_WAIT_MS_MAX,
    clock: db.Clock = db.system_clock_ms,
    pool_size_max: int = POOL_SIZE_MAX,
) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.clock = clock  # console sessions expire by it (staff_api.auth)
        app.state.pool = await asyncpg.create_pool(
            dsn, min_size=POOL_SIZE_MIN, max_size=pool_size_max, timeout=CONNECT_TIMEOUT_S,
            server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS), "application_name": "ecard-staff-api"},
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    def _pool(request: Request) -> asyncpg.Pool:
        return request.app.state.pool

    def _now_ms() -> int:
        return clock()

    def _wait_ms() -> int:
        return command_wait_ms

    # The console's pages are HTML for people, not part of the API's document.
    console = Router(path="/", route_handlers=[ConsoleController], include_in_schema=False)
    app = Litestar(
        route_handlers=[SchoolController, PupilController, CardController, MoneyController,
                        StaffController, MeController, AuditController, PreorderController, RepresentativeController, DeskController,
                        BuildingController, FireController, DeviceController, TrustedCardController, ReportController,
                        console, create_static_files_router(STATIC_PATH, directories=[STATIC_DIR])],
        lifespan=[lifespan],
        before_request=strict_input(PATH_IDS),
        plugins=[StrictStructSchemaPlugin()],
        template_config=TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine),
        guards=[auth_guard],
        dependencies={
            "principal": Provide(_principal, sync_to_thread=False),
            "pool": Provide(_pool, sync_to_thread=False),
            "now_ms": Provide(_now_ms, sync_to_thread=False),
            "command_wait_ms": Provide(_wait_ms, sync_to_thread=False),
        },
        exception_handlers={
            Unprocessable: unprocessable_handler,
            ValidationException: validation_handler,
            HTTPException: http_exception_handler,
            asyncpg.UniqueViolationError: unique_violation_handler,
            asyncpg.CheckViolationError: check_violation_handler,
            InputRefused: input_refused_handler,
            asyncpg.DataError: database_input_handler,
            Exception: internal_error_handler,
        },
        openapi_config=OpenAPIConfig(
            title="ecard staff and operator API",
            version="1.0.0",
            path=SCHEMA_PATH,
            description="Schools, pupils, cards, parent controls, money commands, pupils' representatives, "
            "staff and audit. "
            "Every request: Authorization: Bearer <token> (or the staff console's session cookie, with the "
            "X-CSRF-Token header on every request that is not a read).",
            security=[{"bearer": []}],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            tags=[Tag(name=n) for n in ("schools", "pupils", "cards", "money", "representatives", "staff", "audit",
                                        "preorders", "building", "devices", "reports")],
        ),
        debug=False,
    )
    # every operation is behind auth_guard (the document's default security), but the device's enrolment
    finish_openapi(app, guarded=lambda _handler: True, guard_answers=(401, 403))
    return app
