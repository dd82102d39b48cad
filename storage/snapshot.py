"""Read the state the gateway keeps in memory, in bulk, in chunks.

Chunked cursors keep the transient memory of a 2 M-account load small: the
gateway turns each chunk into its compact arrays before the next arrives.
"""

from __future__ import annotations

from typing import AsyncIterator

import asyncpg
import msgspec

from ledger.codes import AccessKind
from ledger.records import AccountCounters, JournalRow

# 50 k rows per round trip: few round trips, and a chunk of Records stays a few MiB.
LOAD_CHUNK_ROWS = 50_000
LOAD_STATEMENT_TIMEOUT_S = 600.0


async def _chunks(conn: asyncpg.Connection, query: str, *args) -> AsyncIterator[list[asyncpg.Record]]:
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        cursor = await conn.cursor(query, *args, timeout=LOAD_STATEMENT_TIMEOUT_S)
        while True:
            rows = await cursor.fetch(LOAD_CHUNK_ROWS, timeout=LOAD_STATEMENT_TIMEOUT_S)
            if not rows:
                return
            yield rows


def accounts(conn: asyncpg.Connection) -> AsyncIterator[list[asyncpg.Record]]:
    """(id, kind, school_id, status, balance_kopecks, daily_limit_kopecks or -1, counters bytes or None) by id.

    ``counters`` is the machine's last checkpoint of the account's day counters
    (decode with ``decode_counters``)."""
    return _chunks(
        conn,
        "SELECT id, kind, coalesce(school_id, 0), status, balance_kopecks, coalesce(daily_limit_kopecks, -1),"
        " counters FROM accounts ORDER BY id",
    )


_counters_decoder = msgspec.json.Decoder(AccountCounters)


def decode_counters(data: bytes | None) -> AccountCounters | None:
    """``accounts.counters``: AccountCounters as msgspec's JSON, stored as bytea (migration 0025)."""
    return None if data is None else _counters_decoder.decode(data)


def identifiers(conn: asyncpg.Connection) -> AsyncIterator[list[asyncpg.Record]]:
    """(identifier, account_id, status)."""
    return _chunks(conn, "SELECT identifier, account_id, status FROM identifiers")


async def schools(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, utc_offset_minutes FROM schools", timeout=LOAD_STATEMENT_TIMEOUT_S)


# A device's durable watermark: the highest txn journaled for it (one backward
# probe of the journal's primary key per device).
_DEVICES = """
SELECT d.id, d.school_id, d.kind, d.key, coalesce(d.drawer_account_id, 0) AS drawer_account_id,
       coalesce((SELECT max(j.device_txn) FROM journal j WHERE j.device_id = d.id), 0) AS durable_txn
FROM devices d
"""


async def devices(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(_DEVICES, timeout=LOAD_STATEMENT_TIMEOUT_S)


_JOURNAL_FIELDS = (
    "device_id", "device_txn", "kind", "account_id", "identifier", "direction", "debit_account_id",
    "credit_account_id", "amount_kopecks", "balance_after_kopecks", "advice", "device_time_ms", "decided_at_ms",
    "happened_at_ms", "cashier_id", "items", "granted_txn",
)
assert _JOURNAL_FIELDS == JournalRow.__struct_fields__, "journal columns follow ledger.records.JournalRow"


def journal_row_columns(alias: str = "") -> str:
    """The SELECT list of ledger.records.JournalRow, in its field order (rows written
    before migration 0007 have no happened_at_ms: they were judged when decided)."""
    p = f"{alias}." if alias else ""
    return ", ".join(
        f"coalesce({p}happened_at_ms, {p}decided_at_ms)" if f == "happened_at_ms" else p + f for f in _JOURNAL_FIELDS
    )


def journal_row(record: asyncpg.Record) -> JournalRow:
    """A journal record (selected with ``journal_row_columns``) as the ledger's named row."""
    values = list(record)
    values[4] = bytes(values[4])
    if values[15] is not None:
        values[15] = bytes(values[15])
    return JournalRow(*values)


async def recent_transactions(conn: asyncpg.Connection, per_device: int) -> list[JournalRow]:
    """The last ``per_device`` journaled txns of every device, oldest first per device
    (the idempotency window and the turnstiles' grants)."""
    records = await conn.fetch(
        f"""
        SELECT {journal_row_columns("j")}
        FROM devices d CROSS JOIN LATERAL (
            SELECT * FROM journal WHERE device_id = d.id ORDER BY device_txn DESC LIMIT $1
        ) AS j
        ORDER BY j.device_id, j.device_txn
        """,
        per_device,
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )
    return [journal_row(r) for r in records]


# ---------------------------------------------------------------- reference data of schema 0002
# Each reader takes an optional key so the gateway can reload one entity when
# storage.changes tells it that entity changed.

_PUPILS = "SELECT account_id, free_meal_category, coalesce(family_id, 0), coalesce(photo_ref, '') FROM pupils"
_CONTROLS = (
    "SELECT c.account_id, c.period_limits_kopecks::text, coalesce(c.items_per_day_max, -1), c.banned_products,"
    " c.banned_categories, c.blocked_allergens, c.required_diet, c.cashier_note FROM account_controls c"
)
_PRODUCTS = "SELECT school_id, code, category, allergens, diet_flags, hot_meal FROM products"
_POLICIES = (
    "SELECT school_id, grace_kopecks, grace_meals, low_balance_threshold_kopecks, anti_passback,"
    " passback_entry_interval_s * 1000, escort_required, offline_floor_kopecks, offline_sales_per_card_max"
    " FROM school_policies"
)
# When each school's presence was last reconciled (after an evacuation).
_PRESENCE_RESETS = f"SELECT school_id, max(at_ms) FROM access_events WHERE kind = {int(AccessKind.PRESENCE_RESET)}"
_PERIODS = "SELECT school_id, name, starts_minute, ends_minute FROM meal_periods ORDER BY school_id, starts_minute"


# Trusted persons' cards (kindergartens): of representatives neither suspended nor removed, with
# the children they may bring and collect. (identifier, representative, school, full name,
# relation, children)
_ESCORTS = """
SELECT t.identifier, r.id, r.school_id, r.full_name, r.relation,
       array(SELECT rp.account_id FROM representative_pupils rp WHERE rp.representative_id = r.id)
FROM trusted_cards t JOIN representatives r ON r.id = t.representative_id
WHERE r.suspended_at_ms IS NULL AND r.removed_at_ms IS NULL
"""


async def escorts(conn: asyncpg.Connection, representative_id: int | None = None) -> list[asyncpg.Record]:
    if representative_id is None:
        return await conn.fetch(_ESCORTS, timeout=LOAD_STATEMENT_TIMEOUT_S)
    return await conn.fetch(_ESCORTS + " AND r.id = $1", representative_id, timeout=LOAD_STATEMENT_TIMEOUT_S)


def pupils(conn: asyncpg.Connection) -> AsyncIterator[list[asyncpg.Record]]:
    return _chunks(conn, _PUPILS)


async def pupil(conn: asyncpg.Connection, account_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_PUPILS + " WHERE account_id = $1", account_id, timeout=LOAD_STATEMENT_TIMEOUT_S)


async def controls(conn: asyncpg.Connection, account_id: int | None = None) -> list[asyncpg.Record]:
    if account_id is None:
        return await conn.fetch(_CONTROLS, timeout=LOAD_STATEMENT_TIMEOUT_S)
    return await conn.fetch(_CONTROLS + " WHERE c.account_id = $1", account_id, timeout=LOAD_STATEMENT_TIMEOUT_S)


async def account(conn: asyncpg.Connection, account_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, kind, coalesce(school_id, 0), status, balance_kopecks, coalesce(daily_limit_kopecks, -1)"
        " FROM accounts WHERE id = $1",
        account_id,
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )


async def identifier(conn: asyncpg.Connection, identifier: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT identifier, account_id, status, coalesce(expires_at_ms, 0) FROM identifiers WHERE identifier = $1",
        identifier,
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )


async def identifiers_with_state(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Identifiers that are not plainly active (blocked, suspended, expiring): few."""
    return await conn.fetch(
        "SELECT identifier, account_id, status, coalesce(expires_at_ms, 0) FROM identifiers"
        " WHERE status <> 0 OR expires_at_ms IS NOT NULL",
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )


async def device(conn: asyncpg.Connection, device_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_DEVICES + " WHERE d.id = $1", device_id, timeout=LOAD_STATEMENT_TIMEOUT_S)


async def school_reference(conn: asyncpg.Connection, school_id: int | None = None) -> dict[str, list[asyncpg.Record]]:
    """Products, policies, meal periods and time zones: of one school or of all."""
    where = "" if school_id is None else " WHERE school_id = $1"
    args = () if school_id is None else (school_id,)
    t = LOAD_STATEMENT_TIMEOUT_S
    return {
        "products": await conn.fetch(_PRODUCTS + where, *args, timeout=t),
        "policies": await conn.fetch(_POLICIES + where, *args, timeout=t),
        "periods": await conn.fetch(
            _PERIODS if school_id is None else _PERIODS.replace(" ORDER BY", where + " ORDER BY"), *args, timeout=t
        ),
        "schools": await conn.fetch(
            "SELECT id, utc_offset_minutes FROM schools" + ("" if school_id is None else " WHERE id = $1"),
            *args,
            timeout=t,
        ),
        "presence_resets": await conn.fetch(
            _PRESENCE_RESETS + ("" if school_id is None else " AND school_id = $1") + " GROUP BY school_id",
            *args,
            timeout=t,
        ),
    }


# Pre-orders from yesterday on (a school day may still be "today" somewhere), by
# school-day number (days since 1970-01-01), the gateway's day numbering.
_PREORDERS = """
SELECT account_id, (day - DATE '1970-01-01')::int, product_code, quantity FROM preorders
WHERE day >= CURRENT_DATE - 1
"""


async def preorders(conn: asyncpg.Connection, account_id: int | None = None) -> list[asyncpg.Record]:
    """Upcoming pre-ordered lines: (account_id, school day, product_code, quantity)."""
    if not await conn.fetchval("SELECT to_regclass('preorders') IS NOT NULL"):
        return []  # the pre-order migration is not applied to this database yet
    if account_id is None:
        return await conn.fetch(_PREORDERS + " ORDER BY account_id, day, period, product_code", timeout=LOAD_STATEMENT_TIMEOUT_S)
    return await conn.fetch(
        _PREORDERS + " AND account_id = $1 ORDER BY day, period, product_code", account_id, timeout=LOAD_STATEMENT_TIMEOUT_S
    )
