"""The desk reader for real: pcscd with the vsmartcard virtual reader (in a private network
namespace), virtual cards answering GET UID, the staff API and the bridge as processes.

The office binds a card, a card with nothing pending is refused, a temporary card is issued
with another card, then pcscd dies under the running bridge and comes back: the bridge
re-establishes its PC/SC context by itself and completes the next operation.

Needs root (network namespace, apt-get) and the Debian packages of deskreader.install
(installed by the session fixture, or the test is skipped saying why).
"""

from __future__ import annotations

import pytest

from deskreader_support import (
    DESK,
    READER_00,
    Api,
    BridgeProcess,
    PcscLab,
    StaffApiProcess,
    add_school2_and_staff,
    deskreader_deps,  # noqa: F401  (the session fixture)
    sql,
)
from support import wait_until
from storage.demo_dataset import demo_card_uid

pytestmark = pytest.mark.processes

# A card presented is read and its operation completed in about half a second here (pcscd's
# polling of vpcd, one HTTP request); pcscd coming back is noticed within one retry
# interval (300 ms in the test). Generous bounds for a loaded machine.
OPERATION_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 30.0


@pytest.fixture
def office(deskreader_deps, demo_dsn, tmp_path):  # noqa: F811
    tokens = add_school2_and_staff(demo_dsn)
    lab = PcscLab(tmp_path).open()
    staff = bridge = api = None
    try:
        lab.start_pcscd()
        staff = StaffApiProcess(demo_dsn, tmp_path / "staff-api.log").start()
        api = Api(staff.url, tokens)
        assert api.as_("off1", "PUT", f"/desk-readers/{DESK}", json={"school_id": 1}).status_code == 200
        bridge = BridgeProcess(staff.url, tokens["bridge1"], tmp_path).start()
        bridge.wait_log(f"reader {READER_00!r} ready", OPERATION_TIMEOUT_S)
        yield lab, api, bridge, demo_dsn
    finally:
        code = bridge.stop() if bridge is not None else 0
        if api is not None:
            api.close()
        if staff is not None:
            staff.close()
        lab.close()
    assert code == 0, f"the bridge did not stop cleanly (exit {code}):\n{bridge.log()}"


def operation(api: Api) -> dict:
    r = api.as_("off1", "GET", f"/desk-readers/{DESK}/operation")
    assert r.status_code == 200, r.text
    return r.json()


def wait_finished(api: Api, op_id: int, bridge: BridgeProcess) -> dict:
    def finished() -> bool:
        assert bridge.proc is not None and bridge.proc.poll() is None, f"bridge exited:\n{bridge.log()}"
        current = operation(api)
        return current["id"] == op_id and current["status"] != "pending"

    try:
        wait_until(finished, OPERATION_TIMEOUT_S, f"operation {op_id} to finish", interval_s=0.1)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n--- bridge log ---\n{bridge.log()}") from None
    return operation(api)


def start(api: Api, body: dict) -> int:
    r = api.as_("off1", "POST", f"/desk-readers/{DESK}/operation", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def bound_to(dsn: str, uid_hex: str):
    rows = sql(dsn, "SELECT account_id, kind, status, replaces FROM identifiers WHERE identifier = $1",
               bytes.fromhex(uid_hex))
    return rows[0] if rows else None


def test_office_binds_cards_and_the_bridge_survives_a_pcscd_restart(office):
    lab, api, bridge, dsn = office

    # 1. bind a new card to pupil 5: the officer starts the operation, the card is presented
    first = start(api, {"action": "bind_card", "pupil_id": 5})
    card1 = lab.insert("04A1B2C3D4E5F6")
    done = wait_finished(api, first, bridge)
    assert done["status"] == "done", done
    assert done["uid"] == "04a1b2c3d4e5f6" and done["card"]["account_id"] == 5
    assert done["completed_by"] == "bridge1"
    assert bound_to(dsn, "04A1B2C3D4E5F6")["account_id"] == 5
    assert api.as_("off1", "GET", "/cards/04a1b2c3d4e5f6").json()["card"]["account_id"] == 5
    bridge.wait_log("operation %d done: card 04a1b2c3d4e5f6 bound to pupil 5" % first, OPERATION_TIMEOUT_S)

    # 2. the card pulled; another card presented with nothing pending: refused, nothing bound
    lab.remove(card1)
    bridge.wait_log("card removed", OPERATION_TIMEOUT_S)
    stray = lab.insert("04999999999999")
    bridge.wait_log("refused (409): no pending operation on desk reader 'office-1'", OPERATION_TIMEOUT_S)
    assert bound_to(dsn, "04999999999999") is None
    lab.remove(stray)
    bridge.wait_log("card removed", OPERATION_TIMEOUT_S, count=2)

    # 3. a second operation on the same running bridge: a temporary card for pupil 6's forgotten card
    original = demo_card_uid(6).hex()
    second = start(api, {"action": "issue_temporary", "pupil_id": 6, "original_uid": original, "reason": "forgotten"})
    lab.insert("04111111111111")
    done = wait_finished(api, second, bridge)
    assert done["status"] == "done", done
    temporary = bound_to(dsn, "04111111111111")
    assert temporary["account_id"] == 6 and temporary["kind"] == 6 and bytes(temporary["replaces"]).hex() == original
    assert bound_to(dsn, original)["status"] == 2  # suspended until midnight

    # 4. pcscd dies under the bridge (the card's process ends with it); it comes back, a card
    #    is presented again: the bridge re-established its context by itself
    bridge_pid = bridge.proc.pid
    lab.kill_pcscd()
    bridge.wait_log("PC/SC context lost", RECOVERY_TIMEOUT_S)
    bridge.wait_log("no PC/SC context (SCARD_E_NO_SERVICE", RECOVERY_TIMEOUT_S)  # it tried while pcscd was down
    for card in lab.cards:  # vicc exits when its pcscd goes; make sure none is left
        lab.remove(card)
    lab.start_pcscd()
    bridge.wait_log("(recovery 1)", RECOVERY_TIMEOUT_S)
    assert "PC/SC context re-established after" in bridge.log()
    bridge.wait_log(f"reader {READER_00!r} ready", RECOVERY_TIMEOUT_S, count=2)
    third = start(api, {"action": "bind_card", "pupil_id": 7, "kind": "fob"})
    lab.insert("04222222222222")
    done = wait_finished(api, third, bridge)
    assert done["status"] == "done", done
    assert bound_to(dsn, "04222222222222")["account_id"] == 7
    assert bridge.proc.pid == bridge_pid and bridge.proc.poll() is None  # the same process, never restarted
    log = bridge.log()
    assert log.count("every card taken as removed") >= 1
    assert "Traceback" not in log, log
