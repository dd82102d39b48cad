"""Numeric codes of protocol v1: message types, device kinds, reasons.

Every name here is used verbatim in docs/protocol.md, in metric labels and as
the key of the Russian display template the device shows.
"""

from __future__ import annotations

import enum


class MessageType(enum.IntEnum):
    HELLO = 0x01
    HELLO_ACK = 0x02
    HEARTBEAT = 0x03
    CARD_PRESENTED = 0x10
    PASSAGE = 0x11
    PURCHASE = 0x12
    TOPUP_CASH = 0x13
    BALANCE_QUERY = 0x14
    PUPIL_INFO_QUERY = 0x15
    FIRE_ALARM = 0x16  # fire panel -> gateway: the school's alarm went off
    FIRE_RESET = 0x17  # fire panel -> gateway: the alarm is over
    MODE_APPLIED = 0x18  # turnstile -> gateway: the mode it is now in (the answer to MODE)
    LIST_SYNC = 0x19  # turnstile -> gateway: my allow-list is at this version; what changed?
    ALLOWANCE_SYNC = 0x1A  # till -> gateway: my offline allowances are at this version; what changed?
    DECISION = 0x20
    DURABLE_ACK = 0x21
    PUPIL_INFO = 0x22
    MODE = 0x23  # gateway -> turnstile, unsolicited: release both ways (fire alarm) or back to normal
    LIST_PAGE = 0x24  # gateway -> turnstile: a page of allow-list changes, or of a full snapshot
    ALLOWANCE_PAGE = 0x25  # gateway -> till: a page of offline allowance changes
    NAK = 0x7F


class DeviceKind(enum.IntEnum):
    TURNSTILE = 1
    TILL = 2
    FIRE_PANEL = 3


class Direction(enum.IntEnum):
    IN = 1
    OUT = 2


class TurnstileMode(enum.IntEnum):
    """MODE.mode: what a turnstile does with its arm."""

    NORMAL = 0  # opens per grant
    RELEASED = 1  # fire alarm: free passage both ways until told NORMAL


class ListOp(enum.IntEnum):
    """LIST_PAGE entry: what the turnstile does with an identifier in its local list."""

    ALLOW = 1  # an active card of the school: let it through offline
    BLOCK = 2  # the hot list: blocked (or suspended) - refuse it offline, show CARD_BLOCKED
    REMOVE = 3  # forget it (no longer of this school)


# LIST_PAGE flags.
LIST_FLAG_MORE = 0x01  # more follows: ask again (LIST_SYNC) at once
LIST_FLAG_SNAPSHOT = 0x02  # a page of a full snapshot: continue with after = this page's last identifier
LIST_FLAG_RESET = 0x04  # the first page of a snapshot: drop the local list before applying it
LIST_FLAGS_KNOWN = LIST_FLAG_MORE | LIST_FLAG_SNAPSHOT | LIST_FLAG_RESET
# ALLOWANCE_PAGE flags: the same bit values, no snapshot paging (section 4.16).
ALLOWANCE_FLAGS_KNOWN = LIST_FLAG_MORE | LIST_FLAG_RESET


class Outcome(enum.IntEnum):
    DENY = 0
    ACCEPT = 1


class DenyReason(enum.IntEnum):
    """Why a well-formed request was answered with DENY (or ACCEPT for OK).

    The rule set stays open: new reasons take new numbers, old ones never
    change meaning (a device shows its template for the number it got).
    """

    OK = 0
    UNKNOWN_CARD = 1
    CARD_BLOCKED = 2
    ACCOUNT_BLOCKED = 3
    WRONG_SCHOOL = 4
    WRONG_DEVICE_KIND = 5
    INSUFFICIENT_FUNDS = 6
    DAILY_LIMIT_EXCEEDED = 7
    AMOUNT_INVALID = 8
    TRY_AGAIN_LATER = 9
    TXN_TOO_OLD = 10
    CARD_SUSPENDED = 11
    CARD_EXPIRED = 12
    PRODUCT_BANNED = 13
    CATEGORY_BANNED = 14
    ALLERGEN_BLOCKED = 15
    DIET_RESTRICTED = 16
    ITEM_COUNT_EXCEEDED = 17
    PERIOD_LIMIT_EXCEEDED = 18
    # Reasons of money commands (staff API, payments); never on a device's screen.
    UNKNOWN_ACCOUNT = 19
    NOT_SAME_FAMILY = 20
    UNKNOWN_ORIGINAL = 21
    REFUND_EXCEEDS = 22
    # A PASSAGE whose granted_txn names no CARD_PRESENTED this device was granted for that card.
    NO_GRANT = 23
    # CARD_PRESENTED against the school's anti-passback rule in hard mode: entering while
    # inside, leaving while outside, or entering again sooner than the school's interval.
    ANTI_PASSBACK = 24
    # A PASSAGE that came later than passage_window_ms after its grant: the turnstile had closed.
    GRANT_EXPIRED = 25
    # A kindergarten child's card at a turnstile with no card of one of the child's trusted
    # persons presented there within the escort window: a child never passes alone.
    ESCORT_REQUIRED = 26
    # Decided by a till alone, offline (never sent by the gateway): the card has no offline
    # allowance left at this till, has made its consecutive offline sales, or the basket is
    # above the school's offline floor (docs/protocol.md 4.16).
    OFFLINE_LIMIT = 27


class NakReason(enum.IntEnum):
    """Why a frame was refused at the protocol level (not a business decision)."""

    BAD_START_BYTE = 1
    UNSUPPORTED_VERSION = 2
    FRAME_TOO_LARGE = 3
    BAD_CRC = 4
    UNSUPPORTED_FLAGS = 5
    UNKNOWN_MESSAGE = 6
    MALFORMED_PAYLOAD = 7
    OUT_OF_STATE = 8
    BAD_SEQUENCE = 9
    SEQUENCE_REUSED = 10
    DEVICE_MISMATCH = 11
    UNKNOWN_DEVICE = 12
    AUTH_FAILED = 13
    TXN_OUT_OF_ORDER = 14
    TOO_MANY_PENDING = 15
    BUFFER_OVERFLOW = 16
    SERVER_BUSY = 17
    # A txn more than TXN_GAP_MAX above the highest txn known from the device.
    TXN_OUT_OF_RANGE = 18
    # Secure channel (section 5a): a frame whose MAC does not verify (forged, replayed,
    # reordered, altered or foreign). Takes no seq; the MAC_FAILURES_MAX-th closes.
    MAC_INVALID = 19
    # HELLO of a device the staff API revoked. Closes.
    DEVICE_REVOKED = 20
    # A transaction under a txn the gateway remembers for ANOTHER request of this device (its
    # counter went back: storage lost or restored). Nothing decided; the txn does not count as sent.
    TXN_REUSED = 21


# Flags of the frame header (byte 2).
FLAG_REPLY = 0x01  # set on every frame the gateway sends (like OSDP's address bit 7)
FLAG_SECURE_BLOCK = 0x02  # reserved; must be 0 (the secure channel needs no security block)
FLAG_MAC = 0x04  # the frame ends with a FRAME_MAC_BYTES MAC: every frame after HELLO_ACK, both ways
FLAGS_KNOWN = FLAG_REPLY | FLAG_MAC

# Flags inside transaction payloads (CARD_PRESENTED, PASSAGE, PURCHASE, TOPUP_CASH).
TXN_FLAG_ADVICE = 0x01  # already happened (offline or accepted earlier): never declined
TXN_FLAGS_KNOWN = TXN_FLAG_ADVICE

# Flags inside DECISION.
DECISION_FLAG_DUPLICATE = 0x01  # this txn was decided before; the stored result is repeated
DECISION_FLAGS_KNOWN = DECISION_FLAG_DUPLICATE

NO_ITEM_INDEX = 0xFF  # DECISION.item_index when no single item is to blame
