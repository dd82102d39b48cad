"""The SQL of bank-card payments (``payments/``): card_payments rows, parents' saved cards
(the acquirer's tokens and last 4 digits, never a card number) and auto top-up rules
(migrations 0002 and 0018).

Who a parent is comes from ``storage.parents`` (a bearer session's contact and its active
representatives). Every read here that belongs to a parent takes that parent's
representative ids, so a query can only return the parent's own payments and cards.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

_encode = msgspec.json.Encoder().encode

# ----------------------------------------------------------------------------- who asks


async def representatives_of_child(conn: asyncpg.Connection | asyncpg.Pool, representative_ids: list[int],
                                   account_id: int) -> list[int]:
    """Those of ``representative_ids`` that cover the pupil ``account_id``, by id."""
    rows = await conn.fetch(
        "SELECT representative_id FROM representative_pupils WHERE account_id = $1 AND representative_id = ANY($2::bigint[]) "
        "ORDER BY representative_id",
        account_id, representative_ids,
    )
    return [r["representative_id"] for r in rows]


# ----------------------------------------------------------------------------- card_payments

_PAYMENT_COLUMNS = ("payment_id, account_id, amount_kopecks, status, origin, created_at_ms, updated_at_ms, "
                    "representative_id, save_card, decline_code, card_last4, saved_card_id")


async def record_payment(conn: asyncpg.Connection, payment_id: str, account_id: int, amount_kopecks: int,
                         origin: str, at_ms: int, *, representative_id: int | None = None, save_card: bool = False,
                         saved_card_id: int | None = None) -> str:
    """The card_payments row of a payment the acquirer accepted (once). The webhook may have
    written it first from the event (a token charge is decided at once and its event can
    overtake the reply): then only what the event cannot know is filled in, who asked and the
    saved card charged, and only on a row of the same account and amount. Returns its status."""
    await conn.execute(
        """
        INSERT INTO card_payments (payment_id, account_id, amount_kopecks, status, origin, created_at_ms, updated_at_ms,
                                   representative_id, save_card, saved_card_id)
        VALUES ($1, $2, $3, 'created', $4, $5, $5, $6, $7, $8)
        ON CONFLICT (payment_id) DO UPDATE SET
            representative_id = coalesce(card_payments.representative_id, EXCLUDED.representative_id),
            saved_card_id = coalesce(card_payments.saved_card_id, EXCLUDED.saved_card_id),
            save_card = card_payments.save_card OR EXCLUDED.save_card,
            -- created when ecard asked, not when the event overtaking the reply was written:
            -- "one threshold charge a local day" reads it (payments.autotopup)
            created_at_ms = least(card_payments.created_at_ms, EXCLUDED.created_at_ms)
        WHERE card_payments.account_id = EXCLUDED.account_id AND card_payments.amount_kopecks = EXCLUDED.amount_kopecks
          AND (card_payments.representative_id IS NULL AND EXCLUDED.representative_id IS NOT NULL
               OR card_payments.saved_card_id IS NULL AND EXCLUDED.saved_card_id IS NOT NULL
               OR NOT card_payments.save_card AND EXCLUDED.save_card)
        """,
        payment_id, account_id, amount_kopecks, origin, at_ms, representative_id, save_card, saved_card_id,
    )
    return await conn.fetchval("SELECT status FROM card_payments WHERE payment_id = $1", payment_id)


async def payment(conn: asyncpg.Connection | asyncpg.Pool, payment_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM card_payments WHERE payment_id = $1", payment_id)


async def set_outcome(conn: asyncpg.Connection, payment_id: str, decline_code: str | None, card_last4: str | None,
                      at_ms: int) -> None:
    """What the acquirer's event says about the card (filled once, never overwritten)."""
    await conn.execute(
        "UPDATE card_payments SET decline_code = coalesce(decline_code, $2), card_last4 = coalesce(card_last4, $3), "
        "updated_at_ms = $4 WHERE payment_id = $1 AND (($2::text IS NOT NULL AND decline_code IS NULL) "
        "OR ($3::text IS NOT NULL AND card_last4 IS NULL))",
        payment_id, decline_code, card_last4, at_ms,
    )


async def manual_topups_since(conn: asyncpg.Connection | asyncpg.Pool, representative_ids: list[int],
                              since_ms: int) -> int:
    """How many top-ups the parent (any of its representative rows) started since ``since_ms``."""
    return await conn.fetchval(
        "SELECT count(*) FROM card_payments WHERE representative_id = ANY($1::bigint[]) AND created_at_ms >= $2",
        representative_ids, since_ms,
    )


async def parent_payment(conn: asyncpg.Connection | asyncpg.Pool, representative_ids: list[int], account_id: int,
                         payment_id: str) -> asyncpg.Record | None:
    """One payment of the pupil that the parent started, or that charged one of the parent's
    saved cards; with its credit command's status (NULL: not submitted yet)."""
    return await conn.fetchrow(
        f"""
        SELECT {', '.join('p.' + c.strip() for c in _PAYMENT_COLUMNS.split(','))}, c.status AS command_status
        FROM card_payments p
        LEFT JOIN saved_cards s ON s.id = p.saved_card_id
        LEFT JOIN commands c ON c.idempotency_key = 'bank:' || p.payment_id || ':captured'
        WHERE p.payment_id = $1 AND p.account_id = $2
          AND (p.representative_id = ANY($3::bigint[]) OR s.representative_id = ANY($3::bigint[]))
        """,
        payment_id, account_id, representative_ids,
    )


# ----------------------------------------------------------------------------- saved cards

_CARD_COLUMNS = "id, representative_id, account_id, payment_id, card_token, last4, created_at_ms, revoked_at_ms"


async def save_card(conn: asyncpg.Connection, representative_id: int, account_id: int, payment_id: str,
                    card_token: str, last4: str, at_ms: int) -> int | None:
    """The card a captured payment saved (once per payment: a redelivered event changes
    nothing); its id, or None if that token is already saved by another payment."""
    await conn.execute(
        """
        INSERT INTO saved_cards (representative_id, account_id, payment_id, card_token, last4, created_at_ms)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
        """,
        representative_id, account_id, payment_id, card_token, last4, at_ms,
    )
    return await conn.fetchval("SELECT id FROM saved_cards WHERE payment_id = $1", payment_id)


async def saved_cards(conn: asyncpg.Connection | asyncpg.Pool, representative_ids: list[int]) -> list[asyncpg.Record]:
    """The parent's cards that are not revoked, oldest first."""
    return await conn.fetch(
        f"SELECT {_CARD_COLUMNS} FROM saved_cards WHERE representative_id = ANY($1::bigint[]) AND revoked_at_ms IS NULL "
        "ORDER BY id",
        representative_ids,
    )


async def saved_card(conn: asyncpg.Connection | asyncpg.Pool, representative_ids: list[int],
                     card_id: int) -> asyncpg.Record | None:
    """One of the parent's cards, not revoked (None for another parent's or a revoked one)."""
    return await conn.fetchrow(
        f"SELECT {_CARD_COLUMNS} FROM saved_cards WHERE id = $2 AND representative_id = ANY($1::bigint[]) "
        "AND revoked_at_ms IS NULL",
        representative_ids, card_id,
    )


async def revoke_card(conn: asyncpg.Connection, card_id: int, at_ms: int) -> list[int]:
    """Revoke a card and switch off the auto top-ups that charge it; their account ids."""
    await conn.execute("UPDATE saved_cards SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL", card_id, at_ms)
    rows = await conn.fetch(
        "UPDATE auto_topups SET active = false, updated_at_ms = $2 WHERE saved_card_id = $1 AND active "
        "RETURNING account_id",
        card_id, at_ms,
    )
    return [r["account_id"] for r in rows]


# ----------------------------------------------------------------------------- auto top-up rules


async def auto_topup(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT t.account_id, t.active, t.amount_kopecks, t.threshold_kopecks, t.schedule_weekday, t.last_scheduled_day,
               t.saved_card_id, t.set_by_representative_id, t.updated_at_ms, s.last4, s.representative_id AS card_owner_id
        FROM auto_topups t LEFT JOIN saved_cards s ON s.id = t.saved_card_id
        WHERE t.account_id = $1
        """,
        account_id,
    )


async def set_auto_topup(conn: asyncpg.Connection, account_id: int, saved_card_id: int, amount_kopecks: int,
                         threshold_kopecks: int | None, schedule_weekday: int | None, representative_id: int,
                         at_ms: int) -> None:
    """Create or replace the pupil's rule (one per pupil) and switch it on. last_scheduled_day
    is kept: setting the rule again never charges a second time on the same scheduled day."""
    await conn.execute(
        """
        INSERT INTO auto_topups (account_id, card_token, saved_card_id, amount_kopecks, threshold_kopecks,
                                 schedule_weekday, active, set_by_representative_id, updated_at_ms)
        VALUES ($1, NULL, $2, $3, $4, $5, true, $6, $7)
        ON CONFLICT (account_id) DO UPDATE SET card_token = NULL, saved_card_id = EXCLUDED.saved_card_id,
            amount_kopecks = EXCLUDED.amount_kopecks, threshold_kopecks = EXCLUDED.threshold_kopecks,
            schedule_weekday = EXCLUDED.schedule_weekday, active = true,
            set_by_representative_id = EXCLUDED.set_by_representative_id, updated_at_ms = EXCLUDED.updated_at_ms
        """,
        account_id, saved_card_id, amount_kopecks, threshold_kopecks, schedule_weekday, representative_id, at_ms,
    )


async def stop_auto_topup(conn: asyncpg.Connection, account_id: int, representative_id: int, at_ms: int) -> bool:
    """Switch the pupil's rule off (kept, with its last scheduled day); False if none was on."""
    row = await conn.fetchrow(
        "UPDATE auto_topups SET active = false, set_by_representative_id = $2, updated_at_ms = $3 "
        "WHERE account_id = $1 AND active RETURNING account_id",
        account_id, representative_id, at_ms,
    )
    return row is not None


# ----------------------------------------------------------------------------- audit


async def audit(conn: asyncpg.Connection, actor: str, action: str, entity: str, before: dict[str, Any] | None,
                after: dict[str, Any] | None, at_ms: int) -> None:
    """An audit_log row (as the staff API writes them): never a token, never a card number."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, before, after, at_ms) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        actor, action, entity, None if before is None else _encode(before).decode(),
        None if after is None else _encode(after).decode(), at_ms,
    )
