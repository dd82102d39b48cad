"""Database helpers shared by the resources: audit rows, JSON, clocks, card names."""

from __future__ import annotations

import time
from datetime import date
from typing import Any, Callable

import asyncpg
import msgspec
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException

from .errors import refuse
from .refusals import Refusal

from ledger.codes import AccountStatus, IdentifierKind, IdentifierStatus
from storage import changes

MS_PER_DAY = 86_400_000

CARD_KINDS = {kind.name: int(kind) for kind in IdentifierKind}
CARD_KIND_NAMES = {v: k for k, v in CARD_KINDS.items()}
CARD_STATUS_ACTIVE, CARD_STATUS_BLOCKED, CARD_STATUS_SUSPENDED = (
    IdentifierStatus.ACTIVE, IdentifierStatus.BLOCKED, IdentifierStatus.SUSPENDED
)
CARD_STATUS_NAMES = {int(s): s.name.lower() for s in IdentifierStatus}
ACCOUNT_STATUS = {s.name.lower(): int(s) for s in AccountStatus}
ACCOUNT_STATUS_NAMES = {v: k for k, v in ACCOUNT_STATUS.items()}
UID_BYTES_MIN, UID_BYTES_MAX = 4, 16

Clock = Callable[[], int]
# Explicit dependency markers (Litestar 2.23+ deprecates inferred ones).
NowMs = NamedDependency[int]  # the request's clock reading, Unix ms
CommandWaitMs = NamedDependency[int]  # how long a money request waits for the gateway
PoolDep = NamedDependency[asyncpg.Pool]


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def next_midnight_ms(now_ms: int, utc_offset_minutes: int) -> int:
    """The next local midnight strictly after ``now_ms`` in a zone ``utc_offset_minutes`` east of UTC."""
    offset_ms = utc_offset_minutes * 60_000
    local_day = (now_ms + offset_ms) // MS_PER_DAY
    return (local_day + 1) * MS_PER_DAY - offset_ms


def parse_uid(text: str) -> bytes | None:
    """A card UID from hex (4..16 bytes), or None when it is not one."""
    text = text.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    try:
        uid = bytes.fromhex(text)
    except ValueError:
        return None
    if not UID_BYTES_MIN <= len(uid) <= UID_BYTES_MAX:
        return None
    return uid


def jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


def json_or_none(text: str | None) -> Any:
    """A jsonb column as asyncpg returns it (text) decoded."""
    return None if text is None else msgspec.json.decode(text)


def row_dict(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return None if row is None else {k: jsonable(v) for k, v in dict(row).items()}


async def audit(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    entity: str,
    before: Any,
    after: Any,
    at_ms: int,
) -> None:
    """One audit row; call inside the transaction of the change."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, before, after, at_ms) "
        "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        actor,
        action,
        entity,
        None if before is None else msgspec.json.encode(jsonable(before)).decode(),
        None if after is None else msgspec.json.encode(jsonable(after)).decode(),
        at_ms,
    )


notify = changes.notify


# The answers for a row that is not there, also given for another school's row (auth.Principal.require_own).
def pupil_not_found(account_id: int) -> NotFoundException:
    return refuse(NotFoundException, Refusal.NO_PUPIL, account_id=account_id)


def account_not_found(account_id: int) -> NotFoundException:
    return refuse(NotFoundException, Refusal.NO_ACCOUNT, account_id=account_id)


def card_not_found(uid: bytes) -> NotFoundException:
    return refuse(NotFoundException, Refusal.NO_CARD, uid=uid.hex())


async def school_row(conn: asyncpg.Connection, school_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT id, name, utc_offset_minutes FROM schools WHERE id = $1", school_id)
    if row is None:
        raise refuse(NotFoundException, Refusal.NO_SCHOOL, school_id=school_id)
    return row


async def pupil_school(conn: asyncpg.Connection, account_id: int, *, for_update: bool = False) -> int:
    row = await conn.fetchrow(
        "SELECT school_id FROM pupils WHERE account_id = $1" + (" FOR UPDATE" if for_update else ""), account_id
    )
    if row is None:
        raise pupil_not_found(account_id)
    return row["school_id"]


async def identifier_event(
    conn: asyncpg.Connection,
    identifier: bytes,
    account_id: int,
    action: str,
    related: bytes | None,
    actor: str,
    at_ms: int,
) -> None:
    await conn.execute(
        "INSERT INTO identifier_events (identifier, account_id, action, related, actor, at_ms) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        identifier,
        account_id,
        action,
        related,
        actor,
        at_ms,
    )


def card_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "uid": bytes(row["identifier"]).hex(),
        "account_id": row["account_id"],
        "kind": CARD_KIND_NAMES.get(row["kind"], str(row["kind"])),
        "status": CARD_STATUS_NAMES.get(row["status"], str(row["status"])),
        "expires_at_ms": row["expires_at_ms"],
        "replaces": None if row["replaces"] is None else bytes(row["replaces"]).hex(),
        "bound_at_ms": row["bound_at_ms"],
    }


CARD_COLUMNS = "identifier, account_id, kind, status, expires_at_ms, replaces, bound_at_ms"
