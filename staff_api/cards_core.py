"""Card life cycle inside one transaction: bind, unbind, block, temporary cards.

Every transition writes an ``identifier_events`` row and notifies the gateway
(``identifier:<hex>``) for each identifier it touches; callers audit.

What parents are told of goes to the outbox in the same transaction (``card_notice``):
a temporary card issued (``temporary_card_issued``), a temporary card returned
(``temporary_card_returned``), a card blocked (``card_blocked``: by the block resource,
and a broken card's temporary card retired when a new permanent card is bound). The
payloads are the ledger's ``ledger.notices`` Structs, so the notifier decodes every
outbox row with one decoder; ``NOTIFY ecard_outbox`` (``storage.outbox.OUTBOX_CHANNEL``)
wakes the relay at COMMIT.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from ledger.codes import OutboxKind
from ledger.notices import CardNotice, Notice, TemporaryCardIssuedNotice, TemporaryCardReturnedNotice
from ledger.records import OutboxEvent
from storage.outbox import OUTBOX_CHANNEL

from . import db
from .errors import Conflict, invalid, refuse
from .refusals import Refusal

_OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, kind, account_id, payload, created_at_ms) VALUES ($1, $2, $3, $4::jsonb, $5) "
    "ON CONFLICT (event_id) DO NOTHING"
)
_encode = msgspec.json.Encoder().encode


def card_event_id(identifier: bytes, kind: OutboxKind, at_ms: int) -> str:
    """``card:<identifier hex>:<kind>:<at_ms>``: the same change always gets the same id.

    A card reaches each of these states once (a blocked card is never unbound, so its
    UID is never bound again), and a retried request finds the state changed and is
    refused (409) before it writes; the time only makes the id self-explaining.
    """
    return f"card:{identifier.hex()}:{kind.value}:{at_ms}"


async def card_notice(
    conn: asyncpg.Connection, kind: OutboxKind, account_id: int, identifier: bytes, at_ms: int,
    *, expires_at_ms: int | None = None,
) -> OutboxEvent:
    """Write the outbox row telling the pupil's representatives of a card event; returns it.

    ``expires_at_ms`` (temporary_card_issued): None, a card without expiry (lost,
    broken), is stored as 0, the ledger's "no expiry" (``LedgerState.add_identifier``).
    """
    school_id = await conn.fetchval("SELECT school_id FROM accounts WHERE id = $1", account_id)
    common: dict[str, Any] = {"account_id": account_id, "school_id": school_id or 0, "at_ms": at_ms,
                              "identifier_hex": identifier.hex()}
    notice: Notice
    if kind is OutboxKind.TEMPORARY_CARD_ISSUED:
        notice = TemporaryCardIssuedNotice(**common, expires_at_ms=expires_at_ms or 0)
    elif kind is OutboxKind.TEMPORARY_CARD_RETURNED:
        notice = TemporaryCardReturnedNotice(**common)
    elif kind is OutboxKind.CARD_BLOCKED:
        notice = CardNotice(**common)
    else:
        raise ValueError(f"{kind!r} is not a card event")
    event = OutboxEvent(event_id=card_event_id(identifier, kind, at_ms), kind=kind.value, account_id=account_id,
                        payload=notice, created_at_ms=at_ms)  # type: ignore[arg-type]
    await conn.execute(_OUTBOX_INSERT, event.event_id, event.kind, event.account_id,
                       _encode(event.payload).decode(), event.created_at_ms)
    # delivered at COMMIT: the relay publishes at once instead of at its next poll
    await conn.execute("SELECT pg_notify($1, $2)", OUTBOX_CHANNEL, event.event_id)
    return event


async def card_row(conn: asyncpg.Connection, uid: bytes, *, for_update: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {db.CARD_COLUMNS} FROM identifiers WHERE identifier = $1" + (" FOR UPDATE" if for_update else ""),
        uid,
    )
    if row is None:
        raise db.card_not_found(uid)
    return row


async def card_snapshot(conn: asyncpg.Connection, uid: bytes) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {db.CARD_COLUMNS} FROM identifiers WHERE identifier = $1", uid)
    return None if row is None else db.card_view(row)


async def ensure_unbound(conn: asyncpg.Connection, uid: bytes, field: str, school_id: int | None) -> None:
    """409 when the card is taken. Whose it is is named only within ``school_id`` (the school of
    the pupil it was to be bound to): nothing is told of another school's cards and accounts."""
    row = await conn.fetchrow(
        "SELECT i.account_id, i.status, a.school_id FROM identifiers i JOIN accounts a ON a.id = i.account_id "
        "WHERE i.identifier = $1", uid)
    if row is not None:
        if row["school_id"] != school_id:
            raise refuse(Conflict, Refusal.CARD_BOUND_ELSEWHERE, field=field, uid=uid.hex())
        state = db.CARD_STATUS_NAMES.get(row["status"], "?")
        raise refuse(Conflict, Refusal.CARD_BOUND_TO_ACCOUNT, field=field, uid=uid.hex(), account_id=row["account_id"],
                     status=state)
    trusted = await conn.fetchrow(
        "SELECT t.representative_id, r.school_id FROM trusted_cards t JOIN representatives r ON r.id = t.representative_id "
        "WHERE t.identifier = $1", uid)
    if trusted is not None:
        if trusted["school_id"] != school_id:
            raise refuse(Conflict, Refusal.CARD_TRUSTED_ELSEWHERE, field=field, uid=uid.hex())
        raise refuse(Conflict, Refusal.CARD_TRUSTED_OF, field=field, uid=uid.hex(),
                     representative_id=trusted["representative_id"])


async def bind(
    conn: asyncpg.Connection, account_id: int, uid: bytes, kind: int, actor: str, now_ms: int,
    *, replaces: bytes | None = None, expires_at_ms: int | None = None, field: str = "uid",
) -> list[bytes]:
    """Bind ``uid`` to ``account_id``; returns every identifier touched.

    Binding a permanent card blocks the account's active temporary cards that
    stand for a broken card (the promise: "works until a new card is bound").
    """
    await ensure_unbound(conn, uid, field, await conn.fetchval("SELECT school_id FROM accounts WHERE id = $1", account_id))
    await conn.execute(
        "INSERT INTO identifiers (identifier, account_id, kind, status, expires_at_ms, replaces, bound_at_ms) "
        "VALUES ($1, $2, $3, 0, $4, $5, $6)",
        uid, account_id, kind, expires_at_ms, replaces, now_ms,
    )
    await db.identifier_event(conn, uid, account_id, "bind", replaces, actor, now_ms)
    touched = [uid]
    if kind != db.CARD_KINDS["temporary"]:
        broken_temps = await conn.fetch(
            """
            SELECT t.identifier FROM identifiers t
            WHERE t.account_id = $1 AND t.kind = 6 AND t.status = 0
              AND EXISTS (SELECT 1 FROM identifier_events e
                          WHERE e.identifier = t.replaces AND e.related = t.identifier AND e.action = 'broken')
            FOR UPDATE
            """,
            account_id,
        )
        for r in broken_temps:
            temp = bytes(r["identifier"])
            await conn.execute("UPDATE identifiers SET status = 1 WHERE identifier = $1", temp)
            await db.identifier_event(conn, temp, account_id, "block", uid, actor, now_ms)
            await card_notice(conn, OutboxKind.CARD_BLOCKED, account_id, temp, now_ms)
            touched.append(temp)
    for t in touched:
        await db.notify(conn, "identifier", t.hex())
    return touched


async def unbind(conn: asyncpg.Connection, uid: bytes, actor: str, now_ms: int) -> asyncpg.Record:
    """Remove the binding (the card may be bound again elsewhere); the events keep the history."""
    row = await card_row(conn, uid, for_update=True)
    if row["kind"] == db.CARD_KINDS["temporary"] and row["status"] == db.CARD_STATUS_ACTIVE:
        raise refuse(Conflict, Refusal.CARD_TEMPORARY_ACTIVE, uid=uid.hex())
    if row["status"] == db.CARD_STATUS_BLOCKED:
        raise refuse(Conflict, Refusal.CARD_BLOCKED_FOR_GOOD, uid=uid.hex())
    await conn.execute("DELETE FROM identifiers WHERE identifier = $1", uid)
    await db.identifier_event(conn, uid, row["account_id"], "unbind", None, actor, now_ms)
    await db.notify(conn, "identifier", uid.hex())
    return row


async def block(conn: asyncpg.Connection, uid: bytes, actor: str, now_ms: int) -> asyncpg.Record:
    row = await card_row(conn, uid, for_update=True)
    if row["status"] == db.CARD_STATUS_BLOCKED:
        raise refuse(Conflict, Refusal.CARD_ALREADY_BLOCKED, uid=uid.hex())
    await conn.execute("UPDATE identifiers SET status = 1, expires_at_ms = NULL WHERE identifier = $1", uid)
    await db.identifier_event(conn, uid, row["account_id"], "block", None, actor, now_ms)
    await db.notify(conn, "identifier", uid.hex())
    await card_notice(conn, OutboxKind.CARD_BLOCKED, row["account_id"], uid, now_ms)
    return row


async def issue_temporary(
    conn: asyncpg.Connection, original: bytes, reason: str, temp: bytes, utc_offset_minutes: int,
    actor: str, now_ms: int,
) -> None:
    """forgotten: original suspended until the next school midnight, temporary expires then too;
    lost: original blocked for good, temporary without expiry; broken: original blocked,
    temporary until a new permanent card is bound."""
    row = await card_row(conn, original, for_update=True)
    if row["kind"] == db.CARD_KINDS["temporary"]:
        raise invalid("uid", Refusal.TEMPORARY_NOT_REPLACEABLE)
    if row["status"] != db.CARD_STATUS_ACTIVE:
        state = db.CARD_STATUS_NAMES.get(row["status"], "?")
        raise refuse(Conflict, Refusal.ORIGINAL_NOT_ACTIVE, uid=original.hex(), status=state)
    if temp == original:
        raise invalid("temporary_uid", Refusal.TEMPORARY_SAME_AS_ORIGINAL)
    account_id = row["account_id"]
    expires: int | None = None
    if reason == "forgotten":
        expires = db.next_midnight_ms(now_ms, utc_offset_minutes)
        await conn.execute(
            "UPDATE identifiers SET status = 2, expires_at_ms = $2 WHERE identifier = $1", original, expires
        )
    else:  # lost, broken: the original is blocked for good
        await conn.execute("UPDATE identifiers SET status = 1, expires_at_ms = NULL WHERE identifier = $1", original)
    await db.identifier_event(conn, original, account_id, reason, temp, actor, now_ms)
    await db.notify(conn, "identifier", original.hex())
    await bind(conn, account_id, temp, db.CARD_KINDS["temporary"], actor, now_ms,
               replaces=original, expires_at_ms=expires, field="temporary_uid")
    await card_notice(conn, OutboxKind.TEMPORARY_CARD_ISSUED, account_id, temp, now_ms, expires_at_ms=expires)


async def return_temporary(conn: asyncpg.Connection, temp: bytes, actor: str, now_ms: int) -> bytes | None:
    """Temporary card -> blocked; a suspended (forgotten) original is restored. Returns the original."""
    row = await card_row(conn, temp, for_update=True)
    if row["kind"] != db.CARD_KINDS["temporary"]:
        raise invalid("uid", Refusal.NOT_TEMPORARY, uid=temp.hex())
    if row["status"] == db.CARD_STATUS_BLOCKED:
        raise refuse(Conflict, Refusal.TEMPORARY_ALREADY_RETURNED, uid=temp.hex())
    account_id = row["account_id"]
    await conn.execute("UPDATE identifiers SET status = 1, expires_at_ms = NULL WHERE identifier = $1", temp)
    original = None if row["replaces"] is None else bytes(row["replaces"])
    await db.identifier_event(conn, temp, account_id, "returned", original, actor, now_ms)
    await db.notify(conn, "identifier", temp.hex())
    await card_notice(conn, OutboxKind.TEMPORARY_CARD_RETURNED, account_id, temp, now_ms)
    if original is not None:
        restored = await conn.fetchval(
            "UPDATE identifiers SET status = 0, expires_at_ms = NULL "
            "WHERE identifier = $1 AND status = 2 RETURNING identifier",
            original,
        )
        if restored is not None:
            await db.identifier_event(conn, original, account_id, "restored", temp, actor, now_ms)
            await db.notify(conn, "identifier", original.hex())
    return original
