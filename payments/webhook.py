"""ecard's side of card payments: the acquirer's webhook and the top-up endpoints.

``payments_router(service)`` is a Litestar Router mountable in any Litestar app
(add ``service.close`` to the app's ``on_shutdown``); ``create_app(service)``
is the standalone app of ``python -m payments serve``.

  POST /payments/webhook                   signed acquirer events (payments/signing.py)
  POST /accounts/{account_id}/topups       start a top-up   header Idempotency-Key
  PUT  /accounts/{account_id}/auto-topup   save a card and the auto top-up rules

Money moves only through commands (storage.commands.submit), keyed by the
acquirer's payment id: ``bank:<payment_id>:captured`` (bank_topup) and
``bank:<payment_id>:refunded`` (bank_refund). A redelivered event submits the
same key again, which the commands table turns into a no-op; card_payments
status only moves forward (created -> captured -> refunded, created -> failed).

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
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, Router, post, put
from litestar.params import FromPath

from ledger.codes import AccountKind
from storage import commands

from . import signing
from .acquirer import Acquirer, AcquirerError

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


class TopupRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_kopecks: int
    card_number: str | None = None
    card_token: str | None = None
    save_card: bool = False
    sandbox_test: dict[str, Any] | None = None  # passed to the sandbox when allowed (tests)


class AutoTopupRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_kopecks: int
    card_number: str | None = None
    card_token: str | None = None
    threshold_kopecks: int | None = None
    schedule_weekday: int | None = None  # 0 Monday .. 6 Sunday
    active: bool = True


@dataclass
class PaymentsSettings:
    webhook_secret: str
    public_url: str  # where the acquirer reaches this service, e.g. http://127.0.0.1:8810
    command_wait_ms: int = COMMAND_WAIT_MS
    signature_tolerance_s: int = signing.SIGNATURE_TOLERANCE_S
    allow_sandbox_test_options: bool = False

    @property
    def callback_url(self) -> str:
        return self.public_url.rstrip("/") + WEBHOOK_PATH


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _reply(http_status: int, /, **content: Any) -> Response:
    return Response(content, status_code=http_status)


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
    """Holds the pool and the acquirer; every handler's logic lives here."""

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
        if event.type not in ("payment.captured", "payment.failed", "payment.refunded"):
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
                    return await self._failed(conn, event, row)
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
        row = await conn.fetchrow(
            "SELECT account_id, amount_kopecks, status FROM card_payments WHERE payment_id = $1", event.payment_id
        )
        if row is not None:
            return row
        # The event may overtake the reply to create_payment (or ecard may have crashed
        # before writing the row): the signed event carries what the row needs.
        origin = event.metadata.get("origin", "manual")
        origin = origin if isinstance(origin, str) and origin in ORIGINS else "manual"
        t = now_ms()
        await conn.execute(
            """
            INSERT INTO card_payments (payment_id, account_id, amount_kopecks, status, origin, created_at_ms, updated_at_ms)
            VALUES ($1, $2, $3, 'created', $4, $5, $5) ON CONFLICT (payment_id) DO NOTHING
            """,
            event.payment_id, account_id, payment_amount, origin, t,
        )
        return await conn.fetchrow(
            "SELECT account_id, amount_kopecks, status FROM card_payments WHERE payment_id = $1", event.payment_id
        )

    async def _set_status(self, conn: asyncpg.Connection, payment_id: str, to: str, from_: tuple[str, ...]) -> str:
        await conn.execute(
            "UPDATE card_payments SET status = $2, updated_at_ms = $3 WHERE payment_id = $1 AND status = ANY($4::text[])",
            payment_id, to, now_ms(), list(from_),
        )
        return await conn.fetchval("SELECT status FROM card_payments WHERE payment_id = $1", payment_id)

    async def _captured(self, conn: asyncpg.Connection, event: WebhookEvent, row: asyncpg.Record) -> Response:
        if row["status"] == "failed":
            log.error("capture event for failed payment %s", event.payment_id)
            return _reply(409, code="conflict", message="payment is failed")
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
        if result.status == commands.STATUS_REFUSED:
            log.error("bank_topup for %s refused: %s; the payment needs a refund", event.payment_id, result.result)
        return _reply(200, status=status, command_seq=result.seq, command_status=result.status)

    async def _failed(self, conn: asyncpg.Connection, event: WebhookEvent, row: asyncpg.Record) -> Response:
        if row["status"] in ("captured", "refunded"):
            log.error("failure event for %s payment %s", row["status"], event.payment_id)
            return _reply(409, code="conflict", message=f"payment is {row['status']}")
        status = await self._set_status(conn, event.payment_id, "failed", ("created",))
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
            if locked["status"] == "failed":
                log.error("refund event for failed payment %s; nothing to reverse", pid)
                return _reply(200, status="failed")
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

    # ------------------------------------------------------------------ top-ups

    async def _pupil_account(self, conn: asyncpg.Connection, account_id: int) -> Response | None:
        if not 0 < account_id <= BIGINT_MAX:  # no such id can exist (and asyncpg could not send it)
            return _reply(404, code="unknown_account", message=f"no pupil account {account_id}")
        row = await conn.fetchrow("SELECT kind, status FROM accounts WHERE id = $1", account_id)
        if row is None or row["kind"] != ACCOUNT_KIND_PUPIL:
            return _reply(404, code="unknown_account", message=f"no pupil account {account_id}")
        if row["status"] != 0:
            return _reply(409, code="account_blocked", message="the account is blocked")
        return None

    @staticmethod
    def _acquirer_error(exc: AcquirerError) -> Response:
        if exc.retryable:
            return _reply(502, code="acquirer_unavailable", message=str(exc))
        return _reply(409 if exc.status == 409 else 400, code=exc.code or "acquirer_refused", message=str(exc))

    async def start_topup(self, account_id: int, body: bytes, idempotency_key: str | None) -> Response:
        if not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_CHARS_MAX:
            return _reply(400, code="idempotency_key_required", message="Idempotency-Key header (1..200 chars)")
        try:
            req = msgspec.json.decode(body, type=TopupRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _reply(400, code="invalid_request", message=str(exc))
        if not 0 < req.amount_kopecks <= TOPUP_KOPECKS_MAX:
            return _reply(400, code="invalid_amount", message=f"amount_kopecks must be 1..{TOPUP_KOPECKS_MAX}")
        if (req.card_number is None) == (req.card_token is None):
            return _reply(400, code="invalid_request", message="exactly one of card_number, card_token")
        pool = await self.pool()
        async with pool.acquire() as conn:
            refused = await self._pupil_account(conn, account_id)
            if refused is not None:
                return refused
            extra: dict[str, Any] = {}
            if req.sandbox_test and self.settings.allow_sandbox_test_options:
                extra["test"] = req.sandbox_test
            token = None
            try:
                if req.save_card and req.card_number is not None:
                    token = await self.acquirer.save_card(req.card_number)
                payment = await self.acquirer.create_payment(
                    account_ref=str(account_id),
                    amount_kopecks=req.amount_kopecks,
                    callback_url=self.settings.callback_url,
                    # Scoped by account: the same key from two accounts is two payments.
                    idempotency_key=f"topup:{account_id}:{idempotency_key}",
                    card_number=req.card_number,
                    card_token=req.card_token,
                    metadata={"origin": "manual"},
                    **extra,
                )
            except AcquirerError as exc:
                return self._acquirer_error(exc)
            status = await record_payment(conn, payment.payment_id, account_id, payment.amount_kopecks, "manual", now_ms())
        reply: dict[str, Any] = {
            "payment_id": payment.payment_id,
            "status": status,
            "acquirer_status": payment.status,
            "amount_kopecks": payment.amount_kopecks,
        }
        if payment.decline_code:
            reply["decline_code"] = payment.decline_code
        if token:
            reply["card_token"] = token
        return Response(reply, status_code=201)

    async def set_auto_topup(self, account_id: int, body: bytes) -> Response:
        try:
            req = msgspec.json.decode(body, type=AutoTopupRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _reply(400, code="invalid_request", message=str(exc))
        if not 0 < req.amount_kopecks <= TOPUP_KOPECKS_MAX:
            return _reply(400, code="invalid_amount", message=f"amount_kopecks must be 1..{TOPUP_KOPECKS_MAX}")
        if (req.card_number is None) == (req.card_token is None):
            return _reply(400, code="invalid_request", message="exactly one of card_number, card_token")
        if req.threshold_kopecks is None and req.schedule_weekday is None:
            return _reply(400, code="invalid_request", message="threshold_kopecks and/or schedule_weekday")
        if req.schedule_weekday is not None and not 0 <= req.schedule_weekday <= 6:
            return _reply(400, code="invalid_request", message="schedule_weekday is 0 (Monday)..6")
        if req.threshold_kopecks is not None and not 0 <= req.threshold_kopecks <= BIGINT_MAX:
            return _reply(400, code="invalid_request", message=f"threshold_kopecks must be 0..{BIGINT_MAX}")
        pool = await self.pool()
        async with pool.acquire() as conn:
            refused = await self._pupil_account(conn, account_id)
            if refused is not None:
                return refused
            token = req.card_token
            if req.card_number is not None:
                try:
                    token = await self.acquirer.save_card(req.card_number)
                except AcquirerError as exc:
                    return self._acquirer_error(exc)
            await conn.execute(
                """
                INSERT INTO auto_topups (account_id, card_token, amount_kopecks, threshold_kopecks, schedule_weekday, active)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (account_id) DO UPDATE SET card_token = EXCLUDED.card_token,
                    amount_kopecks = EXCLUDED.amount_kopecks, threshold_kopecks = EXCLUDED.threshold_kopecks,
                    schedule_weekday = EXCLUDED.schedule_weekday, active = EXCLUDED.active
                """,
                account_id, token, req.amount_kopecks, req.threshold_kopecks, req.schedule_weekday, req.active,
            )
        return _reply(200, account_id=account_id, card_token=token)


async def record_payment(conn: asyncpg.Connection, payment_id: str, account_id: int, amount_kopecks: int,
                         origin: str, at_ms: int) -> str:
    """The card_payments row of a payment the acquirer accepted (once; the webhook may
    have written it first). Returns its current status."""
    await conn.execute(
        """
        INSERT INTO card_payments (payment_id, account_id, amount_kopecks, status, origin, created_at_ms, updated_at_ms)
        VALUES ($1, $2, $3, 'created', $4, $5, $5) ON CONFLICT (payment_id) DO NOTHING
        """,
        payment_id, account_id, amount_kopecks, origin, at_ms,
    )
    return await conn.fetchval("SELECT status FROM card_payments WHERE payment_id = $1", payment_id)


def payments_router(service: PaymentsService, path: str = "/") -> Router:
    @post(WEBHOOK_PATH, status_code=200)
    async def webhook(request: Request) -> Response:
        return await service.handle_event(await request.body(), request.headers.get(signing.SIGNATURE_HEADER))

    @post("/accounts/{account_id:int}/topups")
    async def start_topup(account_id: FromPath[int], request: Request) -> Response:
        return await service.start_topup(account_id, await request.body(), request.headers.get("idempotency-key"))

    @put("/accounts/{account_id:int}/auto-topup")
    async def set_auto_topup(account_id: FromPath[int], request: Request) -> Response:
        return await service.set_auto_topup(account_id, await request.body())

    return Router(path=path, route_handlers=[webhook, start_topup, set_auto_topup])


def create_app(service: PaymentsService) -> Litestar:
    return Litestar(route_handlers=[payments_router(service)], on_shutdown=[service.close])
