"""The notifier's records (migration 0009): events taken in, and one delivery per
(event, representative, channel).

The notifier (``notifier/``) writes here and nowhere else; operators and the parents'
API read through the functions at the end (by event, by representative, by pupil, the
dead letters, paginated by id).

Taking an event in (``take_in``) is one statement in the caller's transaction: the
``processed_events`` row with ``ON CONFLICT (event_id) DO NOTHING`` and, only when that
row is new, the delivery records. An event redelivered by MQTT (QoS 1 is at least once)
creates nothing; a crash before COMMIT creates nothing either, and the event comes again.

Sending (``claim_due`` / ``finish``): a notifier process claims due deliveries with
``FOR UPDATE SKIP LOCKED`` (so several processes never claim the same one), marks them
``sending`` with a lease (``next_attempt_at_ms`` = now + lease) and commits before it
sends; after each send it writes the outcome. A claim whose process died is taken again
when its lease ends (or at once by the same process after a restart,
``reclaim_interrupted``) and counted in ``interrupted_attempts``.

Retention (``purge_batch``, at the end): events taken in before a horizon go with their
deliveries, SMS parts and digests, in bounded batches, once every delivery of the event is
finished (sent, dead or cancelled); an unfinished one (pending, sending, failed) keeps its event.
"""

from __future__ import annotations

from typing import Iterable

import asyncpg
import msgspec

PENDING, SENDING, SENT, FAILED, DEAD, CANCELLED = "pending", "sending", "sent", "failed", "dead", "cancelled"
STATUSES = (PENDING, SENDING, SENT, FAILED, DEAD, CANCELLED)
# One page of a read: a parent's screen or an operator's table, never the whole history.
PAGE_ROWS_MAX = 500


class Target(msgspec.Struct, frozen=True, array_like=True):
    """Where one delivery goes: a representative on one channel, at one address."""

    representative_id: int
    channel: str
    address: str


class Delivery(msgspec.Struct, frozen=True):
    """A delivery record as operators and the parents' API read it."""

    id: int
    event_id: str
    representative_id: int
    channel: str
    address: str
    status: str
    attempts: int
    interrupted_attempts: int
    next_attempt_at_ms: int
    last_error: str | None
    created_at_ms: int
    updated_at_ms: int
    sent_at_ms: int | None
    kind: str
    account_id: int
    at_ms: int


class Claimed(msgspec.Struct, frozen=True):
    """A delivery claimed for sending, with what rendering it needs."""

    id: int
    event_id: str
    representative_id: int
    channel: str
    address: str
    attempts: int  # including this one
    interrupted: bool  # the previous claim's process died during its send
    kind: str
    account_id: int
    school_id: int
    created_at_ms: int  # the outbox row's
    notice: bytes  # ledger.notices JSON
    representative_active: bool  # neither suspended nor removed now


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """What became of one claimed delivery."""

    id: int
    status: str  # sent, failed, dead or cancelled
    next_attempt_at_ms: int
    last_error: str | None
    # When the attempt ended (for a sent one the peer's acceptance: its sent_at_ms). None: the
    # time the outcome is written. Outcomes are written in batches, a little after they ended.
    ended_at_ms: int | None = None


class ProcessedEvent(msgspec.Struct, frozen=True):
    event_id: str
    kind: str
    account_id: int
    school_id: int
    at_ms: int
    created_at_ms: int
    received_at_ms: int
    deliveries: int
    notice: msgspec.Raw


# -- taking events in ---------------------------------------------------------------------------

# A batch of events and their deliveries in one statement. An event taken in before (its
# event_id recorded: a broker's redelivery, a relay's republish) writes nothing and is answered
# None; the caller de-duplicates within the batch.
_TAKE_IN = """
WITH event AS (
    INSERT INTO processed_events
        (event_id, kind, account_id, school_id, at_ms, created_at_ms, received_at_ms, notice, deliveries)
    SELECT e.event_id, e.kind, e.account_id, e.school_id, e.at_ms, e.created_at_ms, $7, e.notice::jsonb, e.deliveries
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::integer[], $5::bigint[], $6::bigint[], $8::text[],
                $9::integer[]) AS e(event_id, kind, account_id, school_id, at_ms, created_at_ms, notice, deliveries)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), made AS (
    INSERT INTO deliveries (event_id, representative_id, channel, address, status, next_attempt_at_ms,
                            created_at_ms, updated_at_ms)
    SELECT t.event_id, t.representative_id, t.channel, t.address, 'pending', $7, $7, $7
    FROM unnest($10::text[], $11::bigint[], $12::text[], $13::text[]) AS t(event_id, representative_id, channel, address)
    JOIN event USING (event_id)
    RETURNING event_id
)
SELECT event.event_id, (SELECT count(*) FROM made WHERE made.event_id = event.event_id) AS made FROM event
"""


class EventIn(msgspec.Struct, frozen=True):
    """One event to take in, with where its deliveries go."""

    event_id: str
    kind: str
    account_id: int
    school_id: int
    at_ms: int
    created_at_ms: int
    notice_json: str
    targets: list[Target]


async def take_in_batch(
    conn: asyncpg.Connection, events: list[EventIn], *, now_ms: int, timeout_s: float | None = None,
) -> list[int | None]:
    """Record the events and their deliveries in one statement; for each event, None if it was
    taken in before (by an earlier batch, or earlier in this one: nothing written), else the
    number of delivery records made. Call it inside a transaction when it must commit together
    with other statements."""
    first: dict[str, int] = {}
    for i, e in enumerate(events):
        first.setdefault(e.event_id, i)
    unique = [events[i] for i in sorted(first.values())]
    flat = [(e.event_id, t) for e in unique for t in e.targets]
    rows = await conn.fetch(
        _TAKE_IN,
        [e.event_id for e in unique], [e.kind for e in unique], [e.account_id for e in unique],
        [e.school_id for e in unique], [e.at_ms for e in unique], [e.created_at_ms for e in unique], now_ms,
        [e.notice_json for e in unique], [len(e.targets) for e in unique],
        [event_id for event_id, _ in flat], [t.representative_id for _, t in flat], [t.channel for _, t in flat],
        [t.address for _, t in flat],
        timeout=timeout_s,
    )
    made = {r["event_id"]: int(r["made"]) for r in rows}
    out: list[int | None] = []
    for i, e in enumerate(events):
        count = made.get(e.event_id) if first[e.event_id] == i else None
        assert count is None or count == len(e.targets), (e.event_id, count, len(e.targets))
        out.append(count)
    return out


async def take_in(
    conn: asyncpg.Connection,
    *,
    event_id: str,
    kind: str,
    account_id: int,
    school_id: int,
    at_ms: int,
    created_at_ms: int,
    notice_json: str,
    targets: list[Target],
    now_ms: int,
    timeout_s: float | None = None,
) -> int | None:
    """One event (``take_in_batch``)."""
    return (await take_in_batch(conn, [EventIn(event_id, kind, account_id, school_id, at_ms, created_at_ms,
                                               notice_json, targets)], now_ms=now_ms, timeout_s=timeout_s))[0]


# -- sending ------------------------------------------------------------------------------------

# Due: pending or failed whose time has come, or sending whose lease ended (its process
# died during the send). The lease is next_attempt_at_ms itself, so one partial index
# serves both. A claim taken over from a dead process gets its reason on the record.
_CLAIM = """
WITH due AS (
    SELECT id, status = 'sending' AS interrupted FROM deliveries
    WHERE status IN ('pending', 'sending', 'failed') AND next_attempt_at_ms <= $1 AND channel = ANY ($5::text[])
    ORDER BY next_attempt_at_ms, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries AS d
SET status = 'sending', attempts = d.attempts + 1,
    interrupted_attempts = d.interrupted_attempts + due.interrupted::int,
    last_error = CASE WHEN due.interrupted THEN $6 ELSE d.last_error END,
    claimed_by = $3, next_attempt_at_ms = $1 + $4, updated_at_ms = $1
FROM due, processed_events AS e, representatives AS r
WHERE d.id = due.id AND e.event_id = d.event_id AND r.id = d.representative_id
RETURNING d.id, d.event_id, d.representative_id, d.channel, d.address, d.attempts, due.interrupted,
          e.kind, e.account_id, e.school_id, e.created_at_ms, e.notice::text AS notice,
          r.removed_at_ms IS NULL AND r.suspended_at_ms IS NULL AS active
"""
INTERRUPTED_ERROR = "interrupted: the notifier stopped during the send; sent again (the peer may see it twice)"


async def claim_due(
    conn: asyncpg.Connection,
    *,
    now_ms: int,
    limit: int,
    lease_ms: int,
    worker: str,
    channels: Iterable[str],
    timeout_s: float | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries of these channels for ``worker`` (committed
    before the caller sends), oldest due first."""
    assert 0 < limit <= PAGE_ROWS_MAX and lease_ms > 0
    channels = list(channels)
    # One statement: it commits (autocommit) before the caller sends.
    rows = await conn.fetch(_CLAIM, now_ms, limit, worker, lease_ms, channels, INTERRUPTED_ERROR, timeout=timeout_s)
    return [
        Claimed(
            id=r["id"], event_id=r["event_id"], representative_id=r["representative_id"], channel=r["channel"],
            address=r["address"], attempts=r["attempts"], interrupted=bool(r["interrupted"]), kind=r["kind"],
            account_id=r["account_id"], school_id=r["school_id"], created_at_ms=r["created_at_ms"],
            notice=r["notice"].encode(), representative_active=bool(r["active"]),
        )
        for r in sorted(rows, key=lambda r: r["id"])
    ]


_FINISH = """
UPDATE deliveries AS d
SET status = o.status, next_attempt_at_ms = o.next_attempt_at_ms, last_error = o.last_error,
    sent_at_ms = CASE WHEN o.status = 'sent' THEN coalesce(o.ended_at_ms, $2) ELSE d.sent_at_ms END,
    claimed_by = NULL, updated_at_ms = $2
FROM unnest($1::bigint[], $4::text[], $5::bigint[], $6::text[], $7::bigint[])
     AS o(id, status, next_attempt_at_ms, last_error, ended_at_ms)
WHERE d.id = o.id AND d.status = 'sending' AND d.claimed_by = $3
"""


async def finish(
    conn: asyncpg.Connection, outcomes: list[Outcome], *, now_ms: int, worker: str, timeout_s: float | None = None
) -> int:
    """Write the outcomes of ``worker``'s claims; returns how many rows changed (a claim
    whose lease was taken over by another process is left to that one)."""
    if not outcomes:
        return 0
    for o in outcomes:
        assert o.status in (SENT, FAILED, DEAD, CANCELLED), o.status
    status = await conn.execute(
        _FINISH,
        [o.id for o in outcomes], now_ms, worker, [o.status for o in outcomes],
        [o.next_attempt_at_ms for o in outcomes], [o.last_error for o in outcomes],
        [o.ended_at_ms for o in outcomes], timeout=timeout_s,
    )
    return int(status.rsplit(" ", 1)[1])


async def reclaim_interrupted(conn: asyncpg.Connection, *, worker: str, now_ms: int, timeout_s: float | None = None) -> int:
    """At the start of a process: the claims a previous process of the same name held when
    it died are due at once (no need to wait for their lease). Returns how many."""
    status = await conn.execute(
        "UPDATE deliveries SET next_attempt_at_ms = $2 WHERE status = 'sending' AND claimed_by = $1",
        worker, now_ms, timeout=timeout_s,
    )
    return int(status.rsplit(" ", 1)[1])


async def requeue(conn: asyncpg.Connection, delivery_id: int, *, now_ms: int, timeout_s: float | None = None) -> bool:
    """An operator's retry of a dead letter: due at once, with a fresh count of attempts."""
    status = await conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at_ms = $2, updated_at_ms = $2 "
        "WHERE id = $1 AND status = 'dead'",
        delivery_id, now_ms, timeout=timeout_s,
    )
    return status.endswith(" 1")


async def next_due_at_ms(conn: asyncpg.Connection, channels: Iterable[str], timeout_s: float | None = None) -> int | None:
    """When the earliest unfinished delivery of these channels is due (None: nothing is)."""
    return await conn.fetchval(
        "SELECT min(next_attempt_at_ms) FROM deliveries "
        "WHERE status IN ('pending', 'sending', 'failed') AND channel = ANY ($1::text[])",
        list(channels), timeout=timeout_s,
    )


# -- what the texts need: school, products, pupil ------------------------------------------------


class SchoolReference(msgspec.Struct, frozen=True):
    name: str
    utc_offset_minutes: int
    products: dict[int, str]  # code -> name


async def school_reference(conn: asyncpg.Connection, school_id: int, timeout_s: float | None = None) -> SchoolReference | None:
    row = await conn.fetchrow("SELECT name, utc_offset_minutes FROM schools WHERE id = $1", school_id, timeout=timeout_s)
    if row is None:
        return None
    products = await conn.fetch("SELECT code, name FROM products WHERE school_id = $1", school_id, timeout=timeout_s)
    return SchoolReference(row["name"], row["utc_offset_minutes"], {p["code"]: p["name"] for p in products})


async def pupil_names(conn: asyncpg.Connection, account_ids: Iterable[int],
                      timeout_s: float | None = None) -> dict[int, str]:
    """The names of these pupils in one statement (a claimed batch's); an unknown account is
    absent from the answer."""
    rows = await conn.fetch("SELECT account_id, full_name FROM pupils WHERE account_id = ANY($1::bigint[])",
                            list(account_ids), timeout=timeout_s)
    return {r["account_id"]: r["full_name"] for r in rows}


# -- reads for operators and the parents' API ----------------------------------------------------

_DELIVERY_COLUMNS = """
d.id, d.event_id, d.representative_id, d.channel, d.address, d.status, d.attempts, d.interrupted_attempts,
d.next_attempt_at_ms, d.last_error, d.created_at_ms, d.updated_at_ms, d.sent_at_ms,
e.kind, e.account_id, e.at_ms
"""


def _delivery(r: asyncpg.Record) -> Delivery:
    return Delivery(**dict(r))


def _page(limit: int) -> int:
    if not 0 < limit <= PAGE_ROWS_MAX:
        raise ValueError(f"limit must be 1..{PAGE_ROWS_MAX}")
    return limit


async def by_event(conn: asyncpg.Connection, event_id: str) -> list[Delivery]:
    """Every delivery of one event (a few: its representatives times their channels)."""
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN processed_events e USING (event_id) "
        "WHERE d.event_id = $1 ORDER BY d.id",
        event_id,
    )
    return [_delivery(r) for r in rows]


async def by_representative(
    conn: asyncpg.Connection, representative_id: int, *, limit: int = 50, before_id: int | None = None
) -> list[Delivery]:
    """A representative's deliveries, newest first; the next page starts before the last id."""
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN processed_events e USING (event_id) "
        "WHERE d.representative_id = $1 AND d.id < $2 ORDER BY d.id DESC LIMIT $3",
        representative_id, before_id if before_id is not None else 2**63 - 1, _page(limit),
    )
    return [_delivery(r) for r in rows]


async def by_status(
    conn: asyncpg.Connection, status: str, *, limit: int = 50, before_id: int | None = None
) -> list[Delivery]:
    """Deliveries in one status, newest first (``dead``: the dead letters, on their own index)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN processed_events e USING (event_id) "
        "WHERE d.status = $1 AND d.id < $2 ORDER BY d.id DESC LIMIT $3",
        status, before_id if before_id is not None else 2**63 - 1, _page(limit),
    )
    return [_delivery(r) for r in rows]


async def dead_letters(conn: asyncpg.Connection, *, limit: int = 50, before_id: int | None = None) -> list[Delivery]:
    return await by_status(conn, DEAD, limit=limit, before_id=before_id)


async def events_of_pupil(
    conn: asyncpg.Connection, account_id: int, *, limit: int = 50, before_at_ms: int | None = None
) -> list[ProcessedEvent]:
    """A pupil's events as the notifier took them in, newest first (the parents' history feed);
    the next page starts before the last ``at_ms``."""
    rows = await conn.fetch(
        "SELECT event_id, kind, account_id, school_id, at_ms, created_at_ms, received_at_ms, deliveries, "
        "notice::text AS notice FROM processed_events WHERE account_id = $1 AND at_ms < $2 "
        "ORDER BY at_ms DESC, event_id DESC LIMIT $3",
        account_id, before_at_ms if before_at_ms is not None else 2**63 - 1, _page(limit),
    )
    return [
        ProcessedEvent(**{**dict(r), "notice": msgspec.Raw(r["notice"].encode())}) for r in rows
    ]


async def status_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """How many deliveries are in each status (a full scan: for tests and occasional checks)."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
    return {r["status"]: int(r["n"]) for r in rows}


# -- SMS (migration 0012): the SMSC's message ids, receipts, deferrals, digests ------------------

_SMS_DELIVERED = """
UPDATE deliveries AS d
SET receipt_status = s.status, delivered_at_ms = CASE WHEN s.status = 'DELIVRD' THEN s.at ELSE NULL END
FROM (
    SELECT p.delivery_id,
           CASE WHEN count(*) FILTER (WHERE p.stat = 'DELIVRD') = max(p.parts) THEN 'DELIVRD'
                ELSE max(p.stat) FILTER (WHERE p.stat IS NOT NULL AND p.stat <> 'DELIVRD') END AS status,
           max(p.receipt_at_ms) AS at
    FROM sms_parts p WHERE p.delivery_id = $1 GROUP BY p.delivery_id
) AS s
WHERE d.id = s.delivery_id AND s.status IS NOT NULL
"""


async def sms_submitted(conn: asyncpg.Connection, delivery_id: int, message_ids: list[str], *, now_ms: int,
                        timeout_s: float | None = None) -> None:
    """The SMSC accepted every part of ``delivery_id``: its message ids (in part order) are
    kept; receipts that came first are matched now."""
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO sms_parts (smsc_message_id, delivery_id, part, parts, submitted_at_ms)
            SELECT m, $1, n, $3, $4 FROM unnest($2::text[]) WITH ORDINALITY AS t(m, n)
            ON CONFLICT (smsc_message_id) DO UPDATE
            SET delivery_id = EXCLUDED.delivery_id, part = EXCLUDED.part, parts = EXCLUDED.parts,
                submitted_at_ms = EXCLUDED.submitted_at_ms
            """,
            delivery_id, message_ids, len(message_ids), now_ms, timeout=timeout_s,
        )
        await conn.execute("UPDATE deliveries SET smsc_message_id = $2, sms_parts = $3 WHERE id = $1",
                           delivery_id, message_ids[0], len(message_ids), timeout=timeout_s)
        await conn.execute(_SMS_DELIVERED, delivery_id, timeout=timeout_s)  # the one rule of a receipt status


async def sms_receipt(conn: asyncpg.Connection, smsc_message_id: str, stat: str, *, now_ms: int,
                      timeout_s: float | None = None) -> int | None:
    """A delivery receipt (deliver_sm) for one part; returns its delivery id when known."""
    async with conn.transaction():
        delivery_id = await conn.fetchval(
            """
            INSERT INTO sms_parts (smsc_message_id, stat, receipt_at_ms) VALUES ($1, $2, $3)
            ON CONFLICT (smsc_message_id) DO UPDATE SET stat = EXCLUDED.stat, receipt_at_ms = EXCLUDED.receipt_at_ms
            RETURNING delivery_id
            """,
            smsc_message_id, stat, now_ms, timeout=timeout_s,
        )
        if delivery_id is not None:
            await conn.execute(_SMS_DELIVERED, delivery_id, timeout=timeout_s)
    return delivery_id


async def sms_sent_since(conn: asyncpg.Connection, representative_id: int, since_ms: int,
                         timeout_s: float | None = None) -> int:
    """SMS messages (not parts) the SMSC accepted for a representative since ``since_ms``."""
    return int(await conn.fetchval(
        "SELECT count(DISTINCT p.delivery_id) FROM sms_parts p JOIN deliveries d ON d.id = p.delivery_id "
        "WHERE d.representative_id = $1 AND p.submitted_at_ms >= $2",
        representative_id, since_ms, timeout=timeout_s,
    ))


async def defer(conn: asyncpg.Connection, delivery_id: int, *, until_ms: int, reason: str, now_ms: int, worker: str,
                timeout_s: float | None = None) -> bool:
    """A claimed delivery that must wait (quiet hours, the digest's time): pending again,
    due at ``until_ms``; the claim does not count as an attempt."""
    status = await conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = greatest(attempts - 1, 0), next_attempt_at_ms = $2, "
        "last_error = $3, claimed_by = NULL, updated_at_ms = $4 WHERE id = $1 AND status = 'sending' AND claimed_by = $5",
        delivery_id, until_ms, reason, now_ms, worker, timeout=timeout_s,
    )
    return status.endswith(" 1")


class DigestClaim(msgspec.Struct, frozen=True):
    carrier_delivery_id: int
    covered: list[int]


async def claim_digest(conn: asyncpg.Connection, *, representative_id: int, delivery_id: int, period_start_ms: int,
                       period_end_ms: int, now_ms: int, timeout_s: float | None = None) -> DigestClaim:
    """The digest of one representative's period: the first delivery to ask becomes its
    carrier and covers every unfinished SMS delivery of the period's events; later ones read it."""
    row = await conn.fetchrow(
        """
        INSERT INTO sms_digests (representative_id, period_end_ms, carrier_delivery_id, covered, created_at_ms)
        SELECT $1, $2, $3, array(
            SELECT d.id FROM deliveries d JOIN processed_events e USING (event_id)
            WHERE d.representative_id = $1 AND d.channel = 'sms' AND e.at_ms >= $4 AND e.at_ms < $2
              AND (d.status IN ('pending', 'sending', 'failed')) ORDER BY e.at_ms, d.id), $5
        ON CONFLICT (representative_id, period_end_ms) DO NOTHING
        RETURNING carrier_delivery_id, covered
        """,
        representative_id, period_end_ms, delivery_id, period_start_ms, now_ms, timeout=timeout_s,
    )
    if row is None:
        row = await conn.fetchrow(
            "SELECT carrier_delivery_id, covered FROM sms_digests WHERE representative_id = $1 AND period_end_ms = $2",
            representative_id, period_end_ms, timeout=timeout_s,
        )
    return DigestClaim(row["carrier_delivery_id"], list(row["covered"]))


async def digest_events(conn: asyncpg.Connection, delivery_ids: list[int],
                        timeout_s: float | None = None) -> list[tuple[int, str, str, int, int]]:
    """(account_id, kind, notice JSON, school_id, at_ms) of the covered deliveries, oldest first."""
    rows = await conn.fetch(
        "SELECT e.account_id, e.kind, e.notice::text AS notice, e.school_id, e.at_ms FROM deliveries d "
        "JOIN processed_events e USING (event_id) WHERE d.id = ANY ($1::bigint[]) ORDER BY e.at_ms, d.id",
        delivery_ids, timeout=timeout_s,
    )
    return [(r["account_id"], r["kind"], r["notice"], r["school_id"], r["at_ms"]) for r in rows]


class SmsReceipt(msgspec.Struct, frozen=True):
    smsc_message_id: str | None
    sms_parts: int | None
    receipt_status: str | None
    delivered_at_ms: int | None


async def sms_receipt_of(conn: asyncpg.Connection, delivery_id: int) -> SmsReceipt | None:
    row = await conn.fetchrow(
        "SELECT smsc_message_id, sms_parts, receipt_status, delivered_at_ms FROM deliveries WHERE id = $1", delivery_id)
    return SmsReceipt(**dict(row)) if row is not None else None


# -- retention (docs/notifier.md "Retention") ----------------------------------------------------

# Events deleted per transaction, each with its deliveries, their SMS parts and digests. An event
# has one delivery per (representative, channel): typically two to six, at most 36 (six
# representatives of a pupil on six channels, staff_api.representatives). So a batch deletes a
# few thousand rows, each statement well inside the notifier's STATEMENT_TIMEOUT_MS, and holds
# its row locks that long only, on rows nothing else touches (finished, a year old).
PURGE_BATCH_EVENTS_MAX = 1_000
UNFINISHED = (PENDING, SENDING, FAILED)  # still owed to someone: never purged

_PURGE_CANDIDATES = """
SELECT e.event_id FROM processed_events AS e
WHERE e.received_at_ms < $1
  AND NOT EXISTS (SELECT 1 FROM deliveries AS d
                  WHERE d.event_id = e.event_id AND d.status IN ('pending', 'sending', 'failed'))
ORDER BY e.received_at_ms
LIMIT $2
FOR UPDATE OF e SKIP LOCKED
"""


class Purged(msgspec.Struct):
    """What one purge batch (or a run of them) deleted; ``candidates``: events the batch took up
    (fewer than its limit: nothing older is left, or another purger holds the rest)."""

    events: int = 0
    deliveries: int = 0
    sms_parts: int = 0
    sms_digests: int = 0
    candidates: int = 0

    def __add__(self, other: "Purged") -> "Purged":
        return Purged(*(a + b for a, b in zip(msgspec.structs.astuple(self), msgspec.structs.astuple(other))))


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])


async def purge_batch(conn: asyncpg.Connection, *, before_ms: int, limit: int = PURGE_BATCH_EVENTS_MAX,
                      timeout_s: float | None = None) -> Purged:
    """One transaction: up to ``limit`` of the oldest events taken in before ``before_ms``
    (``received_at_ms``) whose every delivery is finished, with their deliveries, SMS parts and
    digests. SKIP LOCKED: purgers in several processes take different events. The deliveries are
    locked and read again before anything goes: one that became unfinished meanwhile (an
    operator's requeue of a dead letter) keeps its event and everything of it."""
    assert 0 < limit <= PURGE_BATCH_EVENTS_MAX, limit
    async with conn.transaction():
        events = [r["event_id"] for r in await conn.fetch(_PURGE_CANDIDATES, before_ms, limit, timeout=timeout_s)]
        if not events:
            return Purged()
        rows = await conn.fetch(
            "SELECT id, event_id, status FROM deliveries WHERE event_id = ANY ($1::text[]) ORDER BY id FOR UPDATE",
            events, timeout=timeout_s,
        )
        kept = {r["event_id"] for r in rows if r["status"] in UNFINISHED}
        gone_events = [e for e in events if e not in kept]
        gone = [r["id"] for r in rows if r["event_id"] not in kept]
        parts = await conn.execute("DELETE FROM sms_parts WHERE delivery_id = ANY ($1::bigint[])", gone,
                                   timeout=timeout_s)
        digests = await conn.execute("DELETE FROM sms_digests WHERE carrier_delivery_id = ANY ($1::bigint[])", gone,
                                     timeout=timeout_s)
        deliveries = await conn.execute("DELETE FROM deliveries WHERE id = ANY ($1::bigint[])", gone,
                                        timeout=timeout_s)
        deleted = await conn.execute("DELETE FROM processed_events WHERE event_id = ANY ($1::text[])", gone_events,
                                     timeout=timeout_s)
    out = Purged(events=_count(deleted), deliveries=_count(deliveries), sms_parts=_count(parts),
                 sms_digests=_count(digests), candidates=len(events))
    assert out.events == len(gone_events) and out.deliveries == len(gone), out  # the rows locked are the rows gone
    return out


async def purge_orphan_sms_parts(conn: asyncpg.Connection, *, before_ms: int, limit: int = PURGE_BATCH_EVENTS_MAX,
                                 timeout_s: float | None = None) -> int:
    """Receipts that never met their submit (``sms_parts`` rows without a delivery: the submit's
    record was lost), received before ``before_ms``; at most ``limit``. Returns how many."""
    assert 0 < limit <= PURGE_BATCH_EVENTS_MAX, limit
    status = await conn.execute(
        "DELETE FROM sms_parts WHERE smsc_message_id IN (SELECT smsc_message_id FROM sms_parts "
        "WHERE delivery_id IS NULL AND receipt_at_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        before_ms, limit, timeout=timeout_s,
    )
    return _count(status)

