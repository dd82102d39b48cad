"""The auditor's day of one school: sales by till and by product, free meals served (counts only:
who eats free is nobody's business), cash taken at the tills and at the office desk (with who took
it), refunds and corrections.

Read from the journal (what was decided, with its reader time) over the school's local day; the
money side of each row says what it was: a sale credits the school's revenue account and debits
the pupil (paid) or the school's free-meal budget (free); a refund is the reverse of a sale; a
correction moves money between a pupil and the operator's corrections account; cash at the office
desk moves from the school's desk drawer to the pupil.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import msgspec

from ledger.codes import AccountKind, JournalKind
from protocol.items import decode_items

# A day of one school is a few thousand sales; past this many rows a report is not a day's.
REPORT_ROWS_MAX = 200_000


class ProductLine(msgspec.Struct):
    product_code: int
    name: str
    quantity: int
    amount_kopecks: int


class TillLine(msgspec.Struct):
    device_id: int
    sales: int
    amount_kopecks: int
    cash_topups: int
    cash_kopecks: int


class MoneyLine(msgspec.Struct):
    kind: str  # refund | correction | desk_cash
    at_ms: int
    account_id: int
    amount_kopecks: int  # signed, as the pupil sees it
    requested_by: str
    reason: str  # a correction's reason; a refund's original sale "device:txn"; "" for desk cash


class DailyReport(msgspec.Struct):
    school_id: int
    day: str
    sales: int
    sales_kopecks: int
    paid_sales: int
    paid_kopecks: int
    free_meals: int  # counts only
    free_meals_kopecks: int
    cash_topups: int  # at the tills and at the desk
    cash_kopecks: int
    desk_cash_topups: int  # of them, at the office desk (each also a money line: who took it)
    desk_cash_kopecks: int
    refunds_kopecks: int
    corrections_kopecks: int
    by_till: list[TillLine]
    by_product: list[ProductLine]
    free_by_product: list[ProductLine]  # counts of free meals by dish, no names
    money: list[MoneyLine]


def day_bounds_ms(day: date, utc_offset_minutes: int) -> tuple[int, int]:
    zone = timezone(timedelta(minutes=utc_offset_minutes))
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


async def daily(conn: asyncpg.Connection, school_id: int, day: date) -> DailyReport | None:
    """The report of ``day`` (school-local) of one school; None if there is no such school."""
    school = await conn.fetchrow("SELECT utc_offset_minutes FROM schools WHERE id = $1", school_id)
    if school is None:
        return None
    start, end = day_bounds_ms(day, school["utc_offset_minutes"])
    accounts = {r["kind"]: r["id"] for r in await conn.fetch(
        "SELECT id, kind FROM accounts WHERE school_id = $1 AND kind = ANY($2::smallint[])",
        school_id, [int(AccountKind.REVENUE), int(AccountKind.FREE_MEALS), int(AccountKind.DESK_DRAWER)])}
    revenue, free_budget = accounts.get(int(AccountKind.REVENUE), -1), accounts.get(int(AccountKind.FREE_MEALS), -1)
    desk = accounts.get(int(AccountKind.DESK_DRAWER), -1)
    rows = await conn.fetch(
        """
        SELECT j.device_id, j.device_txn, j.kind, j.account_id, j.debit_account_id, j.credit_account_id,
               j.amount_kopecks, coalesce(j.happened_at_ms, j.decided_at_ms) AS at_ms, j.items,
               c.requested_by, c.payload
        FROM journal j
        LEFT JOIN commands c ON j.device_id = 0 AND c.seq = j.device_txn
        WHERE coalesce(j.happened_at_ms, j.decided_at_ms) >= $1 AND coalesce(j.happened_at_ms, j.decided_at_ms) < $2
          AND j.decided_at_ms >= $1 - 300000
          AND (j.credit_account_id = $3 OR j.debit_account_id = $3 OR j.debit_account_id = $4
               OR j.debit_account_id = $9
               OR (j.kind = $5 AND j.device_id IN (SELECT id FROM devices WHERE school_id = $6))
               OR (j.kind = $7 AND j.account_id IN (SELECT account_id FROM pupils WHERE school_id = $6)))
        ORDER BY at_ms, j.device_id, j.device_txn
        LIMIT $8
        """,
        start, end, revenue, free_budget, int(JournalKind.CASH_TOPUP), school_id, int(JournalKind.CORRECTION),
        REPORT_ROWS_MAX, desk,
    )
    names = {r["code"]: r["name"] for r in await conn.fetch("SELECT code, name FROM products WHERE school_id = $1",
                                                            school_id)}
    tills: dict[int, TillLine] = {}
    products: dict[int, ProductLine] = {}
    free_products: dict[int, ProductLine] = {}
    report = DailyReport(school_id, day.isoformat(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, [], [], [], [])
    for r in rows:
        kind, amount = r["kind"], r["amount_kopecks"]
        if kind == JournalKind.PURCHASE and r["credit_account_id"] == revenue:
            till = tills.setdefault(r["device_id"], TillLine(r["device_id"], 0, 0, 0, 0))
            till.sales += 1
            till.amount_kopecks += amount
            report.sales += 1
            report.sales_kopecks += amount
            free = r["debit_account_id"] == free_budget
            if free:
                report.free_meals += 1
                report.free_meals_kopecks += amount
            else:
                report.paid_sales += 1
                report.paid_kopecks += amount
            for code, quantity, price in decode_items(r["items"]) or []:
                for table in (products, free_products) if free else (products,):
                    line = table.setdefault(code, ProductLine(code, names.get(code, f"товар {code}"), 0, 0))
                    line.quantity += quantity
                    line.amount_kopecks += quantity * price
        elif kind == JournalKind.CASH_TOPUP:
            till = tills.setdefault(r["device_id"], TillLine(r["device_id"], 0, 0, 0, 0))
            till.cash_topups += 1
            till.cash_kopecks += amount
            report.cash_topups += 1
            report.cash_kopecks += amount
        elif kind == JournalKind.DESK_CASH_TOPUP and r["debit_account_id"] == desk:
            report.cash_topups += 1
            report.cash_kopecks += amount
            report.desk_cash_topups += 1
            report.desk_cash_kopecks += amount
            report.money.append(MoneyLine("desk_cash", r["at_ms"], r["account_id"], amount, r["requested_by"] or "",
                                          ""))
        elif kind == JournalKind.REFUND and r["debit_account_id"] == revenue:
            payload: Any = r["payload"]
            payload = msgspec.json.decode(payload) if isinstance(payload, (str, bytes)) else (payload or {})
            report.refunds_kopecks += amount
            report.money.append(MoneyLine("refund", r["at_ms"], r["account_id"], amount, r["requested_by"] or "",
                                          f"{payload.get('device_id')}:{payload.get('device_txn')}"))
        elif kind == JournalKind.CORRECTION:
            payload = r["payload"]
            payload = msgspec.json.decode(payload) if isinstance(payload, (str, bytes)) else (payload or {})
            signed = amount if r["credit_account_id"] == r["account_id"] else -amount
            report.corrections_kopecks += signed
            report.money.append(MoneyLine("correction", r["at_ms"], r["account_id"], signed, r["requested_by"] or "",
                                          str(payload.get("reason", ""))))
    report.by_till = sorted(tills.values(), key=lambda t: t.device_id)
    report.by_product = sorted(products.values(), key=lambda p: p.product_code)
    report.free_by_product = sorted(free_products.values(), key=lambda p: p.product_code)
    return report
