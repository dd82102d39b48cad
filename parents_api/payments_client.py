"""The parents' pages ask the payments service (``payments/``, its own process) to start a card
top-up, show its outcome and manage auto top-ups, over HTTP with the parent's own bearer token:
the payments service checks the token and the child itself (the parents' API imports nothing of
payments). No card number passes here: the parent types it on the acquirer's page."""

from __future__ import annotations

from typing import Any

import httpx

# One call to the payments service (which may wait on the acquirer for a payment page).
PAYMENTS_TIMEOUT_S = 20.0


class PaymentsUnavailable(Exception):
    """The payments service is not configured or cannot be reached."""


class PaymentsClient:
    def __init__(self, base_url: str | None) -> None:
        self.base_url = base_url
        self._http = httpx.AsyncClient(base_url=base_url, timeout=PAYMENTS_TIMEOUT_S) if base_url else None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def call(self, method: str, path: str, token: str, *, json: Any = None,
                   idempotency_key: str | None = None) -> tuple[int, dict[str, Any]]:
        """(status, body) of one call; PaymentsUnavailable when there is no service to call."""
        if self._http is None:
            raise PaymentsUnavailable("no payments service configured")
        headers = {"authorization": f"Bearer {token}"}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        try:
            reply = await self._http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise PaymentsUnavailable(str(exc)) from exc
        try:
            body = reply.json()
        except ValueError:
            body = {}
        return reply.status_code, body if isinstance(body, dict) else {}
