"""The ledger's own accounts, opened with what they serve.

Every kopeck moves from one account to another (``ledger.codes.AccountKind``). A pupil's
account is opened at enrolment; the others are opened here, in the caller's transaction:

- with a school: its canteen revenue, its free-meal budget and its office desk's cash
  drawer (the cashier's top-ups), and, with the first school of a database, the two
  city-wide accounts: the acquirer's clearing account and the operator's corrections;
- with a till: its cash drawer (``devices.drawer_account_id``).

A school without a revenue account could not sell (the ledger refuses: there would be
nothing to credit); migration 0021 opened the missing ones for the schools and tills that
existed before. Account ids are dense (max + 1) under a table lock, as the pupils' are.
Each new account is announced (``storage.changes``) before what uses it, so the gateway
knows the account when it learns of the till.
"""

from __future__ import annotations

import asyncpg

from ledger.codes import AccountKind

from . import changes

# The names people read in the ledger (staff API, reports), in Russian.
HOLDER_NAMES = {
    AccountKind.REVENUE: "Выручка столовой",
    AccountKind.FREE_MEALS: "Бюджет бесплатного питания",
    AccountKind.DESK_DRAWER: "Касса канцелярии",
    AccountKind.CLEARING: "Расчёты с эквайером",
    AccountKind.CORRECTIONS: "Корректировки",
}
SCHOOL_ACCOUNT_KINDS = (AccountKind.REVENUE, AccountKind.FREE_MEALS, AccountKind.DESK_DRAWER)
CITY_ACCOUNT_KINDS = (AccountKind.CLEARING, AccountKind.CORRECTIONS)  # one each, no school


async def next_account_id(conn: asyncpg.Connection) -> int:
    """Serialize account creation (ids are dense: max(id) + 1); returns the next id. Call inside
    a transaction: the lock is held until it ends."""
    await conn.execute("LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE")
    return await conn.fetchval("SELECT COALESCE(max(id), 0) + 1 FROM accounts")


async def _open(conn: asyncpg.Connection, kind: AccountKind, school_id: int | None, holder_name: str) -> int:
    account_id = await next_account_id(conn)
    await conn.execute(
        "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES ($1, $2, $3, $4)",
        account_id, int(kind), school_id, holder_name,
    )
    await changes.notify(conn, "account", account_id)
    return account_id


async def open_school_accounts(conn: asyncpg.Connection, school_id: int) -> dict[AccountKind, int]:
    """Open what a school's ledger lacks (all of it for a new school); returns every one of
    its accounts by kind. Idempotent."""
    have = {AccountKind(r["kind"]): r["id"] for r in await conn.fetch(
        "SELECT kind, min(id) AS id FROM accounts WHERE (school_id = $1 AND kind = ANY($2::smallint[]))"
        " OR (school_id IS NULL AND kind = ANY($3::smallint[])) GROUP BY kind",
        school_id, [int(k) for k in SCHOOL_ACCOUNT_KINDS], [int(k) for k in CITY_ACCOUNT_KINDS])}
    for kind in SCHOOL_ACCOUNT_KINDS + CITY_ACCOUNT_KINDS:
        if kind not in have:
            have[kind] = await _open(conn, kind, school_id if kind in SCHOOL_ACCOUNT_KINDS else None,
                                     HOLDER_NAMES[kind])
    return have


async def open_till_drawer(conn: asyncpg.Connection, device_id: int, school_id: int, till_name: str) -> int:
    """Open a till's cash drawer and bind it to the till (devices.drawer_account_id); returns
    its id. The till's row must exist; announce the device after this."""
    account_id = await _open(conn, AccountKind.DRAWER, school_id, f"Касса: {till_name}")
    await conn.execute("UPDATE devices SET drawer_account_id = $1 WHERE id = $2", account_id, device_id)
    return account_id
