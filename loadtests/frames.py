"""Protocol v1 frames built and read fast, for load generators and the ceiling server.

The sans-IO ``protocol`` package builds a validated msgspec event per message;
a load generator sending tens of thousands of taps per second cannot afford
that, so requests are packed here with one ``struct`` call plus the CRC, and
replies are read from their fixed offsets. The HELLO (once per session) still
goes through ``protocol`` so its MAC is the real one.
"""

from __future__ import annotations

import os
import struct
import time
from binascii import crc_hqx

from protocol import Hello, MessageType, encode_frame
from protocol.auth import sign_hello
from protocol.codes import FLAG_MAC, DeviceKind
from protocol.connection import CRC_INIT
from protocol.limits import (
    CRC_BYTES,
    FRAME_MAC_BYTES,
    HEADER_BYTES,
    HELLO_CRYPTOGRAM_BYTES,
    HELLO_NONCE_BYTES,
    PROTOCOL_VERSION,
    START_BYTE,
)
from protocol.secure import FrameMac, cryptogram, session_keys

CRC = struct.Struct("<H")
HEADER = struct.Struct("<BBBHIIB")
IDENT_BYTES = 7  # demo service card UIDs: 0x04 + account id as 6 big-endian bytes

# Header + CARD_PRESENTED payload (txn, flags, direction, reader time, identifier) in one struct.
CARD = struct.Struct(f"<BBBHIIBQBBQB{IDENT_BYTES}s")
CARD_PAYLOAD = CARD.size - HEADER_BYTES
# Header + PASSAGE payload (txn, flags, direction, reader time, granted txn, identifier) in one struct.
PASSAGE = struct.Struct(f"<BBBHIIBQBBQQB{IDENT_BYTES}s")
PASSAGE_PAYLOAD = PASSAGE.size - HEADER_BYTES
# Header + PURCHASE payload head (txn, flags, reader time, total, identifier, item count); items follow.
PURCHASE_HEAD = struct.Struct(f"<BBBHIIBQBQIB{IDENT_BYTES}sB")
PURCHASE_FIXED = PURCHASE_HEAD.size - HEADER_BYTES
ITEM = struct.Struct("<IHI")
HEARTBEAT = struct.Struct("<BBBHIIBQ")

T_HELLO = int(MessageType.HELLO)
T_HELLO_ACK = int(MessageType.HELLO_ACK)
T_HEARTBEAT = int(MessageType.HEARTBEAT)
T_CARD = int(MessageType.CARD_PRESENTED)
T_PASSAGE = int(MessageType.PASSAGE)
T_PURCHASE = int(MessageType.PURCHASE)
T_DECISION = int(MessageType.DECISION)
T_DURABLE_ACK = int(MessageType.DURABLE_ACK)
T_NAK = int(MessageType.NAK)

# Offsets inside a reply frame.
OFF_LENGTH = 3
OFF_SEQ = 9
OFF_TYPE = 13
OFF_OUTCOME = HEADER_BYTES + 8  # DECISION: txn u64, then outcome u8, reason u8
OFF_REASON = HEADER_BYTES + 9
OFF_NAK_REASON = HEADER_BYTES
OFF_HELLO_ACK_DURABLE = HEADER_BYTES + 8  # HELLO_ACK: server time u64, then the device's durable watermark u64
U64 = struct.Struct("<Q")

# A session's first txn: this far above the durable watermark the gateway reports in HELLO_ACK.
# Above every txn an earlier run may have left undurable or denied (fewer than 2^24 per device),
# far below the 2^32 a txn may run ahead of what the gateway knows (protocol.limits.TXN_GAP_MAX).
SESSION_TXN_STEP = 1 << 24


def first_txn(durable_txn: int) -> int:
    """The txn a load-generating device starts a session at, from its HELLO_ACK's watermark."""
    return durable_txn + SESSION_TXN_STEP


def hello_ack_durable_txn(frame: bytes) -> int:
    return U64.unpack_from(frame, OFF_HELLO_ACK_DURABLE)[0]


def with_crc(body: bytes) -> bytes:
    return body + CRC.pack(crc_hqx(body, CRC_INIT))


def card_uid(account_id: int) -> bytes:
    """storage.demo_dataset.demo_card_uid, inlined."""
    return b"\x04" + account_id.to_bytes(6, "big")


def card_frame(device_id: int, seq: int, txn: int, direction: int, now_ms: int, ident: bytes) -> bytes:
    body = CARD.pack(
        START_BYTE, PROTOCOL_VERSION, 0, CARD_PAYLOAD, device_id, seq, T_CARD, txn, 0, direction, now_ms, IDENT_BYTES, ident
    )
    return body + CRC.pack(crc_hqx(body, CRC_INIT))


def passage_frame(device_id: int, seq: int, txn: int, direction: int, now_ms: int, granted_txn: int, ident: bytes) -> bytes:
    """The holder of the card granted at ``granted_txn`` went through (a live PASSAGE: flags 0)."""
    body = PASSAGE.pack(
        START_BYTE, PROTOCOL_VERSION, 0, PASSAGE_PAYLOAD, device_id, seq, T_PASSAGE, txn, 0, direction, now_ms,
        granted_txn, IDENT_BYTES, ident,
    )
    return body + CRC.pack(crc_hqx(body, CRC_INIT))


def basket_bytes(items: list[tuple[int, int, int]]) -> tuple[bytes, int, int]:
    """(packed items, item count, total kopecks) of a basket of (code, quantity, unit price)."""
    return b"".join(ITEM.pack(*i) for i in items), len(items), sum(q * p for _, q, p in items)


def purchase_frame(
    device_id: int, seq: int, txn: int, now_ms: int, ident: bytes, basket: tuple[bytes, int, int]
) -> bytes:
    items, count, total = basket
    body = (
        PURCHASE_HEAD.pack(
            START_BYTE,
            PROTOCOL_VERSION,
            0,
            PURCHASE_FIXED + len(items),
            device_id,
            seq,
            T_PURCHASE,
            txn,
            0,
            now_ms,
            total,
            IDENT_BYTES,
            ident,
            count,
        )
        + items
    )
    return body + CRC.pack(crc_hqx(body, CRC_INIT))


def heartbeat_frame(device_id: int, seq: int, now_ms: int) -> bytes:
    return with_crc(HEARTBEAT.pack(START_BYTE, PROTOCOL_VERSION, 0, 8, device_id, seq, T_HEARTBEAT, now_ms))


def hello_frame(device_id: int, kind: int, key: bytes, durable_txn: int = 0) -> bytes:
    """A signed HELLO (sequence 0) with a fresh nonce and the current clock."""
    hello = Hello(int(kind), "ecard-loadgen", durable_txn, time.time_ns() // 1_000_000, os.urandom(16), bytes(16))
    return encode_frame(device_id, 0, sign_hello(key, device_id, hello), reply=False)


def device_kind(device_id: int) -> int:
    """The demo dataset's device kind by id range (storage.demo_dataset)."""
    return int(DeviceKind.TILL) if device_id > 2_000_000 else int(DeviceKind.TURNSTILE)


def frame_end(buf: bytes | bytearray) -> int:
    """Length of the first complete frame in ``buf``, or 0 if it is not complete yet."""
    if len(buf) < HEADER_BYTES:
        return 0
    end = HEADER_BYTES + (buf[OFF_LENGTH] | buf[OFF_LENGTH + 1] << 8) + CRC_BYTES
    return end if len(buf) >= end else 0


def crc_ok(frame: bytes) -> bool:
    return CRC.unpack_from(frame, len(frame) - CRC_BYTES)[0] == crc_hqx(frame[:-CRC_BYTES], CRC_INIT)


# ---------------------------------------------------------------------------- secure channel

_MAC_END = FRAME_MAC_BYTES + CRC_BYTES
_NO_CRYPTOGRAM = bytes(HELLO_CRYPTOGRAM_BYTES)


class DeviceChannel:
    """A load-generating device's side of the secure channel (docs/protocol.md, section 5a),
    on raw frames: ``seal`` turns a bare frame into a MACed one, ``check`` verifies a
    gateway frame and moves the chain. The same chain rules as ``protocol.Connection``."""

    __slots__ = ("tx", "rx", "own", "own_prev", "reply", "peer")

    def __init__(self, tx_key: bytes, rx_key: bytes, hello_mac: bytes, proof: bytes) -> None:
        self.tx = FrameMac(tx_key)
        self.rx = FrameMac(rx_key)
        self.own = self.own_prev = hello_mac[:FRAME_MAC_BYTES]
        self.reply = self.peer = proof[:FRAME_MAC_BYTES]

    @classmethod
    def open(cls, key: bytes, device_id: int, hello: bytes, ack: bytes) -> "DeviceChannel | None":
        """After HELLO_ACK: the channel, or None when the cryptogram does not verify. The
        comparison servers of the benchmark (ceiling, baseline) speak the bare framing and send
        an all-zero cryptogram: ``plain_peer`` tells them apart; a real device refuses both."""
        rnd_a = hello[HEADER_BYTES + 2 + hello[HEADER_BYTES + 1] + 16 :][:HELLO_NONCE_BYTES]
        hello_mac = hello[-CRC_BYTES - 16 : -CRC_BYTES]
        proof = ack[-CRC_BYTES - HELLO_CRYPTOGRAM_BYTES : -CRC_BYTES]
        rnd_b = ack[-CRC_BYTES - 2 * HELLO_CRYPTOGRAM_BYTES : -CRC_BYTES - HELLO_CRYPTOGRAM_BYTES]
        keys = session_keys(key, device_id, rnd_a, rnd_b)
        if cryptogram(keys, ack[: -CRC_BYTES - HELLO_CRYPTOGRAM_BYTES]) != proof:
            return None
        return cls(keys.device_to_gateway, keys.gateway_to_device, hello_mac, proof)

    @staticmethod
    def plain_peer(ack: bytes) -> bool:
        return ack[-CRC_BYTES - HELLO_CRYPTOGRAM_BYTES : -CRC_BYTES] == _NO_CRYPTOGRAM

    def seal(self, frame: bytes) -> bytes:
        body = bytearray(frame[:-CRC_BYTES])
        body[2] |= FLAG_MAC
        length = (body[3] | body[4] << 8) + FRAME_MAC_BYTES
        body[3], body[4] = length & 0xFF, length >> 8
        mac = self.tx.sign(self.own + self.reply, bytes(body))
        self.own_prev, self.own = self.own, mac
        return with_crc(bytes(body) + mac)

    def check(self, frame: bytes) -> bool:
        """A gateway frame: reply (answers our frame in flight) or DURABLE_ACK."""
        reply = frame[OFF_TYPE] != T_DURABLE_ACK
        mac = frame[-_MAC_END:-CRC_BYTES]
        if not self.rx.verify(self.peer, frame[:-_MAC_END], mac):
            return False
        self.peer = mac
        if reply:
            self.reply = mac
        return True
