"""The till rules of the Moscow system and the cashless-catering anchors, in the pure authorizer.

Every deny reason has a test of the deny and of the nearest allow. Time is passed in.
"""

from __future__ import annotations

import pytest

from ledger.rules import authorize_entry, authorize_purchase, commit
from ledger.codes import AccountKind, IdentifierStatus
from ledger.state import DAY_MS, NO_LIMIT, LedgerState, Controls, DeviceState, MealPeriod, Policy, Product
from protocol import CardPresented, DenyReason, Item, Purchase

OFFSET_MS = 180 * 60_000  # Moscow
DAY = 20_500
MIDNIGHT_MS = DAY * DAY_MS - OFFSET_MS  # 00:00 school time of DAY


def at(hour: int, minute: int = 0) -> int:
    return MIDNIGHT_MS + (hour * 60 + minute) * 60_000


LUNCH = at(12, 30)
BREAKFAST = at(8, 30)
CARD = b"\x04\x00\x00\x00\x00\x00\x01"
TEMP = b"\x04\x00\x00\x00\x00\x01\x01"
TILL = DeviceState(2_000_001, 1, 2, b"k" * 16, 0, 0)
TURNSTILE = DeviceState(1_000_001, 1, 1, b"k" * 16, 0, 0)

BUN, LUNCH_MEAL, YOGHURT, SALAD, UNLISTED = 3, 2, 7, 8, 99


@pytest.fixture
def cache() -> LedgerState:
    c = LedgerState()
    c.school_offset_ms = {1: OFFSET_MS}
    c.add_account((1, AccountKind.PUPIL, 1, 0, 10_000, NO_LIMIT))
    c.add_account((2, AccountKind.REVENUE, 1, 0, 0, NO_LIMIT))
    c.add_account((3, AccountKind.FREE_MEALS, 1, 0, 0, NO_LIMIT))
    c.add_identifier(CARD, 1, 0)
    c.products = {
        (1, BUN): Product(BUN, "bakery", frozenset({"gluten"}), frozenset({"vegetarian"}), False),
        (1, LUNCH_MEAL): Product(LUNCH_MEAL, "lunch", frozenset({"gluten", "celery"}), frozenset(), True),
        (1, YOGHURT): Product(YOGHURT, "dairy", frozenset({"milk"}), frozenset({"vegetarian"}), False),
        (1, SALAD): Product(SALAD, "salad", frozenset(), frozenset({"vegetarian", "vegan"}), False),
    }
    c.meal_periods = {
        1: (MealPeriod("breakfast", 8 * 60, 10 * 60), MealPeriod("lunch", 11 * 60 + 30, 14 * 60 + 30))
    }
    c.policies = {1: Policy(grace_kopecks=0, grace_meals=0, low_balance_threshold_kopecks=5_000)}
    return c


def basket(*lines: tuple[int, int, int], txn: int = 1) -> Purchase:
    items = tuple(Item(code, qty, price) for code, qty, price in lines)
    return Purchase(txn, 0, 0, sum(q * p for _, q, p in lines), CARD, items)


def controls(**kw) -> Controls:
    base = dict(
        period_limits_kopecks={},
        items_per_day_max=-1,
        banned_products=frozenset(),
        banned_categories=frozenset(),
        blocked_allergens=frozenset(),
        required_diet=frozenset(),
        cashier_note="",
    )
    base.update(kw)
    return Controls(**base)


def decide(cache: LedgerState, purchase: Purchase, now_ms: int = LUNCH):
    return authorize_purchase(cache, TILL, purchase, now_ms)


def buy(cache: LedgerState, purchase: Purchase, now_ms: int = LUNCH):
    v = decide(cache, purchase, now_ms)
    assert v.reason == DenyReason.OK, v
    return commit(cache, v, now_ms)


# ---------------------------------------------------------------- bans, allergens, diet (item by item)


def test_banned_product_names_the_item_and_other_products_pass(cache):
    cache.controls[1] = controls(banned_products=frozenset({BUN}))
    v = decide(cache, basket((SALAD, 1, 4_000), (BUN, 1, 3_500)))
    assert (v.reason, v.item_index) == (DenyReason.PRODUCT_BANNED, 1)
    assert decide(cache, basket((SALAD, 1, 4_000))).reason == DenyReason.OK


def test_banned_category(cache):
    cache.controls[1] = controls(banned_categories=frozenset({"bakery"}))
    v = decide(cache, basket((BUN, 2, 3_500)))
    assert (v.reason, v.item_index) == (DenyReason.CATEGORY_BANNED, 0)
    assert decide(cache, basket((YOGHURT, 1, 5_500))).reason == DenyReason.OK


def test_blocked_allergen(cache):
    cache.controls[1] = controls(blocked_allergens=frozenset({"milk"}))
    v = decide(cache, basket((SALAD, 1, 4_000), (YOGHURT, 1, 5_500)))
    assert (v.reason, v.item_index) == (DenyReason.ALLERGEN_BLOCKED, 1)
    assert decide(cache, basket((BUN, 1, 3_500))).reason == DenyReason.OK


def test_required_diet(cache):
    cache.controls[1] = controls(required_diet=frozenset({"vegan"}))
    v = decide(cache, basket((BUN, 1, 3_500)))
    assert (v.reason, v.item_index) == (DenyReason.DIET_RESTRICTED, 0)
    assert decide(cache, basket((SALAD, 1, 4_000))).reason == DenyReason.OK


def test_unlisted_product_cannot_prove_it_is_safe(cache):
    cache.controls[1] = controls(blocked_allergens=frozenset({"peanuts"}))
    assert decide(cache, basket((UNLISTED, 1, 100))).reason == DenyReason.ALLERGEN_BLOCKED
    cache.controls[1] = controls(banned_products=frozenset({BUN}))
    assert decide(cache, basket((UNLISTED, 1, 100))).reason == DenyReason.OK


# ---------------------------------------------------------------- counts and limits


def test_item_count_per_day(cache):
    cache.controls[1] = controls(items_per_day_max=3)
    buy(cache, basket((BUN, 2, 100)))
    assert decide(cache, basket((BUN, 2, 100), txn=2)).reason == DenyReason.ITEM_COUNT_EXCEEDED
    assert decide(cache, basket((BUN, 1, 100), txn=2)).reason == DenyReason.OK
    # the next school day the count starts again
    assert decide(cache, basket((BUN, 3, 100), txn=3), LUNCH + DAY_MS).reason == DenyReason.OK


def test_meal_period_limit_applies_to_its_period_only(cache):
    cache.controls[1] = controls(period_limits_kopecks={"breakfast": 5_000})
    buy(cache, basket((BUN, 1, 3_500)), BREAKFAST)
    v = decide(cache, basket((BUN, 1, 3_500), txn=2), BREAKFAST)
    assert v.reason == DenyReason.PERIOD_LIMIT_EXCEEDED and v.params == (5_000, 3_500)
    assert decide(cache, basket((BUN, 1, 1_500), txn=2), BREAKFAST).reason == DenyReason.OK  # exactly the limit
    assert decide(cache, basket((BUN, 1, 3_500), txn=2), LUNCH).reason == DenyReason.OK


# ---------------------------------------------------------------- free meals


def test_free_hot_meal_once_a_day_in_the_lunch_window_from_the_budget(cache):
    cache.accounts.free_meal[1] = 1
    cache.accounts.balance[1] = 50_000
    v = decide(cache, basket((LUNCH_MEAL, 1, 16_500)))
    assert v.reason == DenyReason.OK and v.free_meal and v.debit_account_id == 3
    commit(cache, v, LUNCH)
    assert cache.accounts.balance[1] == 50_000 and cache.accounts.balance[3] == -16_500
    second = decide(cache, basket((LUNCH_MEAL, 1, 16_500), txn=2))
    assert not second.free_meal and second.debit_account_id == 1  # the second one is paid
    assert decide(cache, basket((LUNCH_MEAL, 1, 16_500), txn=3), LUNCH + DAY_MS).free_meal  # not carried over, renewed


def test_free_meal_only_inside_lunch_only_hot_only_entitled(cache):
    assert not decide(cache, basket((LUNCH_MEAL, 1, 16_500))).free_meal  # not entitled
    cache.accounts.free_meal[1] = 1
    assert not decide(cache, basket((LUNCH_MEAL, 1, 16_500)), BREAKFAST).free_meal
    assert not decide(cache, basket((BUN, 1, 3_500))).free_meal
    assert not decide(cache, basket((LUNCH_MEAL, 2, 16_500))).free_meal


def test_free_meal_decision_looks_like_a_paid_one():
    """Anonymous at the till: the template and its parameters are those of a paid meal."""
    from ledger.rules import KIND_PURCHASE, accept_template

    assert accept_template(KIND_PURCHASE, 0, 16_500, 10_000)[0] == accept_template(KIND_PURCHASE, 0, 16_500, 26_500)[0]


# ---------------------------------------------------------------- negative balance policy


def test_grace_amount(cache):
    cache.policies[1] = Policy(grace_kopecks=2_000)
    assert decide(cache, basket((BUN, 1, 12_000))).reason == DenyReason.OK
    assert decide(cache, basket((BUN, 1, 12_001))).reason == DenyReason.INSUFFICIENT_FUNDS


def test_grace_meals_then_refuse_and_reset_when_topped_up(cache):
    cache.policies[1] = Policy(grace_meals=2)
    cache.accounts.balance[1] = 0
    buy(cache, basket((BUN, 1, 3_000)))
    buy(cache, basket((BUN, 1, 3_000), txn=2))
    assert decide(cache, basket((BUN, 1, 3_000), txn=3)).reason == DenyReason.INSUFFICIENT_FUNDS
    cache.accounts.balance[1] = -6_000
    from ledger.rules import KIND_TOPUP, OK, Verdict

    commit(cache, Verdict(OK, KIND_TOPUP, 1, 3, 1, 10_000), LUNCH)  # back above zero
    assert cache.accounts.grace_used[1] == 0


# ---------------------------------------------------------------- low balance alert hysteresis


def test_low_balance_alert_once_per_crossing(cache):
    assert buy(cache, basket((BUN, 1, 4_000)))[2] == 0  # 60 rubles left, threshold 50
    assert buy(cache, basket((BUN, 1, 2_000), txn=2))[2] == 1  # crosses: one alert
    assert buy(cache, basket((BUN, 1, 1_000), txn=3))[2] == 0  # still below: no second alert
    from ledger.rules import KIND_TOPUP, OK, Verdict

    commit(cache, Verdict(OK, KIND_TOPUP, 1, 3, 1, 10_000), LUNCH)  # back above
    assert cache.accounts.low_alerted[1] == 0
    assert buy(cache, basket((BUN, 1, 10_000), txn=4))[2] == 1  # a new crossing, a new alert


# ---------------------------------------------------------------- temporary cards


def test_suspended_original_until_midnight_then_active_again(cache):
    cache.add_identifier(CARD, 1, IdentifierStatus.SUSPENDED, MIDNIGHT_MS + DAY_MS)
    assert decide(cache, basket((BUN, 1, 100))).reason == DenyReason.CARD_SUSPENDED
    assert authorize_entry(cache, TURNSTILE, CardPresented(1, 0, 1, 0, CARD), LUNCH).reason == DenyReason.CARD_SUSPENDED
    assert decide(cache, basket((BUN, 1, 100)), MIDNIGHT_MS + DAY_MS).reason == DenyReason.OK


def test_temporary_card_works_until_midnight_then_expired(cache):
    cache.add_identifier(TEMP, 1, 0, MIDNIGHT_MS + DAY_MS)
    p = Purchase(1, 0, 0, 100, TEMP, (Item(BUN, 1, 100),))
    assert decide(cache, p, MIDNIGHT_MS + DAY_MS - 1).reason == DenyReason.OK
    assert decide(cache, p, MIDNIGHT_MS + DAY_MS).reason == DenyReason.CARD_EXPIRED


def test_lost_card_blocked_for_good(cache):
    cache.add_identifier(CARD, 1, IdentifierStatus.BLOCKED)
    assert decide(cache, basket((BUN, 1, 100)), LUNCH + 365 * DAY_MS).reason == DenyReason.CARD_BLOCKED
