"""What a parent reads, shaped from the journal: today's passages and meals, the history.

Journal rows are read through ``storage.parents`` as ``ledger.records.JournalRow``; kinds
are ``ledger.codes.JournalKind``, directions ``protocol.codes.Direction``, basket lines
``protocol.items.decode_items``. Times are shown in the school's local time
(``schools.utc_offset_minutes``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from ledger.codes import IdentifierKind, JournalKind
from protocol.codes import Direction
from protocol.items import decode_items
from storage import parents

MS_PER_DAY = 86_400_000


def local_day_bounds(now_ms: int, utc_offset_minutes: int) -> tuple[int, int]:
    """[start, end) in Unix ms of the school's local day containing ``now_ms``."""
    offset_ms = utc_offset_minutes * 60_000
    start = (now_ms + offset_ms) // MS_PER_DAY * MS_PER_DAY - offset_ms
    return start, start + MS_PER_DAY


def local_dt(ms: int, utc_offset_minutes: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone(timedelta(minutes=utc_offset_minutes)))


def local_time(ms: int, utc_offset_minutes: int) -> str:
    return local_dt(ms, utc_offset_minutes).strftime("%H:%M")


def local_iso(ms: int, utc_offset_minutes: int) -> str:
    return local_dt(ms, utc_offset_minutes).isoformat(timespec="seconds")


def rubles(kopecks: int) -> str:
    """12345 -> "123,45 ₽" (Russian: decimal comma)."""
    sign = "-" if kopecks < 0 else ""
    k = abs(kopecks)
    return f"{sign}{k // 100},{k % 100:02d} ₽"


CARD_KIND_RU = {
    IdentifierKind.service_card: "Сервисная карта",
    IdentifierKind.social_card: "Социальная карта",
    IdentifierKind.bracelet: "Браслет",
    IdentifierKind.fob: "Брелок",
    IdentifierKind.muscovite_card: "Карта москвича",
    IdentifierKind.temporary: "Временная карта",
}


def card_label(kind: int, identifier: bytes) -> str:
    try:
        name = CARD_KIND_RU[IdentifierKind(kind)]
    except ValueError:
        name = "Карта"
    return f"{name} …{identifier.hex()[-4:]}"


def short_name(full_name: str) -> str:
    """The first two words (surname and name): a USSD screen is short."""
    return " ".join(full_name.split()[:2])


def direction_name(direction: int | None) -> str:
    return "exit" if direction == Direction.OUT else "entry"


async def _items(conn, school_id: int, rows: list[Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    lines = {(r.device_id, r.device_txn): decode_items(r.items) or [] for r in rows if r.kind == JournalKind.PURCHASE}
    names = await parents.product_names(conn, school_id, {code for ls in lines.values() for code, _, _ in ls})
    return {
        key: [{"product_code": code, "name": names.get(code), "quantity": qty, "unit_price_kopecks": price}
              for code, qty, price in ls]
        for key, ls in lines.items()
    }


async def today(conn: asyncpg.Connection | asyncpg.Pool, pupil: asyncpg.Record, now_ms: int) -> dict[str, Any]:
    """Today's passages and meals (purchases) of one pupil, in the school's local day."""
    return await day(conn, pupil, now_ms)


async def day(conn: asyncpg.Connection | asyncpg.Pool, pupil: asyncpg.Record, at_ms: int) -> dict[str, Any]:
    """The passages and meals (purchases) of one pupil on the school-local day containing ``at_ms``."""
    offset = pupil["utc_offset_minutes"]
    start, end = local_day_bounds(at_ms, offset)
    rows = await parents.day_rows(conn, pupil["account_id"], (JournalKind.PASSAGE, JournalKind.PURCHASE), start, end)
    items = await _items(conn, pupil["school_id"], rows)
    passages, meals = [], []
    for r in rows:
        at = r.happened_at_ms
        if r.kind == JournalKind.PASSAGE:
            passages.append({"at_ms": at, "local_time": local_time(at, offset), "direction": direction_name(r.direction),
                             "device_id": r.device_id})
        else:
            meals.append({"at_ms": at, "local_time": local_time(at, offset), "amount_kopecks": r.amount_kopecks,
                          "free_meal": r.debit_account_id != pupil["account_id"],
                          "balance_after_kopecks": r.balance_after_kopecks, "device_id": r.device_id,
                          "items": items.get((r.device_id, r.device_txn), [])})
    return {"day": local_dt(start, offset).date().isoformat(), "passages": passages, "meals": meals}


def event_view(r: Any, account_id: int, offset: int, items: dict) -> dict[str, Any]:
    kind = JournalKind(r.kind)
    incoming = r.credit_account_id == account_id
    outgoing = r.debit_account_id == account_id
    amount = r.amount_kopecks if incoming else (-r.amount_kopecks if outgoing else 0)
    if kind == JournalKind.PASSAGE:
        name = direction_name(r.direction)
    elif kind == JournalKind.TRANSFER:
        name = "transfer_in" if incoming else "transfer_out"
    else:
        name = kind.label
    event: dict[str, Any] = {
        "id": f"{r.device_id}:{r.device_txn}",
        "kind": name,
        "at_ms": r.happened_at_ms,
        "local_time": local_iso(r.happened_at_ms, offset),
        "amount_kopecks": amount,
        # the row's balance is the tapping account's: for a transfer into this pupil it is the sender's
        "balance_after_kopecks": r.balance_after_kopecks if r.account_id == account_id else None,
    }
    if kind == JournalKind.PURCHASE:
        event["free_meal"] = not outgoing
        event["cost_kopecks"] = r.amount_kopecks
        event["items"] = items.get((r.device_id, r.device_txn), [])
    return event


async def history_page(
    conn: asyncpg.Connection, pupil: asyncpg.Record, limit: int, before: tuple[int, int, int] | None
) -> dict[str, Any]:
    rows = await parents.history(conn, pupil["account_id"], limit + 1, before)
    page = rows[:limit]
    items = await _items(conn, pupil["school_id"], page)
    events = [event_view(r, pupil["account_id"], pupil["utc_offset_minutes"], items) for r in page]
    last = page[-1] if page else None
    next_before = f"{last.decided_at_ms}.{last.device_id}.{last.device_txn}" if last and len(rows) > limit else None
    return {"account_id": pupil["account_id"], "events": events, "next_before": next_before}


def parse_before(text: str) -> tuple[int, int, int] | None:
    """"<decided_at_ms>.<device_id>.<device_txn>" (a page's next_before) or None."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 19 for p in parts):
        return None
    values = tuple(int(p) for p in parts)
    if any(v > 2**63 - 1 for v in values):
        return None
    return values  # type: ignore[return-value]


async def spending(
    conn: asyncpg.Connection | asyncpg.Pool, pupil: asyncpg.Record, start_ms: int, end_ms: int
) -> list[dict[str, Any]]:
    """The pupil's own purchases (not free meals) in [start_ms, end_ms): the school-local date,
    the amount, and the amount per product category (a basket's lines split by their prices)."""
    offset = pupil["utc_offset_minutes"]
    rows = [r for r in await parents.day_rows(conn, pupil["account_id"], (JournalKind.PURCHASE,), start_ms, end_ms)
            if r.debit_account_id == pupil["account_id"]]
    lines = {(r.device_id, r.device_txn): decode_items(r.items) or [] for r in rows}
    categories = await parents.product_categories(
        conn, pupil["school_id"], {code for ls in lines.values() for code, _, _ in ls})
    out = []
    for r in rows:
        by_category: dict[str, int] = {}
        basket = lines[(r.device_id, r.device_txn)]
        for code, quantity, price in basket:
            category = categories.get(code, "other")
            by_category[category] = by_category.get(category, 0) + quantity * price
        if not basket:
            by_category["other"] = r.amount_kopecks
        out.append({"date": local_dt(r.happened_at_ms, offset).date(), "amount_kopecks": r.amount_kopecks,
                    "by_category": by_category})
    return out


async def active_days(conn: asyncpg.Connection | asyncpg.Pool, pupil: asyncpg.Record, start_ms: int, end_ms: int) -> set:
    """The school-local dates in [start_ms, end_ms) with a passage or a purchase (the calendar's marks)."""
    offset = pupil["utc_offset_minutes"]
    rows = await parents.day_rows(conn, pupil["account_id"], (JournalKind.PASSAGE, JournalKind.PURCHASE), start_ms, end_ms)
    return {local_dt(r.happened_at_ms, offset).date() for r in rows}
