"""The acquirer interface ecard uses, and its one implementation: a client of the
local sandbox acquirer (payments/sandbox.py) over HTTP.

ecard never sends, receives or stores a card number: a parent's payment is *hosted* (the
parent's browser goes to the acquirer's page, types the card there and comes back to
ecard's return URL), and automatic charges use the acquirer's opaque card token.

A real acquirer (bank) gets its own class with the same methods. Everything that
creates money at the acquirer carries an idempotency key, so a retry after a lost
reply never charges twice.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httpx
import msgspec

# Payment statuses at the acquirer. A hosted payment is PENDING until the payer completes
# (or cancels) the acquirer's page.
PENDING, CAPTURED, FAILED, CANCELED, REFUNDED = "pending", "captured", "failed", "canceled", "refunded"
# One HTTP call to the acquirer; beyond this the call is retried (same idempotency key).
ACQUIRER_TIMEOUT_S = 10.0
# Transport-level retries (connection refused/reset, timeout) with the same key.
ACQUIRER_RETRIES = 2
ACQUIRER_RETRY_BACKOFF_S = 0.2


class AcquirerError(Exception):
    """The acquirer refused the request (4xx) or could not be reached."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status  # HTTP status, 0 if unreachable
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status >= 500


class Payment(msgspec.Struct, frozen=True):
    payment_id: str
    status: str  # PENDING | CAPTURED | FAILED | CANCELED | REFUNDED (as the acquirer knows it now)
    amount_kopecks: int
    account_ref: str
    decline_code: str | None = None
    confirmation_url: str | None = None  # hosted payments: where to send the payer's browser


class Acquirer(Protocol):
    async def create_payment(
        self,
        *,
        account_ref: str,
        amount_kopecks: int,
        callback_url: str,
        idempotency_key: str,
        return_url: str | None = None,
        save_payment_method: bool = False,
        card_token: str | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        test: dict[str, Any] | None = None,
    ) -> Payment:
        """Start a payment: hosted (``return_url``: the payer types the card on the acquirer's
        page at ``Payment.confirmation_url`` and comes back to ``return_url``; with
        ``save_payment_method`` the capture event carries a card token) or merchant-initiated
        with a saved ``card_token``. The outcome is reported to ``callback_url`` as a signed
        event; the reply here is informative only."""
        ...

    async def refund(self, payment_id: str, amount_kopecks: int | None = None, *,
                     idempotency_key: str | None = None) -> Payment:
        """Refund a captured payment (whole amount when ``amount_kopecks`` is None)."""
        ...

    async def close(self) -> None: ...


class SandboxAcquirerClient:
    """HTTP client of the sandbox acquirer."""

    def __init__(self, base_url: str, *, timeout_s: float = ACQUIRER_TIMEOUT_S,
                 retries: int = ACQUIRER_RETRIES) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def _call(self, path: str, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        content = msgspec.json.encode(body)
        attempt = 0
        while True:
            try:
                response = await self._client.post(path, content=content, headers=headers)
            except httpx.TransportError as exc:
                # Safe to retry only because the key makes the retry a no-op at the acquirer.
                if attempt >= self.retries or idempotency_key is None:
                    raise AcquirerError(f"acquirer unreachable: {exc!r}") from exc
                attempt += 1
                await asyncio.sleep(ACQUIRER_RETRY_BACKOFF_S * attempt)
                continue
            if response.status_code >= 500 and attempt < self.retries and idempotency_key is not None:
                attempt += 1
                await asyncio.sleep(ACQUIRER_RETRY_BACKOFF_S * attempt)
                continue
            try:
                data = response.json() if response.content else {}
            except ValueError:
                data = {}
            if response.status_code >= 400:
                raise AcquirerError(
                    data.get("message", f"HTTP {response.status_code}"), response.status_code, data.get("code", "")
                )
            return data

    @staticmethod
    def _payment(data: dict[str, Any]) -> Payment:
        return Payment(data["payment_id"], data["status"], data["amount_kopecks"], data["account_ref"],
                       data.get("decline_code"), data.get("confirmation_url"))

    async def create_payment(
        self,
        *,
        account_ref: str,
        amount_kopecks: int,
        callback_url: str,
        idempotency_key: str,
        return_url: str | None = None,
        save_payment_method: bool = False,
        card_token: str | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        test: dict[str, Any] | None = None,
    ) -> Payment:
        if (return_url is None) == (card_token is None):
            raise ValueError("exactly one of return_url (hosted page) and card_token")
        body: dict[str, Any] = {
            "account_ref": account_ref,
            "amount_kopecks": amount_kopecks,
            "callback_url": callback_url,
            "metadata": metadata or {},
        }
        if description is not None:
            body["description"] = description
        if return_url is not None:
            body["confirmation"] = {"type": "redirect", "return_url": return_url}
            body["save_payment_method"] = save_payment_method
        else:
            body["card_token"] = card_token
        if test:
            body["test"] = test  # sandbox knobs: duplicate, reorder, delay_ms
        return self._payment(await self._call("/payments", body, idempotency_key))

    async def refund(self, payment_id: str, amount_kopecks: int | None = None, *,
                     idempotency_key: str | None = None) -> Payment:
        body: dict[str, Any] = {}
        if amount_kopecks is not None:
            body["amount_kopecks"] = amount_kopecks
        key = idempotency_key or f"refund:{payment_id}"
        return self._payment(await self._call(f"/payments/{payment_id}/refund", body, key))

    async def close(self) -> None:
        await self._client.aclose()
