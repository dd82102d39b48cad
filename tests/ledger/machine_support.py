"""A small school for driving the real ledger machine without I/O.

The journal is a list that the test "commits" when it chooses; a crash drops
the machine and builds a new one from what was committed, with the same
functions the gateway uses (LedgerState.restore for the checkpoints,
Machine.recall for the idempotency window).
"""

from __future__ import annotations

import os

from ledger.codes import AccessKind, AccountKind
from ledger.machine import Machine, MachineLimits
from ledger.records import JournalEntry
from ledger.state import DAY_MS, NO_LIMIT, DeviceState, LedgerState, MealPeriod, Policy, Product
from protocol import DeviceKind, Hello
from protocol.auth import sign_hello

OFFSET_MS = 180 * 60_000  # Moscow
DAY = 20_500
MIDNIGHT_MS = DAY * DAY_MS - OFFSET_MS  # 00:00 school time of DAY


def at(hour: int, minute: int = 0, day: int = 0) -> int:
    return MIDNIGHT_MS + day * DAY_MS + (hour * 60 + minute) * 60_000


PUPILS = 6
OPENING_KOPECKS = 20_000
TURNSTILE_ID, TILL_ID = 1_000_001, 2_000_001
KEY = b"k" * 16
REVENUE, DRAWER, OPENING, CLEARING, FREE_MEALS, CORRECTIONS, DESK_DRAWER = 8, 10, 7, 9, 11, 12, 13
LUNCH_MEAL, BUN = 2, 3
LIMITS = MachineLimits(
    idempotency_window_txns=16,
    topup_kopecks_max=1_500_000,
    command_amount_kopecks_max=10_000_000,
    hello_clock_skew_ms_max=300_000,
    offline_window_ms=72 * 3_600_000,
    reader_clock_skew_ms=300_000,
    heartbeat_interval_ms=10_000,
)


def card(pupil: int) -> bytes:
    return b"\x04" + pupil.to_bytes(6, "big")


def reference_accounts() -> list[tuple]:
    """(id, kind, school, status, balance, limit): the opening state of the school."""
    rows = [(p, AccountKind.PUPIL, 1, 0, OPENING_KOPECKS, NO_LIMIT) for p in range(1, PUPILS + 1)]
    rows += [
        (OPENING, AccountKind.OPENING, 0, 0, -OPENING_KOPECKS * PUPILS, NO_LIMIT),
        (REVENUE, AccountKind.REVENUE, 1, 0, 0, NO_LIMIT),
        (CLEARING, AccountKind.CLEARING, 0, 0, 0, NO_LIMIT),
        (DRAWER, AccountKind.DRAWER, 1, 0, 0, NO_LIMIT),
        (FREE_MEALS, AccountKind.FREE_MEALS, 1, 0, 0, NO_LIMIT),
        (CORRECTIONS, AccountKind.CORRECTIONS, 0, 0, 0, NO_LIMIT),
        (DESK_DRAWER, AccountKind.DESK_DRAWER, 1, 0, 0, NO_LIMIT),
    ]
    return rows


def fresh_state(*, free_meal_pupils: tuple[int, ...] = (), grace_meals: int = 0, policy: Policy | None = None,
                extra_tills: int = 0, extra_cards: tuple[tuple[bytes, int], ...] = ()) -> LedgerState:
    s = LedgerState()
    s.school_offset_ms = {1: OFFSET_MS}
    for row in reference_accounts():
        s.add_account(row)
    for p in range(1, PUPILS + 1):
        s.add_identifier(card(p), p, 0)
        s.apply_pupil((p, "free" if p in free_meal_pupils else None, (p + 1) // 2, ""))
    s.products = {
        (1, LUNCH_MEAL): Product(LUNCH_MEAL, "lunch", frozenset(), frozenset(), True),
        (1, BUN): Product(BUN, "bakery", frozenset({"gluten"}), frozenset(), False),
    }
    s.meal_periods = {1: (MealPeriod("breakfast", 8 * 60, 10 * 60), MealPeriod("lunch", 12 * 60, 14 * 60))}
    s.policies = {1: policy or Policy(grace_kopecks=0, grace_meals=grace_meals, low_balance_threshold_kopecks=10_000)}
    s.devices = {
        TURNSTILE_ID: DeviceState(TURNSTILE_ID, 1, DeviceKind.TURNSTILE, KEY, 0, 0),
        TILL_ID: DeviceState(TILL_ID, 1, DeviceKind.TILL, KEY, DRAWER, 0),
    }
    for i in range(1, extra_tills + 1):
        s.devices[TILL_ID + i] = DeviceState(TILL_ID + i, 1, DeviceKind.TILL, KEY, DRAWER, 0)
    for identifier, account_id in extra_cards:
        s.add_identifier(identifier, account_id, 0)
    return s


class ListJournal:
    """The journal as a list: ``room`` says whether it takes more."""

    def __init__(self) -> None:
        self.queue: list[JournalEntry] = []
        self.room = True

    def has_room(self) -> bool:
        return self.room

    def append(self, entry: JournalEntry) -> None:
        assert self.room
        self.queue.append(entry)


class Store:
    """What PostgreSQL would hold: the committed entries, in commit order."""

    def __init__(self) -> None:
        self.committed: list[JournalEntry] = []
        self.epoch = 1_000

    def commit(self, machine: Machine, journal: ListJournal, count: int | None = None) -> list[JournalEntry]:
        batch = journal.queue[: len(journal.queue) if count is None else count]
        del journal.queue[: len(batch)]
        self.committed.extend(batch)
        machine.on_durable(batch)
        return batch

    def reload(self, **state_options) -> tuple[Machine, ListJournal]:
        """A restart: reference data, then the checkpoints and the window, as the gateway loads them."""
        state = fresh_state(**state_options)
        for entry in self.committed:
            for checkpoint in entry.accounts:
                state.restore(checkpoint)
            for event in entry.access:  # the schools' reconciliations, as the gateway loads them
                if event.kind == AccessKind.PRESENCE_RESET:
                    reset = state.presence_reset_ms
                    reset[event.school_id] = max(reset.get(event.school_id, 0), event.at_ms)
        state.apply_alarm_events(e for entry in self.committed for e in entry.access)
        devices: dict[int, int] = {}
        for entry in self.committed:
            if entry.row is not None and entry.row.device_id:
                device_id = entry.row.device_id
                devices[device_id] = max(devices.get(device_id, 0), entry.row.device_txn)
        for device_id, txn in devices.items():
            device = state.devices[device_id]
            device.journaled_txn_max = device.durable_txn = device.txn_seen_max = txn
        # A new life of the offline lists and allowances, as the gateway's load builds them.
        state.build_lists(epoch=max(self.epoch + 1, state.lists.epoch + 1 if state.lists else 0))
        self.epoch = state.lists.epoch  # type: ignore[union-attr]
        journal = ListJournal()
        machine = Machine(state, journal, LIMITS)
        rows = sorted(
            (e.row for e in self.committed if e.row is not None and e.row.device_id),
            key=lambda r: (r.device_id, r.device_txn),
        )
        per_device: dict[int, list] = {}
        for row in rows:
            per_device.setdefault(row.device_id, []).append(row)
        machine.recall([r for rs in per_device.values() for r in rs[-LIMITS.idempotency_window_txns:]])
        return machine, journal


def new_machine(**state_options) -> tuple[Machine, ListJournal]:
    journal = ListJournal()
    return Machine(fresh_state(**state_options), journal, LIMITS), journal


def hello(machine: Machine, device_id: int, now_ms: int, durable_txn: int = 0):
    kind = machine.state.devices[device_id].kind
    signed = sign_hello(KEY, device_id, Hello(kind, "test-1.0", durable_txn, now_ms, os.urandom(16), b"\0" * 16))
    return machine.hello(device_id, signed, now_ms)
