"""Staff accounts (operator only), their tokens (every member rotates its own; an operator any),
and the audit log (operator, auditor)."""

from __future__ import annotations

import asyncpg
from litestar import Controller, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from parents_api.hardening import INT64_MAX

from . import db
from .auth import OWN_TOKEN_PATH, STAFF_TOKEN_TTL_MS, PrincipalDep, new_token, token_sha256
from .errors import Conflict, answers, invalid, refuse
from .refusals import Refusal
from .schemas import AuditEntry, AuditPage, Me, StaffBody, StaffCreated, StaffOut, StaffToken

PAGE_MAX = 500
STAFF_COLUMNS = "login, role, school_id, active, token_expires_at_ms"


async def create_staff(
    conn: asyncpg.Connection, login: str, role: str, school_id: int | None, actor: str, now_ms: int
) -> str:
    """Insert a staff member with a new token (audited); returns the token."""
    if role in ("operator", "auditor"):
        if school_id is not None:
            raise invalid("school_id", Refusal.CITY_ROLE_HAS_NO_SCHOOL, role=role)
    elif school_id is None:
        raise invalid("school_id", Refusal.ROLE_NEEDS_SCHOOL, role=role)
    if school_id is not None and await conn.fetchval("SELECT id FROM schools WHERE id = $1", school_id) is None:
        raise invalid("school_id", Refusal.NO_SCHOOL, school_id=school_id)
    if await conn.fetchval("SELECT login FROM staff WHERE login = $1", login) is not None:
        raise refuse(Conflict, Refusal.STAFF_LOGIN_EXISTS, login=login)
    token = new_token()
    expires = now_ms + STAFF_TOKEN_TTL_MS
    await conn.execute(
        "INSERT INTO staff (login, role, school_id, token_sha256, token_expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
        login, role, school_id, token_sha256(token), expires,
    )
    await db.audit(conn, actor, "staff.create", f"staff:{login}", None,
                   {"login": login, "role": role, "school_id": school_id, "active": True,
                    "token_expires_at_ms": expires}, now_ms)
    return token


async def rotate_token(conn: asyncpg.Connection, login: str, actor: str, now_ms: int) -> StaffToken:
    """A new token for ``login`` (the old one stops at once, and so do the member's console
    sessions, signed in with it), valid STAFF_TOKEN_TTL_MS; audited without the token."""
    before = await conn.fetchrow(f"SELECT {STAFF_COLUMNS} FROM staff WHERE login = $1 FOR UPDATE", login)
    if before is None:
        raise refuse(NotFoundException, Refusal.NO_STAFF_LOGIN, login=login)
    if not before["active"]:
        raise refuse(Conflict, Refusal.STAFF_DEACTIVATED_NO_TOKEN, login=login)
    token = new_token()
    expires = now_ms + STAFF_TOKEN_TTL_MS
    await conn.execute("UPDATE staff SET token_sha256 = $2, token_expires_at_ms = $3 WHERE login = $1",
                       login, token_sha256(token), expires)
    await conn.execute("UPDATE staff_sessions SET revoked_at_ms = $2 WHERE login = $1 AND revoked_at_ms IS NULL",
                       login, now_ms)
    await db.audit(conn, actor, "staff.token.rotate", f"staff:{login}",
                   {"token_expires_at_ms": before["token_expires_at_ms"]}, {"token_expires_at_ms": expires}, now_ms)
    return StaffToken(login=login, token=token, token_expires_at_ms=expires)


class StaffController(Controller):
    path = "/staff"
    tags = ["staff"]

    @get("/")
    async def list_staff(self, principal: PrincipalDep, pool: db.PoolDep) -> list[StaffOut]:
        principal.require("operator", "auditor", action="list staff")
        rows = await pool.fetch(f"SELECT {STAFF_COLUMNS} FROM staff ORDER BY login")
        return [StaffOut(**dict(r)) for r in rows]

    @post("/", status_code=201, opt=answers(409))
    async def create(self, data: JSONBody[StaffBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> StaffCreated:
        """Create a staff member; the bearer token is returned once (only its sha256 is kept)."""
        principal.require("operator", action="create staff")
        async with pool.acquire() as conn, conn.transaction():
            token = await create_staff(conn, data.login, data.role, data.school_id, principal.login, now_ms)
        return StaffCreated(login=data.login, role=data.role, school_id=data.school_id, token=token,
                            token_expires_at_ms=now_ms + STAFF_TOKEN_TTL_MS)

    @delete("/{login:str}", status_code=200, opt=answers(409))
    async def deactivate(self, login: FromPath[str], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> StaffOut:
        """Deactivate a staff member (the row stays for the audit trail; the token stops working).
        The last active operator cannot be deactivated (409): nobody could create staff again."""
        principal.require("operator", action="deactivate staff")
        async with pool.acquire() as conn, conn.transaction():
            # every active operator's row, locked: two operators deactivating each other at once
            # cannot both succeed
            operators = await conn.fetch(
                "SELECT login FROM staff WHERE role = 'operator' AND active ORDER BY login FOR UPDATE")
            before = await conn.fetchrow(f"SELECT {STAFF_COLUMNS} FROM staff WHERE login = $1 FOR UPDATE", login)
            if before is None:
                raise refuse(NotFoundException, Refusal.NO_STAFF_LOGIN, login=login)
            if before["role"] == "operator" and before["active"] and len(operators) <= 1:
                raise refuse(Conflict, Refusal.LAST_OPERATOR, login=login)
            after = await conn.fetchrow(
                f"UPDATE staff SET active = false WHERE login = $1 RETURNING {STAFF_COLUMNS}", login)
            await db.audit(conn, principal.login, "staff.deactivate", f"staff:{login}",
                           db.row_dict(before), db.row_dict(after), now_ms)
        return StaffOut(**dict(after))

    @post("/{login:str}/token", status_code=201, opt=answers(409))
    async def rotate_other(self, login: FromPath[str], principal: PrincipalDep, pool: db.PoolDep,
                           now_ms: db.NowMs) -> StaffToken:
        """A new token for a staff member (lost, leaked or expired): returned once; the old token and
        the member's console sessions stop at once. Operator only."""
        principal.require("operator", action="issue tokens for other staff")
        async with pool.acquire() as conn, conn.transaction():
            return await rotate_token(conn, login, principal.login, now_ms)


class MeController(Controller):
    path = "/me"
    tags = ["staff"]
    # POST /me/token is OWN_TOKEN_PATH (auth: the one write an auditor may make)

    @get("/")
    async def me(self, principal: PrincipalDep, pool: db.PoolDep) -> Me:
        """The caller: login, role, school and when its token expires."""
        expires = await pool.fetchval("SELECT token_expires_at_ms FROM staff WHERE login = $1", principal.login)
        return Me(login=principal.login, role=principal.role, school_id=principal.school_id,
                  token_expires_at_ms=expires)

    @post(OWN_TOKEN_PATH.removeprefix("/me"), status_code=201, opt=answers(409))
    async def rotate_own(self, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs) -> StaffToken:
        """Rotate one's own token: the new one is returned once, valid 90 days; the one this
        request was made with (and one's console sessions) stop at once. Every role (an auditor too)."""
        async with pool.acquire() as conn, conn.transaction():
            return await rotate_token(conn, principal.login, principal.login, now_ms)


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]

    @get("/")
    async def list_audit(
        self, principal: PrincipalDep, pool: db.PoolDep,
        entity: str | None = Parameter(default=None, description="'pupil:17' exactly, or 'pupil' for every pupil"),
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        before_id: int | None = Parameter(default=None, ge=1, le=INT64_MAX, description="page: entries with a smaller id"),
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
