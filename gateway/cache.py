"""The in-memory state the authorizer decides against.

Accounts are columns (``array`` of machine integers indexed by account id):
2 M accounts cost tens of MiB instead of the hundreds a Python object per
account would, and an index is the fastest lookup Python has. Identifiers map
bytes -> account id in one dict; the few non-active identifiers sit in a set.

Only the gateway's event loop thread mutates this state, and only in
``apply``; the authorizer only reads it.
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from protocol import Decision, PreorderLine

if TYPE_CHECKING:
    from .server import DeviceSession

DAY_MS = 86_400_000
MINUTE_MS = 60_000
ACCOUNT_ACTIVE = 0
ACCOUNT_PUPIL, ACCOUNT_REVENUE, ACCOUNT_DRAWER, ACCOUNT_OPENING = 1, 2, 3, 4
ACCOUNT_CLEARING, ACCOUNT_FREE_MEALS, ACCOUNT_CORRECTIONS = 5, 6, 7
IDENTIFIER_ACTIVE, IDENTIFIER_BLOCKED, IDENTIFIER_SUSPENDED = 0, 1, 2
NO_LIMIT = -1
# HELLO nonces remembered per device: a replayed HELLO inside the clock-skew
# window is refused. A device says HELLO a few times a day; 32 spans days.
HELLO_NONCES_MAX = 32


class Accounts:
    """Columns of account state, indexed by account id (ids are dense from 1)."""

    __slots__ = (
        "balance",
        "spent",
        "spent_day",
        "limit",
        "school",
        "status",
        "kind",
        "free_meal",
        "free_meal_day",
        "grace_used",
        "low_alerted",
        "family",
    )

    def __init__(self) -> None:
        self.balance = array("q")  # kopecks
        self.spent = array("q")  # kopecks spent on purchases on day spent_day
        self.spent_day = array("l")  # school-local day number (Unix ms + offset) // DAY_MS
        self.limit = array("q")  # daily spending limit in kopecks, NO_LIMIT for none
        self.school = array("l")
        self.status = array("b")
        self.kind = array("b")
        self.free_meal = array("b")  # 1: entitled to one free hot meal a school day
        self.free_meal_day = array("l")  # the school day the free meal was last taken
        self.grace_used = array("l")  # purchases on grace since the balance was last >= 0
        self.low_alerted = array("b")  # 1: below the low-balance threshold and told so
        self.family = array("q")  # family id, 0 for none: transfers stay inside a family

    def __len__(self) -> int:
        return len(self.balance)

    def grow_to(self, size: int) -> None:
        """Make ids < ``size`` addressable; new slots are empty (kind 0 = no account)."""
        missing = size - len(self.balance)
        if missing <= 0:
            return
        for column, fill in (
            (self.balance, 0),
            (self.spent, 0),
            (self.spent_day, 0),
            (self.limit, NO_LIMIT),
            (self.school, 0),
            (self.status, 0),
            (self.kind, 0),
            (self.free_meal, 0),
            (self.free_meal_day, 0),
            (self.grace_used, 0),
            (self.low_alerted, 0),
            (self.family, 0),
        ):
            column.extend(array(column.typecode, [fill]) * missing)

    def set(self, account_id: int, kind: int, school_id: int, status: int, balance: int, limit: int) -> None:
        if account_id >= len(self.balance):
            self.grow_to(max(account_id + 1, len(self.balance) * 2))
        self.kind[account_id] = kind
        self.school[account_id] = school_id
        self.status[account_id] = status
        self.balance[account_id] = balance
        self.limit[account_id] = limit

    def exists(self, account_id: int) -> bool:
        return 0 < account_id < len(self.kind) and self.kind[account_id] != 0


class Product(msgspec.Struct, frozen=True, gc=False):
    code: int
    category: str
    allergens: frozenset[str]
    diet_flags: frozenset[str]
    hot_meal: bool


class Controls(msgspec.Struct, gc=False):
    """A parent's controls of one account, with the counters they need (today only)."""

    period_limits_kopecks: dict[str, int]
    items_per_day_max: int  # -1: none
    banned_products: frozenset[int]
    banned_categories: frozenset[str]
    blocked_allergens: frozenset[str]
    required_diet: frozenset[str]
    cashier_note: str
    day: int = 0  # the school day the counters below belong to
    items_today: int = 0
    period_spent_kopecks: dict[str, int] = {}


class Policy(msgspec.Struct, frozen=True, gc=False):
    grace_kopecks: int = 0
    grace_meals: int = 0
    low_balance_threshold_kopecks: int = 10_000


class MealPeriod(msgspec.Struct, frozen=True, gc=False):
    name: str
    starts_minute: int
    ends_minute: int


DEFAULT_POLICY = Policy()


class DeviceState:
    """A registered device: its identity, its durable watermark, its decided txns."""

    __slots__ = (
        "device_id",
        "school_id",
        "kind",
        "key",
        "drawer_account_id",
        "durable_txn",
        "ack_pending",
        "forgotten_txn_max",
        "recent",
        "recent_order",
        "nonces",
        "session",
    )

    def __init__(self, device_id: int, school_id: int, kind: int, key: bytes, drawer_account_id: int, durable_txn: int):
        self.device_id = device_id
        self.school_id = school_id
        self.kind = kind
        self.key = key
        self.drawer_account_id = drawer_account_id
        self.durable_txn = durable_txn
        self.ack_pending = False  # durable_txn advanced and the device has not been told yet
        # Decided txns, oldest first: every accepted txn not yet durable, plus the
        # most recent others up to the window. Txns at or below forgotten_txn_max may
        # have been decided and forgotten: they can no longer be answered.
        self.recent: dict[int, Decision] = {}
        # The txns of ``recent`` oldest first. A dict emptied from its front makes
        # next(iter(d)) walk every deleted slot until it is resized: a deque does not.
        self.recent_order: deque[int] = deque()
        self.forgotten_txn_max = 0
        self.nonces: deque[bytes] = deque(maxlen=HELLO_NONCES_MAX)
        self.session: DeviceSession | None = None

    def remember(self, txn: int, decision: Decision, window: int) -> None:
        recent = self.recent
        if txn not in recent:
            self.recent_order.append(txn)
        recent[txn] = decision
        order = self.recent_order
        while len(recent) > window:
            oldest = order[0]
            if oldest > self.durable_txn and recent[oldest].outcome:
                # Accepted and not yet durable: the device may replay it, so it stays
                # (bounded by the journal queue, which holds every such txn).
                break
            order.popleft()
            del recent[oldest]
            if oldest > self.forgotten_txn_max:
                self.forgotten_txn_max = oldest


class Cache:
    __slots__ = (
        "accounts",
        "identifiers",
        "identifier_state",
        "devices",
        "school_offset_ms",
        "revenue_account",
        "free_meal_account",
        "clearing_account",
        "corrections_account",
        "controls",
        "products",
        "policies",
        "meal_periods",
        "photo_refs",
        "preorders",
    )

    def __init__(self) -> None:
        self.accounts = Accounts()
        self.identifiers: dict[bytes, int] = {}
        # Identifiers that are not simply active: (status, expires_at_ms or 0). Few:
        # blocked and suspended cards, temporary cards with an expiry.
        self.identifier_state: dict[bytes, tuple[int, int]] = {}
        self.devices: dict[int, DeviceState] = {}
        self.school_offset_ms: dict[int, int] = {}
        self.revenue_account: dict[int, int] = {}  # school id -> canteen revenue account id
        self.free_meal_account: dict[int, int] = {}  # school id -> free-meal budget account id
        self.clearing_account = 0  # acquirer clearing (bank-card top-ups)
        self.corrections_account = 0  # operator corrections
        self.controls: dict[int, Controls] = {}  # account id -> parent controls (sparse)
        self.products: dict[tuple[int, int], Product] = {}  # (school id, code) -> product
        self.policies: dict[int, Policy] = {}
        self.meal_periods: dict[int, tuple[MealPeriod, ...]] = {}
        self.photo_refs: dict[int, str] = {}  # account id -> key in the photo store (sparse)
        # account id -> school day -> pre-ordered lines (upcoming days only, sparse)
        self.preorders: dict[int, dict[int, tuple[PreorderLine, ...]]] = {}

    def day_of(self, school_id: int, now_ms: int) -> int:
        return (now_ms + self.school_offset_ms.get(school_id, 0)) // DAY_MS

    def minute_of_day(self, school_id: int, now_ms: int) -> int:
        return (now_ms + self.school_offset_ms.get(school_id, 0)) % DAY_MS // MINUTE_MS

    def meal_period(self, school_id: int, now_ms: int) -> str:
        """The meal period at ``now_ms`` in the school's time, "" outside all of them."""
        periods = self.meal_periods.get(school_id)
        if not periods:
            return ""
        minute = self.minute_of_day(school_id, now_ms)
        for period in periods:
            if period.starts_minute <= minute < period.ends_minute:
                return period.name
        return ""

    def policy(self, school_id: int) -> Policy:
        return self.policies.get(school_id, DEFAULT_POLICY)

    def spent_today(self, account_id: int, now_ms: int) -> int:
        accounts = self.accounts
        if accounts.spent_day[account_id] != self.day_of(accounts.school[account_id], now_ms):
            return 0
        return accounts.spent[account_id]

    def add_account(self, row: Any) -> None:
        account_id, kind, school_id, status, balance, limit = row
        self.accounts.set(account_id, kind, school_id, status, balance, limit)
        if kind == ACCOUNT_REVENUE:
            self.revenue_account[school_id] = account_id
        elif kind == ACCOUNT_FREE_MEALS:
            self.free_meal_account[school_id] = account_id
        elif kind == ACCOUNT_CLEARING:
            self.clearing_account = account_id
        elif kind == ACCOUNT_CORRECTIONS:
            self.corrections_account = account_id

    def add_identifier(self, identifier: bytes, account_id: int, status: int, expires_at_ms: int = 0) -> None:
        self.identifiers[identifier] = account_id
        if status != IDENTIFIER_ACTIVE or expires_at_ms:
            self.identifier_state[identifier] = (status, expires_at_ms)
        else:
            self.identifier_state.pop(identifier, None)

    def remove_identifier(self, identifier: bytes) -> None:
        self.identifiers.pop(identifier, None)
        self.identifier_state.pop(identifier, None)

    def ledger_total(self) -> int:
        """Sum of all balances: zero in a consistent double-entry ledger."""
        return sum(self.accounts.balance)
