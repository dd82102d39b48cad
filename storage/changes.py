"""Reference-data changes (cards, controls, devices, products, policies) reach the gateway.

Whoever changes such a row in PostgreSQL (the staff API) calls ``notify`` in the
same transaction; PostgreSQL delivers the notification at COMMIT, and the
gateway reloads just that entity into its cache (well within a second). Balances
are never changed this way: money goes through storage.commands.
"""

from __future__ import annotations

import asyncpg

CHANGES_CHANNEL = "ecard_changes"
# entity names the gateway understands, and what the key is
ENTITIES = {
    "identifier": "identifier bytes as hex",
    "account": "account id (status, daily limit, controls, pupil data)",
    "device": "device id",
    "school": "school id (policy, meal periods, products)",
    "representative": "representative id (a trusted person's cards and children, kindergartens)",
}


async def notify(conn: asyncpg.Connection, entity: str, key: str | int) -> None:
    if entity not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}")
    await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, f"{entity}:{key}")
