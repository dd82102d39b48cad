"""The parents' side of card payments: top-ups through the acquirer's hosted page, saved
cards and auto top-up rules. Every endpoint needs a parent's bearer token.

  POST   /children/{account_id}/topups               {amount_kopecks, return_url, save_card?}
                                                      header Idempotency-Key -> 201 {payment_id, confirmation_url}
  GET    /children/{account_id}/topups/{payment_id}  one of the parent's payments (for the return page)
  GET    /children/{account_id}/auto-topup           the pupil's rule
  PUT    /children/{account_id}/auto-topup           {saved_card_id, amount_kopecks, threshold_kopecks | schedule_weekday}
  DELETE /children/{account_id}/auto-topup           switch it off
  GET    /saved-cards                                 the parent's saved cards (last 4 digits)
  DELETE /saved-cards/{saved_card_id}                 revoke one (its auto top-ups stop)

The bearer token is the parents' API's (parent_sessions, stored as SHA-256) and the rule is
the parents' API's: an unknown, expired or revoked token, or a contact with no active
representative, is 401; a pupil who is not among the contact's active representatives'
children is 404, the same answer as an account that does not exist. A saved card belongs
to the representative row it was saved under; a contact uses the cards of all its active
rows, and another parent's card is 404.

ecard never receives a card number: the parent types it on the acquirer's page
(``confirmation_url``), which sends the browser back to ``return_url`` (one of
``PaymentsSettings.return_origins``: no open redirect). Nothing here accepts one either: a
request body with any field not listed below (card details included) is refused, 400.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from litestar import Response

from storage import card_payments, parents

from .acquirer import AcquirerError
from .webhook import (BIGINT_MAX, IDEMPOTENCY_KEY_CHARS_MAX, PAYMENT_ID_CHARS_MAX, TOPUP_KOPECKS_MAX, PaymentsService,
                      reply)

log = logging.getLogger("ecard.payments.topups")

# A parents' API token is 43 characters (32 bytes, URL-safe base64); anything much longer is not one.
BEARER_TOKEN_CHARS_MAX = 512
RETURN_URL_CHARS_MAX = 2_000
HOUR_MS = 3_600_000
# What a parent learns of a failed or canceled payment: the reason's kind, not the bank's
# decline code (insufficient_funds vs card_declined would tell a card tester more).
FAILURES = {"canceled_by_payer": "canceled", "expired": "expired", "authentication_failed": "authentication_failed"}


class TopupRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_kopecks: int
    return_url: str
    save_card: bool = False
    sandbox_test: dict[str, Any] | None = None  # passed to the sandbox when allowed (tests)


class AutoTopupRequest(msgspec.Struct, forbid_unknown_fields=True):
    saved_card_id: int
    amount_kopecks: int
    threshold_kopecks: int | None = None
    schedule_weekday: int | None = None  # 0 Monday .. 6 Sunday


@dataclass(frozen=True)
class Parent:
    """The caller behind a bearer token: its contact and active representative ids."""

    contact: str
    representative_ids: list[int]

    @property
    def actor(self) -> str:
        return f"parent:{self.contact}"


def _unauthorized(message: str) -> Response:
    return Response({"code": "unauthorized", "message": message}, status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="ecard"'})


def _no_child(account_id: int) -> Response:
    # One answer for "no such account" and "not your child": ids cannot be probed.
    return reply(404, code="unknown_account", message=f"no pupil {account_id} among your children")


def origin(url: str) -> str | None:
    """``scheme://host:port`` of an absolute http(s) URL, lower-case, with the default port
    made explicit; None for anything else (relative, user info, backslashes, spaces, control
    characters, non-ASCII), so the comparison with the allow-list cannot be fooled."""
    if not url or len(url) > RETURN_URL_CHARS_MAX or not url.isascii() or not url.isprintable():
        return None
    if any(c in url for c in " \\\t\r\n"):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or (443 if scheme == 'https' else 80)}"


def return_url_allowed(url: str, allowed_origins: tuple[str, ...]) -> bool:
    """True when ``url`` is an absolute http(s) URL on one of ``allowed_origins``."""
    mine = origin(url)
    return mine is not None and any(mine == origin(allowed) for allowed in allowed_origins)


class ParentPayments:
    """The parents' endpoints' logic over a PaymentsService (pool, acquirer, settings)."""

    def __init__(self, service: PaymentsService) -> None:
        self.service = service
        self.settings = service.settings

    # ------------------------------------------------------------------ who asks

    async def authenticate(self, authorization: str | None) -> Parent | Response:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("missing bearer token: send 'Authorization: Bearer <token>' (the parents' API token)")
        if len(token) > BEARER_TOKEN_CHARS_MAX:
            return _unauthorized("unknown, expired or revoked token")
        pool = await self.service.pool()
        row = await parents.session(pool, hashlib.sha256(token.encode()).digest())
        if row is None or row["revoked_at_ms"] is not None or row["expires_at_ms"] <= self.settings.clock():
            return _unauthorized("unknown, expired or revoked token")
        reps = await parents.active_representatives(pool, row["contact"])
        if not reps:
            return _unauthorized("no active representative has this contact (suspended or removed)")
        return Parent(row["contact"], [r["id"] for r in reps])

    @staticmethod
    async def own_child(conn: asyncpg.Connection, parent: Parent, account_id: int) -> tuple[Any, int] | Response:
        """(pupil row, the representative id covering it) or 404."""
        if not 0 < account_id <= BIGINT_MAX:  # no such id can exist (and asyncpg could not send it)
            return _no_child(account_id)
        pupil = await parents.child(conn, parent.contact, account_id)
        if pupil is None:
            return _no_child(account_id)
        reps = await card_payments.representatives_of_child(conn, parent.representative_ids, account_id)
        if not reps:  # a representative changed between the two reads
            return _no_child(account_id)
        return pupil, reps[0]

    @staticmethod
    def _acquirer_error(exc: AcquirerError) -> Response:
        if exc.retryable:
            log.error("acquirer unavailable: %s", exc, exc_info=exc)
            return reply(502, code="acquirer_unavailable", message="the acquirer cannot be reached; try again later")
        return reply(409 if exc.status == 409 else 400, code=exc.code or "acquirer_refused", message=str(exc))

    # ------------------------------------------------------------------ top-ups

    async def start_topup(self, authorization: str | None, account_id: int, body: bytes,
                          idempotency_key: str | None) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        if not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_CHARS_MAX:
            return reply(400, code="idempotency_key_required",
                         message=f"Idempotency-Key header (1..{IDEMPOTENCY_KEY_CHARS_MAX} characters) is required")
        try:
            req = msgspec.json.decode(body, type=TopupRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return reply(400, code="invalid_request", message=str(exc))
        if not 0 < req.amount_kopecks <= TOPUP_KOPECKS_MAX:
            return reply(400, code="invalid_amount", message=f"amount_kopecks must be 1..{TOPUP_KOPECKS_MAX}")
        if not return_url_allowed(req.return_url, self.settings.return_origins):
            return reply(422, code="return_url_not_allowed",
                         message="return_url must be an absolute http(s) URL on one of: "
                                 + ", ".join(self.settings.return_origins))
        pool = await self.service.pool()
        async with pool.acquire() as conn:
            found = await self.own_child(conn, parent, account_id)
            if isinstance(found, Response):
                return found
            pupil, representative_id = found
            if pupil["account_status"] != 0:
                return reply(409, code="account_blocked", message="the account is blocked")
            now = self.settings.clock()
            started = await card_payments.manual_topups_since(conn, parent.representative_ids, now - HOUR_MS)
            if started >= self.settings.topups_per_hour_max:
                return Response({"code": "too_many_topups",
                                 "message": f"at most {self.settings.topups_per_hour_max} top-ups per hour; try later"},
                                status_code=429, headers={"Retry-After": "600"})
            extra: dict[str, Any] = {}
            if req.sandbox_test and self.settings.allow_sandbox_test_options:
                extra["test"] = req.sandbox_test
            try:
                payment = await self.service.acquirer.create_payment(
                    account_ref=str(account_id),
                    amount_kopecks=req.amount_kopecks,
                    callback_url=self.settings.callback_url,
                    # Scoped by pupil and representative: one parent's key is never another's payment.
                    idempotency_key=f"topup:{account_id}:{representative_id}:{idempotency_key}",
                    return_url=req.return_url,
                    save_payment_method=req.save_card,
                    description=f"Пополнение лицевого счёта ученика № {account_id}",
                    metadata={"origin": "manual"},
                    **extra,
                )
            except AcquirerError as exc:
                return self._acquirer_error(exc)
            if payment.confirmation_url is None:
                log.error("acquirer answered payment %s without a confirmation_url", payment.payment_id)
                return reply(502, code="acquirer_error", message="the acquirer gave no payment page")
            status = await card_payments.record_payment(
                conn, payment.payment_id, account_id, payment.amount_kopecks, "manual", now,
                representative_id=representative_id, save_card=req.save_card,
            )
        return Response({"payment_id": payment.payment_id, "confirmation_url": payment.confirmation_url,
                         "status": status, "amount_kopecks": payment.amount_kopecks}, status_code=201)

    async def topup_status(self, authorization: str | None, account_id: int, payment_id: str) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        pool = await self.service.pool()
        async with pool.acquire() as conn:
            found = await self.own_child(conn, parent, account_id)
            if isinstance(found, Response):
                return found
            row = None
            if 0 < len(payment_id) <= PAYMENT_ID_CHARS_MAX:
                row = await card_payments.parent_payment(conn, parent.representative_ids, account_id, payment_id)
        if row is None:
            return reply(404, code="unknown_payment", message=f"no payment {payment_id[:40]!r} of yours for this pupil")
        credit = {None: None, 0: "pending", 1: "applied", 2: "refused"}.get(row["command_status"], "unknown")
        failure = None
        if row["status"] in ("failed", "canceled"):
            failure = FAILURES.get(row["decline_code"] or "", "canceled" if row["status"] == "canceled" else "declined")
        return reply(200, payment_id=row["payment_id"], account_id=row["account_id"],
                     amount_kopecks=row["amount_kopecks"], status=row["status"], origin=row["origin"],
                     credit=credit, failure=failure, card_last4=row["card_last4"],
                     created_at_ms=row["created_at_ms"], updated_at_ms=row["updated_at_ms"])

    # ------------------------------------------------------------------ saved cards

    @staticmethod
    def _card(row: Any) -> dict[str, Any]:
        return {"saved_card_id": row["id"], "last4": row["last4"], "created_at_ms": row["created_at_ms"],
                "saved_for_account_id": row["account_id"]}

    async def list_cards(self, authorization: str | None) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        rows = await card_payments.saved_cards(await self.service.pool(), parent.representative_ids)
        return reply(200, cards=[self._card(r) for r in rows])

    async def revoke_card(self, authorization: str | None, card_id: int) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        pool = await self.service.pool()
        async with pool.acquire() as conn, conn.transaction():
            row = None
            if 0 < card_id <= BIGINT_MAX:
                row = await card_payments.saved_card(conn, parent.representative_ids, card_id)
            if row is None:
                return reply(404, code="unknown_card", message=f"no saved card {card_id} of yours")
            now = self.settings.clock()
            stopped = await card_payments.revoke_card(conn, card_id, now)
            await card_payments.audit(conn, parent.actor, "saved_card.revoke", f"saved_card:{card_id}",
                                      {"last4": row["last4"], "auto_topups": stopped}, None, now)
        return reply(200, saved_card_id=card_id, revoked=True, auto_topups_stopped=stopped)

    # ------------------------------------------------------------------ auto top-up

    @staticmethod
    def _rule(account_id: int, row: Any, parent: Parent) -> dict[str, Any]:
        if row is None:
            return {"account_id": account_id, "active": False, "amount_kopecks": None, "threshold_kopecks": None,
                    "schedule_weekday": None, "card": None, "own_card": False, "updated_at_ms": None}
        own = row["card_owner_id"] in parent.representative_ids
        return {"account_id": account_id, "active": row["active"], "amount_kopecks": row["amount_kopecks"],
                "threshold_kopecks": row["threshold_kopecks"], "schedule_weekday": row["schedule_weekday"],
                # Another representative's card (a grandmother's) is not shown, only that there is one.
                "card": {"saved_card_id": row["saved_card_id"], "last4": row["last4"]} if own else None,
                "own_card": own, "updated_at_ms": row["updated_at_ms"]}

    async def get_auto_topup(self, authorization: str | None, account_id: int) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        pool = await self.service.pool()
        async with pool.acquire() as conn:
            found = await self.own_child(conn, parent, account_id)
            if isinstance(found, Response):
                return found
            row = await card_payments.auto_topup(conn, account_id)
        return reply(200, **self._rule(account_id, row, parent))

    async def set_auto_topup(self, authorization: str | None, account_id: int, body: bytes) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        try:
            req = msgspec.json.decode(body, type=AutoTopupRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return reply(400, code="invalid_request", message=str(exc))
        if not 0 < req.amount_kopecks <= TOPUP_KOPECKS_MAX:
            return reply(400, code="invalid_amount", message=f"amount_kopecks must be 1..{TOPUP_KOPECKS_MAX}")
        if req.threshold_kopecks is None and req.schedule_weekday is None:
            return reply(400, code="invalid_request", message="give threshold_kopecks and/or schedule_weekday")
        if req.schedule_weekday is not None and not 0 <= req.schedule_weekday <= 6:
            return reply(400, code="invalid_request", message="schedule_weekday is 0 (Monday)..6")
        if req.threshold_kopecks is not None and not 0 <= req.threshold_kopecks <= BIGINT_MAX:
            return reply(400, code="invalid_request", message=f"threshold_kopecks must be 0..{BIGINT_MAX}")
        pool = await self.service.pool()
        async with pool.acquire() as conn, conn.transaction():
            found = await self.own_child(conn, parent, account_id)
            if isinstance(found, Response):
                return found
            _, representative_id = found
            card = None
            if 0 < req.saved_card_id <= BIGINT_MAX:
                card = await card_payments.saved_card(conn, parent.representative_ids, req.saved_card_id)
            if card is None:
                return reply(404, code="unknown_card", message=f"no saved card {req.saved_card_id} of yours")
            now = self.settings.clock()
            before = await card_payments.auto_topup(conn, account_id)
            await card_payments.set_auto_topup(conn, account_id, card["id"], req.amount_kopecks, req.threshold_kopecks,
                                               req.schedule_weekday, representative_id, now)
            after = await card_payments.auto_topup(conn, account_id)
            await card_payments.audit(conn, parent.actor, "auto_topup.set", f"account:{account_id}",
                                      _audited(before), _audited(after), now)
        return reply(200, **self._rule(account_id, after, parent))

    async def stop_auto_topup(self, authorization: str | None, account_id: int) -> Response:
        parent = await self.authenticate(authorization)
        if isinstance(parent, Response):
            return parent
        pool = await self.service.pool()
        async with pool.acquire() as conn, conn.transaction():
            found = await self.own_child(conn, parent, account_id)
            if isinstance(found, Response):
                return found
            _, representative_id = found
            now = self.settings.clock()
            before = await card_payments.auto_topup(conn, account_id)
            if await card_payments.stop_auto_topup(conn, account_id, representative_id, now):
                await card_payments.audit(conn, parent.actor, "auto_topup.stop", f"account:{account_id}",
                                          _audited(before), _audited(await card_payments.auto_topup(conn, account_id)),
                                          now)
            row = await card_payments.auto_topup(conn, account_id)
        return reply(200, **self._rule(account_id, row, parent))


def _audited(row: Any) -> dict[str, Any] | None:
    """A rule as the audit log keeps it: the card by id and last 4 digits, never its token."""
    if row is None:
        return None
    return {k: row[k] for k in ("active", "amount_kopecks", "threshold_kopecks", "schedule_weekday", "saved_card_id",
                                "last4", "set_by_representative_id")}
