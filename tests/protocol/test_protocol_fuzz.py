"""Property tests: hostile bytes never break a Connection; codecs round-trip; the HELLO MAC binds.

Random bytes and mutated valid frames, cut into random chunks, go into a
gateway-role and a device-role Connection. The only allowed outcomes are an
event, NEED_DATA/CLOSED, a Retransmit (gateway), or a RemoteProtocolError;
anything else (IndexError, struct.error, a LocalProtocolError when answering as
the state table says...) fails the test. Example counts are moderate so the
whole protocol suite stays well under 30 s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import (
    CLOSED,
    EVENT_TYPES,
    NEED_DATA,
    AllowanceEntry,
    AllowancePage,
    AllowanceSync,
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
    encode_frame,
)
from protocol import limits
from protocol.auth import hello_mac, sign_hello, verify_hello

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "protocol_v1.json").read_text(encoding="utf-8"))
BY_NAME = {v["name"]: v for v in VECTORS["valid"]}
D = 1_000_001  # the turnstile of the vectors

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _frames(session: str, role: str) -> list[bytes]:
    names = next(s for s in VECTORS["sessions"] if s["name"] == session)["frames"]
    return [bytes.fromhex(BY_NAME[n]["hex"]) for n in names if BY_NAME[n]["role"] == role]


DEVICE_FRAMES = _frames("turnstile", "device->gateway")  # HELLO, then requests seq 1..4
GATEWAY_FRAMES = _frames("turnstile", "gateway->device")  # HELLO_ACK, replies, DURABLE_ACK


# --------------------------------------------------------------------------- drivers


def _answer(gateway: Connection, event: Event) -> bytes:
    """What a gateway sends for an event, as the state table allows."""
    if isinstance(event, Hello):
        return gateway.send(HelloAck(1, 0, 1000))
    if isinstance(event, Heartbeat):
        return gateway.send(Heartbeat(2))
    txn = getattr(event, "txn", 0)
    return gateway.send(Decision(txn, 1, 0, 0, 0, 255, 100))


def run_gateway(conn: Connection, chunks: list[bytes]) -> list[object]:
    """Feed chunks to a gateway; answer every event; NAK every non-fatal error. Returns the outcomes."""
    outcomes: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(len(chunk) + 2):
            try:
                result = conn.next_event()
            except RemoteProtocolError as err:
                assert isinstance(err.reason, NakReason)
                outcomes.append(err.reason)
                if err.fatal:
                    assert conn.state is State.ERROR
                    conn.send(err.nak())
                    try:
                        conn.next_event()
                    except RemoteProtocolError as again:
                        assert again is err
                    else:  # pragma: no cover
                        raise AssertionError("ERROR is not sticky")
                    return outcomes
                if conn.state is not State.CLOSED:
                    nak = conn.send(err.nak())
                    assert nak[2] == 1  # REPLY flag
                continue
            if result is NEED_DATA or result is CLOSED:
                break
            if isinstance(result, Retransmit):
                assert isinstance(result.reply, bytes) and result.reply[0] == 0xEC
                outcomes.append("retransmit")
                continue
            assert isinstance(result, Event), result
            outcomes.append(result)
            _answer(conn, result)
        else:  # pragma: no cover
            raise AssertionError("next_event did not come back to NEED_DATA")
    return outcomes


def run_device(conn: Connection, chunks: list[bytes]) -> list[object]:
    """Feed chunks to a device; after each reply it sends its next request."""
    outcomes: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(len(chunk) + 2):
            try:
                result = conn.next_event()
            except RemoteProtocolError as err:
                assert isinstance(err.reason, NakReason)
                outcomes.append(err.reason)
                if err.fatal:
                    assert conn.state is State.ERROR
                    return outcomes
                continue
            if result is NEED_DATA or result is CLOSED:
                break
            assert isinstance(result, Event) and not isinstance(result, Retransmit), result
            outcomes.append(result)
            if conn.state is State.READY:
                conn.send(Heartbeat(3))
        else:  # pragma: no cover
            raise AssertionError("next_event did not come back to NEED_DATA")
    return outcomes


def gateway_ready() -> Connection:
    conn = Connection(Role.GATEWAY)
    conn.receive_data(DEVICE_FRAMES[0])
    _answer(conn, conn.next_event())
    return conn


def device_busy() -> Connection:
    conn = Connection(Role.DEVICE, D)
    conn.send(Hello(1, "fw", 0, 0, bytes(16), bytes(16)))
    conn.receive_data(GATEWAY_FRAMES[0])
    conn.next_event()
    conn.send(CardPresented(1, 0, 1, 0, b"\x04" * 7))
    return conn


@st.composite
def chunked(draw, data: bytes) -> list[bytes]:
    """``data`` cut at random points."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@st.composite
def mutated(draw, frames: list[bytes]) -> bytes:
    """Valid frames, reordered/duplicated/dropped, then with a few byte-level mutations."""
    picked = draw(st.lists(st.sampled_from(frames), min_size=1, max_size=6))
    data = bytearray(b"".join(picked))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)


# --------------------------------------------------------------------------- hostile input


@SETTINGS
@given(st.data(), st.binary(max_size=300), st.booleans())
def test_random_bytes_to_a_gateway(data, blob, in_session):
    conn = gateway_ready() if in_session else Connection(Role.GATEWAY)
    run_gateway(conn, data.draw(chunked(blob)))


@SETTINGS
@given(st.data(), st.binary(max_size=300))
def test_random_bytes_to_a_device(data, blob):
    run_device(device_busy(), data.draw(chunked(blob)))


@SETTINGS
@given(st.data())
def test_random_bytes_after_a_start_byte(data):
    """Random bodies behind a plausible header prefix reach the deeper checks."""
    body = data.draw(st.binary(max_size=120))
    mtype = data.draw(st.sampled_from(sorted(EVENT_TYPES) + [0x00, 0x55, 0xFF]))
    seq = data.draw(st.sampled_from([0, 1, 2, 0xFFFFFFFF]))
    flags = data.draw(st.sampled_from([0, 1, 2, 4]))
    frame = struct.pack("<BBBHIIB", 0xEC, 1, flags, len(body), D, seq, mtype) + body
    crc = data.draw(st.sampled_from(["good", "bad"]))
    from protocol import crc16

    value = crc16(frame) ^ (0 if crc == "good" else 0x1234)
    frame += struct.pack("<H", value)
    run_gateway(gateway_ready(), data.draw(chunked(frame)))
    run_device(device_busy(), data.draw(chunked(frame)))


@SETTINGS
@given(st.data())
def test_mutated_device_frames_to_a_gateway(data):
    blob = data.draw(mutated(DEVICE_FRAMES))
    run_gateway(Connection(Role.GATEWAY), data.draw(chunked(blob)))


@SETTINGS
@given(st.data())
def test_mutated_gateway_frames_to_a_device(data):
    blob = data.draw(mutated(GATEWAY_FRAMES[1:]))
    run_device(device_busy(), data.draw(chunked(blob)))


@SETTINGS
@given(st.data())
def test_chunking_never_changes_the_outcome(data):
    """The same byte stream gives the same events and errors however it is cut."""
    blob = data.draw(mutated(DEVICE_FRAMES)) if data.draw(st.booleans()) else b"".join(DEVICE_FRAMES)
    whole = run_gateway(Connection(Role.GATEWAY), [blob])
    assert run_gateway(Connection(Role.GATEWAY), data.draw(chunked(blob))) == whole


def test_unmutated_session_gives_every_event():
    outcomes = run_gateway(Connection(Role.GATEWAY), [b"".join(DEVICE_FRAMES)])
    assert len(outcomes) == len(DEVICE_FRAMES) and all(isinstance(o, Event) for o in outcomes)


# --------------------------------------------------------------------------- codecs


identifiers = st.binary(min_size=limits.IDENTIFIER_BYTES_MIN, max_size=limits.IDENTIFIER_BYTES_MAX)
txns = st.integers(1, limits.TXN_MAX)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
txn_flags = st.sampled_from([0, 1])
directions = st.sampled_from([1, 2])
items = st.lists(
    st.builds(Item, st.integers(1, 2**32 - 1), st.integers(1, 0xFFFF), st.integers(0, 5_000)),
    min_size=1, max_size=limits.ITEMS_MAX,
)


@st.composite
def purchases(draw) -> Purchase:
    basket = tuple(draw(items))
    total = sum(i.quantity * i.unit_price_kopecks for i in basket)
    assume(0 < total <= limits.AMOUNT_KOPECKS_MAX)
    return Purchase(draw(txns), draw(txn_flags), draw(u64), total, draw(identifiers), basket)


@st.composite
def passages(draw) -> Passage:
    txn = draw(st.integers(2, limits.TXN_MAX))
    return Passage(txn, draw(txn_flags), draw(directions), draw(u64), draw(st.integers(1, txn - 1)), draw(identifiers))


@st.composite
def decisions(draw) -> Decision:
    outcome = draw(st.sampled_from([0, 1]))
    reason = 0 if outcome == 1 else draw(st.integers(1, 255))
    return Decision(draw(u64), outcome, reason, draw(st.sampled_from([0, 1])), draw(i64), draw(st.integers(0, 255)),
                    draw(st.integers(0, 0xFFFF)), tuple(draw(st.lists(i64, max_size=limits.DISPLAY_PARAMS_MAX))))


events = st.one_of(
    st.builds(Hello, st.sampled_from([1, 2, 3]), st.text(max_size=8), u64, u64,
              st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
    st.builds(HelloAck, u64, u64, st.integers(1, 2**32 - 1)),
    st.builds(Heartbeat, u64),
    st.builds(CardPresented, txns, txn_flags, directions, u64, identifiers),
    passages(),
    purchases(),
    st.builds(TopupCash, txns, txn_flags, u64, st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1), identifiers),
    st.builds(BalanceQuery, identifiers),
    decisions(),
    st.builds(DurableAck, u64),
    st.builds(Nak, st.integers(0, 255), st.text(max_size=16)),
    st.builds(AllowanceSync, u64),
    st.builds(
        AllowancePage, u64, st.sampled_from([0, 1, 4, 5]), u32, st.integers(0, 255),
        st.lists(st.builds(AllowanceEntry, st.sampled_from([1, 2, 3]), st.integers(-(2**31), 2**31 - 1), identifiers),
                 max_size=limits.ALLOWANCE_PAGE_ENTRIES_MAX).map(tuple),
    ),
)


@SETTINGS
@given(events, st.integers(1, 2**32 - 1), u32, st.booleans())
def test_every_valid_event_round_trips(event, device_id, seq, reply):
    payload = event.encode_payload()
    assert type(event).decode_payload(payload) == event
    frame = encode_frame(device_id, seq, event, reply=reply)
    assert len(frame) == limits.HEADER_BYTES + len(payload) + limits.CRC_BYTES <= limits.FRAME_BYTES_MAX


@SETTINGS
@given(st.sampled_from(sorted(EVENT_TYPES)), st.binary(max_size=200))
def test_decoders_accept_only_canonical_payloads(mtype, payload):
    """A decoder raises PayloadError, or returns an event that encodes to the same bytes."""
    cls = EVENT_TYPES[mtype]
    try:
        event = cls.decode_payload(payload)
    except PayloadError:
        return
    assert event.encode_payload() == payload


# --------------------------------------------------------------------------- HELLO MAC

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_vector_hello_mac_verifies():
    vector = BY_NAME["turnstile.hello"]
    hello = Hello.decode_payload(bytes.fromhex(vector["hex"])[14:-2])
    key = bytes.fromhex(VECTORS["device_keys"][str(vector["device_id"])])
    assert key == KEY
    assert verify_hello(KEY, D, hello)
    assert hello.mac == hello_mac(KEY, D, hello)


def test_any_flipped_bit_breaks_the_mac():
    hello = Hello.decode_payload(bytes.fromhex(BY_NAME["turnstile.hello"]["hex"])[14:-2])
    payload = hello.encode_payload()
    checked: set[int] = set()
    for bit in range(len(payload) * 8):
        changed = bytearray(payload)
        changed[bit // 8] ^= 1 << (bit % 8)
        try:
            other = Hello.decode_payload(bytes(changed))
        except PayloadError:
            continue  # no longer a HELLO at all (kind, length byte, UTF-8)
        assert not verify_hello(KEY, D, other), f"bit {bit} of the payload"
        checked.add(bit)
    fixed_fields = 2 + len(hello.firmware.encode())  # durable_txn, clock, nonce, MAC
    assert set(range(fixed_fields * 8, len(payload) * 8)) <= checked
    assert len(checked) > len(payload) * 8 - 40
    for bit in range(32):
        assert not verify_hello(KEY, D ^ (1 << bit), hello), f"bit {bit} of the device id"


@SETTINGS
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.integers(1, 2**32 - 1),
       st.binary(min_size=16, max_size=16), st.text(max_size=10))
def test_mac_binds_key_and_device(key, other_key, device_id, nonce, firmware):
    assume(key != other_key)
    hello = sign_hello(key, device_id, Hello(2, firmware, 5, 7, nonce, bytes(16)))
    assert verify_hello(key, device_id, hello)
    assert not verify_hello(other_key, device_id, hello)
    assert not verify_hello(key, device_id ^ 1, hello)
    assert len(hello.mac) == limits.HELLO_MAC_BYTES
