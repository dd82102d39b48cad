"""A local sandbox acquirer: a small HTTP service that behaves like a bank's test mode.

    python -m payments.sandbox --host 127.0.0.1 --port 8900 --webhook-secret S

Endpoints (JSON):
  POST /payments                 {account_ref, amount_kopecks, card_number | card_token,
                                  callback_url, metadata?, test?}   header Idempotency-Key
  POST /payments/{id}/refund     {amount_kopecks?}                  header Idempotency-Key
  GET  /payments/{id}
  POST /tokens                   {card_number} -> {token, last4}
  GET  /sandbox/deliveries       every webhook delivery attempt (for tests)
  GET  /health

Test cards: 4111111111111111 succeeds, 4000000000000002 is declined
(card_declined), 4000000000009995 is declined (insufficient_funds); any other
Luhn-valid number succeeds; a Luhn-invalid number is a 400.

Every outcome is reported to the payment's callback_url as a signed event
(payments/signing.py), retried with exponential backoff until a 2xx, at most
``retry_attempts`` times. Test knobs, global (flags) or per payment (``test``):
``duplicate`` delivers each event twice, concurrently; ``reorder`` holds the
payment's first event until the next one (a refund) is sent, or ``reorder_hold_ms``
passes, so a refund event arrives before its capture; ``delay_ms`` delays every
delivery. State lives in memory only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post

from . import signing

log = logging.getLogger("ecard.sandbox")

CARD_OK = "4111111111111111"
CARD_DECLINED = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
DECLINES = {CARD_DECLINED: "card_declined", CARD_INSUFFICIENT_FUNDS: "insufficient_funds"}
# One charge; like real acquirers' per-transaction limits (150,000 roubles).
AMOUNT_KOPECKS_MAX = 15_000_000
DELIVERY_LOG_MAX = 10_000  # the deliveries log is a ring, enough for tests and demos


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
    decline_code: str | None = None
    refunded_kopecks: int = 0
    created: int = 0
    held: dict[str, Any] | None = None  # reorder: the first event, not yet sent
    release_task: asyncio.Task | None = None

    def public(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "account_ref": self.account_ref,
            "amount_kopecks": self.amount_kopecks,
            "status": self.status,
            "decline_code": self.decline_code,
            "refunded_kopecks": self.refunded_kopecks,
            "metadata": self.metadata,
        }


def luhn_ok(number: str) -> bool:
    if not (12 <= len(number) <= 19 and number.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _error(status: int, code: str, message: str) -> Response:
    return Response({"code": code, "message": message}, status_code=status)


@dataclass
class Sandbox:
    config: SandboxConfig
    payments: dict[str, SandboxPayment] = field(default_factory=dict)
    by_key: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # idempotency key -> (id, fingerprint)
    tokens: dict[str, str] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ events

    def _option(self, payment: SandboxPayment, name: str) -> Any:
        return payment.options.get(name, getattr(self.config, name))

    def _event(self, payment: SandboxPayment, type_: str, amount: int) -> dict[str, Any]:
        return {
            "event_id": "evt_" + secrets.token_hex(10),
            "type": type_,
            "created": int(time.time()),
            "payment_id": payment.payment_id,
            "account_ref": payment.account_ref,
            "amount_kopecks": amount,
            "payment_amount_kopecks": payment.amount_kopecks,
            "decline_code": payment.decline_code,
            "metadata": payment.metadata,
        }

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

    # ------------------------------------------------------------------ API

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
        fingerprint = msgspec.json.encode({k: v for k, v in body.items() if k != "test"})
        if key in self.by_key:
            payment_id, seen = self.by_key[key]
            if seen != fingerprint:
                return _error(409, "idempotency_conflict", "Idempotency-Key reused with another request")
            return Response(self.payments[payment_id].public(), status_code=200)
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= AMOUNT_KOPECKS_MAX:
            return _error(400, "invalid_amount", f"amount_kopecks must be 1..{AMOUNT_KOPECKS_MAX}")
        if not isinstance(callback_url, str) or not callback_url.startswith(("http://", "https://")):
            return _error(400, "invalid_callback_url", "callback_url must be http(s)")
        card = body.get("card_number")
        token = body.get("card_token")
        if (card is None) == (token is None):
            return _error(400, "invalid_request", "exactly one of card_number, card_token")
        if token is not None:
            card = self.tokens.get(token)
            if card is None:
                return _error(404, "unknown_token", "no such card token")
        if not isinstance(card, str) or not luhn_ok(card):
            return _error(400, "invalid_card", "card number fails the Luhn check")
        options = body.get("test") or {}
        if not isinstance(options, dict):
            return _error(400, "invalid_request", "test must be an object")
        decline = DECLINES.get(card)
        payment = SandboxPayment(
            payment_id="pay_" + secrets.token_hex(10),
            account_ref=account_ref,
            amount_kopecks=amount,
            status="failed" if decline else "captured",
            callback_url=callback_url,
            metadata=body.get("metadata") or {},
            options=options,
            request_fingerprint=fingerprint,
            decline_code=decline,
            created=int(time.time()),
        )
        self.payments[payment.payment_id] = payment
        self.by_key[key] = (payment.payment_id, fingerprint)
        kind = "payment.failed" if decline else "payment.captured"
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
        key = request.headers.get("idempotency-key") or f"refund:{payment_id}"
        fingerprint = msgspec.json.encode({"refund": payment_id, **body})
        if key in self.by_key:
            seen_id, seen = self.by_key[key]
            if seen != fingerprint:
                return _error(409, "idempotency_conflict", "Idempotency-Key reused with another request")
            return Response(payment.public(), status_code=200)
        amount = body.get("amount_kopecks", payment.amount_kopecks)
        if payment.status != "captured":
            return _error(409, "not_refundable", f"payment is {payment.status}")
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= payment.amount_kopecks:
            return _error(400, "invalid_amount", "refund amount must be 1..payment amount")
        payment.status = "refunded"  # one refund per payment (full or partial)
        payment.refunded_kopecks = amount
        self.by_key[key] = (payment_id, fingerprint)
        self.emit(payment, self._event(payment, "payment.refunded", amount))
        return Response(payment.public(), status_code=200)

    async def save_card(self, request: Request) -> Response:
        try:
            card = msgspec.json.decode(await request.body())["card_number"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return _error(400, "invalid_request", "card_number required")
        if not isinstance(card, str) or not luhn_ok(card):
            return _error(400, "invalid_card", "card number fails the Luhn check")
        token = "tok_" + secrets.token_hex(12)
        self.tokens[token] = card
        return Response({"token": token, "last4": card[-4:]}, status_code=201)

    async def startup(self) -> None:
        self._client = httpx.AsyncClient()

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
    async def refund(payment_id: str, request: Request) -> Response:
        return await sandbox.refund(payment_id, request)

    @get("/payments/{payment_id:str}")
    async def get_payment(payment_id: str) -> Response:
        payment = sandbox.payments.get(payment_id)
        if payment is None:
            return _error(404, "unknown_payment", "no such payment")
        return Response(payment.public())

    @post("/tokens")
    async def save_card(request: Request) -> Response:
        return await sandbox.save_card(request)

    @get("/sandbox/deliveries")
    async def deliveries(payment_id: str | None = None) -> Response:
        rows = [d for d in sandbox.deliveries if payment_id is None or d["payment_id"] == payment_id]
        return Response(rows)

    @get("/health")
    async def health() -> Response:
        return Response({"ok": True})

    app = Litestar(
        route_handlers=[create_payment, refund, get_payment, save_card, deliveries, health],
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
    p.add_argument("--webhook-secret", required=True)
    p.add_argument("--retry-attempts", type=int, default=SandboxConfig.retry_attempts)
    p.add_argument("--retry-base-ms", type=int, default=SandboxConfig.retry_base_ms)
    p.add_argument("--retry-cap-ms", type=int, default=SandboxConfig.retry_cap_ms)
    p.add_argument("--duplicate", action="store_true", help="deliver every event twice")
    p.add_argument("--reorder", action="store_true", help="hold each payment's first event until the next")
    p.add_argument("--reorder-hold-ms", type=int, default=SandboxConfig.reorder_hold_ms)
    p.add_argument("--delay-ms", type=int, default=0, help="delay every delivery")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = SandboxConfig(
        webhook_secret=a.webhook_secret, retry_attempts=a.retry_attempts, retry_base_ms=a.retry_base_ms,
        retry_cap_ms=a.retry_cap_ms, duplicate=a.duplicate, reorder=a.reorder,
        reorder_hold_ms=a.reorder_hold_ms, delay_ms=a.delay_ms,
    )
    sock = bind_socket(a.host, a.port)
    host, port = sock.getsockname()[:2]
    print(f"sandbox acquirer listening on http://{host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
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
