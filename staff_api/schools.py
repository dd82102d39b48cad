"""Schools: list, get, policy, meal periods, products, daily menus (operator writes)."""

from __future__ import annotations

from datetime import date

import asyncpg
from litestar import Controller, get, post, put

from typing import Annotated

from litestar.params import FromPath, JSONBody, PathParameter

from ledger.codes import PassbackMode
from storage import ledger_accounts
from parents_api.hardening import INT32_MAX

from . import db
from .auth import PrincipalDep
from .errors import Conflict, answers, invalid, refuse
from .refusals import Refusal
from .schemas import (
    MealPeriod,
    MealPeriodBody,
    MealPeriodOut,
    MenuBody,
    MenuOut,
    ProductBody,
    ProductOut,
    SchoolBody,
    SchoolOut,
    SchoolPolicy,
)

PRODUCT_COLUMNS = "code, name, price_kopecks, category, composition, allergens, diet_flags, energy_kcal, hot_meal"


def _product(row: asyncpg.Record) -> ProductOut:
    return ProductOut(**dict(row))


async def _school_out(conn: asyncpg.Connection, row: asyncpg.Record, *, detail: bool) -> SchoolOut:
    out = SchoolOut(id=row["id"], name=row["name"], utc_offset_minutes=row["utc_offset_minutes"])
    if not detail:
        return out
    policy = await conn.fetchrow(
        "SELECT grace_kopecks, grace_meals, low_balance_threshold_kopecks, preorder_lock_days, anti_passback,"
        " passback_entry_interval_s, escort_required, offline_floor_kopecks, offline_sales_per_card_max"
        " FROM school_policies WHERE school_id = $1",
        row["id"],
    )
    if policy:
        values = dict(policy)
        values["anti_passback"] = PassbackMode(values["anti_passback"]).name.lower()
        out.policy = SchoolPolicy(**values)
    else:
        out.policy = SchoolPolicy()
    periods = await conn.fetch(
        "SELECT name, starts_minute, ends_minute FROM meal_periods WHERE school_id = $1 ORDER BY starts_minute",
        row["id"],
    )
    out.meal_periods = [MealPeriodOut(**dict(p)) for p in periods]
    products = await conn.fetch(
        f"SELECT {PRODUCT_COLUMNS} FROM products WHERE school_id = $1 ORDER BY code", row["id"]
    )
    out.products = [_product(p) for p in products]
    return out


class SchoolController(Controller):
    path = "/schools"
    tags = ["schools"]

    @get("/")
    async def list_schools(self, principal: PrincipalDep, pool: db.PoolDep) -> list[SchoolOut]:
        """Schools the caller may see (a school-bound role sees its own)."""
        async with pool.acquire() as conn:
            if principal.school_id is None:
                rows = await conn.fetch("SELECT id, name, utc_offset_minutes FROM schools ORDER BY id")
            else:
                rows = await conn.fetch(
                    "SELECT id, name, utc_offset_minutes FROM schools WHERE id = $1", principal.school_id
                )
            return [await _school_out(conn, r, detail=False) for r in rows]

    @post("/", status_code=201, opt=answers(409))
    async def create_school(
        self, data: JSONBody[SchoolBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> SchoolOut:
        """Create a school (default policy, no meal periods or products yet). Operator only; audited."""
        principal.require("operator", action="create schools")
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE schools IN SHARE ROW EXCLUSIVE MODE")  # the next id is max + 1
            school_id = data.id if data.id is not None else await conn.fetchval(
                "SELECT COALESCE(max(id), 0)::bigint + 1 FROM schools")
            if school_id > INT32_MAX:
                raise refuse(Conflict, Refusal.NO_NEXT_SCHOOL_ID, school_id=INT32_MAX)
            if await conn.fetchval("SELECT 1 FROM schools WHERE id = $1", school_id):
                raise refuse(Conflict, Refusal.SCHOOL_EXISTS, school_id=school_id)
            row = await conn.fetchrow(
                "INSERT INTO schools (id, name, utc_offset_minutes) VALUES ($1, $2, $3) "
                "RETURNING id, name, utc_offset_minutes",
                school_id, data.name, data.utc_offset_minutes,
            )
            # its revenue, free-meal budget and desk drawer (and the city's accounts with the first school)
            accounts = await ledger_accounts.open_school_accounts(conn, school_id)
            await db.audit(conn, principal.login, "school.create", f"school:{school_id}", None,
                           {**db.row_dict(row), "accounts": {k.name.lower(): v for k, v in accounts.items()}}, now_ms)
            await db.notify(conn, "school", school_id)
            return await _school_out(conn, row, detail=True)

    @get("/{school_id:int}")
    async def get_school(self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep) -> SchoolOut:
        """A school with its policy, meal periods and products."""
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn:
            return await _school_out(conn, await db.school_row(conn, school_id), detail=True)

    @put("/{school_id:int}/policy")
    async def put_policy(
        self, school_id: FromPath[int], data: JSONBody[SchoolPolicy], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> SchoolPolicy:
        """Grace (negative balance), low-balance threshold, pre-order lock, anti-passback, escorts, offline
        tills (floor and consecutive sales per card). Operator only."""
        principal.require("operator", action="change a school policy")
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, school_id)
            before = await conn.fetchrow("SELECT * FROM school_policies WHERE school_id = $1 FOR UPDATE", school_id)
            after = await conn.fetchrow(
                """
                INSERT INTO school_policies (school_id, grace_kopecks, grace_meals,
                    low_balance_threshold_kopecks, preorder_lock_days, anti_passback, passback_entry_interval_s,
                    escort_required, offline_floor_kopecks, offline_sales_per_card_max)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (school_id) DO UPDATE SET grace_kopecks = EXCLUDED.grace_kopecks,
                    grace_meals = EXCLUDED.grace_meals,
                    low_balance_threshold_kopecks = EXCLUDED.low_balance_threshold_kopecks,
                    preorder_lock_days = EXCLUDED.preorder_lock_days,
                    anti_passback = EXCLUDED.anti_passback,
                    passback_entry_interval_s = EXCLUDED.passback_entry_interval_s,
                    escort_required = EXCLUDED.escort_required,
                    offline_floor_kopecks = EXCLUDED.offline_floor_kopecks,
                    offline_sales_per_card_max = EXCLUDED.offline_sales_per_card_max
                RETURNING *
                """,
                school_id,
                data.grace_kopecks,
                data.grace_meals,
                data.low_balance_threshold_kopecks,
                data.preorder_lock_days,
                int(PassbackMode[data.anti_passback.upper()]),
                data.passback_entry_interval_s,
                data.escort_required,
                data.offline_floor_kopecks,
                data.offline_sales_per_card_max,
            )
            await db.audit(conn, principal.login, "school.policy", f"school:{school_id}",
                           db.row_dict(before), db.row_dict(after), now_ms)
            await db.notify(conn, "school", school_id)
        return data

    @put("/{school_id:int}/meal-periods/{name:str}")
    async def put_meal_period(
        self, school_id: FromPath[int], name: FromPath[MealPeriod], data: JSONBody[MealPeriodBody], principal: PrincipalDep,
        pool: db.PoolDep, now_ms: db.NowMs,
    ) -> MealPeriodOut:
        """Set one meal period (breakfast, lunch, snack) in minutes after local midnight. Operator only."""
        principal.require("operator", action="change meal periods")
        if data.ends_minute <= data.starts_minute:
            raise invalid("ends_minute", Refusal.ENDS_BEFORE_STARTS)
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, school_id)
            before = await conn.fetchrow(
                "SELECT * FROM meal_periods WHERE school_id = $1 AND name = $2 FOR UPDATE", school_id, name
            )
            after = await conn.fetchrow(
                """
                INSERT INTO meal_periods (school_id, name, starts_minute, ends_minute) VALUES ($1, $2, $3, $4)
                ON CONFLICT (school_id, name) DO UPDATE
                    SET starts_minute = EXCLUDED.starts_minute, ends_minute = EXCLUDED.ends_minute
                RETURNING *
                """,
                school_id, name, data.starts_minute, data.ends_minute,
            )
            await db.audit(conn, principal.login, "school.meal_period", f"school:{school_id}",
                           db.row_dict(before), db.row_dict(after), now_ms)
            await db.notify(conn, "school", school_id)
        return MealPeriodOut(name=name, starts_minute=data.starts_minute, ends_minute=data.ends_minute)

    @put("/{school_id:int}/products/{code:int}")
    async def put_product(
        self, school_id: FromPath[int], code: Annotated[int, PathParameter(ge=1, le=INT32_MAX, description="the product's code")],
        data: JSONBody[ProductBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> ProductOut:
        """Create or replace a product of the school's canteen. Operator only."""
        principal.require("operator", action="change products")
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, school_id)
            before = await conn.fetchrow(
                f"SELECT {PRODUCT_COLUMNS} FROM products WHERE school_id = $1 AND code = $2 FOR UPDATE",
                school_id, code,
            )
            after = await conn.fetchrow(
                f"""
                INSERT INTO products (school_id, code, name, price_kopecks, category, composition,
                    allergens, diet_flags, energy_kcal, hot_meal)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (school_id, code) DO UPDATE SET name = EXCLUDED.name,
                    price_kopecks = EXCLUDED.price_kopecks, category = EXCLUDED.category,
                    composition = EXCLUDED.composition, allergens = EXCLUDED.allergens,
                    diet_flags = EXCLUDED.diet_flags, energy_kcal = EXCLUDED.energy_kcal,
                    hot_meal = EXCLUDED.hot_meal
                RETURNING {PRODUCT_COLUMNS}
                """,
                school_id, code, data.name, data.price_kopecks, data.category, data.composition,
                sorted(set(data.allergens)), sorted(set(data.diet_flags)), data.energy_kcal, data.hot_meal,
            )
            await db.audit(conn, principal.login, "school.product", f"product:{school_id}:{code}",
                           db.row_dict(before), db.row_dict(after), now_ms)
            await db.notify(conn, "school", school_id)
        return _product(after)

    @get("/{school_id:int}/menus/{day:date}/{period:str}")
    async def get_menu(
        self, school_id: FromPath[int], day: FromPath[date], period: FromPath[MealPeriod], principal: PrincipalDep, pool: db.PoolDep
    ) -> MenuOut:
        principal.require_school(school_id, f"school {school_id}")
        rows = await pool.fetch(
            "SELECT product_code FROM menus WHERE school_id = $1 AND day = $2 AND period = $3 ORDER BY product_code",
            school_id, day, period,
        )
        return MenuOut(school_id=school_id, day=day.isoformat(), period=period,
                       product_codes=[r["product_code"] for r in rows])

    @put("/{school_id:int}/menus/{day:date}/{period:str}")
    async def put_menu(
        self, school_id: FromPath[int], day: FromPath[date], period: FromPath[MealPeriod], data: JSONBody[MenuBody], principal: PrincipalDep,
        pool: db.PoolDep, now_ms: db.NowMs,
    ) -> MenuOut:
        """Replace the menu of one day and period with the given product codes. Operator only."""
        principal.require("operator", action="change menus")
        codes = sorted(set(data.product_codes))
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, school_id)
            known = {
                r["code"]
                for r in await conn.fetch(
                    "SELECT code FROM products WHERE school_id = $1 AND code = ANY($2::int[])", school_id, codes
                )
            }
            unknown = [c for c in codes if c not in known]
            if unknown:
                raise invalid("product_codes", Refusal.UNKNOWN_PRODUCTS, school_id=school_id, codes=unknown)
            before = await conn.fetch(
                "DELETE FROM menus WHERE school_id = $1 AND day = $2 AND period = $3 RETURNING product_code",
                school_id, day, period,
            )
            await conn.executemany(
                "INSERT INTO menus (school_id, day, period, product_code) VALUES ($1, $2, $3, $4)",
                [(school_id, day, period, c) for c in codes],
            )
            entity = f"menu:{school_id}:{day.isoformat()}:{period}"
            await db.audit(conn, principal.login, "school.menu", entity,
                           {"product_codes": sorted(r["product_code"] for r in before)},
                           {"product_codes": codes}, now_ms)
            await db.notify(conn, "school", school_id)
        return MenuOut(school_id=school_id, day=day.isoformat(), period=period, product_codes=codes)

