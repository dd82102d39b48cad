"""The SQL of the parents' API (``parents_api/``): one-time codes, bearer sessions, USSD
sessions (migration 0010) and the reads of what a representative may see.

Representatives are migration 0008's (written by the staff API); a representative is
*active* when neither suspended nor removed. A contact is ``phone:+7XXXXXXXXXX`` or
``email:<lower-case address>``; the children a contact sees are the pupils of every
active representative row with that phone or e-mail (one person may have one
application per school). Every read here that names an account takes the contact too,
so a query can only ever return that contact's own children.

Blocking a card (USSD) is done as the staff API does it (``staff_api/cards_core.py``
``block``): ``identifiers.status = 1``, an ``identifier_events`` row, an ``audit_log``
row, the ``card_blocked`` outbox row for the notifier and ``NOTIFY ecard_changes
'identifier:<hex>'`` (``storage.changes``), all in the caller's one transaction.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from ledger.codes import IdentifierStatus, JournalKind, OutboxKind
from ledger.notices import CardNotice
from storage import changes, snapshot
from storage.outbox import OUTBOX_CHANNEL

# ----------------------------------------------------------------------------- contacts

_ACTIVE = "r.removed_at_ms IS NULL AND r.suspended_at_ms IS NULL"
_BY_CONTACT = """
(($1 LIKE 'phone:%' AND r.phone = substr($1, 7)) OR ($1 LIKE 'email:%' AND lower(r.email) = substr($1, 7)))
"""


def phone_contact(phone: str) -> str:
    return f"phone:{phone}"


def email_contact(email: str) -> str:
    return f"email:{email.lower()}"


async def active_representatives(conn: asyncpg.Connection | asyncpg.Pool, contact: str) -> list[asyncpg.Record]:
    """Active representative rows with that contact, by id."""
    return await conn.fetch(
        f"""SELECT r.id, r.school_id, r.full_name, r.relation, r.phone, r.email, r.channels, r.kinds
            FROM representatives r WHERE {_BY_CONTACT} AND {_ACTIVE} ORDER BY r.id""",
        contact,
    )


_CHILDREN = f"""
SELECT DISTINCT p.account_id, p.full_name, p.grade, p.class_name, p.school_id, s.name AS school_name,
       s.utc_offset_minutes, a.balance_kopecks, a.status AS account_status
FROM representatives r
JOIN representative_pupils rp ON rp.representative_id = r.id
JOIN pupils p ON p.account_id = rp.account_id
JOIN accounts a ON a.id = p.account_id
JOIN schools s ON s.id = p.school_id
WHERE {_BY_CONTACT} AND {_ACTIVE}
"""


async def children(conn: asyncpg.Connection | asyncpg.Pool, contact: str) -> list[asyncpg.Record]:
    """The pupils the contact's active representatives cover, by account id."""
    return await conn.fetch(_CHILDREN + " ORDER BY p.account_id", contact)


async def representatives_of(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> list[asyncpg.Record]:
    """The pupil's active representatives (name and relation: what the family sees of each other)."""
    return await conn.fetch(
        f"""SELECT r.id, r.full_name, r.relation FROM representatives r
            JOIN representative_pupils rp ON rp.representative_id = r.id
            WHERE rp.account_id = $1 AND {_ACTIVE} ORDER BY r.id""", account_id)


async def child(conn: asyncpg.Connection | asyncpg.Pool, contact: str, account_id: int) -> asyncpg.Record | None:
    """One pupil, only if the contact's active representatives cover it (None otherwise)."""
    return await conn.fetchrow(_CHILDREN + " AND p.account_id = $2", contact, account_id)


# ----------------------------------------------------------------------------- one-time codes


async def code_requests_since(conn: asyncpg.Connection, contact: str, since_ms: int) -> list[int]:
    """created_at_ms of the contact's code requests at or after ``since_ms``, oldest first."""
    rows = await conn.fetch(
        "SELECT created_at_ms FROM parent_otps WHERE contact = $1 AND created_at_ms >= $2 ORDER BY created_at_ms",
        contact, since_ms,
    )
    return [r["created_at_ms"] for r in rows]


async def lock_contact(conn: asyncpg.Connection, contact: str) -> None:
    """Serialize code requests and redemptions of one contact (transaction-scoped advisory lock)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 377888))", contact)


async def insert_code(
    conn: asyncpg.Connection, contact: str, code_sha256: bytes | None, now_ms: int, expires_at_ms: int
) -> int:
    """A new code for the contact (None: an unknown contact, recorded, never redeemable);
    the contact's earlier unspent codes are spent: only the newest can be redeemed."""
    await conn.execute(
        "UPDATE parent_otps SET used_at_ms = $2 WHERE contact = $1 AND used_at_ms IS NULL", contact, now_ms
    )
    return await conn.fetchval(
        "INSERT INTO parent_otps (contact, code_sha256, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4) "
        "RETURNING id",
        contact, code_sha256, now_ms, expires_at_ms,
    )


async def latest_code(conn: asyncpg.Connection, contact: str) -> asyncpg.Record | None:
    """The contact's newest code row, locked for the redemption."""
    return await conn.fetchrow(
        "SELECT id, code_sha256, created_at_ms, expires_at_ms, attempts, used_at_ms FROM parent_otps "
        "WHERE contact = $1 ORDER BY created_at_ms DESC, id DESC LIMIT 1 FOR UPDATE",
        contact,
    )


async def count_attempt(conn: asyncpg.Connection, otp_id: int) -> int:
    return await conn.fetchval("UPDATE parent_otps SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts", otp_id)


async def spend_code(conn: asyncpg.Connection, otp_id: int, now_ms: int) -> None:
    await conn.execute("UPDATE parent_otps SET used_at_ms = $2 WHERE id = $1", otp_id, now_ms)


async def forget_codes(conn: asyncpg.Connection, before_ms: int) -> None:
    """Drop code rows created before ``before_ms`` (kept one hour for the rate limit)."""
    await conn.execute("DELETE FROM parent_otps WHERE created_at_ms < $1", before_ms)


# ----------------------------------------------------------------------------- bearer sessions


async def insert_session(
    conn: asyncpg.Connection, token_sha256: bytes, contact: str, now_ms: int, expires_at_ms: int
) -> None:
    await conn.execute(
        "INSERT INTO parent_sessions (token_sha256, contact, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
        token_sha256, contact, now_ms, expires_at_ms,
    )


async def session(conn: asyncpg.Connection | asyncpg.Pool, token_sha256: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT contact, created_at_ms, expires_at_ms, revoked_at_ms FROM parent_sessions WHERE token_sha256 = $1",
        token_sha256,
    )


async def revoke_session(conn: asyncpg.Connection | asyncpg.Pool, token_sha256: bytes, now_ms: int) -> None:
    await conn.execute(
        "UPDATE parent_sessions SET revoked_at_ms = $2 WHERE token_sha256 = $1 AND revoked_at_ms IS NULL",
        token_sha256, now_ms,
    )


# ----------------------------------------------------------------------------- what a child did


def journal_select(alias: str = "j") -> str:
    return snapshot.journal_row_columns(alias)


# Rows a parent reads: everything but ENTRY (card presented, turnstile opened): an entry or
# exit counts on PASSAGE. Device rows name the pupil in account_id; a money command may
# credit or debit it as the other side (a transfer), found by migration 0004's partial indexes.
_HISTORY = f"""
SELECT {{cols}} FROM (
    SELECT * FROM journal WHERE account_id = $1 AND kind <> {int(JournalKind.ENTRY)} {{cond}}
    UNION
    SELECT * FROM journal WHERE device_id = 0 AND (credit_account_id = $1 OR debit_account_id = $1) {{cond}}
) AS j
ORDER BY j.decided_at_ms DESC, j.device_id DESC, j.device_txn DESC
LIMIT {{limit}}
"""


async def history(
    conn: asyncpg.Connection, account_id: int, limit: int, before: tuple[int, int, int] | None
) -> list[Any]:
    """Journal rows of a pupil's account (``ledger.records.JournalRow``), newest first by
    (decided_at_ms, device_id, device_txn), strictly before the ``before`` key."""
    args: list[Any] = [account_id]
    cond = ""
    if before is not None:
        cond = "AND (decided_at_ms, device_id, device_txn) < ($2, $3, $4)"
        args += list(before)
    query = _HISTORY.format(cols=journal_select("j"), cond=cond, limit=int(limit))
    return [snapshot.journal_row(r) for r in await conn.fetch(query, *args)]


# An advice is decided after it happened (at most the offline window later); a row that
# happened today is found among the rows decided since the day began minus this margin,
# then filtered on the time it happened. The reader's clock may run ahead of the
# gateway's by the allowed skew: rows decided a little before midnight may have happened
# just after it.
DAY_DECIDED_MARGIN_MS = 5 * 60_000


async def day_rows(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, kinds: tuple[int, ...], start_ms: int, end_ms: int
) -> list[Any]:
    """The pupil's device rows of ``kinds`` that happened in [start_ms, end_ms), oldest first."""
    rows = await conn.fetch(
        f"""SELECT {journal_select("j")} FROM journal j
            WHERE j.account_id = $1 AND j.kind = ANY ($2::smallint[]) AND j.decided_at_ms >= $3
              AND coalesce(j.happened_at_ms, j.decided_at_ms) >= $4 AND coalesce(j.happened_at_ms, j.decided_at_ms) < $5
            ORDER BY coalesce(j.happened_at_ms, j.decided_at_ms), j.device_id, j.device_txn""",
        account_id, list(kinds), start_ms - DAY_DECIDED_MARGIN_MS, start_ms, end_ms,
    )
    return [snapshot.journal_row(r) for r in rows]


async def menus(conn: asyncpg.Connection | asyncpg.Pool, school_id: int, first: Any, last: Any) -> dict:
    """(day, period) -> the product codes of the school's published menu, for first..last."""
    rows = await conn.fetch("SELECT day, period, product_code FROM menus WHERE school_id = $1 AND day BETWEEN $2 AND $3"
                            " ORDER BY day, period, product_code", school_id, first, last)
    out: dict = {}
    for r in rows:
        out.setdefault((r["day"], r["period"]), []).append(r["product_code"])
    return out


async def preorders(conn: asyncpg.Connection | asyncpg.Pool, account_id: int, first: Any, last: Any) -> dict:
    """(day, period) -> {product code: quantity} of the pupil's pre-orders, for first..last."""
    rows = await conn.fetch("SELECT day, period, product_code, quantity FROM preorders WHERE account_id = $1"
                            " AND day BETWEEN $2 AND $3", account_id, first, last)
    out: dict = {}
    for r in rows:
        out.setdefault((r["day"], r["period"]), {})[r["product_code"]] = r["quantity"]
    return out


async def product_categories(conn: asyncpg.Connection | asyncpg.Pool, school_id: int, codes: set[int]) -> dict[int, str]:
    if not codes:
        return {}
    rows = await conn.fetch(
        "SELECT code, category FROM products WHERE school_id = $1 AND code = ANY ($2::integer[])", school_id, list(codes)
    )
    return {r["code"]: r["category"] for r in rows}


async def product_names(conn: asyncpg.Connection | asyncpg.Pool, school_id: int, codes: set[int]) -> dict[int, str]:
    if not codes:
        return {}
    rows = await conn.fetch(
        "SELECT code, name FROM products WHERE school_id = $1 AND code = ANY ($2::integer[])", school_id, list(codes)
    )
    return {r["code"]: r["name"] for r in rows}


# ----------------------------------------------------------------------------- cards


async def cards(conn: asyncpg.Connection | asyncpg.Pool, contact: str, account_id: int) -> list[asyncpg.Record]:
    """The cards of one of the contact's children that can still be blocked (not blocked), by binding time."""
    return await conn.fetch(
        f"""SELECT i.identifier, i.kind, i.status, i.expires_at_ms FROM identifiers i
            WHERE i.account_id = $2 AND i.status <> {int(IdentifierStatus.BLOCKED)}
              AND EXISTS (SELECT 1 FROM ({_CHILDREN}) c WHERE c.account_id = i.account_id)
            ORDER BY i.bound_at_ms NULLS FIRST, i.identifier""",
        contact, account_id,
    )


_OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, kind, account_id, payload, created_at_ms) VALUES ($1, $2, $3, $4::jsonb, $5) "
    "ON CONFLICT (event_id) DO NOTHING"
)
_encode = msgspec.json.Encoder().encode


async def block_card(
    conn: asyncpg.Connection, contact: str, account_id: int, identifier: bytes, actor: str, now_ms: int
) -> bool:
    """Block one of the contact's children's cards for good; call inside a transaction.

    False (nothing written) when the card is not that child's, the child is not the
    contact's, or the card is already blocked.
    """
    row = await conn.fetchrow(
        "SELECT identifier, account_id, kind, status, expires_at_ms, replaces FROM identifiers "
        "WHERE identifier = $1 FOR UPDATE",
        identifier,
    )
    if row is None or row["account_id"] != account_id or row["status"] == IdentifierStatus.BLOCKED:
        return False
    pupil = await child(conn, contact, account_id)
    if pupil is None:
        return False
    before = {"uid": identifier.hex(), "account_id": account_id, "status": IdentifierStatus(row["status"]).name.lower(),
              "expires_at_ms": row["expires_at_ms"]}
    await conn.execute("UPDATE identifiers SET status = 1, expires_at_ms = NULL WHERE identifier = $1", identifier)
    await conn.execute(
        "INSERT INTO identifier_events (identifier, account_id, action, related, actor, at_ms) "
        "VALUES ($1, $2, 'block', NULL, $3, $4)",
        identifier, account_id, actor, now_ms,
    )
    await changes.notify(conn, "identifier", identifier.hex())
    notice = CardNotice(account_id=account_id, school_id=pupil["school_id"], at_ms=now_ms,
                        identifier_hex=identifier.hex())
    kind = OutboxKind.CARD_BLOCKED
    await conn.execute(_OUTBOX_INSERT, f"card:{identifier.hex()}:{kind.value}:{now_ms}", kind.value, account_id,
                       _encode(notice).decode(), now_ms)
    await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
    after = dict(before, status="blocked", expires_at_ms=None)
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, before, after, at_ms) "
        "VALUES ($1, 'card.block', $2, $3::jsonb, $4::jsonb, $5)",
        actor, f"card:{identifier.hex()}", _encode(before).decode(), _encode(after).decode(), now_ms,
    )
    return True


# ----------------------------------------------------------------------------- USSD sessions


async def ussd_session(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT session_id, phone, state::text AS state, created_at_ms, updated_at_ms, expires_at_ms "
        "FROM ussd_sessions WHERE session_id = $1 FOR UPDATE",
        session_id,
    )


async def start_ussd_session(
    conn: asyncpg.Connection, session_id: str, phone: str, now_ms: int, expires_at_ms: int, sessions_max: int
) -> bool:
    """Start (or restart) a session; False when ``sessions_max`` live sessions exist already.

    Expired sessions are deleted first, so the table holds at most ``sessions_max`` rows
    plus the ones that expired since the last start."""
    await conn.execute("DELETE FROM ussd_sessions WHERE expires_at_ms <= $1", now_ms)
    live = await conn.fetchval("SELECT count(*) FROM ussd_sessions WHERE session_id <> $1", session_id)
    if live >= sessions_max:
        return False
    await conn.execute(
        """INSERT INTO ussd_sessions (session_id, phone, state, created_at_ms, updated_at_ms, expires_at_ms)
           VALUES ($1, $2, '{}', $3, $3, $4)
           ON CONFLICT (session_id) DO UPDATE SET phone = $2, state = '{}', created_at_ms = $3, updated_at_ms = $3,
                                                  expires_at_ms = $4""",
        session_id, phone, now_ms, expires_at_ms,
    )
    return True


async def save_ussd_session(
    conn: asyncpg.Connection, session_id: str, state: dict[str, Any], now_ms: int, expires_at_ms: int
) -> None:
    await conn.execute(
        "UPDATE ussd_sessions SET state = $2::jsonb, updated_at_ms = $3, expires_at_ms = $4 WHERE session_id = $1",
        session_id, _encode(state).decode(), now_ms, expires_at_ms,
    )


async def end_ussd_session(conn: asyncpg.Connection, session_id: str) -> None:
    await conn.execute("DELETE FROM ussd_sessions WHERE session_id = $1", session_id)
