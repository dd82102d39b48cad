"""What parents are told of: one msgspec Struct per event kind, a tagged union.

The machine (and the staff API, for card events) writes one of these as the
payload of an outbox row, in the same transaction as the change it reports;
the relay publishes it and the notifier decodes it with ``NOTICE_DECODER``
straight into the right class. ``kind`` is the tag (the same string as
``outbox.kind`` and ``ledger.codes.OutboxKind``). Times are Unix ms (UTC); the
notifier renders them in the school's time zone. Money is integer kopecks.
"""

from __future__ import annotations

import msgspec

from protocol import Item

from .codes import OutboxKind


class Notice(msgspec.Struct, tag_field="kind", frozen=True, gc=False, kw_only=True):
    account_id: int  # the pupil's personal account
    school_id: int
    at_ms: int  # when it happened (the reader's time for an advice judged at it)


class EntryNotice(Notice, tag=OutboxKind.ENTRY.value):
    """The pupil went in (counted on PASSAGE, not on the card presented)."""

    device_id: int
    escort: str = ""  # a kindergarten: the full name of the trusted person who brought the child
    escort_relation: str = ""  # and their relation (parent, grandmother, nanny, ...)


class ExitNotice(Notice, tag=OutboxKind.EXIT.value):
    """The pupil went out (counted on PASSAGE)."""

    device_id: int
    escort: str = ""  # a kindergarten: the full name of the trusted person who collected the child
    escort_relation: str = ""  # and their relation


class PurchaseNotice(Notice, tag=OutboxKind.PURCHASE.value):
    device_id: int
    amount_kopecks: int
    balance_kopecks: int  # after the purchase
    items: tuple[Item, ...]  # [product_code, quantity, unit_price_kopecks] each (the wire's lines)
    free_meal: bool  # paid from the school's free-meal budget


class CashTopupNotice(Notice, tag=OutboxKind.CASH_TOPUP.value):
    device_id: int
    amount_kopecks: int
    balance_kopecks: int


class BankTopupNotice(Notice, tag=OutboxKind.BANK_TOPUP.value):
    amount_kopecks: int
    balance_kopecks: int


class LowBalanceNotice(Notice, tag=OutboxKind.LOW_BALANCE.value):
    balance_kopecks: int
    threshold_kopecks: int


class CardNotice(Notice, tag=OutboxKind.CARD_BLOCKED.value):
    """A card was blocked (lost, stolen, replaced)."""

    identifier_hex: str


class TemporaryCardIssuedNotice(Notice, tag=OutboxKind.TEMPORARY_CARD_ISSUED.value):
    identifier_hex: str  # the temporary card
    expires_at_ms: int  # 0: no expiry (it stands until the card is found or replaced)


class TemporaryCardReturnedNotice(Notice, tag=OutboxKind.TEMPORARY_CARD_RETURNED.value):
    identifier_hex: str


AnyNotice = (
    EntryNotice
    | ExitNotice
    | PurchaseNotice
    | CashTopupNotice
    | BankTopupNotice
    | LowBalanceNotice
    | CardNotice
    | TemporaryCardIssuedNotice
    | TemporaryCardReturnedNotice
)
NOTICE_DECODER = msgspec.json.Decoder(AnyNotice)
