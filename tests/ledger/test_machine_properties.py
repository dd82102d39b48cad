"""Property tests of the real ledger machine under random interleavings.

Taps from a till and a turnstile, resends of decided txns, money commands, a
journal that fills up (back-pressure), partial group commits and crashes (the
machine is dropped with its queue and rebuilt from what was committed, the
devices replay what they keep, pending commands are taken again). Devices
follow docs/protocol.md section 10: a kept txn is dropped only after a DECISION
for it and then a watermark >= it, both in the current session.

After every step and every reload: the ledger sums to zero; at the end every
accepted transaction is journaled exactly once and every account equals its
history in the committed journal.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codes import JournalKind
from ledger.rules import Original
from protocol import TXN_FLAG_ADVICE, CardPresented, Decision, Item, Passage, Purchase, TopupCash
from machine_support import (
    LUNCH_MEAL,
    OPENING_KOPECKS,
    PUPILS,
    TILL_ID,
    TURNSTILE_ID,
    Store,
    at,
    card,
    hello,
    new_machine,
    reference_accounts,
)

NOW = at(12, 30)
pupil = st.integers(1, PUPILS)
step = st.one_of(
    st.tuples(st.just("purchase"), pupil, st.integers(1, 30_000)),
    st.tuples(st.just("topup"), pupil, st.integers(1, 30_000)),
    st.tuples(st.just("entry"), pupil),
    st.tuples(st.just("resend"), st.integers(0, 40)),
    st.tuples(st.just("command"), st.sampled_from(["bank_topup", "correction", "transfer", "cash_topup"]), pupil, st.integers(1, 9_000)),
    st.tuples(st.just("refund"), st.integers(0, 30), st.one_of(st.none(), st.integers(1, 30_000))),
    st.tuples(st.just("commit"), st.integers(0, 5)),
    st.tuples(st.just("full"), st.booleans()),
    st.tuples(st.just("reconnect"),),
    st.tuples(st.just("crash"),),
)


class Device:
    """A device that keeps what was accepted until a watermark in the same session covers it."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.next_txn = 1
        self.kept: dict[int, object] = {}  # txn -> the request, sent as an advice on replay
        self.answered: set[int] = set()  # kept txns answered with a DECISION in this session
        self.sent: dict[int, object] = {}  # every txn ever sent (for resends)
        self.accepted: set[int] = set()

    def session(self, machine, now):
        self.answered = set()
        hello(machine, self.device_id, now)
        state = machine.state.devices[self.device_id]
        for txn in sorted(self.kept):
            self.send(machine, state, self.kept[txn], now)

    def send(self, machine, state, request, now):
        reply = machine.request(state, request, now, 0)
        txn = request.txn
        if type(reply) is Decision:
            if reply.outcome:
                self.accepted.add(txn)
                self.kept[txn] = _as_advice(request)
                self.answered.add(txn)
            else:
                self.kept.pop(txn, None)
        return reply

    def acked(self, watermark: int) -> None:
        for txn in [t for t in self.kept if t <= watermark and t in self.answered]:
            del self.kept[txn]


def _original(store: Store, journal, payload: dict) -> Original | None:
    """What storage.commands.original_purchase and the processor's in-flight count give the machine."""
    key = (payload["device_id"], payload["device_txn"])
    rows = [e.row for e in store.committed if e.row is not None and (e.row.device_id, e.row.device_txn) == key]
    if not rows:
        return None
    row = rows[0]
    refunded = sum(
        e.command.result["amount_kopecks"]
        for e in store.committed + journal.queue
        if e.command is not None and e.row is not None and e.row.kind == JournalKind.REFUND
        and e.command.result.get("refund_of") == list(key)
    )
    return Original(row.kind, row.account_id, row.debit_account_id, row.credit_account_id, row.amount_kopecks, refunded)


def _as_advice(request):
    import msgspec

    return msgspec.structs.replace(request, flags=TXN_FLAG_ADVICE)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=80))
def test_money_and_events_survive_any_interleaving_of_faults(steps):
    machine, journal = new_machine()
    store = Store()
    till, turnstile = Device(TILL_ID), Device(TURNSTILE_ID)
    devices = (till, turnstile)
    commands: dict[int, tuple] = {}  # seq -> (kind, payload): the commands table
    applied: set[int] = set()  # seqs whose result was committed
    in_flight: set[int] = set()
    for d in devices:
        d.session(machine, NOW)

    def ack_devices():
        for d in devices:
            d.acked(machine.state.devices[d.device_id].durable_txn)

    def commit(count=None):
        batch = store.commit(machine, journal, count)
        for entry in batch:
            if entry.command is not None:
                applied.add(entry.command.seq)
                in_flight.discard(entry.command.seq)
        ack_devices()

    for op in steps:
        name = op[0]
        if name in ("purchase", "topup", "entry", "resend"):
            d = turnstile if name == "entry" else till
            state = machine.state.devices[d.device_id]
            if name == "resend":
                if not till.sent:
                    continue
                txn = sorted(till.sent)[op[1] % len(till.sent)]
                if txn <= state.session_last_txn:
                    till.session(machine, NOW)  # a resend needs a new session
                till.send(machine, state, till.sent[txn], NOW)
                continue
            txn = d.next_txn
            d.next_txn += 1
            if name == "purchase":
                request = Purchase(txn, 0, NOW, op[2], card(op[1]), (Item(LUNCH_MEAL, 1, op[2]),))
            elif name == "topup":
                request = TopupCash(txn, 0, NOW, op[2], 1, card(op[1]))
            else:
                request = CardPresented(txn, 0, 1, NOW, card(op[1]))
            d.sent[txn] = request
            reply = d.send(machine, state, request, NOW)
            if name == "entry" and type(reply) is Decision and reply.outcome:
                ptxn = d.next_txn
                d.next_txn += 1
                passage = Passage(ptxn, TXN_FLAG_ADVICE, 1, NOW, txn, card(op[1]))
                d.sent[ptxn] = passage
                d.send(machine, state, passage, NOW)
        elif name == "command":
            seq = len(commands) + 1
            kind, who, amount = op[1], op[2], op[3]
            if kind == "transfer":
                payload = {"from_account_id": who, "to_account_id": who % PUPILS + 1, "amount_kopecks": amount}
            else:
                payload = {"account_id": who, "amount_kopecks": amount if kind != "correction" else -amount}
            commands[seq] = (kind, payload)
        elif name == "refund":
            purchases = [e.row for e in store.committed if e.row is not None and e.row.kind == JournalKind.PURCHASE]
            if purchases:
                target = purchases[op[1] % len(purchases)]
                payload = {"device_id": target.device_id, "device_txn": target.device_txn}
                if op[2] is not None:
                    payload["amount_kopecks"] = op[2]
                commands[len(commands) + 1] = ("refund", payload)
        elif name == "commit":
            commit(op[1] or None)
        elif name == "full":
            journal.room = not op[1]
        elif name == "reconnect":
            for d in devices:
                d.session(machine, NOW)
        else:  # crash: memory and the queue are gone; what was committed stays
            machine, journal = store.reload()
            in_flight.clear()
            assert machine.state.ledger_total() == 0
            for d in devices:
                d.session(machine, NOW)
        # The command processor: pending commands not yet decided by this machine.
        for seq, (kind, payload) in commands.items():
            if seq not in applied and seq not in in_flight and journal.has_room():
                original = _original(store, journal, payload) if kind == "refund" else None
                machine.command(seq, kind, payload, original, NOW, 0)
                in_flight.add(seq)
        assert machine.state.ledger_total() == 0

    # Drain: room again, everything committed, every device replays and is confirmed.
    journal.room = True
    for _ in range(3):
        for d in devices:
            d.session(machine, NOW)
        commit()
    for d in devices:
        assert not d.kept, f"device {d.device_id} still keeps {sorted(d.kept)}"
    rows = [e.row for e in store.committed if e.row is not None]
    keys = [(r.device_id, r.device_txn) for r in rows]
    assert len(keys) == len(set(keys)), "a transaction was journaled twice"
    for d in devices:
        journaled = {txn for device_id, txn in keys if device_id == d.device_id}
        assert journaled == d.accepted, "every accepted txn is journaled, nothing else"
    # Each account equals its history; the reloaded ledger equals the live one.
    expected = {row[0]: row[4] for row in reference_accounts()}
    for r in rows:
        if r.amount_kopecks:
            expected[r.debit_account_id] -= r.amount_kopecks
            expected[r.credit_account_id] += r.amount_kopecks
    balances = machine.state.accounts.balance
    for account_id, want in expected.items():
        assert balances[account_id] == want, (account_id, balances[account_id], want)
    reloaded, _ = store.reload()
    assert reloaded.state.ledger_total() == 0
    assert list(reloaded.state.accounts.balance) == list(balances)
    assert all(balances[p] >= -OPENING_KOPECKS * 10 for p in range(1, PUPILS + 1))
    assert {r.kind for r in rows} <= set(JournalKind)
    # Refunds never exceed their purchase.
    refunded: dict[tuple, int] = {}
    for e in store.committed:
        if e.command is not None and e.row is not None and e.row.kind == JournalKind.REFUND:
            key = tuple(e.command.result["refund_of"])
            refunded[key] = refunded.get(key, 0) + e.row.amount_kopecks
    paid = {(r.device_id, r.device_txn): r.amount_kopecks for r in rows if r.kind == JournalKind.PURCHASE}
    for key, amount in refunded.items():
        assert amount <= paid[key], (key, amount, paid[key])
