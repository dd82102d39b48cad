"""A pupil's parent controls: the daily limit (accounts.daily_limit_kopecks) and the rest
(account_controls): per-period limits, the item count, bans of products and categories, blocked
allergens, the required diet, the note for the cashier.

One writer for every surface that sets them (the staff API for an officer, the parents' pages
for a parent): validated against the school's products, audited with who did it, announced to
the gateway (``storage.changes``), all in the caller's transaction.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec

from .changes import notify


# The 14 EU allergens (Regulation 1169/2011, Annex II), the diet flags and the meal periods: the
# codes the API takes and the Russian a parent reads.
ALLERGENS_RU: dict[str, str] = {
    "celery": "сельдерей", "gluten": "глютен", "crustaceans": "ракообразные", "eggs": "яйца", "fish": "рыба",
    "lupin": "люпин", "milk": "молоко", "molluscs": "моллюски", "mustard": "горчица", "tree_nuts": "орехи",
    "peanuts": "арахис", "sesame": "кунжут", "soybeans": "соя", "sulphites": "сульфиты",
}
DIET_FLAGS_RU: dict[str, str] = {"vegetarian": "вегетарианское", "vegan": "веганское", "halal": "халяль",
                                 "kosher": "кошерное"}
MEAL_PERIODS_RU: dict[str, str] = {"breakfast": "завтрак", "lunch": "обед", "snack": "полдник"}
# Product categories are the schools' own words; these are the usual ones (others show as they are).
CATEGORIES_RU: dict[str, str] = {"breakfast": "завтраки", "lunch": "обеды", "bakery": "выпечка", "drinks": "напитки",
                                 "dairy": "молочное", "salad": "салаты", "sweets": "сладкое", "other": "прочее"}


class Controls(msgspec.Struct, kw_only=True):
    daily_limit_kopecks: int | None = None
    period_limits_kopecks: dict[str, int] = {}
    items_per_day_max: int | None = None
    banned_products: list[int] = []
    banned_categories: list[str] = []
    blocked_allergens: list[str] = []
    required_diet: list[str] = []
    cashier_note: str = ""


class UnknownProducts(ValueError):
    """Banned product codes the school does not sell."""

    def __init__(self, school_id: int, codes: list[int]) -> None:
        super().__init__(f"unknown product codes of school {school_id}: {codes}")
        self.codes = codes


async def load(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> Controls:
    limit = await conn.fetchval("SELECT daily_limit_kopecks FROM accounts WHERE id = $1", account_id)
    row = await conn.fetchrow("SELECT * FROM account_controls WHERE account_id = $1", account_id)
    if row is None:
        return Controls(daily_limit_kopecks=limit)
    return Controls(
        daily_limit_kopecks=limit,
        period_limits_kopecks=msgspec.json.decode(row["period_limits_kopecks"]),
        items_per_day_max=row["items_per_day_max"],
        banned_products=list(row["banned_products"]),
        banned_categories=list(row["banned_categories"]),
        blocked_allergens=list(row["blocked_allergens"]),
        required_diet=list(row["required_diet"]),
        cashier_note=row["cashier_note"],
    )


async def replace(conn: asyncpg.Connection, account_id: int, school_id: int, controls: Controls, *,
                  actor: str, now_ms: int) -> tuple[Controls, Controls]:
    """Replace a pupil's controls whole (inside the caller's transaction, the account locked):
    (before, after). UnknownProducts if a banned code is not one of the school's products."""
    banned = sorted(set(controls.banned_products))
    if banned:
        known = {r["code"] for r in await conn.fetch(
            "SELECT code FROM products WHERE school_id = $1 AND code = ANY($2::int[])", school_id, banned)}
        unknown = [c for c in banned if c not in known]
        if unknown:
            raise UnknownProducts(school_id, unknown)
    await conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account_id)
    before = await load(conn, account_id)
    await conn.execute("UPDATE accounts SET daily_limit_kopecks = $2 WHERE id = $1",
                       account_id, controls.daily_limit_kopecks)
    await conn.execute(
        """
        INSERT INTO account_controls (account_id, period_limits_kopecks, items_per_day_max,
            banned_products, banned_categories, blocked_allergens, required_diet, cashier_note)
        VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (account_id) DO UPDATE SET period_limits_kopecks = EXCLUDED.period_limits_kopecks,
            items_per_day_max = EXCLUDED.items_per_day_max, banned_products = EXCLUDED.banned_products,
            banned_categories = EXCLUDED.banned_categories, blocked_allergens = EXCLUDED.blocked_allergens,
            required_diet = EXCLUDED.required_diet, cashier_note = EXCLUDED.cashier_note
        """,
        account_id, msgspec.json.encode(controls.period_limits_kopecks).decode(), controls.items_per_day_max,
        banned, sorted(set(controls.banned_categories)), sorted(set(controls.blocked_allergens)),
        sorted(set(controls.required_diet)), controls.cashier_note,
    )
    after = await load(conn, account_id)
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, before, after, at_ms) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        actor, "controls.set", f"pupil:{account_id}", _json(before), _json(after), now_ms)
    await notify(conn, "account", str(account_id))
    return before, after


def _json(controls: Controls) -> str:
    return json.dumps(msgspec.to_builtins(controls), ensure_ascii=False)


async def school_products(conn: asyncpg.Connection | asyncpg.Pool, school_id: int) -> list[dict[str, Any]]:
    """The school's catalogue as a parent sees it: name, price, category, composition, energy,
    allergens, diet flags, hot meal; by code."""
    rows = await conn.fetch(
        "SELECT code, name, price_kopecks, category, composition, energy_kcal, allergens, diet_flags, hot_meal"
        " FROM products WHERE school_id = $1 ORDER BY code", school_id)
    return [dict(r) for r in rows]
