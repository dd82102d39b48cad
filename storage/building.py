"""The building's tables: who is inside (from the machine's checkpoints), the access log.

Presence is not stored twice: each pupil's last counted passage lives in the account
checkpoint the journal writer keeps (``accounts.counters``, ledger.records.AccountCounters),
and the one rule that reads it is ``ledger.state.presence_at``. A school's reconciliation
is an access event (kind PRESENCE_RESET); the gateway learns of one written here through
the school's change notification.
"""

from __future__ import annotations

import asyncpg
import msgspec

from ledger.codes import AccessKind, JournalKind, Presence
from ledger.records import AccessEvent, AccountCounters
from ledger.state import MINUTE_MS, presence_at
from protocol import Direction

from .snapshot import decode_counters

# An access-log page: a school's busiest day has a few thousand events.
ACCESS_EVENTS_PAGE_MAX = 1_000

class PupilPresence(msgspec.Struct, frozen=True):
    account_id: int
    full_name: str
    grade: int
    class_name: str
    presence: int  # ledger.codes.Presence
    passage_ms: int  # the last counted passage (0: none)


async def presence_reset_ms(conn: asyncpg.Connection, school_id: int) -> int:
    value = await conn.fetchval(
        "SELECT max(at_ms) FROM access_events WHERE kind = $1 AND school_id = $2",
        int(AccessKind.PRESENCE_RESET), school_id,
    )
    return value or 0


async def presence(conn: asyncpg.Connection, school_id: int, at_ms: int) -> list[PupilPresence]:
    """Every pupil of the school with where they are at ``at_ms``, by class and name."""
    offset_minutes = await conn.fetchval("SELECT utc_offset_minutes FROM schools WHERE id = $1", school_id)
    offset_ms = (offset_minutes or 0) * MINUTE_MS
    reset_ms = await presence_reset_ms(conn, school_id)
    rows = await conn.fetch(
        """
        SELECT p.account_id, p.full_name, p.grade, p.class_name, a.counters
        FROM pupils p JOIN accounts a ON a.id = p.account_id
        WHERE p.school_id = $1
        ORDER BY p.grade, p.class_name, p.full_name, p.account_id
        """,
        school_id,
    )
    out = []
    for r in rows:
        c = decode_counters(r["counters"]) or AccountCounters()
        where = presence_at(c.presence, c.passage_ms, reset_ms, offset_ms, at_ms)
        out.append(PupilPresence(r["account_id"], r["full_name"], r["grade"], r["class_name"], where,
                                 c.passage_ms if where != Presence.UNKNOWN else 0))
    return out


async def record_presence_reset(conn: asyncpg.Connection, school_id: int, at_ms: int, detail: str) -> None:
    """A reconciliation decided outside the gateway (a school officer); the caller notifies
    the school's change so the gateway applies it."""
    await conn.execute(
        "INSERT INTO access_events (kind, school_id, account_id, device_id, device_txn, direction, at_ms, detail)"
        " VALUES ($1, $2, 0, 0, 0, NULL, $3, $4)",
        int(AccessKind.PRESENCE_RESET), school_id, at_ms, detail,
    )


async def access_events(
    conn: asyncpg.Connection, school_id: int, since_ms: int, limit: int = ACCESS_EVENTS_PAGE_MAX
) -> list[tuple[int, AccessEvent]]:
    """(id, event) of a school from ``since_ms`` on, oldest first."""
    rows = await conn.fetch(
        """
        SELECT id, kind, school_id, account_id, device_id, device_txn, direction, at_ms, detail
        FROM access_events WHERE school_id = $1 AND at_ms >= $2 ORDER BY at_ms, id LIMIT $3
        """,
        school_id, since_ms, min(limit, ACCESS_EVENTS_PAGE_MAX),
    )
    return [(r["id"], AccessEvent(*list(r)[1:])) for r in rows]


# ---------------------------------------------------------------- fire alarms

_ALARM_KINDS = (int(AccessKind.FIRE_ALARM), int(AccessKind.TURNSTILE_RELEASED), int(AccessKind.FIRE_RESET))


async def alarm_events(conn: asyncpg.Connection) -> list[AccessEvent]:
    """Every school's alarm events since its last reset, oldest first: what
    ``LedgerState.apply_alarm_events`` rebuilds the alarms still on from."""
    rows = await conn.fetch(
        """
        SELECT kind, school_id, account_id, device_id, device_txn, direction, at_ms, detail
        FROM access_events e
        WHERE kind = ANY($1::smallint[]) AND at_ms >= coalesce(
            (SELECT max(at_ms) FROM access_events r WHERE r.kind = $2 AND r.school_id = e.school_id), 0)
        ORDER BY at_ms, id
        """,
        list(_ALARM_KINDS), int(AccessKind.FIRE_RESET),
    )
    return [AccessEvent(*r) for r in rows]


class MusterEntry(msgspec.Struct, frozen=True):
    account_id: int
    full_name: str
    grade: int
    class_name: str
    evacuated_at_ms: int | None  # the first exit a device reported after the alarm


class AlarmView(msgspec.Struct, frozen=True):
    device_id: int  # the alarm's key: a fire panel and its txn, or 0 and the command's seq
    device_txn: int
    raised_at_ms: int
    source: str
    reset_at_ms: int | None
    reset_detail: str | None
    released: list[tuple[int, int]]  # (turnstile, when it confirmed), by time
    muster: list[MusterEntry]  # by grade, class, name


async def latest_alarm(conn: asyncpg.Connection, school_id: int) -> AlarmView | None:
    """A school's latest fire alarm with its muster list (kept for good), the releases and
    who has been reported leaving since."""
    alarm = await conn.fetchrow(
        "SELECT device_id, device_txn, at_ms, detail FROM access_events WHERE kind = $1 AND school_id = $2"
        " ORDER BY at_ms DESC, id DESC LIMIT 1",
        int(AccessKind.FIRE_ALARM), school_id,
    )
    if alarm is None:
        return None
    key = f"{alarm['device_id']}:{alarm['device_txn']}"
    reset = await conn.fetchrow(
        "SELECT at_ms, detail FROM access_events WHERE kind = $1 AND school_id = $2 AND at_ms >= $3"
        " AND detail LIKE '%alarm ' || $4 ORDER BY at_ms LIMIT 1",
        int(AccessKind.FIRE_RESET), school_id, alarm["at_ms"], key,
    )
    released = await conn.fetch(
        "SELECT device_id, at_ms FROM access_events WHERE kind = $1 AND school_id = $2 AND detail = $3"
        " ORDER BY at_ms, device_id",
        int(AccessKind.TURNSTILE_RELEASED), school_id, key,
    )
    muster = await conn.fetch(
        """
        SELECT p.account_id, p.full_name, p.grade, p.class_name,
               (SELECT min(j.happened_at_ms) FROM journal j
                WHERE j.account_id = m.account_id AND j.kind = $5 AND j.direction = $6
                  AND j.happened_at_ms >= m.at_ms) AS evacuated_at_ms
        FROM access_events m JOIN pupils p ON p.account_id = m.account_id
        WHERE m.kind = $1 AND m.school_id = $2 AND m.device_id = $3 AND m.device_txn = $4
        ORDER BY p.grade, p.class_name, p.full_name, p.account_id
        """,
        int(AccessKind.MUSTERED), school_id, alarm["device_id"], alarm["device_txn"],
        int(JournalKind.PASSAGE), int(Direction.OUT),
    )
    return AlarmView(
        alarm["device_id"], alarm["device_txn"], alarm["at_ms"], alarm["detail"],
        reset["at_ms"] if reset else None, reset["detail"] if reset else None,
        [(r["device_id"], r["at_ms"]) for r in released],
        [MusterEntry(*r) for r in muster],
    )
