"""What the console's desk-reader flow needs of the staff API (staff_api/desk.py), against real
PostgreSQL and a real server: the list of a school's readers (GET /desk-readers?school_id=) and
cancelling the operation the page started (POST /desk-readers/{name}/operation/cancel {"id"}),
with every refusal: roles, another school, an operation that already ended, expired or was
superseded, malformed input."""

from __future__ import annotations

import pytest

from staff_api.auth import token_sha256
from staff_api.desk import DESK_OPERATION_TTL_MS
from test_staff_api import T0, Api, api, audit_rows, sql  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test

DESK, DESK_2 = "office-1", "office-2"
NEW_UID = "04a1b2c3d4e5f6"


@pytest.fixture
def desks(api: Api):
    """Readers office-1 and window-1 of school 1, office-2 of school 2; the bridge's officer and an
    officer of school 2."""
    for login, school in (("bridge1", 1), ("off2", 2)):
        token = f"token-{login}"
        sql(api.dsn, "INSERT INTO staff (login, role, school_id, token_sha256) VALUES ($1, 'officer', $2, $3)",
            login, school, token_sha256(token))
        api.tokens[login] = token
    for login, name, school in (("off1", DESK, 1), ("off1", "window-1", 1), ("op", DESK_2, 2)):
        r = api.as_(login, "PUT", f"/desk-readers/{name}", json={"school_id": school})
        assert r.status_code == 200, r.text
    api.clock.fixed_ms = T0
    return api


def start(api: Api, pupil: int = 5, login: str = "off1", name: str = DESK) -> dict:
    r = api.as_(login, "POST", f"/desk-readers/{name}/operation", json={"action": "bind_card", "pupil_id": pupil})
    assert r.status_code == 201, r.text
    return r.json()


def cancel(api: Api, op_id, login: str = "off1", name: str = DESK):
    return api.as_(login, "POST", f"/desk-readers/{name}/operation/cancel", json={"id": op_id})


def test_the_list_of_a_schools_readers(desks):
    api = desks
    r = api.as_("off1", "GET", "/desk-readers", params={"school_id": 1})
    assert r.status_code == 200, r.text
    assert [(d["name"], d["school_id"], d["registered_by"]) for d in r.json()] == [
        (DESK, 1, "off1"), ("window-1", 1, "off1")]  # by name
    assert [d["name"] for d in api.as_("op", "GET", "/desk-readers", params={"school_id": 2}).json()] == [DESK_2]
    assert [d["name"] for d in api.as_("aud", "GET", "/desk-readers", params={"school_id": 1}).json()] == [
        DESK, "window-1"]
    assert api.as_("op", "GET", "/desk-readers", params={"school_id": 2}).status_code == 200
    sql(api.dsn, "INSERT INTO schools (id, name, utc_offset_minutes) VALUES (3, 'ГБОУ Школа № 3', 180)")
    assert api.as_("op", "GET", "/desk-readers", params={"school_id": 3}).json() == []


LIST_REFUSALS = [  # (login, query, status, words of the detail)
    ("off1", {"school_id": 2}, 403, "bound to school 1"),  # another school itself: 403, as for its pupils list
    ("off2", {"school_id": 1}, 403, "bound to school 2"),
    ("cash1", {"school_id": 1}, 403, "may not read desk readers"),
    (None, {"school_id": 1}, 401, ""),
    ("op", {"school_id": 99}, 404, "no school 99"),
    ("op", {}, 422, "school_id"),
    ("op", {"school_id": 0}, 422, "school_id"),
    ("op", {"school_id": 2**31}, 422, "school_id"),
    ("op", {"school_id": "one"}, 422, "school_id"),
]


def test_the_list_refusals(desks):
    for login, params, status, words in LIST_REFUSALS:
        r = desks.as_(login, "GET", "/desk-readers", params=params)
        assert r.status_code == status, (login, params, r.text)
        assert words in r.json()["detail"], (login, params, r.text)


def test_cancel_the_pending_operation(desks):
    api = desks
    op = start(api)
    api.clock.fixed_ms = T0 + 3_000
    r = cancel(api, op["id"])
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled["id"] == op["id"] and cancelled["status"] == "cancelled"
    assert cancelled["error"] == "cancelled by off1"
    assert cancelled["completed_by"] == "off1" and cancelled["completed_at_ms"] == T0 + 3_000
    assert api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").json() == cancelled
    # the card laid on the reader afterwards is used for nothing
    r = api.as_("bridge1", "POST", f"/desk-readers/{DESK}/uid", json={"uid": NEW_UID})
    assert r.status_code == 409 and "no pending operation" in r.json()["detail"], r.text
    assert sql(api.dsn, "SELECT 1 FROM identifiers WHERE identifier = $1", bytes.fromhex(NEW_UID)) == []
    entries = audit_rows(api.dsn, f"desk_reader:{DESK}")
    assert [(a["actor"], a["action"]) for a in entries][-2:] == [("off1", "desk.operation.start"),
                                                                 ("off1", "desk.operation.cancelled")]
    assert entries[-1]["before"]["status"] == "pending" and entries[-1]["after"]["status"] == "cancelled"
    # once ended, it stays so
    again = cancel(api, op["id"])
    assert again.status_code == 409 and again.json()["detail"] == (
        f"operation {op['id']} on desk reader '{DESK}' has already ended: cancelled")


def test_cancel_refuses_an_operation_that_ended_or_is_not_the_readers(desks):
    api = desks
    first = start(api)
    second = start(api, pupil=6)  # supersedes the first
    r = cancel(api, first["id"])
    assert r.status_code == 409 and "already ended: cancelled" in r.json()["detail"], r.text
    assert api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").json()["status"] == "pending"  # untouched
    # done: the card was presented first
    assert api.as_("bridge1", "POST", f"/desk-readers/{DESK}/uid", json={"uid": NEW_UID}).json()["status"] == "done"
    r = cancel(api, second["id"])
    assert r.status_code == 409 and "already ended: done" in r.json()["detail"], r.text
    # an operation of another reader, or none
    other = start(api, name="window-1")
    assert cancel(api, other["id"]).status_code == 404
    r = cancel(api, 999_999)
    assert r.status_code == 404 and r.json()["detail"] == f"no operation 999999 on desk reader '{DESK}'"
    assert api.as_("off1", "GET", "/desk-readers/window-1/operation").json()["status"] == "pending"


def test_cancel_past_the_expiry_records_the_expiry(desks):
    api = desks
    op = start(api)
    api.clock.fixed_ms = T0 + DESK_OPERATION_TTL_MS
    r = cancel(api, op["id"])
    assert r.status_code == 409 and "expired" in r.json()["detail"] and "start it again" in r.json()["detail"]
    stored = sql(api.dsn, "SELECT status, completed_by FROM desk_operations WHERE id = $1", op["id"])
    assert [(s["status"], s["completed_by"]) for s in stored] == [("expired", "off1")]


CANCEL_REFUSALS = [  # (login, reader, body (None: the operation's id), status, words of the detail)
    ("off2", DESK, None, 404, f"no desk reader '{DESK}'"),  # another school's reader: as none
    ("cash1", DESK, None, 403, "may not cancel"),
    ("aud", DESK, None, 403, "read-only"),
    (None, DESK, None, 401, ""),
    ("off1", "no-such-reader", None, 404, "no desk reader 'no-such-reader'"),
    ("off1", "office 1", None, 422, "name"),
    ("off1", DESK, {"id": "1"}, 422, "id"),
    ("off1", DESK, {"id": 0}, 422, "id"),
    ("off1", DESK, {"id": 1, "extra": True}, 422, "extra"),
    ("off1", DESK, {}, 422, "id"),
]


def test_cancel_refusals_leave_the_operation_pending(desks):
    api = desks
    op = start(api)
    for login, name, body, status, words in CANCEL_REFUSALS:
        r = api.as_(login, "POST", f"/desk-readers/{name}/operation/cancel",
                    json={"id": op["id"]} if body is None else body)
        assert r.status_code == status, (login, name, body, r.text)
        assert words in r.json()["detail"], (login, name, body, r.text)
    current = api.as_("off1", "GET", f"/desk-readers/{DESK}/operation").json()
    assert current["id"] == op["id"] and current["status"] == "pending"
    assert [a["action"] for a in audit_rows(api.dsn, f"desk_reader:{DESK}")][-1] == "desk.operation.start"
