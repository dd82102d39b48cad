"""The building in the staff API: who is inside by class, the doors' log, reconciliation,
and the anti-passback policy, through the real HTTP API against real PostgreSQL.

Presence is what the gateway checkpoints with each passage (accounts.counters); here it is
written as the gateway would, so the read rule (ledger.state.presence_at) is what is tested.
"""

from __future__ import annotations

import msgspec
import pytest

from ledger.codes import Presence
from ledger.records import AccountCounters
from test_staff_api import T0, Api, api, audit_rows, sql  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test

HOUR_MS = 3_600_000


def passed(dsn: str, account_id: int, presence: Presence, at_ms: int) -> None:
    counters = AccountCounters(presence=int(presence), passage_ms=at_ms, entry_ms=at_ms)
    sql(dsn, "UPDATE accounts SET counters = $2 WHERE id = $1", account_id, msgspec.json.encode(counters))


def inside_ids(body: dict) -> list[int]:
    return [p["account_id"] for c in body["classes"] for p in c["inside"]]


def test_who_is_inside_by_class_and_who_may_see_it(api: Api):
    api.clock.fixed_ms = T0  # 10:00 in Moscow
    passed(api.dsn, 5, Presence.INSIDE, T0 - HOUR_MS)
    passed(api.dsn, 6, Presence.OUTSIDE, T0 - HOUR_MS)
    passed(api.dsn, 7, Presence.INSIDE, T0 - 24 * HOUR_MS)  # yesterday: every night resets it
    r = api.as_("off1", "GET", "/schools/1/presence")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["inside"], body["outside"], body["at_ms"]) == (1, 1, T0)
    assert body["unknown"] == sum(c["pupils"] for c in body["classes"]) - 2
    assert inside_ids(body) == [5]
    (five,) = [p for c in body["classes"] for p in c["inside"]]
    assert five["since_ms"] == T0 - HOUR_MS and five["full_name"]
    assert api.as_("aud", "GET", "/schools/1/presence").status_code == 200
    r = api.as_("cash1", "GET", "/schools/1/presence")
    assert r.status_code == 403 and "cashier" in r.json()["detail"]
    assert api.as_("off1", "GET", "/schools/2/presence").status_code == 403
    assert api.op("GET", "/schools/99/presence").status_code == 404
    assert api.as_(None, "GET", "/schools/1/presence").status_code == 401


def test_reconciliation_after_an_evacuation_is_recorded_audited_and_logged(api: Api):
    api.clock.fixed_ms = T0
    passed(api.dsn, 5, Presence.INSIDE, T0 - HOUR_MS)
    r = api.as_("aud", "POST", "/schools/1/presence/reset", json={"reason": "evacuation"})
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert api.as_("off1", "POST", "/schools/2/presence/reset", json={}).status_code == 403
    r = api.as_("off1", "POST", "/schools/1/presence/reset", json={"reason": "x" * 201})
    assert r.status_code == 422 and "reason" in r.text
    r = api.as_("off1", "POST", "/schools/1/presence/reset", json={"reason": "evacuation", "extra": 1})
    assert r.status_code == 422
    assert sql(api.dsn, "SELECT count(*) AS n FROM access_events")[0]["n"] == 0
    api.clock.fixed_ms = T0 + 60_000
    r = api.as_("off1", "POST", "/schools/1/presence/reset", json={"reason": "учебная эвакуация"})
    assert r.status_code == 200, r.text
    assert (r.json()["inside"], inside_ids(r.json())) == (0, [])
    (row,) = audit_rows(api.dsn, "school:1")
    assert (row["actor"], row["action"], row["after"]) == (
        "off1", "school.presence_reset", {"reason": "учебная эвакуация", "at_ms": T0 + 60_000})
    log = api.as_("off1", "GET", "/schools/1/access-events", params={"since_ms": T0}).json()
    assert [(e["kind"], e["at_ms"], e["detail"], e["account_id"]) for e in log] == [
        ("presence_reset", T0 + 60_000, "учебная эвакуация", None)]
    assert api.as_("off1", "GET", "/schools/1/access-events", params={"since_ms": T0 + 60_001}).json() == []
    assert api.as_("off1", "GET", "/schools/1/access-events", params={"limit": 0}).status_code == 422
    assert api.as_("cash1", "GET", "/schools/1/access-events").status_code == 403
    # a passage after the reconciliation counts again
    passed(api.dsn, 5, Presence.INSIDE, T0 + 120_000)
    api.clock.fixed_ms = T0 + 180_000
    assert inside_ids(api.as_("off1", "GET", "/schools/1/presence").json()) == [5]


def test_anti_passback_policy_is_the_operators_and_validated(api: Api):
    r = api.op("PUT", "/schools/1/policy", json={"anti_passback": "hard", "passback_entry_interval_s": 300})
    assert r.status_code == 200, r.text
    policy = api.op("GET", "/schools/1").json()["policy"]
    assert (policy["anti_passback"], policy["passback_entry_interval_s"]) == ("hard", 300)
    assert sql(api.dsn, "SELECT anti_passback FROM school_policies WHERE school_id = 1")[0]["anti_passback"] == 2
    for bad in ({"anti_passback": "medium"}, {"passback_entry_interval_s": -1}, {"passback_entry_interval_s": 86_401}):
        r = api.op("PUT", "/schools/1/policy", json=bad)
        assert r.status_code == 422, (bad, r.text)
    assert api.as_("off1", "PUT", "/schools/1/policy", json={"anti_passback": "off"}).status_code == 403
    assert api.op("GET", "/schools/1").json()["policy"]["anti_passback"] == "hard"


def test_offline_till_policy_is_the_operators_and_validated(api: Api):
    r = api.op("PUT", "/schools/1/policy", json={"offline_floor_kopecks": 21_000, "offline_sales_per_card_max": 2})
    assert r.status_code == 200, r.text
    policy = api.op("GET", "/schools/1").json()["policy"]
    assert (policy["offline_floor_kopecks"], policy["offline_sales_per_card_max"]) == (21_000, 2)
    row = sql(api.dsn, "SELECT offline_floor_kopecks, offline_sales_per_card_max FROM school_policies"
                       " WHERE school_id = 1")[0]
    assert (row["offline_floor_kopecks"], row["offline_sales_per_card_max"]) == (21_000, 2)
    for bad in ({"offline_floor_kopecks": -1}, {"offline_floor_kopecks": 1 << 32}, {"offline_sales_per_card_max": 256},
                {"offline_sales_per_card_max": "two"}):
        r = api.op("PUT", "/schools/1/policy", json=bad)
        assert r.status_code == 422, (bad, r.text)
    assert api.as_("off1", "PUT", "/schools/1/policy", json={"offline_floor_kopecks": 0}).status_code == 403
    assert api.op("GET", "/schools/1").json()["policy"]["offline_floor_kopecks"] == 21_000
