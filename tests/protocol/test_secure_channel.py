"""The secure channel (docs/protocol.md, section 5a), sans-IO: handshake, MACs, chains, refusals.

Every refusal the issue lists has its test here (wrong key, replayed, reordered, altered,
foreign frame), plus the chain rules after a NAK, a DURABLE_ACK and a retransmit, and the
published vectors recomputed from the spec's formulas with nothing but AES-CMAC.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC

from protocol import (
    NEED_DATA,
    CardPresented,
    Connection,
    Decision,
    DurableAck,
    Heartbeat,
    Hello,
    HelloAck,
    LocalProtocolError,
    NakReason,
    RemoteProtocolError,
    Retransmit,
    Role,
    State,
    crc16,
    encode_frame,
)
from protocol.auth import sign_hello
from protocol.codes import FLAG_MAC, FLAG_REPLY
from protocol.connection import frame_mac
from protocol.limits import MAC_FAILURES_MAX

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests/vectors/secure_channel_v1.json").read_text(encoding="utf-8"))
KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
D = 1_000_001
T0 = 1_764_000_000_000
CARD = bytes.fromhex("04000000000007")


def hello(nonce: int = 1, key: bytes = KEY) -> Hello:
    return sign_hello(key, D, Hello(1, "t", 0, T0, bytes([nonce]) * 16, bytes(16)))


def open_secure(gateway_key: bytes = KEY, nonce: int = 1, rnd_b: bytes = b"\xbb" * 16) -> tuple[Connection, Connection]:
    device, gateway = Connection(Role.DEVICE, D, KEY), Connection(Role.GATEWAY)
    gateway.receive_data(device.send(hello(nonce)))
    assert type(gateway.next_event()) is Hello
    device.receive_data(gateway.accept_hello(HelloAck(T0, 0, 10_000, rnd_b), gateway_key))
    return device, gateway


def refuse(conn: Connection, reason: NakReason, *, fatal: bool = False) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reason is reason, info.value
    assert info.value.fatal is fatal
    return info.value


def exchange(device: Connection, gateway: Connection, request, reply) -> tuple[bytes, bytes]:
    req = device.send(request)
    gateway.receive_data(req)
    assert gateway.next_event() == request
    rep = gateway.send(reply)
    device.receive_data(rep)
    assert device.next_event() == reply
    return req, rep


def resign_crc(frame: bytes) -> bytes:
    return frame[:-2] + crc16(frame[:-2]).to_bytes(2, "little")


def test_handshake_then_every_frame_carries_a_mac():
    device, gateway = open_secure()
    ack = device.next_event()
    assert type(ack) is HelloAck and ack.rnd_b == b"\xbb" * 16 and ack.cryptogram != bytes(16)
    assert device.state is State.READY and gateway.state is State.READY
    req, rep = exchange(device, gateway, CardPresented(1, 0, 1, T0, CARD), Decision(1, 1, 0, 0, 0, 255, 100))
    assert req[2] == FLAG_MAC and rep[2] == FLAG_REPLY | FLAG_MAC
    assert int.from_bytes(req[3:5], "little") == len(CardPresented(1, 0, 1, T0, CARD).encode_payload()) + 8
    ack = gateway.send(DurableAck(1))
    assert ack[2] == FLAG_REPLY | FLAG_MAC
    device.receive_data(ack)
    assert device.next_event() == DurableAck(1)
    exchange(device, gateway, Heartbeat(T0), Heartbeat(T0 + 1))


def test_wrong_key_the_device_refuses_the_gateway_and_cannot_send():
    """A gateway without the device's key cannot make the cryptogram: the device stops."""
    device, _gateway = open_secure(gateway_key=OTHER_KEY)
    refuse(device, NakReason.AUTH_FAILED, fatal=True)
    assert device.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        device.send(Heartbeat(T0))


def test_wrong_key_the_gateway_refuses_the_device_first_frame():
    """A device whose HELLO was replayed by someone without its key cannot MAC its first frame."""
    device, gateway = open_secure()
    device.next_event()
    impostor = Connection(Role.DEVICE, D, OTHER_KEY)
    impostor._install(b"\x01" * 16, b"\x02" * 16, b"\x03" * 16)  # keys of its own: not the session's
    impostor.state = State.READY
    gateway.receive_data(impostor.send(Heartbeat(T0)))
    refuse(gateway, NakReason.MAC_INVALID)
    assert gateway.state is State.READY


def test_replayed_frame_is_refused():
    device, gateway = open_secure()
    device.next_event()
    first, _ = exchange(device, gateway, CardPresented(1, 0, 1, T0, CARD), Decision(1, 1, 0, 0, 0, 255, 100))
    exchange(device, gateway, CardPresented(2, 0, 1, T0, CARD), Decision(2, 1, 0, 0, 0, 255, 100))
    gateway.receive_data(first)
    err = refuse(gateway, NakReason.MAC_INVALID)
    assert gateway.state is State.READY
    nak = gateway.send(err.nak())
    assert nak[2] == FLAG_REPLY | FLAG_MAC and gateway.mac_failures == 1


def test_replayed_last_frame_gets_the_cached_reply_of_this_session_only():
    """The exact last request again is a retransmit: the cached reply, byte for byte, nothing decided."""
    device, gateway = open_secure()
    device.next_event()
    req = device.send(CardPresented(1, 0, 1, T0, CARD))
    gateway.receive_data(req)
    gateway.next_event()
    rep = gateway.send(Decision(1, 1, 0, 0, 0, 255, 100))
    gateway.receive_data(req)
    assert gateway.next_event().reply == rep
    # The same bytes on another session of the same device: other keys, refused.
    _, other = open_secure(nonce=2)
    other.receive_data(req)
    refuse(other, NakReason.MAC_INVALID)


def test_reordered_gateway_frames_are_refused():
    device, gateway = open_secure()
    device.next_event()
    one, two = gateway.send(DurableAck(1)), gateway.send(DurableAck(2))
    device.receive_data(two)
    refuse(device, NakReason.MAC_INVALID)
    device.receive_data(one)
    assert device.next_event() == DurableAck(1)
    device.receive_data(two)
    assert device.next_event() == DurableAck(2)


def test_dropped_gateway_frame_is_noticed():
    device, gateway = open_secure()
    device.next_event()
    gateway.send(DurableAck(1))  # never arrives
    device.receive_data(gateway.send(DurableAck(2)))
    refuse(device, NakReason.MAC_INVALID)


def _twin(gateway: Connection) -> Connection:
    """The gateway as it is now, to replay a different future into (a test-only copy)."""
    twin = copy.copy(gateway)
    twin._buffer = bytearray()
    return twin


def test_reordered_device_frames_are_refused():
    """Frame 3 arriving before frame 2 does not verify; frame 2 then does."""
    device, gateway = open_secure()
    device.next_event()
    exchange(device, gateway, Heartbeat(T0), Heartbeat(T0))
    before = _twin(gateway)
    second, _ = exchange(device, gateway, CardPresented(1, 0, 1, T0, CARD), Decision(1, 1, 0, 0, 0, 255, 100))
    third = device.send(CardPresented(2, 0, 1, T0, CARD))
    before.receive_data(third)
    refuse(before, NakReason.MAC_INVALID)
    before.receive_data(second)
    assert before.next_event() == CardPresented(1, 0, 1, T0, CARD)


@pytest.mark.parametrize("offset", [2, 9, 14, 20, -3])  # direction, seq, payload, payload, MAC
def test_altered_byte_is_refused(offset):
    device, gateway = open_secure()
    device.next_event()
    frame = bytearray(device.send(CardPresented(1, 0, 1, T0, CARD)))
    if offset == 2:
        offset = 14 + 9  # the direction byte
    frame[offset] ^= 0x01
    gateway.receive_data(resign_crc(bytes(frame)))
    with pytest.raises(RemoteProtocolError) as info:
        gateway.next_event()
    assert info.value.reason is NakReason.MAC_INVALID and not info.value.fatal
    assert gateway.state is State.READY


def test_altered_gateway_frame_is_refused_by_the_device():
    device, gateway = open_secure()
    device.next_event()
    device.send(CardPresented(1, 0, 1, T0, CARD))
    rep = bytearray(gateway_reply(gateway, device, Decision(1, 0, 6, 0, 100, 255, 6)))
    rep[14 + 8] = 1  # DENY -> ACCEPT
    rep[14 + 9] = 0
    device.receive_data(resign_crc(bytes(rep)))
    refuse(device, NakReason.MAC_INVALID)
    assert device.state is State.BUSY  # still waiting for the genuine reply


def gateway_reply(gateway: Connection, device: Connection, reply) -> bytes:
    gateway.receive_data(device._last_request)
    gateway.next_event()
    return gateway.send(reply)


def test_frame_without_mac_in_a_secure_session_is_refused():
    device, gateway = open_secure()
    device.next_event()
    gateway.receive_data(encode_frame(D, 1, Heartbeat(T0), reply=False))
    refuse(gateway, NakReason.UNSUPPORTED_FLAGS)
    device.receive_data(encode_frame(D, 0, DurableAck(5), reply=True))
    refuse(device, NakReason.UNSUPPORTED_FLAGS)


def test_after_a_mac_failure_the_device_retries_with_the_same_seq_and_a_new_chain():
    device, gateway = open_secure()
    device.next_event()
    frame = bytearray(device.send(CardPresented(1, 0, 1, T0, CARD)))
    frame[14 + 9] ^= 0x03
    gateway.receive_data(resign_crc(bytes(frame)))
    nak = gateway.send(refuse(gateway, NakReason.MAC_INVALID).nak())
    device.receive_data(nak)
    assert device.next_event().reason == NakReason.MAC_INVALID
    again = device.send(CardPresented(1, 0, 1, T0, CARD))
    assert again[9] == 1 and frame_mac(again) != frame_mac(bytes(frame))
    gateway.receive_data(again)
    assert gateway.next_event() == CardPresented(1, 0, 1, T0, CARD)
    device.receive_data(gateway.send(Decision(1, 1, 0, 0, 0, 255, 100)))
    assert device.next_event() == Decision(1, 1, 0, 0, 0, 255, 100)
    exchange(device, gateway, Heartbeat(T0), Heartbeat(T0))  # both chains agree afterwards


def test_a_nak_that_takes_no_seq_rolls_the_chain_back_too():
    device, gateway = open_secure()
    device.next_event()
    frame = bytearray(device.send(Heartbeat(T0)))
    frame[-1] ^= 0xFF  # CRC
    gateway.receive_data(bytes(frame))
    nak = gateway.send(refuse(gateway, NakReason.BAD_CRC).nak())
    device.receive_data(nak)
    assert device.next_event().reason == NakReason.BAD_CRC
    exchange(device, gateway, Heartbeat(T0), Heartbeat(T0))


def test_retransmit_keeps_both_chains():
    device, gateway = open_secure()
    device.next_event()
    req = device.send(Heartbeat(T0))
    gateway.receive_data(req)
    gateway.next_event()
    rep = gateway.send(Heartbeat(T0 + 1))
    gateway.receive_data(device.retransmit())
    again = gateway.next_event()
    assert type(again) is Retransmit and again.reply == rep
    device.receive_data(rep + again.reply)
    assert device.next_event() == Heartbeat(T0 + 1)
    assert device.next_event() is NEED_DATA  # the second copy is dropped unverified
    exchange(device, gateway, Heartbeat(T0 + 2), Heartbeat(T0 + 3))


def test_mac_failures_max_closes():
    device, gateway = open_secure()
    device.next_event()
    frame = bytearray(device.send(Heartbeat(T0)))
    frame[16] ^= 1
    bad = resign_crc(bytes(frame))
    for n in range(1, MAC_FAILURES_MAX + 1):
        gateway.receive_data(bad)
        err = refuse(gateway, NakReason.MAC_INVALID, fatal=n == MAC_FAILURES_MAX)
        gateway.send(err.nak())
    assert gateway.state is State.ERROR


def test_hello_restart_drops_the_old_keys_and_a_crossing_durable_ack():
    device, gateway = open_secure()
    device.next_event()
    crossing = gateway.send(DurableAck(1))
    gateway.receive_data(device.send(hello(2)))
    device.receive_data(crossing)
    assert device.next_event() is NEED_DATA  # a frame of the ended session: dropped, not an error
    assert type(gateway.next_event()) is Hello
    device.receive_data(gateway.accept_hello(HelloAck(T0, 0, 10_000, b"\xcc" * 16), KEY))
    assert type(device.next_event()) is HelloAck
    exchange(device, gateway, Heartbeat(T0), Heartbeat(T0))


def test_a_nak_to_a_hello_carries_no_mac():
    _, gateway = open_secure()
    gateway.receive_data(encode_frame(D, 3, hello(9), reply=False))  # HELLO with seq != 0
    nak = gateway.send(refuse(gateway, NakReason.BAD_SEQUENCE).nak())
    assert nak[2] == FLAG_REPLY


# --------------------------------------------------------------------------- vectors


def test_cmac_is_rfc_4493():
    c = CMAC(AES(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")))
    c.update(bytes.fromhex("6bc1bee22e409f96e93d7e117393172a"))
    assert c.finalize().hex() == "070a16b46b4d4144f79bdd9dd04a287c"


def _cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC(AES(key))
    c.update(data)
    return c.finalize()


def test_vectors_are_what_the_generator_renders():
    script = ROOT / "tests/vectors/generate_secure.py"
    assert subprocess.run([sys.executable, str(script), "--check"], cwd=ROOT).returncode == 0


def test_vectors_recomputed_from_the_spec_formulas():
    """Only the spec: KDF inputs, keys, cryptogram and every frame's MAC, from AES-CMAC alone."""
    v = VECTORS
    key = bytes.fromhex(v["device_key"])
    assert key == bytes(range(16))
    context = D.to_bytes(4, "little") + bytes.fromhex(v["rnd_a"]) + bytes.fromhex(v["rnd_b"])
    keys = {}
    for block in v["kdf"]:
        expected_input = bytes([block["i"]]) + b"ecard-session-v1" + b"\x00" + context + (384).to_bytes(2, "big")
        assert bytes.fromhex(block["input"]) == expected_input
        keys[block["name"]] = _cmac(key, expected_input)
        assert keys[block["name"]].hex() == block["key"]
    frames = {f["name"]: f for f in v["frames"]}
    ack = bytes.fromhex(frames["hello_ack"]["hex"])
    assert ack[14 + 20 : 14 + 36].hex() == v["rnd_b"]
    assert bytes.fromhex(v["cryptogram_input"]) == ack[:-18]
    assert _cmac(keys["S_C"], ack[:-18]).hex() == v["cryptogram"] == ack[-18:-2].hex()
    hello_frame = bytes.fromhex(frames["hello"]["hex"])
    assert hello_frame[-18:-2].hex() == v["hello_mac"]
    # chain values, by the rules of section 5a
    c_d = bytes.fromhex(v["hello_mac"])[:8]
    c_g = r_g = bytes.fromhex(v["cryptogram"])[:8]
    answered = b""
    for f in v["frames"][2:]:
        data = bytes.fromhex(f["hex"])
        assert crc16(data[:-2]) == int.from_bytes(data[-2:], "little")
        mac = data[-10:-2]
        if f["role"] == "device->gateway":
            if f["chain"] is None:  # the altered copy: as received, not as sent
                answered = mac
                continue
            chain = c_d + r_g
            assert _cmac(keys["S_DG"], chain + data[:-10])[:8] == mac, f["name"]
            answered = mac
            pending = mac
        else:
            unsolicited = data[13] == 0x21
            chain = c_g
            assert _cmac(keys["S_GD"], chain + data[:-10])[:8] == mac, f["name"]
            c_g = mac
            if not unsolicited:
                r_g = mac
                reason_not_taken = data[13] == 0x7F and data[14] in (4, 5, 6, 9, 10, 19)
                if not reason_not_taken:
                    c_d = pending
        assert bytes.fromhex(f["chain"]) == chain, f["name"]
        assert f["mac"] == mac.hex()
