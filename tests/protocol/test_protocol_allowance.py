"""ALLOWANCE_SYNC and ALLOWANCE_PAGE (docs/protocol.md, section 4.16): codecs, every limit, the
state machine. The till's and the gateway's rules (section 10.14) are tested where they live
(the ledger, the simulator); here only what the protocol package decides.
"""

from __future__ import annotations

import struct

import pytest

from protocol import (
    ALLOWANCE_FLAGS_KNOWN,
    LIST_FLAG_MORE,
    LIST_FLAG_RESET,
    LIST_FLAG_SNAPSHOT,
    NEED_DATA,
    AllowanceEntry,
    AllowancePage,
    AllowanceSync,
    Connection,
    Decision,
    DenyReason,
    Event,
    Hello,
    HelloAck,
    ListOp,
    LocalProtocolError,
    MessageType,
    NakReason,
    PayloadError,
    RemoteProtocolError,
    Retransmit,
    Role,
    State,
    crc16,
    encode_frame,
)
from protocol import limits
from protocol.auth import sign_hello

TILL = 2_000_001
KEY = bytes(range(16))
T0 = 1_764_000_000_000
CARD = bytes.fromhex("04000000000021")
HEADER = struct.Struct("<BBBHIIB")
HEAD = struct.Struct("<QBIBB")  # version, flags, floor_kopecks, sales_per_card_max, count
VERSION = (7 << 32) | 1
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
ALLOW, BLOCK, REMOVE = int(ListOp.ALLOW), int(ListOp.BLOCK), int(ListOp.REMOVE)


def entry_bytes(op: int, delta: int, identifier: bytes) -> bytes:
    return struct.pack("<Bi", op, delta) + bytes([len(identifier)]) + identifier


def page_payload(entries: list[tuple[int, int, bytes]], *, flags: int = 0, floor: int = 30_000, per_card: int = 3,
                 count: int | None = None, version: int = VERSION) -> bytes:
    head = HEAD.pack(version, flags, floor, per_card, len(entries) if count is None else count)
    return head + b"".join(entry_bytes(*e) for e in entries)


def card(n: int, size: int = 7) -> bytes:
    return bytes([0x04]) + n.to_bytes(size - 1, "big")


def raw(seq: int, mtype: int, payload: bytes, *, reply: bool) -> bytes:
    body = HEADER.pack(0xEC, 1, 1 if reply else 0, len(payload), TILL, seq, mtype) + payload
    return body + struct.pack("<H", crc16(body))


def open_pair() -> tuple[Connection, Connection]:
    device, gateway = Connection(Role.DEVICE, TILL), Connection(Role.GATEWAY)
    hello = sign_hello(KEY, TILL, Hello(2, "till-1.0.7", 0, T0, bytes([1]) * 16, bytes(16)))
    gateway.receive_data(device.send(hello))
    assert gateway.next_event() == hello
    device.receive_data(gateway.send(HelloAck(T0, 0, 10_000)))
    assert isinstance(device.next_event(), HelloAck)
    return device, gateway


def exchange(device: Connection, gateway: Connection, request: Event, reply: Event) -> tuple[bytes, bytes]:
    data = device.send(request)
    gateway.receive_data(data)
    assert gateway.next_event() == request
    assert gateway.state is State.BUSY
    answer = gateway.send(reply)
    assert gateway.state is State.READY
    device.receive_data(answer)
    assert device.next_event() == reply
    assert device.next_event() is NEED_DATA
    assert device.state is State.READY
    assert HEADER.unpack_from(answer, 0)[5] == HEADER.unpack_from(data, 0)[5]
    return data, answer


def refuse(conn: Connection) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reason is NakReason.MALFORMED_PAYLOAD and not info.value.fatal
    return info.value


# --------------------------------------------------------------------------- codes


def test_codes_and_flags():
    assert (MessageType.ALLOWANCE_SYNC, MessageType.ALLOWANCE_PAGE) == (0x1A, 0x25)
    assert ALLOWANCE_FLAGS_KNOWN == LIST_FLAG_MORE | LIST_FLAG_RESET == 0x05
    assert not ALLOWANCE_FLAGS_KNOWN & LIST_FLAG_SNAPSHOT
    assert DenyReason.OFFLINE_LIMIT == 27
    assert limits.ALLOWANCE_PAGE_ENTRIES_MAX == 40


# --------------------------------------------------------------------------- ALLOWANCE_SYNC


@pytest.mark.parametrize("version", [0, 1, VERSION, (1 << 64) - 1])
def test_sync_round_trips(version):
    event = AllowanceSync(version)
    payload = event.encode_payload()
    assert payload == struct.pack("<Q", version)
    assert AllowanceSync.decode_payload(payload) == event


@pytest.mark.parametrize("version", [-1, 1 << 64])
def test_sync_version_is_a_u64(version):
    with pytest.raises(PayloadError):
        AllowanceSync(version)


@pytest.mark.parametrize("size", [0, 1, 7, 9, 16])
def test_sync_payload_is_exactly_8_bytes(size):
    with pytest.raises(PayloadError):
        AllowanceSync.decode_payload(bytes(size))


def test_malformed_sync_takes_the_seq():
    """A request's payload error takes its sequence number (section 7.1)."""
    device, gateway = open_pair()
    gateway.receive_data(raw(1, MessageType.ALLOWANCE_SYNC, bytes(7), reply=False))
    err = refuse(gateway)
    assert gateway.state is State.BUSY
    nak = gateway.send(err.nak())
    assert HEADER.unpack_from(nak, 0)[5] == 1 and gateway.state is State.READY
    gateway.receive_data(encode_frame(TILL, 2, AllowanceSync(0), reply=False))
    assert gateway.next_event() == AllowanceSync(0)


# --------------------------------------------------------------------------- ALLOWANCE_PAGE


def test_page_layout_matches_the_spec():
    """Offsets of section 4.16: version u64, flags u8, floor u32, sales per card u8, count u8, then
    entries of op u8, delta i32 (two's complement, little-endian), id_len u8, identifier."""
    page = AllowancePage(VERSION, LIST_FLAG_RESET | LIST_FLAG_MORE, 30_000, 3,
                         (AllowanceEntry(ALLOW, 30_000, CARD), AllowanceEntry(BLOCK, -20_000, card(0x24))))
    payload = page.encode_payload()
    assert payload[0:8] == VERSION.to_bytes(8, "little")
    assert payload[8] == 0x05
    assert payload[9:13] == (30_000).to_bytes(4, "little")
    assert payload[13] == 3 and payload[14] == 2
    assert payload[15] == ALLOW and payload[16:20] == (30_000).to_bytes(4, "little")
    assert payload[20] == 7 and payload[21:28] == CARD
    assert payload[28] == BLOCK and payload[29:33] == (-20_000).to_bytes(4, "little", signed=True)
    assert payload[33] == 7 and payload[34:41] == card(0x24)
    assert len(payload) == 15 + 2 * (6 + 7)
    assert AllowancePage.decode_payload(payload) == page


@pytest.mark.parametrize("flags", [0, LIST_FLAG_MORE, LIST_FLAG_RESET, LIST_FLAG_MORE | LIST_FLAG_RESET])
@pytest.mark.parametrize("op", [ALLOW, BLOCK, REMOVE])
def test_page_round_trips(flags, op):
    entries = (AllowanceEntry(op, -5, card(1, 4)), AllowanceEntry(op, 5, card(2, 16)))
    page = AllowancePage(VERSION, flags, 30_000, 3, entries)
    assert AllowancePage.decode_payload(page.encode_payload()) == page
    empty = AllowancePage(VERSION + 1, flags, 0, 0)
    assert empty.entries == () and len(empty.encode_payload()) == 15
    assert AllowancePage.decode_payload(empty.encode_payload()) == empty


def test_page_flags_only_more_and_reset():
    for flags in range(256):
        ok = flags & ~0x05 == 0
        payload = page_payload([(ALLOW, 1, CARD)], flags=flags)
        if ok:
            assert AllowancePage.decode_payload(payload).flags == flags
            AllowancePage(VERSION, flags, 0, 0)
        else:
            with pytest.raises(PayloadError):
                AllowancePage.decode_payload(payload)
            with pytest.raises(PayloadError):
                AllowancePage(VERSION, flags, 0, 0)


@pytest.mark.parametrize("op", [0, 4, 5, 255])
def test_page_op_must_be_defined(op):
    with pytest.raises(PayloadError):
        AllowanceEntry(op, 0, CARD)
    with pytest.raises(PayloadError):
        AllowancePage.decode_payload(page_payload([(op, 0, CARD)]))


@pytest.mark.parametrize("delta", [I32_MIN, -1, 0, 1, I32_MAX])
def test_delta_is_a_signed_32_bit_integer(delta):
    page = AllowancePage(VERSION, 0, 30_000, 3, (AllowanceEntry(ALLOW, delta, CARD),))
    assert AllowancePage.decode_payload(page.encode_payload()).entries[0].delta_kopecks == delta


@pytest.mark.parametrize("delta", [I32_MIN - 1, I32_MAX + 1, 1 << 40, True, 1.0])
def test_delta_out_of_i32_is_refused(delta):
    with pytest.raises(PayloadError):
        AllowanceEntry(ALLOW, delta, CARD)


@pytest.mark.parametrize("size, ok", [
    (0, False), (limits.IDENTIFIER_BYTES_MIN - 1, False), (limits.IDENTIFIER_BYTES_MIN, True),
    (7, True), (limits.IDENTIFIER_BYTES_MAX, True), (limits.IDENTIFIER_BYTES_MAX + 1, False),
])
def test_identifier_bytes_min_and_max(size, ok):
    identifier = bytes(range(size))
    payload = page_payload([(ALLOW, 100, identifier)])
    if ok:
        assert AllowancePage.decode_payload(payload).entries == (AllowanceEntry(ALLOW, 100, identifier),)
    else:
        with pytest.raises(PayloadError):
            AllowanceEntry(ALLOW, 100, identifier)
        with pytest.raises(PayloadError):
            AllowancePage.decode_payload(payload)


@pytest.mark.parametrize("floor, ok", [(0, True), (limits.AMOUNT_KOPECKS_MAX, True), (-1, False),
                                       (limits.AMOUNT_KOPECKS_MAX + 1, False)])
def test_floor_is_a_u32(floor, ok):
    if ok:
        page = AllowancePage(VERSION, 0, floor, 3)
        assert AllowancePage.decode_payload(page.encode_payload()).floor_kopecks == floor
    else:
        with pytest.raises(PayloadError):
            AllowancePage(VERSION, 0, floor, 3)


@pytest.mark.parametrize("per_card, ok", [(0, True), (255, True), (-1, False), (256, False)])
def test_sales_per_card_max_is_a_u8(per_card, ok):
    if ok:
        page = AllowancePage(VERSION, 0, 30_000, per_card)
        assert AllowancePage.decode_payload(page.encode_payload()).sales_per_card_max == per_card
    else:
        with pytest.raises(PayloadError):
            AllowancePage(VERSION, 0, 30_000, per_card)


@pytest.mark.parametrize("version", [-1, 1 << 64])
def test_page_version_is_a_u64(version):
    with pytest.raises(PayloadError):
        AllowancePage(version, 0, 0, 0)


def test_allowance_page_entries_max():
    fits = [(ALLOW, 100, card(n, limits.IDENTIFIER_BYTES_MAX)) for n in range(limits.ALLOWANCE_PAGE_ENTRIES_MAX)]
    page = AllowancePage.decode_payload(page_payload(fits))
    assert len(page.entries) == limits.ALLOWANCE_PAGE_ENTRIES_MAX
    # The largest page fits one frame with its MAC (section 11).
    payload = page.encode_payload()
    assert len(payload) == 15 + 40 * 22 == 895 <= limits.PAYLOAD_BYTES_MAX - limits.FRAME_MAC_BYTES
    device, gateway = open_pair()
    exchange(device, gateway, AllowanceSync(0), page)
    # One more is refused: by the constructor, and on the wire by the device (non-fatal).
    one_more = fits + [(ALLOW, 100, card(99))]
    with pytest.raises(PayloadError):
        AllowancePage(VERSION, 0, 30_000, 3, tuple(AllowanceEntry(*e) for e in one_more))
    with pytest.raises(PayloadError):
        AllowancePage.decode_payload(page_payload(one_more))
    device.send(AllowanceSync(VERSION))
    device.receive_data(raw(2, MessageType.ALLOWANCE_PAGE, page_payload(one_more), reply=True))
    refuse(device)
    assert device.state is State.BUSY


def test_truncated_and_trailing_bytes():
    payload = page_payload([(ALLOW, 30_000, CARD), (BLOCK, -20_000, card(0x24))])
    assert AllowancePage.decode_payload(payload)
    for cut in range(len(payload)):
        with pytest.raises(PayloadError):
            AllowancePage.decode_payload(payload[:cut])
    with pytest.raises(PayloadError):
        AllowancePage.decode_payload(payload + b"\x00")
    # The count disagrees with the entries that follow.
    for count in (0, 1, 3, 255):
        with pytest.raises(PayloadError):
            AllowancePage.decode_payload(page_payload([(ALLOW, 30_000, CARD), (BLOCK, 0, CARD)], count=count))
    # An id_len pointing past the end.
    with pytest.raises(PayloadError):
        AllowancePage.decode_payload(HEAD.pack(VERSION, 0, 0, 0, 1) + struct.pack("<Bi", ALLOW, 1) + b"\x10" + CARD)


def test_device_refuses_a_malformed_page_and_keeps_waiting():
    device, gateway = open_pair()
    request = device.send(AllowanceSync(0))
    gateway.receive_data(request)
    assert gateway.next_event() == AllowanceSync(0)
    bad = page_payload([(ALLOW, 1, CARD)], flags=LIST_FLAG_SNAPSHOT)
    device.receive_data(raw(1, MessageType.ALLOWANCE_PAGE, bad, reply=True))
    refuse(device)
    assert device.state is State.BUSY
    good = AllowancePage(VERSION, LIST_FLAG_RESET, 30_000, 3, (AllowanceEntry(ALLOW, 30_000, CARD),))
    device.receive_data(gateway.send(good))
    assert device.next_event() == good and device.state is State.READY


# --------------------------------------------------------------------------- the state machine


def test_a_till_syncs_until_a_page_without_more():
    device, gateway = open_pair()
    _, first = exchange(device, gateway, AllowanceSync(0),
                        AllowancePage(VERSION, LIST_FLAG_RESET | LIST_FLAG_MORE, 30_000, 3,
                                      (AllowanceEntry(ALLOW, 30_000, CARD),)))
    _, second = exchange(device, gateway, AllowanceSync(VERSION),
                         AllowancePage(VERSION + 1, 0, 30_000, 3, (AllowanceEntry(ALLOW, -30_000, CARD),)))
    assert HEADER.unpack_from(first, 0)[2] == HEADER.unpack_from(second, 0)[2] == 1  # REPLY
    assert [HEADER.unpack_from(f, 0)[5] for f in (first, second)] == [1, 2]


def test_sync_from_a_non_till_is_answered_with_a_decision():
    """WRONG_DEVICE_KIND (txn 0) is a DECISION, which the state machine allows as the reply."""
    device, gateway = open_pair()
    exchange(device, gateway, AllowanceSync(0),
             Decision(0, 0, int(DenyReason.WRONG_DEVICE_KIND), 0, 0, 255, int(DenyReason.WRONG_DEVICE_KIND)))


def test_retransmitted_sync_gets_the_same_page_byte_for_byte():
    device, gateway = open_pair()
    request = device.send(AllowanceSync(0))
    gateway.receive_data(request)
    assert gateway.next_event() == AllowanceSync(0)
    page = gateway.send(AllowancePage(VERSION, LIST_FLAG_RESET, 30_000, 3, (AllowanceEntry(ALLOW, 30_000, CARD),)))
    again = device.retransmit()
    assert again == request
    gateway.receive_data(again)
    result = gateway.next_event()
    assert isinstance(result, Retransmit) and result.reply == page
    assert gateway.next_event() is NEED_DATA  # the sync is not decided twice
    device.receive_data(page + result.reply)
    assert isinstance(device.next_event(), AllowancePage)
    assert device.next_event() is NEED_DATA  # the second copy is dropped


def test_page_is_a_reply_only():
    device, gateway = open_pair()
    page = AllowancePage(VERSION, 0, 30_000, 3)
    with pytest.raises(LocalProtocolError):
        gateway.send(page)  # not unsolicited
    with pytest.raises(LocalProtocolError):
        device.send(page)  # gateway -> till only
    with pytest.raises(LocalProtocolError):
        gateway.send(AllowanceSync(0))  # till -> gateway only
    # A device that sends one anyway: OUT_OF_STATE, and the frame took its seq.
    gateway.receive_data(encode_frame(TILL, 1, page, reply=False))
    with pytest.raises(RemoteProtocolError) as info:
        gateway.next_event()
    assert info.value.reason is NakReason.OUT_OF_STATE
    assert gateway.state is State.BUSY
