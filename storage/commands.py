"""Money commands: how a movement that does not come from a till reaches the gateway.

The gateway's in-memory state machine is the only writer of balances. So a
bank-card top-up, a sibling transfer, a refund or a correction is INSERTed into
``commands`` with its idempotency key, and the gateway is woken with
``NOTIFY ecard_commands``. The gateway decides it with the pure authorizer,
journals it like a tap (journal.device_id = 0, device_txn = commands.seq), and
writes the command's status and result in the SAME group-commit transaction,
then ``NOTIFY ecard_command_done, '<seq>'``. The caller waits for that.

The first result for a key is kept and returned verbatim to every retry; a
retry that arrives while the first is in flight waits for it. A retry with the
same key but a different request is refused (IdempotencyConflict).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import msgspec

COMMANDS_CHANNEL = "ecard_commands"
DONE_CHANNEL = "ecard_command_done"
COMMAND_KINDS = frozenset(("bank_topup", "bank_refund", "transfer", "refund", "correction"))
STATUS_PENDING, STATUS_APPLIED, STATUS_REFUSED = 0, 1, 2
# How long a caller waits for the gateway before answering "accepted, pending":
# the command stays queued and is applied when the gateway gets to it.
COMMAND_WAIT_MS_MAX = 10_000
# Fallback poll while waiting, in case a notification is missed (reconnects).
COMMAND_POLL_INTERVAL_MS = 200


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


class CommandResult(msgspec.Struct, frozen=True):
    seq: int
    status: int  # STATUS_*
    result: dict[str, Any] | None  # {"reason": "OK" | DenyReason name, "balances": {account_id: kopecks}, ...}

    @property
    def pending(self) -> bool:
        return self.status == STATUS_PENDING


async def submit(
    conn: asyncpg.Connection,
    idempotency_key: str,
    kind: str,
    payload: dict[str, Any],
    requested_by: str,
    *,
    wait_ms: int = COMMAND_WAIT_MS_MAX,
) -> CommandResult:
    """Queue a command (once per key) and wait for the gateway's result."""
    if kind not in COMMAND_KINDS:
        raise ValueError(f"unknown command kind {kind!r}")
    payload_json = msgspec.json.encode(payload).decode()
    now_ms = time.time_ns() // 1_000_000
    row = await conn.fetchrow(
        """
        INSERT INTO commands (idempotency_key, kind, payload, requested_by, created_at_ms)
        VALUES ($1, $2, $3::jsonb, $4, $5)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING seq
        """,
        idempotency_key,
        kind,
        payload_json,
        requested_by,
        now_ms,
    )
    if row is None:
        existing = await conn.fetchrow(
            "SELECT seq, kind, payload = $2::jsonb AS same FROM commands WHERE idempotency_key = $1",
            idempotency_key,
            payload_json,
        )
        if existing["kind"] != kind or not existing["same"]:
            raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was used for another request")
        seq = existing["seq"]
    else:
        seq = row["seq"]
        await conn.execute("SELECT pg_notify($1, $2)", COMMANDS_CHANNEL, str(seq))
    return await wait_result(conn, seq, wait_ms)


async def fetch_result(conn: asyncpg.Connection, seq: int) -> CommandResult:
    row = await conn.fetchrow("SELECT status, result FROM commands WHERE seq = $1", seq)
    result = msgspec.json.decode(row["result"]) if row["result"] is not None else None
    return CommandResult(seq, row["status"], result)


async def wait_result(conn: asyncpg.Connection, seq: int, wait_ms: int) -> CommandResult:
    done = asyncio.Event()

    def on_done(_conn, _pid, _channel, payload: str) -> None:
        if str(seq) in payload.split(","):
            done.set()

    await conn.add_listener(DONE_CHANNEL, on_done)
    try:
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            result = await fetch_result(conn, seq)
            remaining = deadline - time.monotonic()
            if not result.pending or remaining <= 0:
                return result
            done.clear()
            try:
                await asyncio.wait_for(done.wait(), min(remaining, COMMAND_POLL_INTERVAL_MS / 1000))
            except TimeoutError:
                pass
    finally:
        await conn.remove_listener(DONE_CHANNEL, on_done)
