"""Desk readers of the school office: bind a card, or issue a temporary card, by presenting it.

An officer (or the operator) starts a pending operation on a named desk reader of the
school: "the next card presented is pupil 41's permanent card", or "is a temporary card
standing for card 04000029, forgotten". The reader's bridge (``python -m deskreader``,
docs/desk-reader.md) reads the card's UID and posts it; the pending operation then runs the
same card life cycle as ``POST /pupils/{id}/cards`` and ``POST /cards/{uid}/temporary``
(``staff_api.cards_core``, audited the same way, the officer who started it as the actor)
and keeps its result, read back with ``GET /desk-readers/{name}/operation``. The staff
console lists a school's readers (``GET /desk-readers?school_id=``) for the officer to pick one,
and cancels the operation it started (``POST /desk-readers/{name}/operation/cancel``).

Pending operations live in PostgreSQL (migration 0013): the officer's request and the
bridge's may reach different staff API processes, and the finished ones are the record of
which card was presented on which reader for whom.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, get, post, put
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import JSONBody, Parameter, PathParameter
from msgspec import Meta

from parents_api.hardening import INT64_MAX

from . import cards_core, db
from .auth import Principal, PrincipalDep
from .errors import Conflict, answers, invalid, refuse
from .refusals import Refusal, recognise
from .schemas import AccountId, Base, CardKind, CardOut, TemporaryReason, UidHex

# A pending operation expires this long after it was started. The officer starts it at the
# desk and presents the card within seconds; two minutes allow for finding the card in a
# pupil's bag, and are short enough that a card laid on the reader much later (by someone
# else, for another purpose) is refused instead of being bound to a pupil picked long ago.
DESK_OPERATION_TTL_MS = 120_000
WRITERS = ("operator", "officer")
READERS = ("operator", "officer", "auditor")
# Reader names: what the bridge is configured with (--desk), safe in a URL path and a log.
DESK_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_NAME = re.compile(DESK_NAME_PATTERN)
SCHOOL_ID_MAX = 2**31 - 1  # schools.id is an integer column
DeskName = Annotated[str, PathParameter(pattern=DESK_NAME_PATTERN, description="the reader's name")]

DeskAction = Literal["bind_card", "issue_temporary"]
OperationStatus = Literal["pending", "done", "failed", "expired", "cancelled"]


# --- bodies ---------------------------------------------------------------------------------------


class DeskReaderBody(Base):
    school_id: Annotated[int, Meta(ge=1, le=SCHOOL_ID_MAX)]


class DeskReaderOut(Base):
    name: str
    school_id: int
    registered_by: str
    registered_at_ms: int


class OperationBody(Base):
    """bind_card: ``kind`` (as ``POST /pupils/{id}/cards``); issue_temporary: ``original_uid``
    (the pupil's card the temporary card stands for) and ``reason`` (as ``POST /cards/{uid}/temporary``)."""

    action: DeskAction
    pupil_id: AccountId
    kind: CardKind | None = None
    original_uid: UidHex | None = None
    reason: TemporaryReason | None = None


class UidBody(Base):
    uid: UidHex


class CancelBody(Base):
    """The operation to cancel, by the id its start answered: a newer one (another officer's, on
    the same reader) is never cancelled by mistake."""

    id: Annotated[int, Meta(ge=1, le=INT64_MAX)]


class OperationOut(Base):
    id: int
    reader: str
    action: str
    pupil_id: int
    kind: str | None  # bind_card
    original_uid: str | None  # issue_temporary
    reason: str | None  # issue_temporary
    status: OperationStatus
    started_by: str
    started_at_ms: int
    expires_at_ms: int
    uid: str | None  # the card presented
    completed_by: str | None
    completed_at_ms: int | None
    card: CardOut | None  # done: the card bound (the temporary card for issue_temporary)
    original: CardOut | None  # done, issue_temporary: the original card after the change
    error: str | None  # failed: why (the detail the card endpoint would have answered)
    # failed: the refusal's code and parameters (staff_api.refusals), when ``error`` is one of its texts
    error_code: str | None = None
    error_params: dict[str, Any] | None = None


# --- helpers --------------------------------------------------------------------------------------


def _checked_name(name: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise invalid("name", Refusal.DESK_NAME_INVALID, source="path")
    return name


async def _reader(conn: asyncpg.Connection, name: str, *, for_update: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT name, school_id, registered_by, registered_at_ms FROM desk_readers WHERE name = $1"
        + (" FOR UPDATE" if for_update else ""),
        name,
    )
    if row is None:
        raise _reader_not_found(name)
    return row


def _reader_not_found(name: str) -> NotFoundException:
    return refuse(NotFoundException, Refusal.NO_DESK_READER, name=name)


def _reader_school(principal: Principal, reader: asyncpg.Record) -> None:
    principal.require_own(reader["school_id"], _reader_not_found(reader["name"]))


def _status(row: asyncpg.Record, now_ms: int) -> str:
    """A pending operation past its expiry reads as expired before anything marks it so."""
    if row["status"] == "pending" and row["expires_at_ms"] <= now_ms:
        return "expired"
    return row["status"]


def _operation_out(row: asyncpg.Record, now_ms: int) -> OperationOut:
    params = db.json_or_none(row["params"]) or {}
    result = db.json_or_none(row["result"]) or {}
    card, original = result.get("card"), result.get("original")
    return OperationOut(
        id=row["id"], reader=row["reader"], action=row["action"], pupil_id=row["account_id"],
        kind=params.get("kind"), original_uid=params.get("original_uid"), reason=params.get("reason"),
        status=_status(row, now_ms),  # type: ignore[arg-type]
        started_by=row["started_by"], started_at_ms=row["started_at_ms"], expires_at_ms=row["expires_at_ms"],
        uid=None if row["uid"] is None else bytes(row["uid"]).hex(),
        completed_by=row["completed_by"], completed_at_ms=row["completed_at_ms"],
        card=None if card is None else CardOut(**card), original=None if original is None else CardOut(**original),
        error=row["error"], **_error_code(row["error"]),
    )


def _error_code(error: str | None) -> dict[str, Any]:
    known = None if error is None else recognise(error)
    return {} if known is None else {"error_code": known[0].value, "error_params": known[1]}


def _audit_view(row: asyncpg.Record) -> dict[str, Any]:
    view = msgspec.to_builtins(_operation_out(row, row["started_at_ms"]))
    view["status"] = row["status"]  # as stored
    for derived in ("error_code", "error_params"):  # made from error when read, not stored
        view.pop(derived, None)
    return view


async def _pending(conn: asyncpg.Connection, reader: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM desk_operations WHERE reader = $1 AND status = 'pending' FOR UPDATE", reader
    )


async def _finish(
    conn: asyncpg.Connection, op: asyncpg.Record, status: str, actor: str, now_ms: int, *,
    uid: bytes | None = None, result: dict[str, Any] | None = None, error: str | None = None,
) -> asyncpg.Record:
    """Move a pending operation to a final status; one audit row ``desk.operation.<status>``."""
    after = await conn.fetchrow(
        "UPDATE desk_operations SET status = $2, uid = $3, completed_by = $4, completed_at_ms = $5, "
        "result = $6::jsonb, error = $7 WHERE id = $1 RETURNING *",
        op["id"], status, uid, actor, now_ms,
        None if result is None else msgspec.json.encode(result).decode(), error,
    )
    await db.audit(conn, actor, f"desk.operation.{status}", f"desk_reader:{op['reader']}",
                   _audit_view(op), _audit_view(after), now_ms)
    return after


def _expired(op: asyncpg.Record) -> Conflict:
    return refuse(Conflict, Refusal.DESK_OPERATION_EXPIRED, operation_id=op["id"], name=op["reader"],
                  action=op["action"], account_id=op["account_id"], expired_at_ms=op["expires_at_ms"],
                  ttl_s=DESK_OPERATION_TTL_MS // 1000)


# --- the card operations: the card endpoints' calls, inside the caller's transaction --------------


async def _bind_card(conn: asyncpg.Connection, op: asyncpg.Record, uid: bytes, actor: str, now_ms: int) -> dict[str, Any]:
    """As ``POST /pupils/{id}/cards`` (staff_api.pupils.bind_card)."""
    account_id = op["account_id"]
    params = db.json_or_none(op["params"])
    await db.pupil_school(conn, account_id, for_update=True)
    touched = await cards_core.bind(conn, account_id, uid, db.CARD_KINDS[params["kind"]], actor, now_ms)
    after = await cards_core.card_snapshot(conn, uid)
    await db.audit(conn, actor, "card.bind", f"card:{uid.hex()}", None, after, now_ms)
    for other in touched[1:]:
        await db.audit(conn, actor, "card.block", f"card:{other.hex()}",
                       {"status": "active"}, await cards_core.card_snapshot(conn, other), now_ms)
    return {"card": after}


async def _issue_temporary(
    conn: asyncpg.Connection, op: asyncpg.Record, temp: bytes, school_offset_minutes: int, actor: str, now_ms: int,
) -> dict[str, Any]:
    """As ``POST /cards/{original}/temporary`` (staff_api.cards.issue_temporary)."""
    params = db.json_or_none(op["params"])
    original = bytes.fromhex(params["original_uid"])
    row = await cards_core.card_row(conn, original, for_update=True)
    if row["account_id"] != op["account_id"]:
        raise refuse(Conflict, Refusal.CARD_LEFT_PUPIL, uid=original.hex(), account_id=op["account_id"])
    await cards_core.issue_temporary(conn, original, params["reason"], temp, school_offset_minutes, actor, now_ms)
    orig_after = await cards_core.card_snapshot(conn, original)
    temp_after = await cards_core.card_snapshot(conn, temp)
    await db.audit(conn, actor, f"card.temporary.{params['reason']}", f"card:{original.hex()}",
                   db.card_view(row), orig_after, now_ms)
    await db.audit(conn, actor, "card.bind", f"card:{temp.hex()}", None, temp_after, now_ms)
    return {"card": temp_after, "original": orig_after}


# --- the resource ---------------------------------------------------------------------------------


class DeskController(Controller):
    path = "/desk-readers"
    tags = ["cards"]

    @get("/", opt=answers(404))
    async def list_readers(
        self, principal: PrincipalDep, pool: db.PoolDep,
        school_id: int = Parameter(ge=1, le=SCHOOL_ID_MAX, description="the school whose readers to list"),
    ) -> list[DeskReaderOut]:
        """The desk readers of a school, by name (what the console offers an officer to pick)."""
        principal.require(*READERS, action="read desk readers")
        principal.require_school(school_id, f"desk readers of school {school_id}")
        async with pool.acquire() as conn:
            await db.school_row(conn, school_id)
            rows = await conn.fetch(
                "SELECT name, school_id, registered_by, registered_at_ms FROM desk_readers WHERE school_id = $1 "
                "ORDER BY name", school_id)
        return [DeskReaderOut(**dict(r)) for r in rows]

    @put("/{name:str}", status_code=200, opt=answers(409))
    async def register(
        self, name: DeskName, data: JSONBody[DeskReaderBody], principal: PrincipalDep, pool: db.PoolDep,
        now_ms: db.NowMs,
    ) -> DeskReaderOut:
        """Register a desk reader of a school by name (again with the same school: unchanged)."""
        principal.require(*WRITERS, action="register desk readers")
        name = _checked_name(name)
        principal.require_school(data.school_id, f"desk reader {name!r}")
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, data.school_id)
            row = await conn.fetchrow(
                "INSERT INTO desk_readers (name, school_id, registered_by, registered_at_ms) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (name) DO NOTHING RETURNING *",
                name, data.school_id, principal.login, now_ms,
            )
            if row is None:
                row = await _reader(conn, name)
                if row["school_id"] != data.school_id:
                    raise refuse(Conflict, Refusal.DESK_READER_OTHER_SCHOOL, name=name, school_id=row["school_id"])
            else:
                await db.audit(conn, principal.login, "desk_reader.register", f"desk_reader:{name}", None,
                               dict(row), now_ms)
        return DeskReaderOut(**dict(row))

    @post("/{name:str}/operation", status_code=201, opt=answers(409))
    async def start(
        self, name: DeskName, data: JSONBody[OperationBody], principal: PrincipalDep, pool: db.PoolDep,
        now_ms: db.NowMs,
    ) -> OperationOut:
        """Start the operation the next card presented on the reader is for; a pending one is cancelled."""
        principal.require(*WRITERS, action="start desk reader operations")
        name = _checked_name(name)
        params = _params(data)
        async with pool.acquire() as conn, conn.transaction():
            reader = await _reader(conn, name, for_update=True)
            _reader_school(principal, reader)
            pupil_school = await db.pupil_school(conn, data.pupil_id)
            principal.require_own(pupil_school, db.pupil_not_found(data.pupil_id))
            if pupil_school != reader["school_id"]:
                raise invalid("pupil_id", Refusal.DESK_PUPIL_OTHER_SCHOOL, pupil_id=data.pupil_id,
                              pupil_school_id=pupil_school, name=name, school_id=reader["school_id"])
            if data.action == "issue_temporary":
                original = await cards_core.card_row(conn, bytes.fromhex(params["original_uid"]))
                if original["account_id"] != data.pupil_id:
                    raise invalid("original_uid", Refusal.DESK_CARD_NOT_PUPILS, uid=params["original_uid"],
                                  pupil_id=data.pupil_id)
            previous = await _pending(conn, name)
            if previous is not None:
                status = "expired" if previous["expires_at_ms"] <= now_ms else "cancelled"
                await _finish(conn, previous, status, principal.login, now_ms,
                              error=None if status == "expired" else "superseded by a newer operation")
            row = await conn.fetchrow(
                "INSERT INTO desk_operations (reader, action, account_id, params, started_by, started_at_ms, "
                "expires_at_ms) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7) RETURNING *",
                name, data.action, data.pupil_id, msgspec.json.encode(params).decode(), principal.login, now_ms,
                now_ms + DESK_OPERATION_TTL_MS,
            )
            await db.audit(conn, principal.login, "desk.operation.start", f"desk_reader:{name}", None,
                           _audit_view(row), now_ms)
        return _operation_out(row, now_ms)

    @get("/{name:str}/operation")
    async def current(self, name: DeskName, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> OperationOut:
        """The reader's latest operation: pending, or how it ended (the card bound, or why not)."""
        principal.require(*READERS, action="read desk reader operations")
        name = _checked_name(name)
        async with pool.acquire() as conn:
            reader = await _reader(conn, name)
            _reader_school(principal, reader)
            row = await conn.fetchrow("SELECT * FROM desk_operations WHERE reader = $1 ORDER BY id DESC LIMIT 1", name)
        if row is None:
            raise refuse(NotFoundException, Refusal.DESK_NO_OPERATION_YET, name=name)
        return _operation_out(row, now_ms)

    @post("/{name:str}/operation/cancel", status_code=200, opt=answers(409))
    async def cancel(
        self, name: DeskName, data: JSONBody[CancelBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
    ) -> OperationOut:
        """Cancel the pending operation ``id`` (the officer changed their mind); 409 when it has
        already ended (done, failed, expired or cancelled: ``GET .../operation`` tells how)."""
        principal.require(*WRITERS, action="cancel desk reader operations")
        name = _checked_name(name)
        refusal: HTTPException | None = None
        async with pool.acquire() as conn, conn.transaction():
            reader = await _reader(conn, name, for_update=True)
            _reader_school(principal, reader)
            op = await conn.fetchrow("SELECT * FROM desk_operations WHERE id = $1 AND reader = $2 FOR UPDATE",
                                     data.id, name)
            if op is None:
                raise refuse(NotFoundException, Refusal.DESK_NO_OPERATION, operation_id=data.id, name=name)
            if op["status"] != "pending":
                raise refuse(Conflict, Refusal.DESK_OPERATION_ENDED, operation_id=data.id, name=name,
                             status=op["status"])
            if op["expires_at_ms"] <= now_ms:
                await _finish(conn, op, "expired", principal.login, now_ms)
                refusal = _expired(op)  # raised after COMMIT: the expiry is recorded
            else:
                row = await _finish(conn, op, "cancelled", principal.login, now_ms,
                                    error=f"cancelled by {principal.login}")
        if refusal is not None:
            raise refusal
        return _operation_out(row, now_ms)

    @post("/{name:str}/uid", status_code=200, opt=answers(409))
    async def presented(
        self, name: DeskName, data: JSONBody[UidBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
    ) -> OperationOut:
        """The bridge: the card with ``uid`` was presented; the pending operation runs (done or failed)."""
        principal.require(*WRITERS, action="present cards on desk readers")
        name = _checked_name(name)
        uid = db.parse_uid(data.uid)
        assert uid is not None  # UidHex
        refusal: HTTPException | None = None
        async with pool.acquire() as conn, conn.transaction():
            reader = await _reader(conn, name, for_update=True)
            _reader_school(principal, reader)
            op = await _pending(conn, name)
            if op is None:
                raise refuse(Conflict, Refusal.DESK_NOTHING_PENDING, name=name, uid=uid.hex())
            if op["expires_at_ms"] <= now_ms:
                await _finish(conn, op, "expired", principal.login, now_ms, uid=uid)
                refusal = _expired(op)  # raised after COMMIT: the expiry is recorded
            else:
                row = await _complete(conn, op, reader, uid, principal.login, now_ms)
        if refusal is not None:
            raise refusal
        return _operation_out(row, now_ms)


def _params(data: OperationBody) -> dict[str, Any]:
    if data.action == "bind_card":
        for field in ("original_uid", "reason"):
            if getattr(data, field) is not None:
                raise invalid(field, Refusal.ONLY_FOR_ISSUE_TEMPORARY)
        return {"kind": data.kind or "service_card"}
    if data.kind is not None:
        raise invalid("kind", Refusal.ONLY_FOR_BIND_CARD)
    for field in ("original_uid", "reason"):
        if getattr(data, field) is None:
            raise invalid(field, Refusal.REQUIRED_FOR_ISSUE_TEMPORARY)
    original = db.parse_uid(data.original_uid or "")
    assert original is not None  # UidHex
    return {"original_uid": original.hex(), "reason": data.reason}


async def _complete(
    conn: asyncpg.Connection, op: asyncpg.Record, reader: asyncpg.Record, uid: bytes, bridge: str, now_ms: int,
) -> asyncpg.Record:
    """Run the operation in a savepoint: done with its result, or failed with the refusal's detail."""
    actor = op["started_by"]  # who decided; the bridge that delivered the UID is completed_by
    try:
        async with conn.transaction():
            if op["action"] == "bind_card":
                result = await _bind_card(conn, op, uid, actor, now_ms)
            else:
                school = await db.school_row(conn, reader["school_id"])
                result = await _issue_temporary(conn, op, uid, school["utc_offset_minutes"], actor, now_ms)
    except HTTPException as exc:  # 409/422/404 of the card life cycle: the operation failed, recorded
        return await _finish(conn, op, "failed", bridge, now_ms, uid=uid, error=exc.detail)
    except asyncpg.UniqueViolationError as exc:  # the card bound at the same moment elsewhere
        return await _finish(conn, op, "failed", bridge, now_ms, uid=uid,
                             error=Refusal.CONCURRENT_CHANGE.detail(reason=str(exc.detail or exc)))
    return await _finish(conn, op, "done", bridge, now_ms, uid=uid, result=result)
