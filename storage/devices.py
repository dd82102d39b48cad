"""Devices as the gateway loads them: identity, keys (current and next), revocation.

The staff API writes these rows (staff_api/devices.py) and NOTIFYs "device:<id>"
(storage.changes); the gateway reads one device again on that notification.
"""

from __future__ import annotations

import asyncpg

from .snapshot import LOAD_STATEMENT_TIMEOUT_S

# A device's durable watermark: the highest txn journaled for it (one backward probe of the
# journal's primary key per device), as storage.snapshot.devices.
_DEVICES = """
SELECT d.id, d.school_id, d.kind, d.key, d.next_key, d.revoked_at_ms IS NOT NULL AS revoked,
       coalesce(d.drawer_account_id, 0) AS drawer_account_id,
       coalesce((SELECT max(j.device_txn) FROM journal j WHERE j.device_id = d.id), 0) AS durable_txn
FROM devices d
"""


async def devices(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(_DEVICES, timeout=LOAD_STATEMENT_TIMEOUT_S)


async def device(conn: asyncpg.Connection, device_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_DEVICES + " WHERE d.id = $1", device_id, timeout=LOAD_STATEMENT_TIMEOUT_S)
