"""Devices through the staff API: register (key shown once), roles and schools, install mode and
self-enrolment, key rotation, revocation; every change audited and NOTIFYed (fixtures of
test_staff_api: demo school 1, school 2, staff op, aud, off1, cash1)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from staff_api.devices import INSTALL_MODE_MINUTES_MAX
from storage import changes
from test_staff_api import T0, api, audit_rows, sql  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test


def register(api, login="off1", **over):
    body = {"school_id": 1, "kind": "turnstile", "name": "Турникет 5"}
    body.update(over)
    return api.as_(login, "POST", "/devices", json=body)


def test_register_shows_the_key_once(api):
    api.clock.fixed_ms = T0
    r = register(api)
    assert r.status_code == 201, r.text
    out = r.json()
    device_id, key = out["device"]["id"], bytes.fromhex(out["key"])
    assert len(key) == 16 and out["device"]["kind"] == "turnstile" and not out["device"]["revoked"]
    row = sql(api.dsn, "SELECT key, school_id, kind, created_at_ms FROM devices WHERE id = $1", device_id)[0]
    assert (bytes(row["key"]), row["school_id"], row["kind"], row["created_at_ms"]) == (key, 1, 1, T0)
    shown = api.as_("off1", "GET", f"/devices/{device_id}").json()
    assert "key" not in shown and shown["id"] == device_id
    assert [a["action"] for a in audit_rows(api.dsn, f"device:{device_id}")] == ["device.register"]
    assert "key" not in audit_rows(api.dsn, f"device:{device_id}")[0]["after"]
    r = register(api, device_id=device_id)
    assert r.status_code == 409
    assert register(api, kind="kiosk").status_code == 422


def test_roles_and_schools(api):
    assert register(api, "off1", school_id=2).status_code == 403  # an officer of school 1 for school 2
    assert register(api, "cash1").status_code == 403
    assert register(api, "aud").status_code == 403
    assert register(api, "op", school_id=2).status_code == 201  # an operator for any school
    two = [d for d in api.op("GET", "/devices").json() if d["school_id"] == 2]
    assert len(two) == 1
    assert all(d["school_id"] == 1 for d in api.as_("off1", "GET", "/devices").json())
    # another school's device: the very answer for one that does not exist (nothing told about it)
    for method, path in (("GET", f"/devices/{two[0]['id']}"), ("POST", f"/devices/{two[0]['id']}/revoke")):
        r = api.as_("off1", method, path)
        assert r.status_code == 404 and r.json()["detail"] == f"device {two[0]['id']} does not exist", r.text
    assert api.as_("off1", "POST", "/devices/install-mode", json={"school_id": 2, "minutes": 5}).status_code == 403


def test_rotate_promote_and_revoke(api):
    api.clock.fixed_ms = T0
    device_id = register(api).json()["device"]["id"]
    first = bytes(sql(api.dsn, "SELECT key FROM devices WHERE id = $1", device_id)[0]["key"])
    assert api.as_("off1", "POST", f"/devices/{device_id}/key/promote").status_code == 409  # nothing to promote
    r = api.as_("off1", "POST", f"/devices/{device_id}/key/rotate")
    assert r.status_code == 200 and r.json()["device"]["rotating"]
    next_key = bytes.fromhex(r.json()["key"])
    row = sql(api.dsn, "SELECT key, next_key FROM devices WHERE id = $1", device_id)[0]
    assert (bytes(row["key"]), bytes(row["next_key"])) == (first, next_key)
    r = api.as_("off1", "POST", f"/devices/{device_id}/key/promote")
    assert r.status_code == 200 and not r.json()["rotating"]
    row = sql(api.dsn, "SELECT key, next_key FROM devices WHERE id = $1", device_id)[0]
    assert (bytes(row["key"]), row["next_key"]) == (next_key, None)
    api.as_("off1", "POST", f"/devices/{device_id}/key/rotate")
    assert api.as_("off1", "DELETE", f"/devices/{device_id}/key/next").json()["rotating"] is False
    r = api.as_("off1", "POST", f"/devices/{device_id}/revoke")
    assert r.status_code == 200 and r.json()["revoked"] and r.json()["revoked_at_ms"] == T0
    assert api.as_("off1", "POST", f"/devices/{device_id}/key/rotate").status_code == 409
    assert [a["action"] for a in audit_rows(api.dsn, f"device:{device_id}")] == [
        "device.register", "device.key.rotate", "device.key.promote", "device.key.rotate",
        "device.key.retire_next", "device.revoke",
    ]
    assert api.as_("off1", "POST", "/devices/999999/revoke").status_code == 404


def test_every_change_notifies_the_gateway(api):
    got: list[str] = []

    async def main():
        conn = await asyncpg.connect(api.dsn)
        await conn.add_listener(changes.CHANGES_CHANNEL, lambda *args: got.append(args[3]))
        device_id = (await asyncio.to_thread(register, api)).json()["device"]["id"]
        await asyncio.to_thread(api.as_, "off1", "POST", f"/devices/{device_id}/key/rotate")
        await asyncio.to_thread(api.as_, "off1", "POST", f"/devices/{device_id}/revoke")
        for _ in range(50):
            if len(got) >= 3:
                break
            await asyncio.sleep(0.05)
        await conn.close()
        return device_id

    device_id = asyncio.run(main())
    assert got == [f"device:{device_id}"] * 3


def test_install_mode_is_off_by_default_and_enrols_one_device(api):
    api.clock.fixed_ms = T0
    key = bytes(range(16, 32)).hex()
    body = {"school_id": 1, "code": "0" * 32, "kind": "till", "name": "Касса 3", "key": key}
    assert api.as_(None, "POST", "/devices/enrol", json=body).status_code == 403  # off by default
    too_long = {"school_id": 1, "minutes": INSTALL_MODE_MINUTES_MAX + 1}
    assert api.as_("off1", "POST", "/devices/install-mode", json=too_long).status_code == 422
    r = api.as_("off1", "POST", "/devices/install-mode", json={"school_id": 1, "minutes": 10})
    assert r.status_code == 201, r.text
    code, until_ms = r.json()["code"], r.json()["until_ms"]
    assert until_ms == T0 + 10 * 60_000
    assert api.as_(None, "POST", "/devices/enrol", json={**body, "code": "f" * 32}).status_code == 403  # wrong code
    assert api.as_(None, "POST", "/devices/enrol", json={**body, "code": code, "key": "00" * 16}).status_code == 422
    r = api.as_(None, "POST", "/devices/enrol", json={**body, "code": code})
    assert r.status_code == 201, r.text
    device_id = r.json()["id"]
    row = sql(api.dsn, "SELECT key, kind, school_id FROM devices WHERE id = $1", device_id)[0]
    assert (bytes(row["key"]).hex(), row["kind"], row["school_id"]) == (key, 2, 1)
    assert api.as_(None, "POST", "/devices/enrol", json={**body, "code": code}).status_code == 403  # one-time
    assert [a["action"] for a in audit_rows(api.dsn, f"device:{device_id}")] == ["device.enrol"]
    # expiry: a new install mode, used after its time
    code = api.as_("off1", "POST", "/devices/install-mode", json={"school_id": 1, "minutes": 1}).json()["code"]
    api.clock.fixed_ms = T0 + 60_000
    assert api.as_(None, "POST", "/devices/enrol", json={**body, "code": code}).status_code == 403
    # turned off by hand
    api.clock.fixed_ms = T0
    code = api.as_("off1", "POST", "/devices/install-mode", json={"school_id": 1, "minutes": 5}).json()["code"]
    assert api.as_("off1", "DELETE", "/devices/install-mode/1").json()["closed"] is True
    assert api.as_(None, "POST", "/devices/enrol", json={**body, "code": code}).status_code == 403
    actions = [a["action"] for a in audit_rows(api.dsn, "school:1")]
    assert actions.count("device.install_mode.open") == 3 and "device.install_mode.close" in actions
    # every other route still needs a token
    assert api.as_(None, "GET", "/devices").status_code == 401
