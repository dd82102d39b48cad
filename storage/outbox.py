"""The outbox as the relay reads it: unsent events in id order, marked once the broker has them.

The gateway's group commit writes ``outbox`` rows (``storage/journal.py``, one
``ledger.records.OutboxEvent`` each, the notice Struct as ``payload`` jsonb) in the
same transaction as the journal rows that caused them. The relay (``relay/``, its
own process) reads the unsent ones here, publishes them to MQTT and sets
``sent_at_ms`` on those the broker acknowledged. Nothing else writes
``sent_at_ms``.

Order: ``ORDER BY id`` over what is committed. An id is taken at INSERT and seen at
COMMIT, so a row of a slower concurrent writer (the staff API's card events) can
become visible after a higher id was published; it is not skipped: every read
starts from the lowest unsent id again (no cursor), so it goes out with the next
batch. The journal writer itself is one connection and commits in id order.

Cost: ``WHERE sent_at_ms IS NULL ORDER BY id`` wants the partial index
``outbox_unsent ON outbox (id) WHERE sent_at_ms IS NULL`` (its size is the
backlog, not the history); without it each read walks the primary key over every
row ever sent.
"""

from __future__ import annotations

from typing import Callable

import asyncpg
import msgspec

# The relay LISTENs here; a writer that NOTIFYs it after inserting outbox rows wakes
# the relay at once instead of at its next poll. (The journal writer does not yet.)
OUTBOX_CHANNEL = "ecard_outbox"
# Session-level advisory lock held by the one relay that publishes: two relays would
# interleave the order and double every event. A second one stands by until the first
# one's connection ends (a SIGKILLed relay's connection ends with it). The number is
# the ASCII of "ecRELAY" read as an integer: any fixed value unused elsewhere would do.
RELAY_LOCK_KEY = 0x6563_5245_4C41_59


class PendingEvent(msgspec.Struct, frozen=True, gc=False):
    """One unsent outbox row, as the relay publishes it."""

    id: int  # outbox.id: the drain order
    event_id: str  # unique; consumers de-duplicate by it
    kind: str  # OutboxKind value, the notice's tag
    account_id: int
    school_id: int  # the notice's school_id (else the account's school; 0 if neither is known)
    created_at_ms: int
    notice: msgspec.Raw  # the payload jsonb exactly as PostgreSQL renders it (JSON text)


# school_id: from the notice itself (every ledger.notices Struct carries it); rows
# written before the notices had one fall back to the account's school.
_PENDING = """
SELECT o.id, o.event_id, o.kind, o.account_id,
       COALESCE(CASE WHEN jsonb_typeof(o.payload->'school_id') = 'number'
                     THEN (o.payload->>'school_id')::bigint END,
                a.school_id, 0) AS school_id,
       o.created_at_ms, o.payload::text AS notice
FROM outbox AS o LEFT JOIN accounts AS a ON a.id = o.account_id
WHERE o.sent_at_ms IS NULL
ORDER BY o.id
LIMIT $1
"""

_MARK_SENT = """
UPDATE outbox SET sent_at_ms = $2 WHERE id = ANY($1::bigint[]) AND sent_at_ms IS NULL
"""

# The count is bounded by $1 so that it stays a bounded piece of work however far
# behind the relay is; the oldest pending row gives the age of the backlog.
_BACKLOG = """
SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE sent_at_ms IS NULL LIMIT $1) AS p) AS pending,
       (SELECT created_at_ms FROM outbox WHERE sent_at_ms IS NULL ORDER BY id LIMIT 1) AS oldest_created_at_ms
"""


async def pending(conn: asyncpg.Connection, limit: int, timeout_s: float) -> list[PendingEvent]:
    """The first ``limit`` unsent events in id order."""
    assert limit > 0
    rows = await conn.fetch(_PENDING, limit, timeout=timeout_s)
    return [
        PendingEvent(r[0], r[1], r[2], r[3], r[4], r[5], msgspec.Raw(r[6].encode()))
        for r in rows
    ]


async def mark_sent(conn: asyncpg.Connection, ids: list[int], sent_at_ms: int, timeout_s: float) -> int:
    """Set ``sent_at_ms`` on these rows (those still unsent); return how many changed."""
    if not ids:
        return 0
    status = await conn.execute(_MARK_SENT, ids, sent_at_ms, timeout=timeout_s)
    return int(status.rsplit(" ", 1)[1])


async def backlog(conn: asyncpg.Connection, count_max: int, timeout_s: float) -> tuple[int, int | None]:
    """(unsent rows counted up to ``count_max``, created_at_ms of the oldest or None)."""
    row = await conn.fetchrow(_BACKLOG, count_max, timeout=timeout_s)
    return int(row[0]), row[1]


async def try_lock_relay(conn: asyncpg.Connection, timeout_s: float) -> bool:
    """Take the relay's advisory lock on this connection (held until it closes)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY, timeout=timeout_s))


async def listen(conn: asyncpg.Connection, wake: Callable[[], None]) -> None:
    """Call ``wake()`` on every NOTIFY of OUTBOX_CHANNEL received by this connection."""
    await conn.add_listener(OUTBOX_CHANNEL, lambda *_: wake())
