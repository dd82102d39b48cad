"""Pupils' representatives and the card events of the outbox, through the real HTTP API
against real PostgreSQL (the fixtures of test_staff_api: the demo school 1 with pupils
1..1000, each with a demo parent, representative N; every 10th pupil also with a
grandmother; school 2 with pupil 2000; staff op, aud, off1, cash1).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from ledger.codes import OutboxKind
from ledger.notices import NOTICE_DECODER, CardNotice, TemporaryCardIssuedNotice, TemporaryCardReturnedNotice
from staff_api.db import next_midnight_ms
from staff_api.representatives import REPRESENTATIVES_PER_PUPIL_MAX
from storage import representatives
from storage.demo_dataset import (
    DEMO_PUPILS,
    DEMO_REPRESENTED_PUPILS,
    demo_card_uid,
    demo_grandmother_phone,
    demo_parent_email,
    demo_parent_phone,
)
from test_staff_api import MSK, T0, Api, api, audit_rows, sql  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test

ALL_CHANNELS = ["portal", "sms", "ussd", "app_push", "tv_push", "email"]
ALL_KINDS = [k.value for k in OutboxKind]
GRANDMOTHERS = DEMO_REPRESENTED_PUPILS // 10


def application(**over: Any) -> dict[str, Any]:
    body = {
        "full_name": "Смирнова Ольга Петровна", "relation": "grandmother", "phone": "+79161234567",
        "email": "olga.smirnova@example.ru", "pupil_ids": [41], "channels": ["sms", "email"],
        "kinds": ["entry", "exit"], "consent": True, "consent_date": "2026-08-30",
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def subscribers(dsn: str, account_id: int, kind: str) -> list[tuple[int, tuple[str, ...]]]:
    async def go() -> list[representatives.Subscriber]:
        conn = await asyncpg.connect(dsn)
        try:
            return await representatives.subscribers(conn, account_id, kind)
        finally:
            await conn.close()

    return [(s.representative_id, s.channels) for s in asyncio.run(go())]


def count(dsn: str, table: str) -> int:
    return sql(dsn, f"SELECT count(*) AS n FROM {table}")[0]["n"]


# --- the demo dataset -------------------------------------------------------------------------------


def test_demo_pupils_have_parents_on_every_channel(demo_dsn):
    assert count(demo_dsn, "representatives") == DEMO_REPRESENTED_PUPILS + GRANDMOTHERS
    parent = sql(demo_dsn, "SELECT * FROM representatives WHERE id = 7")[0]
    assert (parent["relation"], parent["phone"], parent["email"]) == ("parent", "+79000000007", "parent7@example.ru")
    assert (demo_parent_phone(7), demo_parent_email(7)) == ("+79000000007", "parent7@example.ru")
    assert list(parent["channels"]) == ALL_CHANNELS and list(parent["kinds"]) == ALL_KINDS
    for kind in ALL_KINDS:
        assert subscribers(demo_dsn, 7, kind) == [(7, tuple(ALL_CHANNELS))]
    # pupil 20: its parent, and a grandmother on SMS for low balance and card events only
    granny = DEMO_REPRESENTED_PUPILS + 2
    assert sql(demo_dsn, "SELECT phone FROM representatives WHERE id = $1", granny)[0]["phone"] == demo_grandmother_phone(20)
    assert subscribers(demo_dsn, 20, "low_balance") == [(20, tuple(ALL_CHANNELS)), (granny, ("sms",))]
    assert subscribers(demo_dsn, 20, "purchase") == [(20, tuple(ALL_CHANNELS))]
    assert subscribers(demo_dsn, DEMO_PUPILS, "entry") == [(DEMO_PUPILS, tuple(ALL_CHANNELS))]
    # the sequence continues after the demo's explicit ids
    nxt = sql(demo_dsn, "SELECT nextval('representatives_id_seq') AS n")[0]["n"]
    assert nxt == DEMO_REPRESENTED_PUPILS + GRANDMOTHERS + 1
    with pytest.raises(ValueError):
        subscribers(demo_dsn, 7, "fire_alarm")


# --- registration -----------------------------------------------------------------------------------


def test_register_read_and_list(api: Api):
    api.clock.fixed_ms = T0
    body = application(pupil_ids=[42, 41, 42], channels=["email", "sms", "email"],
                       kinds=["low_balance", "entry", "purchase"])
    r = api.as_("off1", "POST", "/applications", json=body)
    assert r.status_code == 201, r.text
    rep = r.json()
    first_id = DEMO_REPRESENTED_PUPILS + GRANDMOTHERS + 1
    assert rep == {
        "id": first_id, "school_id": 1, "full_name": "Смирнова Ольга Петровна", "relation": "grandmother",
        "phone": "+79161234567", "email": "olga.smirnova@example.ru", "pupil_ids": [41, 42],
        "channels": ["sms", "email"], "kinds": ["entry", "purchase", "low_balance"],
        "consent_date": "2026-08-30", "status": "active", "registered_by": "off1", "registered_at_ms": T0,
        "updated_at_ms": T0, "suspended_at_ms": None, "removed_at_ms": None,
    }
    # readers: operator, the school's officer, the auditor; not the cashier (parents' personal data)
    for who in ("op", "off1", "aud"):
        got = api.as_(who, "GET", f"/representatives/{first_id}")
        assert got.status_code == 200 and got.json() == rep
    r = api.as_("cash1", "GET", f"/representatives/{first_id}")
    assert r.status_code == 403 and "cashier" in r.json()["detail"]
    assert api.as_("cash1", "GET", "/pupils/41/representatives").status_code == 403
    assert api.op("GET", "/representatives/999999").status_code == 404

    listed = api.as_("off1", "GET", "/pupils/42/representatives").json()
    assert listed["account_id"] == 42 and listed["representatives_max"] == REPRESENTATIVES_PER_PUPIL_MAX
    assert [(x["id"], x["relation"]) for x in listed["representatives"]] == [(42, "parent"), (first_id, "grandmother")]
    assert listed["not_removed"] == 2
    assert api.op("GET", "/pupils/999999/representatives").status_code == 404

    (audited,) = audit_rows(api.dsn, f"representative:{first_id}")
    assert audited["action"] == "representative.register" and audited["actor"] == "off1"
    assert audited["before"] is None and audited["after"] == rep
    # the new representative hears of entries of both pupils, on its two channels
    assert subscribers(api.dsn, 41, "entry") == [(41, tuple(ALL_CHANNELS)), (first_id, ("sms", "email"))]
    assert subscribers(api.dsn, 42, "purchase")[-1] == (first_id, ("sms", "email"))
    assert subscribers(api.dsn, 42, "exit") == [(42, tuple(ALL_CHANNELS))]  # not wanted

    # the operator registers for any school; a representative without e-mail on SMS only
    r = api.op("POST", "/applications", json=application(pupil_ids=[2000], email=None, channels=["sms"],
                                                          relation="nanny"))
    assert r.status_code == 201, r.text
    assert (r.json()["school_id"], r.json()["email"], r.json()["relation"]) == (2, None, "nanny")
    assert subscribers(api.dsn, 2000, "entry") == [(r.json()["id"], ("sms",))]


def test_every_refusal_writes_nothing(api: Api):
    api.clock.fixed_ms = T0
    reps_before = count(api.dsn, "representatives")
    links_before = count(api.dsn, "representative_pupils")

    def refused(r, status: int, field: str | None = None, text: str | None = None) -> None:
        assert r.status_code == status, r.text
        if field is not None:
            assert r.json()["field"] == field, r.json()
        if text is not None:
            assert text in r.json()["detail"], r.json()

    post = lambda body, who="off1": api.as_(who, "POST", "/applications", json=body)  # noqa: E731
    refused(post(application(phone="89161234567")), 422, "phone")
    refused(post(application(phone="+7916123456")), 422, "phone")
    refused(post(application(phone="+791612345678")), 422, "phone")
    refused(post(application(phone="+19161234567")), 422, "phone")
    refused(post(application(phone="+79161234567\n")), 422, "phone")
    refused(post(application(email="olga@example.ru\n")), 422, "email")
    refused(post(application(email="olga@")), 422, "email")
    refused(post(application(email="olga smirnova@example.ru")), 422, "email")
    refused(post(application(email="olga@example")), 422, "email")
    refused(post(application(relation="aunt")), 422, "relation")
    refused(post(application(channels=["sms", "telegram"])), 422, "channels[1]")
    refused(post(application(channels=[])), 422, "channels")
    refused(post(application(kinds=["entry", "balance"])), 422, "kinds[1]")
    refused(post(application(kinds=[])), 422, "kinds")
    refused(post(application(consent=...)), 422, "consent")
    refused(post(application(consent=False)), 422, "consent", "no consent, no registration")
    refused(post(application(consent_date=...)), 422, "consent_date")
    refused(post(application(consent_date="2026-09-02")), 422, "consent_date", "in the future")
    refused(post(application(consent_date="yesterday")), 422, "consent_date")
    refused(post(application(email=None)), 422, "email", "required when the channels include")
    refused(post(application(pupil_ids=[])), 422, "pupil_ids")
    refused(post(application(pupil_ids=[41, 1003])), 422, "pupil_ids[1]", "not a pupil's account")
    refused(post(application(pupil_ids=[41, 999999])), 422, "pupil_ids[1]")
    refused(post(application(full_name="")), 422, "full_name")
    refused(post(application(surname="x")), 422)
    refused(post(application(pupil_ids=[41, 2000]), "op"), 422, "pupil_ids", "one school")
    # other school's pupil, roles, no token
    # another school's pupil: refused as an account that is no pupil's (nothing told about it)
    refused(post(application(pupil_ids=[2000])), 422, "pupil_ids[0]", "account 2000 is not a pupil's account")
    refused(post(application(pupil_ids=[41, 2000])), 422, "pupil_ids[1]", "account 2000 is not a pupil's account")
    refused(post(application(), "aud"), 403, None, "read-only")
    refused(post(application(), "cash1"), 403, None, "allowed: operator, officer")
    refused(api.as_(None, "POST", "/applications", json=application()), 401)
    refused(api.as_(None, "POST", "/applications", json=application(phone="x")), 401)  # 401 before 422
    refused(api.as_(None, "GET", "/representatives/1"), 401)
    refused(api.as_("nobody", "GET", "/pupils/41/representatives"), 401)

    assert count(api.dsn, "representatives") == reps_before
    assert count(api.dsn, "representative_pupils") == links_before
    assert count(api.dsn, "audit_log") == 0


def test_at_most_six_representatives_per_pupil(api: Api):
    assert REPRESENTATIVES_PER_PUPIL_MAX == 6
    api.clock.fixed_ms = T0
    ids = []
    # pupil 43 has its demo parent: five more fit
    for n in range(5):
        r = api.as_("off1", "POST", "/applications",
                    json=application(pupil_ids=[43], phone=f"+7916000000{n}", relation="other"))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    # a seventh is refused, also within an application covering a pupil with room (44)
    for pupils in ([43], [44, 43]):
        r = api.as_("off1", "POST", "/applications", json=application(pupil_ids=pupils, phone="+79160000009"))
        assert r.status_code == 409, r.text
        assert "at most 6 representatives per pupil" in r.json()["detail"] and "pupil 43 has 6" in r.json()["detail"]
    assert subscribers(api.dsn, 44, "entry") == [(44, tuple(ALL_CHANNELS))]
    # a suspended one still counts (it may be resumed); a removed one does not
    assert api.as_("off1", "POST", f"/representatives/{ids[0]}/suspend").status_code == 200
    assert api.as_("off1", "POST", "/applications", json=application(pupil_ids=[43], phone="+79160000009")
                   ).status_code == 409
    assert api.as_("off1", "DELETE", f"/representatives/{ids[1]}").status_code == 200
    r = api.as_("off1", "POST", "/applications", json=application(pupil_ids=[43], phone="+79160000009"))
    assert r.status_code == 201, r.text
    listed = api.as_("off1", "GET", "/pupils/43/representatives").json()
    assert listed["not_removed"] == 6 and len(listed["representatives"]) == 6
    assert ids[1] not in [x["id"] for x in listed["representatives"]]
    everyone = api.as_("off1", "GET", "/pupils/43/representatives", params={"include_removed": "true"}).json()
    assert len(everyone["representatives"]) == 7 and everyone["not_removed"] == 6
    assert {x["id"]: x["status"] for x in everyone["representatives"]}[ids[1]] == "removed"


def test_one_phone_once_per_pupil(api: Api):
    api.clock.fixed_ms = T0
    r = api.as_("off1", "POST", "/applications", json=application(pupil_ids=[45], phone=demo_parent_phone(45)))
    assert r.status_code == 409 and "already representative 45 of pupil 45" in r.json()["detail"]
    first = api.as_("off1", "POST", "/applications", json=application(pupil_ids=[45]))
    assert first.status_code == 201
    assert api.as_("off1", "POST", "/applications", json=application(pupil_ids=[46, 45])).status_code == 409
    # a removed representative's phone may be registered again
    assert api.as_("off1", "DELETE", f"/representatives/{first.json()['id']}").status_code == 200
    assert api.as_("off1", "POST", "/applications", json=application(pupil_ids=[46, 45])).status_code == 201
    # nor may a change take a phone the pupil's other representative has
    r = api.as_("off1", "PATCH", "/representatives/46", json={"phone": "+79161234567"})
    assert r.status_code == 409 and "already representative" in r.json()["detail"]


def test_suspend_resume_remove(api: Api):
    api.clock.fixed_ms = T0
    r = api.as_("off1", "POST", "/applications", json=application(pupil_ids=[47], kinds=["entry", "purchase"]))
    rep_id = r.json()["id"]
    assert subscribers(api.dsn, 47, "entry") == [(47, tuple(ALL_CHANNELS)), (rep_id, ("sms", "email"))]

    api.clock.fixed_ms = T0 + 1_000
    r = api.as_("off1", "POST", f"/representatives/{rep_id}/suspend")
    assert r.status_code == 200 and r.json()["status"] == "suspended" and r.json()["suspended_at_ms"] == T0 + 1_000
    assert subscribers(api.dsn, 47, "entry") == [(47, tuple(ALL_CHANNELS))]
    r = api.as_("off1", "POST", f"/representatives/{rep_id}/suspend")
    assert r.status_code == 409 and "only an active representative can be suspended" in r.json()["detail"]

    api.clock.fixed_ms = T0 + 2_000
    r = api.as_("op", "POST", f"/representatives/{rep_id}/resume")
    assert r.status_code == 200 and r.json()["status"] == "active" and r.json()["suspended_at_ms"] is None
    assert subscribers(api.dsn, 47, "purchase")[-1] == (rep_id, ("sms", "email"))
    assert api.as_("off1", "POST", f"/representatives/{rep_id}/resume").status_code == 409

    # roles and schools
    assert api.as_("cash1", "POST", f"/representatives/{rep_id}/suspend").status_code == 403
    assert api.as_("aud", "DELETE", f"/representatives/{rep_id}").status_code == 403
    assert api.as_(None, "DELETE", f"/representatives/{rep_id}").status_code == 401
    assert api.as_("off1", "DELETE", "/representatives/999999").status_code == 404
    other = api.op("POST", "/applications", json=application(pupil_ids=[2000])).json()["id"]
    # another school's representative and pupil: the answers for ones that do not exist
    for method, path in (("GET", ""), ("POST", "/suspend"), ("DELETE", ""), ("GET", "/cards"), ("GET", "/sms")):
        r = api.as_("off1", method, f"/representatives/{other}{path}")
        assert r.status_code == 404 and r.json()["detail"] == f"no representative {other}", r.text
    r = api.as_("off1", "PATCH", f"/representatives/{other}", json={"channels": ["sms"]})
    assert r.status_code == 404
    r = api.as_("off1", "GET", "/pupils/2000/representatives")
    assert r.status_code == 404 and r.json()["detail"] == "no pupil with account 2000"

    api.clock.fixed_ms = T0 + 3_000
    r = api.as_("off1", "DELETE", f"/representatives/{rep_id}")
    assert r.status_code == 200 and r.json()["status"] == "removed" and r.json()["removed_at_ms"] == T0 + 3_000
    for kind in ALL_KINDS:
        assert rep_id not in [s for s, _ in subscribers(api.dsn, 47, kind)]
    # removed: kept on record, changes no more
    got = api.as_("aud", "GET", f"/representatives/{rep_id}")
    assert got.status_code == 200 and got.json()["status"] == "removed" and got.json()["pupil_ids"] == [47]
    for method, path, body in (("DELETE", "", None), ("POST", "/resume", None), ("POST", "/suspend", None),
                               ("PATCH", "", {"channels": ["sms"]})):
        r = api.as_("off1", method, f"/representatives/{rep_id}{path}", json=body)
        assert r.status_code == 409 and "removed" in r.json()["detail"], r.text
    assert [a["action"] for a in audit_rows(api.dsn, f"representative:{rep_id}")] == [
        "representative.register", "representative.suspend", "representative.resume", "representative.remove"]
    removal = audit_rows(api.dsn, f"representative:{rep_id}")[-1]
    assert (removal["actor"], removal["before"]["status"], removal["after"]["status"]) == ("off1", "active", "removed")


def test_suspended_then_removed_is_never_told(api: Api):
    api.clock.fixed_ms = T0
    rep_id = api.as_("off1", "POST", "/applications", json=application(pupil_ids=[48])).json()["id"]
    assert api.as_("off1", "POST", f"/representatives/{rep_id}/suspend").status_code == 200
    assert api.as_("off1", "DELETE", f"/representatives/{rep_id}").status_code == 200
    got = api.as_("off1", "GET", f"/representatives/{rep_id}").json()
    assert got["status"] == "removed" and got["suspended_at_ms"] == T0
    assert subscribers(api.dsn, 48, "entry") == [(48, tuple(ALL_CHANNELS))]
    sql(api.dsn, "UPDATE representatives SET suspended_at_ms = NULL WHERE id = $1", rep_id)  # removed alone suffices
    assert subscribers(api.dsn, 48, "entry") == [(48, tuple(ALL_CHANNELS))]


def test_change_channels_kinds_and_contact(api: Api):
    api.clock.fixed_ms = T0
    before = api.as_("off1", "POST", "/applications", json=application(pupil_ids=[49])).json()
    rep_id = before["id"]
    api.clock.fixed_ms = T0 + 5_000
    r = api.as_("off1", "PATCH", f"/representatives/{rep_id}",
                json={"channels": ["app_push", "portal", "app_push"], "kinds": ["card_blocked", "low_balance"],
                      "phone": "+79169999999", "email": None, "full_name": "Смирнова Ольга"})
    assert r.status_code == 200, r.text
    after = r.json()
    assert (after["channels"], after["kinds"]) == (["portal", "app_push"], ["low_balance", "card_blocked"])
    assert (after["phone"], after["email"], after["full_name"]) == ("+79169999999", None, "Смирнова Ольга")
    assert after["updated_at_ms"] == T0 + 5_000 and after["registered_at_ms"] == T0
    assert subscribers(api.dsn, 49, "entry") == [(49, tuple(ALL_CHANNELS))]
    assert subscribers(api.dsn, 49, "card_blocked")[-1] == (rep_id, ("portal", "app_push"))
    change = audit_rows(api.dsn, f"representative:{rep_id}")[-1]
    assert change["action"] == "representative.update"
    assert change["before"] == before and change["after"] == after

    def refused(body: dict, status: int, field: str | None = None, who: str = "off1") -> None:
        r = api.as_(who, "PATCH", f"/representatives/{rep_id}", json=body)
        assert r.status_code == status, r.text
        if field:
            assert r.json()["field"] == field, r.json()

    refused({}, 422, "body")
    refused({"channels": ["email"]}, 422, "email")  # no address now
    refused({"phone": "+7 916 999-99-99"}, 422, "phone")
    refused({"email": "nope"}, 422, "email")
    refused({"phone": "+79169999998\n"}, 422, "phone")
    refused({"relation": "neighbour"}, 422, "relation")
    refused({"kinds": ["everything"]}, 422, "kinds[0]")
    refused({"pupil_ids": [50]}, 422)  # the pupils are the application's: not changed here
    refused({"channels": ["sms"]}, 403, who="cash1")
    refused({"channels": ["sms"]}, 403, who="aud")
    assert api.as_("off1", "GET", f"/representatives/{rep_id}").json() == after
    r = api.as_("off1", "PATCH", f"/representatives/{rep_id}", json={"email": "o@example.ru", "channels": ["email"]})
    assert r.status_code == 200 and r.json()["channels"] == ["email"]


def test_openapi_lists_the_resources(api: Api):
    doc = api.http.get("/schema/openapi.json").json()
    for path in ("/applications", "/representatives/{representative_id}", "/representatives/{representative_id}/suspend",
                 "/representatives/{representative_id}/resume", "/pupils/{account_id}/representatives"):
        assert path in doc["paths"], path


# --- card events to the outbox ----------------------------------------------------------------------


def outbox(dsn: str) -> list[dict]:
    rows = sql(dsn, "SELECT event_id, kind, account_id, payload, created_at_ms FROM outbox ORDER BY id")
    return [{**dict(r), "payload": NOTICE_DECODER.decode(r["payload"])} for r in rows]


def test_card_events_written_to_the_outbox_once(api: Api):
    assert outbox(api.dsn) == []
    # block
    api.clock.fixed_ms = T0
    card = demo_card_uid(51)
    assert api.as_("off1", "POST", f"/cards/{card.hex()}/block").status_code == 200
    assert outbox(api.dsn) == [{
        "event_id": f"card:{card.hex()}:card_blocked:{T0}", "kind": "card_blocked", "account_id": 51,
        "created_at_ms": T0,
        "payload": CardNotice(account_id=51, school_id=1, at_ms=T0, identifier_hex=card.hex()),
    }]
    # the retried request is refused and writes nothing
    api.clock.fixed_ms = T0 + 10
    assert api.as_("off1", "POST", f"/cards/{card.hex()}/block").status_code == 409
    assert len(outbox(api.dsn)) == 1
    raw = json.loads(sql(api.dsn, "SELECT payload FROM outbox")[0]["payload"])
    assert raw == {"kind": "card_blocked", "account_id": 51, "school_id": 1, "at_ms": T0, "identifier_hex": card.hex()}

    # a temporary card issued (forgotten: it expires at the school's midnight) and returned
    original, temp = demo_card_uid(52), bytes.fromhex("06000000000052")
    api.clock.fixed_ms = T0 + 1_000
    r = api.as_("off1", "POST", f"/cards/{original.hex()}/temporary",
                json={"reason": "forgotten", "temporary_uid": temp.hex()})
    assert r.status_code == 201, r.text
    midnight = next_midnight_ms(T0 + 1_000, MSK)
    issued = outbox(api.dsn)[1:]
    assert issued == [{
        "event_id": f"card:{temp.hex()}:temporary_card_issued:{T0 + 1_000}", "kind": "temporary_card_issued",
        "account_id": 52, "created_at_ms": T0 + 1_000,
        "payload": TemporaryCardIssuedNotice(account_id=52, school_id=1, at_ms=T0 + 1_000,
                                             identifier_hex=temp.hex(), expires_at_ms=midnight),
    }]
    assert api.as_("off1", "POST", f"/cards/{original.hex()}/temporary",
                   json={"reason": "forgotten", "temporary_uid": temp.hex()}).status_code == 409
    assert len(outbox(api.dsn)) == 2
    api.clock.fixed_ms = T0 + 2_000
    assert api.as_("off1", "POST", f"/cards/{temp.hex()}/return").status_code == 200
    returned = outbox(api.dsn)[2:]
    assert returned == [{
        "event_id": f"card:{temp.hex()}:temporary_card_returned:{T0 + 2_000}", "kind": "temporary_card_returned",
        "account_id": 52, "created_at_ms": T0 + 2_000,
        "payload": TemporaryCardReturnedNotice(account_id=52, school_id=1, at_ms=T0 + 2_000,
                                               identifier_hex=temp.hex()),
    }]
    assert api.as_("off1", "POST", f"/cards/{temp.hex()}/return").status_code == 409
    assert len(outbox(api.dsn)) == 3

    # lost: the temporary card has no expiry (0, as the ledger writes it); one row, no card_blocked
    lost, temp2 = demo_card_uid(53), bytes.fromhex("06000000000053")
    api.clock.fixed_ms = T0 + 3_000
    assert api.as_("op", "POST", f"/cards/{lost.hex()}/temporary",
                   json={"reason": "lost", "temporary_uid": temp2.hex()}).status_code == 201
    (row,) = outbox(api.dsn)[3:]
    assert row["payload"] == TemporaryCardIssuedNotice(account_id=53, school_id=1, at_ms=T0 + 3_000,
                                                       identifier_hex=temp2.hex(), expires_at_ms=0)

    # broken: binding the new permanent card retires the temporary card, and says so
    broken, temp3, new = demo_card_uid(54), bytes.fromhex("06000000000054"), bytes.fromhex("04545454545454")
    assert api.as_("off1", "POST", f"/cards/{broken.hex()}/temporary",
                   json={"reason": "broken", "temporary_uid": temp3.hex()}).status_code == 201
    api.clock.fixed_ms = T0 + 4_000
    assert api.as_("off1", "POST", "/pupils/54/cards", json={"uid": new.hex()}).status_code == 201
    kinds = [(e["kind"], e["payload"].identifier_hex) for e in outbox(api.dsn)[4:]]
    assert kinds == [("temporary_card_issued", temp3.hex()), ("card_blocked", temp3.hex())]

    # refused card changes write nothing; every row's kind is its payload's tag
    assert api.as_("cash1", "POST", f"/cards/{demo_card_uid(55).hex()}/block").status_code == 403
    r = api.as_("off1", "POST", "/cards/0a0b0c0d/block")  # another school's card: as no card
    assert r.status_code == 404 and r.json()["detail"] == "no card 0a0b0c0d", r.text
    rows = outbox(api.dsn)
    assert len(rows) == 6 and len({e["event_id"] for e in rows}) == 6
    for e in rows:
        assert type(e["payload"]).__struct_config__.tag == e["kind"]
        assert e["payload"].account_id == e["account_id"]
    # the parent of pupil 51 is who hears of its blocked card
    assert subscribers(api.dsn, 51, "card_blocked") == [(51, tuple(ALL_CHANNELS))]


def test_card_event_wakes_the_relay_at_commit(api: Api):
    api.clock.fixed_ms = T0
    card = demo_card_uid(56)
    notes: list[str] = []

    async def scenario() -> None:
        conn = await asyncpg.connect(api.dsn)
        await conn.add_listener("ecard_outbox", lambda *a: notes.append(a[3]))
        try:
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/cards/{card.hex()}/block")
            assert r.status_code == 200, r.text
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/cards/{card.hex()}/block")  # refused
            assert r.status_code == 409
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/cards/{demo_card_uid(57).hex()}/block")
            assert r.status_code == 200
            for _ in range(500):
                if len(notes) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert notes == [f"card:{card.hex()}:card_blocked:{T0}", f"card:{demo_card_uid(57).hex()}:card_blocked:{T0}"]


# --- delivery records, as the operator reads them -----------------------------------------------


def _delivered(dsn: str, representative_id: int, account_id: int, statuses: list[str]) -> None:
    sql(dsn, "INSERT INTO processed_events (event_id, kind, account_id, school_id, at_ms, created_at_ms,"
             " received_at_ms, notice, deliveries) VALUES ($1, 'entry', $2, 1, 1, 1, 1, '{}'::jsonb, $3)",
        f"1000001:{account_id}:entry", account_id, len(statuses))
    for n, status in enumerate(statuses):
        sql(dsn, "INSERT INTO deliveries (event_id, representative_id, channel, address, status, next_attempt_at_ms,"
                 " created_at_ms, updated_at_ms) VALUES ($1, $2, $3, 'x', $4, 0, $5, $5)",
            f"1000001:{account_id}:entry", representative_id, ["email", "app_push", "sms"][n], status, 10 + n)


def test_operators_read_a_representatives_deliveries_and_the_dead_letters(api):
    _delivered(api.dsn, 7, 7, ["sent", "dead", "pending"])
    r = api.as_("op", "GET", "/representatives/7/deliveries")
    assert r.status_code == 200, r.text
    assert [(d["channel"], d["status"]) for d in r.json()] == [("sms", "pending"), ("app_push", "dead"), ("email", "sent")]
    page = api.as_("op", "GET", "/representatives/7/deliveries", params={"limit": 2}).json()
    rest = api.as_("op", "GET", "/representatives/7/deliveries", params={"limit": 2, "before_id": page[-1]["id"]}).json()
    assert [d["channel"] for d in page + rest] == ["sms", "app_push", "email"]
    assert api.as_("off1", "GET", "/representatives/7/deliveries").status_code == 200
    assert api.as_("aud", "GET", "/representatives/7/deliveries").status_code == 200
    assert api.as_("cash1", "GET", "/representatives/7/deliveries").status_code == 403
    assert api.as_("op", "GET", "/representatives/999999/deliveries").status_code == 404
    assert api.as_("op", "GET", "/representatives/7/deliveries", params={"limit": 0}).status_code == 422
    dead = api.as_("aud", "GET", "/deliveries/dead")
    assert dead.status_code == 200 and [d["channel"] for d in dead.json()] == ["app_push"]
    assert api.as_("off1", "GET", "/deliveries/dead").status_code == 403


def test_a_representatives_sms_plan_is_set_by_the_school_and_audited(api):
    assert api.as_("op", "GET", "/representatives/7/sms").json() == {
        "plan": "free", "daily_cap": 20, "quiet_from_minute": 1320, "quiet_to_minute": 420, "digest": False,
        "digest_minute": 1200,
    }
    body = {"plan": "paid", "daily_cap": 5, "quiet_from_minute": 1260, "quiet_to_minute": 480, "digest": True,
            "digest_minute": 1140}
    r = api.as_("off1", "PUT", "/representatives/7/sms", json=body)
    assert r.status_code == 200, r.text
    assert api.as_("aud", "GET", "/representatives/7/sms").json() == body
    row = sql(api.dsn, "SELECT plan, daily_cap, digest FROM representative_sms WHERE representative_id = 7")[0]
    assert (row["plan"], row["daily_cap"], row["digest"]) == ("paid", 5, True)
    assert [a["action"] for a in audit_rows(api.dsn, "representative:7")][-1:] == ["representative.sms"]
    for bad in ({"plan": "gold"}, {"daily_cap": -1}, {"quiet_from_minute": 1440}, {"digest": "yes"}, {"extra": 1}):
        assert api.as_("op", "PUT", "/representatives/7/sms", json={**body, **bad}).status_code in (400, 422), bad
    assert api.as_("aud", "PUT", "/representatives/7/sms", json=body).status_code == 403
    assert api.as_("cash1", "GET", "/representatives/7/sms").status_code == 403
    assert api.as_("op", "PUT", "/representatives/999999/sms", json=body).status_code == 404
    assert sql(api.dsn, "SELECT daily_cap FROM representative_sms WHERE representative_id = 7")[0]["daily_cap"] == 5
