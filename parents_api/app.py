"""The Litestar application of the parents' API: pool, senders, routes, error shapes, OpenAPI."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import asyncpg
from litestar import Litestar, Router
from litestar.config.csrf import CSRFConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Tag

from . import config
from .api import ParentController
from .auth import AuthController, parent_guard
from .errors import (
    InputRefused,
    Unprocessable,
    database_input_handler,
    http_exception_handler,
    input_refused_handler,
    internal_error_handler,
    unprocessable_handler,
    validation_handler,
)
from .hardening import INT64_MAX, PathIds, StrictStructSchemaPlugin, finish_openapi, strict_input
from .payments_client import PaymentsClient
from .pages import (HistoryController, LimitsController, MenuController, NoticesController, PagesController,
                    TopupController)
from .senders import Senders
from .ussd import ussd

SCHEMA_PATH = "/schema"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# The JSON API authenticates with bearer tokens, never cookies: no CSRF check there. The pages'
# forms (sign-in, sign-out and everything after) carry the token.
CSRF_EXEMPT_PATHS = ["^/auth", "^/me", "^/children", "^/ussd", f"^{SCHEMA_PATH}"]
CSRF_COOKIE = "ecard_csrf"
SHUTDOWN_SENDS_WAIT_S = 10.0  # codes still being sent at shutdown get this long
# accounts.id is bigint: a child id beyond is no one's child (404, as any other not-yours id)
PATH_IDS = PathIds({"account_id": (INT64_MAX, "no child with account {} among yours"),  # api._not_found
                    "representative_id": (INT64_MAX, "no representative {} among yours")})  # api._representative_not_found


def create_app(settings: config.Settings, senders: Senders) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.senders = senders
        app.state.send_tasks = set()
        app.state.payments = PaymentsClient(settings.payments_url)
        app.state.pool = await asyncpg.create_pool(
            settings.dsn, min_size=config.POOL_SIZE_MIN, max_size=settings.pool_size_max,
            timeout=config.CONNECT_TIMEOUT_S,
            server_settings={"statement_timeout": str(config.STATEMENT_TIMEOUT_MS),
                             "application_name": "ecard-parents-api"},
        )
        try:
            yield
        finally:
            if app.state.send_tasks:
                await asyncio.wait(set(app.state.send_tasks), timeout=SHUTDOWN_SENDS_WAIT_S)
            await app.state.pool.close()
            await app.state.payments.close()

    # The personal account's pages are HTML forms for people, not part of the API's document.
    pages = Router(path="/", include_in_schema=False, route_handlers=[
        PagesController, LimitsController, HistoryController, NoticesController, MenuController, TopupController])
    app = Litestar(
        route_handlers=[AuthController, ParentController, ussd, pages],
        lifespan=[lifespan],
        before_request=strict_input(PATH_IDS),
        plugins=[StrictStructSchemaPlugin()],
        template_config=TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine),
        csrf_config=CSRFConfig(secret=settings.csrf_secret, cookie_name=CSRF_COOKIE, cookie_httponly=True,
                               cookie_samesite="lax", exclude=CSRF_EXEMPT_PATHS),
        exception_handlers={
            Unprocessable: unprocessable_handler,
            ValidationException: validation_handler,
            HTTPException: http_exception_handler,
            InputRefused: input_refused_handler,
            asyncpg.DataError: database_input_handler,
            Exception: internal_error_handler,
        },
        openapi_config=OpenAPIConfig(
            title="ecard parents' API",
            version="1.0.0",
            path=SCHEMA_PATH,
            description="For pupils' representatives (mobile app, Smart-TV app, portal): one-time codes, bearer "
            "tokens, children, balances, today's entries, exits and meals, history. Plus the USSD aggregator "
            "callback (*377*888#).",
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            tags=[Tag(name=n) for n in ("auth", "parents", "ussd")],
        ),
        debug=False,
    )
    # a bearer token where parent_guard stands; not-yours is 404, never 403 (parents_api.api)
    finish_openapi(app, guarded=lambda handler: parent_guard in handler.resolve_guards(), guard_answers=(401,),
                   security=[{"bearer": []}])
    return app
