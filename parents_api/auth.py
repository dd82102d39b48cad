"""One-time codes and bearer tokens for the apps and the portal.

POST /auth/code  {"phone": "+79001234567"} or {"email": "a@b.ru"}
    202 whatever the contact: a code goes out only to a contact of an active
    representative, after the answer (no timing difference either). 429 with Retry-After
    when the contact asked OTP_SENDS_PER_HOUR_MAX times within the rolling hour (counted
    for unknown contacts too).
POST /auth/token {"phone" | "email", "code": "123456"}
    201 {"token", "token_type": "bearer", "expires_at_ms"}; 401 for a wrong, expired,
    spent or exhausted code (every wrong try counts, OTP_ATTEMPTS_MAX per code).
DELETE /auth/token (bearer) revokes the token.

Codes are 6 random digits stored as SHA-256 of "<contact>\\n<code>"; tokens are 32 random
bytes (URL-safe base64) stored as SHA-256. Every request with a token re-reads the
contact's active representatives: a suspended or removed one is refused at once (401).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, delete, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body

from storage import parents

from . import config
from .errors import TooManyRequests, Unprocessable
from .hardening import answers
from .senders import Message, Senders

log = logging.getLogger("parents_api.auth")

_PHONE_JUNK = re.compile(r"[\s()\-]")
_PHONE = re.compile(r"^\+7[0-9]{10}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_CODE = re.compile(r"^[0-9]{6}$")


def normalize_phone(text: str) -> str | None:
    """+7XXXXXXXXXX from "+7 (900) 000-00-07", "79000000007" or "89000000007"; None if not a Russian mobile."""
    digits = _PHONE_JUNK.sub("", text.strip())
    if len(digits) == 11 and digits[0] in "78" and digits.isdigit():
        digits = "+7" + digits[1:]
    return digits if _PHONE.match(digits) else None


def normalize_email(text: str) -> str | None:
    text = text.strip().lower()
    return text if len(text) <= 254 and _EMAIL.match(text) else None


def code_sha256(contact: str, code: str) -> bytes:
    return hashlib.sha256(f"{contact}\n{code}".encode()).digest()


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CodeRequest(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=16)]
    phone: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None


class CodeSent(msgspec.Struct):
    detail: str
    expires_in_ms: int
    attempts_max: int


class TokenIssued(msgspec.Struct):
    token: str
    token_type: str
    expires_at_ms: int


def contact_of(body: CodeRequest | TokenRequest) -> tuple[str, str, str]:
    """(contact key, channel, address) of a body naming exactly one of phone, e-mail."""
    if (body.phone is None) == (body.email is None):
        raise Unprocessable("phone", "give exactly one of phone and email")
    if body.phone is not None:
        phone = normalize_phone(body.phone)
        if phone is None:
            raise Unprocessable("phone", "expected a Russian mobile number, +7 and 10 digits")
        return parents.phone_contact(phone), "sms", phone
    email = normalize_email(body.email or "")
    if email is None:
        raise Unprocessable("email", "expected an e-mail address")
    return parents.email_contact(email), "email", email


def code_message(channel: str, address: str, code: str, ttl_ms: int) -> Message:
    minutes = max(1, ttl_ms // 60_000)
    text = (f"Код входа в «Электронную карту»: {code}. Действует {minutes} мин. "
            "Никому его не сообщайте.")
    html = None
    if channel == "email":
        html = (f"<p>Код входа в «Электронную карту»: <b>{code}</b>.</p>"
                f"<p>Действует {minutes} мин. Никому его не сообщайте.</p>")
    return Message(channel=channel, to=address, subject="Код входа: «Электронная карта»", text=text, html=html)


SENT_DETAIL = ("if this phone or e-mail belongs to a representative connected through the school, "
               "a code has been sent to it")
WRONG_CODE = "the code is wrong, expired or already used; ask for a new one"


@dataclass(frozen=True)
class Parent:
    """The caller behind a bearer token: its contact and active representative rows."""

    contact: str
    token_sha256: bytes
    representatives: list[asyncpg.Record]


ParentDep = NamedDependency[Parent]


async def parent_of_token(app: Any, token: str) -> Parent:
    """The parent behind a bearer token or a page session (the same token, in a cookie);
    NotAuthorizedException for an unknown, expired or revoked one, or a contact with no active
    representative (suspended or removed)."""
    settings: config.Settings = app.state.settings
    pool: asyncpg.Pool = app.state.pool
    digest = token_sha256(token)
    row = await parents.session(pool, digest)
    now = settings.clock()
    if row is None or row["revoked_at_ms"] is not None or row["expires_at_ms"] <= now:
        raise NotAuthorizedException("unknown, expired or revoked token")
    reps = await parents.active_representatives(pool, row["contact"])
    if not reps:
        raise NotAuthorizedException("no active representative has this contact (suspended or removed)")
    return Parent(row["contact"], digest, reps)


async def parent_guard(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    """401 before anything of the request is parsed."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("missing bearer token: send 'Authorization: Bearer <token>'")
    connection.state.parent = await parent_of_token(connection.app, token)


async def send_code(state: Any, contact: str, channel: str, address: str) -> CodeSent:
    """Send a one-time code to a representative's contact (the same answer for any contact);
    TooManyRequests past the hourly limit. Shared by POST /auth/code and the sign-in page."""
    settings: config.Settings = state.settings
    now = settings.clock()
    code = f"{secrets.randbelow(10 ** config.OTP_DIGITS):0{config.OTP_DIGITS}d}"
    retry_after_s = 0
    digest = None
    async with state.pool.acquire() as conn, conn.transaction():
        await parents.lock_contact(conn, contact)
        recent = await parents.code_requests_since(conn, contact, now - config.OTP_RATE_WINDOW_MS + 1)
        if len(recent) >= settings.otp_sends_per_hour_max:
            retry_after_s = max(1, -(-(recent[0] + config.OTP_RATE_WINDOW_MS - now) // 1000))
        else:
            known = bool(await parents.active_representatives(conn, contact))
            digest = code_sha256(contact, code) if known else None
            await parents.insert_code(conn, contact, digest, now, now + settings.otp_ttl_ms)
            await parents.forget_codes(conn, now - config.OTP_RATE_WINDOW_MS)
    if retry_after_s:
        raise TooManyRequests(
            f"at most {settings.otp_sends_per_hour_max} codes per hour for one contact; "
            f"try again in {retry_after_s} s", retry_after_s)
    if digest is not None:  # after COMMIT, outside the request: same answer and timing for everyone
        _spawn(state, code_message(channel, address, code, settings.otp_ttl_ms))
    return CodeSent(detail=SENT_DETAIL, expires_in_ms=settings.otp_ttl_ms, attempts_max=settings.otp_attempts_max)


async def sign_in(state: Any, contact: str, code: str) -> TokenIssued:
    """Exchange a one-time code for a token (a new server-side session); NotAuthorizedException
    with the reason for a wrong, expired, spent or exhausted code. Shared by POST /auth/token and
    the sign-in page."""
    settings: config.Settings = state.settings
    if not _CODE.match(code):
        raise Unprocessable("code", "expected 6 digits")
    now = settings.clock()
    refusal: str | None = None
    token = secrets.token_urlsafe(config.TOKEN_BYTES)
    expires = now + settings.token_ttl_ms
    async with state.pool.acquire() as conn, conn.transaction():
        await parents.lock_contact(conn, contact)
        otp = await parents.latest_code(conn, contact)
        if otp is None or otp["used_at_ms"] is not None or otp["expires_at_ms"] <= now:
            refusal = WRONG_CODE
        elif otp["attempts"] >= settings.otp_attempts_max:
            refusal = "too many wrong attempts for this code; ask for a new one"
        elif otp["code_sha256"] is None or not hmac.compare_digest(
                bytes(otp["code_sha256"]), code_sha256(contact, code)):
            attempts = await parents.count_attempt(conn, otp["id"])  # committed: the refusal is not an exception here
            left = settings.otp_attempts_max - attempts
            refusal = f"wrong code; {left} attempt(s) left" if left > 0 else \
                "wrong code; no attempts left, ask for a new one"
        elif not await parents.active_representatives(conn, contact):
            refusal = WRONG_CODE  # suspended or removed since the code was sent
        else:
            await parents.spend_code(conn, otp["id"], now)
            await parents.insert_session(conn, token_sha256(token), contact, now, expires)
    if refusal is not None:
        raise NotAuthorizedException(refusal)
    return TokenIssued(token=token, token_type="bearer", expires_at_ms=expires)


async def sign_out(state: Any, parent: Parent) -> None:
    await parents.revoke_session(state.pool, parent.token_sha256, state.settings.clock())


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post("/code", status_code=202, opt=answers(429))
    async def request_code(self, request: Request, data: Annotated[CodeRequest, Body()]) -> CodeSent:
        """Ask for a one-time code by phone (SMS) or e-mail. The answer is the same for every contact."""
        return await send_code(request.app.state, *contact_of(data))

    @post("/token", status_code=201, opt=answers(401))
    async def issue_token(self, request: Request, data: Annotated[TokenRequest, Body()]) -> TokenIssued:
        """Exchange a one-time code for a bearer token."""
        contact, _, _ = contact_of(data)
        return await sign_in(request.app.state, contact, data.code)

    @delete("/token", status_code=204, guards=[parent_guard])
    async def revoke_token(self, request: Request) -> None:
        """Log out: the token stops working."""
        await sign_out(request.app.state, request.state.parent)


def _spawn(state: Any, message: Message) -> None:
    senders: Senders = state.senders
    task = asyncio.get_running_loop().create_task(_send(senders, message))
    state.send_tasks.add(task)
    task.add_done_callback(state.send_tasks.discard)


async def _send(senders: Senders, message: Message) -> None:
    try:
        await asyncio.wait_for(senders.for_channel(message.channel).send(message), config.SEND_TIMEOUT_S)
    except Exception:  # noqa: BLE001  logged, never shown: the caller was answered already
        log.exception("sending a one-time code by %s failed", message.channel)
