"""A local sandbox acquirer: a small HTTP service that behaves like a bank's test mode, with a
hosted payment page (like YooKassa's redirect confirmation or Stripe Checkout) and card tokens.

    python -m payments.sandbox --host 127.0.0.1 --port 8900 --webhook-secret S

The merchant (ecard) never sees a card number: it creates a payment server to server, sends
the payer's browser to ``confirmation_url`` (this service's own page), and learns the outcome
from the signed webhook event (with a card token and the last 4 digits when the payer agreed
to save the card). Later merchant-initiated charges use the token.

Merchant API (JSON):
  POST /payments                 {account_ref, amount_kopecks, callback_url, description?, metadata?, test?,
                                  confirmation: {type: "redirect", return_url}, save_payment_method?}
                                 | {account_ref, amount_kopecks, callback_url, card_token, metadata?, test?}
                                 header Idempotency-Key. Hosted: 201 status "pending" with confirmation_url.
                                 Token: decided at once (captured or failed).
  POST /payments/{id}/refund     {amount_kopecks?}                  header Idempotency-Key
  GET  /payments/{id}
  GET  /sandbox/deliveries       every webhook delivery attempt (for tests)
  GET  /health

Hosted pages (HTML, Russian; the payer's browser):
  GET  /pay/{id}                 the card form (number, expiry MM/YY, CVC, cardholder optional)
  POST /pay/{id}                 form-encoded; a bad field: the form again with the error, 422;
                                 else 303 to the confirmation step
  GET  /pay/{id}/3ds             "Подтверждение платежа": the one-time code
  POST /pay/{id}/3ds             code; right: the card is charged (a declined test card fails
                                 here), the event is sent, 303 to return_url?payment_id=...;
                                 wrong: the page again, 422 (THREE_DS_ATTEMPTS_MAX tries, then
                                 the payment fails and the browser goes back)
  POST /pay/{id}/cancel          the payment is canceled (event payment.canceled), 303 back
A payment page completes once: after that every page answers 303 to the return URL.

The sandbox's one-time code is the card number's last 4 digits (shown on the page as a hint).

Test cards: 4111111111111111 succeeds; 4000000000000002 is declined (card_declined);
4000000000009995 is declined (insufficient_funds); 4000000000000341 succeeds and can be saved,
but every later charge with its token is declined (card_declined); any other Luhn-valid
number succeeds. A token of an expired card is declined (expired_card).

Every outcome is reported to the payment's callback_url as a signed event
(payments/signing.py), retried with exponential backoff until a 2xx, at most
``retry_attempts`` times. Test knobs, global (flags) or per payment (``test``):
``duplicate`` delivers each event twice, concurrently; ``reorder`` holds the
payment's first event until the next one (a refund) is sent, or ``reorder_hold_ms``
passes, so a refund event arrives before its capture; ``delay_ms`` delays every
delivery. A hosted payment not completed within ``page_ttl_s`` is canceled
(decline_code ``expired``). State lives in memory only.

The card number never leaves this process except masked (last 4 digits) and as an opaque
token, and is never logged; a payment forgets it when it completes unless it was saved.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import datetime as dt
import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath

from . import signing
from .sandbox_pages import (STYLE_CSP_HASH, Card, card_page, code_ok, luhn_ok, message_page, parse_card_form,
                            three_ds_code, three_ds_page)

log = logging.getLogger("ecard.sandbox")

__all__ = ["CARD_OK", "CARD_DECLINED", "CARD_INSUFFICIENT_FUNDS", "CARD_DECLINES_LATER", "SandboxConfig",
           "create_app", "bind_socket", "luhn_ok"]

CARD_OK = "4111111111111111"
CARD_DECLINED = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
CARD_DECLINES_LATER = "4000000000000341"  # the first payment succeeds (and saves); token charges are declined
DECLINES = {CARD_DECLINED: "card_declined", CARD_INSUFFICIENT_FUNDS: "insufficient_funds"}
DECLINES_BY_TOKEN = {**DECLINES, CARD_DECLINES_LATER: "card_declined"}
# One charge; like real acquirers' per-transaction limits (150,000 roubles).
AMOUNT_KOPECKS_MAX = 15_000_000
DELIVERY_LOG_MAX = 10_000  # the deliveries log is a ring, enough for tests and demos
# Wrong one-time codes before the payment fails (a real issuer's ACS allows about as many).
THREE_DS_ATTEMPTS_MAX = 3
# A hosted form's body: four short fields; anything larger is not from the page.
FORM_BYTES_MAX = 4_096
FORM_FIELDS_MAX = 10
URL_CHARS_MAX = 2_000
DESCRIPTION_CHARS_MAX = 200
# Statuses. A hosted payment is PENDING until its page completes.
PENDING, CAPTURED, FAILED, CANCELED, REFUNDED = "pending", "captured", "failed", "canceled", "refunded"


@dataclass
class SandboxConfig:
    webhook_secret: str
    retry_attempts: int = 8            # deliveries of one event before giving up
    retry_base_ms: int = 500           # first backoff; doubles each attempt
    retry_cap_ms: int = 30_000         # backoff ceiling
    webhook_timeout_s: float = 15.0    # one delivery attempt (ecard may wait for the gateway)
    duplicate: bool = False
    reorder: bool = False
    reorder_hold_ms: int = 5_000
    delay_ms: int = 0
    public_url: str | None = None      # where payers' browsers reach this service (confirmation_url)
    merchant_name: str = "Электронная карта в образовании"
    page_ttl_s: float = 1_800.0        # a hosted payment left unfinished this long is canceled
    sweep_interval_s: float = 30.0     # how often unfinished payments are looked at
    clock_s: Callable[[], float] = time.time


@dataclass
class SandboxPayment:
    payment_id: str
    account_ref: str
    amount_kopecks: int
    status: str
    callback_url: str
    metadata: dict[str, Any]
    options: dict[str, Any]
    request_fingerprint: bytes
    description: str = ""
    return_url: str | None = None       # hosted payments only
    save_payment_method: bool = False
    confirmation_url: str | None = None
    card: Card | None = None            # typed on the page, until the payment completes
    card_last4: str | None = None
    card_token: str | None = None       # saved on success when asked
    three_ds_attempts: int = 0
    decline_code: str | None = None
    refunded_kopecks: int = 0
    created: float = 0.0
    held: dict[str, Any] | None = None  # reorder: the first event, not yet sent
    release_task: asyncio.Task | None = None

    @property
    def hosted(self) -> bool:
        return self.return_url is not None

    def public(self) -> dict[str, Any]:
        out = {
            "payment_id": self.payment_id,
            "account_ref": self.account_ref,
            "amount_kopecks": self.amount_kopecks,
            "status": self.status,
            "decline_code": self.decline_code,
            "refunded_kopecks": self.refunded_kopecks,
            "metadata": self.metadata,
            "card_last4": self.card_last4,
        }
        if self.hosted:
            out["confirmation_url"] = self.confirmation_url
            out["save_payment_method"] = self.save_payment_method
            out["card_saved"] = self.card_token is not None
        return out


def _error(status: int, code: str, message: str) -> Response:
    return Response({"code": code, "message": message}, status_code=status)


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def with_payment_id(return_url: str, payment_id: str) -> str:
    """The return URL with ``payment_id`` added to its query."""
    parts = urllib.parse.urlsplit(return_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query.append(("payment_id", payment_id))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _http_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > URL_CHARS_MAX or not value.isascii():
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in value)


@dataclass
class Sandbox:
    config: SandboxConfig
    payments: dict[str, SandboxPayment] = field(default_factory=dict)
    by_key: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # idempotency key -> (id, fingerprint)
    tokens: dict[str, Card] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _client: httpx.AsyncClient | None = None

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.config.clock_s(), dt.timezone.utc).date()

    # ------------------------------------------------------------------ events

    def _option(self, payment: SandboxPayment, name: str) -> Any:
        return payment.options.get(name, getattr(self.config, name))

    def _event(self, payment: SandboxPayment, type_: str, amount: int) -> dict[str, Any]:
        event = {
            "event_id": "evt_" + secrets.token_hex(10),
            "type": type_,
            "created": int(self.config.clock_s()),
            "payment_id": payment.payment_id,
            "account_ref": payment.account_ref,
            "amount_kopecks": amount,
            "payment_amount_kopecks": payment.amount_kopecks,
            "decline_code": payment.decline_code,
            "metadata": payment.metadata,
        }
        if payment.card_last4 is not None:
            event["card_last4"] = payment.card_last4
        if type_ == "payment.captured" and payment.card_token is not None:
            event["card_token"] = payment.card_token
        return event

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def emit(self, payment: SandboxPayment, event: dict[str, Any]) -> None:
        if self._option(payment, "reorder"):
            if payment.held is None and payment.release_task is None:
                # Hold the first event; it goes out after the next one, or after the hold time.
                payment.held = event
                payment.release_task = self._spawn(self._release_later(payment))
                return
            if payment.held is not None:
                held, payment.held = payment.held, None
                if payment.release_task is not None:
                    payment.release_task.cancel()
                first_attempted = asyncio.Event()
                self._deliver_all(payment, event, first_attempted)
                self._spawn(self._after(first_attempted, payment, held))
                return
        self._deliver_all(payment, event, None)

    async def _release_later(self, payment: SandboxPayment) -> None:
        await asyncio.sleep(self._option(payment, "reorder_hold_ms") / 1000)
        if payment.held is not None:
            held, payment.held = payment.held, None
            self._deliver_all(payment, held, None)

    async def _after(self, first_attempted: asyncio.Event, payment: SandboxPayment, event: dict[str, Any]) -> None:
        await first_attempted.wait()
        self._deliver_all(payment, event, None)

    def _deliver_all(self, payment: SandboxPayment, event: dict[str, Any], first_attempted: asyncio.Event | None) -> None:
        copies = 2 if self._option(payment, "duplicate") else 1
        for _ in range(copies):
            self._spawn(self._deliver(payment, event, first_attempted))

    async def _deliver(self, payment: SandboxPayment, event: dict[str, Any],
                       first_attempted: asyncio.Event | None) -> None:
        cfg = self.config
        delay_ms = self._option(payment, "delay_ms")
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        body = msgspec.json.encode(event)
        assert self._client is not None
        for attempt in range(1, cfg.retry_attempts + 1):
            ts = int(time.time())
            headers = {"Content-Type": "application/json",
                       signing.SIGNATURE_HEADER: signing.sign_header(cfg.webhook_secret, ts, body)}
            try:
                r = await self._client.post(payment.callback_url, content=body, headers=headers,
                                            timeout=cfg.webhook_timeout_s)
                status = r.status_code
            except httpx.HTTPError as exc:
                log.info("delivery of %s to %s failed: %r", event["event_id"], payment.callback_url, exc)
                status = 0
            self._record(event, attempt, status)
            if first_attempted is not None:
                first_attempted.set()
            if 200 <= status < 300:
                return
            if attempt < cfg.retry_attempts:
                await asyncio.sleep(min(cfg.retry_base_ms * 2 ** (attempt - 1), cfg.retry_cap_ms) / 1000)
        log.warning("event %s (%s) undeliverable after %d attempts", event["event_id"], event["type"], cfg.retry_attempts)
        self._record(event, 0, -1)

    def _record(self, event: dict[str, Any], attempt: int, status: int) -> None:
        self.deliveries.append({"event_id": event["event_id"], "type": event["type"],
                                "payment_id": event["payment_id"], "attempt": attempt, "status": status})
        if len(self.deliveries) > DELIVERY_LOG_MAX:
            del self.deliveries[: len(self.deliveries) - DELIVERY_LOG_MAX]

    def _finish(self, payment: SandboxPayment, status: str, decline_code: str | None) -> None:
        """A pending hosted payment ends: captured, failed or canceled; the event goes out.
        Synchronous (no await): two racing requests cannot both finish it."""
        assert payment.status == PENDING
        payment.status, payment.decline_code = status, decline_code
        if status == CAPTURED and payment.save_payment_method and payment.card is not None:
            payment.card_token = "tok_" + secrets.token_hex(12)
            self.tokens[payment.card_token] = payment.card
        payment.card = None  # forgotten unless saved as a token
        kind = {CAPTURED: "payment.captured", FAILED: "payment.failed", CANCELED: "payment.canceled"}[status]
        self.emit(payment, self._event(payment, kind, payment.amount_kopecks))

    def sweep(self) -> int:
        """Cancel hosted payments left pending longer than page_ttl_s; how many."""
        limit = self.config.clock_s() - self.config.page_ttl_s
        stale = [p for p in self.payments.values() if p.status == PENDING and p.created < limit]
        for payment in stale:
            self._finish(payment, CANCELED, "expired")
        return len(stale)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            self.sweep()

    # ------------------------------------------------------------------ merchant API

    async def create_payment(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "idempotency_key_required", "Idempotency-Key header is required")
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw)
            account_ref = str(body["account_ref"])
            amount = body["amount_kopecks"]
            callback_url = body["callback_url"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return _error(400, "invalid_request", "account_ref, amount_kopecks, callback_url required")
        if "card_number" in body:
            # Card details reach the acquirer only on its own hosted page, never from a merchant.
            return _error(400, "card_data_not_accepted",
                          "send the payer to the hosted page (confirmation.type redirect) or charge a card_token")
        fingerprint = msgspec.json.encode({k: v for k, v in body.items() if k != "test"})
        if key in self.by_key:
            payment_id, seen = self.by_key[key]
            if seen != fingerprint:
                return _error(409, "idempotency_conflict", "Idempotency-Key reused with another request")
            return Response(self.payments[payment_id].public(), status_code=200)
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= AMOUNT_KOPECKS_MAX:
            return _error(400, "invalid_amount", f"amount_kopecks must be 1..{AMOUNT_KOPECKS_MAX}")
        if not _http_url(callback_url):
            return _error(400, "invalid_callback_url", "callback_url must be http(s)")
        options = body.get("test") or {}
        metadata = body.get("metadata") or {}
        description = body.get("description") or "Оплата"
        if not isinstance(options, dict) or not isinstance(metadata, dict):
            return _error(400, "invalid_request", "test and metadata must be objects")
        if not isinstance(description, str) or len(description) > DESCRIPTION_CHARS_MAX:
            return _error(400, "invalid_request", f"description: a string of at most {DESCRIPTION_CHARS_MAX}")
        confirmation = body.get("confirmation")
        token = body.get("card_token")
        if (confirmation is None) == (token is None):
            return _error(400, "invalid_request", "exactly one of confirmation (hosted page) and card_token")
        payment = SandboxPayment(
            payment_id="pay_" + secrets.token_hex(10), account_ref=account_ref, amount_kopecks=amount,
            status=PENDING, callback_url=callback_url, metadata=metadata, options=options,
            request_fingerprint=fingerprint, description=description, created=self.config.clock_s(),
        )
        if confirmation is not None:
            if not isinstance(confirmation, dict) or confirmation.get("type") != "redirect" \
                    or not _http_url(confirmation.get("return_url")):
                return _error(400, "invalid_confirmation",
                              'confirmation must be {"type": "redirect", "return_url": "http(s)://..."}')
            save = body.get("save_payment_method", False)
            if not isinstance(save, bool):
                return _error(400, "invalid_request", "save_payment_method must be true or false")
            payment.return_url, payment.save_payment_method = confirmation["return_url"], save
            base = (self.config.public_url or str(request.base_url)).rstrip("/")
            payment.confirmation_url = f"{base}/pay/{payment.payment_id}"
            self.payments[payment.payment_id] = payment
            self.by_key[key] = (payment.payment_id, fingerprint)
            return Response(payment.public(), status_code=201)
        # Merchant-initiated: a saved card, decided at once.
        card = self.tokens.get(token) if isinstance(token, str) else None
        if card is None:
            return _error(404, "unknown_token", "no such card token")
        payment.card_last4 = card.last4
        payment.decline_code = DECLINES_BY_TOKEN.get(card.number) or ("expired_card" if card.expired(self.today())
                                                                      else None)
        payment.status = FAILED if payment.decline_code else CAPTURED
        self.payments[payment.payment_id] = payment
        self.by_key[key] = (payment.payment_id, fingerprint)
        kind = "payment.failed" if payment.decline_code else "payment.captured"
        self.emit(payment, self._event(payment, kind, amount))
        return Response(payment.public(), status_code=201)

    async def refund(self, payment_id: str, request: Request) -> Response:
        payment = self.payments.get(payment_id)
        if payment is None:
            return _error(404, "unknown_payment", "no such payment")
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError:
            return _error(400, "invalid_request", "body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_request", "body must be a JSON object")
        key = request.headers.get("idempotency-key") or f"refund:{payment_id}"
        fingerprint = msgspec.json.encode({"refund": payment_id, **body})
        if key in self.by_key:
            seen_id, seen = self.by_key[key]
            if seen != fingerprint:
                return _error(409, "idempotency_conflict", "Idempotency-Key reused with another request")
            return Response(payment.public(), status_code=200)
        amount = body.get("amount_kopecks", payment.amount_kopecks)
        if payment.status != CAPTURED:
            return _error(409, "not_refundable", f"payment is {payment.status}")
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= payment.amount_kopecks:
            return _error(400, "invalid_amount", "refund amount must be 1..payment amount")
        payment.status = REFUNDED  # one refund per payment (full or partial)
        payment.refunded_kopecks = amount
        self.by_key[key] = (payment_id, fingerprint)
        self.emit(payment, self._event(payment, "payment.refunded", amount))
        return Response(payment.public(), status_code=200)

    # ------------------------------------------------------------------ hosted pages

    def _page(self, payment: SandboxPayment | None, html: str, status: int = 200) -> Response:
        form_action = "'self'"
        if payment is not None and payment.return_url is not None:
            # Chromium applies form-action to the redirect after a POST too.
            form_action += " " + origin_of(payment.return_url)
        return Response(html, status_code=status, media_type="text/html", headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": f"default-src 'none'; style-src '{STYLE_CSP_HASH}'; "
                                       f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
        })

    def _back(self, payment: SandboxPayment) -> Response:
        assert payment.return_url is not None
        return Response(b"", status_code=303, headers={"Location": with_payment_id(payment.return_url, payment.payment_id),
                                                       "Cache-Control": "no-store"})

    def _to(self, location: str) -> Response:
        return Response(b"", status_code=303, headers={"Location": location, "Cache-Control": "no-store"})

    def _hosted(self, payment_id: str) -> SandboxPayment | None:
        payment = self.payments.get(payment_id)
        if payment is None or not payment.hosted:
            return None
        if payment.status == PENDING and payment.created < self.config.clock_s() - self.config.page_ttl_s:
            self._finish(payment, CANCELED, "expired")
        return payment

    def _not_found(self) -> Response:
        return self._page(None, message_page("Платёж не найден",
                                             "Ссылка на оплату неверна. Вернитесь на сайт и начните оплату заново."),
                          404)

    def _card_form(self, payment: SandboxPayment, values: dict[str, str] | None = None,
                   errors: dict[str, str] | None = None, status: int = 200) -> Response:
        return self._page(payment, card_page(
            payment_id=payment.payment_id, merchant=self.config.merchant_name, description=payment.description,
            amount_kopecks=payment.amount_kopecks, save_payment_method=payment.save_payment_method,
            values=values, errors=errors), status)

    def _three_ds_form(self, payment: SandboxPayment, error: str | None = None, status: int = 200) -> Response:
        assert payment.card is not None
        return self._page(payment, three_ds_page(
            payment_id=payment.payment_id, merchant=self.config.merchant_name, description=payment.description,
            amount_kopecks=payment.amount_kopecks, last4=payment.card.last4, code=three_ds_code(payment.card),
            error=error), status)

    async def _form(self, request: Request) -> dict[str, str] | None:
        raw = await request.body()
        if len(raw) > FORM_BYTES_MAX:
            return None
        try:
            pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                                           max_num_fields=FORM_FIELDS_MAX, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return None
        return dict(pairs)

    def pay_page(self, payment_id: str) -> Response:
        payment = self._hosted(payment_id)
        if payment is None:
            return self._not_found()
        if payment.status != PENDING:
            return self._back(payment)
        return self._card_form(payment)

    async def pay_submit(self, payment_id: str, request: Request) -> Response:
        fields = await self._form(request)
        payment = self._hosted(payment_id)
        if payment is None:
            return self._not_found()
        if payment.status != PENDING:
            return self._back(payment)  # completed once: a replay only goes back
        if fields is None:
            return self._card_form(payment, errors={"card_number": "Форма отправлена с ошибкой: заполните её снова."},
                                   status=400)
        card, errors = parse_card_form(fields, self.today())
        if card is None:
            return self._card_form(payment, fields, errors, 422)
        payment.card, payment.card_last4 = card, card.last4
        return self._to(f"/pay/{payment.payment_id}/3ds")

    def three_ds_page(self, payment_id: str) -> Response:
        payment = self._hosted(payment_id)
        if payment is None:
            return self._not_found()
        if payment.status != PENDING:
            return self._back(payment)
        if payment.card is None:
            return self._to(f"/pay/{payment.payment_id}")
        return self._three_ds_form(payment)

    async def three_ds_submit(self, payment_id: str, request: Request) -> Response:
        fields = await self._form(request) or {}
        # No await below: the check and the capture are one step, so a double click charges once.
        payment = self._hosted(payment_id)
        if payment is None:
            return self._not_found()
        if payment.status != PENDING:
            return self._back(payment)
        if payment.card is None:
            return self._to(f"/pay/{payment.payment_id}")
        typed = fields.get("code", "").strip()
        if not (code_ok(typed) and secrets.compare_digest(typed, three_ds_code(payment.card))):
            payment.three_ds_attempts += 1
            left = THREE_DS_ATTEMPTS_MAX - payment.three_ds_attempts
            if left <= 0:
                self._finish(payment, FAILED, "authentication_failed")
                return self._back(payment)
            return self._three_ds_form(payment, f"Неверный код. Осталось попыток: {left}.", 422)
        self._finish(payment, FAILED if payment.card.number in DECLINES else CAPTURED, DECLINES.get(payment.card.number))
        return self._back(payment)

    async def cancel(self, payment_id: str, request: Request) -> Response:
        await request.body()
        payment = self._hosted(payment_id)
        if payment is None:
            return self._not_found()
        if payment.status == PENDING:
            self._finish(payment, CANCELED, "canceled_by_payer")
        return self._back(payment)

    async def startup(self) -> None:
        self._client = httpx.AsyncClient()
        self._spawn(self._sweep_forever())

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()


def create_app(config: SandboxConfig) -> Litestar:
    sandbox = Sandbox(config)

    @post("/payments")
    async def create_payment(request: Request) -> Response:
        return await sandbox.create_payment(request)

    @post("/payments/{payment_id:str}/refund")
    async def refund(payment_id: FromPath[str], request: Request) -> Response:
        return await sandbox.refund(payment_id, request)

    @get("/payments/{payment_id:str}")
    async def get_payment(payment_id: FromPath[str]) -> Response:
        payment = sandbox.payments.get(payment_id)
        if payment is None:
            return _error(404, "unknown_payment", "no such payment")
        return Response(payment.public())

    @get("/pay/{payment_id:str}")
    async def pay_page(payment_id: FromPath[str]) -> Response:
        return sandbox.pay_page(payment_id)

    @post("/pay/{payment_id:str}", status_code=200)
    async def pay_submit(payment_id: FromPath[str], request: Request) -> Response:
        return await sandbox.pay_submit(payment_id, request)

    @get("/pay/{payment_id:str}/3ds")
    async def three_ds_page(payment_id: FromPath[str]) -> Response:
        return sandbox.three_ds_page(payment_id)

    @post("/pay/{payment_id:str}/3ds", status_code=200)
    async def three_ds_submit(payment_id: FromPath[str], request: Request) -> Response:
        return await sandbox.three_ds_submit(payment_id, request)

    @post("/pay/{payment_id:str}/cancel", status_code=200)
    async def cancel(payment_id: FromPath[str], request: Request) -> Response:
        return await sandbox.cancel(payment_id, request)

    @get("/sandbox/deliveries")
    async def deliveries(request: Request) -> Response:
        payment_id = request.query_params.get("payment_id")
        rows = [d for d in sandbox.deliveries if payment_id is None or d["payment_id"] == payment_id]
        return Response(rows)

    @get("/health")
    async def health() -> Response:
        return Response({"ok": True})

    app = Litestar(
        route_handlers=[create_payment, refund, get_payment, pay_page, pay_submit, three_ds_page, three_ds_submit,
                        cancel, deliveries, health],
        on_startup=[sandbox.startup],
        on_shutdown=[sandbox.shutdown],
    )
    app.state.sandbox = sandbox
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m payments.sandbox", description="local sandbox acquirer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--public-url", default=None,
                   help="where payers' browsers reach the hosted pages (default http://<host>:<port>)")
    # From the environment by default: a secret on a command line is readable in every process's argv.
    p.add_argument("--webhook-secret", default=os.environ.get("ECARD_WEBHOOK_SECRET"),
                   help="the webhook signing secret (default: $ECARD_WEBHOOK_SECRET)")
    p.add_argument("--retry-attempts", type=int, default=SandboxConfig.retry_attempts)
    p.add_argument("--retry-base-ms", type=int, default=SandboxConfig.retry_base_ms)
    p.add_argument("--retry-cap-ms", type=int, default=SandboxConfig.retry_cap_ms)
    p.add_argument("--duplicate", action="store_true", help="deliver every event twice")
    p.add_argument("--reorder", action="store_true", help="hold each payment's first event until the next")
    p.add_argument("--reorder-hold-ms", type=int, default=SandboxConfig.reorder_hold_ms)
    p.add_argument("--delay-ms", type=int, default=0, help="delay every delivery")
    p.add_argument("--page-ttl-s", type=float, default=SandboxConfig.page_ttl_s,
                   help="cancel a hosted payment left unfinished this long")
    p.add_argument("--merchant-name", default=SandboxConfig.merchant_name)
    a = p.parse_args(argv)
    if not a.webhook_secret:
        p.error("the webhook secret: --webhook-secret or ECARD_WEBHOOK_SECRET")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = bind_socket(a.host, a.port)
    host, port = sock.getsockname()[:2]
    config = SandboxConfig(
        webhook_secret=a.webhook_secret, retry_attempts=a.retry_attempts, retry_base_ms=a.retry_base_ms,
        retry_cap_ms=a.retry_cap_ms, duplicate=a.duplicate, reorder=a.reorder,
        reorder_hold_ms=a.reorder_hold_ms, delay_ms=a.delay_ms, public_url=a.public_url or f"http://{host}:{port}",
        merchant_name=a.merchant_name, page_ttl_s=a.page_ttl_s,
        sweep_interval_s=min(SandboxConfig.sweep_interval_s, max(0.05, a.page_ttl_s / 4)),
    )
    print(f"sandbox acquirer listening on http://{host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="on"))
    # On SIGINT or SIGTERM uvicorn shuts down, then raises the signal again: SIGTERM ends the
    # process quietly, SIGINT comes back here as KeyboardInterrupt (uvicorn.run ignores it too).
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0


def bind_socket(host: str, port: int):
    """A listening socket (port 0: a free one), so the real port can be printed before serving."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    raise SystemExit(main())
