"""ecard's side of card payments: the acquirer's signed webhook and the service behind every
payments endpoint (payments/app.py mounts them; payments/topups.py holds the parents' side).

  POST /payments/webhook                   signed acquirer events (payments/signing.py)

Money moves only through commands (storage.commands.submit), keyed by the
acquirer's payment id: ``bank:<payment_id>:captured`` (bank_topup) and
``bank:<payment_id>:refunded`` (bank_refund). A redelivered event submits the
same key again, which the commands table turns into a no-op; card_payments
status only moves forward (created -> captured -> refunded, created -> failed,
created -> canceled).

A capture event carries the card's last 4 digits and, when the parent asked to save the
card on the acquirer's page, the acquirer's card token: ecard stores that token for the
parent (saved_cards) and never sees the card number.

Out of order: a refund event for a payment that is not captured yet is answered
409 and moves nothing; the acquirer retries it with backoff and by then the
capture has been processed. See docs/payments.md.

Refused before anything is written (422): an event whose account_ref is not a
decimal id 1..2^63-1, whose amounts are not 1..TOPUP_KOPECKS_MAX, whose account
does not exist or is not a pupil's, or whose refund is larger than its payment.
A refund is checked and its command inserted under the card_payments row lock,
so two refunds of one payment racing never both pass; one refund per payment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from ledger.codes import AccountKind
from storage import card_payments, commands

from . import signing
from .acquirer import Acquirer

log = logging.getLogger("ecard.payments")

WEBHOOK_PATH = "/payments/webhook"
REQUESTED_BY = "acquirer"
# One top-up from a parent: 15,000 roubles (the sandbox's own ceiling is higher).
TOPUP_KOPECKS_MAX = 1_500_000
IDEMPOTENCY_KEY_CHARS_MAX = 200
# Account ids and kopecks are PostgreSQL bigint.
BIGINT_MAX = 2**63 - 1
# An acquirer's payment id (the sandbox's are 24 characters).
PAYMENT_ID_CHARS_MAX = 200
ORIGINS = frozenset(("manual", "auto_threshold", "auto_schedule"))
EVENT_TYPES = frozenset(("payment.captured", "payment.failed", "payment.canceled", "payment.refunded"))
# An acquirer's card token (the sandbox's are 28 characters) and a decline code.
CARD_TOKEN_CHARS_MAX = 200
DECLINE_CODE_CHARS_MAX = 64
# Where a parent's browser may be sent back after the acquirer's page: the parents' pages.
RETURN_ORIGINS_DEFAULT = ("http://127.0.0.1:8820",)
# Manual top-ups one parent (contact) may start per rolling hour: bounds card testing through
# the acquirer's page (a stolen card's decline is an answer) and abandoned payments.
TOPUPS_PER_HOUR_MAX = 20
ACCOUNT_KIND_PUPIL = AccountKind.PUPIL
# How long a webhook waits for the gateway to apply the command. The command is
# durable once inserted, so after this the webhook answers 2xx anyway (the gateway
# applies it when it gets to it); must stay well below the acquirer's timeout.
COMMAND_WAIT_MS = 5_000
POOL_SIZE_MAX = 10


class WebhookEvent(msgspec.Struct):
    event_id: str
    type: str
    payment_id: str
    account_ref: str
    amount_kopecks: int
    payment_amount_kopecks: int | None = None
    created: int | None = None
    decline_code: str | None = None
    metadata: dict[str, Any] = {}
    card_last4: str | None = None   # the card's last 4 digits, when the acquirer knows the card
    card_token: str | None = None   # the saved card's token: a capture the parent asked to save


@dataclass
class PaymentsSettings:
    webhook_secret: str
    public_url: str  # where the acquirer reaches this service, e.g. http://127.0.0.1:8810
    command_wait_ms: int = COMMAND_WAIT_MS
    signature_tolerance_s: int = signing.SIGNATURE_TOLERANCE_S
    allow_sandbox_test_options: bool = False
    # Origins (scheme://host[:port]) a top-up's return_url may point to; nothing else (no open redirect).
    return_origins: tuple[str, ...] = RETURN_ORIGINS_DEFAULT
    topups_per_hour_max: int = TOPUPS_PER_HOUR_MAX
    clock: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)  # ms; sessions, rate limits

    @property
    def callback_url(self) -> str:
        return self.public_url.rstrip("/") + WEBHOOK_PATH


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _reply(http_status: int, /, **content: Any) -> Response:
    return Response(content, status_code=http_status)


reply = _reply

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 429: "too_many_requests"}


def on_exception(request: Request, exc: Exception) -> Response:
    """Every error as JSON ``{code, message}``; a 5xx is logged with its traceback (never the
    request's headers or body: they may carry a bearer token)."""
    if isinstance(exc, HTTPException):
        if exc.status_code >= 500:
            log.error("%s %s answered %d", request.method, request.url.path, exc.status_code, exc_info=exc)
        return Response({"code": _HTTP_CODES.get(exc.status_code, "http_error"), "message": str(exc.detail)},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None) or None)
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _reply(500, code="internal_error", message="internal error (logged); try again later")


def parse_account_ref(ref: str) -> int | None:
    """An event's account_ref as an account id, or None: ASCII decimal digits only (no sign,
    spaces, underscores or other scripts' digits, all of which int() would take), 1..BIGINT_MAX."""
    if not (ref.isascii() and ref.isdigit()) or len(ref) > len(str(BIGINT_MAX)):
        return None
    value = int(ref)
    return value if 0 < value <= BIGINT_MAX else None


def event_problem(event: WebhookEvent) -> Response | None:
    """422 naming the first field of ``event`` out of range, or None.

    No payment ecard starts is above TOPUP_KOPECKS_MAX (top-ups and auto top-ups are
    bounded by it), so an amount outside 1..TOPUP_KOPECKS_MAX is no payment of ecard's.
    """
    if not 0 < len(event.payment_id) <= PAYMENT_ID_CHARS_MAX:
        return _reply(422, code="invalid_payment_id", message=f"payment_id must be 1..{PAYMENT_ID_CHARS_MAX} characters")
    if parse_account_ref(event.account_ref) is None:
        return _reply(422, code="invalid_account_ref",
                      message=f"account_ref must be an account id, decimal digits 1..{BIGINT_MAX}; "
                              f"got {event.account_ref[:40]!r}")
    for name in ("amount_kopecks", "payment_amount_kopecks"):
        value = getattr(event, name)
        if value is not None and not 0 < value <= TOPUP_KOPECKS_MAX:
            shown = value if abs(value) < 10**24 else f"a {len(str(abs(value)))}-digit number"
            return _reply(422, code="invalid_amount", message=f"{name} must be 1..{TOPUP_KOPECKS_MAX}; got {shown}")
    return None


class PaymentsService:
    """Holds the pool, the acquirer and the settings; the webhook's logic lives here, the parents'
    endpoints' in payments/topups.py (ParentPayments)."""

    def __init__(self, dsn: str, acquirer: Acquirer, settings: PaymentsSettings) -> None:
        self.dsn = dsn
        self.acquirer = acquirer
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=POOL_SIZE_MAX)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.acquirer.close()

    # ------------------------------------------------------------------ webhook

    async def handle_event(self, body: bytes, signature: str | None) -> Response:
        try:
            signing.verify(self.settings.webhook_secret, signature, body, time.time(),
                           self.settings.signature_tolerance_s)
        except signing.SignatureError as exc:
            log.warning("webhook refused: %s", exc)
            return _reply(400 if exc.malformed else 401, code="bad_signature", message=str(exc))
        try:
            event = msgspec.json.decode(body, type=WebhookEvent)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _reply(400, code="invalid_event", message=str(exc))
        if event.type not in EVENT_TYPES:
            return _reply(200, result="ignored")  # unknown event types are acknowledged
        refused = event_problem(event)
        if refused is not None:
            log.error("event %s refused: %s", event.event_id, refused.content)
            return refused
        account_id = int(event.account_ref)
        payment_amount = event.amount_kopecks if event.payment_amount_kopecks is None else event.payment_amount_kopecks
        pool = await self.pool()
        async with pool.acquire() as conn:
            refused = await self._event_account(conn, account_id)
            if refused is not None:
                log.error("event %s (%s) refused: %s", event.event_id, event.payment_id, refused.content)
                return refused
            try:
                row = await self._payment_row(conn, event, account_id, payment_amount)
            except asyncpg.ForeignKeyViolationError:
                return _reply(422, code="unknown_account", message=f"no account {account_id}")
            if row["account_id"] != account_id or row["amount_kopecks"] != payment_amount:
                log.error("event %s disagrees with card_payments %s", event.event_id, dict(row))
                return _reply(422, code="mismatch", message="event does not match the payment")
            try:
                if event.type == "payment.captured":
                    return await self._captured(conn, event, row)
                if event.type == "payment.failed":
                    return await self._ended(conn, event, row, "failed")
                if event.type == "payment.canceled":
                    return await self._ended(conn, event, row, "canceled")
                return await self._refunded(conn, event, row)
            except commands.IdempotencyConflict as exc:
                log.error("event %s: %s", event.event_id, exc)
                return _reply(409, code="idempotency_conflict", message=str(exc))

    @staticmethod
    async def _event_account(conn: asyncpg.Connection, account_id: int) -> Response | None:
        """422 unless the event's account is a pupil's: ecard starts payments for pupils only, and
        the gateway credits nothing else, so a capture for any other account (the acquirer's
        clearing account, a school's revenue, a till's drawer) is refused, never marked captured."""
        kind = await conn.fetchval("SELECT kind FROM accounts WHERE id = $1", account_id)
        if kind is None:
            return _reply(422, code="unknown_account", message=f"no account {account_id}")
        if kind != ACCOUNT_KIND_PUPIL:
            return _reply(422, code="not_a_pupil_account",
                          message=f"account {account_id} is not a pupil account (kind {kind}); "
                                  "a card payment can only top up a pupil")
        return None

    async def _payment_row(self, conn: asyncpg.Connection, event: WebhookEvent, account_id: int,
                           payment_amount: int) -> asyncpg.Record:
        row = await card_payments.payment(conn, event.payment_id)
        if row is not None:
            return row
        # The event may overtake the reply to create_payment (or ecard may have crashed
        # before writing the row): the signed event carries what the row needs. Who asked
        # is not in it, so such a payment saves no card.
        origin = event.metadata.get("origin", "manual")
        origin = origin if isinstance(origin, str) and origin in ORIGINS else "manual"
        await card_payments.record_payment(conn, event.payment_id, account_id, payment_amount, origin, now_ms())
        return await card_payments.payment(conn, event.payment_id)

    async def _set_status(self, conn: asyncpg.Connection, payment_id: str, to: str, from_: tuple[str, ...]) -> str:
        await conn.execute(
            "UPDATE card_payments SET status = $2, updated_at_ms = $3 WHERE payment_id = $1 AND status = ANY($4::text[])",
            payment_id, to, now_ms(), list(from_),
        )
        return await conn.fetchval("SELECT status FROM card_payments WHERE payment_id = $1", payment_id)

    @staticmethod
    def _card_facts(event: WebhookEvent) -> tuple[str | None, str | None]:
        """(decline_code, card_last4) of the event, each None unless well-formed."""
        decline = event.decline_code
        if decline is not None and not (0 < len(decline) <= DECLINE_CODE_CHARS_MAX and decline.isascii()):
            decline = None
        last4 = event.card_last4
        if last4 is not None and not (len(last4) == 4 and last4.isascii() and last4.isdigit()):
            last4 = None
        return decline, last4

    async def _captured(self, conn: asyncpg.Connection, event: WebhookEvent, row: asyncpg.Record) -> Response:
        if row["status"] in ("failed", "canceled"):
            log.error("capture event for %s payment %s", row["status"], event.payment_id)
            return _reply(409, code="conflict", message=f"payment is {row['status']}")
        result = await commands.submit(
            conn,
            f"bank:{event.payment_id}:captured",
            "bank_topup",
            {"account_id": row["account_id"], "amount_kopecks": row["amount_kopecks"], "payment_id": event.payment_id},
            REQUESTED_BY,
            wait_ms=self.settings.command_wait_ms,
        )
        # Only after the command is durable: the status says "the credit is queued or done".
        status = await self._set_status(conn, event.payment_id, "captured", ("created",))
        _, last4 = self._card_facts(event)
        await card_payments.set_outcome(conn, event.payment_id, None, last4, now_ms())
        if event.card_token is not None:
            await self._save_card(conn, event, row, last4)
        if result.status == commands.STATUS_REFUSED:
            log.error("bank_topup for %s refused: %s; the payment needs a refund", event.payment_id, result.result)
        return _reply(200, status=status, command_seq=result.seq, command_status=result.status)

    async def _save_card(self, conn: asyncpg.Connection, event: WebhookEvent, row: asyncpg.Record,
                         last4: str | None) -> None:
        """Keep the token of a card the parent asked to save: only for a manual payment that a
        representative started with save_card. The token itself is never logged."""
        token = event.card_token or ""
        if not (row["save_card"] and row["representative_id"] is not None and row["origin"] == "manual"):
            log.warning("payment %s: the acquirer sent a card token ecard did not ask for; not saved", event.payment_id)
            return
        if not (0 < len(token) <= CARD_TOKEN_CHARS_MAX and token.isascii() and token.isprintable()
                and " " not in token) or last4 is None:
            log.error("payment %s: malformed card token or last4 from the acquirer; card not saved", event.payment_id)
            return
        card_id = await card_payments.save_card(conn, row["representative_id"], row["account_id"], event.payment_id,
                                                token, last4, now_ms())
        if card_id is None:
            log.error("payment %s: its card token is saved for another payment already; not saved again",
                      event.payment_id)

    async def _ended(self, conn: asyncpg.Connection, event: WebhookEvent, row: asyncpg.Record, to: str) -> Response:
        """payment.failed (declined, or the confirmation failed) or payment.canceled (by the payer,
        or the page expired): no money moves."""
        if row["status"] in ("captured", "refunded"):
            log.error("%s event for %s payment %s", event.type, row["status"], event.payment_id)
            return _reply(409, code="conflict", message=f"payment is {row['status']}")
        status = await self._set_status(conn, event.payment_id, to, ("created",))
        decline, last4 = self._card_facts(event)
        await card_payments.set_outcome(conn, event.payment_id, decline, last4, now_ms())
        return _reply(200, status=status)

    async def _refunded(self, conn: asyncpg.Connection, event: WebhookEvent, row: asyncpg.Record) -> Response:
        pid, amount = event.payment_id, event.amount_kopecks
        if amount > row["amount_kopecks"]:
            log.error("refund event %s of %d for payment %s of %d refused", event.event_id, amount, pid,
                      row["amount_kopecks"])
            return _reply(422, code="refund_exceeds_payment",
                          message=f"refund of {amount} kopecks exceeds payment {pid} of {row['amount_kopecks']} kopecks")
        key = f"bank:{pid}:refunded"
        seq = None
        # The check and the command's INSERT in one transaction under the payment's row lock:
        # a concurrent refund of the same payment waits here and then sees this one.
        async with conn.transaction():
            locked = await conn.fetchrow(
                "SELECT status, amount_kopecks FROM card_payments WHERE payment_id = $1 FOR UPDATE", pid
            )
            if locked["status"] == "created":
                # Out of order: the capture has not been processed. Move nothing; the acquirer
                # retries this event with backoff, and by then the capture is in.
                return _reply(409, code="not_captured_yet", message="refund before capture; retry later")
            if locked["status"] in ("failed", "canceled"):
                log.error("refund event for %s payment %s; nothing to reverse", locked["status"], pid)
                return _reply(200, status=locked["status"])
            prior = await conn.fetchrow(
                "SELECT seq, payload FROM commands WHERE idempotency_key = $1 AND kind = 'bank_refund'", key
            )
            refunded = msgspec.json.decode(prior["payload"])["amount_kopecks"] if prior is not None else 0
            if prior is not None and refunded != amount:
                # One refund per payment (the command key is the payment's). A second, different
                # one is refused whatever its amount; the sum could otherwise pass the capture.
                log.error("refund event %s of %d: payment %s already has a refund of %d", event.event_id, amount,
                          pid, refunded)
                return _reply(409, code="already_refunded",
                              message=f"payment {pid} of {locked['amount_kopecks']} kopecks already has a refund of "
                                      f"{refunded} kopecks (one refund per payment); this one of {amount} would make "
                                      f"{refunded + amount}")
            capture = await conn.fetchrow("SELECT status FROM commands WHERE idempotency_key = $1",
                                          f"bank:{pid}:captured")
            if capture is not None and capture["status"] == commands.STATUS_REFUSED:
                log.warning("refund of %s: its top-up was refused, nothing to reverse", pid)
            elif prior is not None:
                seq = prior["seq"]  # a redelivery: the command is in already
            else:
                queued = await commands.submit(
                    conn, key, "bank_refund",
                    {"account_id": row["account_id"], "amount_kopecks": amount, "payment_id": pid},
                    REQUESTED_BY,
                    wait_ms=0,  # not visible to the gateway before COMMIT; waited for below
                )
                seq = queued.seq
            status = await self._set_status(conn, pid, "refunded", ("captured",))
        command_status = None
        if seq is not None:
            result = await commands.wait_result(conn, seq, self.settings.command_wait_ms)
            command_status = result.status
        return _reply(200, status=status, command_seq=seq, command_status=command_status)
