"""Read the state the gateway keeps in memory, in bulk, in chunks.

Chunked cursors keep the transient memory of a 2 M-account load small: the
gateway turns each chunk into its compact arrays before the next arrives.
"""

from __future__ import annotations

from typing import AsyncIterator

import asyncpg

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
    """(id, kind, school_id, status, balance_kopecks, daily_limit_kopecks or -1) by id."""
    return _chunks(
        conn,
        "SELECT id, kind, coalesce(school_id, 0), status, balance_kopecks, coalesce(daily_limit_kopecks, -1)"
        " FROM accounts ORDER BY id",
    )


def identifiers(conn: asyncpg.Connection) -> AsyncIterator[list[asyncpg.Record]]:
    """(identifier, account_id, status)."""
    return _chunks(conn, "SELECT identifier, account_id, status FROM identifiers")


async def schools(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, utc_offset_minutes FROM schools", timeout=LOAD_STATEMENT_TIMEOUT_S)


async def devices(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, school_id, kind, key, coalesce(drawer_account_id, 0) AS drawer_account_id, durable_txn"
        " FROM devices",
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )


async def recent_transactions(conn: asyncpg.Connection, per_device: int) -> list[asyncpg.Record]:
    """The last ``per_device`` journaled txns of every device (the idempotency window)."""
    return await conn.fetch(
        """
        SELECT j.device_id, j.device_txn, j.kind, j.direction, j.amount_kopecks, j.balance_after_kopecks
        FROM devices d CROSS JOIN LATERAL (
            SELECT * FROM journal WHERE device_id = d.id ORDER BY device_txn DESC LIMIT $1
        ) AS j
        """,
        per_device,
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )


async def spent_since(conn: asyncpg.Connection, day_start_ms_by_school: dict[int, int]) -> list[asyncpg.Record]:
    """(account_id, kopecks) spent on purchases since the start of each school's day."""
    if not day_start_ms_by_school:
        return []
    return await conn.fetch(
        """
        SELECT j.account_id, sum(j.amount_kopecks)::bigint
        FROM journal j
        JOIN accounts a ON a.id = j.account_id
        JOIN unnest($1::int[], $2::bigint[]) AS s(school_id, day_start_ms) ON s.school_id = a.school_id
        WHERE j.kind = 3 AND j.decided_at_ms >= s.day_start_ms
        GROUP BY j.account_id
        """,
        list(day_start_ms_by_school),
        list(day_start_ms_by_school.values()),
        timeout=LOAD_STATEMENT_TIMEOUT_S,
    )
