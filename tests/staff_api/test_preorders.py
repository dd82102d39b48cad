"""Meal pre-orders through the staff API, against real PostgreSQL and a real uvicorn server.

The demo school 1 (Moscow, UTC+3) has breakfast, lunch and snack and products 1..10, and a
policy row with the default preorder_lock_days = 3; school 2 (made by make_api) has no policy
row, no meal periods and no products. The clock is fixed per request (api.clock.fixed_ms).
"""

from __future__ import annotations

from datetime import date

import pytest

from protocol.limits import PREORDER_LINES_MAX
from staff_api.preorders import editable_until_ms, is_editable, last_editable_day, school_today
from test_staff_api import T0, Api, ChangeListener, api, audit_rows, sql  # noqa: F401  (api: the fixture)

HOUR = 3_600_000
DAY = 24 * HOUR
MSK = 180
# 2026-09-01 00:00 Moscow; T0 is 10:00 that day
MIDNIGHT_0901 = T0 - 10 * HOUR


def msk_midnight(day: date) -> int:
    """Unix ms of 00:00 Moscow time of ``day``."""
    return MIDNIGHT_0901 + (day - date(2026, 9, 1)).days * DAY


# --- pure ------------------------------------------------------------------------------------------


def test_school_today_in_the_school_time_zone():
    assert school_today(T0, MSK) == date(2026, 9, 1)
    # 23:59:59.999 Moscow is still the 1st; 00:00 Moscow is the 2nd (21:00 UTC of the 1st)
    assert school_today(msk_midnight(date(2026, 9, 2)) - 1, MSK) == date(2026, 9, 1)
    assert school_today(msk_midnight(date(2026, 9, 2)), MSK) == date(2026, 9, 2)
    # the same instant is still the 1st in UTC and in a western zone
    assert school_today(msk_midnight(date(2026, 9, 2)), 0) == date(2026, 9, 1)
    assert school_today(msk_midnight(date(2026, 9, 2)), -300) == date(2026, 9, 1)
    assert school_today(0, 0) == date(1970, 1, 1)
    assert school_today(-1, 0) == date(1969, 12, 31)


def test_lock_rule_boundary():
    day = date(2026, 9, 10)
    assert last_editable_day(day, 3) == date(2026, 9, 7)
    # editable while day - today >= lock_days: exactly 3 days before is still editable
    assert is_editable(day, date(2026, 9, 7), 3)
    assert not is_editable(day, date(2026, 9, 8), 3)
    assert is_editable(day, date(2026, 9, 1), 3)
    assert not is_editable(day, date(2026, 9, 11), 3)  # the past
    # lock_days 0: editable through the day itself
    assert is_editable(day, day, 0) and not is_editable(day, date(2026, 9, 11), 0)
    # it locks at 00:00 Moscow of the 8th
    until = editable_until_ms(day, 3, MSK)
    assert until == msk_midnight(date(2026, 9, 8))
    assert is_editable(day, school_today(until - 1, MSK), 3)
    assert not is_editable(day, school_today(until, MSK), 3)
    assert editable_until_ms(day, 3, 0) == until + 3 * HOUR


# --- API ---------------------------------------------------------------------------------------------

PATH = "/pupils/5/preorders/2026-09-10/lunch"


def test_happy_path_audited_and_notified(api: Api):
    api.clock.fixed_ms = T0
    with ChangeListener(api.dsn) as changes:
        r = api.as_("off1", "PUT", PATH, json={"items": [{"product_code": 2, "quantity": 1},
                                                         {"product_code": 9, "quantity": 2}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["items"] == [
            {"product_code": 2, "quantity": 1, "name": "Обед комплексный", "price_kopecks": 16_500},
            {"product_code": 9, "quantity": 2, "name": "Компот из сухофруктов", "price_kopecks": 2_000},
        ]
        assert body["editable"] and body["editable_until_ms"] == msk_midnight(date(2026, 9, 8))
        assert body["updated_by"] == "off1" and body["updated_at_ms"] == T0
        changes.wait_for("account:5")
    r = api.op("PUT", "/pupils/5/preorders/2026-09-10/breakfast", json={"items": [{"product_code": 1, "quantity": 1}]})
    assert r.status_code == 200, r.text
    api.op("PUT", "/pupils/5/preorders/2026-09-20/snack", json={"items": [{"product_code": 7, "quantity": 1}]})

    rows = sql(api.dsn, "SELECT day, period, product_code, quantity, updated_by FROM preorders "
                        "WHERE account_id = 5 ORDER BY day, period, product_code")
    assert [tuple(r) for r in rows] == [
        (date(2026, 9, 10), "breakfast", 1, 1, "op"), (date(2026, 9, 10), "lunch", 2, 1, "off1"),
        (date(2026, 9, 10), "lunch", 9, 2, "off1"), (date(2026, 9, 20), "snack", 7, 1, "op")]

    # the pupil's list: by day, then period start; the cashier of the school reads it too
    r = api.as_("cash1", "GET", "/pupils/5/preorders", params={"from": "2026-09-10", "to": "2026-09-10"})
    assert r.status_code == 200, r.text
    listed = r.json()
    assert listed["today"] == "2026-09-01" and listed["preorder_lock_days"] == 3
    assert [(p["day"], p["period"]) for p in listed["preorders"]] == [("2026-09-10", "breakfast"),
                                                                       ("2026-09-10", "lunch")]
    # default range: today + 30 days
    r = api.as_("aud", "GET", "/pupils/5/preorders")
    assert [p["day"] for p in r.json()["preorders"]] == ["2026-09-10", "2026-09-10", "2026-09-20"]
    r = api.op("GET", "/pupils/5/preorders", params={"from": "2026-09-10", "to": "2026-09-09"})
    assert r.status_code == 422 and r.json()["field"] == "to"

    # the change: before and after in the audit log, in the same transaction as the rows
    r = api.as_("off1", "PUT", PATH, json={"items": [{"product_code": 2, "quantity": 3}]})
    assert r.status_code == 200
    assert audit_rows(api.dsn, "preorder:5:2026-09-10:lunch") == [
        {"actor": "off1", "action": "preorder.set", "before": {"items": []},
         "after": {"items": [{"product_code": 2, "quantity": 1}, {"product_code": 9, "quantity": 2}]}},
        {"actor": "off1", "action": "preorder.set",
         "before": {"items": [{"product_code": 2, "quantity": 1}, {"product_code": 9, "quantity": 2}]},
         "after": {"items": [{"product_code": 2, "quantity": 3}]}},
    ]
    # the same order again changes nothing and writes nothing
    assert api.as_("off1", "PUT", PATH, json={"items": [{"product_code": 2, "quantity": 3}]}).status_code == 200
    assert len(audit_rows(api.dsn, "preorder:5:2026-09-10:lunch")) == 2
    r = api.op("GET", "/audit", params={"entity": "preorder"})
    assert len(r.json()["entries"]) == 4


def test_lock_boundary_in_the_school_time_zone(api: Api):
    items = {"items": [{"product_code": 2, "quantity": 1}]}
    # the last millisecond of 2026-09-07 in Moscow: exactly 3 days before, still editable
    api.clock.fixed_ms = msk_midnight(date(2026, 9, 8)) - 1
    assert api.as_("off1", "PUT", PATH, json=items).status_code == 200
    # 00:00 Moscow of the 8th (21:00 UTC of the 7th): locked
    api.clock.fixed_ms = msk_midnight(date(2026, 9, 8))
    r = api.as_("off1", "PUT", PATH, json={"items": [{"product_code": 2, "quantity": 2}]})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "locked" in detail and "editable until the end of 2026-09-07" in detail and "UTC+03:00" in detail
    # cancelling is a change too; the operator is bound by the lock as well
    assert api.op("PUT", PATH, json={"items": []}).status_code == 409
    assert api.op("PUT", "/pupils/5/preorders/2026-08-31/lunch", json=items).status_code == 409  # the past
    assert [r["quantity"] for r in sql(api.dsn, "SELECT quantity FROM preorders WHERE account_id = 5")] == [1]
    assert len(audit_rows(api.dsn, "preorder:5:2026-09-10:lunch")) == 1
    listed = api.op("GET", "/pupils/5/preorders", params={"from": "2026-09-10", "to": "2026-09-10"}).json()
    assert listed["today"] == "2026-09-08" and listed["preorders"][0]["editable"] is False
    assert api.op("GET", "/schools/1/preorders/2026-09-10").json()["final"] is True

    # the school's policy decides: lock 0 makes the day itself editable
    assert api.op("PUT", "/schools/1/policy", json={"preorder_lock_days": 0}).status_code == 200
    api.clock.fixed_ms = msk_midnight(date(2026, 9, 10)) + 8 * HOUR
    assert api.as_("off1", "PUT", PATH, json={"items": []}).status_code == 200
    assert api.as_("off1", "PUT", "/pupils/5/preorders/2026-09-09/lunch", json=items).status_code == 409

    # school 2 has no policy row: the default of 3 days
    sql(api.dsn, "INSERT INTO meal_periods (school_id, name, starts_minute, ends_minute) VALUES (2, 'lunch', 700, 800)")
    sql(api.dsn, "INSERT INTO products (school_id, code, name, price_kopecks) VALUES (2, 1, 'Обед', 15000)")
    api.clock.fixed_ms = msk_midnight(date(2026, 9, 7)) + 12 * HOUR
    one = {"items": [{"product_code": 1, "quantity": 1}]}
    assert api.op("PUT", "/pupils/2000/preorders/2026-09-10/lunch", json=one).status_code == 200
    assert api.op("PUT", "/pupils/2000/preorders/2026-09-09/lunch", json=one).status_code == 409


def test_wrong_period_and_unknown_product_are_422(api: Api):
    api.clock.fixed_ms = T0

    def check(r, field: str) -> None:
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field, r.json()

    items = {"items": [{"product_code": 2, "quantity": 1}]}
    r = api.op("PUT", "/pupils/5/preorders/2026-09-10/dinner", json=items)
    check(r, "period")
    assert "breakfast, lunch, snack" in r.json()["detail"]
    # school 2 has no meal periods at all
    check(api.op("PUT", "/pupils/2000/preorders/2026-09-10/lunch", json=items), "period")
    r = api.op("PUT", PATH, json={"items": [{"product_code": 2, "quantity": 1}, {"product_code": 404, "quantity": 1},
                                            {"product_code": 11, "quantity": 1}]})
    check(r, "items[1].product_code")
    assert [e["field"] for e in r.json()["errors"]] == ["items[1].product_code", "items[2].product_code"]
    assert "404" in r.json()["detail"]
    check(api.op("PUT", PATH, json={"items": [{"product_code": 2, "quantity": 1}, {"product_code": 2, "quantity": 1}]}),
          "items[1].product_code")
    check(api.op("PUT", PATH, json={"items": [{"product_code": 2, "quantity": 21}]}), "items[0].quantity")
    check(api.op("PUT", PATH, json={"items": [{"product_code": 2, "quantity": 0}]}), "items[0].quantity")
    check(api.op("PUT", PATH, json={}), "items")
    check(api.op("PUT", "/pupils/5/preorders/2026-02-30/lunch", json=items), "day")
    check(api.op("PUT", "/pupils/5/preorders/20260910/lunch", json=items), "day")
    check(api.op("GET", "/schools/1/preorders/tomorrow"), "day")
    assert api.op("PUT", "/pupils/99999/preorders/2026-09-10/lunch", json=items).status_code == 404
    assert sql(api.dsn, "SELECT count(*) AS n FROM preorders")[0]["n"] == 0
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0


def test_role_denials(api: Api):
    api.clock.fixed_ms = T0
    items = {"items": [{"product_code": 2, "quantity": 1}]}
    r = api.as_("aud", "PUT", PATH, json=items)
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    r = api.as_("cash1", "PUT", PATH, json=items)
    assert r.status_code == 403 and "cashier" in r.json()["detail"]
    # another school's pupil: as a pupil that does not exist
    r = api.as_("off1", "PUT", "/pupils/2000/preorders/2026-09-10/lunch", json=items)
    assert r.status_code == 404 and r.json()["detail"] == "no pupil with account 2000", r.text
    r = api.as_("off1", "GET", "/pupils/2000/preorders")
    assert r.status_code == 404 and r.json()["detail"] == "no pupil with account 2000", r.text
    assert api.as_("cash1", "GET", "/schools/2/preorders/2026-09-10").status_code == 403
    assert api.as_(None, "PUT", PATH, json=items).status_code == 401
    assert sql(api.dsn, "SELECT count(*) AS n FROM preorders")[0]["n"] == 0
    # the readers
    assert api.as_("cash1", "GET", "/schools/1/preorders/2026-09-10").status_code == 200
    assert api.as_("aud", "GET", "/schools/2/preorders/2026-09-10").status_code == 200


def test_no_more_lines_per_pupil_and_day_than_the_till_receives(api: Api):
    """The till gets at most PREORDER_LINES_MAX lines of a pupil's day (all periods together):
    a PUT that would store more is 422 and writes nothing, so the cashier never sees a cut list."""
    api.clock.fixed_ms = T0
    limit = PREORDER_LINES_MAX
    # enough products for one period above the limit (the demo school has 10)
    for code in range(11, limit + 6):
        sql(api.dsn, "INSERT INTO products (school_id, code, name, price_kopecks) VALUES (1, $1, $2, 1000)",
            code, f"Блюдо {code}")

    def items(codes) -> dict:
        return {"items": [{"product_code": c, "quantity": 1} for c in codes]}

    def refused(r, field: str = "items") -> str:
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == field, body
        assert str(limit) in body["detail"], body
        assert not any("\u0400" <= ch <= "\u04ff" for ch in body["detail"]), body  # English, not Russian
        return body["detail"]

    # one period above the limit
    refused(api.as_("off1", "PUT", PATH, json=items(range(1, limit + 2))))
    # exactly the limit in one period is fine
    assert api.as_("off1", "PUT", PATH, json=items(range(1, limit + 1))).status_code == 200
    # any further line on that day, in another period, is too many
    detail = refused(api.op("PUT", "/pupils/5/preorders/2026-09-10/breakfast", json=items([1])))
    assert "2026-09-10" in detail and "lunch" in detail, detail
    # the limit is per day: the day after is free
    assert api.op("PUT", "/pupils/5/preorders/2026-09-11/breakfast", json=items(range(1, 5))).status_code == 200
    # and per pupil: another pupil's day is free
    assert api.op("PUT", "/pupils/6/preorders/2026-09-10/breakfast", json=items(range(1, 5))).status_code == 200

    # split over periods: 10 at breakfast, then lunch may hold only limit - 10
    day = "/pupils/7/preorders/2026-09-12"
    assert api.op("PUT", f"{day}/breakfast", json=items(range(1, 11))).status_code == 200
    refused(api.op("PUT", f"{day}/lunch", json=items(range(1, limit - 10 + 2))))
    assert api.op("PUT", f"{day}/lunch", json=items(range(1, limit - 10 + 1))).status_code == 200
    refused(api.op("PUT", f"{day}/snack", json=items([3])))
    # replacing a period counts its new lines, not its old ones
    assert api.op("PUT", f"{day}/breakfast", json=items(range(1, 9))).status_code == 200
    assert api.op("PUT", f"{day}/snack", json=items([3, 4])).status_code == 200

    rows = sql(api.dsn, "SELECT account_id, day, count(*) AS n FROM preorders GROUP BY account_id, day "
                        "ORDER BY account_id, day")
    assert [(r["account_id"], r["day"].isoformat(), r["n"]) for r in rows] == [
        (5, "2026-09-10", limit), (5, "2026-09-11", 4), (6, "2026-09-10", 4), (7, "2026-09-12", limit)]
    assert max(r["n"] for r in rows) <= limit
    # the refusals wrote no audit row either: 7 accepted changes
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log WHERE action LIKE 'preorder.%'")[0]["n"] == 7

    # a day stored above the limit before the limit existed can still be trimmed and cancelled
    sql(api.dsn, "INSERT INTO preorders SELECT 8, '2026-09-10', 'lunch', code, 1, 0, 'op' FROM products "
                 "WHERE school_id = 1 AND code <= $1", limit + 2)
    refused(api.op("PUT", "/pupils/8/preorders/2026-09-10/snack", json=items([1])))
    assert api.op("PUT", "/pupils/8/preorders/2026-09-10/lunch", json=items(range(1, limit + 2))).status_code == 422
    assert api.op("PUT", "/pupils/8/preorders/2026-09-10/lunch", json=items(range(1, 4))).status_code == 200
    assert api.op("PUT", "/pupils/8/preorders/2026-09-10/lunch", json={"items": []}).status_code == 200


def test_cancel_with_an_empty_list(api: Api):
    api.clock.fixed_ms = T0
    assert api.as_("off1", "PUT", PATH, json={"items": [{"product_code": 2, "quantity": 1}]}).status_code == 200
    with ChangeListener(api.dsn) as changes:
        r = api.as_("off1", "PUT", PATH, json={"items": []})
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [] and r.json()["updated_at_ms"] is None
        changes.wait_for("account:5")
    assert sql(api.dsn, "SELECT count(*) AS n FROM preorders")[0]["n"] == 0
    assert [(a["action"], a["after"]) for a in audit_rows(api.dsn, "preorder:5:2026-09-10:lunch")] == [
        ("preorder.set", {"items": [{"product_code": 2, "quantity": 1}]}), ("preorder.cancel", {"items": []})]
    assert api.op("GET", "/pupils/5/preorders").json()["preorders"] == []
    # cancelling nothing is no change: 200, nothing audited
    assert api.as_("off1", "PUT", "/pupils/5/preorders/2026-09-11/lunch", json={"items": []}).status_code == 200
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 2


def test_kitchen_list_totals(api: Api):
    api.clock.fixed_ms = T0
    orders = [  # pupil, period, items
        (7, "lunch", [(2, 1), (9, 2)]),
        (6, "lunch", [(2, 1)]),
        (6, "breakfast", [(1, 1), (5, 1)]),
        (8, "lunch", [(2, 2), (3, 1)]),
    ]
    for pupil, period, items in orders:
        r = api.as_("off1", "PUT", f"/pupils/{pupil}/preorders/2026-09-10/{period}",
                    json={"items": [{"product_code": c, "quantity": q} for c, q in items]})
        assert r.status_code == 200, r.text
    api.op("PUT", "/pupils/6/preorders/2026-09-11/lunch", json={"items": [{"product_code": 2, "quantity": 5}]})
    # a pupil of another school on the same day stays off school 1's list
    sql(api.dsn, "INSERT INTO preorders VALUES (2000, '2026-09-10', 'lunch', 2, 7, 0, 'op')")

    r = api.as_("cash1", "GET", "/schools/1/preorders/2026-09-10")
    assert r.status_code == 200, r.text
    kitchen = r.json()
    assert kitchen["final"] is False and kitchen["editable_until_ms"] == msk_midnight(date(2026, 9, 8))
    assert [p["period"] for p in kitchen["periods"]] == ["breakfast", "lunch"]
    breakfast, lunch = kitchen["periods"]
    assert breakfast["totals"] == [{"product_code": 1, "name": "Завтрак комплексный", "quantity": 1},
                                   {"product_code": 5, "name": "Чай с лимоном", "quantity": 1}]
    assert lunch["totals"] == [{"product_code": 2, "name": "Обед комплексный", "quantity": 4},
                               {"product_code": 3, "name": "Булочка с маком", "quantity": 1},
                               {"product_code": 9, "name": "Компот из сухофруктов", "quantity": 2}]
    assert {p["account_id"]: [(i["product_code"], i["quantity"]) for i in p["items"]] for p in lunch["pupils"]} == {
        7: [(2, 1), (9, 2)], 6: [(2, 1)], 8: [(2, 2), (3, 1)]}
    assert all(p["full_name"].startswith("Ученик") for p in lunch["pupils"])
    # totals equal the sum over the pupils
    assert sum(t["quantity"] for t in lunch["totals"]) == sum(i["quantity"] for p in lunch["pupils"] for i in p["items"])
    assert api.op("GET", "/schools/1/preorders/2026-09-12").json()["periods"] == []
    assert api.op("GET", "/schools/9/preorders/2026-09-12").status_code == 404


@pytest.mark.parametrize("path", ["/schema/openapi.json"])
def test_openapi_documents_preorders(api: Api, path: str):
    paths = api.http.get(path).json()["paths"]
    assert "/pupils/{account_id}/preorders/{day}/{period}" in paths
    assert "/schools/{school_id}/preorders/{day}" in paths
