"""Device authentication at HELLO: a MAC under the device's own 128-bit key.

MAC = HMAC-SHA256(key, b"ecard-hello-v1" | device id (u32 LE) | HELLO payload before the MAC)[:16].
The gateway also refuses a HELLO whose device clock is too far from its own,
and a nonce it has seen recently from that device (replayed HELLO).
Pure functions: the caller passes keys and time.
"""

from __future__ import annotations

import hmac
import struct
from hashlib import sha256

from .events import Hello
from .limits import DEVICE_KEY_BYTES, HELLO_MAC_BYTES

__all__ = ["DEVICE_KEY_BYTES", "hello_key", "hello_mac", "sign_hello", "verify_hello"]
_DOMAIN = b"ecard-hello-v1"
_DEVICE_ID = struct.Struct("<I")


def hello_mac(key: bytes, device_id: int, hello_without_mac: Hello) -> bytes:
    """The MAC a device with ``key`` puts in its HELLO (``mac`` field ignored)."""
    message = _DOMAIN + _DEVICE_ID.pack(device_id) + hello_without_mac.signed_part()
    return hmac.new(key, message, sha256).digest()[:HELLO_MAC_BYTES]


def sign_hello(key: bytes, device_id: int, hello: Hello) -> Hello:
    """A copy of ``hello`` carrying the right MAC."""
    import msgspec

    return msgspec.structs.replace(hello, mac=hello_mac(key, device_id, hello))


def verify_hello(key: bytes, device_id: int, hello: Hello) -> bool:
    return hmac.compare_digest(hello_mac(key, device_id, hello), hello.mac)


def hello_key(keys: tuple[bytes | None, ...], device_id: int, hello: Hello) -> bytes | None:
    """The first of ``keys`` (current, next: a rotation in progress) the HELLO verifies under."""
    for key in keys:
        if key is not None and verify_hello(key, device_id, hello):
            return key
    return None
