"""The fire alarm in the machine: raised by a school officer's command (a fire panel's
FIRE_ALARM takes the same path, see tests/gateway), the muster taken at that instant, the
turnstiles told to release, releases recorded once, reset reconciles presence, and an alarm
that was on when the gateway stopped is on after the restart. No I/O, time passed in.
"""

from __future__ import annotations

from ledger.codes import AccessKind, CommandStatus, JournalKind
from protocol import TXN_FLAG_ADVICE, CardPresented, FireAlarm, FireReset, Passage, TurnstileMode

from machine_support import TURNSTILE_ID, Store, at, card, hello, new_machine

MORNING = at(9, 0)
ALARM = at(10, 15)


def walk_in(machine, pupils):
    hello(machine, TURNSTILE_ID, MORNING)
    turnstile = machine.state.devices[TURNSTILE_ID]
    txn = 1
    for pupil in pupils:
        machine.request(turnstile, CardPresented(txn, 0, 1, MORNING, card(pupil)), MORNING, 0)
        machine.request(turnstile, Passage(txn + 1, TXN_FLAG_ADVICE, 1, MORNING, txn, card(pupil)), MORNING, 0)
        txn += 2
    return txn


def events(journal, kind=None):
    return [e for entry in journal.queue for e in entry.access if kind is None or e.kind == kind]


def test_an_officers_alarm_takes_the_muster_and_releases_the_school_once():
    machine, journal = new_machine()
    walk_in(machine, [2, 3, 5])
    journal.queue.clear()
    result = machine.command(41, "fire_alarm", {"school_id": 1, "by": "off1"}, None, ALARM, 0)
    assert result.status == CommandStatus.APPLIED
    assert result.result["changed"] and result.result["mustered"] == 3
    assert result.result["alarm"] == {"key": "0:41", "raised_at_ms": ALARM, "source": "staff off1"}
    assert machine.mode_changes == [(1, TurnstileMode.RELEASED)]
    (entry,) = journal.queue
    assert entry.row.kind == JournalKind.FIRE_ALARM and (entry.row.device_id, entry.row.device_txn) == (0, 41)
    assert [(e.kind, e.account_id) for e in entry.access] == [
        (AccessKind.FIRE_ALARM, 0), (AccessKind.MUSTERED, 2), (AccessKind.MUSTERED, 3), (AccessKind.MUSTERED, 5)]
    assert {(e.device_id, e.device_txn, e.at_ms) for e in entry.access} == {(0, 41, ALARM)}
    # a second alarm while it lasts: recorded as a command, nothing changes
    again = machine.command(42, "fire_alarm", {"school_id": 1, "by": "off1"}, None, ALARM + 1_000, 0)
    assert not again.result["changed"] and again.result["alarm"]["key"] == "0:41"
    assert machine.mode_changes == [(1, TurnstileMode.RELEASED)]
    assert not journal.queue[-1].access


def test_releases_are_recorded_once_and_a_restart_keeps_the_alarm():
    machine, journal = new_machine()
    store = Store()
    walk_in(machine, [2])
    machine.command(41, "fire_alarm", {"school_id": 1, "by": "off1"}, None, ALARM, 0)
    turnstile = machine.state.devices[TURNSTILE_ID]
    assert machine.turnstile_mode(turnstile, TurnstileMode.NORMAL, 0, ALARM + 10, 0) == TurnstileMode.RELEASED
    assert not events(journal, AccessKind.TURNSTILE_RELEASED)  # not released yet: told again
    assert machine.turnstile_mode(turnstile, TurnstileMode.RELEASED, ALARM, ALARM + 80, 0) == TurnstileMode.RELEASED
    assert machine.turnstile_mode(turnstile, TurnstileMode.RELEASED, ALARM, ALARM + 90, 0) == TurnstileMode.RELEASED
    (released,) = events(journal, AccessKind.TURNSTILE_RELEASED)
    assert (released.device_id, released.at_ms, released.detail) == (TURNSTILE_ID, ALARM + 80, "0:41")
    till = machine.state.devices[2_000_001]
    machine.turnstile_mode(till, TurnstileMode.RELEASED, ALARM, ALARM + 95, 0)
    assert len(events(journal, AccessKind.TURNSTILE_RELEASED)) == 1, "a till does not release anything"
    store.commit(machine, journal)
    machine, journal = store.reload()
    alarm = machine.state.alarms[1]
    assert (alarm.key, alarm.raised_at_ms, alarm.released) == ("0:41", ALARM, {TURNSTILE_ID: ALARM + 80})
    turnstile = machine.state.devices[TURNSTILE_ID]
    assert machine.turnstile_mode(turnstile, TurnstileMode.NORMAL, 0, ALARM + 5_000, 0) == TurnstileMode.RELEASED


def test_reset_returns_the_turnstiles_to_normal_and_reconciles_presence():
    machine, journal = new_machine()
    store = Store()
    walk_in(machine, [2, 3])
    machine.command(41, "fire_alarm", {"school_id": 1, "by": "off1"}, None, ALARM, 0)
    assert machine.state.inside(1, ALARM) == [2, 3]
    reset = machine.command(43, "fire_reset", {"school_id": 1, "by": "off1"}, None, ALARM + 600_000, 0)
    assert reset.result["changed"] and reset.result["alarm"]["key"] == "0:41"
    assert machine.mode_changes[-1] == (1, TurnstileMode.NORMAL)
    assert machine.state.alarms == {}
    assert machine.state.inside(1, ALARM + 600_000) == []  # everyone may enter again
    kinds = [(e.kind, e.detail) for e in journal.queue[-1].access]
    assert kinds == [(AccessKind.FIRE_RESET, "staff off1; alarm 0:41"), (AccessKind.PRESENCE_RESET, "evacuation")]
    quiet = machine.command(44, "fire_reset", {"school_id": 1, "by": "off1"}, None, ALARM + 700_000, 0)
    assert not quiet.result["changed"] and quiet.result["alarm"] is None
    store.commit(machine, journal)
    machine, journal = store.reload()
    assert machine.state.alarms == {} and machine.state.inside(1, ALARM + 700_000) == []


def test_an_alarm_for_an_unknown_school_or_without_its_officer_is_refused():
    machine, journal = new_machine()
    for payload in ({"school_id": 99, "by": "x"}, {"school_id": "1", "by": "x"}, {"school_id": 1}):
        result = machine.command(50, "fire_alarm", payload, None, ALARM, 0)
        assert result.status == CommandStatus.REFUSED and result.result["reason"] == "WRONG_SCHOOL"
    assert machine.state.alarms == {} and machine.mode_changes == []


def test_during_an_alarm_no_card_is_refused_by_anti_passback():
    import msgspec

    from ledger.codes import PassbackMode
    from protocol import DenyReason

    machine, journal = new_machine()
    machine.state.policies[1] = msgspec.structs.replace(machine.state.policies[1], anti_passback=int(PassbackMode.HARD))
    txn = walk_in(machine, [2])
    turnstile = machine.state.devices[TURNSTILE_ID]
    assert machine.request(turnstile, CardPresented(txn, 0, 1, ALARM, card(2)), ALARM, 0).reason == (
        DenyReason.ANTI_PASSBACK)
    machine.command(41, "fire_alarm", {"school_id": 1, "by": "off1"}, None, ALARM, 0)
    assert machine.request(turnstile, CardPresented(txn + 1, 0, 1, ALARM, card(2)), ALARM, 0).reason == DenyReason.OK


def test_a_fire_panel_raises_and_resets_and_only_a_fire_panel_may():
    from ledger.state import DeviceState
    from protocol import DenyReason, DeviceKind

    machine, journal = new_machine()
    walk_in(machine, [4])
    panel = machine.state.devices[3_000_001] = DeviceState(3_000_001, 1, DeviceKind.FIRE_PANEL, b"k" * 16, 0, 0)
    hello(machine, 3_000_001, ALARM)
    turnstile = machine.state.devices[TURNSTILE_ID]
    assert machine.request(turnstile, FireAlarm(100, 0, ALARM), ALARM, 0).reason == DenyReason.WRONG_DEVICE_KIND
    assert machine.state.alarms == {}
    raised = machine.request(panel, FireAlarm(1, 0, ALARM), ALARM, 0)
    assert (raised.outcome, raised.template_id) == (1, 106)
    assert machine.state.alarms[1].key == "3000001:1"
    (entry,) = [e for e in journal.queue if e.row is not None and e.row.device_id == 3_000_001]
    assert entry.row.kind == JournalKind.FIRE_ALARM
    assert [(e.kind, e.account_id) for e in entry.access] == [(AccessKind.FIRE_ALARM, 0), (AccessKind.MUSTERED, 4)]
    assert (machine.mode_of(1).mode, machine.mode_of(1).alarm_at_ms) == (TurnstileMode.RELEASED, ALARM)
    reset = machine.request(panel, FireReset(2, 0, ALARM + 60_000), ALARM + 60_000, 0)
    assert (reset.outcome, reset.template_id) == (1, 107)
    assert machine.state.alarms == {} and machine.mode_of(1).mode == TurnstileMode.NORMAL
    assert machine.mode_changes == [(1, TurnstileMode.RELEASED), (1, TurnstileMode.NORMAL)]
