"""Commands and changes from PostgreSQL into the state machine.

One dedicated connection LISTENs on two channels:
- ``ecard_commands``: money commands (storage.commands). Each pending command is
  read (with what a refund needs: its original purchase and what was refunded of
  it), then decided by the pure ``authorize_command``, committed to the cache and
  appended to the journal with its result, synchronously, like a tap. The journal
  writer stores the result in the same transaction and NOTIFYs the waiter.
- ``ecard_changes``: reference data (storage.changes): the named entity is reloaded
  into the cache (cards, accounts and controls, devices, school reference data).

Notifications sent while this connection was down are lost, so after every
(re)connect the reference data is reloaded whole and the pending commands are
read again; a poll every ``commands_poll_interval_ms`` covers anything missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Awaitable, Callable

import asyncpg
import msgspec

from storage import changes, commands as command_store, snapshot

from .authorizer import COMMAND_KINDS, OK, Original, authorize_command, commit
from .outbox import low_balance_outbox
from .reference import (
    apply_account,
    apply_device,
    apply_identifier,
    apply_preorders,
    apply_pupil,
    apply_school_reference,
    controls_from_row,
    load_reference,
)
from .server import GatewayCore

log = logging.getLogger("ecard.commands")

# Commands read per round trip: a burst of top-ups is taken in a few rounds.
COMMANDS_PER_READ_MAX = 500
# Change notifications buffered between two reload rounds; beyond it we reload all.
CHANGES_QUEUE_MAX = 10_000
_encode = msgspec.json.Encoder().encode


class CommandProcessor:
    def __init__(
        self,
        core: GatewayCore,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        poll_interval_ms: int,
        amount_kopecks_max: int,
        retry_backoff_ms_max: int,
    ) -> None:
        self.core = core
        self._connect = connect
        self._poll_interval_s = poll_interval_ms / 1000
        self._amount_kopecks_max = amount_kopecks_max
        self._backoff_s_max = retry_backoff_ms_max / 1000
        self._wake = asyncio.Event()
        self._changes: deque[str] = deque()
        self._changes_overflow = False
        self._refunds_in_flight: dict[int, tuple[tuple[int, int], int]] = {}  # seq -> (original, amount)
        self.connected = False
        self.commands_applied = 0

    def _on_command(self, _conn, _pid, _channel, _payload: str) -> None:
        self._wake.set()

    def _on_change(self, _conn, _pid, _channel, payload: str) -> None:
        if len(self._changes) >= CHANGES_QUEUE_MAX:
            self._changes_overflow = True
        else:
            self._changes.append(payload)
        self._wake.set()

    async def run(self) -> None:
        backoff_s = 0.05
        first = True
        while True:
            conn = None
            try:
                conn = await self._connect()
                await conn.add_listener(command_store.COMMANDS_CHANNEL, self._on_command)
                await conn.add_listener(changes.CHANGES_CHANNEL, self._on_change)
                self.connected = True
                if not first:
                    await self._reload_all(conn)  # what changed while we were away
                first = False
                backoff_s = 0.05
                while True:
                    self._wake.clear()
                    await self._apply_changes(conn)
                    await self._process_commands(conn)
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
                    except TimeoutError:
                        pass
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("command/change listener: %s: %s; reconnecting", type(exc).__name__, exc)
            finally:
                self.connected = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._backoff_s_max)

    # ---------------------------------------------------------------- reference data

    async def _reload_all(self, conn: asyncpg.Connection) -> None:
        cache = self.core.cache
        self._changes.clear()
        self._changes_overflow = False
        async for chunk in snapshot.identifiers(conn):
            for identifier, account_id, _status in chunk:
                cache.identifiers[bytes(identifier)] = account_id
        cache.identifier_state.clear()
        async for chunk in snapshot.accounts(conn):
            for row in chunk:
                apply_account(cache, row)
        cache.controls.clear()
        await load_reference(conn, cache, self.core.clock_ms())

    async def _apply_changes(self, conn: asyncpg.Connection) -> None:
        if self._changes_overflow:
            log.warning("more than %d reference changes at once: reloading all", CHANGES_QUEUE_MAX)
            await self._reload_all(conn)
            return
        cache = self.core.cache
        while self._changes:
            entity, _, key = self._changes.popleft().partition(":")
            if entity == "identifier":
                identifier = bytes.fromhex(key)
                apply_identifier(cache, identifier, await snapshot.identifier(conn, identifier))
            elif entity == "account":
                account_id = int(key)
                row = await snapshot.account(conn, account_id)
                if row is not None:
                    apply_account(cache, row)
                    pupil = await snapshot.pupil(conn, account_id)
                    if pupil is not None:
                        apply_pupil(cache, pupil)
                    apply_preorders(cache, await snapshot.preorders(conn, account_id), account_id)
                    rows = await snapshot.controls(conn, account_id)
                    previous = cache.controls.pop(account_id, None)
                    if rows:
                        fresh = controls_from_row(rows[0])
                        if previous is not None:  # today's counters stay
                            fresh.day = previous.day
                            fresh.items_today = previous.items_today
                            fresh.period_spent_kopecks = previous.period_spent_kopecks
                        cache.controls[account_id] = fresh
            elif entity == "device":
                device_id = int(key)
                apply_device(cache, device_id, await snapshot.device(conn, device_id))
            elif entity == "school":
                school_id = int(key)
                apply_school_reference(cache, await snapshot.school_reference(conn, school_id), school_id)
            else:
                log.warning("unknown change notification %r", entity)

    # ---------------------------------------------------------------- money commands

    async def _process_commands(self, conn: asyncpg.Connection) -> None:
        core = self.core
        in_flight = core.commands_in_flight
        # Seqs committed before this read began: the read cannot see them pending, so
        # they may leave the in-flight set once it has returned (not before: a read that
        # began before their COMMIT would still see them pending and apply them twice).
        committed, core.commands_committed = core.commands_committed, set()
        rows = await conn.fetch(
            "SELECT seq, kind, payload::text FROM commands WHERE status = 0 ORDER BY seq LIMIT $1",
            COMMANDS_PER_READ_MAX,
        )
        in_flight.difference_update(committed)
        for seq in committed:
            self._refunds_in_flight.pop(seq, None)
        for seq, kind, payload_json in rows:
            if seq in in_flight:
                continue
            if not core.journal.has_room():
                return  # stays pending; taken again when the journal has drained
            try:
                payload = msgspec.json.decode(payload_json)
                if type(payload) is not dict or kind not in COMMAND_KINDS:
                    raise ValueError("not a command")
            except (msgspec.DecodeError, ValueError):
                self._finish(seq, kind, None, {"reason": "MALFORMED", "detail": "unknown kind or payload"})
                continue
            original = await self._original(conn, payload) if kind == "refund" else None
            # From here to the journal append: no await (the decision is atomic).
            verdict = authorize_command(core.cache, kind, payload, original, self._amount_kopecks_max)
            if verdict.reason == OK and kind == "refund":
                key = (payload["device_id"], payload["device_txn"])
                self._refunds_in_flight[seq] = (key, verdict.amount_kopecks)
            self._finish(seq, kind, verdict, None)

    async def _original(self, conn: asyncpg.Connection, payload: dict) -> Original | None:
        device_id, device_txn = payload.get("device_id"), payload.get("device_txn")
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
        # Durable refunds of that purchase, except those still counted in flight here
        # (one may commit between two reads: it must be counted once, not twice).
        in_flight = [seq for seq, (key, _) in self._refunds_in_flight.items() if key == (device_id, device_txn)]
        refunded = await conn.fetchval(
            "SELECT coalesce(sum((result->>'amount_kopecks')::bigint), 0)::bigint FROM commands"
            " WHERE kind = 'refund' AND status = 1 AND payload->>'device_id' = $1 AND payload->>'device_txn' = $2"
            " AND seq <> ALL($3::bigint[])",
            str(device_id),
            str(device_txn),
            in_flight,
        )
        pending = sum(self._refunds_in_flight[seq][1] for seq in in_flight)
        return Original(row[0], row[1], row[2], row[3], row[4], refunded + pending)

    def _finish(self, seq: int, kind: str, verdict, refusal: dict | None) -> None:
        core = self.core
        now_ms = core.clock_ms()
        now_ns = time.perf_counter_ns()
        core.commands_in_flight.add(seq)
        if verdict is None or verdict.reason != OK:
            if verdict is not None:
                from protocol import DenyReason

                refusal = {"reason": DenyReason(verdict.reason).name, "params": list(verdict.params)}
                core.metrics.decisions[verdict.kind][verdict.reason] += 1
            result = _encode(refusal).decode()
            core.journal.append((None, None, 0, None, 0, now_ns, (("command", seq, 2, result, now_ms),)))
            return
        debit_after, credit_after, alert = commit(core.cache, verdict, now_ms)
        balances = {str(verdict.debit_account_id): debit_after, str(verdict.credit_account_id): credit_after}
        result = _encode(
            {
                "reason": "OK",
                "amount_kopecks": verdict.amount_kopecks,
                "balances": balances,
                "journal": {"device_id": 0, "device_txn": seq},
            }
        ).decode()
        account_id = verdict.account_id
        row = (
            0,
            seq,
            verdict.kind,
            account_id,
            b"",
            None,
            verdict.debit_account_id,
            verdict.credit_account_id,
            verdict.amount_kopecks,
            core.cache.accounts.balance[account_id],
            False,
            now_ms,
            now_ms,
            None,
            None,
        )
        extras: tuple = (("command", seq, 1, result, now_ms),)
        if alert:
            extras += (low_balance_outbox(core.cache, alert, now_ms),)
        core.journal.append(
            (row, verdict.debit_account_id, debit_after, verdict.credit_account_id, credit_after, now_ns, extras)
        )
        core.metrics.decisions[verdict.kind][OK] += 1
        self.commands_applied += 1
