"""The staff and operator HTTP API against real PostgreSQL and a real uvicorn server.

Each test gets a fresh demo database (school 1, pupils 1..1000 with card 04+id,
tills 2000001/2000002) and its own server on a free port in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from staff_api import create_app
from staff_api.auth import token_sha256
from staff_api.db import next_midnight_ms
from storage.demo_dataset import demo_card_uid, till_ids
from support import GatewayProcess, ROOT, wait_until
from support import Clock, ThreadServer as Server  # noqa: F401  (shared)

MSK = 180
# 2026-09-01 10:00 Moscow time (07:00 UTC)
T0 = 1_788_246_000_000


def run(coro):
    return asyncio.run(coro)


async def _fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args) -> list[asyncpg.Record]:
    return run(_fetch(dsn, query, *args))


@dataclass
class Api:
    dsn: str
    url: str
    clock: Clock
    tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def as_(self, login: str | None, method: str, path: str, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if login is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(login, login)}"
        return self.http.request(method, path, headers=headers, **kw)

    def op(self, method: str, path: str, **kw) -> httpx.Response:
        return self.as_("op", method, path, **kw)


STAFF = {  # login: (role, school)
    "op": ("operator", None),
    "aud": ("auditor", None),
    "off1": ("officer", 1),
    "cash1": ("cashier", 1),
}


def make_api(dsn: str, **app_kw):
    clock = Clock()
    school2 = "INSERT INTO schools (id, name, utc_offset_minutes) VALUES (2, 'ГБОУ Школа № 2', 180)"
    sql(dsn, school2)
    # a pupil of school 2 (account 2000), with a card
    sql(dsn, "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES (2000, 1, 2, 'Иванов Пётр')")
    sql(dsn, "INSERT INTO pupils (account_id, school_id, full_name, grade) VALUES (2000, 2, 'Иванов Пётр', 5)")
    sql(dsn, "INSERT INTO identifiers (identifier, account_id, kind) VALUES ($1, 2000, 1)", bytes.fromhex("0a0b0c0d"))
    api_tokens = {}
    for login, (role, school) in STAFF.items():
        token = f"token-{login}"
        sql(dsn, "INSERT INTO staff (login, role, school_id, token_sha256) VALUES ($1, $2, $3, $4)",
            login, role, school, token_sha256(token))
        api_tokens[login] = token
    server = Server(create_app(dsn, clock=clock, pool_size_max=4, **app_kw)).start()
    api = Api(dsn, f"http://127.0.0.1:{server.port}", clock, api_tokens)
    return api, server


@pytest.fixture
def api(demo_dsn):
    api, server = make_api(demo_dsn, command_wait_ms=3_000)
    try:
        yield api
    finally:
        api.http.close()
        server.stop()


def audit_rows(dsn: str, entity: str) -> list[dict]:
    rows = sql(dsn, "SELECT actor, action, before, after FROM audit_log WHERE entity = $1 ORDER BY id", entity)
    return [{"actor": r["actor"], "action": r["action"],
             "before": None if r["before"] is None else json.loads(r["before"]),
             "after": None if r["after"] is None else json.loads(r["after"])} for r in rows]


# --- pure ------------------------------------------------------------------------------------


def test_next_midnight_in_school_time_zone():
    # 10:00 Moscow -> the coming 00:00 Moscow = 21:00 UTC the same day
    assert next_midnight_ms(T0, MSK) == T0 + 14 * 3_600_000
    # 23:59:59.999 Moscow -> one millisecond later
    late = T0 + 14 * 3_600_000 - 1
    assert next_midnight_ms(late, MSK) == late + 1
    # exactly midnight Moscow -> the next one, a full day later
    midnight = T0 + 14 * 3_600_000
    assert next_midnight_ms(midnight, MSK) == midnight + 86_400_000
    # 00:30 Moscow is still 21:30 UTC of the day before: the next midnight is 23.5 h away
    assert next_midnight_ms(midnight + 1_800_000, MSK) == midnight + 86_400_000
    # UTC and a western zone
    assert next_midnight_ms(T0, 0) == T0 + 17 * 3_600_000
    assert next_midnight_ms(T0, -300) == T0 + 22 * 3_600_000


# --- authentication and roles -----------------------------------------------------------------


def test_authentication_and_role_deny_paths(api: Api):
    assert api.as_(None, "GET", "/pupils/1").status_code == 401
    r = api.as_("nobody-token", "GET", "/pupils/1")
    assert r.status_code == 401 and "unknown token" in r.json()["detail"]
    # 401 before 422: the body is not even looked at
    assert api.as_(None, "POST", "/schools/1/pupils", json={"grade": 99}).status_code == 401

    # the auditor reads everything and changes nothing
    assert api.as_("aud", "GET", "/pupils/2000").status_code == 200
    r = api.as_("aud", "POST", f"/cards/{demo_card_uid(3).hex()}/block")
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert api.as_("aud", "GET", "/audit").status_code == 200

    # an officer of school 1 touching school 2
    r = api.as_("off1", "POST", "/schools/2/pupils", json={"full_name": "Сидоров Иван", "grade": 3})
    assert r.status_code == 403
    assert "bound to school 1" in r.json()["detail"] and "school 2" in r.json()["detail"]
    # ... its pupils, cards and accounts: the very answers for ones that do not exist
    for method, path, detail in (("GET", "/pupils/2000", "no pupil with account 2000"),
                                 ("POST", "/cards/0a0b0c0d/block", "no card 0a0b0c0d"),
                                 ("GET", "/accounts/2000/ledger", "no account 2000")):
        r = api.as_("off1", method, path)
        assert r.status_code == 404 and r.json()["detail"] == detail, r.text
        assert "school" not in r.text
    assert api.as_("off1", "GET", "/schools/2").status_code == 403  # schools are no secret
    assert [s["id"] for s in api.as_("off1", "GET", "/schools").json()] == [1]
    assert sql(api.dsn, "SELECT count(*) AS n FROM pupils WHERE school_id = 2")[0]["n"] == 1

    # a cashier reads balances but does not block cards
    r = api.as_("cash1", "GET", "/pupils/3")
    assert r.status_code == 200 and r.json()["balance_kopecks"] == 50_000
    r = api.as_("cash1", "POST", f"/cards/{demo_card_uid(3).hex()}/block")
    assert r.status_code == 403 and "cashier" in r.json()["detail"]
    assert sql(api.dsn, "SELECT status FROM identifiers WHERE identifier = $1", demo_card_uid(3))[0]["status"] == 0

    # corrections are the operator's alone; officers cannot change school policy
    body = {"account_id": 3, "amount_kopecks": 100, "reason": "ошибка кассы"}
    r = api.as_("off1", "POST", "/money/corrections", json=body, headers={"Idempotency-Key": "c1"})
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert api.as_("off1", "PUT", "/schools/1/policy", json={"grace_kopecks": 1}).status_code == 403
    assert sql(api.dsn, "SELECT count(*) AS n FROM commands")[0]["n"] == 0

    # a deactivated member's token stops working at once
    created = api.op("POST", "/staff", json={"login": "off2", "role": "officer", "school_id": 2})
    assert created.status_code == 201
    token = created.json()["token"]
    assert api.as_(token, "GET", "/pupils/2000").status_code == 200
    assert api.op("DELETE", "/staff/off2").status_code == 200
    r = api.as_(token, "GET", "/pupils/2000")
    assert r.status_code == 401 and "deactivated" in r.json()["detail"]
    assert api.as_("off1", "POST", "/staff", json={"login": "x1", "role": "operator"}).status_code == 403
    assert [a["action"] for a in audit_rows(api.dsn, "staff:off2")] == ["staff.create", "staff.deactivate"]


def test_bad_input_is_422_naming_the_field(api: Api):
    def check(r: httpx.Response, field: str) -> None:
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field, r.json()

    check(api.op("POST", "/schools/1/pupils", json={"full_name": "Петров Олег", "grade": 12}), "grade")
    check(api.op("POST", "/schools/1/pupils", json={"grade": 3}), "full_name")
    check(api.op("POST", "/schools/1/pupils", json={"full_name": "Петров Олег", "grade": 3,
                                                    "free_meal_category": "rich"}), "free_meal_category")
    check(api.op("POST", "/schools/1/pupils", json={"full_name": "Петров Олег", "grade": 3,
                                                    "card": {"uid": "zz"}}), "card.uid")
    check(api.op("PUT", "/pupils/3/controls", json={"blocked_allergens": ["milk", "nuts"]}), "blocked_allergens[1]")
    check(api.op("PUT", "/pupils/3/controls", json={"banned_products": [999]}), "banned_products")
    check(api.op("PUT", "/pupils/3/controls", json={"period_limits_kopecks": {"dinner": 100}}),
          "period_limits_kopecks")
    check(api.op("PUT", "/schools/1/products/11", json={"name": "Каша", "price_kopecks": 5000,
                                                        "allergens": ["gluten", "shellfish"]}), "allergens[1]")
    check(api.op("PUT", "/schools/1/meal-periods/lunch", json={"starts_minute": 700, "ends_minute": 600}),
          "ends_minute")
    check(api.op("PATCH", "/pupils/3", json={"grade": -1}), "grade")
    body = {"from_account_id": 1, "to_account_id": 2, "amount_kopecks": 100}
    check(api.op("POST", "/money/transfers", json=body), "Idempotency-Key")
    check(api.op("POST", "/money/corrections", json={"account_id": 3, "amount_kopecks": 0, "reason": "x"},
                 headers={"Idempotency-Key": "z"}), "amount_kopecks")
    check(api.op("POST", "/money/transfers", json={**body, "to_account_id": 3}, headers={"Idempotency-Key": "y"}),
          "to_account_id")
    # nothing was written by any of them
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0
    assert sql(api.dsn, "SELECT count(*) AS n FROM commands")[0]["n"] == 0


def test_refusals_carry_a_code_and_params_beside_the_unchanged_english_detail(api: Api):
    """``code`` and ``params`` (staff_api.refusals) for programs and the console's Russian; ``detail``
    stays the English it always was."""
    def body(r: httpx.Response, status: int) -> dict:
        assert r.status_code == status, r.text
        return r.json()

    b = body(api.as_("nobody-token", "GET", "/pupils/1"), 401)
    assert (b["detail"], b["code"], b["params"]) == ("unknown token", "token_unknown", {})
    b = body(api.as_("off1", "GET", "/pupils/2000"), 404)
    assert (b["detail"], b["code"], b["params"]) == ("no pupil with account 2000", "no_pupil", {"account_id": 2000})
    b = body(api.as_("cash1", "POST", f"/cards/{demo_card_uid(3).hex()}/block"), 403)
    assert b["detail"] == "role 'cashier' may not block cards; allowed: operator, officer"
    assert (b["code"], b["params"]) == ("role_forbidden", {"role": "cashier", "action": "block cards",
                                                           "allowed": ["operator", "officer"]})
    assert body(api.op("POST", f"/cards/{demo_card_uid(3).hex()}/block"), 200)
    b = body(api.op("POST", f"/cards/{demo_card_uid(3).hex()}/block"), 409)
    assert (b["detail"], b["code"], b["params"]) == (f"card {demo_card_uid(3).hex()} is already blocked",
                                                     "card_already_blocked", {"uid": demo_card_uid(3).hex()})
    # a 422 of the package: the code at the top and on its error item
    b = body(api.op("POST", "/money/corrections", json={"account_id": 3, "amount_kopecks": 0, "reason": "x"},
                    headers={"Idempotency-Key": "z"}), 422)
    assert (b["detail"], b["field"], b["code"], b["params"]) == ("amount_kopecks: must not be zero", "amount_kopecks",
                                                                 "amount_zero", {})
    assert b["errors"] == [{"field": "amount_kopecks", "message": "must not be zero", "source": "body",
                            "code": "amount_zero", "params": {}}]
    # words made elsewhere from a known template get its code too (storage's, the path ids' 404),
    # their parameters as the text had them
    b = body(api.op("PUT", "/pupils/3/controls", json={"banned_products": [999]}), 422)
    assert (b["detail"], b["code"], b["params"]) == ("banned_products: unknown product codes of school 1: [999]",
                                                     "unknown_products", {"school_id": "1", "codes": "999"})
    b = body(api.op("GET", f"/schools/{2**31}"), 404)
    assert (b["detail"], b["code"], b["params"]) == (f"no school {2**31}", "no_school", {"school_id": str(2**31)})
    # msgspec's own messages have no code: the console reads them by their words
    b = body(api.op("POST", "/schools/1/pupils", json={"full_name": "Петров Олег", "grade": 12}), 422)
    assert b["field"] == "grade" and "code" not in b and "code" not in b["errors"][0], b


# --- pupils, schools, controls ------------------------------------------------------------------


def test_enrol_read_change_and_school_reference_data(api: Api):
    r = api.as_("off1", "POST", "/schools/1/pupils", json={
        "full_name": "Кузнецова Анна", "grade": 2, "class_name": "2Б", "free_meal_category": "grades_1_4",
        "card": {"uid": "04AABBCCDDEE01", "kind": "bracelet"}})
    assert r.status_code == 201, r.text
    pupil = r.json()
    # demo accounts are 1..1007 (pupils, opening, revenue, 2 drawers, system) plus 2000 of school 2
    assert pupil["account_id"] == 2001
    assert pupil["cards"][0]["uid"] == "04aabbccddee01" and pupil["cards"][0]["kind"] == "bracelet"
    acc = sql(api.dsn, "SELECT kind, school_id, balance_kopecks FROM accounts WHERE id = 2001")[0]
    assert (acc["kind"], acc["school_id"], acc["balance_kopecks"]) == (1, 1, 0)
    assert audit_rows(api.dsn, "pupil:2001")[0]["action"] == "pupil.enrol"

    r = api.as_("off1", "PATCH", "/pupils/2001", json={"grade": 3, "free_meal_category": None, "status": "blocked"})
    assert r.status_code == 200, r.text
    assert (r.json()["grade"], r.json()["free_meal_category"], r.json()["status"]) == (3, None, "blocked")
    change = audit_rows(api.dsn, "pupil:2001")[1]
    assert change["before"]["grade"] == 2 and change["after"]["grade"] == 3
    assert change["before"]["status"] == "active" and change["after"]["status"] == "blocked"

    controls = {"daily_limit_kopecks": 30_000, "period_limits_kopecks": {"lunch": 20_000},
                "items_per_day_max": 4, "banned_products": [3, 6], "banned_categories": ["выпечка"],
                "blocked_allergens": ["milk", "peanuts"], "required_diet": ["vegetarian"],
                "cashier_note": "Аллергия на молоко"}
    r = api.as_("off1", "PUT", "/pupils/5/controls", json=controls)
    assert r.status_code == 200, r.text
    got = api.as_("cash1", "GET", "/pupils/5/controls").json()
    assert got == controls
    assert sql(api.dsn, "SELECT daily_limit_kopecks AS d FROM accounts WHERE id = 5")[0]["d"] == 30_000
    assert api.as_("cash1", "GET", "/pupils/5").json()["controls"]["cashier_note"] == "Аллергия на молоко"
    assert audit_rows(api.dsn, "pupil:5")[0]["after"]["blocked_allergens"] == ["milk", "peanuts"]

    # school reference data (operator)
    assert api.op("PUT", "/schools/1/policy", json={"grace_kopecks": 20_000, "grace_meals": 1,
                                                   "low_balance_threshold_kopecks": 15_000,
                                                   "preorder_lock_days": 2}).status_code == 200
    assert api.op("PUT", "/schools/1/meal-periods/lunch",
                  json={"starts_minute": 720, "ends_minute": 840}).status_code == 200
    product = {"name": "Каша овсяная", "price_kopecks": 6_000, "category": "каши", "composition": "овсянка, молоко",
               "allergens": ["gluten", "milk"], "diet_flags": ["vegetarian"], "energy_kcal": 250, "hot_meal": True}
    r = api.op("PUT", "/schools/1/products/11", json=product)
    assert r.status_code == 200 and r.json()["name"] == "Каша овсяная"
    r = api.op("PUT", "/schools/1/menus/2026-09-01/lunch", json={"product_codes": [2, 11, 9]})
    assert r.status_code == 200 and r.json()["product_codes"] == [2, 9, 11]
    school = api.as_("cash1", "GET", "/schools/1").json()
    assert school["policy"]["grace_kopecks"] == 20_000
    assert {"name": "lunch", "starts_minute": 720, "ends_minute": 840} in school["meal_periods"]
    assert {p["code"]: p["name"] for p in school["products"]}[11] == "Каша овсяная"
    assert api.as_("cash1", "GET", "/schools/1/menus/2026-09-01/lunch").json()["product_codes"] == [2, 9, 11]
    assert [a["action"] for a in audit_rows(api.dsn, "school:1")] == ["school.policy", "school.meal_period"]

    # the ledger of a pupil: rows where it is the tapping, debited or credited account
    sql(api.dsn, """INSERT INTO journal (device_id, device_txn, kind, account_id, identifier, debit_account_id,
                    credit_account_id, amount_kopecks, balance_after_kopecks, advice, device_time_ms,
                    decided_at_ms) VALUES
                    (2000001, 1, 3, 5, $1, 5, 1002, 9500, 40500, false, 1, 100),
                    (2000001, 2, 3, 6, $2, 6, 1002, 9500, 40500, false, 2, 200),
                    (2000001, 3, 4, 5, $1, 1003, 5, 10000, 50500, false, 3, 300)""",
        demo_card_uid(5), demo_card_uid(6))
    page = api.as_("cash1", "GET", "/accounts/5/ledger", params={"limit": 1}).json()
    assert [(e["device_txn"], e["kind"]) for e in page["entries"]] == [(3, "cash_topup")]
    assert page["next_offset"] == 1
    page = api.as_("cash1", "GET", "/accounts/5/ledger", params={"limit": 1, "offset": 1}).json()
    assert [(e["device_txn"], e["kind"]) for e in page["entries"]] == [(1, "purchase")]
    assert page["next_offset"] is None
    assert len(api.op("GET", "/accounts/1002/ledger").json()["entries"]) == 2
    # city-level opening balances: not a school's account, so as no account
    assert api.as_("cash1", "GET", "/accounts/1001/ledger").status_code == 404


def test_concurrent_enrolments_get_dense_ids(api: Api):
    from concurrent.futures import ThreadPoolExecutor

    def enrol(n: int) -> int:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            r = c.post("/schools/1/pupils", json={"full_name": f"Ученик новый {n}", "grade": 1},
                       headers={"Authorization": f"Bearer {api.tokens['off1']}"})
            assert r.status_code == 201, r.text
            return r.json()["account_id"]

    with ThreadPoolExecutor(8) as pool:
        ids = sorted(pool.map(enrol, range(16)))
    assert ids == list(range(2001, 2017))
    assert len(audit_rows(api.dsn, "pupil:2016")) == 1


def test_csv_import_all_or_nothing(api: Api):
    accounts_before = sql(api.dsn, "SELECT count(*) AS n FROM accounts")[0]["n"]
    bad = (
        "full_name,grade,class_name,card_uid,card_kind\n"
        "Смирнов Алексей,3,3А,04A1A2A3A4A5A6,service_card\n"  # good
        "Попова Мария,13,3А,04B1B2B3B4B5B6,social_card\n"  # grade
        ",4,4А,04C1,bracelet\n"  # full_name and card_uid (2 bytes)
        "Волков Дмитрий,4,4А,04A1A2A3A4A5A6,fob\n"  # duplicate of line 2
        f"Лебедев Кирилл,5,5А,{demo_card_uid(7).hex()},service_card\n"  # bound to pupil 7
        "Новикова Ольга,6,6А,04D1D2D3D4D5D6,credit_card\n"  # card_kind
    )
    r = api.as_("off1", "POST", "/schools/1/pupils/import", content=bad.encode(),
                headers={"Content-Type": "text/csv"})
    assert r.status_code == 422, r.text
    errors = {(e["row"], e["field"]) for e in r.json()["errors"]}
    assert errors == {(3, "grade"), (4, "full_name"), (4, "card_uid"), (5, "card_uid"), (6, "card_uid"),
                      (7, "card_kind")}
    assert all(e["message"] for e in r.json()["errors"])
    assert sql(api.dsn, "SELECT count(*) AS n FROM accounts")[0]["n"] == accounts_before
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0

    good = (
        "full_name,grade,class_name,card_uid,card_kind\n"
        "Смирнов Алексей,3,3А,04A1A2A3A4A5A6,service_card\n"
        "Попова Мария,0,подг.,04B1B2B3B4B5B6,social_card\n"
        "Волков Дмитрий,11,11В,,\n"
        "\"Орлова Анна-Мария, мл.\",7,7А,DEADBEEF,muscovite_card\n"
    )
    assert api.as_("off1", "POST", "/schools/2/pupils/import", content=good.encode(),
                   headers={"Content-Type": "text/csv"}).status_code == 403
    r = api.as_("off1", "POST", "/schools/1/pupils/import", content=good.encode(),
                headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    assert r.json() == {"imported": 4, "account_ids": [2001, 2002, 2003, 2004]}
    rows = sql(api.dsn, "SELECT p.account_id, p.full_name, p.grade, p.class_name, i.identifier, i.kind "
                        "FROM pupils p LEFT JOIN identifiers i ON i.account_id = p.account_id "
                        "WHERE p.account_id > 2000 ORDER BY p.account_id")
    assert [(r["full_name"], r["grade"], r["identifier"] and bytes(r["identifier"]).hex(), r["kind"]) for r in rows] == [
        ("Смирнов Алексей", 3, "04a1a2a3a4a5a6", 1),
        ("Попова Мария", 0, "04b1b2b3b4b5b6", 2),
        ("Волков Дмитрий", 11, None, None),
        ("Орлова Анна-Мария, мл.", 7, "deadbeef", 5),
    ]
    imported = audit_rows(api.dsn, "school:1")
    assert [a["action"] for a in imported] == ["pupil.import"]
    assert imported[0]["actor"] == "off1" and imported[0]["after"]["account_ids"] == [2001, 2002, 2003, 2004]


# --- cards ----------------------------------------------------------------------------------------


def test_bind_unbind_block_are_audited_evented_and_notified(api: Api):
    new_uid = "04e1e2e3e4e5e6"
    notes: list[str] = []

    async def scenario() -> None:
        conn = await asyncpg.connect(api.dsn)
        await conn.add_listener("ecard_changes", lambda *a: notes.append(a[3]))
        try:
            r = await asyncio.to_thread(api.as_, "off1", "POST", "/pupils/8/cards",
                                        json={"uid": new_uid, "kind": "fob"})
            assert r.status_code == 201, r.text
            r = await asyncio.to_thread(api.as_, "off1", "POST", "/pupils/9/cards", json={"uid": new_uid})
            assert r.status_code == 409 and "already bound to account 8" in r.json()["detail"]
            r = await asyncio.to_thread(api.as_, "off1", "DELETE", f"/cards/{new_uid}")
            assert r.status_code == 200, r.text
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/cards/{demo_card_uid(8).hex()}/block")
            assert r.status_code == 200 and r.json()["status"] == "blocked"
            deadline = time.monotonic() + 5
            while len(notes) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    run(scenario())
    assert notes == [f"identifier:{new_uid}", f"identifier:{new_uid}", f"identifier:{demo_card_uid(8).hex()}"]

    bind, unbind = audit_rows(api.dsn, f"card:{new_uid}")
    assert bind["action"] == "card.bind" and bind["before"] is None
    assert bind["after"]["account_id"] == 8 and bind["after"]["kind"] == "fob" and bind["after"]["status"] == "active"
    assert unbind["action"] == "card.unbind" and unbind["before"]["account_id"] == 8 and unbind["after"] is None
    (block,) = audit_rows(api.dsn, f"card:{demo_card_uid(8).hex()}")
    assert (block["before"]["status"], block["after"]["status"], block["actor"]) == ("active", "blocked", "off1")
    assert not sql(api.dsn, "SELECT 1 FROM identifiers WHERE identifier = $1", bytes.fromhex(new_uid))
    events = sql(api.dsn, "SELECT action, account_id, actor FROM identifier_events WHERE identifier = $1 ORDER BY id",
                 bytes.fromhex(new_uid))
    assert [(e["action"], e["account_id"], e["actor"]) for e in events] == [("bind", 8, "off1"), ("unbind", 8, "off1")]
    # a blocked card stays blocked, and is not unbound
    assert api.as_("off1", "DELETE", f"/cards/{demo_card_uid(8).hex()}").status_code == 409
    detail = api.as_("aud", "GET", f"/cards/{demo_card_uid(8).hex()}").json()
    assert [e["action"] for e in detail["events"]] == ["block"]


class ChangeListener:
    """LISTENs on ecard_changes in a background thread, as the gateway does."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.notes: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ChangeListener":
        self.thread.start()

        async def listen() -> None:
            self.conn = await asyncpg.connect(self.dsn)
            await self.conn.add_listener("ecard_changes", lambda *a: self.notes.append(a[3]))

        asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        return self

    def wait_for(self, *expected: str) -> None:
        wait_until(lambda: all(e in self.notes for e in expected), 5, f"notifications {expected}")

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.conn.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_reference_changes_notify_the_gateway(api: Api):
    with ChangeListener(api.dsn) as changes:
        assert api.as_("off1", "PATCH", "/pupils/21", json={"class_name": "6Б"}).status_code == 200
        assert api.as_("off1", "PUT", "/pupils/22/controls", json={"daily_limit_kopecks": 100}).status_code == 200
        assert api.op("PUT", "/schools/1/policy", json={"grace_kopecks": 500}).status_code == 200
        assert api.op("PUT", "/schools/1/products/3", json={"name": "Булочка с маком", "price_kopecks": 3_700,
                                                         "allergens": ["gluten", "eggs"]}).status_code == 200
        r = api.as_("off1", "POST", "/schools/1/pupils", json={"full_name": "Егоров Марк", "grade": 1,
                                                              "card": {"uid": "04abcdef01"}})
        assert r.status_code == 201
        changes.wait_for("account:21", "account:22", "school:1", "account:2001", "identifier:04abcdef01")
        # a refused change notifies nothing
        before = len(changes.notes)
        assert api.as_("off1", "PATCH", "/pupils/2000", json={"grade": 6}).status_code == 404
        assert api.as_("off1", "PUT", "/pupils/22/controls", json={"banned_products": [404]}).status_code == 422
        r = api.as_("off1", "POST", "/pupils/23/cards", json={"uid": "04abcdef02"})  # a last one, to fence
        assert r.status_code == 201
        changes.wait_for("identifier:04abcdef02")
        assert changes.notes[before:] == ["identifier:04abcdef02"]
    assert sql(api.dsn, "SELECT price_kopecks FROM products WHERE school_id = 1 AND code = 3")[0]["price_kopecks"] == 3_700


def _card(dsn: str, uid: bytes) -> dict:
    r = sql(dsn, "SELECT account_id, kind, status, expires_at_ms, replaces FROM identifiers WHERE identifier = $1", uid)[0]
    return {**dict(r), "replaces": r["replaces"] and bytes(r["replaces"])}


def _events(dsn: str, uid: bytes) -> list[tuple]:
    rows = sql(dsn, "SELECT action, related, actor, at_ms FROM identifier_events WHERE identifier = $1 ORDER BY id", uid)
    return [(r["action"], r["related"] and bytes(r["related"]), r["actor"], r["at_ms"]) for r in rows]


def test_temporary_card_forgotten(api: Api):
    api.clock.fixed_ms = T0
    original, temp = demo_card_uid(10), bytes.fromhex("06000000000010")
    r = api.as_("off1", "POST", f"/cards/{original.hex()}/temporary",
                json={"reason": "forgotten", "temporary_uid": temp.hex()})
    assert r.status_code == 201, r.text
    midnight = next_midnight_ms(T0, MSK)
    assert midnight == T0 + 14 * 3_600_000
    assert _card(api.dsn, original) == {"account_id": 10, "kind": 1, "status": 2, "expires_at_ms": midnight,
                                       "replaces": None}
    assert _card(api.dsn, temp) == {"account_id": 10, "kind": 6, "status": 0, "expires_at_ms": midnight,
                                   "replaces": original}
    assert r.json()["temporary"]["expires_at_ms"] == midnight and r.json()["original"]["status"] == "suspended"
    # the pupil shows both cards
    assert {c["kind"] for c in api.as_("cash1", "GET", "/pupils/10").json()["cards"]} == {"service_card", "temporary"}
    # a suspended card cannot get a second temporary card
    assert api.as_("off1", "POST", f"/cards/{original.hex()}/temporary",
                   json={"reason": "forgotten", "temporary_uid": "06000000000011"}).status_code == 409

    api.clock.fixed_ms = T0 + 3_600_000
    r = api.as_("off1", "POST", f"/cards/{temp.hex()}/return")
    assert r.status_code == 200, r.text
    assert _card(api.dsn, temp)["status"] == 1
    assert _card(api.dsn, original) == {"account_id": 10, "kind": 1, "status": 0, "expires_at_ms": None,
                                       "replaces": None}
    assert _events(api.dsn, original) == [("forgotten", temp, "off1", T0), ("restored", temp, "off1", T0 + 3_600_000)]
    assert _events(api.dsn, temp) == [("bind", original, "off1", T0), ("returned", original, "off1", T0 + 3_600_000)]
    assert [a["action"] for a in audit_rows(api.dsn, f"card:{original.hex()}")] == [
        "card.temporary.forgotten", "card.restore"]
    assert api.as_("off1", "POST", f"/cards/{temp.hex()}/return").status_code == 409


def test_temporary_card_lost(api: Api):
    api.clock.fixed_ms = T0
    original, temp = demo_card_uid(11), bytes.fromhex("06000000000011")
    r = api.as_("off1", "POST", f"/cards/{original.hex()}/temporary", json={"reason": "lost", "temporary_uid": temp.hex()})
    assert r.status_code == 201, r.text
    assert _card(api.dsn, original)["status"] == 1 and _card(api.dsn, original)["expires_at_ms"] is None
    assert _card(api.dsn, temp) == {"account_id": 11, "kind": 6, "status": 0, "expires_at_ms": None,
                                   "replaces": original}
    # binding a new permanent card leaves a lost card's temporary card alone
    assert api.as_("off1", "POST", "/pupils/11/cards", json={"uid": "04f1f2f3f4f5f6"}).status_code == 201
    assert _card(api.dsn, temp)["status"] == 0
    api.clock.fixed_ms = T0 + 60_000
    assert api.as_("off1", "POST", f"/cards/{temp.hex()}/return").status_code == 200
    assert _card(api.dsn, temp)["status"] == 1
    assert _card(api.dsn, original)["status"] == 1  # lost stays blocked for good
    assert _events(api.dsn, original) == [("lost", temp, "off1", T0)]
    assert _events(api.dsn, temp) == [("bind", original, "off1", T0), ("returned", original, "off1", T0 + 60_000)]


def test_temporary_card_broken_until_a_new_card_is_bound(api: Api):
    api.clock.fixed_ms = T0
    original, temp, new = demo_card_uid(12), bytes.fromhex("06000000000012"), bytes.fromhex("04121212121212")
    r = api.as_("op", "POST", f"/cards/{original.hex()}/temporary", json={"reason": "broken", "temporary_uid": temp.hex()})
    assert r.status_code == 201, r.text
    assert _card(api.dsn, original)["status"] == 1
    assert _card(api.dsn, temp) == {"account_id": 12, "kind": 6, "status": 0, "expires_at_ms": None,
                                   "replaces": original}
    api.clock.fixed_ms = T0 + 86_400_000
    r = api.as_("off1", "POST", "/pupils/12/cards", json={"uid": new.hex(), "kind": "social_card"})
    assert r.status_code == 201, r.text
    assert _card(api.dsn, temp)["status"] == 1
    assert _card(api.dsn, new)["status"] == 0
    assert _events(api.dsn, original) == [("broken", temp, "op", T0)]
    assert _events(api.dsn, temp) == [("bind", original, "op", T0), ("block", new, "off1", T0 + 86_400_000)]
    blocked = audit_rows(api.dsn, f"card:{temp.hex()}")
    assert [a["action"] for a in blocked] == ["card.bind", "card.block"]
    assert blocked[1]["after"]["status"] == "blocked"
    # a temporary card cannot stand for a temporary card; a cashier issues none
    assert api.as_("cash1", "POST", f"/cards/{new.hex()}/temporary",
                   json={"reason": "lost", "temporary_uid": "06000000000099"}).status_code == 403


# --- money ------------------------------------------------------------------------------------------


class StandInApplier:
    """Applies commands the way the gateway promises (status, result, NOTIFY done), for the API contract."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> "StandInApplier":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    async def _listen(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.add_listener("ecard_commands", lambda *a: self.loop.create_task(self._apply()))

    async def _apply(self) -> None:
        rows = await self.conn.fetch(
            """UPDATE commands SET status = CASE WHEN abs((payload->>'amount_kopecks')::bigint) > 100000 THEN 2 ELSE 1 END,
                      result = jsonb_build_object('reason', CASE WHEN abs((payload->>'amount_kopecks')::bigint) > 100000
                                                                 THEN 'INSUFFICIENT_FUNDS' ELSE 'OK' END),
                      decided_at_ms = 1
               WHERE status = 0 RETURNING seq""")
        if rows:
            await self.conn.execute("SELECT pg_notify('ecard_command_done', $1)", ",".join(str(r["seq"]) for r in rows))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.conn.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_money_post_is_idempotent_and_audited(api: Api):
    applier = StandInApplier(api.dsn).start()
    try:
        body = {"from_account_id": 1, "to_account_id": 2, "amount_kopecks": 5_000}
        first = api.as_("off1", "POST", "/money/transfers", json=body, headers={"Idempotency-Key": "t-1"})
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "applied" and first.json()["reason"] == "OK"
        again = api.as_("off1", "POST", "/money/transfers", json=body, headers={"Idempotency-Key": "t-1"})
        assert again.status_code == 200 and again.json() == first.json()
        other = api.as_("off1", "POST", "/money/transfers", json={**body, "amount_kopecks": 6_000},
                        headers={"Idempotency-Key": "t-1"})
        assert other.status_code == 409 and "IdempotencyConflict" in other.json()["detail"]
        cmd = sql(api.dsn, "SELECT seq, kind, payload, requested_by FROM commands")
        assert len(cmd) == 1 and cmd[0]["kind"] == "transfer" and cmd[0]["requested_by"] == "off1"
        assert json.loads(cmd[0]["payload"]) == body
        (audited,) = audit_rows(api.dsn, f"command:{cmd[0]['seq']}")
        assert audited["action"] == "money.transfer" and audited["after"]["payload"] == body

        refused = api.op("POST", "/money/corrections", json={"account_id": 3, "amount_kopecks": -200_000,
                                                              "reason": "двойное списание"},
                         headers={"Idempotency-Key": "c-1"})
        assert refused.status_code == 409 and refused.json()["reason"] == "INSUFFICIENT_FUNDS"
        refund = api.as_("cash1", "POST", "/money/refunds", json={"device_id": till_ids()[0], "device_txn": 5},
                         headers={"Idempotency-Key": "r-1"})
        assert refund.status_code == 200 and refund.json()["status"] == "applied"
        assert json.loads(sql(api.dsn, "SELECT payload FROM commands WHERE idempotency_key = 'staff:r-1'")[0]["payload"]) \
            == {"device_id": till_ids()[0], "device_txn": 5, "amount_kopecks": None}
        # siblings only; a cashier neither transfers nor refunds another school's till
        assert api.op("POST", "/money/transfers", json={**body, "to_account_id": 3},
                      headers={"Idempotency-Key": "t-2"}).status_code == 422
        assert api.as_("cash1", "POST", "/money/transfers", json=body,
                       headers={"Idempotency-Key": "t-3"}).status_code == 403
    finally:
        applier.stop()


def test_money_pending_when_nobody_applies_is_202(api: Api):
    body = {"account_id": 4, "amount_kopecks": 700, "reason": "компенсация"}
    r = api.op("POST", "/money/corrections", json=body, headers={"Idempotency-Key": "p-1"})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    again = api.op("POST", "/money/corrections", json=body, headers={"Idempotency-Key": "p-1"})
    assert again.status_code == 202 and again.json()["seq"] == r.json()["seq"]
    assert len(audit_rows(api.dsn, f"command:{r.json()['seq']}")) == 1


def test_money_transfer_through_the_real_gateway(demo_dsn, tmp_path):
    api, server = make_api(demo_dsn, command_wait_ms=3_000)
    gateway = GatewayProcess(demo_dsn, tmp_path / "gateway.log").start()
    try:
        body = {"from_account_id": 1, "to_account_id": 2, "amount_kopecks": 5_000}
        first = api.as_("off1", "POST", "/money/transfers", json=body, headers={"Idempotency-Key": "g-1"})
        assert first.status_code == 200, first.text
        again = api.as_("off1", "POST", "/money/transfers", json=body, headers={"Idempotency-Key": "g-1"})
        assert again.status_code == 200 and again.json() == first.json()
        assert api.as_("off1", "POST", "/money/transfers", json={**body, "amount_kopecks": 1},
                       headers={"Idempotency-Key": "g-1"}).status_code == 409
        balances = {r["id"]: r["balance_kopecks"] for r in
                    sql(demo_dsn, "SELECT id, balance_kopecks FROM accounts WHERE id IN (1, 2)")}
        assert balances == {1: 45_000, 2: 55_000}
    finally:
        gateway.terminate()
        api.http.close()
        server.stop()


# --- audit, OpenAPI, command line ---------------------------------------------------------------------


def test_audit_filters_and_openapi(api: Api):
    api.as_("off1", "POST", f"/cards/{demo_card_uid(13).hex()}/block")
    api.op("POST", f"/cards/{demo_card_uid(14).hex()}/block")
    page = api.as_("aud", "GET", "/audit", params={"actor": "off1"}).json()
    assert [(e["actor"], e["entity"]) for e in page["entries"]] == [("off1", f"card:{demo_card_uid(13).hex()}")]
    assert len(api.as_("aud", "GET", "/audit", params={"entity": "card"}).json()["entries"]) == 2
    page = api.op("GET", "/audit", params={"limit": 1}).json()
    assert page["entries"][0]["actor"] == "op" and page["next_before_id"] is not None
    assert api.as_("off1", "GET", "/audit").status_code == 403

    doc = api.http.get("/schema/openapi.json").json()
    for path in ("/schools/{school_id}/pupils", "/schools/{school_id}/pupils/import", "/pupils/{account_id}",
                 "/pupils/{account_id}/controls", "/cards/{uid}/temporary", "/cards/{uid}/return",
                 "/money/transfers", "/money/refunds", "/money/corrections", "/staff", "/audit",
                 "/accounts/{account_id}/ledger", "/schools/{school_id}/products/{code}"):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_command_line(api: Api, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    made = subprocess.run([sys.executable, "-m", "staff_api", "create-staff", "--login", "cli-op", "--role",
                           "operator", "--pg-dsn", api.dsn], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    csv_file = tmp_path / "pupils.csv"
    csv_file.write_text("full_name,grade,class_name,card_uid,card_kind\nЗайцев Глеб,1,1А,04C0C0C0C0C0C0,fob\n")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "staff_api.cli", "--url", api.url, "--token", token, *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    out = cli("import-csv", "--school", "1", str(csv_file))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["account_ids"] == [2001]
    out = cli("pupils", "get", "2001")
    assert out.returncode == 0 and json.loads(out.stdout)["full_name"] == "Зайцев Глеб"
    out = cli("pupils", "get", "999999")
    assert out.returncode == 1 and "404" in out.stderr
