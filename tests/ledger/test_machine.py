"""The ledger machine, driven as the gateway drives it: the bugs found from outside.

Each test here failed against the machine as it was spread over the gateway's
shells (issue 7); no database, no sockets, time passed in.
"""

from __future__ import annotations

from ledger.codes import JournalKind
from ledger.machine import SecurityEvent
from protocol import (
    TXN_FLAG_ADVICE,
    CardPresented,
    Decision,
    DenyReason,
    HelloAck,
    Item,
    Nak,
    NakReason,
    Passage,
    Purchase,
    TopupCash,
)
from protocol.limits import TXN_GAP_MAX, TXN_MAX

from machine_support import (
    LUNCH_MEAL,
    FREE_MEALS,
    LUNCH_MEAL,
    REVENUE,
    TILL_ID,
    TURNSTILE_ID,
    Store,
    at,
    card,
    hello,
    new_machine,
)

LUNCH = at(12, 30)


def lunch(txn: int, pupil: int, reader_ms: int, flags: int = 0, price: int = 15_000) -> Purchase:
    return Purchase(txn, flags, reader_ms, price, card(pupil), (Item(LUNCH_MEAL, 1, price),))


def test_a_free_lunch_replayed_as_an_advice_is_judged_when_it_happened():
    machine, journal = new_machine(free_meal_pupils=(1,))
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    # Sold offline at 12:30, replayed at 15:00 (outside the lunch period).
    replay_at = at(15, 0)
    decision = machine.request(till, lunch(1, 1, LUNCH, TXN_FLAG_ADVICE), replay_at, 0)
    assert decision.reason == DenyReason.OK
    row = journal.queue[-1].row
    assert row.debit_account_id == FREE_MEALS and row.credit_account_id == REVENUE
    assert (row.happened_at_ms, row.device_time_ms, row.decided_at_ms) == (LUNCH, LUNCH, replay_at)
    assert machine.state.accounts.balance[1] == 20_000  # the pupil paid nothing
    # The free meal of that day is taken: a second lunch the same day is paid.
    machine.request(till, lunch(2, 1, at(13, 0)), at(13, 0) + 7_200_000, 0)
    assert machine.state.accounts.balance[1] == 5_000


def test_an_advice_outside_the_offline_window_is_judged_now_and_recorded_so():
    machine, journal = new_machine(free_meal_pupils=(1,))
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    for txn, reader_ms in ((1, LUNCH - 4 * 86_400_000), (2, (1 << 63) - 1), (3, LUNCH + 3_600_000)):
        machine.request(till, lunch(txn, 1, reader_ms, TXN_FLAG_ADVICE), LUNCH, 0)
        row = journal.queue[-1].row
        assert row.device_time_ms is None, "a reader clock outside the window is not journaled"
        assert row.happened_at_ms == LUNCH
    assert machine.tally.reader_time_rejected == 3


def test_a_live_request_with_a_reader_time_millions_of_years_ahead_journals_no_reader_time():
    machine, journal = new_machine()
    hello(machine, TILL_ID, LUNCH)
    machine.request(machine.state.devices[TILL_ID], lunch(1, 2, (1 << 63) - 1), LUNCH, 0)
    assert journal.queue[-1].row.device_time_ms is None
    assert journal.queue[-1].row.happened_at_ms == LUNCH


def test_a_cash_topup_advice_above_the_cap_credits_nothing_and_is_a_security_event():
    machine, journal = new_machine()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    huge = TopupCash(1, TXN_FLAG_ADVICE, LUNCH, 0xFFFFFFFF, 7, card(3))
    decision = machine.request(till, huge, LUNCH, 0)
    assert (decision.outcome, decision.reason) == (0, DenyReason.AMOUNT_INVALID)
    assert machine.state.accounts.balance[3] == 20_000 and not journal.queue
    assert machine.tally.security[SecurityEvent.ADVICE_TOPUP_ABOVE_CAP] == 1
    again = machine.request(till, huge, LUNCH, 0)  # a resend (next session) gets the stored answer
    hello(machine, TILL_ID, LUNCH)
    again = machine.request(till, huge, LUNCH, 0)
    assert again.reason == DenyReason.AMOUNT_INVALID and again.flags == 1
    assert machine.state.accounts.balance[3] == 20_000
    at_cap = TopupCash(2, TXN_FLAG_ADVICE, LUNCH, 1_500_000, 7, card(3))
    assert machine.request(till, at_cap, LUNCH, 0).reason == DenyReason.OK


def test_a_deny_for_insufficient_funds_shows_the_pupils_balance():
    machine, _ = new_machine()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    decision = machine.request(till, lunch(1, 4, LUNCH, price=20_001), LUNCH, 0)
    assert decision.reason == DenyReason.INSUFFICIENT_FUNDS
    assert decision.balance_kopecks == 20_000 and decision.params == (20_001, 20_000)
    unknown = machine.request(till, Purchase(2, 0, LUNCH, 100, b"\x09" * 7, (Item(3, 1, 100),)), LUNCH, 0)
    assert unknown.reason == DenyReason.UNKNOWN_CARD and unknown.balance_kopecks == 0


def test_a_passage_naming_a_txn_never_granted_is_not_counted():
    machine, journal = new_machine()
    turnstile = machine.state.devices[TURNSTILE_ID]
    hello(machine, TURNSTILE_ID, LUNCH)
    forged = Passage(1000, TXN_FLAG_ADVICE, 1, LUNCH, 999, card(2))
    assert machine.request(turnstile, forged, LUNCH, 0).reason == DenyReason.NO_GRANT
    assert not journal.queue
    assert machine.tally.security[SecurityEvent.PASSAGE_WITHOUT_GRANT] == 1
    granted = machine.request(turnstile, CardPresented(1002, 0, 1, LUNCH, card(2)), LUNCH, 0)
    assert granted.reason == DenyReason.OK
    assert machine.request(turnstile, Passage(1003, TXN_FLAG_ADVICE, 1, LUNCH, 1002, card(3)), LUNCH, 0).reason == (
        DenyReason.NO_GRANT
    ), "a grant for another card"
    ok = machine.request(turnstile, Passage(1004, TXN_FLAG_ADVICE, 1, LUNCH, 1002, card(2)), LUNCH, 0)
    assert ok.reason == DenyReason.OK
    assert [e.row.kind for e in journal.queue] == [JournalKind.ENTRY, JournalKind.PASSAGE]


def test_a_grant_survives_a_restart():
    machine, journal = new_machine()
    store = Store()
    hello(machine, TURNSTILE_ID, LUNCH)
    machine.request(machine.state.devices[TURNSTILE_ID], CardPresented(5, 0, 1, LUNCH, card(2)), LUNCH, 0)
    store.commit(machine, journal)
    machine, journal = store.reload()
    hello(machine, TURNSTILE_ID, LUNCH)
    passage = Passage(6, TXN_FLAG_ADVICE, 1, LUNCH, 5, card(2))
    assert machine.request(machine.state.devices[TURNSTILE_ID], passage, LUNCH, 0).reason == DenyReason.OK


def test_a_txn_near_txn_max_is_refused_and_the_device_goes_on():
    machine, journal = new_machine()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    assert machine.request(till, lunch(5, 1, LUNCH), LUNCH, 0).reason == DenyReason.OK
    reply = machine.request(till, lunch(TXN_MAX - 1, 1, LUNCH), LUNCH, 0)
    assert type(reply) is Nak and reply.reason == NakReason.TXN_OUT_OF_RANGE
    assert len(journal.queue) == 1
    # Nothing was decided and the txn does not count as sent: the next one works.
    assert machine.request(till, lunch(6, 2, LUNCH), LUNCH, 0).reason == DenyReason.OK
    assert machine.request(till, lunch(6 + TXN_GAP_MAX, 3, LUNCH), LUNCH, 0).reason == DenyReason.OK


def test_the_watermark_is_a_prefix_when_txns_were_accepted_out_of_order():
    machine, journal = new_machine()
    store = Store()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    # Session 1: txn 10 is deferred (journal full), txn 11 accepted.
    journal.room = False
    reply = machine.request(till, lunch(10, 1, LUNCH, TXN_FLAG_ADVICE), LUNCH, 0)
    assert type(reply) is Nak and reply.reason == NakReason.SERVER_BUSY
    journal.room = True
    assert machine.request(till, lunch(11, 2, LUNCH), LUNCH, 0).reason == DenyReason.OK
    # Session 2: the device replays 10; it is accepted after 11 in the journal's queue.
    hello(machine, TILL_ID, LUNCH)
    assert machine.request(till, lunch(10, 1, LUNCH, TXN_FLAG_ADVICE), LUNCH, 0).reason == DenyReason.OK
    store.commit(machine, journal, count=1)  # only 11 is durable
    assert till.durable_txn < 10, "10 was accepted and is not durable: the watermark must stay below it"
    store.commit(machine, journal)
    assert till.durable_txn == 11


def test_hello_ack_carries_the_prefix_watermark_and_a_device_claiming_more_is_counted():
    machine, journal = new_machine()
    store = Store()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    machine.request(till, lunch(3, 1, LUNCH), LUNCH, 0)
    store.commit(machine, journal)
    ack = hello(machine, TILL_ID, LUNCH, durable_txn=3)
    assert type(ack) is HelloAck and ack.durable_txn == 3
    hello(machine, TILL_ID, LUNCH, durable_txn=99)
    assert machine.tally.security[SecurityEvent.HELLO_WATERMARK_AHEAD] == 1


def test_grace_meals_and_day_counters_survive_a_restart():
    options = {"grace_meals": 1}
    machine, journal = new_machine(**options)
    store = Store()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    assert machine.request(till, lunch(1, 5, LUNCH, price=20_000), LUNCH, 0).reason == DenyReason.OK
    assert machine.request(till, lunch(2, 5, LUNCH, price=500), LUNCH, 0).reason == DenyReason.OK  # on grace
    assert machine.state.accounts.grace_used[5] == 1
    store.commit(machine, journal)
    machine, journal = store.reload(**options)
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    assert machine.state.accounts.grace_used[5] == 1
    assert machine.state.accounts.spent[5] == 20_500
    denied = machine.request(till, lunch(3, 5, LUNCH, price=500), LUNCH, 0)
    assert denied.reason == DenyReason.INSUFFICIENT_FUNDS, "the restart must not hand out a fresh grace meal"


def test_a_retransmitted_txn_after_a_restart_gets_its_stored_decision():
    machine, journal = new_machine()
    store = Store()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    first = machine.request(till, lunch(7, 1, LUNCH), LUNCH, 0)
    store.commit(machine, journal)
    machine, journal = store.reload()
    hello(machine, TILL_ID, LUNCH)
    again = machine.request(machine.state.devices[TILL_ID], lunch(7, 1, LUNCH), LUNCH, 0)
    assert type(again) is Decision and again.flags == 1
    assert (again.outcome, again.reason, again.balance_kopecks, again.params) == (
        first.outcome, first.reason, first.balance_kopecks, first.params
    )
    assert not journal.queue and machine.state.accounts.balance[1] == 5_000


def test_parents_hear_of_passages_purchases_and_topups_not_of_grants():
    import msgspec

    from ledger.notices import NOTICE_DECODER, CashTopupNotice, EntryNotice, ExitNotice, PurchaseNotice

    machine, journal = new_machine(free_meal_pupils=(1,))
    till, turnstile = machine.state.devices[TILL_ID], machine.state.devices[TURNSTILE_ID]
    hello(machine, TILL_ID, LUNCH)
    hello(machine, TURNSTILE_ID, LUNCH)
    machine.request(turnstile, CardPresented(1, 0, 1, LUNCH, card(2)), LUNCH, 0)
    assert journal.queue[-1].outbox == (), "a grant is not an entry until the passage"
    machine.request(turnstile, Passage(2, TXN_FLAG_ADVICE, 1, LUNCH, 1, card(2)), LUNCH, 0)
    machine.request(turnstile, CardPresented(3, 0, 2, LUNCH, card(2)), LUNCH, 0)
    machine.request(turnstile, Passage(4, TXN_FLAG_ADVICE, 2, LUNCH, 3, card(2)), LUNCH, 0)
    machine.request(till, lunch(1, 1, LUNCH), LUNCH, 0)  # free
    machine.request(till, TopupCash(2, 0, LUNCH, 5_000, 7, card(1)), LUNCH, 0)
    events = [event for entry in journal.queue for event in entry.outbox]
    notices = [event.payload for event in events]
    assert [type(n) for n in notices] == [EntryNotice, ExitNotice, PurchaseNotice, CashTopupNotice]
    assert [e.kind for e in events] == ["entry", "exit", "purchase", "cash_topup"]
    assert len({e.event_id for e in events}) == 4
    purchase = notices[2]
    assert (purchase.amount_kopecks, purchase.balance_kopecks, purchase.free_meal) == (15_000, 20_000, True)
    assert [(i.product_code, i.quantity, i.unit_price_kopecks) for i in purchase.items] == [(LUNCH_MEAL, 1, 15_000)]
    assert notices[3].balance_kopecks == 25_000 and notices[0].at_ms == LUNCH
    # What the writer stores decodes back into the same notice.
    for event in events:
        assert NOTICE_DECODER.decode(msgspec.json.encode(event.payload)) == event.payload


def test_a_denied_or_duplicate_request_tells_nobody():
    machine, journal = new_machine()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    machine.request(till, lunch(1, 4, LUNCH, price=50_000), LUNCH, 0)  # insufficient funds
    assert not journal.queue
    machine.request(till, lunch(2, 4, LUNCH, price=5_000), LUNCH, 0)
    hello(machine, TILL_ID, LUNCH)
    machine.request(till, lunch(2, 4, LUNCH, price=5_000), LUNCH, 0)  # resent: DUPLICATE
    assert sum(len(e.outbox) for e in journal.queue) == 1


def test_cash_at_the_office_desk_is_paid_by_the_schools_desk_drawer_and_told_to_the_parents():
    from ledger.codes import AccountStatus, CommandStatus
    from machine_support import DESK_DRAWER

    machine, journal = new_machine()
    result = machine.command(1, "cash_topup", {"account_id": 3, "amount_kopecks": 5_000}, None, LUNCH, 0)
    assert result.status == CommandStatus.APPLIED and result.result["balances"] == {str(DESK_DRAWER): -5_000,
                                                                                      "3": 25_000}
    entry = journal.queue[-1]
    assert (entry.row.kind, entry.row.debit_account_id, entry.row.credit_account_id) == (
        JournalKind.DESK_CASH_TOPUP, DESK_DRAWER, 3)
    assert [e.kind for e in entry.outbox] == ["cash_topup"] and entry.outbox[0].payload.device_id == 0
    refusals = {
        "above the till's cap": ({"account_id": 3, "amount_kopecks": 1_500_001}, "AMOUNT_INVALID"),
        "nothing": ({"account_id": 3, "amount_kopecks": 0}, "AMOUNT_INVALID"),
        "negative": ({"account_id": 3, "amount_kopecks": -1}, "AMOUNT_INVALID"),
        "text": ({"account_id": 3, "amount_kopecks": "5000"}, "AMOUNT_INVALID"),
        "not a pupil": ({"account_id": REVENUE, "amount_kopecks": 5_000}, "UNKNOWN_ACCOUNT"),
        "no account": ({"account_id": 99_999, "amount_kopecks": 5_000}, "UNKNOWN_ACCOUNT"),
    }
    for seq, (why, (payload, reason)) in enumerate(refusals.items(), 2):
        refused = machine.command(seq, "cash_topup", payload, None, LUNCH, 0)
        assert refused.status == CommandStatus.REFUSED and refused.result["reason"] == reason, why
    machine.state.accounts.status[4] = AccountStatus.BLOCKED
    blocked = machine.command(20, "cash_topup", {"account_id": 4, "amount_kopecks": 5_000}, None, LUNCH, 0)
    assert blocked.result["reason"] == "ACCOUNT_BLOCKED"
    # a school whose desk drawer is missing takes no cash at the desk
    del machine.state.desk_drawer_account[1]
    assert machine.command(21, "cash_topup", {"account_id": 3, "amount_kopecks": 5_000}, None, LUNCH,
                           0).result["reason"] == "AMOUNT_INVALID"
    assert machine.state.accounts.balance[3] == 25_000 and machine.state.ledger_total() == 0


def test_a_school_without_a_revenue_account_sells_nothing():
    machine, _ = new_machine()
    del machine.state.revenue_account[1]
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    for txn, flags in ((1, 0), (2, TXN_FLAG_ADVICE)):
        denied = machine.request(till, lunch(txn, 3, LUNCH, flags=flags), LUNCH, 0)
        assert denied.reason == DenyReason.WRONG_SCHOOL
    assert machine.state.accounts.balance[0] == 0 and machine.state.accounts.balance[3] == 20_000


# -- a counter that went back (docs/protocol.md 10.15) -----------------------------------------


def test_another_request_under_a_remembered_txn_is_refused_not_answered_with_the_stored_decision():
    """A till whose counter went back (storage lost): its txn 1 is another pupil's lunch now. The
    stored ACCEPT is not sent for it (the food would go without a debit): NAK TXN_REUSED, nothing
    applied or remembered, counted; the txn does not count as sent, so the same session goes on."""
    machine, journal = new_machine()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    assert machine.request(till, lunch(1, 1, LUNCH), LUNCH, 0).outcome == 1
    rows = len(journal.queue)
    balance_2 = machine.state.accounts.balance[2]
    hello(machine, TILL_ID, LUNCH + 60_000)  # the till came back without its log
    reused = machine.request(till, lunch(1, 2, LUNCH + 60_000), LUNCH + 60_000, 0)
    assert type(reused) is Nak and reused.reason == NakReason.TXN_REUSED
    assert machine.tally.security[SecurityEvent.TXN_REUSED] == 1
    assert len(journal.queue) == rows and machine.state.accounts.balance[2] == balance_2
    # the same request again (a replay: same card, same reader time, ADVICE set) is a DUPLICATE
    replay = machine.request(till, lunch(1, 1, LUNCH, TXN_FLAG_ADVICE), LUNCH + 60_000, 0)
    assert type(replay) is Decision and replay.flags == 1 and replay.outcome == 1
    # a later txn, still in the same session, is decided
    assert machine.request(till, lunch(2, 2, LUNCH + 60_000), LUNCH + 60_000, 0).outcome == 1
    assert machine.state.accounts.balance[2] == balance_2 - 15_000


def test_a_fire_alarm_under_a_txn_the_panel_used_before_is_not_swallowed_as_a_duplicate():
    from ledger.state import DeviceState
    from protocol import DeviceKind, FireAlarm, FireReset

    machine, _ = new_machine()
    panel = machine.state.devices[3_000_001] = DeviceState(3_000_001, 1, DeviceKind.FIRE_PANEL, b"k" * 16, 0, 0)
    hello(machine, 3_000_001, LUNCH)
    machine.request(panel, FireAlarm(1, 0, LUNCH), LUNCH, 0)
    machine.request(panel, FireReset(2, 0, LUNCH + 1_000), LUNCH + 1_000, 0)
    assert 1 not in machine.state.alarms
    later = LUNCH + 3_600_000
    hello(machine, 3_000_001, later)  # the panel's storage was lost: it counts from 1 again
    again = machine.request(panel, FireAlarm(1, 0, later), later, 0)
    assert type(again) is Nak and again.reason == NakReason.TXN_REUSED
    raised = machine.request(panel, FireAlarm(3, 0, later), later, 0)  # moved past it: raised
    assert raised.outcome == 1 and 1 in machine.state.alarms


def test_after_a_restart_the_journal_tells_which_request_a_txn_was():
    """The window reloaded from the journal keeps the kind and card of each txn (and the reader's
    time where the row has it): another card under a journaled txn is refused, the same request
    is a DUPLICATE."""
    store = Store()
    machine, journal = new_machine()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH)
    machine.request(till, lunch(1, 1, LUNCH), LUNCH, 0)
    store.commit(machine, journal)
    machine, journal = store.reload()
    till = machine.state.devices[TILL_ID]
    hello(machine, TILL_ID, LUNCH + 60_000, durable_txn=1)
    reused = machine.request(till, lunch(1, 3, LUNCH + 60_000), LUNCH + 60_000, 0)
    assert type(reused) is Nak and reused.reason == NakReason.TXN_REUSED
    other_time = machine.request(till, lunch(1, 1, LUNCH + 5_000, TXN_FLAG_ADVICE), LUNCH + 60_000, 0)
    assert type(other_time) is Nak and other_time.reason == NakReason.TXN_REUSED  # the same card, another sale
    replay = machine.request(till, lunch(1, 1, LUNCH, TXN_FLAG_ADVICE), LUNCH + 60_000, 0)
    assert type(replay) is Decision and replay.flags == 1 and replay.outcome == 1 and not journal.queue
