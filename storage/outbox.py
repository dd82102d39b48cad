"""The outbox as the relay reads it: unsent events in id order, marked once the broker has them.

Two kinds of ``outbox`` row (migrations 0024 and 0026):
- the gateway's group commit (``storage/journal.py``) writes the events for parents it
  brought as rows of kind ``batch`` (``BATCH_KIND``), one per ``ROW_EVENTS_MAX`` events
  (one row at the held rate), in the same transaction as the journal rows that caused them:
  a row's ``batch_events`` is the JSON array of its ``ledger.records.OutboxEvent``s in
  decision order as bytes PostgreSQL never parses (its ``payload`` is NULL), ``events``
  their count. A row per event cost PostgreSQL a tuple and three index entries each, and the
  relay's mark a second tuple each; jsonb cost it a parse on every write and every read.
- the staff and parents' APIs write a row per event (``kind`` the event's kind, the notice
  Struct as jsonb ``payload``, ``events`` 1).

``outbox_events`` (a view) reads both as one row per event, (row_id, position) in
publication order, for tests and tools. The relay (``relay/``, its own process) reads the
unsent rows here (``pending`` splits the batch rows with msgspec, in that same order),
publishes them to MQTT and sets ``sent_at_ms`` on the rows whose events the broker all
acknowledged. Nothing else writes ``sent_at_ms``. A row whose events went out only in part
goes out whole again (consumers de-duplicate by ``event_id``, as after any redelivery).

Order: ``ORDER BY id``, then the position inside a row, over what is committed. An id is
taken at INSERT and seen at COMMIT, so a row of a slower concurrent writer (the staff API's
card events) can become visible after a higher id was published; it is not skipped: every read
starts from the lowest unsent id again (no cursor), so it goes out with the next
batch. The journal writer itself is one connection and commits in id order.

Cost: ``WHERE sent_at_ms IS NULL ORDER BY id`` wants the partial index
``outbox_unsent ON outbox (id) WHERE sent_at_ms IS NULL`` (its size is the
backlog, not the history); without it each read walks the primary key over every
row ever sent.
"""

from __future__ import annotations

from typing import Any, Callable

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
# outbox.kind of a row that holds a group commit's events (its event_id is this, a colon and
# the first event's id: as unique as that event's). The view outbox_events (migrations 0024, 0026)
# names it too: it never changes.
BATCH_KIND = "batch"
# A group commit's events go in rows of at most this many. The relay reads a row whole, so
# one read holds at most its batch_events_max + ROW_EVENTS_MAX - 1 events (paho's queue is
# sized for that). At the held rate a commit brings about 35 events (one row); the rows a
# bigger commit adds cost PostgreSQL a tuple and three index entries each.
ROW_EVENTS_MAX = 64


class PendingEvent(msgspec.Struct, frozen=True, gc=False):
    """One unsent outbox event, as the relay publishes it."""

    id: int  # outbox.id of the row that holds it (a group commit's events share one): the drain order
    event_id: str  # unique; consumers de-duplicate by it
    kind: str  # OutboxKind value, the notice's tag
    account_id: int
    school_id: int  # the notice's school_id (else, for a single row, its account's school; else 0:
    # the journal writer's notices always carry it)
    created_at_ms: int
    notice: msgspec.Raw  # the notice's JSON text (a single row's jsonb as PostgreSQL renders it)


# The unsent rows that begin within the first $1 events (so at least one row, whatever its
# size: a row goes out whole), each with its account's school (the fallback for a notice
# written before the notices carried school_id). A batch row's events stay the bytes the
# journal writer stored: ``pending`` splits them (PostgreSQL parses no JSON here).
_PENDING = """
WITH r AS MATERIALIZED (
    SELECT id FROM (
        SELECT id, sum(events) OVER (ORDER BY id) - events AS before
        FROM (SELECT id, events FROM outbox WHERE sent_at_ms IS NULL ORDER BY id LIMIT $1) AS u
    ) AS w
    WHERE before < $1
)
SELECT o.id, o.event_id, o.kind, o.account_id, coalesce(a.school_id, 0) AS school_id, o.created_at_ms,
       o.payload::text AS notice, o.batch_events
FROM r
JOIN outbox AS o ON o.id = r.id
LEFT JOIN accounts AS a ON a.id = o.account_id
-- the id range of the rows read: whatever join the planner picks reads the outbox from there,
-- never from the first row ever sent
WHERE o.id BETWEEN (SELECT min(id) FROM r) AND (SELECT max(id) FROM r)
ORDER BY o.id
"""


class _BatchEvent(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """ledger.records.OutboxEvent as a batch row holds it, its notice left as JSON."""

    event_id: str
    kind: str
    account_id: int
    notice: msgspec.Raw
    created_at_ms: int


class _NoticeSchool(msgspec.Struct, gc=False):
    """The one field of a notice the relay reads (every ledger.notices Struct has it)."""

    school_id: Any = None


_batch_decoder = msgspec.json.Decoder(list[_BatchEvent])
_school_decoder = msgspec.json.Decoder(_NoticeSchool)


def _school_of(notice: bytes | msgspec.Raw, account_school_id: int) -> int:
    school_id = _school_decoder.decode(notice).school_id
    return school_id if type(school_id) is int else account_school_id


_MARK_SENT = """
UPDATE outbox SET sent_at_ms = $2 WHERE id = ANY($1::bigint[]) AND sent_at_ms IS NULL
"""

# The count is bounded by $1 (rows read, and events counted) so that it stays a bounded
# piece of work however far behind the relay is; the oldest pending row gives the age of
# the backlog (a batch row's created_at_ms is its first event's).
_BACKLOG = """
SELECT (SELECT least($1, coalesce(sum(events), 0))
        FROM (SELECT events FROM outbox WHERE sent_at_ms IS NULL ORDER BY id LIMIT $1) AS p) AS pending,
       (SELECT created_at_ms FROM outbox WHERE sent_at_ms IS NULL ORDER BY id LIMIT 1) AS oldest_created_at_ms
"""


async def pending(conn: asyncpg.Connection, limit: int, timeout_s: float) -> list[PendingEvent]:
    """The unsent events in publication order, of the rows that begin within the first ``limit``
    events: at most ``limit`` events, unless one row holds more (a row goes out whole)."""
    assert limit > 0
    out = []
    for row_id, event_id, kind, account_id, school_id, created_at_ms, notice, batch in await conn.fetch(
        _PENDING, limit, timeout=timeout_s
    ):
        if batch is None:
            raw = notice.encode()
            out.append(PendingEvent(row_id, event_id, kind, account_id, _school_of(raw, school_id), created_at_ms,
                                    msgspec.Raw(raw)))
            continue
        for e in _batch_decoder.decode(batch):
            out.append(PendingEvent(row_id, e.event_id, e.kind, e.account_id, _school_of(e.notice, 0),
                                    e.created_at_ms, e.notice))
    return out


async def mark_sent(conn: asyncpg.Connection, ids: list[int], sent_at_ms: int, timeout_s: float) -> int:
    """Set ``sent_at_ms`` on these rows (those still unsent); return how many changed. Only a row
    whose every event the broker acknowledged is sent (``sent_rows``)."""
    if not ids:
        return 0
    status = await conn.execute(_MARK_SENT, ids, sent_at_ms, timeout=timeout_s)
    return int(status.rsplit(" ", 1)[1])


def sent_rows(events: list[PendingEvent], done: list[bool]) -> list[int]:
    """The outbox rows to mark: those all of whose ``events`` are ``done`` (in order, once each)."""
    rows: dict[int, bool] = {}
    for event, ok in zip(events, done, strict=True):
        rows[event.id] = rows.get(event.id, True) and ok
    return [row for row, ok in rows.items() if ok]


async def backlog(conn: asyncpg.Connection, count_max: int, timeout_s: float) -> tuple[int, int | None]:
    """(unsent events counted up to ``count_max``, created_at_ms of the oldest or None)."""
    row = await conn.fetchrow(_BACKLOG, count_max, timeout=timeout_s)
    return int(row[0]), row[1]


async def try_lock_relay(conn: asyncpg.Connection, timeout_s: float) -> bool:
    """Take the relay's advisory lock on this connection (held until it closes)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY, timeout=timeout_s))


async def listen(conn: asyncpg.Connection, wake: Callable[[], None]) -> None:
    """Call ``wake()`` on every NOTIFY of OUTBOX_CHANNEL received by this connection."""
    await conn.add_listener(OUTBOX_CHANNEL, lambda *_: wake())
