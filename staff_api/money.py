"""Money: transfers between siblings, till refunds, operator corrections, cash at the office desk.

Balances never change here: each request becomes a command (storage.commands)
that the gateway's state machine decides and journals. The command row and its
audit row are written in one transaction; the gateway is woken at COMMIT; then
the request waits (bounded) for the result: 200 applied, 409 refused, 202 pending.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Controller, Response, post
from litestar.params import HeaderParameter, JSONBody

from storage import commands

from . import db
from .auth import Principal, PrincipalDep
from .errors import Conflict, answers, error_item, invalid, refuse
from .refusals import Refusal
from .schemas import CashTopupBody, CommandOut, CorrectionBody, RefundBody, TransferBody

IDEMPOTENCY_KEY_CHARS_MAX = 200
KEY_PREFIX = "staff:"  # the staff API's keys never meet the acquirer's payment ids
DEVICE_TILL = 2
CASH_TAKERS = ("operator", "cashier")  # who takes cash at the office desk
STATUS_NAMES = {commands.STATUS_PENDING: "pending", commands.STATUS_APPLIED: "applied",
                commands.STATUS_REFUSED: "refused"}
HTTP_STATUS = {commands.STATUS_PENDING: 202, commands.STATUS_APPLIED: 200, commands.STATUS_REFUSED: 409}

IdempotencyHeader = HeaderParameter(
    name="Idempotency-Key", default=None, required=False,
    description="required: a retry with the same key returns the first result",
)


def _key(header: str | None) -> str:
    if header is None or not header.strip():
        raise invalid("Idempotency-Key", Refusal.IDEMPOTENCY_KEY_REQUIRED, source="header",
                      errors=[{**error_item("Idempotency-Key", Refusal.IDEMPOTENCY_KEY_REQUIRED, source="header"),
                               "message": "header required"}])
    if len(header) > IDEMPOTENCY_KEY_CHARS_MAX:
        raise invalid("Idempotency-Key", Refusal.TOO_LONG_CHARS, chars_max=IDEMPOTENCY_KEY_CHARS_MAX)
    return KEY_PREFIX + header.strip()


async def run_command(
    pool: asyncpg.Pool, principal: Principal, key: str, kind: str, payload: dict[str, Any],
    now_ms: int, wait_ms: int, audit_action: str | None = None,
) -> Response[CommandOut]:
    """Queue a command for the gateway (once per key), audit it, wait (bounded) for its
    result: 200 applied, 409 refused, 202 still pending."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            # One request per key at a time, so only the first is audited.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ecard-command:' || $1))", key)
            existed = await conn.fetchval("SELECT seq FROM commands WHERE idempotency_key = $1", key)
            try:
                queued = await commands.submit(conn, key, kind, payload, principal.login, wait_ms=0)
            except commands.IdempotencyConflict as exc:
                raise refuse(Conflict, Refusal.IDEMPOTENCY_CONFLICT, reason=str(exc)) from None
            if existed is None:
                await db.audit(conn, principal.login, audit_action or f"money.{kind}", f"command:{queued.seq}", None,
                               {"kind": kind, "payload": payload, "idempotency_key": key}, now_ms)
        result = await commands.wait_result(conn, queued.seq, wait_ms)
    body = CommandOut(
        seq=result.seq,
        status=STATUS_NAMES[result.status],  # type: ignore[arg-type]
        reason=None if result.result is None else result.result.get("reason"),
        result=result.result,
    )
    return Response(body, status_code=HTTP_STATUS[result.status])


async def _pupil(conn: asyncpg.Connection, principal: Principal, account_id: int, field: str) -> asyncpg.Record:
    """The pupil's row; another school's pupil is refused as an account that is no pupil's."""
    row = await conn.fetchrow("SELECT account_id, school_id, family_id FROM pupils WHERE account_id = $1", account_id)
    refusal = invalid(field, Refusal.NOT_A_PUPILS_ACCOUNT, account_id=account_id)
    if row is None:
        raise refusal
    principal.require_own(row["school_id"], refusal)
    return row


class MoneyController(Controller):
    path = "/money"
    tags = ["money"]

    @post("/transfers", status_code=200, opt=answers(202, 409, required_headers=("Idempotency-Key",)))
    async def transfer(
        self, data: JSONBody[TransferBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs, command_wait_ms: db.CommandWaitMs,
        idempotency_key: str | None = IdempotencyHeader,
    ) -> Response[CommandOut]:
        """Move money between two pupils of one family (pupils.family_id equal)."""
        key = _key(idempotency_key)
        principal.require("operator", "officer", action="transfer money")
        if data.from_account_id == data.to_account_id:
            raise invalid("to_account_id", Refusal.TRANSFER_SAME_ACCOUNT)
        async with pool.acquire() as conn:
            src = await _pupil(conn, principal, data.from_account_id, "from_account_id")
            dst = await _pupil(conn, principal, data.to_account_id, "to_account_id")
        if src["family_id"] is None or src["family_id"] != dst["family_id"]:
            raise invalid("to_account_id", Refusal.TRANSFER_OTHER_FAMILY)
        return await run_command(pool, principal, key, "transfer", {
            "from_account_id": data.from_account_id, "to_account_id": data.to_account_id,
            "amount_kopecks": data.amount_kopecks}, now_ms, command_wait_ms)

    @post("/refunds", status_code=200, opt=answers(202, 409, required_headers=("Idempotency-Key",)))
    async def refund(
        self, data: JSONBody[RefundBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs, command_wait_ms: db.CommandWaitMs,
        idempotency_key: str | None = IdempotencyHeader,
    ) -> Response[CommandOut]:
        """Reverse a till purchase, whole (amount_kopecks null) or in part."""
        key = _key(idempotency_key)
        principal.require("operator", "officer", "cashier", action="refund purchases")
        device = await pool.fetchrow("SELECT school_id, kind FROM devices WHERE id = $1", data.device_id)
        refusal = invalid("device_id", Refusal.DEVICE_NOT_A_TILL, device_id=data.device_id)
        if device is None or device["kind"] != DEVICE_TILL:
            raise refusal
        principal.require_own(device["school_id"], refusal)  # another school's till: as no till
        return await run_command(pool, principal, key, "refund", {
            "device_id": data.device_id, "device_txn": data.device_txn,
            "amount_kopecks": data.amount_kopecks}, now_ms, command_wait_ms)

    @post("/corrections", status_code=200, opt=answers(202, 409, required_headers=("Idempotency-Key",)))
    async def correction(
        self, data: JSONBody[CorrectionBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs, command_wait_ms: db.CommandWaitMs,
        idempotency_key: str | None = IdempotencyHeader,
    ) -> Response[CommandOut]:
        """Operator correction of an account (signed amount, with a reason)."""
        key = _key(idempotency_key)
        principal.require("operator", action="correct balances")
        if data.amount_kopecks == 0:
            raise invalid("amount_kopecks", Refusal.AMOUNT_ZERO)
        if await pool.fetchval("SELECT id FROM accounts WHERE id = $1", data.account_id) is None:
            raise invalid("account_id", Refusal.NO_ACCOUNT, account_id=data.account_id)
        return await run_command(pool, principal, key, "correction", {
            "account_id": data.account_id, "amount_kopecks": data.amount_kopecks,
            "reason": data.reason}, now_ms, command_wait_ms)

    @post("/cash-topups", status_code=200, opt=answers(202, 409, required_headers=("Idempotency-Key",)))
    async def cash_topup(
        self, data: JSONBody[CashTopupBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
        command_wait_ms: db.CommandWaitMs, idempotency_key: str | None = IdempotencyHeader,
    ) -> Response[CommandOut]:
        """Cash taken by a cashier at the school office's desk: the school's desk drawer pays the pupil
        (the same cap as a till's cash top-up). The parents are told as of cash at a till."""
        key = _key(idempotency_key)
        principal.require(*CASH_TAKERS, action="take cash top-ups")
        async with pool.acquire() as conn:
            await _pupil(conn, principal, data.account_id, "account_id")
        return await run_command(pool, principal, key, "cash_topup", {
            "account_id": data.account_id, "amount_kopecks": data.amount_kopecks}, now_ms, command_wait_ms)
