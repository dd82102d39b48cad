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

from ledger.codes import CommandKind, CommandStatus
from ledger.records import CommandResult

COMMANDS_CHANNEL = "ecard_commands"
DONE_CHANNEL = "ecard_command_done"
COMMAND_KINDS = frozenset(CommandKind.__members__)
STATUS_PENDING, STATUS_APPLIED, STATUS_REFUSED = CommandStatus.PENDING, CommandStatus.APPLIED, CommandStatus.REFUSED
# How long a caller waits for the gateway before answering "accepted, pending":
# the command stays queued and is applied when the gateway gets to it.
COMMAND_WAIT_MS_MAX = 10_000
# Fallback poll while waiting, in case a notification is missed (reconnects).
COMMAND_POLL_INTERVAL_MS = 200


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


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
    row = await conn.fetchrow("SELECT status, result, coalesce(decided_at_ms, 0) FROM commands WHERE seq = $1", seq)
    result = msgspec.json.decode(row["result"]) if row["result"] is not None else None
    return CommandResult(seq, row["status"], result, row[2])


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


# ---------------------------------------------------------------- the gateway's side

# Commands read per round trip: a burst of top-ups is taken in a few rounds.
COMMANDS_PER_READ_MAX = 500


async def pending(conn: asyncpg.Connection, limit: int = COMMANDS_PER_READ_MAX) -> list[tuple[int, str, object]]:
    """(seq, kind, payload) of pending commands, oldest first; a payload that is not
    JSON comes back as None (the machine refuses it as malformed)."""
    rows = await conn.fetch(
        "SELECT seq, kind, payload::text FROM commands WHERE status = 0 ORDER BY seq LIMIT $1", limit
    )
    out = []
    for seq, kind, payload_json in rows:
        try:
            payload = msgspec.json.decode(payload_json)
        except msgspec.DecodeError:
            payload = None
        out.append((seq, kind, payload))
    return out


async def original_purchase(
    conn: asyncpg.Connection, device_id: object, device_txn: object, in_flight_seqs: list[int]
) -> tuple[tuple[int, int, int, int, int], int] | None:
    """The till purchase a refund names: ((kind, account, debit, credit, amount), refunded so far
    by durable refunds other than ``in_flight_seqs``), or None if there is no such row."""
    if type(device_id) is not int or type(device_txn) is not int or device_id <= 0 or device_txn <= 0:
        return None
    if device_id > 0xFFFFFFFF or device_txn >= 1 << 63:
        return None
    row = await conn.fetchrow(
        "SELECT kind, account_id, coalesce(debit_account_id, 0), coalesce(credit_account_id, 0), amount_kopecks"
        " FROM journal WHERE device_id = $1 AND device_txn = $2",
        device_id,
        device_txn,
    )
    if row is None:
        return None
    refunded = await conn.fetchval(
        "SELECT coalesce(sum((result->>'amount_kopecks')::bigint), 0)::bigint FROM commands"
        " WHERE kind = 'refund' AND status = 1 AND payload->>'device_id' = $1 AND payload->>'device_txn' = $2"
        " AND seq <> ALL($3::bigint[])",
        str(device_id),
        str(device_txn),
        in_flight_seqs,
    )
    return (row[0], row[1], row[2], row[3], row[4]), refunded
