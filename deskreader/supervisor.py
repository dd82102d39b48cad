"""The bridge's supervisor: what to do after each PC/SC result (pure: no pyscard, no clock).

pyscard's own monitors (``CardMonitor``, ``ReaderMonitor``) die silently when pcscd
restarts or the reader is unplugged (their threads end on the first transport error and
never come back; /work/shared/COMPONENTS.md §1). This machine is the answer: the I/O loop
(``deskreader.pcsc``) asks ``Supervisor`` for its next ``Step``, does it, and reports the
result code back. Every failure to reach pcscd or the reader ends in the same place:
release the context, wait ``retry_interval_ms``, establish a new one, find the reader
again, and treat every card as removed (a card still lying on the reader is read again as
a new card: nothing that happened while pcscd was away can be trusted).

    NO_CONTEXT --establish ok--> NO_READER --reader listed--> WATCHING (EMPTY | CARD)
        ^                            |                              |
        +--- retry_interval_ms ------+------ context lost / reader gone / unexpected code
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# -- PC/SC return codes (winscard.h; pcsc-lite and Windows agree) and reader state bits.
# Defined here so that the machine and its tests need no pyscard; tests/deskreader checks
# them against smartcard.scard when pyscard is installed.
SCARD_S_SUCCESS = 0x00000000
SCARD_E_CANCELLED = 0x80100002
SCARD_E_INVALID_HANDLE = 0x80100003
SCARD_E_UNKNOWN_READER = 0x80100009
SCARD_E_TIMEOUT = 0x8010000A
SCARD_E_NO_SMARTCARD = 0x8010000C
SCARD_F_COMM_ERROR = 0x80100013
SCARD_E_READER_UNAVAILABLE = 0x80100017
SCARD_E_NO_SERVICE = 0x8010001D
SCARD_E_SERVICE_STOPPED = 0x8010001E
SCARD_E_NO_READERS_AVAILABLE = 0x8010002E
SCARD_W_UNRESPONSIVE_CARD = 0x80100066
SCARD_W_UNPOWERED_CARD = 0x80100067
SCARD_W_RESET_CARD = 0x80100068
SCARD_W_REMOVED_CARD = 0x80100069

SCARD_STATE_UNAWARE = 0x0000
SCARD_STATE_CHANGED = 0x0002
SCARD_STATE_UNKNOWN = 0x0004
SCARD_STATE_UNAVAILABLE = 0x0008
SCARD_STATE_EMPTY = 0x0010
SCARD_STATE_PRESENT = 0x0020
SCARD_STATE_MUTE = 0x0200
# pcsc-lite keeps a per-reader count of card insertions and removals in the upper 16 bits
# of the event state: a card swapped between two waits shows PRESENT both times with a
# different count.
EVENT_COUNT_SHIFT = 16

CODE_NAMES = {
    SCARD_S_SUCCESS: "SCARD_S_SUCCESS",
    SCARD_E_CANCELLED: "SCARD_E_CANCELLED",
    SCARD_E_INVALID_HANDLE: "SCARD_E_INVALID_HANDLE",
    SCARD_E_UNKNOWN_READER: "SCARD_E_UNKNOWN_READER",
    SCARD_E_TIMEOUT: "SCARD_E_TIMEOUT",
    SCARD_E_NO_SMARTCARD: "SCARD_E_NO_SMARTCARD",
    SCARD_F_COMM_ERROR: "SCARD_F_COMM_ERROR",
    SCARD_E_READER_UNAVAILABLE: "SCARD_E_READER_UNAVAILABLE",
    SCARD_E_NO_SERVICE: "SCARD_E_NO_SERVICE",
    SCARD_E_SERVICE_STOPPED: "SCARD_E_SERVICE_STOPPED",
    SCARD_E_NO_READERS_AVAILABLE: "SCARD_E_NO_READERS_AVAILABLE",
    SCARD_W_UNRESPONSIVE_CARD: "SCARD_W_UNRESPONSIVE_CARD",
    SCARD_W_UNPOWERED_CARD: "SCARD_W_UNPOWERED_CARD",
    SCARD_W_RESET_CARD: "SCARD_W_RESET_CARD",
    SCARD_W_REMOVED_CARD: "SCARD_W_REMOVED_CARD",
}

# pcscd is gone or was restarted: the context is dead (a restarted pcscd does not know it).
CONTEXT_LOST = frozenset((SCARD_E_NO_SERVICE, SCARD_F_COMM_ERROR, SCARD_E_SERVICE_STOPPED, SCARD_E_INVALID_HANDLE))
# The reader was unplugged (or its driver restarted).
READER_GONE = frozenset((SCARD_E_UNKNOWN_READER, SCARD_E_READER_UNAVAILABLE, SCARD_E_NO_READERS_AVAILABLE))
# The card went away or misbehaved during connect/transmit: wait for the next card.
CARD_GONE = frozenset((SCARD_E_NO_SMARTCARD, SCARD_W_REMOVED_CARD, SCARD_W_UNRESPONSIVE_CARD,
                       SCARD_W_UNPOWERED_CARD, SCARD_W_RESET_CARD))

# After a context loss, a reader gone or a failed SCardEstablishContext, wait this long
# before trying again. pcscd restarts in well under a second and a reader is replugged in
# about one: half a second brings the desk back within about one interval of the service,
# while a pcscd that stays down costs two cheap failed socket connects a second, not a
# busy loop (each failed SCardEstablishContext answers at once).
CONTEXT_RETRY_INTERVAL_MS = 500
# One SCardGetStatusChange waits at most this long for a change. Finite so that the loop
# notices a stop request and a dead pcscd (some transport errors only surface on the next
# call) within this; long enough that an idle desk makes two calls a second.
STATUS_TIMEOUT_MS = 500


def code_name(code: int) -> str:
    code &= 0xFFFFFFFF
    return f"{CODE_NAMES.get(code, 'PC/SC error')} (0x{code:08X})"


def choose_reader(names: list[str] | tuple[str, ...], wanted: str) -> str | None:
    """The configured reader: its exact name, else the first whose name starts with it.

    Real readers carry slot and serial suffixes (``Virtual PCD 00 00``, ``ACS ACR122U PICC
    Interface 00 00``) that change with the USB port; a prefix survives that.
    """
    if wanted in names:
        return wanted
    for name in names:
        if name.startswith(wanted):
            return name
    return None


class Phase(enum.Enum):
    NO_CONTEXT = "no_context"  # no PC/SC context: establish one
    NO_READER = "no_reader"  # a context, the reader not found (yet)
    EMPTY = "empty"  # watching the reader, no card on it
    CARD = "card"  # watching, a card on it (read, or unreadable): wait for it to go


class Do(enum.Enum):
    ESTABLISH = "establish"  # release the old context (if any), SCardEstablishContext
    FIND_READER = "find_reader"  # SCardListReaders, choose_reader
    WAIT = "wait"  # SCardGetStatusChange(context, timeout, [(reader, known_state)])
    READ_UID = "read_uid"  # SCardConnect, SCardTransmit GET UID, SCardDisconnect; post the UID


@dataclass(frozen=True)
class Step:
    do: Do
    delay_ms: int = 0  # wait this long before doing it
    note: str | None = None  # something changed: a line for the log


@dataclass
class Supervisor:
    wanted_reader: str
    retry_interval_ms: int = CONTEXT_RETRY_INTERVAL_MS
    phase: Phase = Phase.NO_CONTEXT
    reader: str | None = None  # the chosen reader's full name
    known_state: int = SCARD_STATE_UNAWARE  # what SCardGetStatusChange is told we know
    read_count: int | None = None  # the reader's event count when the present card was read
    recoveries: int = 0  # contexts lost and re-established (a metric for the log and tests)
    failed_attempts: int = 0  # SCardEstablishContext failures since the last context
    _lost: bool = False  # a context was lost (or never made) since the last good one
    _missing: bool = False  # the reader was not listed at the last look

    def __post_init__(self) -> None:
        assert self.retry_interval_ms > 0, "a zero retry interval is a busy loop on a dead pcscd"

    def start(self) -> Step:
        return Step(Do.ESTABLISH, note=f"watching reader {self.wanted_reader!r}")

    # -- results of the I/O loop's calls

    def on_establish(self, code: int) -> Step:
        code &= 0xFFFFFFFF
        if code != SCARD_S_SUCCESS:
            self._lost = True
            self.failed_attempts += 1
            n = self.failed_attempts
            # said at the 1st, 10th, 100th, ... attempt: a pcscd down for an hour is a few lines, not 7,200
            quiet = n != 10 ** (len(str(n)) - 1)
            return self._retry(Phase.NO_CONTEXT, f"no PC/SC context ({code_name(code)}) after {n} attempt(s); "
                               f"retrying every {self.retry_interval_ms} ms", quiet=quiet)
        self.phase = Phase.NO_READER
        self.known_state = SCARD_STATE_UNAWARE
        note = None
        if self._lost:
            self.recoveries += 1
            note = (f"PC/SC context re-established after {self.failed_attempts} failed attempt(s) "
                    f"(recovery {self.recoveries})")
        self._lost = False
        self.failed_attempts = 0
        return Step(Do.FIND_READER, note=note)

    def on_readers(self, code: int, names: list[str] | tuple[str, ...]) -> Step:
        code &= 0xFFFFFFFF
        if code in CONTEXT_LOST:
            return self._lose(Phase.NO_CONTEXT, f"context lost listing readers: {code_name(code)}")
        if code not in (SCARD_S_SUCCESS, SCARD_E_NO_READERS_AVAILABLE):
            return self._lose(Phase.NO_CONTEXT, f"listing readers failed: {code_name(code)}")
        listed = list(names) if code == SCARD_S_SUCCESS else []
        chosen = choose_reader(listed, self.wanted_reader)
        if chosen is None:
            quiet = self._missing  # said once, not every retry while the reader is unplugged
            self._missing = True
            return self._lose(Phase.NO_READER, f"reader {self.wanted_reader!r} not found (readers: {listed})",
                              quiet=quiet)
        self._missing = False
        self.reader = chosen
        self.phase = Phase.EMPTY
        self.known_state = SCARD_STATE_UNAWARE  # the first wait answers at once with the current state
        self.read_count = None
        return Step(Do.WAIT, note=f"reader {chosen!r} ready")

    def on_status(self, code: int, event_state: int) -> Step:
        code &= 0xFFFFFFFF
        if code == SCARD_E_TIMEOUT:
            return Step(Do.WAIT)
        if code in CONTEXT_LOST:
            return self._lose(Phase.NO_CONTEXT, f"PC/SC context lost: {code_name(code)}")
        if code in READER_GONE:
            return self._lose(Phase.NO_READER, f"reader {self.reader!r} gone: {code_name(code)}")
        if code != SCARD_S_SUCCESS:
            return self._lose(Phase.NO_CONTEXT, f"unexpected {code_name(code)} waiting for a card")
        self.known_state = event_state & ~SCARD_STATE_CHANGED
        if event_state & (SCARD_STATE_UNKNOWN | SCARD_STATE_UNAVAILABLE):
            return self._lose(Phase.NO_READER, f"reader {self.reader!r} unavailable (state 0x{event_state:X})")
        if event_state & SCARD_STATE_PRESENT:
            count = event_state >> EVENT_COUNT_SHIFT
            if self.phase is Phase.CARD and count == self.read_count:
                return Step(Do.WAIT)  # the same card (in use, reset, ...): read once
            self.phase, self.read_count = Phase.CARD, count
            if event_state & SCARD_STATE_MUTE:
                return Step(Do.WAIT, note="card present but mute (no ATR): present it again")
            return Step(Do.READ_UID)
        if self.phase is Phase.CARD:
            self.phase, self.read_count = Phase.EMPTY, None
            return Step(Do.WAIT, note="card removed")
        self.phase = Phase.EMPTY
        return Step(Do.WAIT)

    def on_read(self, code: int, detail: str | None = None) -> Step:
        """After connect + transmit: ``code`` the first failing call's (or success), ``detail``
        what went wrong with the answer (``apdu.ApduError``) or the UID read."""
        code &= 0xFFFFFFFF
        if code in CONTEXT_LOST:
            return self._lose(Phase.NO_CONTEXT, f"PC/SC context lost reading the card: {code_name(code)}")
        if code in READER_GONE:
            return self._lose(Phase.NO_READER, f"reader {self.reader!r} gone reading the card: {code_name(code)}")
        if code in CARD_GONE:
            return Step(Do.WAIT, note=f"card not read ({code_name(code)}): present it again")
        if code != SCARD_S_SUCCESS:
            return Step(Do.WAIT, note=f"card not read: {code_name(code)}")
        return Step(Do.WAIT, note=detail)

    # -- the one way back

    def _lose(self, phase: Phase, why: str, *, quiet: bool = False) -> Step:
        """Every card counts as removed; a new context after the retry interval."""
        self._lost = True
        self.read_count = None
        self.known_state = SCARD_STATE_UNAWARE
        return self._retry(phase, f"{why}; every card taken as removed, new context in {self.retry_interval_ms} ms",
                           quiet=quiet)

    def _retry(self, phase: Phase, why: str, *, quiet: bool) -> Step:
        self.phase = phase
        return Step(Do.ESTABLISH, delay_ms=self.retry_interval_ms, note=None if quiet else why)
