"""The turnstiles' offline allow-lists: snapshot pages, deltas by version, the hot list,
a version of an earlier life or beyond the log gets a snapshot. The real machine answers
LIST_SYNC; a turnstile's side is played by ``sync`` (what docs/protocol.md 4.15 says)."""

from __future__ import annotations

from ledger.allowlist import LIST_LOG_CHANGES_MAX, AllowLists
from ledger.codes import AccountKind
from ledger.state import NO_LIMIT
from protocol import (
    LIST_FLAG_MORE,
    LIST_FLAG_RESET,
    LIST_FLAG_SNAPSHOT,
    Decision,
    DenyReason,
    ListOp,
    ListSync,
)
from protocol.limits import LIST_PAGE_ENTRIES_MAX

from machine_support import TILL_ID, TURNSTILE_ID, at, card, hello, new_machine

NOW = at(8, 0)
EXTRA = 130  # pupils beyond the six of the small school: three snapshot pages


class Turnstile:
    """The device's side: its list and version, kept as the spec says."""

    def __init__(self) -> None:
        self.version = 0
        self.members: dict[bytes, int] = {}
        self.requests = 0

    def sync(self, machine) -> None:
        device = machine.state.devices[TURNSTILE_ID]
        after = b""
        while True:
            self.requests += 1
            page = machine.request(device, ListSync(self.version, after), NOW, 0)
            if page.flags & LIST_FLAG_RESET:
                self.members.clear()
            for e in page.entries:
                if e.op == ListOp.REMOVE:
                    self.members.pop(e.identifier, None)
                else:
                    self.members[e.identifier] = e.op
            self.version = page.version
            if page.flags & LIST_FLAG_SNAPSHOT and page.flags & LIST_FLAG_MORE:
                after = page.entries[-1].identifier
                continue
            after = b""
            if page.flags & LIST_FLAG_SNAPSHOT or page.flags & LIST_FLAG_MORE:
                continue  # the delta after the snapshot, or the next delta page
            return


def school(extra: int = EXTRA):
    machine, journal = new_machine()
    state = machine.state
    for n in range(extra):
        account_id = 100 + n
        state.add_account((account_id, AccountKind.PUPIL, 1, 0, 0, NO_LIMIT))
        state.add_identifier(card(account_id), account_id, 0)
    state.add_account((900, AccountKind.PUPIL, 2, 0, 0, NO_LIMIT))  # another school's pupil
    state.add_identifier(card(900), 900, 0)
    state.add_identifier(card(3), 3, 1)  # pupil 3's card blocked: the hot list
    state.build_lists(epoch=7)
    hello(machine, TURNSTILE_ID, NOW)
    return machine


def expected(machine) -> dict[bytes, int]:
    state = machine.state
    return {
        ident: (ListOp.ALLOW if ident not in state.identifier_state else ListOp.BLOCK)
        for ident, account_id in state.identifiers.items()
        if state.accounts.school[account_id] == 1 and state.accounts.kind[account_id] == AccountKind.PUPIL
    }


def test_a_new_turnstile_gets_the_school_in_snapshot_pages_then_only_changes():
    machine = school()
    t = Turnstile()
    t.sync(machine)
    assert t.members == expected(machine) and len(t.members) == 6 + EXTRA
    assert t.members[card(3)] == ListOp.BLOCK and card(900) not in t.members
    pages = -(-(6 + EXTRA) // LIST_PAGE_ENTRIES_MAX)
    assert t.requests == pages + 1  # the snapshot's pages, then one (empty) delta
    first_version = t.version
    t.requests = 0
    t.sync(machine)
    assert (t.requests, t.version) == (1, first_version)  # nothing changed: one empty delta
    # a card lost and blocked, a temporary card, a pupil's card taken off
    state = machine.state
    state.add_identifier(card(4), 4, 1)
    state.add_identifier(b"\x06" + bytes(6), 4, 0)
    state.remove_identifier(card(101))
    t.requests = 0
    t.sync(machine)
    assert t.requests == 1 and t.members == expected(machine)
    assert t.members[card(4)] == ListOp.BLOCK and card(101) not in t.members
    assert t.version == first_version + 3


def test_a_version_of_an_earlier_life_or_beyond_the_log_gets_a_snapshot():
    machine = school(extra=0)
    t = Turnstile()
    t.sync(machine)
    lists = machine.state.lists
    stale = AllowLists(epoch=6)
    assert (t.version >> 32) == 7 != stale.epoch
    t.version = (6 << 32) | 3  # an earlier gateway life
    page = machine.request(machine.state.devices[TURNSTILE_ID], ListSync(t.version), NOW, 0)
    assert page.flags & LIST_FLAG_RESET and (page.version >> 32) == 7
    t.sync(machine)
    behind = t.version
    state = machine.state
    for n in range(LIST_LOG_CHANGES_MAX + 2):  # more changes than the log keeps
        state.add_identifier(card(5), 5, (n + 1) % 2)
    page = machine.request(state.devices[TURNSTILE_ID], ListSync(behind), NOW, 0)
    assert page.flags & LIST_FLAG_RESET
    t.sync(machine)
    assert t.members == expected(machine)
    assert lists is state.lists


def test_a_snapshot_that_changes_while_paging_ends_right_after_the_delta():
    machine = school()
    t = Turnstile()
    device = machine.state.devices[TURNSTILE_ID]
    first = machine.request(device, ListSync(0), NOW, 0)
    t.members = {e.identifier: e.op for e in first.entries}
    t.version = first.version
    # while it pages: a card added before the cursor, one removed after it
    machine.state.add_identifier(b"\x04" + bytes(5) + b"\x01", 1, 0)  # sorts first
    machine.state.remove_identifier(card(120))
    after = first.entries[-1].identifier
    while True:
        page = machine.request(device, ListSync(t.version, after), NOW, 0)
        t.members.update({e.identifier: e.op for e in page.entries})
        if not page.flags & LIST_FLAG_MORE:
            break
        after = page.entries[-1].identifier
    t.sync(machine)  # the delta from the snapshot's base version
    assert t.members == expected(machine)


def test_only_a_turnstile_gets_a_list():
    machine = school(extra=0)
    hello(machine, TILL_ID, NOW)
    refused = machine.request(machine.state.devices[TILL_ID], ListSync(0), NOW, 0)
    assert type(refused) is Decision and refused.reason == DenyReason.WRONG_DEVICE_KIND
