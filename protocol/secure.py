"""The secure channel (docs/protocol.md, section 5a): session keys, cryptogram, frame MACs.

Modelled on OSDP's secure channel, with AES-128 (the ``cryptography`` package):

- HELLO carries the device's challenge RND.A (its ``nonce``) and its HMAC proof
  (``protocol.auth``); HELLO_ACK carries the gateway's challenge RND.B and a cryptogram.
- Three session keys come from the device key K by NIST SP 800-108 in counter mode with
  AES-CMAC as the PRF, 384 bits in one derivation (``session_keys``):
  ``K(i) = CMAC(K, [i]_8 || "ecard-session-v1" || 0x00 || device_id u32 LE || RND.A || RND.B || [384]_16 BE)``
  for i = 1, 2, 3: S_C (the cryptogram), S_DG (device -> gateway MACs), S_GD (gateway -> device MACs).
- cryptogram = CMAC(S_C, HELLO_ACK header || HELLO_ACK payload before the cryptogram), 16 bytes.
- Every frame after HELLO_ACK ends (before its CRC) with
  ``mac = CMAC(S_dir, chain || header || payload)[:8]`` (chain: 16 bytes device -> gateway,
  8 bytes gateway -> device); the chain values are
  kept by ``Connection`` and defined in the spec.

Pure functions and one small class; the caller (``Connection``) keeps the chain values.
A keyed CMAC object is made once a session and copied per frame: the key schedule is
paid once (loadtests/secure_channel.py measures sign + verify per frame).
"""

from __future__ import annotations

import hmac
import struct
from typing import Final

from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC

from .limits import DEVICE_KEY_BYTES, FRAME_MAC_BYTES, HELLO_CRYPTOGRAM_BYTES, HELLO_NONCE_BYTES, HELLO_RND_B_BYTES

KDF_LABEL: Final = b"ecard-session-v1"
_KDF_BITS: Final = 3 * 128  # S_C, S_DG, S_GD
_DEVICE_ID: Final = struct.Struct("<I")
ZERO_MAC: Final = bytes(FRAME_MAC_BYTES)


def cmac(key: bytes, data: bytes) -> bytes:
    """AES-128-CMAC (NIST SP 800-38B, RFC 4493) of ``data``: 16 bytes."""
    c = CMAC(AES(key))
    c.update(data)
    return c.finalize()


def kdf_input(i: int, device_id: int, rnd_a: bytes, rnd_b: bytes) -> bytes:
    """The PRF input of block ``i`` (1, 2, 3) of the session-key derivation."""
    return (
        bytes([i]) + KDF_LABEL + b"\x00" + _DEVICE_ID.pack(device_id) + rnd_a + rnd_b
        + _KDF_BITS.to_bytes(2, "big")
    )


class SessionKeys:
    """The three keys of one session."""

    __slots__ = ("cryptogram", "device_to_gateway", "gateway_to_device")

    def __init__(self, cryptogram: bytes, device_to_gateway: bytes, gateway_to_device: bytes) -> None:
        self.cryptogram = cryptogram
        self.device_to_gateway = device_to_gateway
        self.gateway_to_device = gateway_to_device


def session_keys(device_key: bytes, device_id: int, rnd_a: bytes, rnd_b: bytes) -> SessionKeys:
    assert len(device_key) == DEVICE_KEY_BYTES, "a device key is 16 bytes (AES-128)"
    assert len(rnd_a) == HELLO_NONCE_BYTES and len(rnd_b) == HELLO_RND_B_BYTES
    s_c, s_dg, s_gd = (cmac(device_key, kdf_input(i, device_id, rnd_a, rnd_b)) for i in (1, 2, 3))
    return SessionKeys(s_c, s_dg, s_gd)


def cryptogram(keys: SessionKeys, signed_part: bytes) -> bytes:
    """The gateway's cryptogram over the HELLO_ACK header and payload before it."""
    out = cmac(keys.cryptogram, signed_part)
    assert len(out) == HELLO_CRYPTOGRAM_BYTES
    return out


class FrameMac:
    """One direction's MAC key, keyed once: ``sign(chain, data)`` costs one CMAC copy."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = CMAC(AES(key))

    def sign(self, chain: bytes, data: bytes) -> bytes:
        # One update of the joined bytes: a call into the binding costs more than the copy.
        c = self._keyed.copy()
        c.update(chain + data)
        return c.finalize()[:FRAME_MAC_BYTES]

    def verify(self, chain: bytes, data: bytes, mac: bytes) -> bool:
        c = self._keyed.copy()
        c.update(chain + data)
        return hmac.compare_digest(c.finalize()[:FRAME_MAC_BYTES], mac)
