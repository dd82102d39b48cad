"""Devices: register, list, rotate keys, revoke; install mode and self-enrolment.

Every device has a school, a kind (turnstile, till, fire panel) and its own 16-byte AES-128
key (docs/protocol.md, section 5a). The key is shown once, when it is made, and never again.

- Register (operator; officer for their own school): the API makes the key and returns it once.
- Install mode (same roles): off by default. Opened for a school for at most
  INSTALL_MODE_MINUTES_MAX minutes, it returns a one-time enrolment code (128 random bits,
  shown once, stored as sha256). A new device enrols itself with that code and a key it
  made itself (``POST /devices/enrol``, no staff token: the code is the credential). The code
  is good for one device; install mode closes when it is used, when it expires, or when it is
  turned off.
- Rotate: a next key is made (returned once); the gateway accepts a HELLO under the key or the
  next key, so devices are re-keyed one by one without downtime. Promote makes the next key
  the key (the old one is retired: a session under it is closed and must HELLO again);
  dropping the next key cancels the rotation.
- Revoke: the device is cut off at once (the gateway closes its session on the NOTIFY) and every
  later HELLO is refused with NAK DEVICE_REVOKED.

Every change is audited and NOTIFYs "device:<id>" (storage.changes) in its transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Literal

import asyncpg
import msgspec
from litestar import Controller, delete, get, post
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody, Parameter
from msgspec import Meta

from protocol.codes import DeviceKind
from protocol.limits import DEVICE_KEY_BYTES
from storage import ledger_accounts
from parents_api.hardening import INT32_MAX, NAME_PATTERN, NAME_RULE

from . import db
from .auth import PrincipalDep
from .errors import Conflict, answers, invalid, refuse
from .refusals import Refusal

WRITERS = ("operator", "officer")
ENROL_PATH = "/devices/enrol"  # the one route without a staff token (staff_api.app.auth_guard)
# Install mode is for a technician standing at the device: an hour covers a school's doors and
# tills; a longer window would leave an enrolment code valid while nobody watches.
INSTALL_MODE_MINUTES_MAX = 60
ENROLMENT_CODE_BYTES = 16  # 128 random bits: not guessable within an install window
DEVICE_ID_MAX = 0xFFFFFFFF  # a u32 on the wire; 0 is never a device
KINDS = {kind.name.lower(): int(kind) for kind in DeviceKind}
KIND_NAMES = {v: k for k, v in KINDS.items()}
NAME_CHARS_MAX = 100

_COLUMNS = "id, school_id, kind, name, next_key IS NOT NULL AS rotating, revoked_at_ms, created_at_ms"


SchoolId = Annotated[int, Meta(ge=1, le=INT32_MAX)]  # schools.id is integer
DeviceKindName = Literal[tuple(KINDS)]  # type: ignore[valid-type]
DeviceName = Annotated[str, Meta(min_length=1, max_length=NAME_CHARS_MAX, pattern=NAME_PATTERN, description=NAME_RULE)]


class DeviceBody(msgspec.Struct, forbid_unknown_fields=True):
    school_id: SchoolId
    kind: DeviceKindName
    name: DeviceName
    device_id: Annotated[int, Meta(ge=1, le=DEVICE_ID_MAX)] | None = None  # default: the next free id


class EnrolBody(msgspec.Struct, forbid_unknown_fields=True):
    school_id: SchoolId
    code: Annotated[str, Meta(max_length=ENROLMENT_CODE_BYTES * 4)]  # hex, maybe with spaces around
    kind: DeviceKindName
    name: DeviceName
    # 16 bytes as hex, made by the device itself
    key: Annotated[str, Meta(pattern=f"^[0-9a-fA-F]{{{DEVICE_KEY_BYTES * 2}}}$")]


class InstallModeBody(msgspec.Struct, forbid_unknown_fields=True):
    school_id: SchoolId
    minutes: Annotated[int, Meta(ge=1, le=INSTALL_MODE_MINUTES_MAX)]


class DeviceOut(msgspec.Struct):
    id: int
    school_id: int
    kind: str
    name: str | None
    rotating: bool  # a next key exists
    revoked: bool
    revoked_at_ms: int | None
    created_at_ms: int | None


class DeviceKeyOut(msgspec.Struct):
    device: DeviceOut
    key: str  # hex; shown this once


class InstallModeOut(msgspec.Struct):
    school_id: int
    code: str  # shown this once
    until_ms: int


def _out(row: asyncpg.Record) -> DeviceOut:
    return DeviceOut(
        id=row["id"], school_id=row["school_id"], kind=KIND_NAMES.get(row["kind"], str(row["kind"])), name=row["name"],
        rotating=row["rotating"], revoked=row["revoked_at_ms"] is not None, revoked_at_ms=row["revoked_at_ms"],
        created_at_ms=row["created_at_ms"],
    )


def _kind(text: str) -> int:
    kind = KINDS.get(text)
    if kind is None:
        raise invalid("kind", Refusal.DEVICE_KIND_INVALID, kinds=list(KINDS))
    return kind


def _name(text: str) -> str:
    name = text.strip()
    if not name or len(name) > NAME_CHARS_MAX:
        raise invalid("name", Refusal.DEVICE_NAME_LENGTH, chars_max=NAME_CHARS_MAX)
    return name


async def _school(conn: asyncpg.Connection, school_id: int) -> None:
    if await conn.fetchval("SELECT 1 FROM schools WHERE id = $1", school_id) is None:
        raise invalid("school_id", Refusal.SCHOOL_DOES_NOT_EXIST, school_id=school_id)


def _device_not_found(device_id: int) -> NotFoundException:
    return refuse(NotFoundException, Refusal.NO_DEVICE, device_id=device_id)


async def _device(conn: asyncpg.Connection, device_id: int, *, for_update: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, key, next_key FROM devices WHERE id = $1" + (" FOR UPDATE" if for_update else ""), device_id
    )
    if row is None:
        raise _device_not_found(device_id)
    return row


async def _insert(conn: asyncpg.Connection, device_id: int | None, school_id: int, kind: int, name: str, key: bytes,
                  now_ms: int) -> asyncpg.Record:
    if device_id is None:
        device_id = await conn.fetchval("SELECT coalesce(max(id), 0)::bigint + 1 FROM devices")
    if not 1 <= device_id <= DEVICE_ID_MAX:
        raise invalid("device_id", Refusal.DEVICE_ID_RANGE, device_id_max=DEVICE_ID_MAX)
    if await conn.fetchval("SELECT 1 FROM devices WHERE id = $1", device_id) is not None:
        raise refuse(Conflict, Refusal.DEVICE_EXISTS, device_id=device_id)
    row = await conn.fetchrow(
        f"INSERT INTO devices (id, school_id, kind, key, name, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)"
        f" RETURNING {_COLUMNS}",
        device_id, school_id, kind, key, name, now_ms,
    )
    if kind == DeviceKind.TILL:  # its cash drawer, announced before the till
        await ledger_accounts.open_till_drawer(conn, device_id, school_id, name or str(device_id))
    await db.notify(conn, "device", device_id)
    return row


def _code_sha256(code: str) -> bytes:
    return hashlib.sha256(code.strip().encode()).digest()


class DeviceController(Controller):
    path = "/devices"
    tags = ["devices"]

    @get("/")
    async def list_devices(
        self, principal: PrincipalDep, pool: db.PoolDep,
        school_id: int | None = Parameter(default=None, ge=1, le=INT32_MAX, description="one school's devices"),
    ) -> list[DeviceOut]:
        """Devices the caller may see (a school-bound role: its own school's)."""
        if principal.school_id is not None:
            if school_id is not None:
                principal.require_school(school_id, "these devices")
            school_id = principal.school_id
        async with pool.acquire() as conn:
            if school_id is None:
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM devices ORDER BY id")
            else:
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM devices WHERE school_id = $1 ORDER BY id", school_id)
        return [_out(r) for r in rows]

    @get("/{device_id:int}")
    async def get_device(self, device_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep) -> DeviceOut:
        async with pool.acquire() as conn:
            row = await _device(conn, device_id)
        principal.require_own(row["school_id"], _device_not_found(device_id))
        return _out(row)

    @post("/", status_code=201, opt=answers(409))
    async def register(self, data: JSONBody[DeviceBody], principal: PrincipalDep, pool: db.PoolDep,
                       now_ms: db.NowMs) -> DeviceKeyOut:
        """Register a device; its key is made here and returned this once."""
        principal.require(*WRITERS, action="register devices")
        principal.require_school(data.school_id, "the new device")
        kind, name = _kind(data.kind), _name(data.name)
        key = secrets.token_bytes(DEVICE_KEY_BYTES)
        async with pool.acquire() as conn, conn.transaction():
            await _school(conn, data.school_id)
            row = await _insert(conn, data.device_id, data.school_id, kind, name, key, now_ms)
            out = _out(row)
            await db.audit(conn, principal.login, "device.register", f"device:{out.id}", None,
                           msgspec.to_builtins(out), now_ms)
        return DeviceKeyOut(device=out, key=key.hex())

    @post("/{device_id:int}/key/rotate", status_code=200, opt=answers(409))
    async def rotate(self, device_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
                     now_ms: db.NowMs) -> DeviceKeyOut:
        """Make a next key (returned this once); the gateway accepts HELLOs under either key."""
        principal.require(*WRITERS, action="rotate device keys")
        key = secrets.token_bytes(DEVICE_KEY_BYTES)
        async with pool.acquire() as conn, conn.transaction():
            before = await _device(conn, device_id, for_update=True)
            principal.require_own(before["school_id"], _device_not_found(device_id))
            if before["revoked_at_ms"] is not None:
                raise refuse(Conflict, Refusal.DEVICE_REVOKED, device_id=device_id)
            row = await conn.fetchrow(f"UPDATE devices SET next_key = $2 WHERE id = $1 RETURNING {_COLUMNS}", device_id, key)
            await db.notify(conn, "device", device_id)
            out = _out(row)
            await db.audit(conn, principal.login, "device.key.rotate", f"device:{device_id}",
                           msgspec.to_builtins(_out(before)), msgspec.to_builtins(out), now_ms)
        return DeviceKeyOut(device=out, key=key.hex())

    @post("/{device_id:int}/key/promote", status_code=200, opt=answers(409))
    async def promote(self, device_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
                      now_ms: db.NowMs) -> DeviceOut:
        """The next key becomes the key; the old key is retired (its session must HELLO again)."""
        principal.require(*WRITERS, action="promote device keys")
        async with pool.acquire() as conn, conn.transaction():
            before = await _device(conn, device_id, for_update=True)
            principal.require_own(before["school_id"], _device_not_found(device_id))
            if before["next_key"] is None:
                raise refuse(Conflict, Refusal.DEVICE_NO_NEXT_KEY, device_id=device_id)
            row = await conn.fetchrow(
                f"UPDATE devices SET key = next_key, next_key = NULL WHERE id = $1 RETURNING {_COLUMNS}", device_id
            )
            await db.notify(conn, "device", device_id)
            out = _out(row)
            await db.audit(conn, principal.login, "device.key.promote", f"device:{device_id}",
                           msgspec.to_builtins(_out(before)), msgspec.to_builtins(out), now_ms)
        return out

    @delete("/{device_id:int}/key/next", status_code=200)
    async def drop_next_key(self, device_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
                            now_ms: db.NowMs) -> DeviceOut:
        """Cancel a rotation: the next key is retired (a session under it must HELLO again)."""
        principal.require(*WRITERS, action="retire device keys")
        async with pool.acquire() as conn, conn.transaction():
            before = await _device(conn, device_id, for_update=True)
            principal.require_own(before["school_id"], _device_not_found(device_id))
            row = await conn.fetchrow(f"UPDATE devices SET next_key = NULL WHERE id = $1 RETURNING {_COLUMNS}", device_id)
            await db.notify(conn, "device", device_id)
            out = _out(row)
            await db.audit(conn, principal.login, "device.key.retire_next", f"device:{device_id}",
                           msgspec.to_builtins(_out(before)), msgspec.to_builtins(out), now_ms)
        return out

    @post("/{device_id:int}/revoke", status_code=200)
    async def revoke(self, device_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
                     now_ms: db.NowMs) -> DeviceOut:
        """Cut a device off at once and for good (its HELLOs are refused: DEVICE_REVOKED)."""
        principal.require(*WRITERS, action="revoke devices")
        async with pool.acquire() as conn, conn.transaction():
            before = await _device(conn, device_id, for_update=True)
            principal.require_own(before["school_id"], _device_not_found(device_id))
            row = await conn.fetchrow(
                f"UPDATE devices SET revoked_at_ms = coalesce(revoked_at_ms, $2), next_key = NULL WHERE id = $1"
                f" RETURNING {_COLUMNS}",
                device_id, now_ms,
            )
            await db.notify(conn, "device", device_id)
            out = _out(row)
            await db.audit(conn, principal.login, "device.revoke", f"device:{device_id}",
                           msgspec.to_builtins(_out(before)), msgspec.to_builtins(out), now_ms)
        return out

    # ---------------------------------------------------------------- install mode

    @post("/install-mode", status_code=201)
    async def open_install_mode(self, data: JSONBody[InstallModeBody], principal: PrincipalDep, pool: db.PoolDep,
                                now_ms: db.NowMs) -> InstallModeOut:
        """Open a school's install mode for ``minutes``; returns the one-time enrolment code."""
        principal.require(*WRITERS, action="open install mode")
        principal.require_school(data.school_id, "the install mode")
        if not 1 <= data.minutes <= INSTALL_MODE_MINUTES_MAX:
            raise invalid("minutes", Refusal.INSTALL_MINUTES_RANGE, minutes_max=INSTALL_MODE_MINUTES_MAX)
        code = secrets.token_hex(ENROLMENT_CODE_BYTES)
        until_ms = now_ms + data.minutes * 60_000
        async with pool.acquire() as conn, conn.transaction():
            await _school(conn, data.school_id)
            await conn.execute(
                "INSERT INTO device_install_modes (school_id, code_sha256, opened_by, opened_at_ms, until_ms)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (school_id) DO UPDATE SET code_sha256 = $2,"
                " opened_by = $3, opened_at_ms = $4, until_ms = $5, used_at_ms = NULL, device_id = NULL",
                data.school_id, _code_sha256(code), principal.login, now_ms, until_ms,
            )
            await db.audit(conn, principal.login, "device.install_mode.open", f"school:{data.school_id}", None,
                           {"until_ms": until_ms, "minutes": data.minutes}, now_ms)
        return InstallModeOut(school_id=data.school_id, code=code, until_ms=until_ms)

    @delete("/install-mode/{school_id:int}", status_code=200)
    async def close_install_mode(self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
                                 now_ms: db.NowMs) -> dict:
        principal.require(*WRITERS, action="close install mode")
        principal.require_school(school_id, "the install mode")
        async with pool.acquire() as conn, conn.transaction():
            closed = await conn.fetchval(
                "DELETE FROM device_install_modes WHERE school_id = $1 AND used_at_ms IS NULL RETURNING until_ms",
                school_id,
            )
            await db.audit(conn, principal.login, "device.install_mode.close", f"school:{school_id}",
                           None if closed is None else {"until_ms": closed}, None, now_ms)
        return {"school_id": school_id, "closed": closed is not None}

    @post("/enrol", status_code=201, opt=answers(403, 409, public=True))
    async def enrol(self, data: JSONBody[EnrolBody], pool: db.PoolDep, now_ms: db.NowMs) -> DeviceOut:
        """A new device enrols itself during its school's install mode, with the one-time code
        and the key it made. No staff token: the code is the credential (403 without it)."""
        kind, name = _kind(data.kind), _name(data.name)
        try:
            key = bytes.fromhex(data.key)
        except ValueError:
            key = b""
        if len(key) != DEVICE_KEY_BYTES or key == bytes(DEVICE_KEY_BYTES):
            raise invalid("key", Refusal.DEVICE_KEY_INVALID, key_bytes=DEVICE_KEY_BYTES)
        async with pool.acquire() as conn, conn.transaction():
            mode = await conn.fetchrow(
                "SELECT code_sha256, until_ms, used_at_ms FROM device_install_modes WHERE school_id = $1 FOR UPDATE",
                data.school_id,
            )
            if (
                mode is None
                or mode["used_at_ms"] is not None
                or mode["until_ms"] <= now_ms
                or not hmac.compare_digest(bytes(mode["code_sha256"]), _code_sha256(data.code))
            ):
                raise refuse(PermissionDeniedException, Refusal.INSTALL_CODE_REFUSED)
            row = await _insert(conn, None, data.school_id, kind, name, key, now_ms)
            out = _out(row)
            await conn.execute(
                "UPDATE device_install_modes SET used_at_ms = $2, device_id = $3 WHERE school_id = $1",
                data.school_id, now_ms, out.id,
            )
            await db.audit(conn, f"enrolment:school:{data.school_id}", "device.enrol", f"device:{out.id}", None,
                           msgspec.to_builtins(out), now_ms)
        return out
