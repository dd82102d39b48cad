"""Staff accounts (operator only) and the audit log (operator, auditor)."""

from __future__ import annotations

import asyncpg
from litestar import Controller, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from . import db
from .auth import PrincipalDep, new_token, token_sha256
from .errors import Conflict, Unprocessable
from .schemas import AuditEntry, AuditPage, StaffBody, StaffCreated, StaffOut

PAGE_MAX = 500


async def create_staff(
    conn: asyncpg.Connection, login: str, role: str, school_id: int | None, actor: str, now_ms: int
) -> str:
    """Insert a staff member with a new token (audited); returns the token."""
    if role in ("operator", "auditor"):
        if school_id is not None:
            raise Unprocessable("school_id", f"a city-level {role} is not bound to a school")
    elif school_id is None:
        raise Unprocessable("school_id", f"role {role} needs a school")
    if school_id is not None and await conn.fetchval("SELECT id FROM schools WHERE id = $1", school_id) is None:
        raise Unprocessable("school_id", f"no school {school_id}")
    if await conn.fetchval("SELECT login FROM staff WHERE login = $1", login) is not None:
        raise Conflict(f"staff login {login!r} exists")
    token = new_token()
    await conn.execute(
        "INSERT INTO staff (login, role, school_id, token_sha256) VALUES ($1, $2, $3, $4)",
        login, role, school_id, token_sha256(token),
    )
    await db.audit(conn, actor, "staff.create", f"staff:{login}", None,
                   {"login": login, "role": role, "school_id": school_id, "active": True}, now_ms)
    return token


class StaffController(Controller):
    path = "/staff"
    tags = ["staff"]

    @get("/")
    async def list_staff(self, principal: PrincipalDep, pool: db.PoolDep) -> list[StaffOut]:
        principal.require("operator", "auditor", action="list staff")
        rows = await pool.fetch("SELECT login, role, school_id, active FROM staff ORDER BY login")
        return [StaffOut(**dict(r)) for r in rows]

    @post("/", status_code=201)
    async def create(self, data: JSONBody[StaffBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> StaffCreated:
        """Create a staff member; the bearer token is returned once (only its sha256 is kept)."""
        principal.require("operator", action="create staff")
        async with pool.acquire() as conn, conn.transaction():
            token = await create_staff(conn, data.login, data.role, data.school_id, principal.login, now_ms)
        return StaffCreated(login=data.login, role=data.role, school_id=data.school_id, token=token)

    @delete("/{login:str}", status_code=200)
    async def deactivate(self, login: FromPath[str], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> StaffOut:
        """Deactivate a staff member (the row stays for the audit trail; the token stops working)."""
        principal.require("operator", action="deactivate staff")
        async with pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(
                "SELECT login, role, school_id, active FROM staff WHERE login = $1 FOR UPDATE", login)
            if before is None:
                raise NotFoundException(f"no staff login {login!r}")
            after = await conn.fetchrow(
                "UPDATE staff SET active = false WHERE login = $1 RETURNING login, role, school_id, active", login)
            await db.audit(conn, principal.login, "staff.deactivate", f"staff:{login}",
                           db.row_dict(before), db.row_dict(after), now_ms)
        return StaffOut(**dict(after))


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]

    @get("/")
    async def list_audit(
        self, principal: PrincipalDep, pool: db.PoolDep,
        entity: str | None = Parameter(default=None, description="'pupil:17' exactly, or 'pupil' for every pupil"),
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        before_id: int | None = Parameter(default=None, ge=1, description="page: entries with a smaller id"),
        limit: int = Parameter(default=100, ge=1, le=PAGE_MAX),
    ) -> AuditPage:
        """The audit log, newest first."""
        principal.require("operator", "auditor", action="read the audit log")
        entity_exact = entity if entity and ":" in entity else None
        entity_kind = entity + ":%" if entity and ":" not in entity else None
        rows = await pool.fetch(
            """
            SELECT id, actor, action, entity, before, after, at_ms FROM audit_log
            WHERE ($1::text IS NULL OR entity = $1) AND ($2::text IS NULL OR entity LIKE $2)
              AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR action = $4)
              AND ($5::bigint IS NULL OR id < $5)
            ORDER BY id DESC LIMIT $6
            """,
            entity_exact, entity_kind, actor, action, before_id, limit + 1,
        )
        entries = [
            AuditEntry(id=r["id"], actor=r["actor"], action=r["action"], entity=r["entity"],
                       before=db.json_or_none(r["before"]), after=db.json_or_none(r["after"]), at_ms=r["at_ms"])
            for r in rows[:limit]
        ]
        return AuditPage(entries=entries, next_before_id=entries[-1].id if len(rows) > limit else None)
