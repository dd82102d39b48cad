"""Pure decisions: ``authorize(cache, device, request, now_ms) -> Verdict``.

A synchronous function of the cache state, the request and the time passed in:
no await, no I/O, no clock. It only reads; the state change it asks for is in
the Verdict, and ``commit`` applies it. Both run in the connection's data
callback before the reply is written, so check-then-debit is atomic without a
lock (the event loop runs one callback at a time).

The rules of this version (the rule table stays open: each rule is one check
returning one named DenyReason):
- entry (CARD_PRESENTED): turnstile of the card's school; card known, active;
  account active.
- passage (PASSAGE): always recorded for a known card (it has happened).
- purchase (PURCHASE): till of the card's school; card known, active; account
  active; balance covers the total; the daily limit is not exceeded.
- cash top-up (TOPUP_CASH): till of the card's school; card known, active;
  account active; 0 < amount <= topup_kopecks_max.
- an ADVICE (the device already acted: offline sale, or a replay of an accepted
  sale) is never declined: only the card must map to an account.
"""

from __future__ import annotations

import msgspec

from protocol import (
    BalanceQuery,
    CardPresented,
    DenyReason,
    DeviceKind,
    Direction,
    Passage,
    Purchase,
    TopupCash,
)

from .cache import ACCOUNT_ACTIVE, NO_LIMIT, Cache, DeviceState

# Journal kinds (storage schema: journal.kind).
KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP, KIND_BALANCE = 1, 2, 3, 4, 5
KIND_NAMES = {KIND_ENTRY: "entry", KIND_PASSAGE: "passage", KIND_PURCHASE: "purchase", KIND_TOPUP: "topup", KIND_BALANCE: "balance"}

# Display templates for accepts (denies use the DenyReason number as template id).
TEMPLATE_ACCEPT_ENTRY = 100
TEMPLATE_ACCEPT_EXIT = 101
TEMPLATE_ACCEPT_PURCHASE = 102
TEMPLATE_ACCEPT_TOPUP = 103
TEMPLATE_BALANCE = 104
TEMPLATE_PASSAGE_RECORDED = 105

OK = int(DenyReason.OK)
UNKNOWN_CARD = int(DenyReason.UNKNOWN_CARD)
CARD_BLOCKED = int(DenyReason.CARD_BLOCKED)
ACCOUNT_BLOCKED = int(DenyReason.ACCOUNT_BLOCKED)
WRONG_SCHOOL = int(DenyReason.WRONG_SCHOOL)
WRONG_DEVICE_KIND = int(DenyReason.WRONG_DEVICE_KIND)
INSUFFICIENT_FUNDS = int(DenyReason.INSUFFICIENT_FUNDS)
DAILY_LIMIT_EXCEEDED = int(DenyReason.DAILY_LIMIT_EXCEEDED)
AMOUNT_INVALID = int(DenyReason.AMOUNT_INVALID)

TURNSTILE = int(DeviceKind.TURNSTILE)
TILL = int(DeviceKind.TILL)


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """A decision and the state change it asks for (nothing is applied yet)."""

    reason: int
    kind: int
    account_id: int = 0  # the pupil's account, 0 if the card is unknown
    debit_account_id: int = 0  # money leaves this account (0: no movement)
    credit_account_id: int = 0  # money enters this account
    amount_kopecks: int = 0
    params: tuple[int, ...] = ()  # display parameters of a deny


def _card(cache: Cache, identifier: bytes, kind: int) -> Verdict | int:
    """The account behind an active card, or a deny Verdict."""
    account_id = cache.identifiers.get(identifier)
    if account_id is None:
        return Verdict(UNKNOWN_CARD, kind)
    if identifier in cache.blocked_identifiers:
        return Verdict(CARD_BLOCKED, kind, account_id)
    if cache.accounts.status[account_id] != ACCOUNT_ACTIVE:
        return Verdict(ACCOUNT_BLOCKED, kind, account_id)
    return account_id


def _at_school(cache: Cache, device: DeviceState, account_id: int, kind: int) -> Verdict | None:
    if cache.accounts.school[account_id] != device.school_id:
        return Verdict(WRONG_SCHOOL, kind, account_id)
    return None


def authorize_entry(cache: Cache, device: DeviceState, request: CardPresented, now_ms: int) -> Verdict:
    if device.kind != TURNSTILE:
        return Verdict(WRONG_DEVICE_KIND, KIND_ENTRY)
    if request.advice:
        account_id = cache.identifiers.get(request.identifier)
        return Verdict(UNKNOWN_CARD if account_id is None else OK, KIND_ENTRY, account_id or 0)
    found = _card(cache, request.identifier, KIND_ENTRY)
    if type(found) is Verdict:
        return found
    return _at_school(cache, device, found, KIND_ENTRY) or Verdict(OK, KIND_ENTRY, found)


def authorize_passage(cache: Cache, device: DeviceState, request: Passage, now_ms: int) -> Verdict:
    if device.kind != TURNSTILE:
        return Verdict(WRONG_DEVICE_KIND, KIND_PASSAGE)
    account_id = cache.identifiers.get(request.identifier)
    if account_id is None:
        return Verdict(UNKNOWN_CARD, KIND_PASSAGE)
    return Verdict(OK, KIND_PASSAGE, account_id)


def authorize_purchase(cache: Cache, device: DeviceState, request: Purchase, now_ms: int) -> Verdict:
    if device.kind != TILL:
        return Verdict(WRONG_DEVICE_KIND, KIND_PURCHASE)
    total = request.total_kopecks
    revenue = cache.revenue_account.get(device.school_id, 0)
    if request.advice:
        account_id = cache.identifiers.get(request.identifier)
        if account_id is None:
            return Verdict(UNKNOWN_CARD, KIND_PURCHASE)
        return Verdict(OK, KIND_PURCHASE, account_id, account_id, revenue, total)
    found = _card(cache, request.identifier, KIND_PURCHASE)
    if type(found) is Verdict:
        return found
    account_id = found
    wrong = _at_school(cache, device, account_id, KIND_PURCHASE)
    if wrong is not None:
        return wrong
    accounts = cache.accounts
    balance = accounts.balance[account_id]
    if balance < total:
        return Verdict(INSUFFICIENT_FUNDS, KIND_PURCHASE, account_id, params=(total, balance))
    limit = accounts.limit[account_id]
    if limit != NO_LIMIT:
        spent = cache.spent_today(account_id, now_ms)
        if spent + total > limit:
            return Verdict(DAILY_LIMIT_EXCEEDED, KIND_PURCHASE, account_id, params=(limit, spent))
    return Verdict(OK, KIND_PURCHASE, account_id, account_id, revenue, total)


def authorize_topup(
    cache: Cache, device: DeviceState, request: TopupCash, now_ms: int, topup_kopecks_max: int
) -> Verdict:
    if device.kind != TILL:
        return Verdict(WRONG_DEVICE_KIND, KIND_TOPUP)
    amount = request.amount_kopecks
    if request.advice:
        account_id = cache.identifiers.get(request.identifier)
        if account_id is None:
            return Verdict(UNKNOWN_CARD, KIND_TOPUP)
        return Verdict(OK, KIND_TOPUP, account_id, device.drawer_account_id, account_id, amount)
    found = _card(cache, request.identifier, KIND_TOPUP)
    if type(found) is Verdict:
        return found
    account_id = found
    wrong = _at_school(cache, device, account_id, KIND_TOPUP)
    if wrong is not None:
        return wrong
    if amount > topup_kopecks_max or not device.drawer_account_id:
        return Verdict(AMOUNT_INVALID, KIND_TOPUP, account_id, params=(amount, topup_kopecks_max))
    return Verdict(OK, KIND_TOPUP, account_id, device.drawer_account_id, account_id, amount)


def authorize_balance(cache: Cache, device: DeviceState, request: BalanceQuery) -> Verdict:
    if device.kind != TILL:
        return Verdict(WRONG_DEVICE_KIND, KIND_BALANCE)
    found = _card(cache, request.identifier, KIND_BALANCE)
    if type(found) is Verdict:
        return found
    return _at_school(cache, device, found, KIND_BALANCE) or Verdict(OK, KIND_BALANCE, found)


def commit(cache: Cache, verdict: Verdict, now_ms: int) -> tuple[int, int]:
    """Apply an OK verdict's movement. Returns (debit balance after, credit balance after)."""
    assert verdict.reason == OK
    amount = verdict.amount_kopecks
    if not amount:
        return 0, 0
    balance = cache.accounts.balance
    debit, credit = verdict.debit_account_id, verdict.credit_account_id
    balance[debit] -= amount
    balance[credit] += amount
    if verdict.kind == KIND_PURCHASE:
        accounts = cache.accounts
        day = cache.day_of(accounts.school[debit], now_ms)
        if accounts.spent_day[debit] != day:
            accounts.spent_day[debit] = day
            accounts.spent[debit] = 0
        accounts.spent[debit] += amount
    return balance[debit], balance[credit]


def accept_template(kind: int, direction: int, amount_kopecks: int, balance_kopecks: int) -> tuple[int, tuple[int, ...]]:
    """Display template and parameters of an accepted decision (also rebuilt after a restart)."""
    if kind == KIND_ENTRY:
        return (TEMPLATE_ACCEPT_ENTRY if direction == Direction.IN else TEMPLATE_ACCEPT_EXIT), ()
    if kind == KIND_PASSAGE:
        return TEMPLATE_PASSAGE_RECORDED, ()
    if kind == KIND_PURCHASE:
        return TEMPLATE_ACCEPT_PURCHASE, (amount_kopecks, balance_kopecks)
    if kind == KIND_TOPUP:
        return TEMPLATE_ACCEPT_TOPUP, (amount_kopecks, balance_kopecks)
    return TEMPLATE_BALANCE, (balance_kopecks,)
