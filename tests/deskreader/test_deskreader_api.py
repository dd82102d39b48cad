"""The staff API's desk reader resource (staff_api/desk.py) against real PostgreSQL, with the
clock in the test's hands: registration, pending operations, the UID from the bridge, and
every refusal (no pending operation, another school, expired, the card rules' own)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from deskreader_support import DESK, T0, Api, Clock, ThreadServer, add_school2_and_staff, sql
from staff_api import create_app
from staff_api.db import next_midnight_ms
from staff_api.desk import DESK_OPERATION_TTL_MS
from storage.demo_dataset import demo_card_uid

pytestmark = pytest.mark.processes  # a uvicorn server of its own (in a thread), as tests/staff_api

NEW_UID = "04A1B2C3D4E5F6"


@pytest.fixture
def desk(demo_dsn):
    tokens = add_school2_and_staff(demo_dsn)
    clock = Clock(T0)
    server = ThreadServer(create_app(demo_dsn, clock=clock, pool_size_max=4)).start()
    api = Api(f"http://127.0.0.1:{server.port}", tokens)
    try:
        assert api.as_("off1", "PUT", f"/desk-readers/{DESK}", json={"school_id": 1}).status_code == 200
        yield SimpleNamespace(api=api, clock=clock, dsn=demo_dsn)
    finally:
        api.close()
        server.stop()


def start(d, body: dict, login: str = "off1", name: str = DESK):
    return d.api.as_(login, "POST", f"/desk-readers/{name}/operation", json=body)


def present(d, uid: str, login: str = "bridge1", name: str = DESK):
    return d.api.as_(login, "POST", f"/desk-readers/{name}/uid", json={"uid": uid})


def audit(dsn: str, entity: str) -> list[dict]:
    rows = sql(dsn, "SELECT actor, action, before, after FROM audit_log WHERE entity = $1 ORDER BY id", entity)
    return [{"actor": r["actor"], "action": r["action"], "before": None if r["before"] is None else json.loads(r["before"]),
             "after": None if r["after"] is None else json.loads(r["after"])} for r in rows]


def card(dsn: str, uid: bytes):
    rows = sql(dsn, "SELECT account_id, kind, status, expires_at_ms, replaces FROM identifiers WHERE identifier = $1", uid)
    return rows[0] if rows else None


# --- registration ---------------------------------------------------------------------------------


def test_register_is_idempotent_for_the_same_school_and_audited_once(desk):
    again = desk.api.as_("op", "PUT", f"/desk-readers/{DESK}", json={"school_id": 1})
    assert again.status_code == 200
    assert again.json() == {"name": DESK, "school_id": 1, "registered_by": "off1", "registered_at_ms": T0}
    assert [a["action"] for a in audit(desk.dsn, f"desk_reader:{DESK}")] == ["desk_reader.register"]


@pytest.mark.parametrize("login, name, body, status, words", [
    ("op", DESK, {"school_id": 2}, 409, "registered to school 1"),
    ("off2", "office-2", {"school_id": 1}, 403, "bound to school 2"),
    ("cash1", "office-2", {"school_id": 1}, 403, "may not register"),
    ("aud", "office-2", {"school_id": 1}, 403, "read-only"),
    ("op", "office 2", {"school_id": 1}, 422, "name"),
    ("op", "office-2", {"school_id": 99}, 404, "no school 99"),
    ("op", "office-2", {"school_id": 1, "extra": 1}, 422, "extra"),
])
def test_register_refusals(desk, login, name, body, status, words):
    r = desk.api.as_(login, "PUT", f"/desk-readers/{name}", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


# --- bind a card -----------------------------------------------------------------------------------


def test_bind_card_by_presenting_it(desk):
    r = start(desk, {"action": "bind_card", "pupil_id": 5, "kind": "bracelet"})
    assert r.status_code == 201, r.text
    op = r.json()
    assert op["status"] == "pending" and op["pupil_id"] == 5 and op["kind"] == "bracelet"
    assert op["started_by"] == "off1" and op["expires_at_ms"] == T0 + DESK_OPERATION_TTL_MS
    assert desk.api.as_("aud", "GET", f"/desk-readers/{DESK}/operation").json()["status"] == "pending"

    desk.clock.fixed_ms = T0 + 5_000
    r = present(desk, NEW_UID)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "done" and done["uid"] == NEW_UID.lower() and done["completed_by"] == "bridge1"
    assert done["card"] == {"uid": NEW_UID.lower(), "account_id": 5, "kind": "bracelet", "status": "active",
                            "expires_at_ms": None, "replaces": None, "bound_at_ms": T0 + 5_000}
    assert desk.api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").json() == done
    uid = bytes.fromhex(NEW_UID)
    assert card(desk.dsn, uid)["account_id"] == 5
    # the same audit and card history as POST /pupils/{id}/cards, the officer as the actor
    assert [(a["actor"], a["action"]) for a in audit(desk.dsn, f"card:{uid.hex()}")] == [("off1", "card.bind")]
    events = sql(desk.dsn, "SELECT action, actor FROM identifier_events WHERE identifier = $1", uid)
    assert [(e["action"], e["actor"]) for e in events] == [("bind", "off1")]
    desk_audit = audit(desk.dsn, f"desk_reader:{DESK}")
    assert [(a["actor"], a["action"]) for a in desk_audit] == [
        ("off1", "desk_reader.register"), ("off1", "desk.operation.start"), ("bridge1", "desk.operation.done")]
    assert desk_audit[-1]["before"]["status"] == "pending" and desk_audit[-1]["after"]["status"] == "done"
    # the operation is used up: the same card again finds nothing pending
    again = present(desk, NEW_UID)
    assert again.status_code == 409 and "no pending operation" in again.json()["detail"]


def test_a_uid_with_no_pending_operation_is_refused_and_changes_nothing(desk):
    r = present(desk, NEW_UID)
    assert r.status_code == 409
    assert r.json()["detail"] == (f"no pending operation on desk reader '{DESK}': card {NEW_UID.lower()} was not used "
                                  f"(an officer starts one with POST /desk-readers/{DESK}/operation)")
    assert card(desk.dsn, bytes.fromhex(NEW_UID)) is None
    assert desk.api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").status_code == 404


def test_an_expired_operation_is_refused_and_recorded_as_expired(desk):
    assert start(desk, {"action": "bind_card", "pupil_id": 5}).status_code == 201
    desk.clock.fixed_ms = T0 + DESK_OPERATION_TTL_MS  # exactly the expiry: too late
    assert desk.api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").json()["status"] == "expired"
    r = present(desk, NEW_UID)
    assert r.status_code == 409
    assert "expired" in r.json()["detail"] and "start it again" in r.json()["detail"]
    assert card(desk.dsn, bytes.fromhex(NEW_UID)) is None
    stored = sql(desk.dsn, "SELECT status, uid FROM desk_operations")
    assert [(s["status"], bytes(s["uid"]).hex()) for s in stored] == [("expired", NEW_UID.lower())]
    assert audit(desk.dsn, f"desk_reader:{DESK}")[-1]["action"] == "desk.operation.expired"
    # nothing pending any more
    assert "no pending operation" in present(desk, NEW_UID).json()["detail"]


def test_an_operation_presented_just_before_its_expiry_completes(desk):
    assert start(desk, {"action": "bind_card", "pupil_id": 5}).status_code == 201
    desk.clock.fixed_ms = T0 + DESK_OPERATION_TTL_MS - 1
    assert present(desk, NEW_UID).json()["status"] == "done"


def test_another_schools_officer_is_refused_everywhere(desk):
    r = start(desk, {"action": "bind_card", "pupil_id": 2000}, login="off2")
    missing = f"no desk reader {DESK!r}: register it with PUT /desk-readers/{DESK}"
    assert r.status_code == 404 and r.json()["detail"] == missing  # the same answer as for none: no hint
    assert desk.api.as_("off2", "GET", f"/desk-readers/{DESK}/operation").status_code == 404
    assert start(desk, {"action": "bind_card", "pupil_id": 5}).status_code == 201
    r = present(desk, NEW_UID, login="off2")
    assert r.status_code == 404 and r.json()["detail"] == missing
    # the refused UID did not use the operation up
    assert desk.api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").json()["status"] == "pending"
    # an officer of the reader's school, a pupil of another school
    r = start(desk, {"action": "bind_card", "pupil_id": 2000})
    assert r.status_code == 404 and r.json()["detail"] == "no pupil with account 2000"
    # the operator: the pupil and the reader must be of one school
    r = start(desk, {"action": "bind_card", "pupil_id": 2000}, login="op")
    assert r.status_code == 422 and r.json()["field"] == "pupil_id"


@pytest.mark.parametrize("login, method, path, status", [
    ("cash1", "POST", "/operation", 403),
    ("aud", "POST", "/operation", 403),
    ("cash1", "GET", "/operation", 403),
    ("cash1", "POST", "/uid", 403),
    ("nobody", "POST", "/uid", 401),
])
def test_roles(desk, login, method, path, status):
    body = {"action": "bind_card", "pupil_id": 5} if path == "/operation" else {"uid": NEW_UID}
    r = desk.api.as_(login, method, f"/desk-readers/{DESK}{path}", **({"json": body} if method == "POST" else {}))
    assert r.status_code == status, r.text


def test_unknown_reader_and_bad_uid(desk):
    assert present(desk, NEW_UID, name="office-9").status_code == 404
    assert start(desk, {"action": "bind_card", "pupil_id": 5}, name="office-9").status_code == 404
    r = present(desk, "04A1B2")  # 3 bytes
    assert r.status_code == 422 and r.json()["field"] == "uid"


def test_a_card_already_bound_fails_the_operation_with_the_bind_endpoints_reason(desk):
    assert start(desk, {"action": "bind_card", "pupil_id": 5}).status_code == 201
    taken = demo_card_uid(6).hex()
    r = present(desk, taken.upper())
    assert r.status_code == 200
    failed = r.json()
    assert failed["status"] == "failed" and failed["card"] is None
    assert failed["error"] == f"uid: card {taken} is already bound to account 6 (active)"
    assert card(desk.dsn, demo_card_uid(6))["account_id"] == 6
    assert audit(desk.dsn, f"card:{taken}") == []
    assert audit(desk.dsn, f"desk_reader:{DESK}")[-1]["action"] == "desk.operation.failed"
    assert "no pending operation" in present(desk, NEW_UID).json()["detail"]


def test_a_new_operation_cancels_the_pending_one(desk):
    first = start(desk, {"action": "bind_card", "pupil_id": 5}).json()
    second = start(desk, {"action": "bind_card", "pupil_id": 7}).json()
    assert present(desk, NEW_UID).json()["pupil_id"] == 7
    rows = sql(desk.dsn, "SELECT id, status, error FROM desk_operations ORDER BY id")
    assert [(r["id"], r["status"]) for r in rows] == [(first["id"], "cancelled"), (second["id"], "done")]
    assert rows[0]["error"] == "superseded by a newer operation"


# --- issue a temporary card ------------------------------------------------------------------------


def test_issue_temporary_by_presenting_the_temporary_card(desk):
    original = demo_card_uid(6)
    r = start(desk, {"action": "issue_temporary", "pupil_id": 6, "original_uid": original.hex(), "reason": "forgotten"})
    assert r.status_code == 201, r.text
    r = present(desk, NEW_UID)
    done = r.json()
    assert done["status"] == "done", done
    midnight = next_midnight_ms(T0, 180)
    assert done["card"]["kind"] == "temporary" and done["card"]["replaces"] == original.hex()
    assert done["card"]["expires_at_ms"] == midnight and done["card"]["account_id"] == 6
    assert done["original"]["status"] == "suspended"
    assert card(desk.dsn, original)["status"] == 2
    assert [a["action"] for a in audit(desk.dsn, f"card:{original.hex()}")] == ["card.temporary.forgotten"]
    assert [a["action"] for a in audit(desk.dsn, f"card:{NEW_UID.lower()}")] == ["card.bind"]
    outbox = sql(desk.dsn, "SELECT kind FROM outbox_events WHERE account_id = 6")
    assert [o["kind"] for o in outbox] == ["temporary_card_issued"]


@pytest.mark.parametrize("body, field", [
    ({"action": "issue_temporary", "pupil_id": 6, "reason": "lost"}, "original_uid"),
    ({"action": "issue_temporary", "pupil_id": 6, "original_uid": "04000000000006"}, "reason"),
    ({"action": "issue_temporary", "pupil_id": 6, "original_uid": "04000000000007", "reason": "lost"}, "original_uid"),
    ({"action": "issue_temporary", "pupil_id": 6, "original_uid": "04000000000006", "reason": "lost",
      "kind": "fob"}, "kind"),
    ({"action": "bind_card", "pupil_id": 6, "reason": "lost"}, "reason"),
    ({"action": "unbind", "pupil_id": 6}, "action"),
])
def test_operation_body_refusals(desk, body, field):
    r = start(desk, body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert sql(desk.dsn, "SELECT count(*) AS n FROM desk_operations")[0]["n"] == 0


def test_issue_temporary_for_a_card_that_is_no_longer_active_fails(desk):
    original = demo_card_uid(6)
    assert start(desk, {"action": "issue_temporary", "pupil_id": 6, "original_uid": original.hex(),
                        "reason": "lost"}).status_code == 201
    assert desk.api.as_("off1", "POST", f"/cards/{original.hex()}/block").status_code == 200
    failed = present(desk, NEW_UID).json()
    assert failed["status"] == "failed" and "is blocked" in failed["error"]
    assert card(desk.dsn, bytes.fromhex(NEW_UID)) is None
