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
    # The building: a fire alarm raised and reset (by a fire panel's txn, or a school
    # officer's command with device_id 0 and device_txn = commands.seq); no money moves.
    FIRE_ALARM = 11
    FIRE_RESET = 12
    # A trusted person's card at a kindergarten turnstile (account_id 0): the adult who
    # brings or collects a child; the child's own card follows.
    ESCORT = 13
    # A cash top-up taken by a cashier at the school office's desk (staff API command,
    # device_id 0): the school's desk drawer pays the pupil.
    DESK_CASH_TOPUP = 14

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
    fire_alarm = JournalKind.FIRE_ALARM  # a school officer raises the alarm (payload: school_id)
    fire_reset = JournalKind.FIRE_RESET  # and resets it
    cash_topup = JournalKind.DESK_CASH_TOPUP  # a cashier takes cash at the office desk


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
    DESK_DRAWER = 8  # the cash drawer of a school office's desk (the cashier's top-ups)


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


class PassbackMode(enum.IntEnum):
    """school_policies.anti_passback: what a school does with a card used against the
    pupil's presence (entering while inside, leaving while outside) or too soon."""

    OFF = 0
    SOFT = 1  # allow, and record the violation
    HARD = 2  # deny with DenyReason.ANTI_PASSBACK (and record it)


class Presence(enum.IntEnum):
    """Where a pupil is, as the passages of the current school day say (AccountCounters.presence)."""

    UNKNOWN = 0  # no passage today (or since the school's presence was reconciled)
    INSIDE = 1
    OUTSIDE = 2


class AccessKind(enum.IntEnum):
    """access_events.kind: what happened at a school's doors besides entries and exits
    (those are journal rows: JournalKind.PASSAGE)."""

    GRANT_EXPIRED = 1  # a turnstile opened for a card and nobody went through
    PASSBACK_VIOLATION = 2  # soft anti-passback: allowed, recorded
    PASSBACK_DENIED = 3  # hard anti-passback: refused, recorded
    PRESENCE_RESET = 4  # the school's presence reconciled (after an evacuation): everyone may enter
    FIRE_ALARM = 5  # a fire alarm began (device_id, device_txn: the alarm's key; detail: who raised it)
    MUSTERED = 6  # a pupil inside at the alarm: the muster list (keyed by the alarm, one per account)
    TURNSTILE_RELEASED = 7  # a turnstile confirmed it released both ways (device_id: the turnstile)
    FIRE_RESET = 8  # the alarm was reset (device_id, device_txn: the reset's key; detail: the alarm's key)
    ESCORTED = 9  # a child went through with a trusted person (the PASSAGE's key; detail: who)

    @property
    def label(self) -> str:
        return self.name.lower()


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
