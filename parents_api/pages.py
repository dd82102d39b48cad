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
import re
import secrets
import urllib.parse
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, AsyncIterator

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.params import Body, FromPath, Parameter
from litestar.response import Redirect, ServerSentEvent, Template

from ledger.rules import item_refusal
from ledger.state import Controls as LedgerControls
from ledger.state import Product as LedgerProduct
from protocol.codes import DenyReason
from storage import controls as controls_store
from storage import preorders as preorder_store
from storage import representatives as representative_store
from storage import parents

from . import config, views
from .api import ACCOUNT_ID_MAX
from .auth import Parent, normalize_email, normalize_phone, parent_of_token, send_code, sign_in, sign_out
from .errors import TooManyRequests, Unprocessable
from .payments_client import PaymentsClient, PaymentsUnavailable

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


async def own_child(request: Request, account_id: int) -> tuple[Parent, Any] | None:
    """The signed-in parent and one of their children (None: signed out). Another family's child
    is 404, the same answer as an account that does not exist."""
    parent = await page_parent(request)
    if parent is None:
        return None
    child = await parents.child(request.app.state.pool, parent.contact, account_id) \
        if 0 < account_id <= ACCOUNT_ID_MAX else None
    if child is None:
        raise NotFoundException(f"no child with account {account_id} among yours")
    return parent, child


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


# ---------------------------------------------------------------- limits and bans

# Why a till will refuse a product under the controls (the ledger's reasons), as a parent reads it.
REFUSALS_RU = {
    int(DenyReason.PRODUCT_BANNED): "запрещено вами",
    int(DenyReason.CATEGORY_BANNED): "запрещена категория",
    int(DenyReason.ALLERGEN_BLOCKED): "содержит аллерген",
    int(DenyReason.DIET_RESTRICTED): "не подходит для диеты",
    int(DenyReason.DAILY_LIMIT_EXCEEDED): "дороже дневного лимита",
}
KOPECKS_MAX = 100_000_000  # a limit above a million roubles is a typo, not a limit
ITEMS_PER_DAY_MAX = 1_000
NOTE_CHARS_MAX = 500
_RUBLES = re.compile(r"^\s*(\d{1,7})(?:[.,](\d{1,2}))?\s*(?:₽|р\.?|руб\.?)?\s*$")


def parse_rubles(text: str) -> int | None:
    """"150", "150,5", "150.50 ₽" -> kopecks; "" -> None; ValueError if it is not an amount."""
    if not text.strip():
        return None
    found = _RUBLES.match(text)
    if not found:
        raise ValueError(text)
    kopecks = int(found.group(1)) * 100 + int((found.group(2) or "0").ljust(2, "0"))
    if kopecks > KOPECKS_MAX:
        raise ValueError(text)
    return kopecks


def rubles_field(kopecks: int | None) -> str:
    if kopecks is None:
        return ""
    return f"{kopecks // 100}" if kopecks % 100 == 0 else f"{kopecks // 100},{kopecks % 100:02d}"


def controls_from_form(form: Any, current: controls_store.Controls) -> tuple[controls_store.Controls, dict[str, str]]:
    """The controls a parent submitted, and the fields' errors in Russian (empty when valid)."""
    errors: dict[str, str] = {}

    def amount(name: str) -> int | None:
        try:
            return parse_rubles(form.get(name, "") or "")
        except ValueError:
            errors[name] = "Введите сумму в рублях, например 150 или 150,50."
            return None

    daily = amount("daily_limit")
    periods = {}
    for period in controls_store.MEAL_PERIODS_RU:
        value = amount(f"limit_{period}")
        if value is not None:
            periods[period] = value
    items_text = (form.get("items_per_day_max", "") or "").strip()
    items = None
    if items_text:
        if items_text.isdigit() and int(items_text) <= ITEMS_PER_DAY_MAX:
            items = int(items_text)
        else:
            errors["items_per_day_max"] = f"Введите целое число от 0 до {ITEMS_PER_DAY_MAX}."
    codes = []
    for value in form.getall("banned_products", []):
        if value.isdigit() and len(value) <= 9:
            codes.append(int(value))
        else:
            errors["banned_products"] = "Неизвестный товар."
    allergens = [a for a in form.getall("blocked_allergens", []) if a in controls_store.ALLERGENS_RU]
    diet = [d for d in form.getall("required_diet", []) if d in controls_store.DIET_FLAGS_RU]
    categories = [c for c in form.getall("banned_categories", []) if 0 < len(c) <= 200]
    note = form.get("cashier_note", current.cashier_note) or ""
    if len(note) > NOTE_CHARS_MAX or any(ord(ch) < 32 and ch not in "\n\t" for ch in note):
        errors["cashier_note"] = f"Не больше {NOTE_CHARS_MAX} знаков, без служебных символов."
    return controls_store.Controls(
        daily_limit_kopecks=daily, period_limits_kopecks=periods, items_per_day_max=items,
        banned_products=sorted(set(codes)), banned_categories=sorted(set(categories)),
        blocked_allergens=sorted(set(allergens)), required_diet=sorted(set(diet)), cashier_note=note.strip(),
    ), errors


def preview(controls: controls_store.Controls, products: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every product of the school and whether a till will refuse it under ``controls``: the
    ledger's own rule for bans, categories, allergens and diet (``item_refusal``), then the price
    against the daily limit. (A period limit depends on what else is bought in that period: the
    page states it, the preview does not guess.)"""
    rule = LedgerControls(
        dict(controls.period_limits_kopecks), -1 if controls.items_per_day_max is None else controls.items_per_day_max,
        frozenset(controls.banned_products), frozenset(controls.banned_categories),
        frozenset(controls.blocked_allergens), frozenset(controls.required_diet), controls.cashier_note,
    )
    out = []
    for p in products:
        product = LedgerProduct(p["code"], p["category"], frozenset(p["allergens"]), frozenset(p["diet_flags"]),
                                p["hot_meal"])
        reason = item_refusal(rule, p["code"], product)
        if reason == int(DenyReason.OK) and controls.daily_limit_kopecks is not None \
                and p["price_kopecks"] > controls.daily_limit_kopecks:
            reason = int(DenyReason.DAILY_LIMIT_EXCEEDED)
        out.append({**p, "price": views.rubles(p["price_kopecks"]), "refused": reason != int(DenyReason.OK),
                    "why": REFUSALS_RU.get(reason, ""),
                    "allergens_ru": [controls_store.ALLERGENS_RU.get(a, a) for a in p["allergens"]],
                    "category_ru": controls_store.CATEGORIES_RU.get(p["category"], p["category"])})
    return out


class LimitsController(Controller):
    path = "/account/{account_id:int}/limits"
    include_in_schema = False

    async def _page(self, request: Request, child: Any, controls: controls_store.Controls, *, errors=None,
                    saved: bool = False, previewed: bool = False, status_code: int = 200) -> Template:
        products = await controls_store.school_products(request.app.state.pool, child["school_id"])
        categories = sorted({p["category"] for p in products} | set(controls.banned_categories))
        return Template("pages/limits.html", status_code=status_code, context={
            "child": child, "c": controls, "errors": errors or {}, "saved": saved, "previewed": previewed,
            "products": preview(controls, products), "rubles_field": rubles_field,
            "periods": controls_store.MEAL_PERIODS_RU, "allergens": controls_store.ALLERGENS_RU,
            "diets": controls_store.DIET_FLAGS_RU,
            "categories": [(c, controls_store.CATEGORIES_RU.get(c, c)) for c in categories],
        })

    @get("/")
    async def show(self, request: Request, account_id: FromPath[int], saved: bool = Parameter(default=False)) -> Template | Redirect:
        found = await own_child(request, account_id)
        if found is None:
            return _signed_out()
        return await self._page(request, found[1], await controls_store.load(request.app.state.pool, account_id),
                                saved=saved)

    @post("/")
    async def submit(self, request: Request, account_id: FromPath[int]) -> Template | Redirect:
        """``action=preview`` shows what the till will refuse; ``action=save`` stores the controls."""
        found = await own_child(request, account_id)
        if found is None:
            return _signed_out()
        parent, child = found
        form = await request.form()
        pool = request.app.state.pool
        current = await controls_store.load(pool, account_id)
        controls, errors = controls_from_form(form, current)
        if errors:
            return await self._page(request, child, controls, errors=errors, status_code=422)
        if form.get("action") != "save":
            return await self._page(request, child, controls, previewed=True)
        async with pool.acquire() as conn, conn.transaction():
            try:
                await controls_store.replace(conn, account_id, child["school_id"], controls,
                                             actor=f"parent:{parent.contact}", now_ms=request.app.state.settings.clock())
            except controls_store.UnknownProducts:
                return await self._page(request, child, controls, status_code=422,
                                        errors={"banned_products": "Такого товара в школе нет."})
        return Redirect(f"/account/{account_id}/limits?saved=true", status_code=303)


# ---------------------------------------------------------------- the calendar and the charts

HISTORY_MONTHS_BACK_MAX = 60  # five school years of calendar: older journal rows are archived anyway
CHART_WEEKS = 8  # the weekly spending chart: two months, the span a parent compares
MONTHS_RU = ("январь", "февраль", "март", "апрель", "май", "июнь", "июль", "август", "сентябрь", "октябрь",
             "ноябрь", "декабрь")
WEEKDAYS_RU = ("Пн", "Вт", "Ср", "Чт", "Пт", "Сб", "Вс")


def _local_midnight_ms(day: date, offset_minutes: int) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone(timedelta(minutes=offset_minutes))).timestamp()
               * 1000)


def _month_of(text: str, today: date) -> date | None:
    found = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not found or not 1 <= int(found.group(2)) <= 12:
        return None
    month = date(int(found.group(1)), int(found.group(2)), 1)
    earliest = date(today.year - HISTORY_MONTHS_BACK_MAX // 12, today.month, 1)
    return month if earliest <= month <= today.replace(day=1) else None


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _bars(values: list[tuple[str, int]]) -> list[dict[str, Any]]:
    top = max((v for _, v in values), default=0) or 1
    return [{"label": label, "kopecks": v, "rubles": views.rubles(v), "percent": round(100 * v / top, 1)}
            for label, v in values]


class HistoryController(Controller):
    path = "/account/{account_id:int}/history"
    include_in_schema = False

    @get("/")
    async def history(
        self, request: Request, account_id: FromPath[int],
        month: str = Parameter(default="", max_length=7), day: str = Parameter(default="", max_length=10),
    ) -> Template | Redirect:
        found = await own_child(request, account_id)
        if found is None:
            return _signed_out()
        pool = request.app.state.pool
        child = found[1]
        offset = child["utc_offset_minutes"]
        today = views.local_dt(request.app.state.settings.clock(), offset).date()
        shown_month = _month_of(month, today) if month else today.replace(day=1)
        if shown_month is None:
            raise Unprocessable("month", "expected YYYY-MM, not in the future nor more than five years back",
                                source="query")
        after = _next_month(shown_month)
        chosen = None
        if day:
            try:
                chosen = date.fromisoformat(day)
            except ValueError:
                chosen = None
            if chosen is None or not shown_month <= chosen < after or chosen > today:
                raise Unprocessable("day", "expected YYYY-MM-DD within the month shown, not in the future",
                                    source="query")
        elif shown_month <= today < after:
            chosen = today
        month_start, month_end = _local_midnight_ms(shown_month, offset), _local_midnight_ms(after, offset)
        marks = await views.active_days(pool, child, month_start, month_end)
        weeks, cursor = [], shown_month - timedelta(days=shown_month.weekday())
        while cursor < after:
            weeks.append([{"date": cursor + timedelta(days=i), "in_month": shown_month <= cursor + timedelta(days=i) < after,
                           "active": cursor + timedelta(days=i) in marks, "future": cursor + timedelta(days=i) > today}
                          for i in range(7)])
            cursor += timedelta(days=7)
        selected = None
        if chosen is not None:
            data = await views.day(pool, child, _local_midnight_ms(chosen, offset))
            selected = {"date": chosen, "passages": [{"time": p["local_time"], "entry": p["direction"] == "entry"}
                                                     for p in data["passages"]],
                        "meals": [{"time": m["local_time"], "cost": views.rubles(m["amount_kopecks"]),
                                   "free": m["free_meal"], "balance_after": views.rubles(m["balance_after_kopecks"]),
                                   "items": [_item_line(i) for i in m["items"]]} for m in data["meals"]]}
        # Spending: by week (the last CHART_WEEKS weeks to this one) and by category (the month shown).
        this_monday = today - timedelta(days=today.weekday())
        first_monday = this_monday - timedelta(weeks=CHART_WEEKS - 1)
        weekly_rows = await views.spending(pool, child, _local_midnight_ms(first_monday, offset),
                                           _local_midnight_ms(this_monday + timedelta(days=7), offset))
        weekly = {first_monday + timedelta(weeks=i): 0 for i in range(CHART_WEEKS)}
        for r in weekly_rows:
            weekly[r["date"] - timedelta(days=r["date"].weekday())] += r["amount_kopecks"]
        by_category: dict[str, int] = {}
        for r in await views.spending(pool, child, month_start, month_end):
            for category, kopecks in r["by_category"].items():
                by_category[category] = by_category.get(category, 0) + kopecks
        previous = date(shown_month.year - (shown_month.month == 1), (shown_month.month - 2) % 12 + 1, 1)
        return Template("pages/history.html", context={
            "child": child, "month": shown_month, "month_name": MONTHS_RU[shown_month.month - 1],
            "weekdays": WEEKDAYS_RU, "weeks": weeks, "selected": selected, "months_ru": MONTHS_RU,
            "previous": previous.strftime("%Y-%m") if _month_of(previous.strftime("%Y-%m"), today) else "",
            "next": after.strftime("%Y-%m") if after <= today else "",
            "weekly": _bars([(f"с {w.day:02d}.{w.month:02d}", v) for w, v in weekly.items()]),
            "categories": _bars(sorted(((controls_store.CATEGORIES_RU.get(c, c), v) for c, v in by_category.items()),
                                       key=lambda x: -x[1])),
        })


# ---------------------------------------------------------------- notices and the family


# What the notifier does with each plan (notifier.sms, said here for the page without importing the
# SMPP client into this process; tests/parents_api/test_parents_sms_settings.py checks they agree):
SMS_FREE_CHARS = 70  # notifier.sms.UCS2_SINGLE_UNITS: one UCS-2 SMS; a longer text is cut with "…"
SMS_PAID_PARTS_MAX = 6  # notifier.sms.SMS_PARTS_MAX: a paid message is joined from at most this many SMS
_CLOCK_TIME = re.compile(r"^\s*([01]?[0-9]|2[0-3]):([0-5][0-9])(?::[0-5][0-9])?\s*$")
_DAILY_CAP = re.compile(r"^\s*([0-9]{1,4})\s*$")
SMS_TIME_ERROR = "Введите время в формате ЧЧ:ММ, например 22:00."


def minute_of(text: str) -> int | None:
    """"07:30" (what an ``<input type=time>`` sends) -> 450; None if it is not a time of day."""
    found = _CLOCK_TIME.match(text)
    return int(found.group(1)) * 60 + int(found.group(2)) if found else None


def clock_time(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def sms_form(settings: representative_store.SmsSettings) -> dict[str, Any]:
    """The SMS form's fields for stored terms. No quiet hours (equal ends) shows the box unticked
    and the default hours, ready to be ticked."""
    default = representative_store.SmsSettings()
    quiet = settings.quiet_from_minute != settings.quiet_to_minute
    return {
        "plan": settings.plan, "daily_cap": str(settings.daily_cap), "quiet": quiet,
        "quiet_from": clock_time(settings.quiet_from_minute if quiet else default.quiet_from_minute),
        "quiet_to": clock_time(settings.quiet_to_minute if quiet else default.quiet_to_minute),
        "digest": settings.digest, "digest_time": clock_time(settings.digest_minute),
    }


def sms_terms_from_form(form: Any, rid: int, current: representative_store.SmsSettings
                        ) -> tuple[representative_store.SmsSettings | None, dict[str, Any], dict[str, str]]:
    """One representative's SMS terms as submitted (fields ``sms_<name>_<rid>``): the terms (None
    when a field is wrong), the form's values to show again, and the errors in Russian by field name."""
    def get(name: str) -> str:
        value = form.get(f"sms_{name}_{rid}", "")
        return value if isinstance(value, str) else ""

    shown: dict[str, Any] = {
        "plan": get("plan"), "daily_cap": get("daily_cap"), "quiet": get("quiet") == "on",
        "quiet_from": get("quiet_from"), "quiet_to": get("quiet_to"), "digest": get("digest") == "on",
        "digest_time": get("digest_time"),
    }
    errors: dict[str, str] = {}
    if shown["plan"] not in representative_store.SMS_PLANS:
        errors[f"sms_plan_{rid}"] = "Выберите тариф: бесплатный или платный."
    cap = _DAILY_CAP.match(shown["daily_cap"])
    daily_cap = int(cap.group(1)) if cap else -1
    if not 0 <= daily_cap <= representative_store.SMS_DAILY_CAP_MAX:
        errors[f"sms_daily_cap_{rid}"] = f"Введите число от 0 до {representative_store.SMS_DAILY_CAP_MAX}."
    quiet_from = quiet_to = 0  # equal ends: no quiet hours
    if shown["quiet"]:
        start, end = minute_of(shown["quiet_from"]), minute_of(shown["quiet_to"])
        if start is None:
            errors[f"sms_quiet_from_{rid}"] = SMS_TIME_ERROR
        if end is None:
            errors[f"sms_quiet_to_{rid}"] = SMS_TIME_ERROR
        if start is not None and end is not None:
            if start == end:
                errors[f"sms_quiet_to_{rid}"] = ("Начало и конец тихих часов совпадают: выберите разное время "
                                                 "или снимите отметку.")
            quiet_from, quiet_to = start, end
    digest_minute = minute_of(shown["digest_time"])
    if digest_minute is None:
        if shown["digest"]:
            errors[f"sms_digest_time_{rid}"] = SMS_TIME_ERROR
        digest_minute = current.digest_minute  # the time of a digest left off is kept as it was
    if errors:
        return None, shown, errors
    settings = representative_store.SmsSettings(
        plan=shown["plan"], daily_cap=daily_cap, quiet_from_minute=quiet_from, quiet_to_minute=quiet_to,
        digest=shown["digest"], digest_minute=digest_minute)
    assert representative_store.sms_settings_problem(settings) is None, settings  # the form's rules are the store's
    return settings, shown, {}


class NoticesController(Controller):
    path = "/account/notices"
    include_in_schema = False

    async def _page(self, request: Request, parent: Parent, *, saved: bool = False, error: str = "",
                    sms_saved: bool = False, sms_shown: dict[int, dict[str, Any]] | None = None,
                    sms_errors: dict[str, str] | None = None, status_code: int = 200) -> Template:
        pool = request.app.state.pool
        family = []
        for child in await parents.children(pool, parent.contact):
            family.append({"child": child["full_name"], "representatives": [
                {"full_name": r["full_name"], "relation": representative_store.RELATIONS_RU.get(r["relation"], r["relation"])}
                for r in await parents.representatives_of(pool, child["account_id"])]})
        rows = await parents.active_representatives(pool, parent.contact)
        sms = {r["id"]: (sms_shown or {}).get(r["id"]) or sms_form(await representative_store.sms_settings(pool, r["id"]))
               for r in rows}
        return Template("pages/notices.html", status_code=status_code, context={
            "rows": rows, "channels": representative_store.CHANNELS_RU, "kinds": representative_store.KINDS_RU,
            "family": family, "saved": saved, "error": error,
            "schools": {r["school_id"]: r["school_name"] for r in await parents.children(pool, parent.contact)},
            "sms": sms, "sms_saved": sms_saved, "sms_errors": sms_errors or {},
            "sms_free_chars": SMS_FREE_CHARS, "sms_paid_parts_max": SMS_PAID_PARTS_MAX,
            "sms_daily_cap_max": representative_store.SMS_DAILY_CAP_MAX,
        })

    @get("/")
    async def show(self, request: Request, saved: bool = Parameter(default=False),
                   sms_saved: bool = Parameter(default=False)) -> Template | Redirect:
        parent = await page_parent(request)
        if parent is None:
            return _signed_out()
        return await self._page(request, parent, saved=saved, sms_saved=sms_saved)

    @post("/sms")
    async def save_sms(self, request: Request) -> Template | Redirect:
        """Each of the parent's own applications: its SMS plan, daily cap, quiet hours and daily digest
        (storage.representatives' rules, audited as the API's PUT /me/representatives/{id}/sms)."""
        parent = await page_parent(request)
        if parent is None:
            return _signed_out()
        form = await request.form()
        pool = request.app.state.pool
        wanted: dict[int, representative_store.SmsSettings] = {}
        shown: dict[int, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for row in parent.representatives:  # only the caller's own rows: ids from the session, not the form
            rid = row["id"]
            settings, shown[rid], row_errors = sms_terms_from_form(
                form, rid, await representative_store.sms_settings(pool, rid))
            errors.update(row_errors)
            if settings is not None:
                wanted[rid] = settings
        if errors:
            return await self._page(request, parent, sms_shown=shown, sms_errors=errors, status_code=422)
        now = request.app.state.settings.clock()
        async with pool.acquire() as conn, conn.transaction():  # all the rows or none
            for rid, settings in wanted.items():
                if await representative_store.lock_active(conn, rid):  # suspended or removed meanwhile: skipped
                    await representative_store.change_sms_settings(conn, rid, settings,
                                                                   actor=f"parent:{parent.contact}", now_ms=now)
        return Redirect("/account/notices?sms_saved=true#sms", status_code=303)

    @post("/")
    async def save(self, request: Request) -> Template | Redirect:
        """Each of the parent's own applications: the channels and event kinds it wants."""
        parent = await page_parent(request)
        if parent is None:
            return _signed_out()
        form = await request.form()
        now = request.app.state.settings.clock()
        try:
            async with request.app.state.pool.acquire() as conn, conn.transaction():
                for row in parent.representatives:  # only the caller's own rows: ids from the session, not the form
                    rid = row["id"]
                    await representative_store.set_preferences(
                        conn, rid, form.getall(f"channels_{rid}", []), form.getall(f"kinds_{rid}", []),
                        actor=f"parent:{parent.contact}", now_ms=now)
        except ValueError as exc:  # nothing was stored: one transaction for all the rows
            field = str(exc).partition(":")[0]
            message = {
                "email": "Электронная почта не указана в заявлении: уведомления на почту подключает школа вместе "
                         "с адресом.",
                "channels": "Оставьте хотя бы один способ уведомлений (отказаться от всех можно через школу).",
                "kinds": "Оставьте хотя бы одно событие (отказаться от всех можно через школу).",
            }.get(field, "Выберите способы и события из списка.")
            return await self._page(request, parent, error=message, status_code=422)
        return Redirect("/account/notices?saved=true", status_code=303)


# ---------------------------------------------------------------- the menu and pre-orders

MENU_DAYS_AHEAD = 14  # two school weeks of menus and pre-orders: what a kitchen plans ahead
SCHOOL_WEEKDAYS = 5  # Monday to Friday
PREORDER_REFUSALS_RU = {
    "locked": "Заказ на этот день уже закрыт.",
    "lines": "Слишком много позиций на один день: касса получает не больше 16.",
    "quantity": "Количество — от 1 до 20.",
    "product": "Такого блюда нет в меню школы.",
    "duplicate": "Блюдо указано дважды.",
    "period": "Такого приёма пищи в школе нет.",
}


class MenuController(Controller):
    path = "/account/{account_id:int}/menu"
    include_in_schema = False

    async def _page(self, request: Request, child: Any, *, saved: bool = False, error: str = "",
                    status_code: int = 200) -> Template:
        pool = request.app.state.pool
        school_id, account_id = child["school_id"], child["account_id"]
        context = await preorder_store.school_context(pool, school_id)
        assert context is not None
        today = preorder_store.school_today(request.app.state.settings.clock(), context.utc_offset_minutes)
        days = [today + timedelta(days=i) for i in range(1, MENU_DAYS_AHEAD + 1)
                if (today + timedelta(days=i)).weekday() < SCHOOL_WEEKDAYS]
        catalogue = preview(await controls_store.load(pool, account_id),
                            await controls_store.school_products(pool, school_id))
        by_code = {p["code"]: p for p in catalogue}
        menus = await parents.menus(pool, school_id, days[0], days[-1]) if days else {}
        ordered = await parents.preorders(pool, account_id, days[0], days[-1]) if days else {}
        out = []
        for day in days:
            periods = []
            for period in context.periods:
                codes = menus.get((day, period))
                products = [by_code[c] for c in codes if c in by_code] if codes else catalogue
                quantities = ordered.get((day, period), {})
                periods.append({"period": period, "name": controls_store.MEAL_PERIODS_RU.get(period, period),
                                "published": bool(codes), "products": products, "quantities": quantities,
                                "total": views.rubles(sum(by_code[c]["price_kopecks"] * q for c, q in quantities.items()
                                                          if c in by_code))})
            editable = preorder_store.is_editable(day, today, context.lock_days)
            out.append({"day": day, "weekday": WEEKDAYS_RU[day.weekday()], "editable": editable,
                        "until": preorder_store.last_editable_day(day, context.lock_days), "periods": periods})
        return Template("pages/menu.html", status_code=status_code, context={
            "child": child, "days": out, "saved": saved, "error": error, "lock_days": context.lock_days,
            "quantity_max": preorder_store.QUANTITY_MAX})

    @get("/")
    async def show(self, request: Request, account_id: FromPath[int], saved: bool = Parameter(default=False)
                   ) -> Template | Redirect:
        found = await own_child(request, account_id)
        if found is None:
            return _signed_out()
        return await self._page(request, found[1], saved=saved)

    @post("/")
    async def order(self, request: Request, account_id: FromPath[int]) -> Template | Redirect:
        """One day and meal period: the quantity of each dish (0 or empty: none)."""
        found = await own_child(request, account_id)
        if found is None:
            return _signed_out()
        parent, child = found
        form = await request.form()
        try:
            day = date.fromisoformat(form.get("day", "") or "")
        except ValueError:
            return await self._page(request, child, error="Неизвестный день.", status_code=422)
        period = form.get("period", "") or ""
        lines = []
        for key, value in form.items():
            if not key.startswith("q_") or not (value or "").strip():
                continue
            code, quantity = key[2:], value.strip()
            if not code.isdigit() or not quantity.isdigit() or len(code) > 9 or len(quantity) > 3:
                return await self._page(request, child, error="Количество — целое число от 0 до 20.", status_code=422)
            if int(quantity):
                lines.append((int(code), int(quantity)))
        try:
            async with request.app.state.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT 1 FROM pupils WHERE account_id = $1 FOR UPDATE", child["account_id"])
                await preorder_store.replace(conn, child["account_id"], child["school_id"], day, period, lines,
                                             actor=f"parent:{parent.contact}", now_ms=request.app.state.settings.clock())
        except preorder_store.PreorderRefused as refused:
            return await self._page(request, child, error=PREORDER_REFUSALS_RU.get(refused.reason, refused.message),
                                    status_code=409 if refused.reason == "locked" else 422)
        return Redirect(f"/account/{child['account_id']}/menu?saved=true#d{day.isoformat()}", status_code=303)


# ---------------------------------------------------------------- card top-ups

TOPUP_KOPECKS_MIN = 100  # a rouble: below it a card payment costs more than it brings
TOPUP_KOPECKS_MAX = 1_500_000  # the payments service's own ceiling for one top-up (15,000 roubles)
STATUS_REFRESH_S = 2  # the return page looks again while the bank's answer is on its way
WEEKDAY_NAMES_RU = ("понедельник", "вторник", "среда", "четверг", "пятница", "суббота", "воскресенье")
PAYMENT_FAILURES_RU = {
    "canceled": "Оплата отменена.", "expired": "Время на оплату истекло.",
    "authentication_failed": "Платёж не подтверждён кодом банка.", "declined": "Банк отклонил платёж.",
}
PAYMENTS_DOWN_RU = "Оплата картой сейчас недоступна. Попробуйте позже."


class TopupController(Controller):
    path = "/account/{account_id:int}/topup"
    include_in_schema = False

    async def _child(self, request: Request, account_id: int) -> tuple[Parent, Any, str] | None:
        """The parent, the child and the session's token (the payments service checks it itself)."""
        found = await own_child(request, account_id)
        return None if found is None else (*found, request.cookies.get(SESSION_COOKIE, ""))

    async def _page(self, request: Request, child: Any, token: str, *, error: str = "", amount: str = "",
                    status_code: int = 200, saved: bool = False) -> Template:
        payments: PaymentsClient = request.app.state.payments
        cards, rule, available = [], None, True
        try:
            status, body = await payments.call("GET", "/saved-cards", token)
            cards = body.get("cards", []) if status == 200 else []
            status, rule = await payments.call("GET", f"/children/{child['account_id']}/auto-topup", token)
            rule = rule if status == 200 else None
        except PaymentsUnavailable:
            available = False
        return Template("pages/topup.html", status_code=status_code, context={
            "child": child, "error": error, "amount": amount, "available": available, "cards": cards, "rule": rule,
            "key": secrets.token_urlsafe(16), "saved": saved, "weekdays": WEEKDAY_NAMES_RU,
            "rubles": views.rubles, "rubles_field": rubles_field})

    @get("/")
    async def form(self, request: Request, account_id: FromPath[int], saved: bool = Parameter(default=False)
                   ) -> Template | Redirect:
        found = await self._child(request, account_id)
        if found is None:
            return _signed_out()
        return await self._page(request, found[1], found[2], saved=saved)

    @post("/")
    async def start(self, request: Request, account_id: FromPath[int]) -> Template | Redirect:
        """Start a top-up: the payments service asks the acquirer for a payment page; the parent goes there."""
        found = await self._child(request, account_id)
        if found is None:
            return _signed_out()
        _, child, token = found
        form = await request.form()
        text = form.get("amount", "") or ""
        try:
            amount = parse_rubles(text)
        except ValueError:
            amount = None
        if amount is None or not TOPUP_KOPECKS_MIN <= amount <= TOPUP_KOPECKS_MAX:
            return await self._page(request, child, token, amount=text, status_code=422, error=(
                f"Введите сумму от {TOPUP_KOPECKS_MIN // 100} до {TOPUP_KOPECKS_MAX // 100:,} ₽.".replace(",", " ")))
        key = (form.get("key", "") or "")[:64] or secrets.token_urlsafe(16)
        return_url = f"{request.app.state.settings.public_url}/account/{account_id}/topup/return"
        try:
            status, body = await request.app.state.payments.call(
                "POST", f"/children/{account_id}/topups", token, idempotency_key=key,
                json={"amount_kopecks": amount, "return_url": return_url, "save_card": form.get("save_card") == "on"})
        except PaymentsUnavailable:
            return await self._page(request, child, token, amount=text, status_code=503, error=PAYMENTS_DOWN_RU)
        if status != 201 or not str(body.get("confirmation_url", "")).startswith(("http://", "https://")):
            return await self._page(request, child, token, amount=text, status_code=502 if status >= 500 else 409,
                                    error="Не удалось начать оплату. Попробуйте ещё раз.")
        return Redirect(body["confirmation_url"], status_code=303)

    @get("/return")
    async def returned(self, request: Request, account_id: FromPath[int],
                       payment_id: str = Parameter(default="", max_length=200)) -> Template | Redirect:
        """Where the acquirer sends the parent back: the payment's outcome, looked up by the service."""
        found = await self._child(request, account_id)
        if found is None:
            return _signed_out()
        _, child, token = found
        outcome = {"state": "unknown"}
        try:
            status, body = await request.app.state.payments.call(
                "GET", f"/children/{account_id}/topups/{urllib.parse.quote(payment_id, safe='')}", token)
        except PaymentsUnavailable:
            status, body = 503, {}
        if status == 200:
            amount = views.rubles(body.get("amount_kopecks") or 0)
            if body.get("status") in ("failed", "canceled"):
                outcome = {"state": "failed", "text": PAYMENT_FAILURES_RU.get(body.get("failure"), "Оплата не прошла.")}
            elif body.get("credit") == "applied":
                outcome = {"state": "done", "text": f"Зачислено {amount}."}
            elif body.get("status") == "captured":
                outcome = {"state": "pending", "text": f"Оплата {amount} прошла, деньги поступают на счёт."}
            else:
                outcome = {"state": "pending", "text": "Ждём ответа банка…"}
        return Template("pages/topup_return.html", context={"child": child, "outcome": outcome,
                                                            "refresh_s": STATUS_REFRESH_S})

    @post("/auto")
    async def auto(self, request: Request, account_id: FromPath[int]) -> Template | Redirect:
        """Set (``action=save``) or switch off (``action=off``) the child's auto top-up with a saved card."""
        found = await self._child(request, account_id)
        if found is None:
            return _signed_out()
        _, child, token = found
        form = await request.form()
        payments: PaymentsClient = request.app.state.payments
        try:
            if form.get("action") == "off":
                status, _ = await payments.call("DELETE", f"/children/{account_id}/auto-topup", token)
            else:
                try:
                    amount = parse_rubles(form.get("auto_amount", "") or "")
                    threshold = parse_rubles(form.get("threshold", "") or "")
                except ValueError:
                    amount = threshold = None
                weekday = form.get("weekday", "") or ""
                card = form.get("card", "") or ""
                if not amount or not card.isdigit() or (threshold is None and not weekday.isdigit()):
                    return await self._page(request, child, token, status_code=422, error=(
                        "Выберите карту, сумму и условие: порог баланса или день недели."))
                status, _ = await payments.call("PUT", f"/children/{account_id}/auto-topup", token, json={
                    "saved_card_id": int(card), "amount_kopecks": amount, "threshold_kopecks": threshold,
                    "schedule_weekday": int(weekday) if weekday.isdigit() else None})
        except PaymentsUnavailable:
            return await self._page(request, child, token, status_code=503, error=PAYMENTS_DOWN_RU)
        if status not in (200, 201):
            return await self._page(request, child, token, status_code=422,
                                    error="Автопополнение не сохранено: проверьте сумму и условие.")
        return Redirect(f"/account/{account_id}/topup?saved=true", status_code=303)
