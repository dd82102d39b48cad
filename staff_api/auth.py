"""Bearer tokens (stored as sha256 in ``staff``), console sessions, roles and school scoping.

A request is authenticated by its bearer token or, without an Authorization header, by the
staff console's session cookie (``staff_api/sessions.py`` makes and ends sessions). A cookie
rides along on any request the browser makes, so with the cookie every request that is not a
read must also echo the CSRF cookie in a header (double submit); a bearer token is never sent
by a browser on its own and needs none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg
from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from .db import system_clock_ms
from .errors import refuse
from .refusals import Refusal

ROLES = ("operator", "officer", "cashier", "auditor")
CITY_ROLES = frozenset(("operator", "auditor"))  # not bound to a school
READ_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
TOKEN_BYTES = 32
# A staff token works this long after it was issued (created or rotated), then answers 401
# "token expired": a token copied into a script or left on an office PC stops by itself.
# A quarter is long enough that rotating is a rare chore (POST /me/token, or the CLI), short
# enough that a leaked token does not work for years. Migration 0020 gives rows written by SQL
# the same lifetime.
STAFF_TOKEN_TTL_MS = 90 * 86_400_000
# Rotating one's own token (staff_api.admin): the one write a read-only auditor may make.
OWN_TOKEN_PATH = "/me/token"
# The console's cookies and header (docs/staff-api.md "Console"). The session cookie is
# HttpOnly; the CSRF cookie is readable by the console's script, which sends it back in the
# header: a page of another site can neither read it nor set the header.
SESSION_COOKIE = "ecard_staff_session"
CSRF_COOKIE = "ecard_staff_csrf"
CSRF_HEADER = "X-CSRF-Token"
_CSRF_CONTEXT = b"ecard staff console csrf"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Principal:
    login: str
    role: str
    school_id: int | None

    def require(self, *roles: str, action: str) -> None:
        """403 unless the caller has one of ``roles``."""
        if self.role not in roles:
            raise refuse(PermissionDeniedException, Refusal.ROLE_FORBIDDEN, role=self.role, action=action,
                         allowed=list(roles))

    def require_own(self, school_id: int | None, refusal: Exception) -> None:
        """A school-bound role reaching another school's pupil, card, account, representative,
        device or desk reader gets ``refusal``: the very answer for one that does not exist (an
        error tells an officer nothing about another school's people and cards)."""
        if self.school_id is not None and school_id != self.school_id:
            raise refusal

    def require_school(self, school_id: int | None, what: str) -> None:
        """403 when a school-bound role acts on another school itself (schools are no secret:
        their list is public to staff), or on city-level data."""
        if self.school_id is None:
            return
        if school_id != self.school_id:
            params = {"role": self.role, "login": self.login, "own_school_id": self.school_id, "what": what}
            if school_id is None:
                raise refuse(PermissionDeniedException, Refusal.CITY_LEVEL_DATA, **params)
            raise refuse(PermissionDeniedException, Refusal.FOREIGN_SCHOOL, school_id=school_id, **params)


PrincipalDep = NamedDependency[Principal]


def csrf_token(session_id: str) -> str:
    """The CSRF token of a console session: derived from its secret id, so a CSRF cookie
    planted by someone else never matches the session it would be used with."""
    mac = hmac.new(session_id.encode(), _CSRF_CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_matches(session_id: str, sent: str, cookie: str) -> bool:
    """The value sent (header or form field) equals the CSRF cookie and the session's token
    (constant time)."""
    expected = csrf_token(session_id).encode()
    return bool(sent) and hmac.compare_digest(sent.encode(), cookie.encode()) and hmac.compare_digest(
        sent.encode(), expected)


async def authenticate(request: Request, pool: asyncpg.Pool, now_ms: int | None = None) -> Principal:
    """The caller: the bearer token, or (without an Authorization header) the console's session
    cookie. 401 when neither is valid; 403 for a cookie request that is not a read without the
    CSRF header, and for an auditor writing either way."""
    header = request.headers.get("authorization", "")
    session_id = request.cookies.get(SESSION_COOKIE, "")
    if not header and session_id:
        principal = await _session_principal(request, pool, session_id, system_clock_ms() if now_ms is None else now_ms)
    else:
        principal = await _bearer_principal(header, pool, system_clock_ms() if now_ms is None else now_ms)
    if principal.role == "auditor" and request.method not in READ_METHODS and request.url.path != OWN_TOKEN_PATH:
        raise refuse(PermissionDeniedException, Refusal.AUDITOR_READ_ONLY)
    return principal


async def _bearer_principal(header: str, pool: asyncpg.Pool, now_ms: int) -> Principal:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise refuse(NotAuthorizedException, Refusal.BEARER_MISSING)
    row = await pool.fetchrow(
        "SELECT login, role, school_id, active, token_expires_at_ms FROM staff WHERE token_sha256 = $1",
        token_sha256(token),
    )
    if row is None:
        raise refuse(NotAuthorizedException, Refusal.TOKEN_UNKNOWN)
    if not row["active"]:
        raise refuse(NotAuthorizedException, Refusal.STAFF_DEACTIVATED, login=row["login"])
    if row["token_expires_at_ms"] <= now_ms:
        raise refuse(NotAuthorizedException, Refusal.TOKEN_EXPIRED, expired_at_ms=row["token_expires_at_ms"],
                     login=row["login"])
    return Principal(row["login"], row["role"], row["school_id"])


async def _session_principal(request: Request, pool: asyncpg.Pool, session_id: str, now_ms: int) -> Principal:
    """The staff member of a console session (staff_sessions, migration 0019); every request
    re-reads ``staff.active``, so deactivating a member ends its sessions at once."""
    row = await pool.fetchrow(
        """
        SELECT st.login, st.role, st.school_id, st.active, s.expires_at_ms, s.revoked_at_ms
        FROM staff_sessions s JOIN staff st ON st.login = s.login WHERE s.token_sha256 = $1
        """,
        token_sha256(session_id),
    )
    if row is None or row["revoked_at_ms"] is not None or row["expires_at_ms"] <= now_ms:
        raise refuse(NotAuthorizedException, Refusal.SESSION_INVALID)
    if not row["active"]:
        raise refuse(NotAuthorizedException, Refusal.STAFF_DEACTIVATED, login=row["login"])
    if request.method not in READ_METHODS and not csrf_matches(
            session_id, request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")):
        raise refuse(PermissionDeniedException, Refusal.CSRF_MISSING, method=request.method, header=CSRF_HEADER,
                     cookie=CSRF_COOKIE)
    return Principal(row["login"], row["role"], row["school_id"])
