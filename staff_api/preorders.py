"""Meal pre-orders: a pupil's order for a day and meal period, editable until
``preorder_lock_days`` days before that day in the school's time zone; the kitchen's list.

The lock rule (pure, see ``is_editable``): a pre-order of ``day`` may be changed while
``day - today >= lock_days``, ``today`` being the school's local date at the request's clock
reading. With the default of 3, the pre-order of Thursday the 10th is editable up to the end
of Monday the 7th (local time) and locked from Tuesday 00:00.

A pupil's day holds at most ``protocol.limits.PREORDER_LINES_MAX`` lines, all meal periods
together (one line per period and product): that is all the till receives in PUPIL_INFO, and
a longer list would reach the cashier cut short.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

import asyncpg
from litestar import Controller, get, put
from litestar.params import FromPath, JSONBody, QueryParameter
from msgspec import Meta

from storage import preorders as preorder_store
from storage.preorders import (  # the rule is storage's (one definition for the staff API and the parents' pages)
    DEFAULT_LOCK_DAYS, ITEMS_MAX, QUANTITY_MAX, editable_until_ms, is_editable, last_editable_day, school_today,
)

from . import db
from .auth import PrincipalDep
from .errors import Conflict, Unprocessable, answers, invalid, refuse
from .refusals import Refusal
from .schemas import Base, DayPath

WRITERS = ("operator", "officer")
RANGE_DAYS_MAX = 366
DEFAULT_RANGE_DAYS = 31


def _zone(utc_offset_minutes: int) -> str:
    sign = "+" if utc_offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(utc_offset_minutes), 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"


def locked(day: date, period: str, today: date, lock_days: int, utc_offset_minutes: int) -> Conflict:
    last = last_editable_day(day, lock_days)
    return refuse(Conflict, Refusal.PREORDER_LOCKED, day=day.isoformat(), period=period, last_day=last.isoformat(),
                  next_day=(last + timedelta(days=1)).isoformat(), zone=_zone(utc_offset_minutes),
                  lock_days=lock_days, today=today.isoformat())


def parse_day(text: str) -> date:
    """A path's ``YYYY-MM-DD``, or 422 naming ``day`` (a typed path would answer 404)."""
    try:
        if len(text) != 10 or text[4] != "-" or text[7] != "-":
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise invalid("day", Refusal.DAY_INVALID, source="path", day=text) from None


# --- bodies ------------------------------------------------------------------------------------------


class PreorderItem(Base):
    product_code: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    quantity: Annotated[int, Meta(ge=1, le=QUANTITY_MAX)]


class PreorderBody(Base):
    items: Annotated[list[PreorderItem], Meta(max_length=ITEMS_MAX)]


class PreorderItemOut(Base):
    product_code: int
    quantity: int
    name: str
    price_kopecks: int


class PreorderOut(Base):
    account_id: int
    day: str
    period: str
    items: list[PreorderItemOut]
    updated_at_ms: int | None
    updated_by: str | None
    editable: bool
    editable_until_ms: int  # the instant it locks (or locked)


class PupilPreorders(Base):
    account_id: int
    school_id: int
    today: str  # the school's local date at the request
    preorder_lock_days: int
    preorders: list[PreorderOut]  # by day, then meal period start


class KitchenTotal(Base):
    product_code: int
    name: str
    quantity: int


class KitchenPupilItem(Base):
    product_code: int
    quantity: int


class KitchenPupil(Base):
    account_id: int
    full_name: str
    class_name: str
    items: list[KitchenPupilItem]


class KitchenPeriod(Base):
    period: str
    totals: list[KitchenTotal]  # by product code
    pupils: list[KitchenPupil]  # by class, then name


class KitchenList(Base):
    school_id: int
    day: str
    final: bool  # locked: nobody can change it any more
    editable_until_ms: int
    periods: list[KitchenPeriod]  # by meal period start


# --- database helpers --------------------------------------------------------------------------------


async def _school_context(conn: asyncpg.Connection, school_id: int) -> tuple[int, int, list[str]]:
    """(utc_offset_minutes, lock_days, meal period names by start); 404 for no such school."""
    await db.school_row(conn, school_id)
    context = await preorder_store.school_context(conn, school_id)
    assert context is not None
    return context.utc_offset_minutes, context.lock_days, list(context.periods)


def _period_order(periods: list[str]) -> Any:
    rank = {name: i for i, name in enumerate(periods)}
    return lambda name: (rank.get(name, len(rank)), name)


async def _products(conn: asyncpg.Connection, school_id: int, codes: list[int]) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT code, name, price_kopecks FROM products WHERE school_id = $1 AND code = ANY($2::int[])",
        school_id, codes,
    )
    return {r["code"]: r for r in rows}


def _item_out(code: int, quantity: int, products: dict[int, asyncpg.Record]) -> PreorderItemOut:
    p = products.get(code)
    return PreorderItemOut(product_code=code, quantity=quantity, name=p["name"] if p else "",
                           price_kopecks=p["price_kopecks"] if p else 0)


# --- resources ---------------------------------------------------------------------------------------


class PreorderController(Controller):
    tags = ["preorders"]

    @put("/pupils/{account_id:int}/preorders/{day:str}/{period:str}", opt=answers(409))
    async def put_preorder(
        self, account_id: FromPath[int], day: DayPath, period: FromPath[str], data: JSONBody[PreorderBody],
        principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
    ) -> PreorderOut:
        """Replace the pupil's pre-order of one day and meal period (an empty list cancels it).

        Editable while ``day - today >= preorder_lock_days`` (school time zone); later it is 409.
        """
        principal.require(*WRITERS, action="change pre-orders")
        on = parse_day(day)
        async with pool.acquire() as conn, conn.transaction():
            # the pupil row lock serializes concurrent changes of one pupil's pre-orders
            school_id = await db.pupil_school(conn, account_id, for_update=True)
            principal.require_own(school_id, db.pupil_not_found(account_id))
            try:
                _, after, context = await preorder_store.replace(
                    conn, account_id, school_id, on, period, [(i.product_code, i.quantity) for i in data.items],
                    actor=principal.login, now_ms=now_ms)
            except preorder_store.PreorderRefused as refused:
                if refused.reason == "locked":
                    offset, lock_days, _ = await _school_context(conn, school_id)
                    raise locked(on, period, school_today(now_ms, offset), lock_days, offset) from None
                raise Unprocessable(refused.field, refused.message, errors=refused.errors or None,
                                    **({"source": "path"} if refused.field == "period" else {})) from None
            offset, lock_days = context.utc_offset_minutes, context.lock_days
            products = await _products(conn, school_id, [i["product_code"] for i in after])
            stamp = await conn.fetchrow(
                "SELECT max(updated_at_ms) AS at, max(updated_by) AS by FROM preorders "
                "WHERE account_id = $1 AND day = $2 AND period = $3",
                account_id, on, period,
            )
        return PreorderOut(
            account_id=account_id, day=on.isoformat(), period=period,
            items=[_item_out(i["product_code"], i["quantity"], products) for i in after],
            updated_at_ms=stamp["at"], updated_by=stamp["by"], editable=True,
            editable_until_ms=editable_until_ms(on, lock_days, offset),
        )

    @get("/pupils/{account_id:int}/preorders")
    async def list_preorders(
        self, account_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
        from_day: Annotated[date | None, QueryParameter(
            name="from", description="first day, YYYY-MM-DD (default: today at the school)")] = None,
        to_day: Annotated[date | None, QueryParameter(
            name="to", description=f"last day, inclusive (default: from + {DEFAULT_RANGE_DAYS - 1} days)")] = None,
    ) -> PupilPreorders:
        """The pupil's pre-orders of the days ``from``..``to`` (at most 366 days)."""
        async with pool.acquire() as conn:
            school_id = await db.pupil_school(conn, account_id)
            principal.require_own(school_id, db.pupil_not_found(account_id))
            offset, lock_days, periods = await _school_context(conn, school_id)
            today = school_today(now_ms, offset)
            first = from_day or today
            last = to_day or first + timedelta(days=DEFAULT_RANGE_DAYS - 1)
            if last < first:
                raise invalid("to", Refusal.RANGE_TO_BEFORE_FROM, source="query", first_day=first.isoformat())
            if (last - first).days >= RANGE_DAYS_MAX:
                raise invalid("to", Refusal.RANGE_TOO_LONG, source="query", days_max=RANGE_DAYS_MAX,
                              first_day=first.isoformat())
            rows = await conn.fetch(
                "SELECT day, period, product_code, quantity, updated_at_ms, updated_by FROM preorders "
                "WHERE account_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, period, product_code",
                account_id, first, last,
            )
            products = await _products(conn, school_id, sorted({r["product_code"] for r in rows}))
        groups: dict[tuple[date, str], list[asyncpg.Record]] = {}
        for r in rows:
            groups.setdefault((r["day"], r["period"]), []).append(r)
        order = _period_order(periods)
        out = []
        for (day, period) in sorted(groups, key=lambda k: (k[0], order(k[1]))):
            g = groups[(day, period)]
            out.append(PreorderOut(
                account_id=account_id, day=day.isoformat(), period=period,
                items=[_item_out(r["product_code"], r["quantity"], products) for r in g],
                updated_at_ms=max(r["updated_at_ms"] for r in g), updated_by=g[0]["updated_by"],
                editable=is_editable(day, today, lock_days),
                editable_until_ms=editable_until_ms(day, lock_days, offset),
            ))
        return PupilPreorders(account_id=account_id, school_id=school_id, today=today.isoformat(),
                              preorder_lock_days=lock_days, preorders=out)

    @get("/schools/{school_id:int}/preorders/{day:str}")
    async def kitchen_list(
        self, school_id: FromPath[int], day: DayPath, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
    ) -> KitchenList:
        """The kitchen's list of one day: totals per meal period and product, and each pupil's order."""
        principal.require_school(school_id, f"school {school_id}")
        on = parse_day(day)
        async with pool.acquire() as conn:
            offset, lock_days, periods = await _school_context(conn, school_id)
            rows = await conn.fetch(
                """
                SELECT o.period, o.account_id, o.product_code, o.quantity, p.full_name, p.class_name
                FROM preorders o JOIN pupils p ON p.account_id = o.account_id
                WHERE o.day = $1 AND p.school_id = $2
                ORDER BY o.period, p.class_name, p.full_name, o.account_id, o.product_code
                """,
                on, school_id,
            )
            products = await _products(conn, school_id, sorted({r["product_code"] for r in rows}))
        by_period: dict[str, list[asyncpg.Record]] = {}
        for r in rows:
            by_period.setdefault(r["period"], []).append(r)
        out = []
        for period in sorted(by_period, key=_period_order(periods)):
            totals: dict[int, int] = {}
            pupils: dict[int, KitchenPupil] = {}
            for r in by_period[period]:
                totals[r["product_code"]] = totals.get(r["product_code"], 0) + r["quantity"]
                pupil = pupils.get(r["account_id"])
                if pupil is None:
                    pupil = pupils[r["account_id"]] = KitchenPupil(
                        account_id=r["account_id"], full_name=r["full_name"], class_name=r["class_name"], items=[])
                pupil.items.append(KitchenPupilItem(product_code=r["product_code"], quantity=r["quantity"]))
            out.append(KitchenPeriod(
                period=period,
                totals=[KitchenTotal(product_code=c, name=products[c]["name"] if c in products else "", quantity=q)
                        for c, q in sorted(totals.items())],
                pupils=list(pupils.values()),
            ))
        today = school_today(now_ms, offset)
        return KitchenList(school_id=school_id, day=on.isoformat(), final=not is_editable(on, today, lock_days),
                           editable_until_ms=editable_until_ms(on, lock_days, offset), periods=out)
