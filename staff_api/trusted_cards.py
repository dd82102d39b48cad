"""Trusted persons' cards (kindergartens): a representative of the school — a parent, a
grandmother, a nanny — carries a card of their own to bring and collect the children their
application covers. At a school whose policy requires an escort, a child's card opens a
turnstile only right after one of its trusted persons' (docs/building.md). A suspended or
removed representative's cards stop at once (the gateway is notified).
"""

from __future__ import annotations

import asyncpg
import msgspec
from litestar import Controller, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from . import db
from .auth import PrincipalDep
from .errors import Conflict, answers, invalid, refuse
from .refusals import Refusal
from .representatives import READERS, WRITERS, _writable, load, representative_not_found
from .schemas import Base, UidHex, UidPath

# Cards one trusted person may carry: a card and a spare.
TRUSTED_CARDS_PER_REPRESENTATIVE_MAX = 2


class TrustedCardBody(Base):
    uid: UidHex


class TrustedCardOut(Base):
    uid: str
    representative_id: int
    added_by: str
    added_at_ms: int


def _out(row: asyncpg.Record) -> TrustedCardOut:
    return TrustedCardOut(bytes(row["identifier"]).hex(), row["representative_id"], row["added_by"],
                          row["added_at_ms"])


class TrustedCardController(Controller):
    path = "/representatives"
    tags = ["representatives"]

    @get("/{representative_id:int}/cards")
    async def list_cards(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep
    ) -> list[TrustedCardOut]:
        """A trusted person's cards."""
        principal.require(*READERS, action="read trusted cards")
        async with pool.acquire() as conn:
            rep = await load(conn, representative_id)
            principal.require_own(rep.school_id, representative_not_found(representative_id))
            rows = await conn.fetch("SELECT * FROM trusted_cards WHERE representative_id = $1 ORDER BY added_at_ms",
                                    representative_id)
        return [_out(r) for r in rows]

    @post("/{representative_id:int}/cards", status_code=201, opt=answers(409))
    async def add_card(
        self, representative_id: FromPath[int], data: JSONBody[TrustedCardBody], principal: PrincipalDep,
        pool: db.PoolDep, now_ms: db.NowMs,
    ) -> TrustedCardOut:
        """Give a trusted person a card: it opens the school's turnstiles for them, and a child of
        theirs may follow it (a pupil's card, or a card already given, is refused: 409)."""
        principal.require(*WRITERS, action="give trusted cards")
        uid = db.parse_uid(data.uid)
        if uid is None:
            raise invalid("uid", Refusal.NOT_A_CARD_UID)
        async with pool.acquire() as conn, conn.transaction():
            rep = await _writable(conn, principal, representative_id)
            if rep.status != "active":
                raise refuse(Conflict, Refusal.TRUSTED_REP_NOT_ACTIVE, representative_id=representative_id,
                             status=rep.status)
            if await conn.fetchval("SELECT 1 FROM identifiers WHERE identifier = $1", uid):
                raise refuse(Conflict, Refusal.TRUSTED_PUPILS_CARD, uid=uid.hex())
            held = await conn.fetchrow(
                "SELECT t.representative_id, r.school_id FROM trusted_cards t"
                " JOIN representatives r ON r.id = t.representative_id WHERE t.identifier = $1", uid)
            if held is not None:
                if held["school_id"] == rep.school_id:
                    raise refuse(Conflict, Refusal.TRUSTED_CARD_TAKEN_BY_REP, uid=uid.hex(),
                                 representative_id=held["representative_id"])
                raise refuse(Conflict, Refusal.TRUSTED_CARD_TAKEN, uid=uid.hex())  # nothing told of another school's
            count = await conn.fetchval("SELECT count(*) FROM trusted_cards WHERE representative_id = $1",
                                        representative_id)
            if count >= TRUSTED_CARDS_PER_REPRESENTATIVE_MAX:
                raise refuse(Conflict, Refusal.TRUSTED_CARDS_FULL, representative_id=representative_id, count=count,
                             cards_max=TRUSTED_CARDS_PER_REPRESENTATIVE_MAX)
            row = await conn.fetchrow(
                "INSERT INTO trusted_cards (identifier, representative_id, added_by, added_at_ms)"
                " VALUES ($1, $2, $3, $4) RETURNING *", uid, representative_id, principal.login, now_ms)
            out = _out(row)
            await db.audit(conn, principal.login, "trusted_card.add", f"representative:{representative_id}", None,
                           msgspec.structs.asdict(out), now_ms)
            await db.notify(conn, "representative", representative_id)
        return out

    @delete("/{representative_id:int}/cards/{uid:str}", status_code=200, opt=answers(409))
    async def remove_card(
        self, representative_id: FromPath[int], uid: UidPath, principal: PrincipalDep, pool: db.PoolDep,
        now_ms: db.NowMs,
    ) -> TrustedCardOut:
        """Take a trusted person's card back: it opens nothing from now on."""
        principal.require(*WRITERS, action="take trusted cards back")
        identifier = db.parse_uid(uid)
        if identifier is None:
            raise invalid("uid", Refusal.NOT_A_CARD_UID)
        async with pool.acquire() as conn, conn.transaction():
            await _writable(conn, principal, representative_id)
            row = await conn.fetchrow(
                "DELETE FROM trusted_cards WHERE identifier = $1 AND representative_id = $2 RETURNING *",
                identifier, representative_id)
            if row is None:
                raise refuse(NotFoundException, Refusal.TRUSTED_NO_CARD, representative_id=representative_id,
                             uid=identifier.hex())
            out = _out(row)
            await db.audit(conn, principal.login, "trusted_card.remove", f"representative:{representative_id}",
                           msgspec.structs.asdict(out), None, now_ms)
            await db.notify(conn, "representative", representative_id)
        return out
