"""The acquirer interface ecard uses, and its one implementation: a client of the
local sandbox acquirer (payments/sandbox.py) over HTTP.

A real acquirer (bank) gets its own class with the same methods. Everything that
creates money at the acquirer carries an idempotency key, so a retry after a lost
reply never charges twice.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httpx
import msgspec

# Payment statuses at the acquirer.
CAPTURED, FAILED, REFUNDED = "captured", "failed", "refunded"
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
    status: str  # CAPTURED | FAILED | REFUNDED (as the acquirer knows it now)
    amount_kopecks: int
    account_ref: str
    decline_code: str | None = None


class Acquirer(Protocol):
    async def create_payment(
        self,
        *,
        account_ref: str,
        amount_kopecks: int,
        callback_url: str,
        idempotency_key: str,
        card_number: str | None = None,
        card_token: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Payment:
        """Charge a card (details or a saved token). The acquirer reports the outcome
        to ``callback_url`` as a signed event; the reply here is informative only."""
        ...

    async def refund(self, payment_id: str, amount_kopecks: int | None = None, *,
                     idempotency_key: str | None = None) -> Payment:
        """Refund a captured payment (whole amount when ``amount_kopecks`` is None)."""
        ...

    async def save_card(self, card_number: str) -> str:
        """Store a card at the acquirer; return the token used for later charges."""
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
            data = response.json() if response.content else {}
            if response.status_code >= 400:
                raise AcquirerError(
                    data.get("message", f"HTTP {response.status_code}"), response.status_code, data.get("code", "")
                )
            return data

    @staticmethod
    def _payment(data: dict[str, Any]) -> Payment:
        return Payment(data["payment_id"], data["status"], data["amount_kopecks"], data["account_ref"],
                       data.get("decline_code"))

    async def create_payment(
        self,
        *,
        account_ref: str,
        amount_kopecks: int,
        callback_url: str,
        idempotency_key: str,
        card_number: str | None = None,
        card_token: str | None = None,
        metadata: dict[str, Any] | None = None,
        test: dict[str, Any] | None = None,
    ) -> Payment:
        if (card_number is None) == (card_token is None):
            raise ValueError("exactly one of card_number and card_token")
        body: dict[str, Any] = {
            "account_ref": account_ref,
            "amount_kopecks": amount_kopecks,
            "callback_url": callback_url,
            "metadata": metadata or {},
        }
        if card_number is not None:
            body["card_number"] = card_number
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

    async def save_card(self, card_number: str) -> str:
        data = await self._call("/tokens", {"card_number": card_number}, None)
        return data["token"]

    async def close(self) -> None:
        await self._client.aclose()
