"""Offline tills with bounded risk (ledger.allowance, docs/protocol.md 4.16 and 10.14).

The tills are played here as the spec says a till behaves (``Till``), against the real machine:
many tills of one school, pupils trying every till while tills drop off and come back, pages
lost on the way, replies lost with a sale in flight, and gateway restarts. After every step:

- what all tills together may still sell a pupil alone is at most the school's floor;
- what a till may sell a card alone is at most what the gateway keeps reserved for it;

and once every till is back and has replayed: no pupil is below the grace amount and the
ledger sums to zero.
"""

from __future__ import annotations

import random

import pytest

from ledger.state import Policy
from protocol import (
    LIST_FLAG_MORE,
    LIST_FLAG_RESET,
    TXN_FLAG_ADVICE,
    AllowancePage,
    AllowanceSync,
    Decision,
    DenyReason,
    DeviceKind,
    Item,
    ListOp,
    Outcome,
    Purchase,
)
from ledger.state import DeviceState

from machine_support import (
    DRAWER,
    FREE_MEALS,
    KEY,
    LIMITS,
    LUNCH_MEAL,
    PUPILS,
    TILL_ID,
    TURNSTILE_ID,
    ListJournal,
    Store,
    at,
    card,
    fresh_state,
    hello,
)
from ledger.machine import Machine

FLOOR = 15_000
PER_CARD = 3
GRACE = 2_000
PRICES = (3_000, 4_500, 7_000, 9_000, 12_000, 16_000)
SECOND_CARD = b"\x05\x00\x00\x00\x00\x00\x01"  # pupil 1's bracelet


def till_ids(n: int) -> list[int]:
    return [TILL_ID + i for i in range(n)]  # TILL_ID and fresh_state's extra tills


def options(tills: int) -> dict:
    policy = Policy(grace_kopecks=GRACE, low_balance_threshold_kopecks=10_000,
                    offline_floor_kopecks=FLOOR, offline_sales_per_card_max=PER_CARD)
    return {"policy": policy, "extra_tills": tills - 1, "extra_cards": ((SECOND_CARD, 1),)}


def school_state(tills: int):
    state = fresh_state(**options(tills))
    state.build_lists(epoch=1)  # as the gateway does after its load
    return state


class Till:
    """A till as docs/protocol.md 4.16 / 10.14 say it behaves."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.version = 0
        self.cards: dict[bytes, list[int]] = {}  # identifier -> [op, allowance, offline sales]
        self.floor = 0
        self.per_card = 0
        self.online = False
        self.txn = 0
        self.kept: list[Purchase] = []  # offline sales, in txn order, until replayed
        self.offline_sold = 0  # kopecks sold alone, ever
        self.in_flight: set[int] = set()  # txns decided alone after their reply was lost
        self.unposted = 0  # kopecks sold alone that the gateway had refused online (in flight)

    def device(self, machine: Machine):
        return machine.state.devices[self.device_id]

    def connect(self, machine: Machine, now: int, *, lose_page: bool = False) -> None:
        assert hello(machine, self.device_id, now).__class__.__name__ == "HelloAck"
        self.online = True
        for advice in self.kept:  # replay before anything new (10.5), the sync included
            decision = machine.request(self.device(machine), advice, now, 0)
            assert type(decision) is Decision, decision
            if decision.outcome != Outcome.ACCEPT:
                # Only a sale in flight the gateway had already refused online: its stored DENY
                # comes back (10.14), the meal was given within the till's allowance.
                assert advice.txn in self.in_flight and decision.flags, decision
                self.unposted += advice.total_kopecks
        self.kept = []
        self.sync(machine, now, lose_page=lose_page)

    def sync(self, machine: Machine, now: int, *, lose_page: bool = False) -> None:
        while True:
            page = machine.request(self.device(machine), AllowanceSync(self.version), now, 0)
            assert type(page) is AllowancePage, page
            if lose_page:
                self.online = False  # the link died with the page on its way
                return
            if page.flags & LIST_FLAG_RESET:
                self.cards.clear()
            for e in page.entries:
                if e.op == ListOp.REMOVE:
                    self.cards.pop(e.identifier, None)
                    continue
                entry = self.cards.setdefault(e.identifier, [e.op, 0, 0])
                entry[0] = e.op
                entry[1] += e.delta_kopecks
            self.version, self.floor, self.per_card = page.version, page.floor_kopecks, page.sales_per_card_max
            if not page.flags & LIST_FLAG_MORE:
                return

    def purchase(self, identifier: bytes, total: int, now: int) -> Purchase:
        self.txn += 1
        return Purchase(self.txn, 0, now, total, identifier, (Item(LUNCH_MEAL, 1, total),))

    def sell_online(self, machine: Machine, identifier: bytes, total: int, now: int, *, lose_reply: bool) -> bool:
        request = self.purchase(identifier, total, now)
        decision = machine.request(self.device(machine), request, now, 0)
        if lose_reply:
            # The link died with the sale in flight: decided alone under the same txn (10.14).
            self.online = False
            return self.sell_offline(identifier, total, now, in_flight=request)
        if decision.outcome == Outcome.ACCEPT and identifier in self.cards:
            entry = self.cards[identifier]
            entry[1] -= total
            entry[2] = 0
        return decision.outcome == Outcome.ACCEPT

    def refusal(self, identifier: bytes, total: int) -> int:
        entry = self.cards.get(identifier)
        if entry is None:
            return DenyReason.OFFLINE_LIMIT  # the till cannot tell an unknown card from one held elsewhere
        if entry[0] == ListOp.BLOCK:
            return DenyReason.CARD_BLOCKED
        if entry[1] < total or entry[2] >= self.per_card or total > self.floor:
            return DenyReason.OFFLINE_LIMIT
        return DenyReason.OK

    def sell_offline(self, identifier: bytes, total: int, now: int, *, in_flight: Purchase | None = None) -> bool:
        if in_flight is not None:
            self.txn = in_flight.txn  # used, whatever the till decides now
            if identifier in self.cards:
                # The gateway may have accepted it (and counted it spent): spent here too,
                # whatever the till decides alone now (10.14).
                self.cards[identifier][1] -= total
            entry = self.cards.get(identifier)
            ok = entry is not None and entry[0] == ListOp.ALLOW and entry[1] >= 0 and entry[2] < self.per_card \
                and total <= self.floor
            if not ok:
                return False
            self.in_flight.add(in_flight.txn)
            entry[2] += 1
            self.kept.append(Purchase(in_flight.txn, TXN_FLAG_ADVICE, in_flight.reader_time_ms, total, identifier,
                                      in_flight.items))
            self.offline_sold += total
            return True
        if self.refusal(identifier, total) != DenyReason.OK:
            return False
        if in_flight is not None:
            advice = Purchase(in_flight.txn, TXN_FLAG_ADVICE, in_flight.reader_time_ms, total, identifier,
                              in_flight.items)
        else:
            self.txn += 1
            advice = Purchase(self.txn, TXN_FLAG_ADVICE, now, total, identifier, (Item(LUNCH_MEAL, 1, total),))
        entry = self.cards[identifier]
        entry[1] -= total
        entry[2] += 1
        self.kept.append(advice)
        self.offline_sold += total
        return True


def cards_of(pupil: int) -> list[bytes]:
    return [card(pupil), SECOND_CARD] if pupil == 1 else [card(pupil)]


def check_bounds(machine: Machine, tills: list[Till]) -> None:
    allowances = machine.state.allowances
    assert allowances is not None
    for pupil in range(1, PUPILS + 1):
        alone = sum(max(0, t.cards[c][1]) for t in tills for c in cards_of(pupil)
                    if c in t.cards and t.cards[c][0] == ListOp.ALLOW)
        assert alone <= FLOOR, f"pupil {pupil}: tills may sell {alone} alone, floor {FLOOR}"
        assert allowances.reserved_total(pupil, 1, FLOOR) <= FLOOR or allowances.unsynced.get(1)
    for till in tills:
        book = allowances.books.get(till.device_id)
        for identifier, (op, allowance, _) in till.cards.items():
            hold = book.holds.get(identifier) if book is not None else None
            reserved = hold.reserved if hold is not None else 0
            if book is None or till.version >> 32 != allowances.epoch:
                # A till of an earlier gateway life: its school counts the floor as unseen.
                assert allowances.unsynced.get(1) and till.device_id in allowances.unsynced[1]
                continue
            assert allowance <= reserved, f"till {till.device_id} card {identifier.hex()}: {allowance} > {reserved}"


def settle(machine: Machine, tills: list[Till], now: int) -> None:
    for till in tills:
        till.connect(machine, now)


def run(seed: int, tills_n: int, steps: int, *, restarts: bool) -> tuple[Machine, list[Till], int]:
    rng = random.Random(seed)
    store = Store()
    journal = ListJournal()
    state = school_state(tills_n)
    machine = Machine(state, journal, LIMITS)
    tills = [Till(i) for i in till_ids(tills_n)]
    now = at(12, 0)
    for till in tills:
        till.connect(machine, now)
    offline_sales = 0
    usual: dict[int, Till] = {}
    for step in range(steps):
        now += rng.randrange(1, 20_000)
        roll = rng.random()
        till = rng.choice(tills)
        if roll < 0.07:
            till.online = False  # the link to this till is cut
        elif roll < 0.10 and not till.online:
            till.connect(machine, now, lose_page=rng.random() < 0.2)
        elif roll < 0.13 and till.online:
            till.sync(machine, now, lose_page=rng.random() < 0.2)
        elif roll < 0.145:
            pupil = rng.randrange(1, PUPILS + 1)  # a parent's top-up by bank card
            result = machine.command(10_000 + step, "bank_topup", {"account_id": pupil, "amount_kopecks": 20_000},
                                     None, now, 0)
            assert result.status == 1, result
        elif roll < 0.15 and restarts:
            store.commit(machine, journal)
            machine, journal = store.reload(**options(tills_n))
            for t in tills:
                t.online = False  # every session died with the gateway
        else:
            pupil = rng.randrange(1, PUPILS + 1)
            if pupil in usual and rng.random() < 0.6:
                till = usual[pupil]  # most pupils queue at the same till most days
            usual[pupil] = till
            identifier = rng.choice(cards_of(pupil))
            total = rng.choice(PRICES)
            if till.online:
                till.sell_online(machine, identifier, total, now, lose_reply=rng.random() < 0.05)
                if till.online and rng.random() < 0.5:
                    till.sync(machine, now, lose_page=rng.random() < 0.1)  # its timer (every 30 s)
            elif till.sell_offline(identifier, total, now):
                offline_sales += 1
        if len(journal.queue) > 64:
            store.commit(machine, journal)
        check_bounds(machine, tills)
    now += 60_000
    settle(machine, tills, now)
    check_bounds(machine, tills)
    return machine, tills, offline_sales


@pytest.mark.parametrize("seed", range(6))
def test_many_tills_offline_never_expose_more_than_the_floor(seed):
    machine, tills, offline_sales = run(seed, tills_n=8, steps=2_500, restarts=False)
    assert offline_sales >= 10, "the run must actually sell offline"
    for pupil in range(1, PUPILS + 1):
        assert machine.state.accounts.balance[pupil] >= -GRACE, (pupil, machine.state.accounts.balance[pupil])
    assert machine.state.ledger_total() == 0


@pytest.mark.parametrize("seed", range(4))
def test_gateway_restarts_do_not_lose_what_tills_hold(seed):
    machine, tills, offline_sales = run(100 + seed, tills_n=5, steps=2_500, restarts=True)
    assert offline_sales >= 10
    for pupil in range(1, PUPILS + 1):
        assert machine.state.accounts.balance[pupil] >= -GRACE, (pupil, machine.state.accounts.balance[pupil])
    assert machine.state.ledger_total() == 0


# ---------------------------------------------------------------- the rules one by one


def two_tills(balance: int = FLOOR * 3, **extra):
    state = fresh_state(**{**options(2), **extra})
    state.build_lists(epoch=1)
    for pupil in range(1, PUPILS + 1):
        state.accounts.balance[pupil] = balance
        state.accounts.balance[7] -= balance - 20_000  # the opening account keeps the ledger at zero
    machine = Machine(state, ListJournal(), LIMITS)
    a, b = Till(TILL_ID), Till(TILL_ID + 1)
    now = at(12, 0)
    a.connect(machine, now)
    b.connect(machine, now)
    a.sync(machine, now)  # the first till to sync holds every pupil; both have confirmed their RESET
    return machine, a, b, now


def test_the_first_till_holds_every_pupil_one_floor_each_and_the_other_nothing():
    machine, a, b, _ = two_tills()
    assert {c: v[1] for c, v in a.cards.items()} == {c: FLOOR for c in [card(p) for p in range(1, PUPILS + 1)]}
    assert all(v[1] == 0 for v in b.cards.values())
    assert a.floor == FLOOR and a.per_card == PER_CARD
    assert machine.state.allowances.reserved_total(3, 1, FLOOR) == FLOOR


def test_a_low_balance_is_set_aside_for_the_holder_and_a_purchase_elsewhere_moves_it():
    machine, a, b, now = two_tills(balance=10_000)
    assert a.cards[card(3)][1] == 10_000 + GRACE  # what the pupil may spend, not the floor
    # At B the money A may still sell alone is not there: refused, and the allowance moves to B.
    assert not b.sell_online(machine, card(3), 4_500, now, lose_reply=False)
    a.sync(machine, now)  # A releases it...
    assert a.cards[card(3)][1] == 0
    assert not b.sell_online(machine, card(3), 4_500, now, lose_reply=False)  # ...not yet confirmed
    a.sync(machine, now)  # ...and confirms
    assert b.sell_online(machine, card(3), 4_500, now, lose_reply=False)
    b.sync(machine, now)
    assert b.cards[card(3)][1] == 10_000 + GRACE - 4_500


def test_a_grace_meal_never_reaches_into_money_another_till_holds():
    machine, a, b, now = two_tills(balance=3_000, policy=Policy(
        grace_kopecks=0, grace_meals=2, offline_floor_kopecks=FLOOR, offline_sales_per_card_max=PER_CARD))
    assert a.cards[card(2)][1] == 3_000
    refused = machine.request(b.device(machine), b.purchase(card(2), 9_000, now), now, 0)
    assert refused.reason == DenyReason.INSUFFICIENT_FUNDS and refused.params == (9_000, 0)
    # At the holder itself the grace meal is given: what it holds there is spent by this sale.
    assert a.sell_online(machine, card(2), 9_000, now, lose_reply=False)
    assert a.cards[card(2)][1] == 3_000 - 9_000


def test_a_blocked_card_goes_on_the_hot_list_and_its_allowance_is_taken_back():
    machine, a, _, now = two_tills()
    machine.state.add_identifier(card(4), 4, 1)  # blocked
    a.sync(machine, now)
    assert a.cards[card(4)] == [ListOp.BLOCK, 0, 0]
    assert a.refusal(card(4), 100) == DenyReason.CARD_BLOCKED


def test_a_pupil_with_a_parents_ban_gets_no_offline_allowance():
    from ledger.state import Controls

    machine, a, _, now = two_tills()
    machine.state.controls[5] = Controls({}, -1, frozenset({LUNCH_MEAL}), frozenset(), frozenset(), frozenset(), "")
    a.sync(machine, now)
    assert a.cards[card(5)][1] == 0


def test_no_floor_no_offline_sales():
    machine, a, b, now = two_tills(policy=Policy(offline_floor_kopecks=0, offline_sales_per_card_max=3))
    assert all(v[1] == 0 for v in a.cards.values()) and a.floor == 0
    assert a.refusal(card(1), 100) == DenyReason.OFFLINE_LIMIT


def test_consecutive_offline_sales_are_capped_and_an_online_sale_resets_the_count():
    machine, a, _, now = two_tills(balance=100_000)
    a.online = False
    for _ in range(PER_CARD):
        assert a.sell_offline(card(1), 1_000, now)
    assert a.refusal(card(1), 1_000) == DenyReason.OFFLINE_LIMIT  # allowance left, cap reached
    a.connect(machine, now)
    assert a.sell_online(machine, card(1), 1_000, now, lose_reply=False)
    assert a.cards[card(1)][2] == 0


def test_allowance_sync_from_a_turnstile_is_refused():
    machine, *_ = two_tills()
    hello(machine, TURNSTILE_ID, at(12, 0))
    refused = machine.request(machine.state.devices[TURNSTILE_ID], AllowanceSync(0), at(12, 0), 0)
    assert type(refused) is Decision and refused.reason == DenyReason.WRONG_DEVICE_KIND


def test_an_offline_lunch_is_judged_free_at_the_time_it_was_sold():
    """Sold alone at 12:30 (the lunch period), replayed at 15:00: the free meal applies, the
    pupil pays nothing; the same sale replayed with a reader time after lunch would be paid."""
    machine, a, _, _ = two_tills(free_meal_pupils=(2,))
    machine.state.free_meal_account[1] = FREE_MEALS
    from machine_support import FREE_MEALS as _  # noqa: F401  (the budget account of the school)
    a.online = False
    sold_at = at(12, 30)
    assert a.sell_offline(card(2), 9_000, sold_at)
    assert a.sell_offline(card(3), 9_000, at(15, 0))  # not entitled: paid
    before2, before3 = machine.state.accounts.balance[2], machine.state.accounts.balance[3]
    a.connect(machine, at(15, 5))
    assert machine.state.accounts.balance[2] == before2, "the free meal, judged at 12:30"
    assert machine.state.accounts.balance[3] == before3 - 9_000
    assert machine.state.accounts.free_meal_day[2] == machine.state.day_of(1, sold_at)


def test_a_revoked_till_holds_nothing_and_its_pupils_go_to_the_next_till_that_syncs():
    machine, a, b, now = two_tills(balance=10_000)
    allowances = machine.state.allowances
    assert allowances.reserved_elsewhere(3, 1, b.device_id, card(3), FLOOR) == 10_000 + GRACE
    allowances.till_gone(a.device_id)  # revoked through the staff API
    assert allowances.reserved_elsewhere(3, 1, b.device_id, card(3), FLOOR) == 0
    b.sync(machine, now)
    assert b.cards[card(3)][1] == 10_000 + GRACE
