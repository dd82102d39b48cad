"""Reference data into the cache: at start (all of it) and when it changes (one entity).

Balances are never taken from here once an account is known: the gateway is
their only writer. A new account (enrolled through the staff API) brings its
opening balance with it.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from protocol import PreorderLine
from protocol.limits import PHOTO_REF_BYTES_MAX, PREORDER_LINES_MAX
from storage import snapshot
from storage.journal import decode_items

from .cache import (
    ACCOUNT_PUPIL,
    DAY_MS,
    NO_LIMIT,
    Cache,
    Controls,
    DeviceState,
    MealPeriod,
    Policy,
    Product,
)


def controls_from_row(row: Any) -> Controls:
    account_id, limits_json, items_max, products, categories, allergens, diet, note = row
    return Controls(
        period_limits_kopecks={str(k): int(v) for k, v in msgspec.json.decode(limits_json).items()},
        items_per_day_max=int(items_max),
        banned_products=frozenset(products or ()),
        banned_categories=frozenset(categories or ()),
        blocked_allergens=frozenset(allergens or ()),
        required_diet=frozenset(diet or ()),
        cashier_note=note or "",
    )


def apply_school_reference(cache: Cache, data: dict[str, list], school_id: int | None = None) -> None:
    if school_id is not None:
        cache.products = {key: p for key, p in cache.products.items() if key[0] != school_id}
        cache.policies.pop(school_id, None)
        cache.meal_periods.pop(school_id, None)
    for sid, offset_minutes in data["schools"]:
        cache.school_offset_ms[sid] = offset_minutes * 60_000
    for sid, code, category, allergens, diet, hot in data["products"]:
        cache.products[(sid, code)] = Product(code, category, frozenset(allergens or ()), frozenset(diet or ()), hot)
    for sid, grace, grace_meals, threshold in data["policies"]:
        cache.policies[sid] = Policy(grace, grace_meals, threshold)
    periods: dict[int, list[MealPeriod]] = {}
    for sid, name, starts, ends in data["periods"]:
        periods.setdefault(sid, []).append(MealPeriod(name, starts, ends))
    for sid, items in periods.items():
        cache.meal_periods[sid] = tuple(items)


def apply_pupil(cache: Cache, row: Any) -> None:
    account_id, category, family_id, photo_ref = row
    if account_id < len(cache.accounts.kind):
        cache.accounts.free_meal[account_id] = 1 if category else 0
        cache.accounts.family[account_id] = family_id
        if photo_ref:
            cache.photo_refs[account_id] = photo_ref[:PHOTO_REF_BYTES_MAX]
        else:
            cache.photo_refs.pop(account_id, None)


def apply_preorders(cache: Cache, rows: list, account_id: int | None = None) -> None:
    """Rows (account_id, day as school-day number, product_code, quantity) of upcoming days."""
    if account_id is not None:
        cache.preorders.pop(account_id, None)
    else:
        cache.preorders.clear()
    for acc, day, code, quantity in rows:
        days = cache.preorders.setdefault(acc, {})
        lines = days.get(day, ())
        if len(lines) < PREORDER_LINES_MAX:
            days[day] = lines + (PreorderLine(code, quantity),)


def apply_account(cache: Cache, row: Any) -> None:
    account_id, kind, school_id, status, balance, limit = row
    accounts = cache.accounts
    if accounts.exists(account_id):
        accounts.kind[account_id] = kind
        accounts.school[account_id] = school_id
        accounts.status[account_id] = status
        accounts.limit[account_id] = limit
    else:
        cache.add_account(row)


def apply_identifier(cache: Cache, identifier: bytes, row: Any | None) -> None:
    if row is None:
        cache.remove_identifier(identifier)
        return
    ident, account_id, status, expires_at_ms = row
    cache.add_identifier(bytes(ident), account_id, status, expires_at_ms)


def apply_device(cache: Cache, device_id: int, row: Any | None) -> None:
    existing = cache.devices.get(device_id)
    if row is None:
        if existing is not None:
            cache.devices.pop(device_id)
            if existing.session is not None:
                existing.session.close("device removed")
        return
    if existing is None:
        cache.devices[device_id] = DeviceState(
            row["id"], row["school_id"], row["kind"], bytes(row["key"]), row["drawer_account_id"], row["durable_txn"]
        )
        return
    changed_identity = existing.key != bytes(row["key"]) or existing.kind != row["kind"]
    existing.school_id = row["school_id"]
    existing.kind = row["kind"]
    existing.key = bytes(row["key"])
    existing.drawer_account_id = row["drawer_account_id"]
    if changed_identity and existing.session is not None:
        existing.session.close("device key or kind changed")  # it must authenticate again


async def load_reference(conn: asyncpg.Connection, cache: Cache, now_ms: int) -> None:
    """Everything of schema 0002 the authorizer needs, plus today's counters."""
    apply_school_reference(cache, await snapshot.school_reference(conn))
    for row in await snapshot.identifiers_with_state(conn):
        apply_identifier(cache, bytes(row[0]), row)
    async for chunk in snapshot.pupils(conn):
        for row in chunk:
            apply_pupil(cache, row)
    for row in await snapshot.controls(conn):
        cache.controls[row[0]] = controls_from_row(row)
    apply_preorders(cache, await snapshot.preorders(conn))
    await rebuild_counters(conn, cache, now_ms)
    accounts = cache.accounts
    for account_id in range(1, len(accounts)):
        if accounts.kind[account_id] == ACCOUNT_PUPIL:
            threshold = cache.policy(accounts.school[account_id]).low_balance_threshold_kopecks
            # Below the threshold at start: its alert was (or is being) given.
            accounts.low_alerted[account_id] = 1 if accounts.balance[account_id] < threshold else 0


async def rebuild_counters(conn: asyncpg.Connection, cache: Cache, now_ms: int) -> None:
    """Today's item counts, meal-period spend and free meals, from the journal."""
    earliest = min((cache.day_of(s, now_ms) * DAY_MS - off for s, off in cache.school_offset_ms.items()), default=now_ms)
    if cache.controls:
        for account_id, decided_ms, amount, items, _debit in await snapshot.purchases_since(
            conn, list(cache.controls), earliest
        ):
            controls = cache.controls[account_id]
            school = cache.accounts.school[account_id]
            day = cache.day_of(school, decided_ms)
            if day != cache.day_of(school, now_ms):
                continue
            if controls.day != day:
                controls.day, controls.items_today, controls.period_spent_kopecks = day, 0, {}
            controls.items_today += sum(quantity for _, quantity, _ in decode_items(items) or ())
            period = cache.meal_period(school, decided_ms)
            if period:
                spent = controls.period_spent_kopecks
                spent[period] = spent.get(period, 0) + amount
    budgets = list(cache.free_meal_account.values())
    if budgets:
        for account_id, decided_ms in await snapshot.free_meals_since(conn, budgets, earliest):
            school = cache.accounts.school[account_id]
            cache.accounts.free_meal_day[account_id] = cache.day_of(school, decided_ms)

