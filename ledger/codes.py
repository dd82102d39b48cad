"""Every stored code of the ledger, defined once.

Each IntEnum's values are what PostgreSQL stores (journal.kind, accounts.kind,
identifiers.status, commands.status, ...); every package reads and writes them
through these names. The protocol's own codes (DenyReason, DeviceKind, ...)
live in ``protocol.codes``: they are the wire's.
"""

from __future__ import annotations

import enum


class JournalKind(enum.IntEnum):
    """journal.kind: what a journal row records."""

    ENTRY = 1  # CARD_PRESENTED granted at a turnstile (the turnstile opened)
    PASSAGE = 2  # the turnstile reported the person went through
    PURCHASE = 3  # a till sale
    CASH_TOPUP = 4  # cash top-up at a till
    BALANCE = 5  # a balance query (decided, never journaled)
    # Money commands (staff API, payments): journaled with device_id 0, device_txn = commands.seq.
    BANK_TOPUP = 6
    BANK_REFUND = 7
    TRANSFER = 8
    REFUND = 9
    CORRECTION = 10

    @property
    def label(self) -> str:
        """The name people read (staff API ledger, metrics): "entry", "bank_topup", ..."""
        return self.name.lower()


class CommandKind(enum.IntEnum):
    """commands.kind (stored as its name, the text the API takes); the value is its JournalKind."""

    bank_topup = JournalKind.BANK_TOPUP
    bank_refund = JournalKind.BANK_REFUND
    transfer = JournalKind.TRANSFER
    refund = JournalKind.REFUND
    correction = JournalKind.CORRECTION


class CommandStatus(enum.IntEnum):
    """commands.status."""

    PENDING = 0
    APPLIED = 1
    REFUSED = 2


class AccountKind(enum.IntEnum):
    """accounts.kind: the double-entry ledger's accounts (the sum of all balances is zero)."""

    NONE = 0  # an unused slot of the in-memory columns, never stored
    PUPIL = 1  # a pupil's personal account (лицевой счёт)
    REVENUE = 2  # a school canteen's revenue
    DRAWER = 3  # a till's cash drawer
    OPENING = 4  # opening balances (migration of existing money)
    CLEARING = 5  # the acquirer's clearing account (bank-card top-ups and refunds)
    FREE_MEALS = 6  # a school's free-meal budget
    CORRECTIONS = 7  # operator corrections


class AccountStatus(enum.IntEnum):
    """accounts.status."""

    ACTIVE = 0
    BLOCKED = 1


class IdentifierKind(enum.IntEnum):
    """identifiers.kind: what carries the identifier (the name is what the staff API takes)."""

    service_card = 1
    social_card = 2  # the Social Card of the Pupil
    bracelet = 3
    fob = 4
    muscovite_card = 5
    temporary = 6  # a temporary card with full function (broken, lost or forgotten card)


class IdentifierStatus(enum.IntEnum):
    """identifiers.status (the name, lower-case, is what the staff API shows)."""

    ACTIVE = 0
    BLOCKED = 1  # for good (lost, stolen, replaced, temporary card returned)
    SUSPENDED = 2  # a temporary card stands for it until expires_at_ms


class OutboxKind(enum.StrEnum):
    """outbox.kind: events for parents (ledger.notices has one Struct per kind)."""

    ENTRY = "entry"
    EXIT = "exit"
    PURCHASE = "purchase"
    CASH_TOPUP = "cash_topup"
    BANK_TOPUP = "bank_topup"
    LOW_BALANCE = "low_balance"
    TEMPORARY_CARD_ISSUED = "temporary_card_issued"
    TEMPORARY_CARD_RETURNED = "temporary_card_returned"
    CARD_BLOCKED = "card_blocked"
