"""The pure authorizer: every deny reason with its nearest allow, and commit's arithmetic.

No database, no sockets: a LedgerState built by hand, time passed in.
"""

from __future__ import annotations

import pytest

from ledger.rules import (
    KIND_ENTRY,
    KIND_PASSAGE,
    KIND_PURCHASE,
    KIND_TOPUP,
    OK,
    authorize_balance,
    authorize_entry,
    authorize_passage,
    authorize_purchase,
    authorize_topup,
    commit,
)
from ledger.codes import AccountKind, IdentifierStatus, PassbackMode, Presence
from ledger.rules import Verdict
from ledger.state import DAY_MS, NO_LIMIT, DeviceState, Grant, LedgerState, Policy
from gateway.display import render, template_names
from protocol import BalanceQuery, CardPresented, DenyReason, Item, Passage, Purchase, TopupCash, TXN_FLAG_ADVICE

NOW_MS = 1_795_550_000_000  # a fixed instant: the authorizer never reads a clock
CARD = b"\x04\x00\x00\x00\x00\x00\x01"
OTHER_SCHOOL_CARD = b"\x04\x00\x00\x00\x00\x00\x02"
BLOCKED_CARD = b"\x04\x00\x00\x00\x00\x00\x03"
BLOCKED_ACCOUNT_CARD = b"\x04\x00\x00\x00\x00\x00\x04"
UNKNOWN = b"\x08\x00\x00\x00\x00\x00\x01"
TOPUP_MAX = 1_500_000


@pytest.fixture
def cache() -> LedgerState:
    c = LedgerState()
    c.school_offset_ms = {1: 180 * 60_000, 2: 180 * 60_000}
    c.add_account((1, AccountKind.PUPIL, 1, 0, 10_000, NO_LIMIT))
    c.add_account((2, AccountKind.PUPIL, 2, 0, 10_000, NO_LIMIT))
    c.add_account((3, AccountKind.PUPIL, 1, 0, 10_000, NO_LIMIT))
    c.add_account((4, AccountKind.PUPIL, 1, 1, 10_000, NO_LIMIT))  # account blocked
    c.add_account((5, AccountKind.REVENUE, 1, 0, 0, NO_LIMIT))
    c.add_account((6, AccountKind.DRAWER, 1, 0, -40_000, NO_LIMIT))
    c.add_identifier(CARD, 1, 0)
    c.add_identifier(OTHER_SCHOOL_CARD, 2, 0)
    c.add_identifier(BLOCKED_CARD, 3, 1)
    c.add_identifier(BLOCKED_ACCOUNT_CARD, 4, 0)
    return c


TURNSTILE = DeviceState(1_000_001, 1, 1, b"k" * 16, 0, 0)
TILL = DeviceState(2_000_001, 1, 2, b"k" * 16, 6, 0)


def entry(card: bytes, flags: int = 0) -> CardPresented:
    return CardPresented(1, flags, 1, NOW_MS, card)


def purchase(card: bytes, price: int = 3_000, qty: int = 1, flags: int = 0) -> Purchase:
    return Purchase(2, flags, NOW_MS, price * qty, card, (Item(3, qty, price),))


def topup(card: bytes, amount: int = 5_000, flags: int = 0) -> TopupCash:
    return TopupCash(3, flags, NOW_MS, amount, 7, card)


# ---------------------------------------------------------------- entry


def test_entry_allowed_for_active_card_of_this_school(cache):
    v = authorize_entry(cache, TURNSTILE, entry(CARD), NOW_MS)
    assert (v.reason, v.kind, v.account_id, v.amount_kopecks) == (OK, KIND_ENTRY, 1, 0)


CARD_DENIALS = [
    (UNKNOWN, DenyReason.UNKNOWN_CARD),
    (BLOCKED_CARD, DenyReason.CARD_BLOCKED),
    (BLOCKED_ACCOUNT_CARD, DenyReason.ACCOUNT_BLOCKED),
    (OTHER_SCHOOL_CARD, DenyReason.WRONG_SCHOOL),
]
# Each request that names a card, with the device it is allowed on (the nearest
# allow of every card deny is the same request with CARD: see the *_allowed tests).
CARD_REQUESTS = {
    "entry": lambda cache, card: authorize_entry(cache, TURNSTILE, entry(card), NOW_MS),
    "purchase": lambda cache, card: authorize_purchase(cache, TILL, purchase(card), NOW_MS),
    "topup": lambda cache, card: authorize_topup(cache, TILL, topup(card), NOW_MS, TOPUP_MAX),
}


@pytest.mark.parametrize("request_kind", list(CARD_REQUESTS))
@pytest.mark.parametrize("card, reason", CARD_DENIALS)
def test_card_denied(cache, request_kind, card, reason):
    assert CARD_REQUESTS[request_kind](cache, card).reason == reason


def test_entry_at_a_till_is_wrong_device_kind(cache):
    assert authorize_entry(cache, TILL, entry(CARD), NOW_MS).reason == DenyReason.WRONG_DEVICE_KIND


def test_entry_advice_is_never_declined_even_for_a_card_blocked_since(cache):
    v = authorize_entry(cache, TURNSTILE, entry(BLOCKED_CARD, TXN_FLAG_ADVICE), NOW_MS)
    assert v.reason == OK and v.account_id == 3


WINDOW_MS = 10_000


def grant(device: DeviceState, txn: int, card: bytes, direction: int = 1, reader_ms: int = NOW_MS) -> None:
    device.grant(txn, Grant(card, 0, direction, reader_ms, reader_ms), 256)


def passage(device: DeviceState, p: Passage, cache: LedgerState):
    return authorize_passage(cache, device, p, NOW_MS, WINDOW_MS)


def test_passage_recorded_for_known_card_unknown_refused(cache):
    grant(TURNSTILE, 1, BLOCKED_CARD)  # the turnstile opened for it (txn 1), then it was blocked
    grant(TURNSTILE, 3, CARD)
    assert passage(TURNSTILE, Passage(2, 0, 1, NOW_MS, 1, BLOCKED_CARD), cache).reason == OK
    assert passage(TURNSTILE, Passage(4, 0, 1, NOW_MS, 3, CARD), cache).reason == OK
    assert passage(TURNSTILE, Passage(2, 0, 1, NOW_MS, 1, UNKNOWN), cache).reason == DenyReason.UNKNOWN_CARD
    assert passage(TILL, Passage(2, 0, 1, NOW_MS, 1, CARD), cache).reason == DenyReason.WRONG_DEVICE_KIND
    assert passage(TURNSTILE, Passage(2, 0, 1, NOW_MS, 1, CARD), cache).kind == KIND_PASSAGE


def test_passage_naming_no_grant_of_this_card_is_no_grant(cache):
    grant(TURNSTILE, 11, CARD)
    never_granted = Passage(13, 0, 1, NOW_MS, 12, CARD)
    assert passage(TURNSTILE, never_granted, cache).reason == DenyReason.NO_GRANT
    other_card = Passage(13, 0, 1, NOW_MS, 11, BLOCKED_CARD)
    assert passage(TURNSTILE, other_card, cache).reason == DenyReason.NO_GRANT
    other_way = Passage(13, 0, 2, NOW_MS, 11, CARD)  # granted IN, went OUT: not this opening
    assert passage(TURNSTILE, other_way, cache).reason == DenyReason.NO_GRANT
    assert passage(TURNSTILE, Passage(13, 0, 1, NOW_MS, 11, CARD), cache).reason == OK


def test_passage_after_the_window_on_the_turnstiles_own_clock_is_grant_expired(cache):
    # The turnstile's clock runs a minute ahead of the gateway's: only its own two times count.
    ahead = NOW_MS + 60_000
    grant(TURNSTILE, 21, CARD, reader_ms=ahead)
    assert passage(TURNSTILE, Passage(22, 0, 1, ahead + WINDOW_MS, 21, CARD), cache).reason == OK
    late = Passage(22, 0, 1, ahead + WINDOW_MS + 1, 21, CARD)
    assert passage(TURNSTILE, late, cache).reason == DenyReason.GRANT_EXPIRED


# ---------------------------------------------------------------- anti-passback


def passage_verdict(cache: LedgerState, account_id: int, direction: int, at_ms: int):
    v = Verdict(OK, KIND_PASSAGE, account_id, direction=direction)
    commit(cache, v, at_ms)


def policy(cache: LedgerState, mode: PassbackMode, interval_ms: int = 0) -> None:
    cache.policies[1] = Policy(anti_passback=int(mode), passback_entry_interval_ms=interval_ms)


def entering(cache, at_ms=NOW_MS, direction=1):
    return authorize_entry(cache, TURNSTILE, CardPresented(1, 0, direction, at_ms, CARD), at_ms)


def test_passback_off_lets_a_card_in_twice(cache):
    passage_verdict(cache, 1, 1, NOW_MS - 60_000)
    assert cache.presence_of(1, NOW_MS) == Presence.INSIDE
    v = entering(cache)
    assert (v.reason, v.passback) == (OK, "")


@pytest.mark.parametrize("mode", [PassbackMode.SOFT, PassbackMode.HARD])
def test_passback_entering_while_inside_and_leaving_while_outside(cache, mode):
    policy(cache, mode)
    expected = OK if mode is PassbackMode.SOFT else DenyReason.ANTI_PASSBACK
    assert (entering(cache).reason, entering(cache).passback) == (OK, "")  # nothing known today: allowed
    assert entering(cache, direction=2).reason == OK  # leaving with unknown presence: allowed
    passage_verdict(cache, 1, 1, NOW_MS - 60_000)
    v = entering(cache)
    assert (v.reason, v.passback) == (expected, "inside")
    assert entering(cache, direction=2).passback == ""  # inside: leaving is right
    passage_verdict(cache, 1, 2, NOW_MS - 30_000)
    v = entering(cache, direction=2)
    assert (v.reason, v.passback) == (expected, "outside")
    assert entering(cache).passback == ""  # outside: entering is right (no interval set)


def test_passback_timed_interval_between_two_entries(cache):
    policy(cache, PassbackMode.HARD, interval_ms=5 * 60_000)
    passage_verdict(cache, 1, 1, NOW_MS - 120_000)
    passage_verdict(cache, 1, 2, NOW_MS - 60_000)  # out again a minute later
    v = entering(cache)  # two minutes after the last entry: too soon
    assert (v.reason, v.passback) == (DenyReason.ANTI_PASSBACK, "interval")
    assert entering(cache, at_ms=NOW_MS + 3 * 60_000).reason == OK  # five minutes after it


def test_presence_resets_every_night_and_on_reconciliation(cache):
    policy(cache, PassbackMode.HARD)
    passage_verdict(cache, 1, 1, NOW_MS)
    assert entering(cache, at_ms=NOW_MS + 1).reason == DenyReason.ANTI_PASSBACK
    next_day = NOW_MS + DAY_MS
    assert cache.presence_of(1, next_day) == Presence.UNKNOWN
    assert entering(cache, at_ms=next_day).reason == OK
    # an evacuation: reconciled, everyone may enter again
    cache.presence_reset_ms[1] = NOW_MS + 2
    assert cache.presence_of(1, NOW_MS + 3) == Presence.UNKNOWN
    assert entering(cache, at_ms=NOW_MS + 3).reason == OK


def test_an_old_passage_replayed_late_does_not_undo_a_newer_one(cache):
    passage_verdict(cache, 1, 1, NOW_MS)
    passage_verdict(cache, 1, 2, NOW_MS - 10_000)  # an offline exit from before, replayed now
    assert cache.presence_of(1, NOW_MS + 1) == Presence.INSIDE
    assert cache.inside(1, NOW_MS + 1) == [1]
    assert cache.inside(2, NOW_MS + 1) == []


# ---------------------------------------------------------------- purchase


def test_purchase_allowed_moves_money_pupil_to_revenue(cache):
    v = authorize_purchase(cache, TILL, purchase(CARD), NOW_MS)
    assert (v.reason, v.kind, v.debit_account_id, v.credit_account_id, v.amount_kopecks) == (OK, KIND_PURCHASE, 1, 5, 3_000)
    assert commit(cache, v, NOW_MS) == (7_000, 3_000, 1)  # 70 rubles: below the default 100-ruble alert threshold
    assert cache.ledger_total() == 10_000 * 4 - 40_000


def test_purchase_of_exactly_the_balance_is_allowed(cache):
    assert authorize_purchase(cache, TILL, purchase(CARD, 10_000), NOW_MS).reason == OK


def test_purchase_over_the_balance_is_insufficient_funds(cache):
    v = authorize_purchase(cache, TILL, purchase(CARD, 10_001), NOW_MS)
    assert v.reason == DenyReason.INSUFFICIENT_FUNDS and v.params == (10_001, 10_000)
    assert "100,01" in render(v.reason, v.params)


def test_purchase_at_a_turnstile_is_wrong_device_kind(cache):
    assert authorize_purchase(cache, TURNSTILE, purchase(CARD), NOW_MS).reason == DenyReason.WRONG_DEVICE_KIND


def test_daily_limit_allows_up_to_the_limit_then_denies(cache):
    cache.accounts.limit[1] = 5_000
    first = authorize_purchase(cache, TILL, purchase(CARD, 2_500), NOW_MS)
    assert first.reason == OK
    commit(cache, first, NOW_MS)
    second = authorize_purchase(cache, TILL, purchase(CARD, 2_500), NOW_MS)
    assert second.reason == OK  # exactly the limit
    commit(cache, second, NOW_MS)
    third = authorize_purchase(cache, TILL, purchase(CARD, 1), NOW_MS)
    assert third.reason == DenyReason.DAILY_LIMIT_EXCEEDED and third.params == (5_000, 5_000)


def test_daily_limit_resets_at_school_midnight_not_utc(cache):
    cache.accounts.limit[1] = 3_000
    offset = cache.school_offset_ms[1]
    # 23:59 Moscow time and 00:01 the next Moscow day.
    day = (NOW_MS + offset) // DAY_MS
    before_midnight = (day + 1) * DAY_MS - offset - 60_000
    after_midnight = before_midnight + 120_000
    v = authorize_purchase(cache, TILL, purchase(CARD, 3_000), before_midnight)
    commit(cache, v, before_midnight)
    assert authorize_purchase(cache, TILL, purchase(CARD, 1), before_midnight).reason == DenyReason.DAILY_LIMIT_EXCEEDED
    assert authorize_purchase(cache, TILL, purchase(CARD, 1), after_midnight).reason == OK


def test_purchase_advice_is_never_declined_and_may_go_negative(cache):
    v = authorize_purchase(cache, TILL, purchase(CARD, 20_000, flags=TXN_FLAG_ADVICE), NOW_MS)
    assert v.reason == OK
    assert commit(cache, v, NOW_MS)[0] == -10_000


def test_purchase_advice_for_unknown_card_cannot_be_booked(cache):
    v = authorize_purchase(cache, TILL, purchase(UNKNOWN, flags=TXN_FLAG_ADVICE), NOW_MS)
    assert v.reason == DenyReason.UNKNOWN_CARD


# ---------------------------------------------------------------- top-up and balance


def test_topup_allowed_moves_money_drawer_to_pupil(cache):
    v = authorize_topup(cache, TILL, topup(CARD), NOW_MS, TOPUP_MAX)
    assert (v.reason, v.kind, v.debit_account_id, v.credit_account_id) == (OK, KIND_TOPUP, 6, 1)
    assert commit(cache, v, NOW_MS) == (-45_000, 15_000, 0)


def test_topup_at_the_maximum_allowed_above_denied(cache):
    assert authorize_topup(cache, TILL, topup(CARD, TOPUP_MAX), NOW_MS, TOPUP_MAX).reason == OK
    v = authorize_topup(cache, TILL, topup(CARD, TOPUP_MAX + 1), NOW_MS, TOPUP_MAX)
    assert v.reason == DenyReason.AMOUNT_INVALID


def test_topup_at_a_turnstile_is_wrong_device_kind(cache):
    assert authorize_topup(cache, TURNSTILE, topup(CARD), NOW_MS, TOPUP_MAX).reason == DenyReason.WRONG_DEVICE_KIND


def test_balance_query(cache):
    assert authorize_balance(cache, TILL, BalanceQuery(CARD), NOW_MS).reason == OK
    assert authorize_balance(cache, TILL, BalanceQuery(UNKNOWN), NOW_MS).reason == DenyReason.UNKNOWN_CARD
    assert authorize_balance(cache, TURNSTILE, BalanceQuery(CARD), NOW_MS).reason == DenyReason.WRONG_DEVICE_KIND


def test_authorizer_reads_only(cache):
    before = (bytes(cache.accounts.balance), bytes(cache.accounts.spent), dict(cache.identifiers), dict(cache.identifier_state))
    for card in (CARD, UNKNOWN, BLOCKED_CARD, OTHER_SCHOOL_CARD):
        authorize_purchase(cache, TILL, purchase(card), NOW_MS)
        authorize_topup(cache, TILL, topup(card), NOW_MS, TOPUP_MAX)
        authorize_entry(cache, TURNSTILE, entry(card), NOW_MS)
    assert before == (bytes(cache.accounts.balance), bytes(cache.accounts.spent), dict(cache.identifiers), dict(cache.identifier_state))


def test_every_deny_reason_has_a_russian_template_of_the_same_name():
    names = template_names()
    for reason in DenyReason:
        if reason is DenyReason.OK:
            continue
        assert names[int(reason)] == reason.name
        text = render(int(reason), (100, 200))
        assert any("а" <= ch <= "я" for ch in text.lower()), text
