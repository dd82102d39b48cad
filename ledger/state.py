"""The in-memory state the rules decide against.

Accounts are columns (``array`` of machine integers indexed by account id):
2 M accounts cost tens of MiB instead of the hundreds a Python object per
account would, and an index is the fastest lookup Python has. Identifiers map
bytes -> account id in one dict; the few non-active identifiers sit in a side
dict.

Only the machine (ledger.machine, ledger.rules.commit) changes balances and
counters; reference data (cards, controls, devices, schools) is applied by the
``apply_*`` functions here, from rows the shell read.
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from protocol import Decision, PreorderLine
from protocol.limits import PHOTO_REF_BYTES_MAX, PREORDER_LINES_MAX

from .allowlist import ALLOW as _LIST_ALLOW
from .allowlist import BLOCK as _LIST_BLOCK
from .allowlist import REMOVE as _LIST_REMOVE
from .allowlist import AllowLists, SchoolList
from .codes import AccessKind, AccountKind, IdentifierStatus, Presence
from .records import AccountCheckpoint, AccountCounters

if TYPE_CHECKING:
    from .allowance import TillAllowances

DAY_MS = 86_400_000
MINUTE_MS = 60_000
NO_LIMIT = -1
# HELLO nonces remembered per device: a replayed HELLO inside the clock-skew
# window is refused. A device says HELLO a few times a day; 32 spans days.
HELLO_NONCES_MAX = 32

_PUPIL = int(AccountKind.PUPIL)
_ACTIVE = int(IdentifierStatus.ACTIVE)
_UNKNOWN = int(Presence.UNKNOWN)
_INSIDE = int(Presence.INSIDE)
_FIRE_ALARM_EVENT = int(AccessKind.FIRE_ALARM)
_TURNSTILE_RELEASED_EVENT = int(AccessKind.TURNSTILE_RELEASED)
_FIRE_RESET_EVENT = int(AccessKind.FIRE_RESET)


def presence_at(presence: int, passage_ms: int, reset_ms: int, utc_offset_ms: int, at_ms: int) -> int:
    """The one presence rule (the gateway's muster and anti-passback, the staff API's
    "who is inside"): the last counted passage (``presence`` at ``passage_ms``) says where
    a pupil is, on its own school day only (every night resets it: nothing runs at
    midnight) and only after the school's last reconciliation (``reset_ms``)."""
    if (
        not passage_ms
        or passage_ms <= reset_ms
        or (passage_ms + utc_offset_ms) // DAY_MS != (at_ms + utc_offset_ms) // DAY_MS
    ):
        return _UNKNOWN
    return presence


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
        "items_day",
        "items_today",
        "period_spent",
        "presence",
        "passage_ms",
        "entry_ms",
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
        self.items_day = array("l")  # the school day of items_today and period_spent
        self.items_today = array("l")  # units bought on items_day
        self.period_spent: dict[int, dict[str, int]] = {}  # account -> meal period -> kopecks (sparse)
        self.presence = array("b")  # Presence after the last counted passage (see LedgerState.presence_of)
        self.passage_ms = array("q")  # judged time of that passage: presence holds on its school day only
        self.entry_ms = array("q")  # judged time of the last counted entry (timed anti-passback)

    def __len__(self) -> int:
        return len(self.balance)

    def grow_to(self, size: int) -> None:
        """Make ids < ``size`` addressable; new slots are empty (kind NONE)."""
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
            (self.items_day, 0),
            (self.items_today, 0),
            (self.presence, 0),
            (self.passage_ms, 0),
            (self.entry_ms, 0),
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

    def counters(self, account_id: int) -> AccountCounters:
        spent = self.period_spent.get(account_id)
        return AccountCounters(
            self.spent_day[account_id],
            self.spent[account_id],
            self.free_meal_day[account_id],
            self.grace_used[account_id],
            bool(self.low_alerted[account_id]),
            self.items_day[account_id],
            self.items_today[account_id],
            tuple(spent.items()) if spent else (),
            self.presence[account_id],
            self.passage_ms[account_id],
            self.entry_ms[account_id],
        )

    def checkpoint(self, account_id: int) -> AccountCheckpoint:
        return AccountCheckpoint(account_id, self.balance[account_id], self.counters(account_id))

    def restore_counters(self, account_id: int, c: AccountCounters) -> None:
        """Counters as a checkpoint left them (the inverse of ``counters``)."""
        self.spent_day[account_id] = c.spent_day
        self.spent[account_id] = c.spent_kopecks
        self.free_meal_day[account_id] = c.free_meal_day
        self.grace_used[account_id] = c.grace_used
        self.low_alerted[account_id] = 1 if c.low_alerted else 0
        self.items_day[account_id] = c.items_day
        self.items_today[account_id] = c.items_today
        self.presence[account_id] = c.presence
        self.passage_ms[account_id] = c.passage_ms
        self.entry_ms[account_id] = c.entry_ms
        if c.period_spent:
            self.period_spent[account_id] = dict(c.period_spent)
        else:
            self.period_spent.pop(account_id, None)


class Product(msgspec.Struct, frozen=True, gc=False):
    code: int
    category: str
    allergens: frozenset[str]
    diet_flags: frozenset[str]
    hot_meal: bool


class Controls(msgspec.Struct, frozen=True, gc=False):
    """A parent's controls of one account (its counters live in Accounts)."""

    period_limits_kopecks: dict[str, int]
    items_per_day_max: int  # -1: none
    banned_products: frozenset[int]
    banned_categories: frozenset[str]
    blocked_allergens: frozenset[str]
    required_diet: frozenset[str]
    cashier_note: str


class Policy(msgspec.Struct, frozen=True, gc=False):
    grace_kopecks: int = 0
    grace_meals: int = 0
    low_balance_threshold_kopecks: int = 10_000
    anti_passback: int = 0  # PassbackMode
    passback_entry_interval_ms: int = 0  # timed anti-passback: two entries at least this far apart; 0: off
    escort_required: bool = False  # a kindergarten: a child passes only after one of its trusted persons
    # Offline tills (ledger.allowance): the most one pupil may spend offline in total, over all
    # the school's tills (0: no offline sales), and the consecutive offline sales per card.
    offline_floor_kopecks: int = 0
    offline_sales_per_card_max: int = 0


class MealPeriod(msgspec.Struct, frozen=True, gc=False):
    name: str
    starts_minute: int
    ends_minute: int


DEFAULT_POLICY = Policy()


class Grant(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A turnstile opened for a card (an accepted CARD_PRESENTED): what its PASSAGE must match."""

    identifier: bytes
    account_id: int  # 0: a trusted person's card (a kindergarten escort)
    direction: int
    reader_time_ms: int  # the turnstile's clock at the grant (the PASSAGE's is compared to it)
    decided_at_ms: int  # the gateway's clock at the grant (its expiry is judged by it)
    escort_id: int = 0  # a child's grant: the trusted person (representative) who came with it
    escort: str = ""  # their full name, for the parents' notice
    escort_relation: str = ""  # their relation (storage.representatives.RELATIONS), for the notice


class Escort(msgspec.Struct, frozen=True, gc=False):
    """A trusted person's card: a representative who may bring and collect these children."""

    representative_id: int
    school_id: int
    name: str  # the full name
    relation: str  # parent, grandmother, nanny, ... (storage.representatives.RELATIONS); the notifier's templates say it in Russian
    children: frozenset[int]  # account ids


# A child's card must follow its trusted person's card at the same turnstile within this: the
# adult taps, then the child, at the arm; a minute covers a toddler and a pushchair.
ESCORT_WINDOW_MS = 60_000

class Alarm:
    """A school's fire alarm while it lasts: its key (the journal key of what raised it:
    a fire panel's txn, or a school officer's command with device 0), its time, who raised
    it, and which turnstiles confirmed they released both ways (device id -> gateway ms)."""

    __slots__ = ("school_id", "device_id", "device_txn", "raised_at_ms", "source", "released")

    def __init__(self, school_id: int, device_id: int, device_txn: int, raised_at_ms: int, source: str) -> None:
        self.school_id = school_id
        self.device_id = device_id
        self.device_txn = device_txn
        self.raised_at_ms = raised_at_ms
        self.source = source
        self.released: dict[int, int] = {}

    @property
    def key(self) -> str:
        return f"{self.device_id}:{self.device_txn}"


# What a remembered txn was, as one int: the hash of (the request's kind, ledger.rules KIND_* of
# its type; the card's identifier, b"" for a fire panel's request; the reader's clock). A resend
# of a kept request carries the same three (docs/protocol.md 10.5: same txn, same payload);
# another request under the same txn does not. An int, not the tuple: nothing per decision for
# the cyclic GC to track, and a quarter of the memory. After a restart the journal row may keep
# no reader time (the reader's clock was outside the trusted window): its fingerprint then
# hashes None there, and matches that request at any reader time. (Two different requests
# hashing alike: about 2^-61, and it only matters for a txn used twice.)
RequestFingerprint = int


def request_fingerprint(kind: int, identifier: bytes, reader_time_ms: int | None) -> RequestFingerprint:
    return hash((kind, identifier, reader_time_ms))


def same_request(stored: RequestFingerprint, kind: int, identifier: bytes, reader_time_ms: int) -> bool:
    """Whether a request is the one remembered under its txn."""
    return (stored == hash((kind, identifier, reader_time_ms))
            or stored == hash((kind, identifier, None)))  # a journal row without the reader's time


class DeviceState:
    """A registered device: its identity, its durable watermark, its decided txns."""

    __slots__ = (
        "device_id",
        "school_id",
        "kind",
        "key",
        "next_key",
        "revoked",
        "drawer_account_id",
        "journaled_txn_max",
        "durable_txn",
        "ack_pending",
        "undurable",
        "forgotten_txn_max",
        "txn_seen_max",
        "session_last_txn",
        "recent",
        "recent_requests",
        "recent_order",
        "grants",
        "grants_order",
        "nonces",
        "escort",
    )

    def __init__(self, device_id: int, school_id: int, kind: int, key: bytes, drawer_account_id: int, durable_txn: int,
                 next_key: bytes | None = None, revoked: bool = False):
        self.device_id = device_id
        self.school_id = school_id
        self.kind = kind
        self.key = key
        self.next_key = next_key  # a key rotation in progress: HELLO verifies under key or next_key
        self.revoked = revoked  # revoked through the staff API: every HELLO refused
        self.drawer_account_id = drawer_account_id
        self.journaled_txn_max = durable_txn  # the highest txn of its journal rows
        # The watermark told to the device: a PREFIX, every txn <= it that was
        # accepted is durable (min over the accepted-not-durable txns, see durable_watermark).
        self.durable_txn = durable_txn
        self.ack_pending = False  # durable_txn advanced and the device has not been told yet
        self.undurable: set[int] = set()  # accepted txns not yet durable (a handful at most)
        self.txn_seen_max = durable_txn  # the highest txn decoded from this device (TXN_GAP_MAX)
        self.session_last_txn = 0  # the highest txn of the current session: txns must increase
        # Decided txns, oldest first: every accepted txn not yet durable, plus the
        # most recent others up to the window. Txns at or below forgotten_txn_max may
        # have been decided and forgotten: they can no longer be answered.
        self.recent: dict[int, Decision] = {}
        # What each remembered txn was (``request_fingerprint``): a resend of the same request
        # gets the stored decision; another request under a txn already used (the device's
        # counter went back: its storage lost or restored) must not (NAK TXN_REUSED).
        self.recent_requests: dict[int, RequestFingerprint] = {}
        # The txns of ``recent`` oldest first. A dict emptied from its front makes
        # next(iter(d)) walk every deleted slot until it is resized: a deque does not.
        self.recent_order: deque[int] = deque()
        self.forgotten_txn_max = 0
        # Accepted CARD_PRESENTED txn -> its Grant, as many as the idempotency window
        # (spec 4.5): a PASSAGE must name one; it follows its grant within seconds and
        # uses it up (one opening, one person).
        self.grants: dict[int, Grant] = {}
        self.grants_order: deque[int] = deque()
        self.nonces: deque[bytes] = deque(maxlen=HELLO_NONCES_MAX)
        # A kindergarten turnstile: the trusted person whose card it granted last, and when
        # (gateway ms): the child's card that follows within ESCORT_WINDOW_MS goes with them.
        self.escort: tuple[Escort, int] | None = None

    def remember(self, txn: int, decision: Decision, window: int, fingerprint: "RequestFingerprint") -> None:
        recent = self.recent
        if txn not in recent:
            self.recent_order.append(txn)
        recent[txn] = decision
        self.recent_requests[txn] = fingerprint
        if len(recent) <= window:
            return
        order = self.recent_order
        undurable = self.undurable
        while len(recent) > window:
            oldest = order[0]
            if oldest in undurable:
                # Accepted and not yet durable: the device may replay it, so it stays
                # (bounded by the journal queue, which holds every such txn).
                break
            order.popleft()
            del recent[oldest]
            del self.recent_requests[oldest]
            if oldest > self.forgotten_txn_max:
                self.forgotten_txn_max = oldest

    def grant(self, txn: int, grant: "Grant", window: int) -> None:
        grants = self.grants
        order = self.grants_order
        if txn not in grants:
            order.append(txn)
        grants[txn] = grant
        while len(order) > window:
            # Oldest first from a deque: next(iter(dict)) would walk the deleted slots.
            # (A used grant is gone from the dict already.)
            grants.pop(order.popleft(), None)

    def made_durable(self, txns: list[int]) -> bool:
        """These accepted txns are committed. Returns True if the watermark moved."""
        undurable = self.undurable
        top = self.journaled_txn_max
        for txn in txns:
            undurable.discard(txn)
            if txn > top:
                top = txn
        self.journaled_txn_max = top
        watermark = top if not undurable else min(top, min(undurable) - 1)
        if watermark > self.durable_txn:
            self.durable_txn = watermark
            return True
        return False


class LedgerState:
    __slots__ = (
        "accounts",
        "identifiers",
        "identifier_state",
        "devices",
        "school_offset_ms",
        "revenue_account",
        "free_meal_account",
        "desk_drawer_account",
        "clearing_account",
        "corrections_account",
        "controls",
        "products",
        "policies",
        "meal_periods",
        "photo_refs",
        "preorders",
        "presence_reset_ms",
        "alarms",
        "school_pupils",
        "lists",
        "escorts",
        "allowances",
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
        self.desk_drawer_account: dict[int, int] = {}  # school id -> its office desk's cash drawer
        self.clearing_account = 0  # acquirer clearing (bank-card top-ups)
        self.corrections_account = 0  # operator corrections
        self.controls: dict[int, Controls] = {}  # account id -> parent controls (sparse)
        self.products: dict[tuple[int, int], Product] = {}  # (school id, code) -> product
        self.policies: dict[int, Policy] = {}
        self.meal_periods: dict[int, tuple[MealPeriod, ...]] = {}
        self.photo_refs: dict[int, str] = {}  # account id -> key in the photo store (sparse)
        # account id -> school day -> pre-ordered lines (upcoming days only, sparse)
        self.preorders: dict[int, dict[int, tuple[PreorderLine, ...]]] = {}
        # school id -> when its presence was last reconciled (after an evacuation):
        # passages before it no longer say who is inside
        self.presence_reset_ms: dict[int, int] = {}
        self.alarms: dict[int, Alarm] = {}  # school id -> its fire alarm, while one lasts
        # school id -> its pupils' account ids: the muster reads one school, not 2 M accounts
        self.school_pupils: dict[int, array] = {}
        # The turnstiles' offline allow-lists, once built (``build_lists``, after the load):
        # kept up to date by every identifier change from then on.
        self.lists: AllowLists | None = None
        self.escorts: dict[bytes, Escort] = {}  # a trusted person's card -> who (kindergartens)
        # The tills' offline allowances, once built (``build_lists``): what each may sell alone.
        self.allowances: TillAllowances | None = None

    # ---------------------------------------------------------------- time in a school

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

    def presence_of(self, account_id: int, at_ms: int) -> int:
        """Presence (INSIDE, OUTSIDE, UNKNOWN) of a pupil at ``at_ms`` (see ``presence_at``)."""
        accounts = self.accounts
        passage_ms = accounts.passage_ms[account_id]
        if not passage_ms:
            return _UNKNOWN
        school_id = accounts.school[account_id]
        return presence_at(
            accounts.presence[account_id], passage_ms, self.presence_reset_ms.get(school_id, 0),
            self.school_offset_ms.get(school_id, 0), at_ms,
        )

    def inside(self, school_id: int, at_ms: int) -> list[int]:
        """The pupils of a school inside at ``at_ms`` (the muster list), by account id."""
        accounts = self.accounts
        school, passage = accounts.school, accounts.passage_ms
        presence_of = self.presence_of
        return sorted(
            {
                i
                for i in self.school_pupils.get(school_id, ())
                if passage[i] and school[i] == school_id and presence_of(i, at_ms) == _INSIDE
            }
        )

    def spent_today(self, account_id: int, now_ms: int) -> int:
        accounts = self.accounts
        if accounts.spent_day[account_id] != self.day_of(accounts.school[account_id], now_ms):
            return 0
        return accounts.spent[account_id]

    def ledger_total(self) -> int:
        """Sum of all balances: zero in a consistent double-entry ledger."""
        return sum(self.accounts.balance)

    # ---------------------------------------------------------------- reference data

    def add_account(self, row: Any) -> None:
        account_id, kind, school_id, status, balance, limit = row[:6]
        self.accounts.set(account_id, kind, school_id, status, balance, limit)
        if kind == _PUPIL:
            pupils = self.school_pupils.get(school_id)
            if pupils is None:
                pupils = self.school_pupils[school_id] = array("q")
            pupils.append(account_id)
        if kind == AccountKind.REVENUE:
            self.revenue_account[school_id] = account_id
        elif kind == AccountKind.FREE_MEALS:
            self.free_meal_account[school_id] = account_id
        elif kind == AccountKind.DESK_DRAWER:
            self.desk_drawer_account[school_id] = account_id
        elif kind == AccountKind.CLEARING:
            self.clearing_account = account_id
        elif kind == AccountKind.CORRECTIONS:
            self.corrections_account = account_id

    def apply_account(self, row: Any) -> None:
        """An account row (id, kind, school, status, balance, limit): balances of known
        accounts are never taken from it (the machine is their only writer)."""
        account_id, kind, school_id, status, _balance, limit = row[:6]
        accounts = self.accounts
        if accounts.exists(account_id):
            before = accounts.school[account_id]
            if before != school_id and accounts.kind[account_id] == _PUPIL:
                # a pupil moved school (rare): re-indexed; ``inside`` also checks the column
                self.school_pupils.setdefault(school_id, array("q")).append(account_id)
            accounts.kind[account_id] = kind
            accounts.school[account_id] = school_id
            accounts.status[account_id] = status
            accounts.limit[account_id] = limit
        else:
            self.add_account(row)

    def add_identifier(self, identifier: bytes, account_id: int, status: int, expires_at_ms: int = 0) -> None:
        before = self.identifiers.get(identifier)
        self.identifiers[identifier] = account_id
        if status != _ACTIVE or expires_at_ms:
            self.identifier_state[identifier] = (status, expires_at_ms)
        else:
            self.identifier_state.pop(identifier, None)
        if self.lists is not None:
            if before is not None and before != account_id:
                self._list_change(before, identifier, _LIST_REMOVE)
            self._list_change(account_id, identifier, _LIST_ALLOW if status == _ACTIVE else _LIST_BLOCK)

    def remove_identifier(self, identifier: bytes) -> None:
        before = self.identifiers.pop(identifier, None)
        self.identifier_state.pop(identifier, None)
        if self.lists is not None and before is not None:
            self._list_change(before, identifier, _LIST_REMOVE)

    def _list_op(self, identifier: bytes) -> int:
        """ALLOW or BLOCK: what an offline turnstile does with this card as it stands now."""
        found = self.identifier_state.get(identifier)
        return _LIST_ALLOW if found is None or found[0] == _ACTIVE else _LIST_BLOCK

    def _list_change(self, account_id: int, identifier: bytes, op: int) -> None:
        accounts = self.accounts
        if 0 < account_id < len(accounts.kind) and accounts.kind[account_id] == _PUPIL:
            self.lists.school(accounts.school[account_id]).change(identifier, op)  # type: ignore[union-attr]

    def build_lists(self, epoch: int) -> AllowLists:
        """Every school's allow-list from the identifiers, in one pass (after a load). ``epoch``
        (the gateway's start, say) tells a turnstile's version of an earlier life: a snapshot."""
        lists = AllowLists(epoch, self._list_op)
        accounts = self.accounts
        kind, school = accounts.kind, accounts.school
        schools: dict[int, list[bytes]] = {}
        for identifier, account_id in self.identifiers.items():
            if kind[account_id] != _PUPIL:
                continue
            ids = schools.get(school[account_id])
            if ids is None:
                ids = schools[school[account_id]] = []
            ids.append(identifier)
        for school_id, ids in schools.items():
            ids.sort()
            lists.schools[school_id] = SchoolList(ids)
        self.lists = lists
        # A new life for the tills' allowances too: the tills registered now of a school with an
        # offline floor may hold some of the last life's until each has confirmed its RESET page.
        from .allowance import TillAllowances

        # Only where tills could sell alone (a floor): a school without one gave nothing out.
        self.allowances = TillAllowances(epoch, {
            device_id: device for device_id, device in self.devices.items()
            if self.policy(device.school_id).offline_floor_kopecks
        })
        return lists

    def apply_pupil(self, row: Any) -> None:
        account_id, category, family_id, photo_ref = row
        accounts = self.accounts
        if account_id < len(accounts.kind):
            accounts.free_meal[account_id] = 1 if category else 0
            accounts.family[account_id] = family_id
            if photo_ref:
                self.photo_refs[account_id] = photo_ref[:PHOTO_REF_BYTES_MAX]
            else:
                self.photo_refs.pop(account_id, None)

    def apply_preorders(self, rows: list, account_id: int | None = None) -> None:
        """Rows (account_id, day as school-day number, product_code, quantity) of upcoming days."""
        if account_id is not None:
            self.preorders.pop(account_id, None)
        else:
            self.preorders.clear()
        for acc, day, code, quantity in rows:
            days = self.preorders.setdefault(acc, {})
            lines = days.get(day, ())
            if len(lines) < PREORDER_LINES_MAX:  # the staff API refuses more
                days[day] = lines + (PreorderLine(code, quantity),)

    def apply_school_reference(self, data: dict[str, list], school_id: int | None = None) -> None:
        if school_id is not None:
            self.products = {key: p for key, p in self.products.items() if key[0] != school_id}
            self.policies.pop(school_id, None)
            self.meal_periods.pop(school_id, None)
        for sid, offset_minutes in data["schools"]:
            self.school_offset_ms[sid] = offset_minutes * MINUTE_MS
        for sid, code, category, allergens, diet, hot in data["products"]:
            self.products[(sid, code)] = Product(code, category, frozenset(allergens or ()), frozenset(diet or ()), hot)
        for sid, grace, grace_meals, threshold, *more in data["policies"]:
            self.policies[sid] = Policy(grace, grace_meals, threshold, *more)
        periods: dict[int, list[MealPeriod]] = {}
        for sid, name, starts, ends in data["periods"]:
            periods.setdefault(sid, []).append(MealPeriod(name, starts, ends))
        for sid, items in periods.items():
            self.meal_periods[sid] = tuple(items)
        for sid, reset_ms in data.get("presence_resets", ()):
            if reset_ms > self.presence_reset_ms.get(sid, 0):
                self.presence_reset_ms[sid] = reset_ms

    def apply_escorts(self, rows: Any, representative_id: int | None = None) -> None:
        """Rows (identifier, representative id, school id, full name, relation, children account ids) of the
        trusted cards of active representatives: all of them, or one representative's."""
        if representative_id is None:
            self.escorts.clear()
        else:
            for identifier in [i for i, e in self.escorts.items() if e.representative_id == representative_id]:
                del self.escorts[identifier]
        for identifier, rep_id, school_id, name, relation, children in rows:
            self.escorts[bytes(identifier)] = Escort(rep_id, school_id, name, relation, frozenset(children or ()))

    def apply_alarm_events(self, events: Any) -> None:
        """After a restart: the schools' alarms as the journaled access events left them
        (FIRE_ALARM, TURNSTILE_RELEASED, FIRE_RESET, oldest first): an alarm not reset is
        still on, with the turnstiles that had confirmed their release."""
        for e in events:
            if e.kind == _FIRE_ALARM_EVENT:
                if e.school_id not in self.alarms:
                    self.alarms[e.school_id] = Alarm(e.school_id, e.device_id, e.device_txn, e.at_ms, e.detail)
            elif e.kind == _TURNSTILE_RELEASED_EVENT:
                alarm = self.alarms.get(e.school_id)
                if alarm is not None and alarm.key == e.detail:
                    alarm.released.setdefault(e.device_id, e.at_ms)
            elif e.kind == _FIRE_RESET_EVENT:
                self.alarms.pop(e.school_id, None)

    def restore(self, checkpoint: AccountCheckpoint) -> None:
        """An account as the journal writer's last commit left it."""
        self.accounts.balance[checkpoint.account_id] = checkpoint.balance_kopecks
        self.accounts.restore_counters(checkpoint.account_id, checkpoint.counters)

    def pupil_ids(self) -> list[int]:
        kind = self.accounts.kind
        return [i for i in range(1, len(kind)) if kind[i] == _PUPIL]


def controls_from_row(row: Any) -> Controls:
    _account_id, limits, items_max, products, categories, allergens, diet, note = row
    if isinstance(limits, (str, bytes)):
        limits = msgspec.json.decode(limits)
    return Controls(
        period_limits_kopecks={str(k): int(v) for k, v in limits.items()},
        items_per_day_max=int(items_max),
        banned_products=frozenset(products or ()),
        banned_categories=frozenset(categories or ()),
        blocked_allergens=frozenset(allergens or ()),
        required_diet=frozenset(diet or ()),
        cashier_note=note or "",
    )
