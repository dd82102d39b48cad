"""The state table against the Connection, for EVERY (role, state, direction, event type).

Each combination is tried on a Connection brought into the state the honest way
(by exchanging real frames). A combination in TRANSITIONS must succeed and land
in the table's state; every other one must fail: OUT_OF_STATE (a
RemoteProtocolError) when received, LocalProtocolError when sent. Where the
Connection refuses a frame before it consults the table (the sticky ERROR
state, the device's duplicate-reply rule), the test names that rule
explicitly; such a combination must still never produce an event.
"""

from __future__ import annotations

import itertools

import pytest

from protocol import (
    EVENT_TYPES,
    NEED_DATA,
    BalanceQuery,
    CardPresented,
    Connection,
    Decision,
    DurableAck,
    Event,
    Heartbeat,
    Hello,
    HelloAck,
    Item,
    LocalProtocolError,
    Nak,
    NakReason,
    Passage,
    Purchase,
    RemoteProtocolError,
    Role,
    State,
    TopupCash,
    encode_frame,
    PreorderLine,
    PupilInfo,
    PupilInfoQuery,
    FireAlarm,
    FireReset,
    Mode,
    ModeApplied,
    ListEntry,
    ListPage,
    ListSync,
    AllowanceEntry,
    AllowancePage,
    AllowanceSync,
)
from protocol.state import TRANSITIONS, Direction

D = 1_000_001
CARD = bytes.fromhex("04000000000007")

SAMPLES: dict[type[Event], Event] = {
    Hello: Hello(1, "fw", 0, 0, bytes(16), bytes(16)),
    HelloAck: HelloAck(1, 0, 1000),
    Heartbeat: Heartbeat(5),
    CardPresented: CardPresented(1, 0, 1, 0, CARD),
    Passage: Passage(2, 1, 1, 0, 1, CARD),
    Purchase: Purchase(3, 0, 0, 100, CARD, (Item(1, 1, 100),)),
    TopupCash: TopupCash(4, 0, 0, 100, 1, CARD),
    BalanceQuery: BalanceQuery(CARD),
    PupilInfoQuery: PupilInfoQuery(CARD),
    Decision: Decision(1, 1, 0, 0, 0, 255, 100),
    PupilInfo: PupilInfo(1, 0, "p", "n", (PreorderLine(2, 1),)),
    DurableAck: DurableAck(1),
    Nak: Nak(int(NakReason.OUT_OF_STATE), "x"),
    FireAlarm: FireAlarm(5, 0, 0),
    FireReset: FireReset(6, 0, 0),
    Mode: Mode(1, 5),
    ModeApplied: ModeApplied(1, 5),
    ListSync: ListSync(3, CARD),
    ListPage: ListPage(4, 3, (ListEntry(1, CARD),)),
    AllowanceSync: AllowanceSync(7 << 32 | 1),
    AllowancePage: AllowancePage(7 << 32 | 2, 5, 30_000, 3,
                                 (AllowanceEntry(1, 30_000, CARD), AllowanceEntry(2, -1, CARD))),
}
assert set(SAMPLES) == set(EVENT_TYPES.values())


def _feed(conn: Connection, event: Event, seq: int) -> object:
    conn.receive_data(encode_frame(D, seq, event, reply=conn.role is Role.DEVICE))
    return conn.next_event()


def connection_in(role: Role, state: State) -> Connection:
    """A Connection of ``role`` brought into ``state`` by real frames."""
    if role is Role.GATEWAY:
        conn = Connection(Role.GATEWAY)
        if state is State.ERROR:
            conn.receive_data(b"\x00")
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        elif state is not State.IDLE:
            assert isinstance(_feed(conn, SAMPLES[Hello], 0), Hello)
            if state is State.CLOSED:
                conn.send(Nak(int(NakReason.AUTH_FAILED)))
            elif state in (State.READY, State.BUSY):
                conn.send(SAMPLES[HelloAck])
                if state is State.BUSY:
                    assert _feed(conn, SAMPLES[Heartbeat], 1) == SAMPLES[Heartbeat]
    else:
        conn = Connection(Role.DEVICE, D)
        if state is State.ERROR:
            conn.receive_data(b"\x00")
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        elif state is not State.IDLE:
            conn.send(SAMPLES[Hello])
            if state is State.CLOSED:
                assert isinstance(_feed(conn, Nak(int(NakReason.AUTH_FAILED)), 0), Nak)
            elif state in (State.READY, State.BUSY):
                assert _feed(conn, SAMPLES[HelloAck], 0) == SAMPLES[HelloAck]
                if state is State.BUSY:
                    conn.send(SAMPLES[Heartbeat])
    assert conn.state is state
    return conn


def expected_seq(conn: Connection, cls: type[Event]) -> int:
    """The sequence number that passes the receiver's sequence checks, so the table decides."""
    if conn.role is Role.GATEWAY:
        if cls is Hello:
            return 0
        return {State.READY: 1, State.BUSY: 2}.get(conn.state, 1)
    # Device: replies carry the seq of the request in flight (0 while HELLO is in flight).
    return {State.BUSY: 1}.get(conn.state, 0)


COMBINATIONS = list(itertools.product(Role, State, Direction, EVENT_TYPES.values()))


def _id(combo: tuple) -> str:
    role, state, direction, cls = combo
    return f"{role.value}-{state.name}-{direction.value}-{cls.message_type.name}"


def test_the_product_is_complete():
    assert len(COMBINATIONS) == len(Role) * len(State) * len(Direction) * len(EVENT_TYPES) == 2 * 6 * 2 * 21
    assert set(TRANSITIONS) <= set(COMBINATIONS)


@pytest.mark.parametrize("combo", COMBINATIONS, ids=_id)
def test_every_combination(combo):
    role, state, direction, cls = combo
    conn = connection_in(role, state)
    event = SAMPLES[cls]
    target = TRANSITIONS.get((role, state, direction, cls))

    if direction is Direction.SEND:
        if target is not None:
            data = conn.send(event)
            assert conn.state is target
            assert data[13] == cls.message_type and data[2] == (1 if role is Role.GATEWAY else 0)
        else:
            with pytest.raises(LocalProtocolError):
                conn.send(event)
            assert conn.state is state
        return

    # RECV
    seq = expected_seq(conn, cls)
    conn.receive_data(encode_frame(D, seq, event, reply=role is Role.DEVICE))
    if target is not None:
        assert conn.next_event() == event
        assert conn.state is target
        return
    if state is State.ERROR:
        # ERROR is sticky: the original fatal error is raised again, whatever arrives.
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.fatal and info.value.reason is NakReason.BAD_START_BYTE
        assert conn.state is State.ERROR
        return
    if role is Role.DEVICE and state is State.READY and cls not in (Hello, DurableAck):
        # With nothing in flight, a frame carrying the last request's seq is a duplicate
        # reply and dropped; with any other seq it is BAD_SEQUENCE. Never an event.
        assert conn.next_event() is NEED_DATA
        assert conn.state is State.READY
        conn.receive_data(encode_frame(D, seq + 1, event, reply=True))
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.reason is NakReason.BAD_SEQUENCE and not info.value.fatal
        assert conn.state is State.READY
        return
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reason is NakReason.OUT_OF_STATE
    assert not info.value.fatal
    if role is Role.GATEWAY and state in (State.READY, State.BUSY) and cls is not Hello:
        # In an open session the frame took its sequence number: the NAK is its reply.
        assert conn.state is State.BUSY
        nak = conn.send(info.value.nak())
        assert int.from_bytes(nak[9:13], "little") == seq
        assert conn.state is State.READY
    else:
        assert conn.state is state


def test_no_state_is_left_out_of_the_table():
    states = {key[1] for key in TRANSITIONS} | set(TRANSITIONS.values())
    assert states == set(State)
    assert {key[3] for key in TRANSITIONS} == set(EVENT_TYPES.values())
