"""Kindergartens in the machine: a trusted person's card opens the turnstile for the adult, the
child's card follows within the escort window and only for that person's children; the child's
entry names who brought them; without an escort a child is refused (bringing and collecting)."""

from __future__ import annotations

import msgspec

from ledger.codes import AccessKind, JournalKind, Presence
from ledger.state import ESCORT_WINDOW_MS
from protocol import TXN_FLAG_ADVICE, CardPresented, DenyReason, Passage

from machine_support import TURNSTILE_ID, Store, at, card, hello, new_machine

MORNING = at(8, 0)
GRANNY = b"\x0b" + bytes(5) + b"\x01"  # a trusted person's card
NANNY = b"\x0b" + bytes(5) + b"\x02"
IN, OUT = 1, 2


def kindergarten(escort_required: bool = True):
    machine, journal = new_machine()
    state = machine.state
    state.policies[1] = msgspec.structs.replace(state.policies[1], escort_required=escort_required)
    state.apply_escorts([
        (GRANNY, 501, 1, "Смирнова Ольга Петровна", "grandmother", [2, 3]),
        (NANNY, 502, 1, "Иванова Мария", "nanny", [4]),
    ])
    hello(machine, TURNSTILE_ID, MORNING)
    return machine, journal, state.devices[TURNSTILE_ID]


def tap(machine, t, txn, identifier, now_ms, direction=IN):
    return machine.request(t, CardPresented(txn, 0, direction, now_ms, identifier), now_ms, 0)


def through(machine, t, txn, granted, identifier, now_ms, direction=IN):
    return machine.request(t, Passage(txn, TXN_FLAG_ADVICE, direction, now_ms, granted, identifier), now_ms, 0)


def test_granny_brings_her_grandchild_and_the_entry_names_her():
    machine, journal, t = kindergarten()
    adult = tap(machine, t, 1, GRANNY, MORNING)
    assert (adult.outcome, adult.template_id) == (1, 108)
    assert journal.queue[-1].row.kind == JournalKind.ESCORT and journal.queue[-1].row.account_id == 0
    assert through(machine, t, 2, 1, GRANNY, MORNING + 2_000).reason == DenyReason.OK  # the adult goes in
    assert not journal.queue[-1].outbox and not journal.queue[-1].accounts  # nobody's presence, nobody told
    child = tap(machine, t, 3, card(2), MORNING + 5_000)
    assert child.reason == DenyReason.OK
    assert through(machine, t, 4, 3, card(2), MORNING + 7_000).reason == DenyReason.OK
    entry = journal.queue[-1]
    (notice,) = entry.outbox
    assert notice.kind == "entry"
    assert (notice.payload.escort, notice.payload.escort_relation) == ("Смирнова Ольга Петровна", "grandmother")
    (escorted,) = entry.access
    assert (escorted.kind, escorted.account_id, escorted.detail) == (
        AccessKind.ESCORTED, 2, "representative 501: Смирнова Ольга Петровна (grandmother)")
    assert machine.state.presence_of(2, MORNING + 7_000) == Presence.INSIDE


def test_a_child_alone_another_familys_adult_or_a_stale_tap_is_refused_both_ways():
    machine, journal, t = kindergarten()
    assert tap(machine, t, 1, card(2), MORNING).reason == DenyReason.ESCORT_REQUIRED  # alone
    tap(machine, t, 2, NANNY, MORNING)
    assert tap(machine, t, 3, card(2), MORNING + 1_000).reason == DenyReason.ESCORT_REQUIRED  # not hers
    assert tap(machine, t, 4, card(4), MORNING + 1_000).reason == DenyReason.OK  # hers
    assert tap(machine, t, 5, card(4), MORNING + 2_000).reason == DenyReason.ESCORT_REQUIRED  # one child a tap
    tap(machine, t, 6, GRANNY, MORNING + 3_000, OUT)
    late = MORNING + 3_000 + ESCORT_WINDOW_MS + 1
    assert tap(machine, t, 7, card(3), late, OUT).reason == DenyReason.ESCORT_REQUIRED  # collected too late
    tap(machine, t, 8, GRANNY, late, OUT)
    assert tap(machine, t, 9, card(3), late + 1, OUT).reason == DenyReason.OK  # collected


def test_an_ordinary_school_needs_no_escort_and_a_trusted_card_of_another_school_is_refused():
    machine, journal, t = kindergarten(escort_required=False)
    assert tap(machine, t, 1, card(2), MORNING).reason == DenyReason.OK
    machine.state.apply_escorts([(b"\x0b" + bytes(5) + b"\x09", 900, 2, "Чужая", "nanny", [2])], 900)
    assert tap(machine, t, 2, b"\x0b" + bytes(5) + b"\x09", MORNING).reason == DenyReason.WRONG_SCHOOL
    machine.state.apply_escorts([], 501)  # granny removed: her card no longer opens anything
    assert tap(machine, t, 3, GRANNY, MORNING).reason == DenyReason.UNKNOWN_CARD


def test_an_adults_grant_survives_a_restart_for_their_passage():
    machine, journal, t = kindergarten()
    store = Store()
    tap(machine, t, 1, GRANNY, MORNING)
    store.commit(machine, journal)
    machine, journal = store.reload()
    machine.state.apply_escorts([(GRANNY, 501, 1, "Смирнова Ольга Петровна", "grandmother", [2, 3])])
    hello(machine, TURNSTILE_ID, MORNING + 1_000)
    t = machine.state.devices[TURNSTILE_ID]
    assert through(machine, t, 2, 1, GRANNY, MORNING + 2_000).reason == DenyReason.OK
