"""Load the demo dataset (or a large one for benchmarks) into an empty database.

Accounts are numbered densely: pupils 1..N, then the opening-balances account,
the school's canteen revenue, and one cash drawer per till. Opening balances are
a real movement (opening account debited, pupil credited) so the ledger sums to
zero from the first row.
"""

from __future__ import annotations

import asyncpg

from .demo_dataset import (
    DEMO_OPENING_BALANCE_KOPECKS,
    DEMO_PRODUCTS,
    DEMO_PUPILS,
    DEMO_SCHOOL_ID,
    DEMO_SCHOOL_NAME,
    DEMO_TILLS,
    DEMO_TURNSTILES,
    demo_device_key,
    till_ids,
    turnstile_ids,
)

ACCOUNT_PUPIL, ACCOUNT_REVENUE, ACCOUNT_DRAWER, ACCOUNT_OPENING = 1, 2, 3, 4
IDENTIFIER_SERVICE_CARD = 1
DEVICE_TURNSTILE, DEVICE_TILL = 1, 2
# Generous for 2 M accounts on a small machine; the statements are set-based.
LOAD_STATEMENT_TIMEOUT_S = 600.0


async def is_empty(conn: asyncpg.Connection) -> bool:
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM schools)")


async def load_dataset(
    conn: asyncpg.Connection,
    *,
    pupils: int = DEMO_PUPILS,
    turnstiles: int = DEMO_TURNSTILES,
    tills: int = DEMO_TILLS,
    opening_balance_kopecks: int = DEMO_OPENING_BALANCE_KOPECKS,
) -> None:
    """One school with ``pupils`` pupils (one service card each) and its devices."""
    opening_id = pupils + 1
    revenue_id = pupils + 2
    t = LOAD_STATEMENT_TIMEOUT_S
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO schools (id, name) VALUES ($1, $2)", DEMO_SCHOOL_ID, DEMO_SCHOOL_NAME, timeout=t
        )
        await conn.execute(
            """
            INSERT INTO accounts (id, kind, school_id, holder_name, balance_kopecks)
            SELECT g, 1, $1, 'Ученик ' || g, $2 FROM generate_series(1, $3::bigint) AS g
            """,
            DEMO_SCHOOL_ID,
            opening_balance_kopecks,
            pupils,
            timeout=t,
        )
        await conn.execute(
            """
            INSERT INTO accounts (id, kind, school_id, holder_name, balance_kopecks) VALUES
                ($1, 4, NULL, 'Входящие остатки', -$3::bigint * $4::bigint),
                ($2, 2, $5, 'Выручка столовой', 0)
            """,
            opening_id,
            revenue_id,
            opening_balance_kopecks,
            pupils,
            DEMO_SCHOOL_ID,
            timeout=t,
        )
        # The demo card UID: 0x04 followed by the account id as 6 big-endian bytes
        # (storage.demo_dataset.demo_card_uid).
        await conn.execute(
            """
            INSERT INTO identifiers (identifier, account_id, kind)
            SELECT '\\x04'::bytea || substring(int8send(g) FROM 3), g, 1
            FROM generate_series(1, $1::bigint) AS g
            """,
            pupils,
            timeout=t,
        )
        till_list = till_ids(tills)
        drawer_rows = [(revenue_id + n, ACCOUNT_DRAWER, DEMO_SCHOOL_ID, f"Касса {n}") for n in range(1, tills + 1)]
        await conn.copy_records_to_table(
            "accounts", records=drawer_rows, columns=("id", "kind", "school_id", "holder_name"), timeout=t
        )
        device_rows = [
            (dev, DEMO_SCHOOL_ID, DEVICE_TURNSTILE, demo_device_key(dev), f"Турникет {n}", None)
            for n, dev in enumerate(turnstile_ids(turnstiles), 1)
        ] + [
            (dev, DEMO_SCHOOL_ID, DEVICE_TILL, demo_device_key(dev), f"Касса {n}", revenue_id + n)
            for n, dev in enumerate(till_list, 1)
        ]
        await conn.copy_records_to_table(
            "devices",
            records=device_rows,
            columns=("id", "school_id", "kind", "key", "name", "drawer_account_id"),
            timeout=t,
        )
        await conn.executemany(
            "INSERT INTO products (school_id, code, name, price_kopecks) VALUES ($1, $2, $3, $4)",
            [(DEMO_SCHOOL_ID, code, name, price) for code, name, price in DEMO_PRODUCTS],
            timeout=t,
        )
