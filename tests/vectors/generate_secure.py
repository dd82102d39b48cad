#!/usr/bin/env python3
"""Generate tests/vectors/secure_channel_v1.json: the secure channel (docs/protocol.md, section 5a).

    python tests/vectors/generate_secure.py           # rewrite secure_channel_v1.json
    python tests/vectors/generate_secure.py --check   # exit 1 if the committed file differs

A published test key (00 01 02 .. 0f), fixed challenges and clocks: a whole session played by
two real ``Connection`` objects, with every intermediate value an independent implementation
needs (KDF inputs and outputs, the cryptogram's input, each frame's chain value and MAC), and a
refused frame (one altered byte: NAK MAC_INVALID) followed by the device's retry.
tests/protocol/test_secure_channel.py checks the file against this script and recomputes every
value from the spec's formulas with nothing but AES-CMAC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    CardPresented,
    Connection,
    Decision,
    DurableAck,
    Heartbeat,
    Hello,
    HelloAck,
    NakReason,
    RemoteProtocolError,
    Role,
)
from protocol.auth import sign_hello  # noqa: E402
from protocol.connection import crc16, frame_mac  # noqa: E402
from protocol.secure import cryptogram, kdf_input, session_keys  # noqa: E402

OUT = Path(__file__).with_name("secure_channel_v1.json")
KEY = bytes(range(16))  # the published test key 000102030405060708090a0b0c0d0e0f
DEVICE_ID = 1_000_001
T0 = 1_764_000_000_000
RND_A = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
RND_B = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
CARD = bytes.fromhex("04000000000007")


def render() -> dict[str, Any]:
    device = Connection(Role.DEVICE, DEVICE_ID, KEY)
    gateway = Connection(Role.GATEWAY)
    frames: list[dict[str, Any]] = []

    def record(name: str, role: str, data: bytes, chain: bytes | None, note: str) -> None:
        frames.append({
            "name": name,
            "role": role,
            "hex": data.hex(),
            "chain": None if chain is None else chain.hex(),
            "mac": None if chain is None else frame_mac(data).hex(),
            "note": note,
        })

    # chain values as the spec defines them, tracked here by hand (not read from the Connection)
    hello = sign_hello(KEY, DEVICE_ID, Hello(1, "turnstile-2.4.1", 0, T0, RND_A, bytes(16)))
    data = device.send(hello)
    record("hello", "device->gateway", data, None, "RND.A is the nonce; no MAC (flags 0x00)")
    gateway.receive_data(data)
    assert gateway.next_event() == hello
    data = gateway.accept_hello(HelloAck(T0 + 3, 0, 10_000, RND_B), KEY)
    record("hello_ack", "gateway->device", data, None, "RND.B and the cryptogram; no MAC (flags 0x01)")
    device.receive_data(data)
    ack = device.next_event()
    assert type(ack) is HelloAck
    proof = ack.cryptogram
    c_d, c_g, r_g = hello.mac[:8], proof[:8], proof[:8]

    def device_frame(name: str, event, note: str) -> bytes:
        nonlocal c_d
        out = device.send(event)
        record(name, "device->gateway", out, c_d + r_g, note)
        return out

    def gateway_frame(name: str, event, answered: bytes | None, note: str) -> bytes:
        nonlocal c_g, r_g
        out = gateway.send(event)
        record(name, "gateway->device", out, c_g, note)
        c_g = frame_mac(out)
        if answered is not None:
            r_g = c_g
        return out

    def through(out: bytes, receiver: Connection, expected) -> None:
        receiver.receive_data(out)
        assert receiver.next_event() == expected

    req = device_frame("heartbeat", Heartbeat(T0 + 10), "first MACed frame: proves the device key for RND.B")
    through(req, gateway, Heartbeat(T0 + 10))
    c_d = frame_mac(req)
    rep = gateway_frame("heartbeat_reply", Heartbeat(T0 + 11), frame_mac(req), "reply: chain = MAC of the gateway's previous frame")
    through(rep, device, Heartbeat(T0 + 11))

    card = CardPresented(1, 0, 1, T0 + 1000, CARD)
    req = device_frame("card_presented", card, "chain = MAC of our last frame || MAC of the last reply")
    through(req, gateway, card)
    c_d = frame_mac(req)
    decision = Decision(1, 1, 0, 0, 0, 255, 100)
    rep = gateway_frame("decision_accept", decision, frame_mac(req), "reply")
    through(rep, device, decision)
    rep = gateway_frame("durable_ack", DurableAck(1), None, "unsolicited: in the gateway chain like any gateway frame; not a reply (r_G stays)")
    through(rep, device, DurableAck(1))

    card2 = CardPresented(2, 0, 2, T0 + 2000, CARD)
    req = device_frame("card_presented_2", card2, "sent; one payload byte is altered on the way")
    altered = bytearray(req)
    altered[14 + 9] ^= 0x03  # direction OUT -> IN
    altered[-2:] = crc16(bytes(altered[:-2])).to_bytes(2, "little")
    record("card_presented_2_altered", "device->gateway", bytes(altered), None,
           "as received: CRC valid, MAC invalid")
    gateway.receive_data(bytes(altered))
    try:
        gateway.next_event()
        raise AssertionError("an altered frame was accepted")
    except RemoteProtocolError as err:
        assert err.reason is NakReason.MAC_INVALID and not err.fatal
        nak = err.nak()
    rep = gateway_frame("nak_mac_invalid", nak, frame_mac(bytes(altered)),
                        "NAK MAC_INVALID: a reply; the refused frame took no seq and moved no chain")
    through(rep, device, nak)
    req = device_frame("card_presented_2_again", card2,
                       "same seq, chain = MAC of the last frame that took its seq || MAC of the NAK")
    through(req, gateway, card2)
    c_d = frame_mac(req)
    decision2 = Decision(2, 1, 0, 0, 0, 255, 101)
    rep = gateway_frame("decision_accept_2", decision2, frame_mac(req), "reply")
    through(rep, device, decision2)

    keys = session_keys(KEY, DEVICE_ID, RND_A, RND_B)
    ack_frame = bytes.fromhex(frames[1]["hex"])
    signed = ack_frame[:-2 - 16]
    assert cryptogram(keys, signed) == proof
    return {
        "spec": "docs/protocol.md, section 5a",
        "generator": "tests/vectors/generate_secure.py",
        "device_id": DEVICE_ID,
        "device_key": KEY.hex(),
        "rnd_a": RND_A.hex(),
        "rnd_b": RND_B.hex(),
        "hello_mac": hello.mac.hex(),
        "kdf": [
            {"i": i, "input": kdf_input(i, DEVICE_ID, RND_A, RND_B).hex(), "key": key.hex(), "name": name}
            for i, key, name in (
                (1, keys.cryptogram, "S_C"),
                (2, keys.device_to_gateway, "S_DG"),
                (3, keys.gateway_to_device, "S_GD"),
            )
        ],
        "cryptogram_input": signed.hex(),
        "cryptogram": proof.hex(),
        "frames": frames,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(render(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in argv:
        return 0 if OUT.read_text(encoding="utf-8") == text else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
