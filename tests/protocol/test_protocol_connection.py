"""Two sans-IO Connections wired back to back: sessions, chunking, sequence numbers, limits.

No sockets, no clocks: bytes produced by one side are fed to the other.
"""

from __future__ import annotations

import struct

import pytest

from protocol import (
    CLOSED,
    NEED_DATA,
    BalanceQuery,
    CardPresented,
    Connection,
    Decision,
    DenyReason,
    DurableAck,
    Event,
    Heartbeat,
    Hello,
    HelloAck,
    Item,
    LocalProtocolError,
    MessageType,
    Nak,
    NakReason,
    Passage,
    PayloadError,
    Purchase,
    RemoteProtocolError,
    Retransmit,
    Role,
    State,
    TopupCash,
    crc16,
    encode_frame,
    next_seq,
)
from protocol import limits
from protocol.auth import sign_hello

D = 1_000_001
KEY = bytes(range(16))
CARD = bytes.fromhex("04000000000007")
T0 = 1_764_000_000_000
HEADER = struct.Struct("<BBBHIIB")


def header(frame: bytes) -> tuple[int, ...]:
    return HEADER.unpack_from(frame, 0)


def seq_of(frame: bytes) -> int:
    return header(frame)[5]


def raw(device_id: int, seq: int, mtype: int, payload: bytes, *, flags: int = 0, version: int = 1,
        length: int | None = None) -> bytes:
    body = HEADER.pack(0xEC, version, flags, len(payload) if length is None else length, device_id, seq, mtype) + payload
    return body + struct.pack("<H", crc16(body))


def make_hello(nonce: int = 1, durable_txn: int = 0, firmware: str = "turnstile-2.4.1") -> Hello:
    return sign_hello(KEY, D, Hello(1, firmware, durable_txn, T0, bytes([nonce]) * 16, bytes(16)))


def card(txn: int, advice: bool = False) -> CardPresented:
    return CardPresented(txn, 1 if advice else 0, 1, T0 + txn, CARD)


def accept(txn: int) -> Decision:
    return Decision(txn, 1, 0, 0, 0, 255, 100)


def deliver(sender: Connection, receiver: Connection, event: Event) -> Event:
    receiver.receive_data(sender.send(event))
    got = receiver.next_event()
    assert got == event
    assert receiver.next_event() is NEED_DATA
    return got


def open_pair() -> tuple[Connection, Connection]:
    device, gateway = Connection(Role.DEVICE, D), Connection(Role.GATEWAY)
    deliver(device, gateway, make_hello())
    assert gateway.state is State.HELLO and device.state is State.HELLO
    deliver(gateway, device, HelloAck(T0, 0, 10_000))
    assert gateway.state is State.READY and device.state is State.READY
    assert gateway.device_id == D
    return device, gateway


def roundtrip(device: Connection, gateway: Connection, request: Event, reply: Event) -> tuple[bytes, bytes]:
    data = device.send(request)
    assert device.state is State.BUSY
    gateway.receive_data(data)
    assert gateway.next_event() == request
    assert gateway.state is State.BUSY
    answer = gateway.send(reply)
    assert gateway.state is State.READY
    device.receive_data(answer)
    assert device.next_event() == reply
    assert device.state is State.READY
    assert seq_of(answer) == seq_of(data)
    return data, answer


def refuse(conn: Connection, reason: NakReason, *, fatal: bool = False) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reason is reason, info.value
    assert info.value.fatal is fatal
    return info.value


# --------------------------------------------------------------------------- whole sessions


def test_turnstile_session():
    device, gateway = open_pair()
    req, rep = roundtrip(device, gateway, card(1), accept(1))
    assert (seq_of(req), header(req)[2], header(rep)[2]) == (1, 0, 1)  # REPLY flag only on gateway frames
    deliver(gateway, device, DurableAck(1))
    roundtrip(device, gateway, Passage(2, 1, 1, T0, 1, CARD), Decision(2, 1, 0, 0, 0, 255, 105))
    roundtrip(device, gateway, Heartbeat(T0), Heartbeat(T0 + 1))
    req, _ = roundtrip(device, gateway, card(3), Decision(3, 0, DenyReason.UNKNOWN_CARD, 0, 0, 255, 1))
    assert seq_of(req) == 4


def test_till_session():
    device, gateway = open_pair()
    items = (Item(1, 1, 9_500), Item(4, 2, 4_500))
    roundtrip(device, gateway, BalanceQuery(CARD), Decision(0, 1, 0, 0, 50_000, 255, 104, (50_000,)))
    roundtrip(device, gateway, Purchase(1, 0, T0, 18_500, CARD, items), Decision(1, 1, 0, 0, 31_500, 255, 102, (18_500, 31_500)))
    roundtrip(device, gateway, TopupCash(2, 0, T0, 10_000, 7, CARD), Decision(2, 1, 0, 0, 41_500, 255, 103, (10_000, 41_500)))
    roundtrip(device, gateway, Purchase(3, 0, T0, 18_500, CARD, items), Nak(NakReason.TXN_OUT_OF_ORDER, "late"))
    deliver(gateway, device, DurableAck(2))
    assert device.state is State.READY and gateway.state is State.READY


# --------------------------------------------------------------------------- chunking


def _device_stream() -> list[bytes]:
    """A device's frames for a session, built directly (the gateway answers in between)."""
    frames = [encode_frame(D, 0, make_hello(), reply=False)]
    frames += [encode_frame(D, seq, card(seq), reply=False) for seq in range(1, 6)]
    frames.append(encode_frame(D, 6, Heartbeat(T0), reply=False))
    return frames


def _serve(chunks: list[bytes]) -> tuple[list[Event], bytes]:
    """A gateway loop over ``chunks``: answer HELLO with HELLO_ACK, a request with its reply."""
    gateway = Connection(Role.GATEWAY)
    events: list[Event] = []
    out = bytearray()
    for chunk in chunks:
        gateway.receive_data(chunk)
        while (event := gateway.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Hello):
                out += gateway.send(HelloAck(T0, 0, 10_000))
            elif isinstance(event, Heartbeat):
                out += gateway.send(Heartbeat(T0))
            else:
                out += gateway.send(accept(event.txn))
    gateway.receive_data(b"")
    assert gateway.next_event() is CLOSED
    return events, bytes(out)


def test_same_bytes_whole_byte_by_byte_and_in_odd_chunks():
    data = b"".join(_device_stream())
    whole = _serve([data])
    assert len(whole[0]) == 7
    assert _serve([data[i : i + 1] for i in range(len(data))]) == whole
    for size in (2, 13, 14, 15, 41, 100):
        assert _serve([data[i : i + size] for i in range(0, len(data), size)]) == whole
    frames = _device_stream()
    assert _serve(frames) == whole


def test_trailing_data_waits_for_the_rest_of_the_next_frame():
    first, second = _device_stream()[:2]
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(first + second[:5])
    assert isinstance(gateway.next_event(), Hello)
    gateway.send(HelloAck(T0, 0, 10_000))
    assert gateway.next_event() is NEED_DATA
    assert gateway.buffered_bytes == 5
    gateway.receive_data(second[5:])
    assert gateway.next_event() == card(1)


def test_device_side_byte_by_byte():
    device, gateway = Connection(Role.DEVICE, D), Connection(Role.GATEWAY)
    gateway.receive_data(device.send(make_hello()))
    gateway.next_event()
    stream = gateway.send(HelloAck(T0, 0, 10_000)) + gateway.send(DurableAck(3))
    got: list[object] = []
    for byte in stream:
        device.receive_data(bytes([byte]))
        while (event := device.next_event()) is not NEED_DATA:
            got.append(event)
    assert got == [HelloAck(T0, 0, 10_000), DurableAck(3)]
    assert device.state is State.READY


def test_eof_in_the_middle_of_a_frame_is_closed_without_error():
    frame = _device_stream()[0]
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(frame[:20])
    assert gateway.next_event() is NEED_DATA
    gateway.receive_data(b"")
    assert gateway.next_event() is CLOSED


# --------------------------------------------------------------------------- retransmit


def test_retransmit_returns_identical_bytes_and_no_event():
    device, gateway = open_pair()
    request = device.send(card(1))
    gateway.receive_data(request)
    assert gateway.next_event() == card(1)
    reply = gateway.send(accept(1))
    # The device timed out and sends the very same bytes again.
    again = device.retransmit()
    assert again == request
    gateway.receive_data(again)
    result = gateway.next_event()
    assert isinstance(result, Retransmit)
    assert result.reply == reply  # byte for byte
    assert gateway.next_event() is NEED_DATA  # the request is not emitted again
    assert gateway.state is State.READY
    # The device gets two copies of the reply: the second is dropped.
    device.receive_data(reply + result.reply)
    assert device.next_event() == accept(1)
    assert device.next_event() is NEED_DATA
    assert device.state is State.READY
    # And the session goes on with seq 2.
    req2, _ = roundtrip(device, gateway, card(2), accept(2))
    assert seq_of(req2) == 2


def test_retransmit_of_a_refused_frame_gets_the_cached_nak():
    _, gateway = open_pair()
    bad = raw(D, 1, MessageType.BALANCE_QUERY, b"\x02ab")  # identifier too short: takes the seq
    gateway.receive_data(bad)
    err = refuse(gateway, NakReason.MALFORMED_PAYLOAD)
    assert gateway.state is State.BUSY
    nak = gateway.send(err.nak())
    assert seq_of(nak) == 1 and gateway.state is State.READY
    gateway.receive_data(bad)
    result = gateway.next_event()
    assert isinstance(result, Retransmit) and result.reply == nak


def test_stale_duplicate_reply_while_busy_is_dropped_as_bad_sequence():
    device, gateway = open_pair()
    _, reply1 = roundtrip(device, gateway, card(1), accept(1))
    device.send(card(2))
    device.receive_data(reply1)  # a late copy of the reply to seq 1
    refuse(device, NakReason.BAD_SEQUENCE)
    assert device.state is State.BUSY
    gateway.receive_data(device.retransmit())
    gateway.next_event()
    device.receive_data(gateway.send(accept(2)))
    assert device.next_event() == accept(2)


# --------------------------------------------------------------------------- sequence numbers


def test_sequence_reused_with_different_bytes():
    device, gateway = open_pair()
    request, reply = roundtrip(device, gateway, card(1), accept(1))
    gateway.receive_data(encode_frame(D, 1, card(2), reply=False))
    err = refuse(gateway, NakReason.SEQUENCE_REUSED)
    assert err.seq == 1 and gateway.state is State.READY
    assert seq_of(gateway.send(err.nak())) == 1
    # The retransmit cache survived, and seq 2 is still the next one.
    gateway.receive_data(request)
    assert gateway.next_event().reply == reply
    gateway.receive_data(encode_frame(D, 2, card(2), reply=False))
    assert gateway.next_event() == card(2)


def test_request_with_seq_zero_after_hello_is_sequence_reused():
    _, gateway = open_pair()
    gateway.receive_data(encode_frame(D, 0, card(1), reply=False))
    refuse(gateway, NakReason.SEQUENCE_REUSED)


def test_bad_sequence():
    device, gateway = open_pair()
    roundtrip(device, gateway, card(1), accept(1))
    for wrong in (3, 4, 0xFFFFFFFF):
        gateway.receive_data(encode_frame(D, wrong, card(2), reply=False))
        err = refuse(gateway, NakReason.BAD_SEQUENCE)
        assert err.seq == wrong
        assert seq_of(gateway.send(err.nak())) == wrong
    gateway.receive_data(encode_frame(D, 2, card(2), reply=False))
    assert gateway.next_event() == card(2)


def test_hello_with_nonzero_seq_is_bad_sequence():
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(encode_frame(D, 1, make_hello(), reply=False))
    refuse(gateway, NakReason.BAD_SEQUENCE)
    assert gateway.state is State.IDLE


def test_seq_wraps_from_seq_max_to_one():
    assert next_seq(limits.SEQ_MAX) == 1
    assert next_seq(limits.SEQ_MAX - 1) == limits.SEQ_MAX
    assert next_seq(0) == 1
    device, gateway = open_pair()
    # Fast-forward both ends to just below the top (4 billion requests are not practical).
    device._last_seq = gateway._last_seq = limits.SEQ_MAX - 1
    top, _ = roundtrip(device, gateway, card(1), accept(1))
    assert seq_of(top) == limits.SEQ_MAX
    after, reply = roundtrip(device, gateway, card(2), accept(2))
    assert seq_of(after) == 1 and seq_of(reply) == 1
    # 0 never follows SEQ_MAX: it belongs to HELLO.
    device2, gateway2 = open_pair()
    gateway2._last_seq = limits.SEQ_MAX
    gateway2.receive_data(encode_frame(D, 0, card(1), reply=False))
    refuse(gateway2, NakReason.BAD_SEQUENCE)


def test_session_restart_via_hello_from_ready():
    device, gateway = open_pair()
    old_request, _ = roundtrip(device, gateway, card(1), accept(1))
    roundtrip(device, gateway, card(2), accept(2))
    deliver(device, gateway, make_hello(nonce=2, durable_txn=1))
    assert gateway.state is State.HELLO
    deliver(gateway, device, HelloAck(T0, 2, 10_000))
    # Numbering restarted: the old seq-1 frame is no retransmit any more, it is a new request.
    gateway.receive_data(old_request)
    assert gateway.next_event() == card(1)
    gateway.send(Nak(NakReason.TXN_OUT_OF_ORDER, ""))
    device._last_seq = 1  # the device used seq 1 above without its Connection
    req, _ = roundtrip(device, gateway, card(3), accept(3))
    assert seq_of(req) == 2


def test_device_restarts_from_busy_and_ignores_the_late_reply():
    device, gateway = open_pair()
    gateway.receive_data(device.send(card(1)))
    gateway.next_event()
    late = gateway.send(accept(1))
    hello = device.send(make_hello(nonce=3))  # gives up on txn 1
    assert device.state is State.HELLO and seq_of(hello) == 0
    device.receive_data(late)
    refuse(device, NakReason.BAD_SEQUENCE)
    gateway.receive_data(hello)
    assert isinstance(gateway.next_event(), Hello)
    deliver(gateway, device, HelloAck(T0, 0, 10_000))
    req, _ = roundtrip(device, gateway, card(1), accept(1))
    assert seq_of(req) == 1


def test_device_mismatch_is_fatal_on_both_sides():
    _, gateway = open_pair()
    gateway.receive_data(encode_frame(D + 1, 1, card(1), reply=False))
    refuse(gateway, NakReason.DEVICE_MISMATCH, fatal=True)
    assert gateway.state is State.ERROR
    device, gateway = open_pair()
    device.send(card(1))
    device.receive_data(encode_frame(D + 1, 1, accept(1), reply=True))
    refuse(device, NakReason.DEVICE_MISMATCH, fatal=True)


# --------------------------------------------------------------------------- NAKs and the sequence number


def _spoil(frame: bytes, how: str) -> bytes:
    body = bytearray(frame[:-2])
    if how == "crc":
        return bytes(frame[:-1]) + bytes([frame[-1] ^ 0xFF])
    if how == "flags":
        body[2] = 0x02
    elif how == "type":
        body[13] = 0x55
    return bytes(body) + struct.pack("<H", crc16(bytes(body)))


@pytest.mark.parametrize(
    "how, reason",
    [("crc", NakReason.BAD_CRC), ("flags", NakReason.UNSUPPORTED_FLAGS), ("type", NakReason.UNKNOWN_MESSAGE)],
)
def test_nak_that_takes_no_seq_makes_the_device_reuse_it(how, reason):
    device, gateway = open_pair()
    roundtrip(device, gateway, card(1), accept(1))
    sent = device.send(card(2))
    gateway.receive_data(_spoil(sent, how))
    err = refuse(gateway, reason)
    nak = gateway.send(err.nak())
    assert seq_of(nak) == 2
    device.receive_data(nak)
    assert device.next_event() == Nak(int(reason), err.detail)
    assert device.state is State.READY
    # The next frame carries seq 2 again, and the gateway takes it.
    req, _ = roundtrip(device, gateway, card(2), accept(2))
    assert seq_of(req) == 2
    req, _ = roundtrip(device, gateway, card(3), accept(3))
    assert seq_of(req) == 3


def test_nak_that_takes_the_seq_makes_the_device_move_on():
    device, gateway = open_pair()
    roundtrip(device, gateway, card(5), accept(5))
    roundtrip(device, gateway, card(4), Nak(NakReason.TXN_OUT_OF_ORDER, "txn 4 after 5"))
    req, _ = roundtrip(device, gateway, card(6), accept(6))
    assert seq_of(req) == 3


def test_hello_refusal_carries_seq_zero_even_after_an_earlier_refusal():
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(encode_frame(D, 3, card(1), reply=False))  # a request before HELLO
    err = refuse(gateway, NakReason.OUT_OF_STATE)
    assert seq_of(gateway.send(err.nak())) == 3
    device = Connection(Role.DEVICE, D)
    deliver(device, gateway, make_hello())
    refusal = gateway.send(Nak(NakReason.AUTH_FAILED, "bad HELLO MAC"))
    assert seq_of(refusal) == 0 and gateway.state is State.CLOSED
    device.receive_data(refusal)
    assert device.next_event() == Nak(NakReason.AUTH_FAILED, "bad HELLO MAC")
    assert device.state is State.CLOSED


def test_hello_restart_refusal_after_a_rejected_frame_carries_seq_zero():
    device, gateway = open_pair()
    gateway.receive_data(_spoil(encode_frame(D, 7, card(1), reply=False), "crc"))
    gateway.send(refuse(gateway, NakReason.BAD_CRC).nak())
    deliver(device, gateway, make_hello(nonce=9))
    refusal = gateway.send(Nak(NakReason.AUTH_FAILED, "HELLO replayed"))
    assert seq_of(refusal) == 0
    device.receive_data(refusal)
    device.next_event()
    assert device.state is State.CLOSED


def test_gateway_in_hello_state_takes_no_request():
    """Frames after HELLO and before HELLO_ACK neither open the session nor take a seq."""
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(encode_frame(D, 0, make_hello(), reply=False) + encode_frame(D, 1, card(1), reply=False))
    assert isinstance(gateway.next_event(), Hello)
    refuse(gateway, NakReason.OUT_OF_STATE)
    assert gateway.state is State.HELLO
    with pytest.raises(LocalProtocolError):
        gateway.send(accept(1))
    gateway.send(HelloAck(T0, 0, 10_000))
    assert gateway.state is State.READY
    gateway.receive_data(encode_frame(D, 1, card(1), reply=False))
    assert gateway.next_event() == card(1)


def test_device_takes_server_busy_with_device_id_zero():
    gateway = Connection(Role.GATEWAY)
    busy = gateway.send(Nak(NakReason.SERVER_BUSY, "connection limit"))
    assert header(busy)[4:6] == (0, 0)  # device id 0, seq 0
    for send_hello_first in (True, False):
        device = Connection(Role.DEVICE, D)
        if send_hello_first:
            device.send(make_hello())
        device.receive_data(busy)
        assert device.next_event() == Nak(NakReason.SERVER_BUSY, "connection limit")
        assert device.state is State.CLOSED
    # Device id 0 is accepted on a NAK only.
    device = Connection(Role.DEVICE, D)
    device.send(make_hello())
    device.receive_data(encode_frame(0, 0, HelloAck(T0, 0, 1), reply=True))
    refuse(device, NakReason.DEVICE_MISMATCH, fatal=True)


# --------------------------------------------------------------------------- sticky ERROR


def test_error_state_is_sticky():
    _, gateway = open_pair()
    gateway.receive_data(b"\x00")
    err = refuse(gateway, NakReason.BAD_START_BYTE, fatal=True)
    assert gateway.state is State.ERROR and gateway.buffered_bytes == 0
    gateway.receive_data(encode_frame(D, 1, card(1), reply=False))
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            gateway.next_event()
        assert again.value is err
    nak = gateway.send(err.nak())
    assert nak[13] == MessageType.NAK and gateway.state is State.ERROR
    gateway.send(err.nak())  # the last word may be repeated
    for event in (accept(1), HelloAck(T0, 0, 1), DurableAck(1), Heartbeat(0)):
        with pytest.raises(LocalProtocolError):
            gateway.send(event)


# --------------------------------------------------------------------------- DURABLE_ACK


def test_durable_ack_in_every_allowed_state():
    device, gateway = open_pair()
    ack = gateway.send(DurableAck(1))  # gateway READY
    assert seq_of(ack) == 0 and gateway.state is State.READY
    device.receive_data(ack)
    assert device.next_event() == DurableAck(1) and device.state is State.READY  # device READY
    gateway.receive_data(device.send(card(2)))
    gateway.next_event()
    ack = gateway.send(DurableAck(2))  # gateway BUSY: stays BUSY
    assert seq_of(ack) == 0 and gateway.state is State.BUSY
    reply = gateway.send(accept(2))
    assert seq_of(reply) == 1  # the pending seq is untouched by the DURABLE_ACK
    device.receive_data(ack)
    assert device.next_event() == DurableAck(2) and device.state is State.BUSY  # device BUSY
    device.receive_data(reply)
    assert device.next_event() == accept(2)
    device.send(make_hello(nonce=5))
    device.receive_data(gateway.send(DurableAck(3)))  # crossing the restart HELLO
    assert device.next_event() == DurableAck(3) and device.state is State.HELLO  # device HELLO


def test_durable_ack_seq_is_ignored_by_the_device():
    device, _ = open_pair()
    device.send(card(1))
    device.receive_data(encode_frame(D, 77, DurableAck(1), reply=True))
    assert device.next_event() == DurableAck(1)
    device.receive_data(encode_frame(D, 1, accept(1), reply=True))
    assert device.next_event() == accept(1)


def test_durable_ack_outside_a_session():
    gateway = Connection(Role.GATEWAY)
    with pytest.raises(LocalProtocolError):
        gateway.send(DurableAck(1))  # IDLE
    gateway.receive_data(encode_frame(D, 0, make_hello(), reply=False))
    gateway.next_event()
    with pytest.raises(LocalProtocolError):
        gateway.send(DurableAck(1))  # HELLO
    device = Connection(Role.DEVICE, D)
    device.receive_data(encode_frame(D, 0, DurableAck(1), reply=True))
    refuse(device, NakReason.OUT_OF_STATE)  # IDLE


# --------------------------------------------------------------------------- sending out of state


@pytest.mark.parametrize(
    "role, event",
    [
        (Role.DEVICE, card(1)),  # no session yet
        (Role.DEVICE, accept(1)),
        (Role.GATEWAY, accept(1)),
        (Role.GATEWAY, HelloAck(T0, 0, 1)),
        (Role.GATEWAY, make_hello()),
        (Role.GATEWAY, Heartbeat(0)),
    ],
)
def test_local_protocol_error_for_sending_out_of_state(role, event):
    conn = Connection(role, D)
    with pytest.raises(LocalProtocolError):
        conn.send(event)
    assert conn.state is State.IDLE


def test_local_protocol_error_mid_session():
    device, gateway = open_pair()
    with pytest.raises(LocalProtocolError):
        gateway.send(accept(1))  # nothing to answer
    with pytest.raises(LocalProtocolError):
        device.retransmit()  # nothing in flight
    device.send(card(1))
    with pytest.raises(LocalProtocolError):
        device.send(card(2))  # one request in flight at a time
    with pytest.raises(LocalProtocolError):
        gateway.retransmit()


# --------------------------------------------------------------------------- limits (protocol/limits.py)


def test_frame_bytes_max_is_checked_at_the_header_before_the_body():
    _, gateway = open_pair()
    gateway.receive_data(HEADER.pack(0xEC, 1, 0, limits.PAYLOAD_BYTES_MAX, D, 1, 0x55))
    assert gateway.next_event() is NEED_DATA  # 1008 is allowed: wait for the body
    body = bytes(limits.PAYLOAD_BYTES_MAX)
    frame = HEADER.pack(0xEC, 1, 0, limits.PAYLOAD_BYTES_MAX, D, 1, 0x55) + body
    gateway.receive_data(body + struct.pack("<H", crc16(frame)))
    refuse(gateway, NakReason.UNKNOWN_MESSAGE)
    assert len(frame) + 2 == limits.FRAME_BYTES_MAX
    _, gateway = open_pair()
    gateway.receive_data(HEADER.pack(0xEC, 1, 0, limits.PAYLOAD_BYTES_MAX + 1, D, 1, MessageType.PURCHASE))
    err = refuse(gateway, NakReason.FRAME_TOO_LARGE, fatal=True)  # only 14 bytes were there
    assert err.seq == 1


def test_largest_legal_frame_fits():
    items = tuple(Item(n + 1, 0xFFFF, 1) for n in range(limits.ITEMS_MAX))
    purchase = Purchase(1, 0, T0, 0xFFFF * limits.ITEMS_MAX, bytes(limits.IDENTIFIER_BYTES_MAX), items)
    device, gateway = open_pair()
    data, _ = roundtrip(device, gateway, purchase, accept(1))
    assert len(data) == 695 <= limits.FRAME_BYTES_MAX


def _payload_rejected(conn: Connection, mtype: int, payload: bytes, seq: int = 1) -> None:
    conn.receive_data(raw(D, seq, mtype, payload, flags=1 if conn.role is Role.DEVICE else 0))
    err = refuse(conn, NakReason.MALFORMED_PAYLOAD)
    if conn.role is Role.GATEWAY:
        assert conn.state is State.BUSY  # a request's payload error takes the seq
        assert seq_of(conn.send(err.nak())) == seq


def _purchase_payload(identifier: bytes, items: list[tuple[int, int, int]], total: int | None = None) -> bytes:
    total = sum(q * p for _, q, p in items) if total is None else total
    return (
        struct.pack("<QBQI", 1, 0, T0, total) + bytes([len(identifier)]) + identifier + bytes([len(items)])
        + b"".join(struct.pack("<IHI", *i) for i in items)
    )


def test_items_max():
    ok = [(n + 1, 1, 100) for n in range(limits.ITEMS_MAX)]
    device, gateway = open_pair()
    roundtrip(device, gateway, Purchase.decode_payload(_purchase_payload(CARD, ok)), accept(1))
    with pytest.raises(PayloadError):
        Purchase(2, 0, T0, 100 * 65, CARD, tuple(Item(n + 1, 1, 100) for n in range(limits.ITEMS_MAX + 1)))
    _payload_rejected(gateway, MessageType.PURCHASE, _purchase_payload(CARD, ok + [(99, 1, 100)]), seq=2)
    _payload_rejected(gateway, MessageType.PURCHASE, _purchase_payload(CARD, []), seq=3)


@pytest.mark.parametrize("size, ok", [
    (limits.IDENTIFIER_BYTES_MIN - 1, False), (limits.IDENTIFIER_BYTES_MIN, True),
    (limits.IDENTIFIER_BYTES_MAX, True), (limits.IDENTIFIER_BYTES_MAX + 1, False), (0, False), (255, False),
])
def test_identifier_bytes_min_and_max(size, ok):
    identifier = bytes(range(size))
    payload = bytes([size]) + identifier
    _, gateway = open_pair()
    gateway.receive_data(raw(D, 1, MessageType.BALANCE_QUERY, payload))
    if ok:
        assert gateway.next_event() == BalanceQuery(identifier)
    else:
        refuse(gateway, NakReason.MALFORMED_PAYLOAD)
        with pytest.raises(PayloadError):
            BalanceQuery(identifier)


def test_firmware_bytes_max_counts_utf8_bytes():
    fits = "я" * (limits.FIRMWARE_BYTES_MAX // 2)  # 2 bytes a letter
    assert len(fits.encode()) == limits.FIRMWARE_BYTES_MAX
    gateway = Connection(Role.GATEWAY)
    deliver(Connection(Role.DEVICE, D), gateway, make_hello(firmware=fits))
    with pytest.raises(PayloadError):
        make_hello(firmware=fits + "x")
    long = (fits + "x").encode()
    payload = bytes([1, len(long)]) + long + bytes(48)
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(raw(D, 0, MessageType.HELLO, payload))
    refuse(gateway, NakReason.MALFORMED_PAYLOAD)
    assert gateway.state is State.IDLE


def test_nak_detail_bytes_max():
    fits = "x" * limits.NAK_DETAIL_BYTES_MAX
    device, gateway = open_pair()
    roundtrip(device, gateway, card(1), Nak(NakReason.SERVER_BUSY, fits))
    with pytest.raises(PayloadError):
        Nak(NakReason.SERVER_BUSY, fits + "x")
    device.send(card(2))
    _payload_rejected(device, MessageType.NAK, bytes([17, 65]) + b"x" * 65, seq=2)
    # A long error detail is cut to fit when it becomes a NAK.
    err = RemoteProtocolError(NakReason.BAD_CRC, "y" * 500, fatal=False, seq=1)
    assert len(err.nak().detail.encode()) <= limits.NAK_DETAIL_BYTES_MAX


def test_display_params_max():
    fits = Decision(1, 1, 0, 0, 0, 255, 102, (1, -2, 3, -(1 << 63)))
    assert len(fits.params) == limits.DISPLAY_PARAMS_MAX
    device, gateway = open_pair()
    roundtrip(device, gateway, card(1), fits)
    with pytest.raises(PayloadError):
        Decision(2, 1, 0, 0, 0, 255, 102, (1, 2, 3, 4, 5))
    device.send(card(2))
    payload = struct.pack("<QBBBqBHB", 2, 1, 0, 0, 0, 255, 102, 5) + bytes(40)
    _payload_rejected(device, MessageType.DECISION, payload, seq=2)


def test_receive_buffer_bytes_max():
    assert limits.RECEIVE_BUFFER_BYTES_MAX == limits.PENDING_FRAMES_MAX * limits.FRAME_BYTES_MAX
    big = raw(D, 1, 0x55, bytes(limits.PAYLOAD_BYTES_MAX))  # a full-size frame of an unknown type
    assert len(big) == limits.FRAME_BYTES_MAX
    # PENDING_FRAMES_MAX full frames at once are not a flood: each is refused on its own.
    _, gateway = open_pair()
    gateway.receive_data(big * limits.PENDING_FRAMES_MAX)
    for _ in range(limits.PENDING_FRAMES_MAX):
        refuse(gateway, NakReason.UNKNOWN_MESSAGE)
    assert gateway.next_event() is NEED_DATA
    # One byte more is.
    _, gateway = open_pair()
    gateway.receive_data(big * limits.PENDING_FRAMES_MAX + b"\xec")
    refuse(gateway, NakReason.BUFFER_OVERFLOW, fatal=True)
    assert gateway.buffered_bytes == 0
    # The device side has the same limit.
    device, _ = open_pair()
    device.receive_data(bytes(limits.RECEIVE_BUFFER_BYTES_MAX + 1))
    refuse(device, NakReason.BUFFER_OVERFLOW, fatal=True)


def test_seq_max():
    assert limits.SEQ_MAX == 0xFFFFFFFF  # the u32 header field
    frame = encode_frame(D, limits.SEQ_MAX, card(1), reply=False)
    assert seq_of(frame) == limits.SEQ_MAX
    with pytest.raises(struct.error):
        encode_frame(D, limits.SEQ_MAX + 1, card(1), reply=False)


def test_txn_max():
    assert CardPresented(limits.TXN_MAX, 0, 1, 0, CARD).txn == limits.TXN_MAX
    for bad in (0, limits.TXN_MAX + 1):
        with pytest.raises(PayloadError):
            CardPresented(bad, 0, 1, 0, CARD)
    if limits.TXN_MAX < 0xFFFFFFFFFFFFFFFF:  # representable on the wire, refused by the decoder
        _, gateway = open_pair()
        payload = struct.pack("<QBBQ", limits.TXN_MAX + 1, 0, 1, 0) + bytes([len(CARD)]) + CARD
        _payload_rejected(gateway, MessageType.CARD_PRESENTED, payload)


def test_amount_kopecks_max():
    assert TopupCash(1, 0, 0, limits.AMOUNT_KOPECKS_MAX, 1, CARD).amount_kopecks == limits.AMOUNT_KOPECKS_MAX
    with pytest.raises(PayloadError):
        TopupCash(1, 0, 0, limits.AMOUNT_KOPECKS_MAX + 1, 1, CARD)
    # A basket whose sum does not fit a u32 total is refused.
    items = (Item(1, 2, limits.AMOUNT_KOPECKS_MAX // 2 + 1),)
    with pytest.raises(PayloadError):
        Purchase(1, 0, 0, 2 * (limits.AMOUNT_KOPECKS_MAX // 2 + 1), CARD, items)


def test_hello_nonce_and_mac_bytes():
    for field in ("nonce", "mac"):
        for size in (limits.HELLO_NONCE_BYTES - 1, limits.HELLO_NONCE_BYTES + 1):
            kwargs = {"nonce": bytes(16), "mac": bytes(16), field: bytes(size)}
            with pytest.raises(PayloadError):
                Hello(1, "fw", 0, 0, **kwargs)
    assert len(make_hello().encode_payload()) == 2 + len("turnstile-2.4.1") + 16 + limits.HELLO_NONCE_BYTES + limits.HELLO_MAC_BYTES


# --------------------------------------------------------------------------- framing errors


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version_is_fatal(version):
    _, gateway = open_pair()
    gateway.receive_data(raw(D, 1, MessageType.HEARTBEAT, bytes(8), version=version))
    refuse(gateway, NakReason.UNSUPPORTED_VERSION, fatal=True)


def test_bad_start_byte_is_detected_on_the_first_byte():
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(b"G")
    refuse(gateway, NakReason.BAD_START_BYTE, fatal=True)
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(b"\xec")
    assert gateway.next_event() is NEED_DATA


def test_pipelined_frames_in_one_chunk_are_taken_one_by_one():
    _, gateway = open_pair()
    gateway.receive_data(b"".join(encode_frame(D, s, card(s), reply=False) for s in (1, 2, 3)))
    for s in (1, 2, 3):
        assert gateway.next_event() == card(s)
        assert seq_of(gateway.send(accept(s))) == s
    assert gateway.next_event() is NEED_DATA
