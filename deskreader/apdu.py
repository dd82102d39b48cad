"""GET UID: the PC/SC pseudo-APDU ``FF CA 00 00 00`` and its answer (pure).

PC/SC Part 3 (v2.02.09, 3.2.2.1.3 "Get Data"): CLA FF is the reader's own class, INS CA
"get data", P1 00 the card's UID (P1 01 would be the historical bytes), P2 00, Le 00 "all
of it". The reader answers ``UID || SW1 SW2``; ISO 14443 UIDs are 4, 7 or 10 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

GET_UID_APDU = (0xFF, 0xCA, 0x00, 0x00, 0x00)
SW_OK = 0x9000
# The status words a reader answers GET UID with, and what they mean (PC/SC Part 3, Table 3-3).
STATUS_WORDS = {
    0x9000: "success",
    0x6282: "end of data reached before Le bytes (UID shorter than asked)",
    0x6300: "the operation failed (no card or card mute)",
    0x6A81: "function not supported (this reader or card has no UID to give)",
    0x6B00: "wrong parameter P1-P2",
    0x6D00: "instruction not supported (the card, not the reader, answered: no PC/SC Part 3 reader)",
    0x6E00: "class not supported",
}
# The staff API takes 4..16 bytes (staff_api.db.UID_BYTES_MIN/MAX); ISO 14443 gives 4, 7 or 10,
# ISO 15693 8. Anything outside is a reader or card fault, not a UID.
UID_BYTES_MIN, UID_BYTES_MAX = 4, 16


class ApduError(ValueError):
    """The reader's answer to GET UID is not a UID."""


@dataclass(frozen=True)
class UidAnswer:
    uid: bytes
    sw: int


def status_word_text(sw: int) -> str:
    if sw in STATUS_WORDS:
        return STATUS_WORDS[sw]
    if sw >> 8 == 0x6C:
        return f"wrong Le: {sw & 0xFF} bytes available"
    return "unknown status word"


def parse_uid_response(response: bytes | list[int] | tuple[int, ...]) -> UidAnswer:
    """``UID || SW1 SW2`` -> the UID; ``ApduError`` naming the status word otherwise."""
    data = bytes(response)
    if len(data) < 2:
        raise ApduError(f"answer of {len(data)} byte(s): no status word")
    sw = int.from_bytes(data[-2:], "big")
    uid = data[:-2]
    if sw != SW_OK:
        raise ApduError(f"GET UID answered SW {sw:04X}: {status_word_text(sw)}")
    if not UID_BYTES_MIN <= len(uid) <= UID_BYTES_MAX:
        raise ApduError(f"GET UID answered {len(uid)} byte(s) with SW 9000; a UID is {UID_BYTES_MIN}..{UID_BYTES_MAX}")
    return UidAnswer(uid=uid, sw=sw)


def format_uid(uid: bytes) -> str:
    """Upper-case hex without separators, as the staff API takes it: ``04A1B2C3D4E5F6``."""
    return uid.hex().upper()


def format_hex(data: bytes | list[int] | tuple[int, ...]) -> str:
    """Spaced upper-case hex for logs: ``FF CA 00 00 00``."""
    return " ".join(f"{b:02X}" for b in bytes(data))
