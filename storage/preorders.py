"""Meal pre-orders: a pupil's order for a day and meal period, editable until
``preorder_lock_days`` days before that day in the school's time zone (the kitchen's list).

The lock rule (pure, ``is_editable``): a pre-order of ``day`` may be changed while
``day - today >= lock_days``, ``today`` being the school's local date at the request's clock
reading. With the default of 3, the pre-order of Thursday the 10th is editable up to the end
of Monday the 7th (local time) and locked from Tuesday 00:00.

A pupil's day holds at most ``protocol.limits.PREORDER_LINES_MAX`` lines, all meal periods
together (one line per period and product): that is all the till receives in PUPIL_INFO, and
a longer list would reach the cashier cut short.

One writer (``replace``) for every surface: the staff API (an officer) and the parents' pages
(a parent); each says the refusal (``PreorderRefused``) in its own words.
"""

from __future__ import annotations

from datetime import date, timedelta

import asyncpg
import msgspec

from protocol.limits import PREORDER_LINES_MAX

from .changes import notify

DEFAULT_LOCK_DAYS = 3  # school_policies.preorder_lock_days when the school has no policy row
QUANTITY_MAX = 20  # the CHECK of migration 0006
# One change is one meal period of one day, and the whole day may hold no more lines than the
# till receives (PUPIL_INFO), so one period may not either.
ITEMS_MAX = PREORDER_LINES_MAX
MS_PER_DAY = 86_400_000
EPOCH = date(1970, 1, 1)


# --- the lock rule (pure) ------------------------------------------------------------------------


def school_today(now_ms: int, utc_offset_minutes: int) -> date:
    """The local date at ``now_ms`` (Unix ms) in a zone ``utc_offset_minutes`` east of UTC."""
    return EPOCH + timedelta(days=(now_ms + utc_offset_minutes * 60_000) // MS_PER_DAY)


def last_editable_day(day: date, lock_days: int) -> date:
    """The last local date on which the pre-order of ``day`` may still be changed."""
    return day - timedelta(days=lock_days)


def is_editable(day: date, today: date, lock_days: int) -> bool:
    """Editable while ``day - today >= lock_days`` (exactly ``lock_days`` before is still editable)."""
    return (day - today).days >= lock_days


def editable_until_ms(day: date, lock_days: int, utc_offset_minutes: int) -> int:
    """The instant (Unix ms) the pre-order of ``day`` locks: the local midnight ending its last editable day."""
    local_midnight = (last_editable_day(day, lock_days) - EPOCH).days + 1
    return local_midnight * MS_PER_DAY - utc_offset_minutes * 60_000


# --- reading -------------------------------------------------------------------------------------


class SchoolContext(msgspec.Struct, frozen=True):
    utc_offset_minutes: int
    lock_days: int
    periods: tuple[str, ...]  # meal period names by start


async def school_context(conn: asyncpg.Connection | asyncpg.Pool, school_id: int) -> SchoolContext | None:
    """The school's zone, lock days and meal periods; None if there is no such school."""
    offset = await conn.fetchval("SELECT utc_offset_minutes FROM schools WHERE id = $1", school_id)
    if offset is None:
        return None
    lock_days = await conn.fetchval("SELECT preorder_lock_days FROM school_policies WHERE school_id = $1", school_id)
    periods = await conn.fetch(
        "SELECT name FROM meal_periods WHERE school_id = $1 ORDER BY starts_minute, name", school_id
    )
    return SchoolContext(offset, DEFAULT_LOCK_DAYS if lock_days is None else lock_days,
                         tuple(p["name"] for p in periods))


async def items(conn: asyncpg.Connection | asyncpg.Pool, account_id: int, day: date, period: str) -> list[dict[str, int]]:
    rows = await conn.fetch(
        "SELECT product_code, quantity FROM preorders WHERE account_id = $1 AND day = $2 AND period = $3 "
        "ORDER BY product_code",
        account_id, day, period,
    )
    return [{"product_code": r["product_code"], "quantity": r["quantity"]} for r in rows]


# --- writing -------------------------------------------------------------------------------------


class PreorderRefused(Exception):
    """Why a pre-order cannot be stored: ``reason`` is one of period, product, duplicate, quantity,
    locked, lines; ``field`` names the input; ``errors`` every item at fault (product, duplicate)."""

    def __init__(self, reason: str, field: str, message: str, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.reason, self.field, self.message, self.errors = reason, field, message, errors or []


async def replace(
    conn: asyncpg.Connection, account_id: int, school_id: int, day: date, period: str,
    lines: list[tuple[int, int]], *, actor: str, now_ms: int,
) -> tuple[list[dict[str, int]], list[dict[str, int]], SchoolContext]:
    """Replace the pupil's pre-order of one day and meal period (an empty list cancels it), inside
    the caller's transaction with the pupil row locked: (before, after, the school's context).
    PreorderRefused when the period, a product or a quantity is not valid, the day is locked, or
    the day would hold more lines than a till receives."""
    context = await school_context(conn, school_id)
    assert context is not None, f"school {school_id} of a pupil does not exist"
    if period not in context.periods:
        raise PreorderRefused("period", "period", f"not a meal period of school {school_id}; "
                                                  f"its periods: {', '.join(context.periods) or 'none'}")
    if len(lines) > ITEMS_MAX:
        raise PreorderRefused("lines", "items", f"at most {ITEMS_MAX} lines")
    codes = [code for code, _ in lines]
    known = {r["code"] for r in await conn.fetch(
        "SELECT code FROM products WHERE school_id = $1 AND code = ANY($2::int[])", school_id, codes)}
    seen: set[int] = set()
    errors = []
    for i, (code, quantity) in enumerate(lines):
        if code not in known:
            errors.append({"field": f"items[{i}].product_code", "reason": "product",
                           "message": f"unknown product {code} of school {school_id}", "source": "body"})
        elif code in seen:
            errors.append({"field": f"items[{i}].product_code", "reason": "duplicate",
                           "message": f"product {code} is listed twice", "source": "body"})
        elif not 1 <= quantity <= QUANTITY_MAX:
            errors.append({"field": f"items[{i}].quantity", "reason": "quantity",
                           "message": f"quantity must be 1..{QUANTITY_MAX}", "source": "body"})
        seen.add(code)
    if errors:
        first = errors[0]
        raise PreorderRefused(first["reason"], first["field"], first["message"],
                              [{k: v for k, v in e.items() if k != "reason"} for e in errors])
    today = school_today(now_ms, context.utc_offset_minutes)
    if not is_editable(day, today, context.lock_days):
        raise PreorderRefused("locked", "day", f"the pre-order of {day.isoformat()} {period} is locked")
    before = await items(conn, account_id, day, period)
    after = sorted(({"product_code": c, "quantity": q} for c, q in lines), key=lambda i: i["product_code"])
    if len(after) > len(before):
        # under the pupil row lock: no concurrent change of this pupil's day
        others = await conn.fetch(
            "SELECT period, count(*) AS n FROM preorders WHERE account_id = $1 AND day = $2 AND period <> $3 "
            "GROUP BY period ORDER BY period",
            account_id, day, period,
        )
        total = len(after) + sum(r["n"] for r in others)
        if total > PREORDER_LINES_MAX:
            counts = ", ".join([f"{r['period']} {r['n']}" for r in others] + [f"{period} {len(after)}"])
            raise PreorderRefused(
                "lines", "items",
                f"at most {PREORDER_LINES_MAX} pre-ordered lines per pupil and day (all meal periods together; "
                f"the till receives no more); {day.isoformat()} would hold {total} ({counts})",
            )
    if after != before:
        await conn.execute("DELETE FROM preorders WHERE account_id = $1 AND day = $2 AND period = $3",
                           account_id, day, period)
        await conn.executemany(
            "INSERT INTO preorders (account_id, day, period, product_code, quantity, updated_at_ms, updated_by) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(account_id, day, period, i["product_code"], i["quantity"], now_ms, actor) for i in after],
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, action, entity, before, after, at_ms)"
            " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
            actor, "preorder.cancel" if not after else "preorder.set", f"preorder:{account_id}:{day.isoformat()}:{period}",
            msgspec.json.encode({"items": before}).decode(), msgspec.json.encode({"items": after}).decode(), now_ms)
        await notify(conn, "account", str(account_id))
    return before, after, context
