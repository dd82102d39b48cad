"""Cards: read, unbind, block for good, temporary cards (issue and return)."""

from __future__ import annotations

import asyncpg
from litestar import Controller, delete, get, post

from litestar.params import JSONBody

from . import cards_core, db
from .auth import PrincipalDep
from .errors import answers, invalid
from .refusals import Refusal
from .schemas import UidPath, CardDetail, CardEventOut, CardOut, ReturnOut, TemporaryBody, TemporaryOut

WRITERS = ("operator", "officer")


def _uid(text: str, field: str = "uid") -> bytes:
    uid = db.parse_uid(text)
    if uid is None:
        raise invalid(field, Refusal.UID_NOT_HEX, source="path" if field == "uid" else "body")
    return uid


async def _card_school(conn: asyncpg.Connection, uid: bytes) -> tuple[asyncpg.Record, int | None, int]:
    """The card row, its school and the school's UTC offset."""
    row = await cards_core.card_row(conn, uid, for_update=True)
    school = await conn.fetchrow(
        "SELECT s.id, s.utc_offset_minutes FROM accounts a JOIN schools s ON s.id = a.school_id WHERE a.id = $1",
        row["account_id"],
    )
    return row, (school["id"] if school else None), (school["utc_offset_minutes"] if school else 180)


class CardController(Controller):
    path = "/cards"
    tags = ["cards"]

    @get("/{uid:str}")
    async def get_card(self, uid: UidPath, principal: PrincipalDep, pool: db.PoolDep) -> CardDetail:
        """A card and its life-cycle events, oldest first."""
        ident = _uid(uid)
        async with pool.acquire() as conn, conn.transaction():
            row, school_id, _ = await _card_school(conn, ident)
            principal.require_own(school_id, db.card_not_found(ident))
            events = await conn.fetch(
                "SELECT * FROM identifier_events WHERE identifier = $1 ORDER BY at_ms, id", ident
            )
        return CardDetail(
            card=CardOut(**db.card_view(row)),
            events=[
                CardEventOut(identifier=bytes(e["identifier"]).hex(), account_id=e["account_id"], action=e["action"],
                             related=None if e["related"] is None else bytes(e["related"]).hex(),
                             actor=e["actor"], at_ms=e["at_ms"])
                for e in events
            ],
        )

    @delete("/{uid:str}", status_code=200, opt=answers(409))
    async def unbind(self, uid: UidPath, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> CardOut:
        """Unbind a card from its pupil (the card may be bound again); returns the binding removed."""
        principal.require(*WRITERS, action="unbind cards")
        ident = _uid(uid)
        async with pool.acquire() as conn, conn.transaction():
            _row, school_id, _ = await _card_school(conn, ident)
            principal.require_own(school_id, db.card_not_found(ident))
            before = await cards_core.unbind(conn, ident, principal.login, now_ms)
            view = db.card_view(before)
            await db.audit(conn, principal.login, "card.unbind", f"card:{ident.hex()}", view, None, now_ms)
        return CardOut(**view)

    @post("/{uid:str}/block", status_code=200, opt=answers(409))
    async def block(self, uid: UidPath, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> CardOut:
        """Block a card for good (stolen, lost for good)."""
        principal.require(*WRITERS, action="block cards")
        ident = _uid(uid)
        async with pool.acquire() as conn, conn.transaction():
            _row, school_id, _ = await _card_school(conn, ident)
            principal.require_own(school_id, db.card_not_found(ident))
            before = await cards_core.block(conn, ident, principal.login, now_ms)
            after = await cards_core.card_snapshot(conn, ident)
            await db.audit(conn, principal.login, "card.block", f"card:{ident.hex()}",
                           db.card_view(before), after, now_ms)
        assert after is not None
        return CardOut(**after)

    @post("/{uid:str}/temporary", status_code=201, opt=answers(409))
    async def issue_temporary(
        self, uid: UidPath, data: JSONBody[TemporaryBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> TemporaryOut:
        """Issue a temporary card standing for card ``uid`` (reason forgotten, lost or broken)."""
        principal.require(*WRITERS, action="issue temporary cards")
        original = _uid(uid)
        temp = _uid(data.temporary_uid, "temporary_uid")
        async with pool.acquire() as conn, conn.transaction():
            row, school_id, offset = await _card_school(conn, original)
            principal.require_own(school_id, db.card_not_found(original))
            await cards_core.issue_temporary(conn, original, data.reason, temp, offset, principal.login, now_ms)
            orig_after = await cards_core.card_snapshot(conn, original)
            temp_after = await cards_core.card_snapshot(conn, temp)
            await db.audit(conn, principal.login, f"card.temporary.{data.reason}", f"card:{original.hex()}",
                           db.card_view(row), orig_after, now_ms)
            await db.audit(conn, principal.login, "card.bind", f"card:{temp.hex()}", None, temp_after, now_ms)
        assert orig_after is not None and temp_after is not None
        return TemporaryOut(original=CardOut(**orig_after), temporary=CardOut(**temp_after))

    @post("/{uid:str}/return", status_code=200, opt=answers(409))
    async def return_temporary(self, uid: UidPath, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> ReturnOut:
        """Take a temporary card back: it is blocked; a suspended (forgotten) original is active again."""
        principal.require(*WRITERS, action="take back temporary cards")
        temp = _uid(uid)
        async with pool.acquire() as conn, conn.transaction():
            row, school_id, _ = await _card_school(conn, temp)
            principal.require_own(school_id, db.card_not_found(temp))
            orig_before = None if row["replaces"] is None else await cards_core.card_snapshot(conn, bytes(row["replaces"]))
            original = await cards_core.return_temporary(conn, temp, principal.login, now_ms)
            temp_after = await cards_core.card_snapshot(conn, temp)
            await db.audit(conn, principal.login, "card.return", f"card:{temp.hex()}",
                           db.card_view(row), temp_after, now_ms)
            orig_after = None if original is None else await cards_core.card_snapshot(conn, original)
            if orig_after is not None and orig_after != orig_before:
                await db.audit(conn, principal.login, "card.restore", f"card:{original.hex()}",
                               orig_before, orig_after, now_ms)
        assert temp_after is not None
        return ReturnOut(temporary=CardOut(**temp_after),
                         original=None if orig_after is None else CardOut(**orig_after))
