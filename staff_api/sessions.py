"""Staff console sessions: sign in with a login and the personal token, sign out.

A sign-in checks the login and its token (the one ``python -m staff_api create-staff`` or
``POST /staff`` issued; only its SHA-256 is stored) and makes a server-side session: a fresh
random session id whose SHA-256 is a ``staff_sessions`` row (migration 0019). The id goes to
the browser in an HttpOnly cookie; ``auth.authenticate`` accepts it in place of the bearer
token, with the same roles and school scope. Refused sign-ins are counted per login, known or
not, and past SIGNIN_FAILURES_MAX within SIGNIN_FAILURE_WINDOW_MS the login is refused until the
oldest of them leaves the window, whatever is typed (a token cannot be guessed by trying).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

import asyncpg

from .auth import Principal, csrf_token, token_sha256

# A session lasts a working day: one sign-in in the morning, none in the middle of a task.
# A shorter one would interrupt the school office; a longer one would leave a session on a
# shared office PC overnight.
SESSION_TTL_MS = 12 * 3_600_000
# Refused sign-ins of one login before it is refused outright, and the window they are counted
# in. Five allows for typos when a 43-character token is pasted; the rate it leaves (20 an hour)
# makes guessing a 256-bit token hopeless. A legitimate person locked out waits at most this long.
SIGNIN_FAILURES_MAX = 5
SIGNIN_FAILURE_WINDOW_MS = 15 * 60_000
# Ended sessions stay this long after they expired (who was signed in when), then are pruned.
SESSION_ROWS_KEPT_MS = 90 * 86_400_000
# The longest login and token a sign-in looks at; staff logins are at most 64 characters
# (schemas.StaffBody) and tokens 43 (auth.TOKEN_BYTES, URL-safe base64). Longer input is
# refused like any wrong pair, without touching the database.
LOGIN_CHARS_MAX = 64
TOKEN_CHARS_MAX = 128
SESSION_ID_BYTES = 32
# The sign-in form carries a CSRF token of its own (a cookie and a hidden field that must match),
# so another site cannot sign a browser in as someone else. Its cookie lives this long: a form
# left open longer is answered once with a fresh one.
SIGNIN_FORM_TTL_S = 3_600


class SignInRefused(Exception):
    """Wrong login or token, an expired token, or a deactivated member: the same refusal for all."""


class TooManyFailures(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many refused sign-ins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Session:
    session_id: str  # the secret that goes into the HttpOnly cookie; never stored
    csrf_token: str
    expires_at_ms: int
    principal: Principal


def new_form_token() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def form_token_matches(sent: str, cookie: str) -> bool:
    """The sign-in form's hidden field equals its cookie (constant time)."""
    return bool(sent) and hmac.compare_digest(sent.encode(), cookie.encode())


async def _lock_login(conn: asyncpg.Connection, login: str) -> None:
    """Serialise the sign-ins of one login (counting failures and adding one is one step)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"staff-signin:{login}")


async def sign_in(pool: asyncpg.Pool, login: str, token: str, now_ms: int) -> Session:
    """A new console session for ``login`` if ``token`` is its token and the member is active.

    Raises SignInRefused (the refusal is counted) or TooManyFailures (nothing is checked)."""
    login, token = login.strip(), token.strip()
    if not login or not token or len(login) > LOGIN_CHARS_MAX or len(token) > TOKEN_CHARS_MAX:
        raise SignInRefused()
    digest = token_sha256(token)
    session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
    retry_after_s = 0
    principal: Principal | None = None
    async with pool.acquire() as conn, conn.transaction():
        await _lock_login(conn, login)
        failures = await conn.fetch(
            "SELECT at_ms FROM staff_signin_failures WHERE login = $1 AND at_ms > $2 ORDER BY at_ms",
            login, now_ms - SIGNIN_FAILURE_WINDOW_MS,
        )
        if len(failures) >= SIGNIN_FAILURES_MAX:
            # the login is free again when enough of them have left the window
            frees_at = failures[len(failures) - SIGNIN_FAILURES_MAX]["at_ms"] + SIGNIN_FAILURE_WINDOW_MS
            retry_after_s = max(1, -(-(frees_at - now_ms) // 1000))
        else:
            row = await conn.fetchrow(
                "SELECT login, role, school_id, active, token_sha256, token_expires_at_ms FROM staff WHERE login = $1",
                login)
            # an expired token signs nobody in (auth.STAFF_TOKEN_TTL_MS): the same refusal as a wrong one
            if row is not None and row["active"] and row["token_expires_at_ms"] > now_ms and hmac.compare_digest(
                    bytes(row["token_sha256"]), digest):
                principal = Principal(row["login"], row["role"], row["school_id"])
                await conn.execute("DELETE FROM staff_signin_failures WHERE login = $1", login)
                await conn.execute(
                    "INSERT INTO staff_sessions (token_sha256, login, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
                    token_sha256(session_id), login, now_ms, now_ms + SESSION_TTL_MS,
                )
                await conn.execute("DELETE FROM staff_sessions WHERE expires_at_ms < $1", now_ms - SESSION_ROWS_KEPT_MS)
            else:
                await conn.execute("INSERT INTO staff_signin_failures (login, at_ms) VALUES ($1, $2)", login, now_ms)
                await conn.execute("DELETE FROM staff_signin_failures WHERE at_ms <= $1",
                                   now_ms - SIGNIN_FAILURE_WINDOW_MS)
    if retry_after_s:
        raise TooManyFailures(retry_after_s)
    if principal is None:
        raise SignInRefused()
    return Session(session_id, csrf_token(session_id), now_ms + SESSION_TTL_MS, principal)


async def sign_out(pool: asyncpg.Pool, session_id: str, now_ms: int) -> bool:
    """End the session (its row stays, revoked); False when it was not a live session."""
    status = await pool.execute(
        "UPDATE staff_sessions SET revoked_at_ms = $2 WHERE token_sha256 = $1 AND revoked_at_ms IS NULL",
        token_sha256(session_id), now_ms,
    )
    return status.endswith(" 1")
