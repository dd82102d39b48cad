"""Reference data and checkpoints from PostgreSQL into the ledger state.

At start everything is read in bulk; afterwards one entity at a time when it
changes (gateway.commands). Balances and day counters come from the machine's
own checkpoints (accounts.balance_kopecks and accounts.counters, written by the
journal writer with every group commit), never rebuilt here. Reading is the
shell's job; the state changes are ``LedgerState.apply_*``.
"""

from __future__ import annotations

import time

import asyncpg

from ledger.codes import AccountKind
from ledger.machine import Machine
from ledger.state import DeviceState, LedgerState, controls_from_row
from storage import building, devices as device_store, snapshot


def device_state(row) -> DeviceState:
    """A row of storage.devices: identity, keys (current and next), revocation."""
    next_key = row["next_key"]
    return DeviceState(row["id"], row["school_id"], row["kind"], bytes(row["key"]), row["drawer_account_id"],
                       row["durable_txn"], None if next_key is None else bytes(next_key), row["revoked"])


def apply_identifier(state: LedgerState, identifier: bytes, row) -> None:
    if row is None:
        state.remove_identifier(identifier)
        return
    ident, account_id, status, expires_at_ms = row
    state.add_identifier(bytes(ident), account_id, status, expires_at_ms)


async def load_accounts(conn: asyncpg.Connection, state: LedgerState) -> None:
    """Every account with its checkpointed balance and counters.

    The school reference (policies) must be loaded first: a pupil account without a
    counters checkpoint (never moved since migration 0007) starts with its low-balance
    alert given if it is below its school's threshold, as the alert was (or is being) sent.
    """
    max_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM accounts")
    state.accounts.grow_to(max_id + 1)
    add_account = state.add_account
    restore = state.accounts.restore_counters
    decode = snapshot.decode_counters
    low_alerted = state.accounts.low_alerted
    policy = state.policy
    pupil = int(AccountKind.PUPIL)
    async for chunk in snapshot.accounts(conn):
        for row in chunk:
            add_account(row)
            if row[6] is not None:
                restore(row[0], decode(row[6]))
            elif row[1] == pupil and row[4] < policy(row[2]).low_balance_threshold_kopecks:
                low_alerted[row[0]] = 1


async def load_state(conn: asyncpg.Connection, machine: Machine) -> None:
    """Everything the machine decides against, as the last commit left it."""
    state = machine.state
    state.apply_school_reference(await snapshot.school_reference(conn))
    await load_accounts(conn, state)
    # Pair assertion: what the writer checkpointed must still be a balanced ledger.
    assert state.ledger_total() == 0, f"the ledger read back sums to {state.ledger_total()}, not 0"
    identifiers = state.identifiers
    async for chunk in snapshot.identifiers(conn):
        for identifier, account_id, _status in chunk:
            identifiers[identifier] = account_id  # the few with a state follow in load_reference
    for row in await device_store.devices(conn):
        state.devices[row["id"]] = device_state(row)
    machine.recall(await snapshot.recent_transactions(conn, machine.limits.idempotency_window_txns),
                   int(time.time() * 1000))
    await load_reference(conn, state, school_reference=False)
    state.apply_alarm_events(await building.alarm_events(conn))  # an alarm on at the stop is on
    # The turnstiles' offline lists, one pass; this life's epoch makes every turnstile's older
    # version a snapshot (docs/building.md).
    state.build_lists(int(time.time()))


async def load_reference(conn: asyncpg.Connection, state: LedgerState, *, school_reference: bool = True) -> None:
    """Cards with a state, pupils, controls, pre-orders and school reference data."""
    if school_reference:
        state.apply_school_reference(await snapshot.school_reference(conn))
    for row in await snapshot.identifiers_with_state(conn):
        apply_identifier(state, bytes(row[0]), row)
    async for chunk in snapshot.pupils(conn):
        for row in chunk:
            state.apply_pupil(row)
    state.controls.clear()
    for row in await snapshot.controls(conn):
        state.controls[row[0]] = controls_from_row(row)
    state.apply_escorts(await snapshot.escorts(conn))
    state.apply_preorders(await snapshot.preorders(conn))


async def reload_all(conn: asyncpg.Connection, state: LedgerState) -> None:
    """After the change listener was away: reference data whole (balances stay: ours)."""
    identifiers = state.identifiers
    identifiers.clear()
    async for chunk in snapshot.identifiers(conn):
        for identifier, account_id, _status in chunk:
            identifiers[bytes(identifier)] = account_id
    state.identifier_state.clear()
    async for chunk in snapshot.accounts(conn):
        for row in chunk:
            state.apply_account(row)
    await load_reference(conn, state)
    # The lists were bypassed above: built again, in a new epoch (every turnstile re-snapshots).
    previous = state.lists.epoch if state.lists is not None else 0
    state.build_lists(max(int(time.time()), previous + 1))
