"""The secure channel's cost per frame: MAC sign + verify against the bare frame's encode + decode.

    .venv/bin/python -m loadtests.secure_channel [--frames 200000]

Measured in one run, one process, on the same frames (a CARD_PRESENTED request and its
DECISION): the baseline is what every frame costs without the channel (encode the request,
decode it at the gateway, encode the reply, decode it at the device, through two
``protocol.Connection`` objects); "secure" is the same session with the secure channel on.
The difference per request/reply pair, halved, is the MAC's cost per frame (sign at the sender
+ verify at the receiver). Also printed: the bare AES-CMAC constructions that were compared
(a keyed CMAC object copied per frame is what protocol.secure uses).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time

from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC

from protocol import CardPresented, Connection, Decision, Hello, HelloAck, Role
from protocol.auth import sign_hello

KEY = bytes(range(16))
DEVICE_ID = 1_000_001
IDENT = bytes.fromhex("04000000000007")


def _pair(secure: bool) -> tuple[Connection, Connection]:
    device = Connection(Role.DEVICE, DEVICE_ID, KEY if secure else None)
    gateway = Connection(Role.GATEWAY)
    gateway.receive_data(device.send(sign_hello(KEY, DEVICE_ID, Hello(1, "bench", 0, 1, os.urandom(16), bytes(16)))))
    gateway.next_event()
    ack = HelloAck(1, 0, 10_000, os.urandom(16))
    device.receive_data(gateway.accept_hello(ack, KEY) if secure else gateway.send(ack))
    device.next_event()
    return device, gateway


def session_us_per_pair(secure: bool, frames: int) -> float:
    device, gateway = _pair(secure)
    reply = Decision(1, 1, 0, 0, 0, 255, 100)
    requests = [CardPresented(n, 0, 1, 1, IDENT) for n in range(1, frames + 1)]
    started = time.perf_counter_ns()
    for request in requests:
        gateway.receive_data(device.send(request))
        gateway.next_event()
        device.receive_data(gateway.send(reply))
        device.next_event()
    return (time.perf_counter_ns() - started) / frames / 1000


def primitive_us(frames: int) -> dict[str, float]:
    data = bytes(16) + os.urandom(40)  # chain + a typical header and payload
    keyed = CMAC(AES(KEY))

    def cmac_new() -> bytes:
        c = CMAC(AES(KEY))
        c.update(data)
        return c.finalize()[:8]

    def cmac_copy() -> bytes:
        c = keyed.copy()
        c.update(data)
        return c.finalize()[:8]

    def hmac_sha256() -> bytes:
        return hmac.digest(KEY, data, "sha256")[:8]

    def blake2s() -> bytes:
        return hashlib.blake2s(data, key=KEY, digest_size=8).digest()

    out = {}
    for name, fn in (("aes_cmac_new_object", cmac_new), ("aes_cmac_keyed_copy", cmac_copy),
                     ("hmac_sha256", hmac_sha256), ("blake2s_keyed", blake2s)):
        started = time.perf_counter_ns()
        for _ in range(frames):
            fn()
        out[name] = round((time.perf_counter_ns() - started) / frames / 1000, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    args = parser.parse_args(argv)
    session_us_per_pair(True, 2_000)  # warm-up
    plain = min(session_us_per_pair(False, args.frames) for _ in range(3))
    secure = min(session_us_per_pair(True, args.frames) for _ in range(3))
    figures = {
        "frames": args.frames,
        "baseline_us_per_request_reply": round(plain, 3),
        "secure_us_per_request_reply": round(secure, 3),
        "mac_us_per_frame_sign_and_verify": round((secure - plain) / 2, 3),
        "one_mac_us": primitive_us(args.frames),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
