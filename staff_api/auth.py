"""Bearer tokens (stored as sha256 in ``staff``), roles and school scoping."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg
from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

ROLES = ("operator", "officer", "cashier", "auditor")
CITY_ROLES = frozenset(("operator", "auditor"))  # not bound to a school
READ_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
TOKEN_BYTES = 32


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
            raise PermissionDeniedException(
                f"role {self.role!r} may not {action}; allowed: {', '.join(roles)}"
            )

    def require_school(self, school_id: int | None, what: str) -> None:
        """403 when a school-bound role touches another school (or city-level data)."""
        if self.school_id is None:
            return
        if school_id != self.school_id:
            where = f"school {school_id}" if school_id is not None else "city-level data"
            raise PermissionDeniedException(
                f"{self.role} {self.login!r} is bound to school {self.school_id}; {what} belongs to {where}"
            )


PrincipalDep = NamedDependency[Principal]


async def authenticate(request: Request, pool: asyncpg.Pool) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("missing bearer token: send 'Authorization: Bearer <token>'")
    row = await pool.fetchrow(
        "SELECT login, role, school_id, active FROM staff WHERE token_sha256 = $1", token_sha256(token)
    )
    if row is None:
        raise NotAuthorizedException("unknown token")
    if not row["active"]:
        raise NotAuthorizedException(f"staff member {row['login']!r} is deactivated")
    principal = Principal(row["login"], row["role"], row["school_id"])
    if principal.role == "auditor" and request.method not in READ_METHODS:
        raise PermissionDeniedException("role 'auditor' is read-only")
    return principal
