"""The tills' offline allowances: what each till may sell to a card alone, bounded so that a
pupil's total offline exposure never passes the school's floor, over any number of tills
(docs/protocol.md sections 4.16 and 10.14, docs/building.md).

The CRB lesson: a till offline does not know the balance, and a daily limit cached at every
till lets a pupil spend that limit at each till. Here each pupil has one **holder**, the
(till, card) where the pupil last bought online (or, in a new gateway life, the first till of
the school to sync), and only the holder is given a positive allowance:

    target = max(0, min(floor, spendable) - reserved at every other (till, card))

where spendable is the balance plus the school's grace amount, within what the daily limit
leaves. What the gateway has given a (till, card) and not yet seen spent stays **reserved**:
online purchases anywhere else must leave it untouched (the rules count it as spent). So at
every moment the sum over all tills of what they may sell offline to a pupil is at most
min(floor, spendable when it was given).

Each (till, card) the gateway has sent an entry for has a ``Hold``: ``hold`` = the deltas sent
minus every purchase applied at that till with that card (online or advice; the till lowers
its own allowance by the same amounts), ``release`` = the negative deltas of the last page,
not yet confirmed by the till. Deltas and spends commute, so the till's own allowance is never
above ``hold + release``; that is what is reserved. A negative delta counts only once the till
confirmed it (its next ALLOWANCE_SYNC carries that page's version); a page the till never got
(it asks again with the version before) is rolled back exactly.

A new gateway life (epoch) does not know what the tills of the previous life hold: until each
till registered then has had its RESET page, its school is treated as having ``floor`` reserved
for every pupil at a till it cannot see (no allowance is given there, online purchases leave
``floor`` untouched). A revoked till can never replay: its holds are dropped.

Pure: the machine answers ALLOWANCE_SYNC and applies purchases through here; no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import LIST_FLAG_MORE, LIST_FLAG_RESET, AllowanceEntry, AllowancePage, DeviceKind, ListOp
from protocol.limits import ALLOWANCE_PAGE_ENTRIES_MAX

from .codes import AccountStatus, IdentifierStatus
from .state import NO_LIMIT

if TYPE_CHECKING:
    from .state import DeviceState, LedgerState

ALLOW, BLOCK = int(ListOp.ALLOW), int(ListOp.BLOCK)
_TILL = int(DeviceKind.TILL)
_ACTIVE_CARD = int(IdentifierStatus.ACTIVE)
_ACCOUNT_ACTIVE = int(AccountStatus.ACTIVE)
_SEQ_BITS = 32
_SEQ_MASK = (1 << _SEQ_BITS) - 1
# An entry's delta is an i32 on the wire; an allowance change never needs more than the floor,
# but a holder whose hold went far below zero (online purchases) is filled in steps.
DELTA_KOPECKS_MAX = (1 << 31) - 1


class Hold:
    """One (till, card) the gateway has sent an allowance entry for."""

    __slots__ = ("account_id", "hold", "release", "op")

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.hold = 0  # deltas sent - purchases applied at this till with this card
        self.release = 0  # |negative deltas| of the last page, until the till confirms it
        self.op = ALLOW

    @property
    def reserved(self) -> int:
        """The most the till may still sell to this card alone."""
        value = self.hold + self.release
        return value if value > 0 else 0


class TillBook:
    """What one till of this gateway life has been sent."""

    __slots__ = ("till_id", "school_id", "seq", "confirmed_seq", "holds", "holding", "last_page")

    def __init__(self, till_id: int, school_id: int) -> None:
        self.till_id = till_id
        self.school_id = school_id
        self.seq = 0  # the low 32 bits of the last page's version
        self.confirmed_seq = -1  # the version the till held before the last page (-1: a RESET page)
        self.holds: dict[bytes, Hold] = {}
        self.holding: set[bytes] = set()  # cards this till is the holder for
        # The last page's effects, to roll back if the till never got it:
        # (identifier, delta, created the hold, op before)
        self.last_page: list[tuple[bytes, int, bool, int]] = []


class TillAllowances:
    """Every till's book, every pupil's holder, and the schools of unseen tills."""

    __slots__ = ("epoch", "books", "holder", "by_account", "unsynced", "pages_sent", "resets_sent")

    def __init__(self, epoch: int, tills: "dict[int, DeviceState] | None" = None) -> None:
        self.epoch = epoch & _SEQ_MASK
        self.books: dict[int, TillBook] = {}
        self.holder: dict[int, tuple[int, bytes]] = {}  # account id -> (till id, identifier)
        self.by_account: dict[int, dict[tuple[int, bytes], Hold]] = {}
        # school id -> tills registered when this life began that have not confirmed a RESET page
        # yet: they may hold allowances of the previous life.
        self.unsynced: dict[int, set[int]] = {}
        self.pages_sent = 0  # ALLOWANCE_PAGEs answered (plain counters, read by the metrics)
        self.resets_sent = 0  # of them fresh starts (RESET)
        for device in (tills or {}).values():
            if device.kind == _TILL and not device.revoked:
                self.unsynced.setdefault(device.school_id, set()).add(device.device_id)

    # ------------------------------------------------------------------ the rules' view

    def reserved_elsewhere(self, account_id: int, school_id: int, till_id: int, identifier: bytes, floor: int) -> int:
        """Money of this pupil a till other than (till_id, identifier) may still spend offline."""
        total = floor if self.unsynced.get(school_id) else 0
        pairs = self.by_account.get(account_id)
        if pairs:
            for (till, card), hold in pairs.items():
                if till != till_id or card != identifier:
                    total += hold.reserved
        return total

    def unseen_tills(self) -> int:
        """Tills that may still hold allowances of an earlier gateway life (their schools keep the
        floor reserved). Read from the metrics thread: a copy, and 0 if it changed meanwhile."""
        try:
            return sum(len(tills) for tills in list(self.unsynced.values()))
        except RuntimeError:
            return 0

    def reserved_total(self, account_id: int, school_id: int, floor: int) -> int:
        """Everything reserved for this pupil (the bound the tests check: never above the floor)."""
        return self.reserved_elsewhere(account_id, school_id, 0, b"", floor)

    # ------------------------------------------------------------------ purchases

    def spent(self, till_id: int, identifier: bytes, account_id: int, total_kopecks: int, online: bool,
              offline_on: bool) -> None:
        """An accepted PURCHASE (live or advice) at ``till_id`` with ``identifier``: the till lowered
        its allowance of the card by the total; an online one makes (till, card) the holder."""
        book = self.books.get(till_id)
        if book is not None:
            hold = book.holds.get(identifier)
            if hold is not None:
                hold.hold -= total_kopecks
        if online and offline_on:
            self._set_holder(account_id, till_id, identifier)

    def wanted_at(self, account_id: int, till_id: int, identifier: bytes) -> None:
        """An online purchase at ``till_id`` was refused because another till holds the pupil's
        money: the allowance moves here (released there at its next sync, so a retry a sync
        interval or two later finds the money free)."""
        self._set_holder(account_id, till_id, identifier)

    def _set_holder(self, account_id: int, till_id: int, identifier: bytes) -> None:
        before = self.holder.get(account_id)
        if before == (till_id, identifier):
            return
        if before is not None:
            old = self.books.get(before[0])
            if old is not None:
                old.holding.discard(before[1])  # its hold is released in its next page
        book = self.books.get(till_id)
        if book is None:
            self.holder.pop(account_id, None)  # not a till of this life yet: its first sync assigns
            return
        self.holder[account_id] = (till_id, identifier)
        book.holding.add(identifier)

    # ------------------------------------------------------------------ devices

    def till_gone(self, till_id: int) -> None:
        """A till revoked or removed: it can never replay, so nothing it holds is reserved."""
        book = self.books.pop(till_id, None)
        for tills in self.unsynced.values():
            tills.discard(till_id)
        if book is None:
            return
        for identifier, hold in book.holds.items():
            pairs = self.by_account.get(hold.account_id)
            if pairs is not None:
                pairs.pop((till_id, identifier), None)
                if not pairs:
                    del self.by_account[hold.account_id]
        for identifier in book.holding:
            account_id = self._account_of_holding(book, identifier)
            if account_id is not None and self.holder.get(account_id) == (till_id, identifier):
                del self.holder[account_id]

    def _account_of_holding(self, book: TillBook, identifier: bytes) -> int | None:
        hold = book.holds.get(identifier)
        if hold is not None:
            return hold.account_id
        for account_id, pair in self.holder.items():
            if pair == (book.till_id, identifier):
                return account_id
        return None

    # ------------------------------------------------------------------ ALLOWANCE_SYNC

    def page(self, state: "LedgerState", device: "DeviceState", version: int, now_ms: int) -> AllowancePage:
        """The answer to ALLOWANCE_SYNC(version) from ``device`` (a till)."""
        till_id, school_id = device.device_id, device.school_id
        policy = state.policy(school_id)
        floor, per_card = policy.offline_floor_kopecks, policy.offline_sales_per_card_max
        book = self.books.get(till_id)
        epoch, seq = version >> _SEQ_BITS, version & _SEQ_MASK
        flags = 0
        if book is not None and book.school_id != school_id:
            self.till_gone(till_id)  # moved to another school: start again there
            book = None
        if book is not None and epoch == self.epoch and seq == book.seq:
            self._confirm(book)
        elif book is not None and epoch == self.epoch and seq == book.confirmed_seq:
            self._roll_back(book)  # the last page never arrived
        else:
            if book is not None:
                # A till of this life with a version we did not send (lost its storage): what it
                # holds is unknown until it confirms the RESET page, like a till of the last life.
                self.till_gone(till_id)
                self.unsynced.setdefault(school_id, set()).add(till_id)
            book = self.books[till_id] = TillBook(till_id, school_id)
            book.confirmed_seq = -1
            # MORE: the till confirms the RESET page at once, so that it counts as seen.
            flags = LIST_FLAG_RESET | LIST_FLAG_MORE
        entries = self._review(state, book, floor, now_ms)
        if len(entries) > ALLOWANCE_PAGE_ENTRIES_MAX:
            entries = entries[:ALLOWANCE_PAGE_ENTRIES_MAX]
            flags |= LIST_FLAG_MORE
        if flags & LIST_FLAG_RESET:
            book.confirmed_seq = -1
        else:
            book.confirmed_seq = book.seq
        book.seq = (book.seq + 1) & _SEQ_MASK
        book.last_page = []
        self.pages_sent += 1
        self.resets_sent += bool(flags & LIST_FLAG_RESET)
        out = []
        for identifier, account_id, delta, op in entries:
            hold = book.holds.get(identifier)
            created = hold is None
            if hold is None:
                hold = book.holds[identifier] = Hold(account_id)
                self.by_account.setdefault(account_id, {})[(till_id, identifier)] = hold
            book.last_page.append((identifier, delta, created, hold.op))
            hold.hold += delta
            if delta < 0:
                hold.release -= delta
            hold.op = op
            out.append(AllowanceEntry(op, delta, identifier))
        return AllowancePage((self.epoch << _SEQ_BITS) | book.seq, flags, floor, per_card, tuple(out))

    def _confirm(self, book: TillBook) -> None:
        """The till applied the last page: its releases count no more; a RESET page makes it known."""
        for identifier, _delta, _created, _op in book.last_page:
            hold = book.holds.get(identifier)
            if hold is not None:
                hold.release = 0
        book.last_page = []
        if book.confirmed_seq == -1:
            tills = self.unsynced.get(book.school_id)
            if tills is not None:
                tills.discard(book.till_id)
                if not tills:
                    del self.unsynced[book.school_id]
        book.confirmed_seq = book.seq

    def _roll_back(self, book: TillBook) -> None:
        """Undo the last page exactly: the till never applied it (purchases since were applied
        by both sides to what each had)."""
        for identifier, delta, created, op in reversed(book.last_page):
            hold = book.holds.get(identifier)
            if hold is None:
                continue
            if created:
                del book.holds[identifier]
                pairs = self.by_account.get(hold.account_id)
                if pairs is not None:
                    pairs.pop((book.till_id, identifier), None)
                    if not pairs:
                        del self.by_account[hold.account_id]
                continue
            hold.hold -= delta
            if delta < 0:
                hold.release += delta
            hold.op = op
        book.last_page = []
        book.seq = book.confirmed_seq

    def _review(self, state: "LedgerState", book: TillBook, floor: int, now_ms: int) -> list[tuple[bytes, int, int, int]]:
        """(identifier, account id, delta, op) for every card of this till whose allowance or op
        must change: the holder's target, everyone else's release. In identifier order."""
        school_id, till_id = book.school_id, book.till_id
        identifiers = state.identifiers
        if floor and state.lists is not None:
            # Pupils of the school nobody holds yet: this till, on the pupil's first active card.
            holder = self.holder
            for identifier in state.lists.school(school_id).ids:
                account_id = identifiers.get(identifier)
                if account_id is None or account_id in holder or not _card_usable(state, identifier, now_ms):
                    continue
                holder[account_id] = (till_id, identifier)
                book.holding.add(identifier)
        cards = sorted(book.holding | book.holds.keys())
        unknown = bool(self.unsynced.get(school_id))
        out = []
        for identifier in cards:
            hold = book.holds.get(identifier)
            account_id = identifiers.get(identifier)
            if account_id is None or (hold is not None and hold.account_id != account_id):
                account_id = 0  # no longer this card's pupil: released, refused offline
            current = hold.hold if hold is not None else 0
            op = ALLOW if account_id and _card_usable(state, identifier, now_ms) else BLOCK
            if account_id and identifier in book.holding and self.holder.get(account_id) == (till_id, identifier):
                target = 0 if unknown or op == BLOCK else self._target(state, account_id, school_id, till_id, identifier, floor, now_ms)
                delta = target - current
            else:
                book.holding.discard(identifier)
                if hold is not None and self.holder.get(hold.account_id) == (till_id, identifier):
                    del self.holder[hold.account_id]  # the card left its pupil: assigned again
                delta = -current if current > 0 else 0
            delta = max(-DELTA_KOPECKS_MAX, min(DELTA_KOPECKS_MAX, delta))
            before_op = hold.op if hold is not None else None
            if delta or op != before_op:
                out.append((identifier, account_id or (hold.account_id if hold else 0), delta, op))
        return out

    def _target(self, state: "LedgerState", account_id: int, school_id: int, till_id: int, identifier: bytes,
                floor: int, now_ms: int) -> int:
        accounts = state.accounts
        if accounts.school[account_id] != school_id or accounts.status[account_id] != _ACCOUNT_ACTIVE:
            return 0
        controls = state.controls.get(account_id)
        if controls is not None and (
            controls.banned_products or controls.banned_categories or controls.blocked_allergens
            or controls.required_diet or controls.items_per_day_max >= 0 or controls.period_limits_kopecks
        ):
            return 0  # a till alone cannot check a parent's bans or per-item limits
        policy = state.policy(school_id)
        spendable = accounts.balance[account_id] + policy.grace_kopecks
        limit = accounts.limit[account_id]
        if limit != NO_LIMIT:
            spendable = min(spendable, limit - state.spent_today(account_id, now_ms))
        others = self.reserved_elsewhere(account_id, school_id, till_id, identifier, floor)
        target = min(floor, spendable) - others
        return target if target > 0 else 0


def _card_usable(state: "LedgerState", identifier: bytes, now_ms: int) -> bool:
    """An active card (not blocked, suspended or an expired temporary card) of an active account."""
    found = state.identifier_state.get(identifier)
    if found is not None:
        status, until_ms = found
        if status != _ACTIVE_CARD or (until_ms and now_ms >= until_ms):
            return False
    account_id = state.identifiers.get(identifier)
    return account_id is not None and state.accounts.status[account_id] == _ACCOUNT_ACTIVE
