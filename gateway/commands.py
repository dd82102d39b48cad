"""Commands and changes from PostgreSQL into the ledger machine.

One dedicated connection LISTENs on two channels:
- ``ecard_commands``: money commands (storage.commands). Each pending command is
  read (with what a refund needs: its original purchase and what was refunded of
  it), then handed to ``Machine.command``, which decides it, applies it and
  journals it with its result, synchronously, like a tap. The journal writer
  stores the result in the same transaction and NOTIFYs the waiter.
- ``ecard_changes``: reference data (storage.changes): the named entity is reloaded
  into the state (cards, accounts and controls, devices, school reference data).

Notifications sent while this connection was down are lost, so after every
(re)connect the reference data is reloaded whole and the pending commands are
read again; a poll every ``commands_poll_interval_ms`` covers anything missed.
This module holds no SQL: storage owns its tables.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Awaitable, Callable

import asyncpg


from ledger.rules import Original
from ledger.state import controls_from_row
from storage import changes, commands as command_store, devices as device_store, snapshot

from .reference import apply_identifier, device_state, reload_all
from .server import GatewayCore

log = logging.getLogger("ecard.commands")

# Change notifications buffered between two reload rounds; beyond it we reload all.
CHANGES_QUEUE_MAX = 10_000


class CommandProcessor:
    def __init__(
        self,
        core: GatewayCore,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        poll_interval_ms: int,
        retry_backoff_ms_max: int,
    ) -> None:
        self.core = core
        self._connect = connect
        self._poll_interval_s = poll_interval_ms / 1000
        self._backoff_s_max = retry_backoff_ms_max / 1000
        self._wake = asyncio.Event()
        self._changes: deque[str] = deque()
        self._changes_overflow = False
        # Commands decided and appended to the journal, not yet known durable: a read
        # of pending commands may still return them and they must not be decided twice.
        self._in_flight: set[int] = set()
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
        self._changes.clear()
        self._changes_overflow = False
        await reload_all(conn, self.core.state)

    async def _apply_changes(self, conn: asyncpg.Connection) -> None:
        if self._changes_overflow:
            log.warning("more than %d reference changes at once: reloading all", CHANGES_QUEUE_MAX)
            await self._reload_all(conn)
            return
        state = self.core.state
        while self._changes:
            entity, _, key = self._changes.popleft().partition(":")
            if entity == "identifier":
                identifier = bytes.fromhex(key)
                apply_identifier(state, identifier, await snapshot.identifier(conn, identifier))
            elif entity == "account":
                account_id = int(key)
                row = await snapshot.account(conn, account_id)
                if row is not None:
                    state.apply_account(row)
                    pupil = await snapshot.pupil(conn, account_id)
                    if pupil is not None:
                        state.apply_pupil(pupil)
                    state.apply_preorders(await snapshot.preorders(conn, account_id), account_id)
                    rows = await snapshot.controls(conn, account_id)
                    if rows:
                        state.controls[account_id] = controls_from_row(rows[0])
                    else:
                        state.controls.pop(account_id, None)
            elif entity == "device":
                device_id = int(key)
                self._apply_device(device_id, await device_store.device(conn, device_id))
            elif entity == "school":
                school_id = int(key)
                state.apply_school_reference(await snapshot.school_reference(conn, school_id), school_id)
            elif entity == "representative":
                representative_id = int(key)
                state.apply_escorts(await snapshot.escorts(conn, representative_id), representative_id)
            else:
                log.warning("unknown change notification %r", entity)

    def _apply_device(self, device_id: int, row) -> None:
        core = self.core
        devices = core.state.devices
        existing = devices.get(device_id)
        session = core.sessions.of_device(device_id)
        allowances = core.state.allowances
        if allowances is not None and (row is None or row["revoked"]):
            allowances.till_gone(device_id)  # it can never replay: nothing it holds stays reserved
        if row is None:
            if existing is not None:
                devices.pop(device_id)
                if session is not None:
                    session.close("device removed")
            return
        if existing is None:
            devices[device_id] = device_state(row)
            return
        fresh = device_state(row)
        if existing.school_id != row["school_id"] and session is not None:
            core.sessions.moved_school(session, existing.school_id, row["school_id"])
        changed_kind = existing.kind != fresh.kind
        existing.school_id = fresh.school_id
        existing.kind = fresh.kind
        existing.key = fresh.key
        existing.next_key = fresh.next_key
        existing.revoked = fresh.revoked
        existing.drawer_account_id = fresh.drawer_account_id
        if session is None:
            return
        if fresh.revoked:
            session.close("device revoked")  # cut off at once; its HELLOs are refused from now on
        elif changed_kind or session.key not in (fresh.key, fresh.next_key):
            # Its session key was retired (a rotation promoted or dropped) or its kind changed:
            # it must authenticate again. A session under a key that stays valid goes on
            # (a rotation without downtime).
            session.close("device key retired or kind changed")

    # ---------------------------------------------------------------- money commands

    async def _process_commands(self, conn: asyncpg.Connection) -> None:
        core = self.core
        in_flight = self._in_flight
        # Seqs committed before this read began: the read cannot see them pending, so
        # they may leave the in-flight set once it has returned (not before: a read that
        # began before their COMMIT would still see them pending and apply them twice).
        committed, core.commands_committed = core.commands_committed, set()
        rows = await command_store.pending(conn)
        in_flight.difference_update(committed)
        for seq in committed:
            self._refunds_in_flight.pop(seq, None)
        machine = core.machine
        for seq, kind, payload in rows:
            if seq in in_flight:
                continue
            if not core.journal.has_room():
                return  # stays pending; taken again when the journal has drained
            original = await self._original(conn, payload) if kind == "refund" and type(payload) is dict else None
            # From here to the journal append: no await (the decision is atomic).
            result = machine.command(seq, kind, payload, original, core.clock_ms(), time.perf_counter_ns())
            in_flight.add(seq)
            if machine.mode_changes:
                core.send_mode_changes()  # a school officer raised or reset a fire alarm
            if result.status == command_store.STATUS_APPLIED:
                self.commands_applied += 1
                if kind == "refund":
                    key = (payload["device_id"], payload["device_txn"])
                    self._refunds_in_flight[seq] = (key, result.result["amount_kopecks"])

    async def _original(self, conn: asyncpg.Connection, payload: dict) -> Original | None:
        device_id, device_txn = payload.get("device_id"), payload.get("device_txn")
        # Refunds of that purchase still in flight here are counted from memory, not
        # from the table (one may commit between two reads: counted once, not twice).
        in_flight = [seq for seq, (key, _) in self._refunds_in_flight.items() if key == (device_id, device_txn)]
        found = await command_store.original_purchase(conn, device_id, device_txn, in_flight)
        if found is None:
            return None
        (kind, account_id, debit, credit, amount), refunded = found
        pending = sum(self._refunds_in_flight[seq][1] for seq in in_flight)
        return Original(kind, account_id, debit, credit, amount, refunded + pending)



