"""Property tests of the ledger in the pure state machine.

After any sequence of operations the balances sum to zero, and replaying any
operation with its idempotency key changes nothing (the gateway answers the
stored decision and applies nothing).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.rules import OK, Original, authorize_command, authorize_purchase, authorize_topup, commit
from ledger.codes import AccountKind, CommandKind, IdentifierStatus
from ledger.state import NO_LIMIT, LedgerState, DeviceState
from protocol import Item, Purchase, TopupCash

NOW_MS = 1_795_550_000_000
PUPILS = 6
TILL = DeviceState(2_000_001, 1, 2, b"k" * 16, 10, 0)


def fresh_cache() -> LedgerState:
    c = LedgerState()
    c.school_offset_ms = {1: 180 * 60_000}
    for pupil in range(1, PUPILS + 1):
        c.add_account((pupil, AccountKind.PUPIL, 1, 0, 20_000, NO_LIMIT))
        c.add_identifier(b"\x04" + pupil.to_bytes(6, "big"), pupil, 0)
        c.accounts.family[pupil] = (pupil + 1) // 2
    c.add_account((7, AccountKind.OPENING, 0, 0, -20_000 * PUPILS, NO_LIMIT))
    c.add_account((8, AccountKind.REVENUE, 1, 0, 0, NO_LIMIT))
    c.add_account((9, AccountKind.CLEARING, 0, 0, 0, NO_LIMIT))
    c.add_account((10, AccountKind.DRAWER, 1, 0, 0, NO_LIMIT))
    c.add_account((11, AccountKind.FREE_MEALS, 1, 0, 0, NO_LIMIT))
    c.add_account((12, AccountKind.CORRECTIONS, 0, 0, 0, NO_LIMIT))
    return c


pupil = st.integers(1, PUPILS)
amount = st.integers(1, 30_000)
operation = st.one_of(
    st.tuples(st.just("purchase"), pupil, amount),
    st.tuples(st.just("cash"), pupil, amount),
    st.tuples(st.just("bank_topup"), pupil, amount),
    st.tuples(st.just("bank_refund"), pupil, amount),
    st.tuples(st.just("transfer"), pupil, pupil, amount),
    st.tuples(st.just("correction"), pupil, st.integers(-30_000, 30_000)),
    st.tuples(st.just("refund"), st.integers(0, 50), st.one_of(st.none(), amount)),
)


class Machine:
    """The state machine with the gateway's idempotency: one decision per key."""

    def __init__(self) -> None:
        self.cache = fresh_cache()
        self.decided: dict[int, int] = {}  # key -> reason
        self.purchases: list[tuple[int, int]] = []  # (pupil, amount) of accepted purchases, by index
        self.refunded: dict[int, int] = {}

    def apply(self, key: int, op: tuple) -> int:
        if key in self.decided:
            return self.decided[key]  # a replay: the stored decision, nothing applied
        c = self.cache
        kind = op[0]
        original = None
        if kind == "purchase":
            p = Purchase(key, 0, 0, op[2], b"\x04" + op[1].to_bytes(6, "big"), (Item(1, 1, op[2]),))
            verdict = authorize_purchase(c, TILL, p, NOW_MS)
        elif kind == "cash":
            t = TopupCash(key, 0, 0, op[2], 1, b"\x04" + op[1].to_bytes(6, "big"))
            verdict = authorize_topup(c, TILL, t, NOW_MS, 1_500_000)
        elif kind == "refund":
            index, requested = op[1], op[2]
            if index < len(self.purchases):
                who, paid = self.purchases[index]
                original = Original(3, who, who, 8, paid, self.refunded.get(index, 0))
            verdict = authorize_command(c, CommandKind.refund, {"amount_kopecks": requested}, original, 10_000_000)
        elif kind == "transfer":
            payload = {"from_account_id": op[1], "to_account_id": op[2], "amount_kopecks": op[3]}
            verdict = authorize_command(c, CommandKind.transfer, payload, None, 10_000_000)
        else:
            payload = {"account_id": op[1], "amount_kopecks": op[2], "payment_id": "x", "reason": "r"}
            verdict = authorize_command(c, CommandKind[kind], payload, None, 10_000_000)
        if verdict.reason == OK:
            commit(c, verdict, NOW_MS)
            if kind == "purchase":
                self.purchases.append((op[1], op[2]))
            elif kind == "refund":
                self.refunded[op[1]] = self.refunded.get(op[1], 0) + verdict.amount_kopecks
        self.decided[key] = verdict.reason
        return verdict.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(operation, max_size=60), st.lists(st.integers(0, 59), max_size=30))
def test_ledger_sums_to_zero_and_replays_change_nothing(ops, replays):
    m = Machine()
    for key, op in enumerate(ops, 1):
        m.apply(key, op)
        assert m.cache.ledger_total() == 0
    balances = bytes(m.cache.accounts.balance)
    for index in replays:
        if index < len(ops):
            m.apply(index + 1, ops[index])
    assert bytes(m.cache.accounts.balance) == balances
    assert m.cache.ledger_total() == 0
    for index, paid in enumerate(m.purchases):
        assert m.refunded.get(index, 0) <= paid[1]  # never refunded beyond the purchase
    for p in range(1, PUPILS + 1):
        assert m.cache.accounts.balance[p] >= 0 or any(op[0] in ("bank_refund", "correction") for op in ops)
