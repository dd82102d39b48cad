"""The rules: pure decisions ``authorize_*(state, device, request, at_ms) -> Verdict``.

A synchronous function of the state, the request and the time passed in: no
await, no I/O, no clock. It only reads; the state change it asks for is in the
Verdict, and ``commit`` applies it. The machine (ledger.machine) calls both
before the reply is written, so check-then-debit is atomic without a lock.

``at_ms`` is the time the request is judged at: the gateway's clock for a live
request, the reader's clock for an ADVICE inside the offline window (the
machine decides which). Meal period, free meal and day counters all use it.

The rules (each rule is one check returning one named DenyReason):
- entry (CARD_PRESENTED): turnstile of the card's school; card known, active;
  account active; then the school's anti-passback rule (``passback``): entering
  while inside, leaving while outside, or entering again sooner than the school's
  interval is a violation: HARD denies it (ANTI_PASSBACK), SOFT allows it and the
  machine records it. Presence is the last counted passage's, on its own school
  day (every night resets it) and after the school's last reconciliation.
- passage (PASSAGE): a known card, and granted_txn names a CARD_PRESENTED this
  device was granted for the same card and direction and not yet used
  (NO_GRANT otherwise), within ``passage_window_ms`` of it on the turnstile's own
  clock (GRANT_EXPIRED otherwise). An accepted passage uses the grant up and sets
  the pupil's presence.
- purchase (PURCHASE, all or nothing): till of the card's school; card known,
  active (not blocked, not suspended, a temporary card not expired); account
  active; then the parent's controls, item by item (banned product, banned
  category, blocked allergen, required diet: the deny names the item), the
  item count per day and the limit of the current meal period; then a free
  meal (an entitled pupil's one hot meal a school day inside the lunch period
  is paid from the school's free-meal budget, and looks like any paid meal);
  then the balance covers the total, or the school's grace policy (an amount
  below zero, or a number of meals on credit) allows it; then what the school's
  other tills may still sell this pupil offline (``ledger.allowance``) is set
  aside: the balance less it must cover the total within the grace amount;
  then the daily limit, counting that reserved money as spent.
- cash top-up (TOPUP_CASH): till of the card's school; card known, active;
  account active; 0 < amount <= topup_kopecks_max. The same at the office desk
  (command cash_topup): a pupil's active account, the same cap, the school's desk
  drawer pays.
- a school that has no canteen revenue account sells nothing (WRONG_SCHOOL): its
  ledger accounts are opened with it (storage.ledger_accounts), so only a school
  written by hand can lack one, and no sale may credit a missing account.
- an ADVICE (the device already acted: offline sale, or a replay of an accepted
  sale) is never declined for a business reason: only the card must map to an
  account. The free meal still applies (judged at the time it happened). One
  exception: a cash top-up advice above the cap is a protocol violation (a
  conforming till cannot take it offline): AMOUNT_INVALID, nothing credited.
"""

from __future__ import annotations

import msgspec

from protocol import BalanceQuery, CardPresented, DenyReason, DeviceKind, Direction, Passage, Purchase, TopupCash

from .codes import AccountKind, AccountStatus, CommandKind, IdentifierStatus, JournalKind, PassbackMode, Presence
from .state import ESCORT_WINDOW_MS, NO_LIMIT, Controls, DeviceState, LedgerState, Product

KIND_ENTRY = int(JournalKind.ENTRY)
KIND_PASSAGE = int(JournalKind.PASSAGE)
KIND_PURCHASE = int(JournalKind.PURCHASE)
KIND_TOPUP = int(JournalKind.CASH_TOPUP)
KIND_BALANCE = int(JournalKind.BALANCE)
KIND_FIRE_ALARM = int(JournalKind.FIRE_ALARM)
KIND_FIRE_RESET = int(JournalKind.FIRE_RESET)
KIND_ESCORT = int(JournalKind.ESCORT)

# Display templates for accepts (denies use the DenyReason number as template id).
TEMPLATE_ACCEPT_ENTRY = 100
TEMPLATE_ACCEPT_EXIT = 101
TEMPLATE_ACCEPT_PURCHASE = 102
TEMPLATE_ACCEPT_TOPUP = 103
TEMPLATE_BALANCE = 104
TEMPLATE_PASSAGE_RECORDED = 105
TEMPLATE_FIRE_ALARM_ACCEPTED = 106
TEMPLATE_FIRE_RESET_ACCEPTED = 107
TEMPLATE_ESCORT_ACCEPTED = 108

OK = int(DenyReason.OK)
UNKNOWN_CARD = int(DenyReason.UNKNOWN_CARD)
CARD_BLOCKED = int(DenyReason.CARD_BLOCKED)
ACCOUNT_BLOCKED = int(DenyReason.ACCOUNT_BLOCKED)
WRONG_SCHOOL = int(DenyReason.WRONG_SCHOOL)
WRONG_DEVICE_KIND = int(DenyReason.WRONG_DEVICE_KIND)
INSUFFICIENT_FUNDS = int(DenyReason.INSUFFICIENT_FUNDS)
DAILY_LIMIT_EXCEEDED = int(DenyReason.DAILY_LIMIT_EXCEEDED)
AMOUNT_INVALID = int(DenyReason.AMOUNT_INVALID)
CARD_SUSPENDED = int(DenyReason.CARD_SUSPENDED)
CARD_EXPIRED = int(DenyReason.CARD_EXPIRED)
PRODUCT_BANNED = int(DenyReason.PRODUCT_BANNED)
CATEGORY_BANNED = int(DenyReason.CATEGORY_BANNED)
ALLERGEN_BLOCKED = int(DenyReason.ALLERGEN_BLOCKED)
DIET_RESTRICTED = int(DenyReason.DIET_RESTRICTED)
ITEM_COUNT_EXCEEDED = int(DenyReason.ITEM_COUNT_EXCEEDED)
PERIOD_LIMIT_EXCEEDED = int(DenyReason.PERIOD_LIMIT_EXCEEDED)
UNKNOWN_ACCOUNT = int(DenyReason.UNKNOWN_ACCOUNT)
NOT_SAME_FAMILY = int(DenyReason.NOT_SAME_FAMILY)
UNKNOWN_ORIGINAL = int(DenyReason.UNKNOWN_ORIGINAL)
REFUND_EXCEEDS = int(DenyReason.REFUND_EXCEEDS)
NO_GRANT = int(DenyReason.NO_GRANT)
ANTI_PASSBACK = int(DenyReason.ANTI_PASSBACK)
GRANT_EXPIRED = int(DenyReason.GRANT_EXPIRED)
ESCORT_REQUIRED = int(DenyReason.ESCORT_REQUIRED)
NO_ITEM = 0xFF
FREE_MEAL_PERIOD = "lunch"
# Till denies that come after the card and school checks passed: the cashier may
# see the pupil's balance (spec 9.2). Before them the card holder is unproven.
BALANCE_SHOWN_ON_DENY = frozenset(
    {
        INSUFFICIENT_FUNDS,
        DAILY_LIMIT_EXCEEDED,
        AMOUNT_INVALID,
        PRODUCT_BANNED,
        CATEGORY_BANNED,
        ALLERGEN_BLOCKED,
        DIET_RESTRICTED,
        ITEM_COUNT_EXCEEDED,
        PERIOD_LIMIT_EXCEEDED,
    }
)

TURNSTILE = int(DeviceKind.TURNSTILE)
TILL = int(DeviceKind.TILL)
_PUPIL = int(AccountKind.PUPIL)
_ACCOUNT_ACTIVE = int(AccountStatus.ACTIVE)
_BLOCKED = int(IdentifierStatus.BLOCKED)
_SUSPENDED = int(IdentifierStatus.SUSPENDED)
_IN = int(Direction.IN)
_INSIDE = int(Presence.INSIDE)
_OUTSIDE = int(Presence.OUTSIDE)
_HARD = int(PassbackMode.HARD)


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """A decision and the state change it asks for (nothing is applied yet)."""

    reason: int
    kind: int
    account_id: int = 0  # the pupil's account, 0 if the card is unknown
    debit_account_id: int = 0  # money leaves this account (0: no movement)
    credit_account_id: int = 0  # money enters this account
    amount_kopecks: int = 0
    params: tuple[int, ...] = ()  # display parameters of a deny
    item_index: int = NO_ITEM  # the basket line a deny is about
    items: int = 0  # purchase: units in the basket
    period: str = ""  # purchase: the meal period it falls in
    free_meal: bool = False  # purchase: paid from the free-meal budget
    on_grace: bool = False  # purchase: allowed below zero by the grace policy
    direction: int = 0  # entry, passage: protocol Direction
    passback: str = ""  # entry: the anti-passback rule it broke ("inside", "outside", "interval"), "" for none
    escort_id: int = 0  # entry (kindergarten): the trusted person the child goes with; KIND_ESCORT: the person
    reserved: int = 0  # purchase refused: the part of the money another till may still spend offline
    identifier: bytes = b""  # purchase refused for reserved money: the card presented


def _card(state: LedgerState, identifier: bytes, kind: int, at_ms: int) -> Verdict | int:
    """The account behind an active card, or a deny Verdict."""
    account_id = state.identifiers.get(identifier)
    if account_id is None:
        return Verdict(UNKNOWN_CARD, kind)
    card = state.identifier_state.get(identifier)
    if card is not None:
        status, until_ms = card
        if status == _BLOCKED:
            return Verdict(CARD_BLOCKED, kind, account_id)
        if status == _SUSPENDED:
            # Suspended while a temporary card stands for it, until expires_at_ms.
            if not until_ms or at_ms < until_ms:
                return Verdict(CARD_SUSPENDED, kind, account_id)
        elif until_ms and at_ms >= until_ms:
            return Verdict(CARD_EXPIRED, kind, account_id)
    if state.accounts.status[account_id] != _ACCOUNT_ACTIVE:
        return Verdict(ACCOUNT_BLOCKED, kind, account_id)
    return account_id


def _at_school(state: LedgerState, device: DeviceState, account_id: int, kind: int) -> Verdict | None:
    if state.accounts.school[account_id] != device.school_id:
        return Verdict(WRONG_SCHOOL, kind, account_id)
    return None


def passback(state: LedgerState, account_id: int, direction: int, at_ms: int) -> str:
    """The school's anti-passback rule a card used in ``direction`` at ``at_ms`` breaks:
    "inside" (entering while inside), "outside" (leaving while outside), "interval"
    (entering sooner than the school's interval after the last entry), or ""."""
    school_id = state.accounts.school[account_id]
    policy = state.policy(school_id)
    if not policy.anti_passback:
        return ""
    presence = state.presence_of(account_id, at_ms)
    if direction == _IN:
        if presence == _INSIDE:
            return "inside"
        interval = policy.passback_entry_interval_ms
        if interval:
            entry_ms = state.accounts.entry_ms[account_id]
            if (
                entry_ms
                and at_ms - entry_ms < interval
                and entry_ms > state.presence_reset_ms.get(school_id, 0)
                and state.day_of(school_id, entry_ms) == state.day_of(school_id, at_ms)
            ):
                return "interval"
    elif presence == _OUTSIDE:
        return "outside"
    return ""


def authorize_entry(state: LedgerState, device: DeviceState, request: CardPresented, at_ms: int) -> Verdict:
    if device.kind != TURNSTILE:
        return Verdict(WRONG_DEVICE_KIND, KIND_ENTRY)
    direction = request.direction
    if request.advice:
        account_id = state.identifiers.get(request.identifier)
        if account_id is None and request.identifier in state.escorts:
            return Verdict(OK, KIND_ESCORT, 0, direction=direction,
                           escort_id=state.escorts[request.identifier].representative_id)
        return Verdict(UNKNOWN_CARD if account_id is None else OK, KIND_ENTRY, account_id or 0, direction=direction)
    if request.identifier not in state.identifiers:
        escort = state.escorts.get(request.identifier)
        if escort is not None:  # a trusted person's card (kindergarten): the adult passes
            if escort.school_id != device.school_id:
                return Verdict(WRONG_SCHOOL, KIND_ESCORT)
            return Verdict(OK, KIND_ESCORT, 0, direction=direction, escort_id=escort.representative_id)
    found = _card(state, request.identifier, KIND_ENTRY, at_ms)
    if type(found) is Verdict:
        return found
    if state.accounts.school[found] != device.school_id:  # _at_school, inline (every tap at a door)
        return Verdict(WRONG_SCHOOL, KIND_ENTRY, found)
    escort_id = 0
    policy = state.policy(device.school_id)  # the card's school's too, from here on
    if policy.escort_required:
        # A kindergarten: the child goes with the trusted person whose card this turnstile
        # granted just before, or not at all (bringing and collecting alike).
        last = device.escort
        if last is None or at_ms - last[1] > ESCORT_WINDOW_MS or found not in last[0].children:
            return Verdict(ESCORT_REQUIRED, KIND_ENTRY, found, direction=direction)
        escort_id = last[0].representative_id
    if device.school_id in state.alarms:
        # an evacuation: never refused by passback
        return Verdict(OK, KIND_ENTRY, found, direction=direction, escort_id=escort_id)
    broken = passback(state, found, direction, at_ms) if policy.anti_passback else ""  # (passback's first test)
    if broken and policy.anti_passback == _HARD:
        return Verdict(ANTI_PASSBACK, KIND_ENTRY, found, direction=direction, passback=broken)
    return Verdict(OK, KIND_ENTRY, found, direction=direction, passback=broken, escort_id=escort_id)


def authorize_passage(
    state: LedgerState, device: DeviceState, request: Passage, at_ms: int, passage_window_ms: int
) -> Verdict:
    if device.kind != TURNSTILE:
        return Verdict(WRONG_DEVICE_KIND, KIND_PASSAGE)
    account_id = state.identifiers.get(request.identifier)
    if account_id is None:
        if request.identifier not in state.escorts:
            return Verdict(UNKNOWN_CARD, KIND_PASSAGE)
        account_id = 0  # the trusted person went through: recorded, nobody's presence
    grant = device.grants.get(request.granted_txn)
    if grant is None or grant.identifier != request.identifier or grant.direction != request.direction:
        # Not an opening this device reported for this card and direction, or one
        # already used: a forged, confused or second passage is not counted.
        return Verdict(NO_GRANT, KIND_PASSAGE, account_id)
    if request.reader_time_ms - grant.reader_time_ms > passage_window_ms:
        # The turnstile's own clock says the arm had locked again before this passage.
        return Verdict(GRANT_EXPIRED, KIND_PASSAGE, account_id)
    return Verdict(OK, KIND_PASSAGE, account_id, direction=request.direction, escort_id=grant.escort_id)


def item_refusal(controls: Controls, code: int, product: Product | None) -> int:
    """OK, or why a till refuses a basket with this product under the parent's controls (one
    rule: the till's decision and the parents' preview both come from here)."""
    if code in controls.banned_products:
        return PRODUCT_BANNED
    if product is None:
        # Unknown to the catalogue: it cannot be shown to respect the parent's
        # category, allergen or diet choices, so it does not pass them.
        if controls.blocked_allergens:
            return ALLERGEN_BLOCKED
        if controls.required_diet:
            return DIET_RESTRICTED
        if controls.banned_categories:
            return CATEGORY_BANNED
        return OK
    if product.category in controls.banned_categories:
        return CATEGORY_BANNED
    if not controls.blocked_allergens.isdisjoint(product.allergens):
        return ALLERGEN_BLOCKED
    if not controls.required_diet <= product.diet_flags:
        return DIET_RESTRICTED
    return OK


def _controls_deny(
    state: LedgerState, controls: Controls, school_id: int, request: Purchase, account_id: int, period: str, at_ms: int
) -> Verdict | None:
    """The first parent control the basket breaks, or None."""
    products = state.products
    for index, item in enumerate(request.items):
        code = item.product_code
        refusal = item_refusal(controls, code, products.get((school_id, code)))
        if refusal != OK:
            return Verdict(refusal, KIND_PURCHASE, account_id, item_index=index)
    accounts = state.accounts
    today = accounts.items_day[account_id] == state.day_of(school_id, at_ms)
    if controls.items_per_day_max >= 0:
        items_today = accounts.items_today[account_id] if today else 0
        count = sum([item.quantity for item in request.items])
        if items_today + count > controls.items_per_day_max:
            return Verdict(ITEM_COUNT_EXCEEDED, KIND_PURCHASE, account_id, params=(controls.items_per_day_max, items_today))
    limit = controls.period_limits_kopecks.get(period) if period else None
    if limit is not None:
        spent = accounts.period_spent.get(account_id, {}).get(period, 0) if today else 0
        if spent + request.total_kopecks > limit:
            return Verdict(PERIOD_LIMIT_EXCEEDED, KIND_PURCHASE, account_id, params=(limit, spent))
    return None


def _free_meal(state: LedgerState, school_id: int, account_id: int, request: Purchase, period: str, at_ms: int) -> int:
    """The free-meal budget account paying for this basket, or 0 if it is not a free meal."""
    if period != FREE_MEAL_PERIOD or len(request.items) != 1 or request.items[0].quantity != 1:
        return 0
    product = state.products.get((school_id, request.items[0].product_code))
    if product is None or not product.hot_meal:
        return 0
    if state.accounts.free_meal_day[account_id] >= state.day_of(school_id, at_ms):
        # One a school day, not carried over. A free meal recorded on a later day
        # than this (an old advice) hides whether this day's was taken: paid.
        return 0
    return state.free_meal_account.get(school_id, 0)


def authorize_purchase(state: LedgerState, device: DeviceState, request: Purchase, at_ms: int) -> Verdict:
    if device.kind != TILL:
        return Verdict(WRONG_DEVICE_KIND, KIND_PURCHASE)
    total = request.total_kopecks
    school = device.school_id
    revenue = state.revenue_account.get(school, 0)
    if not revenue:  # a school written by hand, without its ledger accounts: nothing to credit
        return Verdict(WRONG_SCHOOL, KIND_PURCHASE)
    accounts = state.accounts
    if request.advice:
        account_id = state.identifiers.get(request.identifier)
        if account_id is None:
            return Verdict(UNKNOWN_CARD, KIND_PURCHASE)
        count = sum([item.quantity for item in request.items])
        period = state.meal_period(school, at_ms)
        if accounts.free_meal[account_id]:
            budget = _free_meal(state, school, account_id, request, period, at_ms)
            if budget:
                return Verdict(OK, KIND_PURCHASE, account_id, budget, revenue, total, items=1, period=period,
                               free_meal=True)
        on_grace = accounts.balance[account_id] < total
        return Verdict(OK, KIND_PURCHASE, account_id, account_id, revenue, total, items=count, period=period,
                       on_grace=on_grace)
    found = _card(state, request.identifier, KIND_PURCHASE, at_ms)
    if type(found) is Verdict:
        return found
    account_id = found
    if accounts.school[account_id] != school:  # _at_school, inline (every sale)
        return Verdict(WRONG_SCHOOL, KIND_PURCHASE, account_id)
    controls = state.controls.get(account_id)
    entitled = accounts.free_meal[account_id]
    period = state.meal_period(school, at_ms) if controls is not None or entitled else ""
    if controls is not None:
        denied = _controls_deny(state, controls, school, request, account_id, period, at_ms)
        if denied is not None:
            return denied
    count = len(request.items) if controls is None else sum([item.quantity for item in request.items])
    if entitled:
        budget = _free_meal(state, school, account_id, request, period, at_ms)
        if budget:
            return Verdict(OK, KIND_PURCHASE, account_id, budget, revenue, total, items=1, period=period, free_meal=True)
    balance = accounts.balance[account_id]
    on_grace = balance < total
    policy = state.policy(school)
    if on_grace:
        if balance - total < -policy.grace_kopecks and accounts.grace_used[account_id] >= policy.grace_meals:
            return Verdict(INSUFFICIENT_FUNDS, KIND_PURCHASE, account_id, params=(total, balance))
    # Money another till may still spend offline (ledger.allowance) counts as spent: neither the
    # balance, the grace amount, a grace meal nor the daily limit reaches into it.
    floor = policy.offline_floor_kopecks
    reserved = state.allowances.reserved_elsewhere(account_id, school, device.device_id, request.identifier, floor) \
        if floor and state.allowances is not None else 0
    if reserved and balance - reserved - total < -policy.grace_kopecks:
        return Verdict(INSUFFICIENT_FUNDS, KIND_PURCHASE, account_id, params=(total, balance - reserved),
                       reserved=reserved, identifier=request.identifier)
    limit = accounts.limit[account_id]
    if limit != NO_LIMIT:
        spent = state.spent_today(account_id, at_ms) + reserved
        if spent + total > limit:
            return Verdict(DAILY_LIMIT_EXCEEDED, KIND_PURCHASE, account_id, params=(limit, spent))
    return Verdict(
        OK, KIND_PURCHASE, account_id, account_id, revenue, total, items=count, period=period, on_grace=on_grace
    )


def authorize_topup(
    state: LedgerState, device: DeviceState, request: TopupCash, at_ms: int, topup_kopecks_max: int
) -> Verdict:
    if device.kind != TILL:
        return Verdict(WRONG_DEVICE_KIND, KIND_TOPUP)
    amount = request.amount_kopecks
    if request.advice:
        account_id = state.identifiers.get(request.identifier)
        if account_id is None:
            return Verdict(UNKNOWN_CARD, KIND_TOPUP)
        if amount > topup_kopecks_max or not device.drawer_account_id:
            # A conforming till cannot take this much offline: a protocol violation.
            return Verdict(AMOUNT_INVALID, KIND_TOPUP, account_id, params=(amount, topup_kopecks_max))
        return Verdict(OK, KIND_TOPUP, account_id, device.drawer_account_id, account_id, amount)
    found = _card(state, request.identifier, KIND_TOPUP, at_ms)
    if type(found) is Verdict:
        return found
    account_id = found
    wrong = _at_school(state, device, account_id, KIND_TOPUP)
    if wrong is not None:
        return wrong
    if amount > topup_kopecks_max or not device.drawer_account_id:
        return Verdict(AMOUNT_INVALID, KIND_TOPUP, account_id, params=(amount, topup_kopecks_max))
    return Verdict(OK, KIND_TOPUP, account_id, device.drawer_account_id, account_id, amount)


def authorize_balance(state: LedgerState, device: DeviceState, request: BalanceQuery, at_ms: int) -> Verdict:
    if device.kind != TILL:
        return Verdict(WRONG_DEVICE_KIND, KIND_BALANCE)
    found = _card(state, request.identifier, KIND_BALANCE, at_ms)
    if type(found) is Verdict:
        return found
    return _at_school(state, device, found, KIND_BALANCE) or Verdict(OK, KIND_BALANCE, found)


class Original(msgspec.Struct, frozen=True):
    """The till purchase a refund names, with what was refunded of it already."""

    kind: int
    account_id: int
    debit_account_id: int
    credit_account_id: int
    amount_kopecks: int
    refunded_kopecks: int


def _pupil(state: LedgerState, account_id: object) -> bool:
    return type(account_id) is int and state.accounts.exists(account_id) and state.accounts.kind[account_id] == _PUPIL


def _amount(value: object, limit: int) -> bool:
    return type(value) is int and 0 < value <= limit


def authorize_command(
    state: LedgerState, kind: CommandKind, payload: dict, original: Original | None, amount_kopecks_max: int,
    topup_kopecks_max: int,
) -> Verdict:
    """A money command from the staff API or the payments webhook (see storage.commands)."""
    code = int(kind)
    if kind is CommandKind.cash_topup:
        # Cash at the school office's desk: the same cap as a till's cash top-up; the pupil's
        # account active; the school's desk drawer pays (storage.ledger_accounts opens it).
        account_id = payload.get("account_id")
        if not _pupil(state, account_id):
            return Verdict(UNKNOWN_ACCOUNT, code)
        amount = payload.get("amount_kopecks")
        drawer = state.desk_drawer_account.get(state.accounts.school[account_id], 0)
        if not _amount(amount, topup_kopecks_max) or not drawer:
            return Verdict(AMOUNT_INVALID, code, account_id, params=(amount if type(amount) is int else 0,
                                                                      topup_kopecks_max))
        if state.accounts.status[account_id] != _ACCOUNT_ACTIVE:
            return Verdict(ACCOUNT_BLOCKED, code, account_id)
        return Verdict(OK, code, account_id, drawer, account_id, amount)
    if kind is CommandKind.refund:
        if original is None or original.kind != KIND_PURCHASE:
            return Verdict(UNKNOWN_ORIGINAL, code)
        left = original.amount_kopecks - original.refunded_kopecks
        amount = payload.get("amount_kopecks")
        amount = left if amount is None else amount
        if type(amount) is not int or amount <= 0:
            return Verdict(AMOUNT_INVALID, code, original.account_id)
        if amount > left:
            return Verdict(REFUND_EXCEEDS, code, original.account_id, params=(amount, left))
        # The reversal of the purchase: revenue pays back whoever paid (pupil or free-meal budget).
        return Verdict(OK, code, original.account_id, original.credit_account_id, original.debit_account_id, amount)
    if kind is CommandKind.transfer:
        source, target = payload.get("from_account_id"), payload.get("to_account_id")
        if not _pupil(state, source) or not _pupil(state, target) or source == target:
            return Verdict(UNKNOWN_ACCOUNT, code)
        family = state.accounts.family
        if not family[source] or family[source] != family[target]:
            return Verdict(NOT_SAME_FAMILY, code, source)
        amount = payload.get("amount_kopecks")
        if not _amount(amount, amount_kopecks_max):
            return Verdict(AMOUNT_INVALID, code, source)
        available = state.accounts.balance[source]
        school = state.accounts.school[source]
        floor = state.policy(school).offline_floor_kopecks
        if floor and state.allowances is not None:
            available -= state.allowances.reserved_total(source, school, floor)  # a till may still spend it
        if available < amount:
            return Verdict(INSUFFICIENT_FUNDS, code, source, params=(amount, available))
        return Verdict(OK, code, source, source, target, amount)
    account_id = payload.get("account_id")
    if not _pupil(state, account_id):
        return Verdict(UNKNOWN_ACCOUNT, code)
    amount = payload.get("amount_kopecks")
    if kind is CommandKind.correction:
        if type(amount) is not int or amount == 0 or abs(amount) > amount_kopecks_max or not state.corrections_account:
            return Verdict(AMOUNT_INVALID, code, account_id)
        if amount > 0:
            return Verdict(OK, code, account_id, state.corrections_account, account_id, amount)
        return Verdict(OK, code, account_id, account_id, state.corrections_account, -amount)
    if not _amount(amount, amount_kopecks_max) or not state.clearing_account:
        return Verdict(AMOUNT_INVALID, code, account_id)
    if kind is CommandKind.bank_topup:
        return Verdict(OK, code, account_id, state.clearing_account, account_id, amount)
    # bank_refund: the acquirer has already paid the money back; it is never declined.
    return Verdict(OK, code, account_id, account_id, state.clearing_account, amount)


def commit(state: LedgerState, verdict: Verdict, at_ms: int) -> tuple[int, int, int]:
    """Apply an OK verdict judged at ``at_ms``. Returns (debit balance after, credit
    balance after, the pupil account that just fell below its low-balance threshold
    (one alert per crossing) or 0)."""
    assert verdict.reason == OK
    amount = verdict.amount_kopecks
    if not amount:
        if verdict.kind == KIND_PASSAGE:
            _count_passage(state, verdict, at_ms)
        return 0, 0, 0
    accounts = state.accounts
    balance = accounts.balance
    debit, credit = verdict.debit_account_id, verdict.credit_account_id
    balance[debit] -= amount
    balance[credit] += amount
    if verdict.kind == KIND_PURCHASE:
        _count_purchase(state, verdict, at_ms)
    alert = 0
    kinds = accounts.kind
    for account_id in (debit, credit):
        if kinds[account_id] != _PUPIL:
            continue
        after = balance[account_id]
        if after >= 0:
            accounts.grace_used[account_id] = 0
        threshold = state.policy(accounts.school[account_id]).low_balance_threshold_kopecks
        if after < threshold:
            if not accounts.low_alerted[account_id]:
                accounts.low_alerted[account_id] = 1  # one alert per crossing (hysteresis)
                alert = account_id
        elif accounts.low_alerted[account_id]:
            accounts.low_alerted[account_id] = 0
    return balance[debit], balance[credit], alert


def _count_passage(state: LedgerState, verdict: Verdict, at_ms: int) -> None:
    """A counted passage sets the pupil's presence; an older one replayed late does not
    undo a newer one (presence follows the latest passage in time, not in arrival)."""
    accounts = state.accounts
    pupil = verdict.account_id
    if not pupil or at_ms < accounts.passage_ms[pupil]:
        return  # a trusted person (nobody's presence), or older than what we know
    accounts.passage_ms[pupil] = at_ms
    if verdict.direction == _IN:
        accounts.presence[pupil] = _INSIDE
        accounts.entry_ms[pupil] = at_ms
    else:
        accounts.presence[pupil] = _OUTSIDE


def _count_purchase(state: LedgerState, verdict: Verdict, at_ms: int) -> None:
    """The per-day counters a purchase moves: daily spend, free meal, grace, item counts.

    Counters hold one day, the latest: a purchase judged on an earlier day (an old
    advice) moves the balance but no day counter.
    """
    accounts = state.accounts
    pupil = verdict.account_id
    day = state.day_of(accounts.school[pupil], at_ms)
    amount = verdict.amount_kopecks
    if verdict.free_meal:
        if day > accounts.free_meal_day[pupil]:
            accounts.free_meal_day[pupil] = day
    elif day >= accounts.spent_day[pupil]:
        if accounts.spent_day[pupil] != day:
            accounts.spent_day[pupil] = day
            accounts.spent[pupil] = 0
        accounts.spent[pupil] += amount
    if verdict.on_grace:
        accounts.grace_used[pupil] += 1
    if pupil in state.controls and day >= accounts.items_day[pupil]:
        if accounts.items_day[pupil] != day:
            accounts.items_day[pupil] = day
            accounts.items_today[pupil] = 0
            accounts.period_spent.pop(pupil, None)
        accounts.items_today[pupil] += verdict.items
        if verdict.period:
            spent = accounts.period_spent.setdefault(pupil, {})
            spent[verdict.period] = spent.get(verdict.period, 0) + amount


def accept_template(kind: int, direction: int, amount_kopecks: int, balance_kopecks: int) -> tuple[int, tuple[int, ...]]:
    """Display template and parameters of an accepted decision (also rebuilt after a restart)."""
    if kind == KIND_ENTRY:
        return (TEMPLATE_ACCEPT_ENTRY if direction == _IN else TEMPLATE_ACCEPT_EXIT), ()
    if kind == KIND_PASSAGE:
        return TEMPLATE_PASSAGE_RECORDED, ()
    if kind == KIND_PURCHASE:
        return TEMPLATE_ACCEPT_PURCHASE, (amount_kopecks, balance_kopecks)
    if kind == KIND_TOPUP:
        return TEMPLATE_ACCEPT_TOPUP, (amount_kopecks, balance_kopecks)
    if kind == KIND_FIRE_ALARM:
        return TEMPLATE_FIRE_ALARM_ACCEPTED, ()
    if kind == KIND_FIRE_RESET:
        return TEMPLATE_FIRE_RESET_ACCEPTED, ()
    if kind == KIND_ESCORT:
        return TEMPLATE_ESCORT_ACCEPTED, ()
    return TEMPLATE_BALANCE, (balance_kopecks,)
