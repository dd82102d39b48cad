"""The parents' personal account: pages in Russian, server-rendered, mobile-first, accessible.

    GET  /               sign-in: a phone or an e-mail (or on to /account when signed in)
    POST /signin         a one-time code goes to that contact, then the code form
    GET  /signin/code    the code form
    POST /signin/code    the code checked: a server-side session, then /account
    POST /signout        the session ends (its row is revoked), the cookie goes
    GET  /account        every child: balance, today's entries and exits, meals (items, cost,
                         balance after)
    GET  /tv             the Smart-TV view of the family: large type, arrow keys between children,
                         updated live from /tv/stream when a tap arrives
    GET  /tv/stream      server-sent events: the family's panel again whenever it changed

The same one-time codes and sessions as the apps' JSON API (``auth.send_code``, ``auth.sign_in``:
one definition): a page session is a parent_sessions row whose token sits in an HttpOnly,
SameSite=Lax cookie. Every form carries Litestar's CSRF token (a cookie and a hidden field that
must match). What a parent reads is shaped by ``views`` as for the apps.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, AsyncIterator

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body, Parameter
from litestar.response import Redirect, ServerSentEvent, Template

from storage import parents

from . import config, views
from .auth import Parent, normalize_email, normalize_phone, parent_of_token, send_code, sign_in, sign_out
from .errors import TooManyRequests, Unprocessable

SESSION_COOKIE = "ecard_session"
# The TV view asks the database whether the family's day changed this often: a tap shows within
# about a second, and one small query a second per open TV is nothing for PostgreSQL.
TV_POLL_INTERVAL_MS = 1_000
# One event stream lasts at most this long; the browser's EventSource reconnects by itself, and a
# revoked session or a suspended representative is noticed at the next poll anyway.
TV_STREAM_MS_MAX = 3_600_000
CONTACT_CHARS_MAX = 254
CODE_CHARS_MAX = 16


class SignInForm(msgspec.Struct):
    contact: Annotated[str, msgspec.Meta(max_length=CONTACT_CHARS_MAX)] = ""


class CodeForm(msgspec.Struct):
    contact: Annotated[str, msgspec.Meta(max_length=CONTACT_CHARS_MAX)] = ""
    code: Annotated[str, msgspec.Meta(max_length=CODE_CHARS_MAX)] = ""


def contact_of_text(text: str) -> tuple[str, str, str] | None:
    """(contact key, channel, address) of what a parent typed: an e-mail if it has an @, else a
    Russian mobile number; None if it is neither."""
    if "@" in text:
        email = normalize_email(text)
        return (parents.email_contact(email), "email", email) if email else None
    phone = normalize_phone(text)
    return (parents.phone_contact(phone), "sms", phone) if phone else None


async def page_parent(request: Request) -> Parent | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    try:
        return await parent_of_token(request.app, token)
    except NotAuthorizedException:
        return None


def _signed_out() -> Redirect:
    redirect = Redirect("/", status_code=303)
    redirect.cookies.append(Cookie(key=SESSION_COOKIE, value="", max_age=0, httponly=True, samesite="lax", path="/"))
    return redirect


async def family(request: Request, parent: Parent) -> list[dict[str, Any]]:
    """Every child of the signed-in parent with today's entries, exits and meals, ready to show."""
    pool = request.app.state.pool
    now = request.app.state.settings.clock()
    out = []
    for child in await parents.children(pool, parent.contact):
        today = await views.today(pool, child, now)
        out.append({
            "account_id": child["account_id"],
            "full_name": child["full_name"],
            "class_name": child["class_name"] or (f"{child['grade']} класс" if child["grade"] else ""),
            "school_name": child["school_name"],
            "balance": views.rubles(child["balance_kopecks"]),
            "balance_kopecks": child["balance_kopecks"],
            "blocked": child["account_status"] != 0,
            "day": today["day"],
            "passages": [{"time": p["local_time"], "entry": p["direction"] == "entry"} for p in today["passages"]],
            "meals": [
                {"time": m["local_time"], "cost": views.rubles(m["amount_kopecks"]), "free": m["free_meal"],
                 "balance_after": views.rubles(m["balance_after_kopecks"]),
                 "items": [_item_line(i) for i in m["items"]]}
                for m in today["meals"]
            ],
        })
    return out


def _item_line(item: dict[str, Any]) -> str:
    name = item["name"] or f"Товар {item['product_code']}"
    return name if item["quantity"] == 1 else f"{name} × {item['quantity']}"


def _fingerprint(children: list[dict[str, Any]]) -> str:
    return json.dumps(children, ensure_ascii=False, sort_keys=True)


class PagesController(Controller):
    path = "/"
    include_in_schema = False

    @get("/")
    async def home(self, request: Request) -> Template | Redirect:
        if await page_parent(request) is not None:
            return Redirect("/account", status_code=303)
        return Template("pages/signin.html", context={"contact": "", "error": ""})

    @post("/signin")
    async def signin(
        self, request: Request, data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
    ) -> Template | Redirect:
        found = contact_of_text(data.contact)
        if found is None:
            return Template("pages/signin.html", status_code=422, context={
                "contact": data.contact, "error": "Введите номер мобильного телефона (+7…) или адрес электронной почты."})
        try:
            await send_code(request.app.state, *found)
        except TooManyRequests as exc:
            return Template("pages/signin.html", status_code=429, headers={"Retry-After": str(exc.retry_after_s)},
                            context={"contact": data.contact, "error": "Слишком много кодов за час. "
                                     f"Попробуйте снова через {max(1, exc.retry_after_s // 60)} мин."})
        return Template("pages/code.html", context={"contact": found[2], "error": "",
                                                    "minutes": request.app.state.settings.otp_ttl_ms // 60_000})

    @get("/signin/code")
    async def code_form(
        self, request: Request, contact: str = Parameter(default="", max_length=CONTACT_CHARS_MAX)
    ) -> Template:
        return Template("pages/code.html", context={"contact": contact, "error": "",
                                                    "minutes": request.app.state.settings.otp_ttl_ms // 60_000})

    @post("/signin/code")
    async def check_code(
        self, request: Request, data: Annotated[CodeForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
    ) -> Template | Redirect:
        found = contact_of_text(data.contact)
        settings: config.Settings = request.app.state.settings
        context = {"contact": data.contact, "minutes": settings.otp_ttl_ms // 60_000}
        if found is None:
            return Template("pages/signin.html", status_code=422, context={**context, "error": "Введите телефон или почту заново."})
        try:
            issued = await sign_in(request.app.state, found[0], data.code.strip())
        except Unprocessable:
            return Template("pages/code.html", status_code=422, context={**context, "error": "Код — это 6 цифр."})
        except NotAuthorizedException:
            return Template("pages/code.html", status_code=401, context={
                **context, "error": "Код неверный, устарел или уже использован. Проверьте его или запросите новый."})
        redirect = Redirect("/account", status_code=303)
        redirect.cookies.append(Cookie(key=SESSION_COOKIE, value=issued.token, httponly=True, samesite="lax", path="/",
                                       max_age=max(1, (issued.expires_at_ms - settings.clock()) // 1000)))
        return redirect

    @post("/signout")
    async def signout(self, request: Request) -> Redirect:
        parent = await page_parent(request)
        if parent is not None:
            await sign_out(request.app.state, parent)
        return _signed_out()

    @get("/account")
    async def account(self, request: Request) -> Template | Redirect:
        parent = await page_parent(request)
        if parent is None:
            return _signed_out()
        children = await family(request, parent)
        return Template("pages/account.html", context={"children": children, "name": parent.representatives[0]["full_name"]})

    @get("/tv")
    async def tv(self, request: Request) -> Template | Redirect:
        parent = await page_parent(request)
        if parent is None:
            return _signed_out()
        return Template("pages/tv.html", context={"children": await family(request, parent)})

    @get("/tv/stream")
    async def tv_stream(self, request: Request) -> ServerSentEvent | Response:
        parent = await page_parent(request)
        if parent is None:
            return Response({"status_code": 401, "detail": "sign in first"}, status_code=401)
        engine = request.app.template_engine
        panel = engine.get_template("pages/_tv_panel.html")

        async def updates() -> AsyncIterator[str]:
            seen = ""
            clock = request.app.state.settings.clock
            until = clock() + TV_STREAM_MS_MAX
            while clock() < until:
                try:
                    current = await parent_of_token(request.app, request.cookies.get(SESSION_COOKIE, ""))
                except NotAuthorizedException:
                    return  # signed out or suspended: the stream ends
                children = await family(request, current)
                mark = _fingerprint(children)
                if mark != seen:
                    seen = mark
                    yield json.dumps({"html": panel.render(children=children)}, ensure_ascii=False)
                await asyncio.sleep(TV_POLL_INTERVAL_MS / 1000)

        return ServerSentEvent(updates(), event_type="family")
