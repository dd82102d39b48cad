"""Load the demo dataset (or a large one for benchmarks) into an empty database.

Accounts are numbered densely: pupils 1..N, then the opening-balances account,
the school's canteen revenue, and one cash drawer per till. Opening balances are
a real movement (opening account debited, pupil credited) so the ledger sums to
zero from the first row. The first pupils have representatives (a parent on every
channel for every event kind), so the notices of a simulator run have someone to reach.
"""

from __future__ import annotations

import asyncpg

from .demo_dataset import (
    DEMO_GRANDMOTHER_EVERY,
    DEMO_OPENING_BALANCE_KOPECKS,
    DEMO_PRODUCTS,
    DEMO_PUPILS,
    DEMO_REPRESENTED_PUPILS,
    DEMO_SCHOOL_ID,
    DEMO_SCHOOL_NAME,
    DEMO_TILLS,
    DEMO_TURNSTILES,
    FIRE_PANEL_ID,
    demo_device_key,
    till_ids,
    turnstile_ids,
)
from . import ledger_accounts
from .representatives import CHANNELS, KINDS

ACCOUNT_PUPIL, ACCOUNT_REVENUE, ACCOUNT_DRAWER, ACCOUNT_OPENING = 1, 2, 3, 4
ACCOUNT_CLEARING, ACCOUNT_FREE_MEALS, ACCOUNT_CORRECTIONS = 5, 6, 7
# (code, category, composition, allergens, diet flags, kcal, hot meal) of DEMO_PRODUCTS
DEMO_PRODUCT_DETAILS = {
    1: ("breakfast", "Каша молочная, бутерброд с сыром, чай", ["milk", "gluten"], ["vegetarian"], 520, True),
    2: ("lunch", "Суп, котлета с гарниром, компот", ["gluten", "celery", "eggs"], [], 780, True),
    3: ("bakery", "Мука, мак, сахар", ["gluten", "eggs"], ["vegetarian"], 310, False),
    4: ("drinks", "Сок яблочный", [], ["vegetarian", "vegan"], 90, False),
    5: ("drinks", "Чай, лимон, сахар", [], ["vegetarian", "vegan"], 40, False),
    6: ("bakery", "Мука, капуста", ["gluten"], ["vegetarian", "vegan"], 250, False),
    7: ("dairy", "Молоко, закваска", ["milk"], ["vegetarian"], 150, False),
    8: ("salad", "Огурцы, помидоры, масло", [], ["vegetarian", "vegan"], 110, False),
    9: ("drinks", "Сухофрукты, сахар", ["sulphites"], ["vegetarian", "vegan"], 100, False),
    10: ("dairy", "Творог, яйца, мука, сметана", ["milk", "eggs", "gluten"], ["vegetarian"], 430, True),
}
# (name, starts minute, ends minute) in school time
DEMO_MEAL_PERIODS = (("breakfast", 8 * 60, 10 * 60), ("lunch", 11 * 60 + 30, 14 * 60 + 30), ("snack", 15 * 60, 17 * 60))
IDENTIFIER_SERVICE_CARD = 1
DEVICE_TURNSTILE, DEVICE_TILL, DEVICE_FIRE_PANEL = 1, 2, 3
# The demo phones +7900000XXXX have four digits for the pupil.
DEMO_REPRESENTED_PUPILS_MAX = 9_999
DEMO_GRANDMOTHER_KINDS = ("low_balance", "temporary_card_issued", "temporary_card_returned", "card_blocked")
assert set(DEMO_GRANDMOTHER_KINDS) <= set(KINDS)
# Generous for 2 M accounts on a small machine; the statements are set-based.
LOAD_STATEMENT_TIMEOUT_S = 600.0


async def is_empty(conn: asyncpg.Connection) -> bool:
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM schools)")


async def load_dataset(
    conn: asyncpg.Connection,
    *,
    pupils: int = DEMO_PUPILS,
    turnstiles: int = DEMO_TURNSTILES,
    tills: int = DEMO_TILLS,
    opening_balance_kopecks: int = DEMO_OPENING_BALANCE_KOPECKS,
    free_meals: bool = False,
    represented_pupils: int = DEMO_REPRESENTED_PUPILS,
) -> None:
    """One school with ``pupils`` pupils (one service card each) and its devices.

    ``free_meals``: pupils of grades 1-4 (and every 20th pupil, a large family) are
    entitled to a free lunch. Off by default, so tests that compare balances
    with purchases do not depend on the hour they run at.

    ``represented_pupils``: pupils 1..N (at most ``pupils`` and 9,999) get a parent,
    representative N, on every channel for every event kind (phone
    ``demo_parent_phone``, e-mail ``demo_parent_email``); every 10th of them also a
    grandmother (SMS; low balance and card events), representatives N+1.. .
    """
    opening_id = pupils + 1
    revenue_id = pupils + 2
    t = LOAD_STATEMENT_TIMEOUT_S
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO schools (id, name) VALUES ($1, $2)", DEMO_SCHOOL_ID, DEMO_SCHOOL_NAME, timeout=t
        )
        await conn.execute(
            """
            INSERT INTO accounts (id, kind, school_id, holder_name, balance_kopecks)
            SELECT g, 1, $1, 'Ученик ' || g, $2 FROM generate_series(1, $3::bigint) AS g
            """,
            DEMO_SCHOOL_ID,
            opening_balance_kopecks,
            pupils,
            timeout=t,
        )
        await conn.execute(
            """
            INSERT INTO accounts (id, kind, school_id, holder_name, balance_kopecks) VALUES
                ($1, 4, NULL, 'Входящие остатки', -$3::bigint * $4::bigint),
                ($2, 2, $5, 'Выручка столовой', 0)
            """,
            opening_id,
            revenue_id,
            opening_balance_kopecks,
            pupils,
            DEMO_SCHOOL_ID,
            timeout=t,
        )
        # The demo card UID: 0x04 followed by the account id as 6 big-endian bytes
        # (storage.demo_dataset.demo_card_uid).
        await conn.execute(
            """
            INSERT INTO identifiers (identifier, account_id, kind)
            SELECT '\\x04'::bytea || substring(int8send(g) FROM 3), g, 1
            FROM generate_series(1, $1::bigint) AS g
            """,
            pupils,
            timeout=t,
        )
        till_list = till_ids(tills)
        drawer_rows = [(revenue_id + n, ACCOUNT_DRAWER, DEMO_SCHOOL_ID, f"Касса {n}") for n in range(1, tills + 1)]
        await conn.copy_records_to_table(
            "accounts", records=drawer_rows, columns=("id", "kind", "school_id", "holder_name"), timeout=t
        )
        device_rows = [
            (dev, DEMO_SCHOOL_ID, DEVICE_TURNSTILE, demo_device_key(dev), f"Турникет {n}", None)
            for n, dev in enumerate(turnstile_ids(turnstiles), 1)
        ] + [
            (dev, DEMO_SCHOOL_ID, DEVICE_TILL, demo_device_key(dev), f"Касса {n}", revenue_id + n)
            for n, dev in enumerate(till_list, 1)
        ] + [(FIRE_PANEL_ID, DEMO_SCHOOL_ID, DEVICE_FIRE_PANEL, demo_device_key(FIRE_PANEL_ID), "Пожарная панель", None)]
        await conn.copy_records_to_table(
            "devices",
            records=device_rows,
            columns=("id", "school_id", "kind", "key", "name", "drawer_account_id"),
            timeout=t,
        )
        await conn.executemany(
            "INSERT INTO products (school_id, code, name, price_kopecks, category, composition, allergens,"
            " diet_flags, energy_kcal, hot_meal) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(DEMO_SCHOOL_ID, code, name, price, *DEMO_PRODUCT_DETAILS[code]) for code, name, price in DEMO_PRODUCTS],
            timeout=t,
        )
        system_base = revenue_id + tills
        await conn.copy_records_to_table(
            "accounts",
            records=[
                (system_base + 1, ACCOUNT_CLEARING, None, "Расчёты с эквайером"),
                (system_base + 2, ACCOUNT_FREE_MEALS, DEMO_SCHOOL_ID, "Бюджет бесплатного питания"),
                (system_base + 3, ACCOUNT_CORRECTIONS, None, "Корректировки"),
            ],
            columns=("id", "kind", "school_id", "holder_name"),
            timeout=t,
        )
        # Grade 1..11 in turn, classes А..Г, siblings in pairs (family of ids 2k-1, 2k).
        await conn.execute(
            """
            INSERT INTO pupils (account_id, school_id, full_name, grade, class_name, free_meal_category, family_id)
            SELECT g, $1, 'Ученик ' || g, 1 + (g % 11),
                   (1 + (g % 11))::text || (ARRAY['А','Б','В','Г'])[1 + (g / 11) % 4],
                   CASE WHEN NOT $3 THEN NULL
                        WHEN 1 + (g % 11) <= 4 THEN 'grades_1_4'
                        WHEN g % 20 = 0 THEN 'large_family' END,
                   (g + 1) / 2
            FROM generate_series(1, $2::bigint) AS g
            """,
            DEMO_SCHOOL_ID,
            pupils,
            free_meals,
            timeout=t,
        )
        await conn.execute(
            "INSERT INTO school_policies (school_id, grace_kopecks, grace_meals, low_balance_threshold_kopecks)"
            " VALUES ($1, 0, 0, 10000)",
            DEMO_SCHOOL_ID,
            timeout=t,
        )
        await conn.executemany(
            "INSERT INTO meal_periods (school_id, name, starts_minute, ends_minute) VALUES ($1, $2, $3, $4)",
            [(DEMO_SCHOOL_ID, *period) for period in DEMO_MEAL_PERIODS],
            timeout=t,
        )
        await ledger_accounts.open_school_accounts(conn, DEMO_SCHOOL_ID)  # what the above lacks: the desk drawer
        await _load_representatives(conn, min(pupils, represented_pupils, DEMO_REPRESENTED_PUPILS_MAX), t)


async def _load_representatives(conn: asyncpg.Connection, represented: int, timeout: float) -> None:
    """Parents of pupils 1..represented (ids 1..represented), grandmothers of every 10th
    (ids represented+1..), as set-based statements (migration 0008's tables)."""
    if represented <= 0:
        return
    await conn.execute(
        """
        WITH t AS (SELECT (extract(epoch FROM now()) * 1000)::bigint AS m)
        INSERT INTO representatives (id, school_id, full_name, relation, phone, email, channels, kinds,
            consent_date, registered_by, registered_at_ms, updated_at_ms)
        SELECT g, $1::integer, 'Родитель ученика ' || g, 'parent', '+7900000' || lpad(g::text, 4, '0'),
               'parent' || g || '@example.ru', $2::text[], $3::text[], current_date, 'demo', m, m
        FROM generate_series(1, $5::bigint) AS g, t
        UNION ALL
        SELECT $5::bigint + g / $6::bigint, $1::integer, 'Бабушка ученика ' || g, 'grandmother',
               '+7900100' || lpad(g::text, 4, '0'), NULL, '{sms}', $4::text[], current_date, 'demo', m, m
        FROM generate_series($6::bigint, $5::bigint, $6::bigint) AS g, t
        """,
        DEMO_SCHOOL_ID, list(CHANNELS), list(KINDS), list(DEMO_GRANDMOTHER_KINDS), represented,
        DEMO_GRANDMOTHER_EVERY, timeout=timeout,
    )
    await conn.execute(
        """
        INSERT INTO representative_pupils (account_id, representative_id)
        SELECT g, g FROM generate_series(1, $1::bigint) AS g
        UNION ALL
        SELECT g, $1::bigint + g / $2::bigint FROM generate_series($2::bigint, $1::bigint, $2::bigint) AS g
        """,
        represented, DEMO_GRANDMOTHER_EVERY, timeout=timeout,
    )
    await conn.execute(
        "SELECT setval('representatives_id_seq', (SELECT max(id) FROM representatives))", timeout=timeout
    )
