"""Protocol v1 messages: immutable events that validate themselves, and their payload codecs.

Each event class knows its message type, how to encode its payload and how to
decode it. Construction validates every field, so an invalid event cannot
exist: decoding bad bytes raises ``PayloadError`` and the connection turns it
into a NAK with reason MALFORMED_PAYLOAD.

Fixed layouts use ``struct`` (little-endian); there is no padding anywhere.
"""

from __future__ import annotations

import struct
from itertools import starmap
from operator import attrgetter, mul
from typing import ClassVar

import msgspec

from .items import ITEM
from .codes import (
    DECISION_FLAGS_KNOWN,
    NO_ITEM_INDEX,
    TXN_FLAG_ADVICE,
    TXN_FLAGS_KNOWN,
    DenyReason,
    DeviceKind,
    Direction,
    MessageType,
    LIST_FLAGS_KNOWN,
    ALLOWANCE_FLAGS_KNOWN,
    ListOp,
    Outcome,
    TurnstileMode,
)
from .limits import (
    AMOUNT_KOPECKS_MAX,
    DISPLAY_PARAMS_MAX,
    FIRMWARE_BYTES_MAX,
    HELLO_CRYPTOGRAM_BYTES,
    HELLO_MAC_BYTES,
    HELLO_NONCE_BYTES,
    HELLO_RND_B_BYTES,
    IDENTIFIER_BYTES_MAX,
    IDENTIFIER_BYTES_MIN,
    CASHIER_NOTE_BYTES_MAX,
    ITEMS_MAX,
    LIST_PAGE_ENTRIES_MAX,
    ALLOWANCE_PAGE_ENTRIES_MAX,
    NAK_DETAIL_BYTES_MAX,
    PHOTO_REF_BYTES_MAX,
    PREORDER_LINES_MAX,
    TXN_MAX,
)


class PayloadError(ValueError):
    """The payload of a frame does not decode into a valid event."""


_U64 = 0xFFFFFFFFFFFFFFFF
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_DEVICE_KINDS = frozenset(int(k) for k in DeviceKind)
_DIRECTIONS = frozenset(int(d) for d in Direction)


# Hot-path validation: one combined test per event; only when it fails do the
# field-by-field checks run (``_explain``) to name what is wrong.
_TXN_FLAG_VALUES = frozenset(f for f in range(256) if f & ~TXN_FLAGS_KNOWN == 0)
_DECISION_FLAG_VALUES = frozenset(f for f in range(256) if f & ~DECISION_FLAGS_KNOWN == 0)
_ID_LENGTHS = frozenset(range(IDENTIFIER_BYTES_MIN, IDENTIFIER_BYTES_MAX + 1))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PayloadError(message)


def _check_identifier(identifier: bytes) -> None:
    _check(type(identifier) is bytes, "identifier must be bytes")
    _check(
        IDENTIFIER_BYTES_MIN <= len(identifier) <= IDENTIFIER_BYTES_MAX,
        f"identifier must be {IDENTIFIER_BYTES_MIN}..{IDENTIFIER_BYTES_MAX} bytes",
    )


def _check_txn(txn: int) -> None:
    _check(1 <= txn <= TXN_MAX, "txn must be 1..2^63-1")


def _check_u64(value: int, name: str) -> None:
    _check(0 <= value <= _U64, f"{name} must be a u64")


def _read_identifier(payload: bytes, offset: int) -> tuple[bytes, int]:
    _check(len(payload) > offset, "identifier length missing")
    n = payload[offset]
    end = offset + 1 + n
    _check(len(payload) >= end, "identifier truncated")
    return payload[offset + 1 : end], end


class Event(msgspec.Struct, frozen=True, gc=False):
    """Base of all protocol events."""

    message_type: ClassVar[MessageType]

    def encode_payload(self) -> bytes:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Event":  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- session


_HELLO_HEAD = struct.Struct("<BB")  # kind, firmware length
_HELLO_TAIL = struct.Struct(f"<QQ{HELLO_NONCE_BYTES}s{HELLO_MAC_BYTES}s")


class Hello(Event, frozen=True, gc=False):
    """Device -> gateway, sequence 0: opens (or restarts) a session."""

    message_type: ClassVar[MessageType] = MessageType.HELLO
    kind: int
    firmware: str
    durable_txn: int  # the highest DURABLE_ACK watermark the device has seen
    device_time_ms: int
    nonce: bytes
    mac: bytes

    def __post_init__(self) -> None:
        _check(self.kind in _DEVICE_KINDS, "unknown device kind")
        fw = self.firmware.encode("utf-8")
        _check(len(fw) <= FIRMWARE_BYTES_MAX, f"firmware longer than {FIRMWARE_BYTES_MAX} bytes")
        _check_u64(self.durable_txn, "durable_txn")
        _check_u64(self.device_time_ms, "device_time_ms")
        _check(type(self.nonce) is bytes and len(self.nonce) == HELLO_NONCE_BYTES, "nonce must be 16 bytes")
        _check(type(self.mac) is bytes and len(self.mac) == HELLO_MAC_BYTES, "mac must be 16 bytes")

    def signed_part(self) -> bytes:
        """The payload bytes the MAC covers: everything before the MAC."""
        return self.encode_payload()[:-HELLO_MAC_BYTES]

    def encode_payload(self) -> bytes:
        fw = self.firmware.encode("utf-8")
        return _HELLO_HEAD.pack(self.kind, len(fw)) + fw + _HELLO_TAIL.pack(
            self.durable_txn, self.device_time_ms, self.nonce, self.mac
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Hello":
        _check(len(payload) >= _HELLO_HEAD.size, "HELLO truncated")
        kind, fw_len = _HELLO_HEAD.unpack_from(payload, 0)
        fw_end = _HELLO_HEAD.size + fw_len
        _check(len(payload) == fw_end + _HELLO_TAIL.size, "HELLO length does not match its fields")
        try:
            firmware = payload[_HELLO_HEAD.size : fw_end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("firmware is not UTF-8") from exc
        durable_txn, device_time_ms, nonce, mac = _HELLO_TAIL.unpack_from(payload, fw_end)
        return cls(kind, firmware, durable_txn, device_time_ms, nonce, mac)


_HELLO_ACK = struct.Struct(f"<QQI{HELLO_RND_B_BYTES}s{HELLO_CRYPTOGRAM_BYTES}s")
_ZERO_RND_B = bytes(HELLO_RND_B_BYTES)
_ZERO_CRYPTOGRAM = bytes(HELLO_CRYPTOGRAM_BYTES)


class HelloAck(Event, frozen=True, gc=False):
    """Gateway -> device: the session is open.

    ``rnd_b`` is the gateway's challenge and ``cryptogram`` its proof that it holds the
    device key (section 5a); the connection fills both in (``Connection.accept_hello``).
    """

    message_type: ClassVar[MessageType] = MessageType.HELLO_ACK
    server_time_ms: int
    durable_txn: int  # the gateway's durable watermark for this device
    heartbeat_interval_ms: int
    rnd_b: bytes = _ZERO_RND_B
    cryptogram: bytes = _ZERO_CRYPTOGRAM

    def __post_init__(self) -> None:
        _check_u64(self.server_time_ms, "server_time_ms")
        _check_u64(self.durable_txn, "durable_txn")
        _check(0 < self.heartbeat_interval_ms <= 0xFFFFFFFF, "heartbeat_interval_ms must be a positive u32")
        _check(type(self.rnd_b) is bytes and len(self.rnd_b) == HELLO_RND_B_BYTES, "rnd_b must be 16 bytes")
        _check(
            type(self.cryptogram) is bytes and len(self.cryptogram) == HELLO_CRYPTOGRAM_BYTES,
            "cryptogram must be 16 bytes",
        )

    def encode_payload(self) -> bytes:
        return _HELLO_ACK.pack(
            self.server_time_ms, self.durable_txn, self.heartbeat_interval_ms, self.rnd_b, self.cryptogram
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "HelloAck":
        _check(len(payload) == _HELLO_ACK.size, f"HELLO_ACK must be {_HELLO_ACK.size} bytes")
        return cls(*_HELLO_ACK.unpack(payload))


_HEARTBEAT = struct.Struct("<Q")


class Heartbeat(Event, frozen=True, gc=False):
    """Either way: keeps the session alive; the gateway answers with its own clock."""

    message_type: ClassVar[MessageType] = MessageType.HEARTBEAT
    time_ms: int

    def __post_init__(self) -> None:
        _check_u64(self.time_ms, "time_ms")

    def encode_payload(self) -> bytes:
        return _HEARTBEAT.pack(self.time_ms)

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Heartbeat":
        _check(len(payload) == _HEARTBEAT.size, "HEARTBEAT must be 8 bytes")
        return cls(_HEARTBEAT.unpack(payload)[0])


# --------------------------------------------------------------------------- transactions


_CARD = struct.Struct("<QBBQ")  # txn, flags, direction, reader_time_ms


def _check_txn_flags(flags: int) -> None:
    _check(0 <= flags <= 0xFF and flags & ~TXN_FLAGS_KNOWN == 0, "unknown transaction flags")


class CardPresented(Event, frozen=True, gc=False):
    """Turnstile -> gateway: a card was presented; may the holder pass?"""

    message_type: ClassVar[MessageType] = MessageType.CARD_PRESENTED
    txn: int
    flags: int
    direction: int
    reader_time_ms: int
    identifier: bytes

    def __post_init__(self) -> None:
        if not (
            0 < self.txn <= TXN_MAX
            and self.flags in _TXN_FLAG_VALUES
            and self.direction in _DIRECTIONS
            and 0 <= self.reader_time_ms <= _U64
            and type(self.identifier) is bytes
            and len(self.identifier) in _ID_LENGTHS
        ):
            self._explain()
            raise PayloadError(f"invalid {type(self).__name__}")

    def _explain(self) -> None:
        _check_txn(self.txn)
        _check_txn_flags(self.flags)
        _check(self.direction in _DIRECTIONS, "direction must be 1 (in) or 2 (out)")
        _check_u64(self.reader_time_ms, "reader_time_ms")
        _check_identifier(self.identifier)

    @property
    def advice(self) -> bool:
        return bool(self.flags & TXN_FLAG_ADVICE)

    def encode_payload(self) -> bytes:
        ident = self.identifier
        return _CARD.pack(self.txn, self.flags, self.direction, self.reader_time_ms) + bytes((len(ident),)) + ident

    @classmethod
    def decode_payload(cls, payload: bytes) -> "CardPresented":
        size = len(payload)
        _check(size >= _CARD.size + 1, "CARD_PRESENTED truncated")
        txn, flags, direction, reader_time_ms = _CARD.unpack_from(payload, 0)
        end = _CARD.size + 1 + payload[_CARD.size]  # _read_identifier, inline
        if end != size:
            _check(size >= end, "identifier truncated")
            raise PayloadError("trailing bytes after CARD_PRESENTED")
        return cls(txn, flags, direction, reader_time_ms, payload[_CARD.size + 1 : end])


_PASSAGE = struct.Struct("<QBBQQ")  # txn, flags, direction, reader_time_ms, granted_txn


class Passage(Event, frozen=True, gc=False):
    """Turnstile -> gateway: the holder of a granted card actually went through."""

    message_type: ClassVar[MessageType] = MessageType.PASSAGE
    txn: int
    flags: int
    direction: int
    reader_time_ms: int
    granted_txn: int
    identifier: bytes

    def __post_init__(self) -> None:
        if not (
            0 < self.granted_txn < self.txn <= TXN_MAX
            and self.flags in _TXN_FLAG_VALUES
            and self.direction in _DIRECTIONS
            and 0 <= self.reader_time_ms <= _U64
            and type(self.identifier) is bytes
            and len(self.identifier) in _ID_LENGTHS
        ):
            self._explain()
            raise PayloadError(f"invalid {type(self).__name__}")

    def _explain(self) -> None:
        _check_txn(self.txn)
        _check_txn_flags(self.flags)
        _check(self.direction in _DIRECTIONS, "direction must be 1 (in) or 2 (out)")
        _check_u64(self.reader_time_ms, "reader_time_ms")
        _check_txn(self.granted_txn)
        _check(self.granted_txn < self.txn, "granted_txn must precede txn")
        _check_identifier(self.identifier)

    @property
    def advice(self) -> bool:
        return True  # the passage has happened; it is never declined

    def encode_payload(self) -> bytes:
        ident = self.identifier
        return (
            _PASSAGE.pack(self.txn, self.flags, self.direction, self.reader_time_ms, self.granted_txn)
            + bytes((len(ident),))
            + ident
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Passage":
        _check(len(payload) >= _PASSAGE.size + 1, "PASSAGE truncated")
        txn, flags, direction, reader_time_ms, granted_txn = _PASSAGE.unpack_from(payload, 0)
        ident, end = _read_identifier(payload, _PASSAGE.size)
        _check(end == len(payload), "trailing bytes after PASSAGE")
        return cls(txn, flags, direction, reader_time_ms, granted_txn, ident)


_ITEM = ITEM  # the item layout is the item codec's (protocol.items)


class Item(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One line of a purchase."""

    product_code: int
    quantity: int
    unit_price_kopecks: int

    def __post_init__(self) -> None:
        if not (
            0 < self.product_code <= 0xFFFFFFFF
            and 0 < self.quantity <= 0xFFFF
            and 0 <= self.unit_price_kopecks <= AMOUNT_KOPECKS_MAX
        ):
            self._explain()
            raise PayloadError(f"invalid {type(self).__name__}")

    def _explain(self) -> None:
        _check(0 < self.product_code <= 0xFFFFFFFF, "product_code must be a positive u32")
        _check(0 < self.quantity <= 0xFFFF, "quantity must be 1..65535")
        _check(0 <= self.unit_price_kopecks <= AMOUNT_KOPECKS_MAX, "unit_price_kopecks must be a u32")


_PURCHASE = struct.Struct("<QBQI")  # txn, flags, reader_time_ms, total_kopecks
# The basket's total without a Python frame per check (C-level map over the lines).
_QUANTITY = attrgetter("quantity")
_UNIT_PRICE = attrgetter("unit_price_kopecks")


class Purchase(Event, frozen=True, gc=False):
    """Till -> gateway: charge this basket to the card's account (all or nothing)."""

    message_type: ClassVar[MessageType] = MessageType.PURCHASE
    txn: int
    flags: int
    reader_time_ms: int
    total_kopecks: int
    identifier: bytes
    items: tuple[Item, ...]

    def __post_init__(self) -> None:
        items = self.items
        if not (
            0 < self.txn <= TXN_MAX
            and self.flags in _TXN_FLAG_VALUES
            and 0 <= self.reader_time_ms <= _U64
            and type(self.identifier) is bytes
            and len(self.identifier) in _ID_LENGTHS
            and 1 <= len(items) <= ITEMS_MAX
            and 0 < self.total_kopecks <= AMOUNT_KOPECKS_MAX
            and sum(map(mul, map(_QUANTITY, items), map(_UNIT_PRICE, items))) == self.total_kopecks
        ):
            self._explain()
            raise PayloadError(f"invalid {type(self).__name__}")

    def _explain(self) -> None:
        _check_txn(self.txn)
        _check_txn_flags(self.flags)
        _check_u64(self.reader_time_ms, "reader_time_ms")
        _check_identifier(self.identifier)
        _check(1 <= len(self.items) <= ITEMS_MAX, f"a purchase has 1..{ITEMS_MAX} items")
        total = 0
        for item in self.items:
            total += item.quantity * item.unit_price_kopecks
        _check(total == self.total_kopecks, "total_kopecks is not the sum of quantity * unit price")
        _check(0 < total <= AMOUNT_KOPECKS_MAX, "total_kopecks must be a positive u32")

    @property
    def advice(self) -> bool:
        return bool(self.flags & TXN_FLAG_ADVICE)

    def encode_payload(self) -> bytes:
        ident = self.identifier
        parts = [
            _PURCHASE.pack(self.txn, self.flags, self.reader_time_ms, self.total_kopecks),
            bytes((len(ident),)),
            ident,
            bytes((len(self.items),)),
        ]
        pack = _ITEM.pack
        parts.extend(pack(i.product_code, i.quantity, i.unit_price_kopecks) for i in self.items)
        return b"".join(parts)

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Purchase":
        _check(len(payload) >= _PURCHASE.size + 1, "PURCHASE truncated")
        txn, flags, reader_time_ms, total = _PURCHASE.unpack_from(payload, 0)
        ident, offset = _read_identifier(payload, _PURCHASE.size)
        _check(len(payload) > offset, "item count missing")
        count = payload[offset]
        offset += 1
        _check(len(payload) == offset + count * _ITEM.size, "PURCHASE length does not match its item count")
        items = tuple(starmap(Item, _ITEM.iter_unpack(payload[offset:])))
        return cls(txn, flags, reader_time_ms, total, ident, items)


_TOPUP = struct.Struct("<QBQII")  # txn, flags, reader_time_ms, amount_kopecks, cashier_id


class TopupCash(Event, frozen=True, gc=False):
    """Till -> gateway: the cashier took cash; credit it to the card's account."""

    message_type: ClassVar[MessageType] = MessageType.TOPUP_CASH
    txn: int
    flags: int
    reader_time_ms: int
    amount_kopecks: int
    cashier_id: int
    identifier: bytes

    def __post_init__(self) -> None:
        if not (
            0 < self.txn <= TXN_MAX
            and self.flags in _TXN_FLAG_VALUES
            and 0 <= self.reader_time_ms <= _U64
            and 0 < self.amount_kopecks <= AMOUNT_KOPECKS_MAX
            and 0 < self.cashier_id <= 0xFFFFFFFF
            and type(self.identifier) is bytes
            and len(self.identifier) in _ID_LENGTHS
        ):
            self._explain()
            raise PayloadError(f"invalid {type(self).__name__}")

    def _explain(self) -> None:
        _check_txn(self.txn)
        _check_txn_flags(self.flags)
        _check_u64(self.reader_time_ms, "reader_time_ms")
        _check(0 < self.amount_kopecks <= AMOUNT_KOPECKS_MAX, "amount_kopecks must be a positive u32")
        _check(0 < self.cashier_id <= 0xFFFFFFFF, "cashier_id must be a positive u32")
        _check_identifier(self.identifier)

    @property
    def advice(self) -> bool:
        return bool(self.flags & TXN_FLAG_ADVICE)

    def encode_payload(self) -> bytes:
        ident = self.identifier
        return (
            _TOPUP.pack(self.txn, self.flags, self.reader_time_ms, self.amount_kopecks, self.cashier_id)
            + bytes((len(ident),))
            + ident
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "TopupCash":
        _check(len(payload) >= _TOPUP.size + 1, "TOPUP_CASH truncated")
        txn, flags, reader_time_ms, amount, cashier = _TOPUP.unpack_from(payload, 0)
        ident, end = _read_identifier(payload, _TOPUP.size)
        _check(end == len(payload), "trailing bytes after TOPUP_CASH")
        return cls(txn, flags, reader_time_ms, amount, cashier, ident)


class _CardQuery(Event, frozen=True, gc=False):
    """A read-only question about the card presented: its payload is the identifier alone."""

    identifier: bytes

    def __post_init__(self) -> None:
        _check_identifier(self.identifier)

    def encode_payload(self) -> bytes:
        return bytes((len(self.identifier),)) + self.identifier

    @classmethod
    def decode_payload(cls, payload: bytes) -> "_CardQuery":
        ident, end = _read_identifier(payload, 0)
        _check(end == len(payload), f"trailing bytes after {cls.message_type.name}")
        return cls(ident)


class BalanceQuery(_CardQuery, frozen=True, gc=False):
    """Till -> gateway: what is the balance behind this card? Changes nothing."""

    message_type: ClassVar[MessageType] = MessageType.BALANCE_QUERY


class PupilInfoQuery(_CardQuery, frozen=True, gc=False):
    """Till -> gateway: who is this? (photo against card sharing, cashier note, today's pre-order)."""

    message_type: ClassVar[MessageType] = MessageType.PUPIL_INFO_QUERY


# --------------------------------------------------------------------------- replies


_DECISION = struct.Struct("<QBBBqBHB")  # txn, outcome, reason, flags, balance, item_index, template_id, n params
_PARAM = struct.Struct("<q")
# The whole payload with n params in one pack (one call instead of a join per reply).
_DECISION_WITH = tuple(struct.Struct("<QBBBqBHB" + "q" * n) for n in range(DISPLAY_PARAMS_MAX + 1))


class Decision(Event, frozen=True, gc=False):
    """Gateway -> device: the answer to a transaction or a balance query."""

    message_type: ClassVar[MessageType] = MessageType.DECISION
    txn: int  # the request's txn; 0 for BALANCE_QUERY
    outcome: int
    reason: int
    flags: int
    balance_kopecks: int
    item_index: int
    template_id: int
    params: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (
            0 <= self.txn <= _U64
            and ((self.outcome == 1 and self.reason == 0) or (self.outcome == 0 and 0 < self.reason <= 0xFF))
            and self.flags in _DECISION_FLAG_VALUES
            and _I64_MIN <= self.balance_kopecks <= _I64_MAX
            and 0 <= self.item_index <= NO_ITEM_INDEX
            and 0 <= self.template_id <= 0xFFFF
            and len(self.params) <= DISPLAY_PARAMS_MAX
            and (not self.params or (_I64_MIN <= min(self.params) and max(self.params) <= _I64_MAX))
        ):
            self._explain()
            raise PayloadError(f"invalid {type(self).__name__}")

    def _explain(self) -> None:
        _check_u64(self.txn, "txn")
        _check(self.outcome in (Outcome.DENY, Outcome.ACCEPT), "outcome must be 0 or 1")
        # Any u8: reasons added later in v1 are DENY reasons a device shows by template_id.
        _check(0 <= self.reason <= 0xFF, "reason must be a u8")
        _check((self.outcome == Outcome.ACCEPT) == (self.reason == DenyReason.OK), "ACCEPT goes with OK only")
        _check(0 <= self.flags <= 0xFF and self.flags & ~DECISION_FLAGS_KNOWN == 0, "unknown decision flags")
        _check(_I64_MIN <= self.balance_kopecks <= _I64_MAX, "balance_kopecks must be an i64")
        _check(0 <= self.item_index <= NO_ITEM_INDEX, "item_index must be a u8")
        _check(0 <= self.template_id <= 0xFFFF, "template_id must be a u16")
        _check(len(self.params) <= DISPLAY_PARAMS_MAX, f"at most {DISPLAY_PARAMS_MAX} display params")
        for p in self.params:
            _check(_I64_MIN <= p <= _I64_MAX, "display params must be i64")

    def encode_payload(self) -> bytes:
        params = self.params
        n = len(params)
        return _DECISION_WITH[n].pack(
            self.txn, self.outcome, self.reason, self.flags, self.balance_kopecks, self.item_index, self.template_id,
            n, *params,
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Decision":
        _check(len(payload) >= _DECISION.size, "DECISION truncated")
        txn, outcome, reason, flags, balance, item_index, template_id, n = _DECISION.unpack_from(payload, 0)
        _check(len(payload) == _DECISION.size + n * _PARAM.size, "DECISION length does not match its params")
        params = tuple(p for (p,) in _PARAM.iter_unpack(payload[_DECISION.size :]))
        return cls(txn, outcome, reason, flags, balance, item_index, template_id, params)


_DURABLE = struct.Struct("<Q")


class DurableAck(Event, frozen=True, gc=False):
    """Gateway -> device, unsolicited: every accepted txn <= durable_txn is on disk."""

    message_type: ClassVar[MessageType] = MessageType.DURABLE_ACK
    durable_txn: int

    def __post_init__(self) -> None:
        _check_u64(self.durable_txn, "durable_txn")

    def encode_payload(self) -> bytes:
        return _DURABLE.pack(self.durable_txn)

    @classmethod
    def decode_payload(cls, payload: bytes) -> "DurableAck":
        _check(len(payload) == _DURABLE.size, "DURABLE_ACK must be 8 bytes")
        return cls(_DURABLE.unpack(payload)[0])


class Nak(Event, frozen=True, gc=False):
    """Gateway -> device: the frame was refused at the protocol level."""

    message_type: ClassVar[MessageType] = MessageType.NAK
    reason: int
    detail: str = ""

    def __post_init__(self) -> None:
        # Any u8: reasons added later in v1 must not make a NAK undecodable.
        _check(0 <= self.reason <= 0xFF, "NAK reason must be a u8")
        _check(len(self.detail.encode("utf-8")) <= NAK_DETAIL_BYTES_MAX, "NAK detail too long")

    def encode_payload(self) -> bytes:
        detail = self.detail.encode("utf-8")
        return bytes((self.reason, len(detail))) + detail

    @classmethod
    def decode_payload(cls, payload: bytes) -> "Nak":
        _check(len(payload) >= 2, "NAK truncated")
        reason, n = payload[0], payload[1]
        _check(len(payload) == 2 + n, "NAK length does not match its detail")
        try:
            detail = payload[2:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("NAK detail is not UTF-8") from exc
        return cls(reason, detail)


_PREORDER_LINE = struct.Struct("<IH")  # product_code, quantity


class PreorderLine(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One pre-ordered line for today."""

    product_code: int
    quantity: int

    def __post_init__(self) -> None:
        _check(0 < self.product_code <= 0xFFFFFFFF, "product_code must be a positive u32")
        _check(0 < self.quantity <= 0xFFFF, "quantity must be 1..65535")


def _read_text(payload: bytes, offset: int, limit: int, name: str) -> tuple[str, int]:
    _check(len(payload) > offset, f"{name} length missing")
    n = payload[offset]
    end = offset + 1 + n
    _check(n <= limit and len(payload) >= end, f"{name} truncated or longer than {limit} bytes")
    try:
        return payload[offset + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{name} is not UTF-8") from exc


class PupilInfo(Event, frozen=True, gc=False):
    """Gateway -> till: the answer to PUPIL_INFO_QUERY. Changes nothing."""

    message_type: ClassVar[MessageType] = MessageType.PUPIL_INFO
    outcome: int
    reason: int
    photo_ref: str = ""
    cashier_note: str = ""
    preorder: tuple[PreorderLine, ...] = ()

    def __post_init__(self) -> None:
        _check(self.outcome in (Outcome.DENY, Outcome.ACCEPT), "outcome must be 0 or 1")
        _check(0 <= self.reason <= 0xFF, "reason must be a u8")
        _check((self.outcome == Outcome.ACCEPT) == (self.reason == DenyReason.OK), "ACCEPT goes with OK only")
        _check(len(self.photo_ref.encode("utf-8")) <= PHOTO_REF_BYTES_MAX, f"photo_ref over {PHOTO_REF_BYTES_MAX} bytes")
        _check(
            len(self.cashier_note.encode("utf-8")) <= CASHIER_NOTE_BYTES_MAX,
            f"cashier_note over {CASHIER_NOTE_BYTES_MAX} bytes",
        )
        _check(len(self.preorder) <= PREORDER_LINES_MAX, f"at most {PREORDER_LINES_MAX} pre-ordered lines")

    def encode_payload(self) -> bytes:
        photo = self.photo_ref.encode("utf-8")
        note = self.cashier_note.encode("utf-8")
        return b"".join(
            [
                bytes((self.outcome, self.reason, len(photo))),
                photo,
                bytes((len(note),)),
                note,
                bytes((len(self.preorder),)),
                *(_PREORDER_LINE.pack(line.product_code, line.quantity) for line in self.preorder),
            ]
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "PupilInfo":
        _check(len(payload) >= 2, "PUPIL_INFO truncated")
        outcome, reason = payload[0], payload[1]
        photo, offset = _read_text(payload, 2, PHOTO_REF_BYTES_MAX, "photo_ref")
        note, offset = _read_text(payload, offset, CASHIER_NOTE_BYTES_MAX, "cashier_note")
        _check(len(payload) > offset, "pre-order line count missing")
        count = payload[offset]
        offset += 1
        _check(len(payload) == offset + count * _PREORDER_LINE.size, "PUPIL_INFO length does not match its lines")
        lines = tuple(PreorderLine(*f) for f in _PREORDER_LINE.iter_unpack(payload[offset:]))
        return cls(outcome, reason, photo, note, lines)


# --------------------------------------------------------------------------- the building

_PANEL_TXN = struct.Struct("<QBQ")  # txn, flags, reader_time_ms


class _PanelTxn(Event, frozen=True, gc=False):
    """A fire panel's transaction: a numbered, journaled request like a sale (section 4.12)."""

    txn: int
    flags: int
    reader_time_ms: int

    def __post_init__(self) -> None:
        if not (0 < self.txn <= TXN_MAX and self.flags in _TXN_FLAG_VALUES and 0 <= self.reader_time_ms <= _U64):
            _check_txn(self.txn)
            _check_txn_flags(self.flags)
            _check_u64(self.reader_time_ms, "reader_time_ms")

    @property
    def advice(self) -> bool:
        return bool(self.flags & TXN_FLAG_ADVICE)

    def encode_payload(self) -> bytes:
        return _PANEL_TXN.pack(self.txn, self.flags, self.reader_time_ms)

    @classmethod
    def decode_payload(cls, payload: bytes):
        _check(len(payload) == _PANEL_TXN.size, f"{cls.message_type.name} must be {_PANEL_TXN.size} bytes")
        return cls(*_PANEL_TXN.unpack(payload))


class FireAlarm(_PanelTxn, frozen=True, gc=False):
    """Fire panel -> gateway: the school's fire alarm went off."""

    message_type: ClassVar[MessageType] = MessageType.FIRE_ALARM


class FireReset(_PanelTxn, frozen=True, gc=False):
    """Fire panel -> gateway: the alarm is over (reset at the panel)."""

    message_type: ClassVar[MessageType] = MessageType.FIRE_RESET


_MODE = struct.Struct("<BQ")  # mode, alarm_at_ms
_MODES = frozenset(int(m) for m in TurnstileMode)


class _TurnstileMode(Event, frozen=True, gc=False):
    mode: int  # TurnstileMode
    alarm_at_ms: int  # the alarm's time (gateway clock) for RELEASED; 0 for NORMAL

    def __post_init__(self) -> None:
        _check(self.mode in _MODES, "mode must be 0 (normal) or 1 (released)")
        _check_u64(self.alarm_at_ms, "alarm_at_ms")

    def encode_payload(self) -> bytes:
        return _MODE.pack(self.mode, self.alarm_at_ms)

    @classmethod
    def decode_payload(cls, payload: bytes):
        _check(len(payload) == _MODE.size, f"{cls.message_type.name} must be {_MODE.size} bytes")
        return cls(*_MODE.unpack(payload))


class Mode(_TurnstileMode, frozen=True, gc=False):
    """Gateway -> turnstile, unsolicited: release both ways (a fire alarm) or back to normal."""

    message_type: ClassVar[MessageType] = MessageType.MODE


class ModeApplied(_TurnstileMode, frozen=True, gc=False):
    """Turnstile -> gateway: the mode it is in now (after a MODE; after HELLO_ACK when released)."""

    message_type: ClassVar[MessageType] = MessageType.MODE_APPLIED


_LIST_SYNC = struct.Struct("<Q")  # version, then after: u8 length + identifier (0 bytes: from the start)
_LIST_PAGE = struct.Struct("<QBB")  # version, flags, count
_LIST_OPS = frozenset(int(op) for op in ListOp)
_LIST_FLAG_VALUES = frozenset(f for f in range(256) if f & ~LIST_FLAGS_KNOWN == 0)


class ListSync(Event, frozen=True, gc=False):
    """Turnstile -> gateway: "my allow-list is at ``version``; send what changed" (``after``
    empty), or "the next page of the snapshot after this identifier" (section 4.15)."""

    message_type: ClassVar[MessageType] = MessageType.LIST_SYNC
    version: int
    after: bytes = b""

    def __post_init__(self) -> None:
        _check_u64(self.version, "version")
        _check(type(self.after) is bytes, "after must be bytes")
        _check(not self.after or len(self.after) in _ID_LENGTHS, "after must be empty or an identifier")

    def encode_payload(self) -> bytes:
        return _LIST_SYNC.pack(self.version) + bytes((len(self.after),)) + self.after

    @classmethod
    def decode_payload(cls, payload: bytes) -> "ListSync":
        _check(len(payload) >= _LIST_SYNC.size + 1, "LIST_SYNC truncated")
        (version,) = _LIST_SYNC.unpack_from(payload, 0)
        n = payload[_LIST_SYNC.size]
        _check(len(payload) == _LIST_SYNC.size + 1 + n, "LIST_SYNC length does not match its identifier")
        return cls(version, payload[_LIST_SYNC.size + 1 :])


class ListEntry(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One identifier of a turnstile's local list and what to do with it."""

    op: int  # ListOp
    identifier: bytes

    def __post_init__(self) -> None:
        _check(self.op in _LIST_OPS, "op must be 1 (allow), 2 (block) or 3 (remove)")
        _check_identifier(self.identifier)


class ListPage(Event, frozen=True, gc=False):
    """Gateway -> turnstile: the answer to LIST_SYNC, changes or a snapshot page (section 4.15)."""

    message_type: ClassVar[MessageType] = MessageType.LIST_PAGE
    version: int  # the list version once this page is applied (a snapshot's: its base version)
    flags: int  # LIST_FLAG_MORE | LIST_FLAG_SNAPSHOT | LIST_FLAG_RESET
    entries: tuple[ListEntry, ...] = ()

    def __post_init__(self) -> None:
        _check_u64(self.version, "version")
        _check(self.flags in _LIST_FLAG_VALUES, "unknown LIST_PAGE flags")
        _check(len(self.entries) <= LIST_PAGE_ENTRIES_MAX, f"at most {LIST_PAGE_ENTRIES_MAX} entries")

    def encode_payload(self) -> bytes:
        return b"".join(
            [_LIST_PAGE.pack(self.version, self.flags, len(self.entries))]
            + [bytes((e.op, len(e.identifier))) + e.identifier for e in self.entries]
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "ListPage":
        _check(len(payload) >= _LIST_PAGE.size, "LIST_PAGE truncated")
        version, flags, count = _LIST_PAGE.unpack_from(payload, 0)
        offset = _LIST_PAGE.size
        entries = []
        for _ in range(count):
            _check(len(payload) >= offset + 2, "LIST_PAGE entry truncated")
            op = payload[offset]
            ident, offset = _read_identifier(payload, offset + 1)
            entries.append(ListEntry(op, ident))
        _check(offset == len(payload), "trailing bytes after LIST_PAGE")
        return cls(version, flags, tuple(entries))


_ALLOWANCE_SYNC = struct.Struct("<Q")  # version
_ALLOWANCE_PAGE = struct.Struct("<QBIBB")  # version, flags, floor_kopecks, sales_per_card_max, count
_ALLOWANCE_ENTRY = struct.Struct("<Bi")  # op, delta_kopecks; then u8 length + identifier
_ALLOWANCE_FLAG_VALUES = frozenset(f for f in range(256) if f & ~ALLOWANCE_FLAGS_KNOWN == 0)
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1


class AllowanceSync(Event, frozen=True, gc=False):
    """Till -> gateway: "my offline allowances are at ``version``; send what changed"
    (section 4.16). It also confirms that every page up to ``version`` is applied."""

    message_type: ClassVar[MessageType] = MessageType.ALLOWANCE_SYNC
    version: int

    def __post_init__(self) -> None:
        _check_u64(self.version, "version")

    def encode_payload(self) -> bytes:
        return _ALLOWANCE_SYNC.pack(self.version)

    @classmethod
    def decode_payload(cls, payload: bytes) -> "AllowanceSync":
        _check(len(payload) == _ALLOWANCE_SYNC.size, "ALLOWANCE_SYNC payload must be 8 bytes")
        return cls(*_ALLOWANCE_SYNC.unpack(payload))


class AllowanceEntry(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One card of a till's offline allowances: the card's op and a signed change of what
    the till may sell to it alone, in kopecks (added to what it holds)."""

    op: int  # ListOp: ALLOW (may buy offline), BLOCK (hot list: refuse), REMOVE (forget the card)
    delta_kopecks: int
    identifier: bytes

    def __post_init__(self) -> None:
        _check(self.op in _LIST_OPS, "op must be 1 (allow), 2 (block) or 3 (remove)")
        _check(type(self.delta_kopecks) is int and _I32_MIN <= self.delta_kopecks <= _I32_MAX,
               "delta_kopecks must be a signed 32-bit integer")
        _check_identifier(self.identifier)


class AllowancePage(Event, frozen=True, gc=False):
    """Gateway -> till: the answer to ALLOWANCE_SYNC (section 4.16)."""

    message_type: ClassVar[MessageType] = MessageType.ALLOWANCE_PAGE
    version: int  # the allowance version once this page is applied
    flags: int  # LIST_FLAG_MORE | LIST_FLAG_RESET
    floor_kopecks: int  # the school's offline floor: no card is allowed more offline (0: no offline sales)
    sales_per_card_max: int  # consecutive offline sales one card may make (0: none)
    entries: tuple[AllowanceEntry, ...] = ()

    def __post_init__(self) -> None:
        _check_u64(self.version, "version")
        _check(self.flags in _ALLOWANCE_FLAG_VALUES, "unknown ALLOWANCE_PAGE flags")
        _check(type(self.floor_kopecks) is int and 0 <= self.floor_kopecks <= AMOUNT_KOPECKS_MAX,
               "floor_kopecks must be a u32")
        _check(type(self.sales_per_card_max) is int and 0 <= self.sales_per_card_max <= 0xFF,
               "sales_per_card_max must be a u8")
        _check(len(self.entries) <= ALLOWANCE_PAGE_ENTRIES_MAX, f"at most {ALLOWANCE_PAGE_ENTRIES_MAX} entries")

    def encode_payload(self) -> bytes:
        return b"".join(
            [_ALLOWANCE_PAGE.pack(self.version, self.flags, self.floor_kopecks, self.sales_per_card_max,
                                  len(self.entries))]
            + [_ALLOWANCE_ENTRY.pack(e.op, e.delta_kopecks) + bytes((len(e.identifier),)) + e.identifier
               for e in self.entries]
        )

    @classmethod
    def decode_payload(cls, payload: bytes) -> "AllowancePage":
        _check(len(payload) >= _ALLOWANCE_PAGE.size, "ALLOWANCE_PAGE truncated")
        version, flags, floor, per_card, count = _ALLOWANCE_PAGE.unpack_from(payload, 0)
        offset = _ALLOWANCE_PAGE.size
        entries = []
        for _ in range(count):
            _check(len(payload) >= offset + _ALLOWANCE_ENTRY.size + 1, "ALLOWANCE_PAGE entry truncated")
            op, delta = _ALLOWANCE_ENTRY.unpack_from(payload, offset)
            ident, offset = _read_identifier(payload, offset + _ALLOWANCE_ENTRY.size)
            entries.append(AllowanceEntry(op, delta, ident))
        _check(offset == len(payload), "trailing bytes after ALLOWANCE_PAGE")
        return cls(version, flags, floor, per_card, tuple(entries))


EVENT_TYPES: dict[int, type[Event]] = {
    cls.message_type: cls
    for cls in (
        Hello,
        HelloAck,
        Heartbeat,
        CardPresented,
        Passage,
        Purchase,
        TopupCash,
        BalanceQuery,
        PupilInfoQuery,
        Decision,
        DurableAck,
        PupilInfo,
        Nak,
        FireAlarm,
        FireReset,
        Mode,
        ModeApplied,
        ListSync,
        ListPage,
        AllowanceSync,
        AllowancePage,
    )
}

TRANSACTION_TYPES = (CardPresented, Passage, Purchase, TopupCash)
