"""The records that cross the ledger's boundary, defined once.

The machine makes them; the journal writer stores them (its SQL reads their
array layout by position: the field order here IS the column order); the
staff API ledger and the simulators' verifier read them back.
``array_like=True`` encodes a record as a JSON/msgpack array (no field names on
the wire to PostgreSQL) and ``gc=False`` keeps the collector from tracking
millions of them (they hold no reference cycles).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .notices import AnyNotice


class JournalRow(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One row of ``journal``: an accepted transaction or an applied money command.

    Key: (device_id, device_txn); money commands have device_id 0 and
    device_txn = commands.seq.
    """

    device_id: int
    device_txn: int
    kind: int  # JournalKind
    account_id: int  # the pupil's account (for a transfer: the source)
    identifier: bytes  # the card presented; b"" for money commands
    direction: int | None  # ENTRY/PASSAGE: protocol Direction
    debit_account_id: int | None  # money leaves this account (None: no movement)
    credit_account_id: int | None  # money enters this account
    amount_kopecks: int
    balance_after_kopecks: int  # the pupil's balance after the row
    advice: bool  # the device had already acted (offline sale, replay)
    device_time_ms: int | None  # the reader's clock, None when it was outside the trusted window
    decided_at_ms: int  # the gateway's clock when it decided
    happened_at_ms: int  # the time the rules judged it at (reader's time for an advice in the window)
    cashier_id: int | None  # TOPUP: the cashier
    items: bytes | None  # PURCHASE: the basket in the wire layout (protocol.encode_items)
    granted_txn: int | None = None  # PASSAGE: the CARD_PRESENTED (grant) it used up


class AccountCounters(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """The per-account counters the rules read, as of a day in the school's time."""

    spent_day: int = 0  # school-local day number of spent_kopecks
    spent_kopecks: int = 0  # purchases paid by the pupil on spent_day (daily limit)
    free_meal_day: int = 0  # the school day the free meal was last taken
    grace_used: int = 0  # purchases on grace since the balance was last >= 0
    low_alerted: bool = False  # below the low-balance threshold and told so
    items_day: int = 0  # school-local day of items_today and period_spent
    items_today: int = 0  # units bought on items_day (parent's item count limit)
    period_spent: tuple[tuple[str, int], ...] = ()  # (meal period, kopecks) on items_day
    presence: int = 0  # Presence after the last counted passage
    passage_ms: int = 0  # the judged time of that passage (presence holds on its school day only)
    entry_ms: int = 0  # the judged time of the last counted entry (timed anti-passback)


class AccountCheckpoint(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """An account's state after a journaled change: what a restart restores.

    Written in the same group commit as the rows that moved it (accounts.balance_kopecks
    and accounts.counters), so a restart resumes exactly the committed prefix: no
    counter is rebuilt by a second implementation.
    """

    account_id: int
    balance_kopecks: int
    counters: AccountCounters


class OutboxEvent(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """An event for parents, written in the same commit as the change that caused it.

    ``event_id`` is unique and derived from the journal key, so a retried group
    commit or a replay never writes an event twice and consumers de-duplicate by it.
    """

    event_id: str
    kind: str  # OutboxKind, the payload's tag
    account_id: int
    payload: AnyNotice
    created_at_ms: int


class CommandResult(msgspec.Struct, frozen=True):
    """A money command's outcome (commands.status and commands.result)."""

    seq: int
    status: int  # CommandStatus
    result: dict[str, Any] | None  # {"reason": "OK" | DenyReason name, ...}
    decided_at_ms: int = 0

    @property
    def pending(self) -> bool:
        return self.status == 0


class AccessEvent(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """Something that happened at a school's doors that is not an entry or exit:
    a grant nobody used, an anti-passback violation, a presence reset (``access_events``).

    Key: (kind, device_id, device_txn, account_id), so a retried commit or a replay never
    records one twice: (device_id, device_txn) is the key of what caused it (a device's
    txn, a command's 0 and seq); a school officer's reconciliation has 0, 0 and no key.
    """

    kind: int  # AccessKind
    school_id: int
    account_id: int  # 0 for school-wide events
    device_id: int
    device_txn: int  # the CARD_PRESENTED it concerns; 0 for school-wide events
    direction: int | None
    at_ms: int  # when it happened (judged time)
    detail: str  # what exactly: "inside", "outside", "interval", "evacuation", ...


class JournalEntry(msgspec.Struct, gc=False):
    """What one decision asks the journal writer to make durable, atomically."""

    row: JournalRow | None  # None: a refused money command (only its result is stored)
    accounts: tuple[AccountCheckpoint, ...]
    outbox: tuple[OutboxEvent, ...]
    command: CommandResult | None
    enqueued_ns: int  # perf_counter_ns when the frame that caused it arrived (durable lag)
    access: tuple[AccessEvent, ...] = ()
