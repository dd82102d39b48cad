"""Who should hear of a pupil's events: the representatives connected through the school.

Rows are written by the staff API (migration 0008: ``representatives``,
``representative_pupils``); the notifier reads them here. A representative hears of
an event of account X when it covers X, wants that event kind, and is neither
suspended nor removed.
"""

from __future__ import annotations

import asyncpg
import msgspec

from ledger.codes import OutboxKind

# The leaflet's ways of being informed, in its order.
CHANNELS = ("portal", "sms", "ussd", "app_push", "tv_push", "email")
RELATIONS = ("parent", "grandmother", "grandfather", "nanny", "guardian", "other")
KINDS = tuple(kind.value for kind in OutboxKind)


class Subscriber(msgspec.Struct, frozen=True):
    """A representative to tell of one event, with the channels to tell it on."""

    representative_id: int
    full_name: str
    relation: str
    phone: str  # E.164, +7XXXXXXXXXX
    email: str | None
    channels: tuple[str, ...]


_SUBSCRIBERS = """
SELECT r.id, r.full_name, r.relation, r.phone, r.email, r.channels
FROM representative_pupils rp JOIN representatives r ON r.id = rp.representative_id
WHERE rp.account_id = $1 AND $2 = ANY (r.kinds)
  AND r.removed_at_ms IS NULL AND r.suspended_at_ms IS NULL
ORDER BY r.id
"""


async def subscribers(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, kind: OutboxKind | str
) -> list[Subscriber]:
    """The active (not suspended, not removed) representatives of ``account_id`` who want
    events of ``kind``, by representative id, each with its channels."""
    kind = OutboxKind(kind).value  # ValueError for a kind that does not exist
    rows = await conn.fetch(_SUBSCRIBERS, account_id, kind)
    return [
        Subscriber(representative_id=r["id"], full_name=r["full_name"], relation=r["relation"], phone=r["phone"],
                   email=r["email"], channels=tuple(r["channels"]))
        for r in rows
    ]
