"""The machine at a school's doors: a grant opens the turnstile for one passage within a
window, presence follows passages, anti-passback, grants nobody used, reconciliation.

No database, no sockets: the real machine, time passed in, restarts through Store.
"""

from __future__ import annotations

import msgspec

from ledger.codes import AccessKind, JournalKind, PassbackMode, Presence
from ledger.state import Policy
from protocol import TXN_FLAG_ADVICE, CardPresented, DenyReason, Passage

from machine_support import LIMITS, TURNSTILE_ID, Store, at, card, hello, new_machine

MORNING = at(8, 0)
WINDOW_MS = LIMITS.passage_window_ms
EXPIRY_MS = LIMITS.passage_window_ms + LIMITS.passage_report_ms_max
IN, OUT = 1, 2


def setup(mode: PassbackMode = PassbackMode.OFF, interval_ms: int = 0):
    machine, journal = new_machine()
    machine.state.policies[1] = msgspec.structs.replace(
        machine.state.policies[1], anti_passback=int(mode), passback_entry_interval_ms=interval_ms
    )
    hello(machine, TURNSTILE_ID, MORNING)
    return machine, journal, machine.state.devices[TURNSTILE_ID]


def tap(machine, turnstile, txn, pupil, now_ms, direction=IN):
    return machine.request(turnstile, CardPresented(txn, 0, direction, now_ms, card(pupil)), now_ms, 0)


def through(machine, turnstile, txn, granted, pupil, now_ms, direction=IN, reader_ms=None):
    p = Passage(txn, TXN_FLAG_ADVICE, direction, now_ms if reader_ms is None else reader_ms, granted, card(pupil))
    return machine.request(turnstile, p, now_ms, 0)


def access(journal):
    return [(e.kind, e.account_id, e.device_txn, e.detail) for entry in journal.queue for e in entry.access]


def test_a_grant_is_not_an_entry_the_passage_is_and_it_uses_the_grant_up():
    machine, journal, turnstile = setup()
    assert tap(machine, turnstile, 1, 2, MORNING).reason == DenyReason.OK
    assert machine.state.presence_of(2, MORNING) == Presence.UNKNOWN  # presented, not through
    assert not [e for entry in journal.queue for e in entry.outbox]  # parents hear of nothing yet
    assert through(machine, turnstile, 2, 1, 2, MORNING + 3_000).reason == DenyReason.OK
    assert machine.state.presence_of(2, MORNING + 3_000) == Presence.INSIDE
    entry_row = journal.queue[-1]
    assert entry_row.row.kind == JournalKind.PASSAGE and entry_row.row.granted_txn == 1
    assert [c.account_id for c in entry_row.accounts] == [2]  # presence is checkpointed with the passage
    assert entry_row.accounts[0].counters.presence == Presence.INSIDE
    assert [o.kind for o in entry_row.outbox] == ["entry"]
    # a second person through the same opening: not counted
    second = through(machine, turnstile, 3, 1, 2, MORNING + 4_000)
    assert second.reason == DenyReason.NO_GRANT
    assert len(journal.queue) == 2


def test_a_passage_after_the_window_is_refused_and_an_unused_grant_is_recorded_expired():
    machine, journal, turnstile = setup()
    tap(machine, turnstile, 1, 2, MORNING)
    tap(machine, turnstile, 2, 3, MORNING)
    late = through(machine, turnstile, 3, 1, 2, MORNING + WINDOW_MS + 1)
    assert late.reason == DenyReason.GRANT_EXPIRED
    assert machine.state.presence_of(2, MORNING + WINDOW_MS + 1) == Presence.UNKNOWN
    assert through(machine, turnstile, 4, 2, 3, MORNING + 2_000).reason == DenyReason.OK
    assert machine.expire_grants(MORNING + EXPIRY_MS - 1, 0) == 0  # a report may still be on its way
    assert machine.expire_grants(MORNING + EXPIRY_MS, 0) == 1
    assert access(journal) == [(AccessKind.GRANT_EXPIRED, 2, 1, "")]
    assert machine.expire_grants(MORNING + 10 * EXPIRY_MS, 0) == 0  # recorded once


def test_grant_expiries_after_a_restart_are_the_same_records():
    machine, journal, turnstile = setup()
    store = Store()
    tap(machine, turnstile, 1, 2, MORNING)
    tap(machine, turnstile, 2, 3, MORNING)
    through(machine, turnstile, 3, 2, 3, MORNING + 1_000)
    store.commit(machine, journal)
    machine, journal = store.reload()
    assert machine.expire_grants(MORNING + EXPIRY_MS, 0) == 1  # pupil 2's grant; pupil 3 went through
    assert access(journal) == [(AccessKind.GRANT_EXPIRED, 2, 1, "")]
    hello(machine, TURNSTILE_ID, MORNING + 2_000)
    used = through(machine, machine.state.devices[TURNSTILE_ID], 4, 2, 3, MORNING + 2_000)
    assert used.reason == DenyReason.NO_GRANT, "the grant used before the restart stays used"
    assert machine.state.presence_of(3, MORNING + 2_000) == Presence.INSIDE  # the checkpoint came back


def test_soft_passback_allows_and_records_hard_refuses_and_records():
    for mode, expected in ((PassbackMode.SOFT, DenyReason.OK), (PassbackMode.HARD, DenyReason.ANTI_PASSBACK)):
        machine, journal, turnstile = setup(mode)
        tap(machine, turnstile, 1, 2, MORNING)
        through(machine, turnstile, 2, 1, 2, MORNING + 1_000)
        # the card is handed back over the fence to a friend outside
        again = tap(machine, turnstile, 3, 2, MORNING + 30_000)
        assert again.reason == expected
        assert access(journal) == [
            (AccessKind.PASSBACK_VIOLATION if mode is PassbackMode.SOFT else AccessKind.PASSBACK_DENIED, 2, 3, "inside")
        ]
        # a retransmit of the same tap (after a reconnect) is answered from the window and recorded once
        hello(machine, TURNSTILE_ID, MORNING + 31_000)
        assert tap(machine, turnstile, 3, 2, MORNING + 30_000).reason == expected
        assert len(access(journal)) == 1


def test_timed_passback_and_leaving_while_outside():
    machine, journal, turnstile = setup(PassbackMode.HARD, interval_ms=10 * 60_000)
    tap(machine, turnstile, 1, 2, MORNING)
    through(machine, turnstile, 2, 1, 2, MORNING)
    tap(machine, turnstile, 3, 2, MORNING + 60_000, OUT)
    through(machine, turnstile, 4, 3, 2, MORNING + 60_000, OUT)
    assert machine.state.presence_of(2, MORNING + 60_000) == Presence.OUTSIDE
    assert tap(machine, turnstile, 5, 2, MORNING + 120_000, OUT).reason == DenyReason.ANTI_PASSBACK  # outside
    assert tap(machine, turnstile, 6, 2, MORNING + 120_000).reason == DenyReason.ANTI_PASSBACK  # too soon
    assert tap(machine, turnstile, 7, 2, MORNING + 10 * 60_000).reason == DenyReason.OK
    assert [d for *_, d in access(journal)] == ["outside", "interval"]


def test_every_night_and_after_an_evacuation_everyone_may_enter_again():
    machine, journal, turnstile = setup(PassbackMode.HARD)
    store = Store()
    for pupil, txn in ((2, 1), (3, 3)):
        tap(machine, turnstile, txn, pupil, MORNING)
        through(machine, turnstile, txn + 1, txn, pupil, MORNING)
    assert machine.state.inside(1, MORNING) == [2, 3]
    tomorrow = at(7, 30, day=1)
    assert machine.state.inside(1, tomorrow) == []
    assert tap(machine, turnstile, 5, 2, tomorrow).reason == DenyReason.OK
    # the same day: an evacuation; everybody left through released turnstiles, unread
    assert tap(machine, turnstile, 6, 3, MORNING + 60_000).reason == DenyReason.ANTI_PASSBACK
    assert machine.reset_presence(1, MORNING + 120_000, "evacuation", 0)
    assert machine.state.inside(1, MORNING + 120_000) == []
    assert tap(machine, turnstile, 7, 3, MORNING + 180_000).reason == DenyReason.OK
    store.commit(machine, journal)
    machine, journal = store.reload()
    assert machine.state.inside(1, MORNING + 180_000) == [], "the reconciliation survives a restart"


def test_a_full_journal_records_nothing_and_expiry_waits():
    machine, journal, turnstile = setup()
    tap(machine, turnstile, 1, 2, MORNING)
    journal.room = False
    assert machine.expire_grants(MORNING + EXPIRY_MS, 0) == 0
    assert not machine.reset_presence(1, MORNING, "evacuation", 0)
    journal.room = True
    assert machine.expire_grants(MORNING + EXPIRY_MS, 0) == 1


def test_the_passage_window_is_the_turnstiles_own_clock_and_policy_reads_the_school():
    machine, journal, turnstile = setup()
    ahead = MORNING + 120_000  # the turnstile's clock two minutes ahead of the gateway's
    machine.request(turnstile, CardPresented(1, 0, IN, ahead, card(4)), MORNING, 0)
    ok = through(machine, turnstile, 2, 1, 4, MORNING + 2_000, reader_ms=ahead + 2_000)
    assert ok.reason == DenyReason.OK
    assert isinstance(machine.state.policy(1), Policy)


def test_a_restart_rechecks_only_recent_grants_for_expiry():
    from ledger.machine import GRANT_RECALL_LOOKBACK_MS, Machine

    from machine_support import ListJournal

    machine, journal, turnstile = setup()
    store = Store()
    tap(machine, turnstile, 1, 2, MORNING)
    store.commit(machine, journal)
    rows = [e.row for e in store.committed if e.row is not None]
    long_after = MORNING + EXPIRY_MS + GRANT_RECALL_LOOKBACK_MS + 1
    fresh, _ = store.reload()
    state = fresh.state
    late = Machine(state, ListJournal(), LIMITS)
    late.recall(rows, long_after)  # a gateway coming back long after: recorded before it stopped
    assert late.expire_grants(long_after, 0) == 0
    assert 1 in state.devices[TURNSTILE_ID].grants  # still a grant (a late PASSAGE may use it)
    soon = Machine(store.reload()[0].state, ListJournal(), LIMITS)
    soon.recall(rows, MORNING + EXPIRY_MS)
    assert soon.expire_grants(MORNING + EXPIRY_MS, 0) == 1
