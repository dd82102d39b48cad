"""The state machine of protocol v1: everything that affects it lives in this table.

A key is (role, state, direction, event type); its value is the next state.
A pair missing from the table is a protocol error: OUT_OF_STATE when the peer
sent it, LocalProtocolError when we tried to send it. ERROR is sticky.

The gateway answers one request before it parses the next (OSDP's "one
command, one reply"), so BUSY is the short stretch between a decoded request
and its reply. DURABLE_ACK and MODE are the unsolicited messages: the gateway may
send them whenever a session is open.
"""

from __future__ import annotations

import enum

from .events import (
    AllowancePage,
    AllowanceSync,
    BalanceQuery,
    CardPresented,
    Decision,
    DurableAck,
    Event,
    FireAlarm,
    FireReset,
    Heartbeat,
    Hello,
    HelloAck,
    ListPage,
    ListSync,
    Mode,
    ModeApplied,
    Nak,
    Passage,
    Purchase,
    PupilInfo,
    PupilInfoQuery,
    TopupCash,
)


class Role(enum.Enum):
    GATEWAY = "gateway"
    DEVICE = "device"

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code on the hot path


class State(enum.Enum):
    IDLE = "idle"  # no session yet
    HELLO = "hello"  # HELLO in flight: received, not answered (gateway) / sent, not answered (device)
    READY = "ready"  # session open, no request in flight
    BUSY = "busy"  # a request in flight
    CLOSED = "closed"  # the session was refused; nothing more is exchanged
    ERROR = "error"  # framing was lost; sticky

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code on the hot path


class Direction(enum.Enum):
    SEND = "send"
    RECV = "recv"

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code on the hot path


REQUESTS: tuple[type[Event], ...] = (
    Heartbeat, CardPresented, Passage, Purchase, TopupCash, BalanceQuery, PupilInfoQuery, FireAlarm, FireReset,
    ModeApplied, ListSync, AllowanceSync,
)
REPLIES: tuple[type[Event], ...] = (Decision, Heartbeat, PupilInfo, ListPage, AllowancePage, Nak)

G, D = Role.GATEWAY, Role.DEVICE
S, R = Direction.SEND, Direction.RECV

TRANSITIONS: dict[tuple[Role, State, Direction, type[Event]], State] = {
    # -- gateway side
    (G, State.IDLE, R, Hello): State.HELLO,
    (G, State.READY, R, Hello): State.HELLO,  # explicit session restart by the device
    (G, State.HELLO, S, HelloAck): State.READY,
    (G, State.HELLO, S, Nak): State.CLOSED,  # unknown device, bad MAC: refused
    (G, State.IDLE, S, Nak): State.IDLE,  # a request before HELLO
    (G, State.READY, S, Nak): State.READY,  # a frame that did not take a sequence number
    (G, State.ERROR, S, Nak): State.ERROR,  # the last word before closing
    **{(G, State.READY, R, req): State.BUSY for req in REQUESTS},
    **{(G, State.BUSY, S, rep): State.READY for rep in REPLIES},
    (G, State.READY, S, DurableAck): State.READY,
    (G, State.BUSY, S, DurableAck): State.BUSY,
    (G, State.READY, S, Mode): State.READY,  # unsolicited, like DURABLE_ACK
    (G, State.BUSY, S, Mode): State.BUSY,
    # -- device side
    (D, State.IDLE, S, Hello): State.HELLO,
    (D, State.READY, S, Hello): State.HELLO,
    (D, State.BUSY, S, Hello): State.HELLO,  # give up on the request in flight and restart
    (D, State.HELLO, R, HelloAck): State.READY,
    (D, State.HELLO, R, Nak): State.CLOSED,
    (D, State.IDLE, R, Nak): State.CLOSED,  # refused on connect (connection limit)
    **{(D, State.READY, S, req): State.BUSY for req in REQUESTS},
    **{(D, State.BUSY, R, rep): State.READY for rep in REPLIES},
    (D, State.READY, R, DurableAck): State.READY,
    (D, State.BUSY, R, DurableAck): State.BUSY,
    (D, State.HELLO, R, DurableAck): State.HELLO,
    (D, State.READY, R, Mode): State.READY,
    (D, State.BUSY, R, Mode): State.BUSY,
}
