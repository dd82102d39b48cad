"""The ledger state machine: one place where every request and command is decided.

    machine = Machine(state, journal, limits)
    reply = machine.hello(device_id, hello, now_ms)           # HelloAck or Nak (refused: close)
    reply = machine.request(device, event, now_ms, frame_ns)  # Decision, Nak, Heartbeat or PupilInfo
    result = machine.command(seq, kind, payload, original, now_ms, frame_ns)
    moved = machine.on_durable(entries)                       # devices whose watermark moved

Pure: no await, no I/O, no clock (time is passed in). ``journal`` is anything
with ``has_room()`` and ``append(entry)`` (the shell's group-commit writer, a
list in the tests). Everything a decision changes happens inside one call:
idempotency window, back-pressure, rules, commit, low-balance crossing, the
journal entry with its account checkpoints and outbox events.

A restart does not replay a second implementation of anything: balances and
day counters come back from the checkpoints the machine itself wrote with every
entry (``LedgerState.restore``), and the idempotency window from the journal
rows through ``recall``, which builds each stored decision with the same
function the live path uses.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import msgspec

from protocol import (
    DECISION_FLAG_DUPLICATE,
    NO_ITEM_INDEX,
    BalanceQuery,
    CardPresented,
    Decision,
    DenyReason,
    DeviceKind,
    Direction,
    FireAlarm,
    FireReset,
    Heartbeat,
    Hello,
    HelloAck,
    AllowanceSync,
    ListSync,
    Mode,
    ModeApplied,
    Nak,
    NakReason,
    Passage,
    PupilInfo,
    PupilInfoQuery,
    Purchase,
    TopupCash,
    TurnstileMode,
)
from protocol.auth import hello_key
from protocol.items import encode_items
from protocol.limits import TXN_GAP_MAX

from .codes import AccessKind, AccountKind, CommandKind, CommandStatus, JournalKind, OutboxKind
from .notices import BankTopupNotice, CashTopupNotice, EntryNotice, ExitNotice, LowBalanceNotice, PurchaseNotice
from .records import (
    AccessEvent,
    AccountCheckpoint,
    AccountCounters,
    CommandResult,
    JournalEntry,
    JournalRow,
    OutboxEvent,
)
from .rules import (
    BALANCE_SHOWN_ON_DENY,
    KIND_BALANCE,
    KIND_ENTRY,
    KIND_ESCORT,
    KIND_FIRE_ALARM,
    KIND_FIRE_RESET,
    KIND_PASSAGE,
    KIND_PURCHASE,
    KIND_TOPUP,
    OK,
    AMOUNT_INVALID,
    INSUFFICIENT_FUNDS,
    ANTI_PASSBACK,
    NO_GRANT,
    Original,
    Verdict,
    accept_template,
    authorize_balance,
    authorize_command,
    authorize_entry,
    authorize_passage,
    authorize_purchase,
    authorize_topup,
    commit,
)
from .state import Alarm, DeviceState, Grant, LedgerState, RequestFingerprint, request_fingerprint, same_request

ACCEPT, DENY = 1, 0
TRY_AGAIN_LATER = int(DenyReason.TRY_AGAIN_LATER)
TXN_TOO_OLD = int(DenyReason.TXN_TOO_OLD)
_KIND_OF = {
    CardPresented: KIND_ENTRY, Passage: KIND_PASSAGE, Purchase: KIND_PURCHASE, TopupCash: KIND_TOPUP,
    FireAlarm: KIND_FIRE_ALARM, FireReset: KIND_FIRE_RESET,
}
_PUPIL = int(AccountKind.PUPIL)
_APPLIED = int(CommandStatus.APPLIED)
_REFUSED = int(CommandStatus.REFUSED)
_NO_COUNTERS = AccountCounters()  # the counters of a non-pupil account: always empty
_GRANT_EXPIRED = int(AccessKind.GRANT_EXPIRED)
_PASSBACK_VIOLATION = int(AccessKind.PASSBACK_VIOLATION)
_PASSBACK_DENIED = int(AccessKind.PASSBACK_DENIED)
_PRESENCE_RESET = int(AccessKind.PRESENCE_RESET)
_FIRE_ALARM = int(AccessKind.FIRE_ALARM)
_MUSTERED = int(AccessKind.MUSTERED)
_TURNSTILE_RELEASED = int(AccessKind.TURNSTILE_RELEASED)
_FIRE_RESET = int(AccessKind.FIRE_RESET)
_ESCORTED = int(AccessKind.ESCORTED)
_WRONG_DEVICE_KIND = int(DenyReason.WRONG_DEVICE_KIND)
_WRONG_SCHOOL = int(DenyReason.WRONG_SCHOOL)
_FIRE_PANEL = int(DeviceKind.FIRE_PANEL)
_TURNSTILE = int(DeviceKind.TURNSTILE)
_TILL = int(DeviceKind.TILL)
_RELEASED = int(TurnstileMode.RELEASED)
_NORMAL = int(TurnstileMode.NORMAL)
# Grants waiting for their expiry check. The shell checks every second, so this holds
# a few seconds of entries (15 s at 13k taps/s is 200 k); the bound only matters where
# nobody checks (the machine benchmarked alone), and then the oldest are forgotten.
GRANT_EXPIRIES_MAX = 1_000_000
# After a restart, grants whose expiry was due longer ago than this were recorded before the
# stop (the check runs every second): only the newer ones are checked again.
GRANT_RECALL_LOOKBACK_MS = 60_000
# Expiries in one journal entry: one group commit stays small however many expire at once.
EXPIRED_PER_ENTRY_MAX = 1_000


class SecurityEvent:
    """Names of ecard_security_events_total{event}: a device broke the protocol on purpose or by a bug."""

    ADVICE_TOPUP_ABOVE_CAP = "advice_topup_above_cap"
    HELLO_WATERMARK_AHEAD = "hello_watermark_ahead"
    TXN_OUT_OF_RANGE = "txn_out_of_range"
    TXN_REUSED = "txn_reused"
    PASSAGE_WITHOUT_GRANT = "passage_without_grant"
    GRANT_EXPIRY_UNRECORDED = "grant_expiry_unrecorded"

    ALL = (ADVICE_TOPUP_ABOVE_CAP, HELLO_WATERMARK_AHEAD, TXN_OUT_OF_RANGE, TXN_REUSED, PASSAGE_WITHOUT_GRANT,
           GRANT_EXPIRY_UNRECORDED)


class MachineLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits the machine decides by (from the gateway's Config)."""

    idempotency_window_txns: int  # decisions remembered per device beyond the undurable ones
    topup_kopecks_max: int  # the largest cash top-up a till may take in one go
    command_amount_kopecks_max: int  # the largest money command
    hello_clock_skew_ms_max: int  # a HELLO's device clock may be this far off
    offline_window_ms: int  # an advice is judged at its own time if it happened within this
    reader_clock_skew_ms: int  # a reader's clock may be this far off the gateway's
    heartbeat_interval_ms: int  # told to the device in HELLO_ACK
    # A grant opens the turnstile's arm for this long (the turnstile's own timer); a
    # PASSAGE later than that after its grant, on the turnstile's clock, is GRANT_EXPIRED.
    passage_window_ms: int = 10_000
    # How long after the window a PASSAGE report may still be on its way (a retransmit,
    # a reconnect) before the grant is recorded as expired, unused.
    passage_report_ms_max: int = 5_000


class Tally:
    """Plain-integer counters of everything decided (exported by the shell's collector)."""

    __slots__ = ("decisions", "naks", "security", "reader_time_rejected")

    def __init__(self) -> None:
        self.decisions = [[0] * (max(DenyReason) + 1) for _ in range(max(JournalKind) + 1)]
        self.naks = [0] * (max(NakReason) + 1)
        self.security = dict.fromkeys(SecurityEvent.ALL, 0)
        self.reader_time_rejected = 0  # advices judged at the gateway's time: reader clock outside the window

    def decision_count(self) -> int:
        return sum(map(sum, self.decisions))


class JournalSink(Protocol):
    def has_room(self) -> bool: ...

    def append(self, entry: JournalEntry) -> None: ...


def stored_decision(row: JournalRow) -> Decision:
    """The DECISION of an accepted journal row: what the device was told (live and after a restart)."""
    kind = row.kind
    shown = row.balance_after_kopecks if kind == KIND_PURCHASE or kind == KIND_TOPUP else 0
    template, params = accept_template(kind, row.direction or 0, row.amount_kopecks, shown)
    return Decision(row.device_txn, ACCEPT, OK, 0, shown, NO_ITEM_INDEX, template, params)


def _fingerprint(request) -> RequestFingerprint:
    """What the device asked under its txn (ledger.state.RequestFingerprint)."""
    return request_fingerprint(_KIND_OF[type(request)], getattr(request, "identifier", b""), request.reader_time_ms)


def stored_fingerprint(row: JournalRow) -> RequestFingerprint:
    """The same of a journal row, after a restart: a trusted person's entry was a CARD_PRESENTED
    too, and the reader's time is None where the row kept none (then any matches)."""
    kind = KIND_ENTRY if row.kind == KIND_ESCORT else row.kind
    return request_fingerprint(kind, bytes(row.identifier), row.device_time_ms)


class Machine:
    __slots__ = ("state", "journal", "limits", "tally", "_window", "_earliest_ms", "_skew_ms", "_expiries",
                 "mode_changes")

    def __init__(self, state: LedgerState, journal: JournalSink, limits: MachineLimits) -> None:
        self.state = state
        self.journal = journal
        self.limits = limits
        self.tally = Tally()
        self._window = limits.idempotency_window_txns
        self._earliest_ms = limits.offline_window_ms + limits.reader_clock_skew_ms
        self._skew_ms = limits.reader_clock_skew_ms
        # Grants in the order they were made: (gateway time after which an unused one is
        # recorded as expired, device id, txn). Bounded like the grants themselves.
        self._expiries: deque[tuple[int, int, int]] = deque()
        # (school id, TurnstileMode) the turnstiles of a school must be told, in order: the
        # shell drains it after each call and sends MODE to every turnstile session there
        # (the mode now in force: ``mode_of``).
        self.mode_changes: list[tuple[int, int]] = []

    # ---------------------------------------------------------------- sessions

    def hello(self, device_id: int, hello: Hello, now_ms: int) -> HelloAck | Nak:
        """Authenticate a HELLO. A Nak is a refusal: the shell closes the connection."""
        device = self.state.devices.get(device_id)
        reason, detail = None, ""
        if device is None:
            reason, detail = NakReason.UNKNOWN_DEVICE, f"device {device_id} is not registered"
        elif device.revoked:
            reason, detail = NakReason.DEVICE_REVOKED, f"device {device_id} is revoked"
        elif hello_key((device.key, device.next_key), device_id, hello) is None:
            reason, detail = NakReason.AUTH_FAILED, "bad HELLO MAC"
        elif abs(hello.device_time_ms - now_ms) > self.limits.hello_clock_skew_ms_max:
            reason, detail = NakReason.AUTH_FAILED, "device clock too far off"
        elif hello.nonce in device.nonces:
            reason, detail = NakReason.AUTH_FAILED, "HELLO replayed"
        elif hello.kind != device.kind:
            reason, detail = NakReason.AUTH_FAILED, "device kind differs from its registration"
        if reason is not None:
            self.tally.naks[reason] += 1
            return Nak(int(reason), detail)
        assert device is not None
        device.nonces.append(hello.nonce)
        device.session_last_txn = 0
        device.ack_pending = False
        if hello.durable_txn > device.durable_txn:
            # The device saw a higher watermark than we have: a database restore, or a
            # device from elsewhere. Nothing to do but count it (spec section 10).
            self.tally.security[SecurityEvent.HELLO_WATERMARK_AHEAD] += 1
        return HelloAck(now_ms, device.durable_txn, self.limits.heartbeat_interval_ms)

    # ---------------------------------------------------------------- requests

    def request(self, device: DeviceState, event, now_ms: int, frame_ns: int):
        cls = type(event)
        if cls in _KIND_OF:  # a transaction: nearly every request
            return self._transaction(device, event, now_ms, frame_ns)
        if cls is Heartbeat:
            return Heartbeat(now_ms)
        if cls is BalanceQuery:
            return self._balance(device, event, now_ms)
        if cls is PupilInfoQuery:
            return self._pupil_info(device, event, now_ms)
        if cls is ListSync:
            if device.kind != _TURNSTILE:
                return Decision(0, DENY, _WRONG_DEVICE_KIND, 0, 0, NO_ITEM_INDEX, _WRONG_DEVICE_KIND, ())
            lists = self.state.lists
            if lists is None:  # the shell builds them at load; a bare machine (tests) at first use
                lists = self.state.build_lists(now_ms // 1000)
            return lists.page(device.school_id, event.version, event.after)
        if cls is AllowanceSync:
            if device.kind != _TILL:
                return Decision(0, DENY, _WRONG_DEVICE_KIND, 0, 0, NO_ITEM_INDEX, _WRONG_DEVICE_KIND, ())
            if self.state.allowances is None:  # built with the lists at load; a bare machine at first use
                self.state.build_lists(now_ms // 1000)
            return self.state.allowances.page(self.state, device, event.version, now_ms)  # type: ignore[union-attr]
        if cls is ModeApplied:
            if self.turnstile_mode(device, event.mode, event.alarm_at_ms, now_ms, frame_ns) != event.mode:
                self.mode_changes.append((device.school_id, -1))  # -1: whatever the school's alarm says
            return Heartbeat(now_ms)
        return self._transaction(device, event, now_ms, frame_ns)

    def _nak(self, reason: NakReason, detail: str) -> Nak:
        self.tally.naks[reason] += 1
        return Nak(int(reason), detail)

    def _balance(self, device: DeviceState, request: BalanceQuery, now_ms: int) -> Decision:
        verdict = authorize_balance(self.state, device, request, now_ms)
        self.tally.decisions[KIND_BALANCE][verdict.reason] += 1
        if verdict.reason == OK:
            balance = self.state.accounts.balance[verdict.account_id]
            template, params = accept_template(KIND_BALANCE, 0, 0, balance)
            return Decision(0, ACCEPT, OK, 0, balance, NO_ITEM_INDEX, template, params)
        return Decision(0, DENY, verdict.reason, 0, 0, NO_ITEM_INDEX, verdict.reason, verdict.params)

    def _pupil_info(self, device: DeviceState, request: PupilInfoQuery, now_ms: int) -> PupilInfo:
        """Photo reference, the parent's note and today's pre-order: what the cashier needs."""
        state = self.state
        verdict = authorize_balance(state, device, BalanceQuery(request.identifier), now_ms)
        if verdict.reason != OK:
            return PupilInfo(DENY, verdict.reason)
        account_id = verdict.account_id
        controls = state.controls.get(account_id)
        note = controls.cashier_note if controls is not None else ""
        day = state.day_of(device.school_id, now_ms)
        lines = state.preorders.get(account_id, {}).get(day, ())
        return PupilInfo(ACCEPT, OK, state.photo_refs.get(account_id, ""), note, lines)

    def judged_at(self, request, now_ms: int) -> tuple[int, int | None]:
        """(the time the rules judge ``request`` at, the reader time to journal or None).

        Live requests are judged now. An advice is judged at the reader's time when
        that lies inside [now - offline window - skew, now + skew]; outside, at the
        gateway's time, and the reader's time is not journaled (its clock was off).
        """
        reader_ms = request.reader_time_ms
        plausible = now_ms - self._earliest_ms <= reader_ms <= now_ms + self._skew_ms
        if not request.advice:
            return now_ms, reader_ms if plausible else None
        if plausible:
            return reader_ms, reader_ms
        self.tally.reader_time_rejected += 1
        return now_ms, None

    def _transaction(self, device: DeviceState, request, now_ms: int, frame_ns: int):
        txn = request.txn
        if txn <= device.session_last_txn:
            return self._nak(NakReason.TXN_OUT_OF_ORDER, f"txn {txn} after {device.session_last_txn}")
        if txn - device.txn_seen_max > TXN_GAP_MAX:
            self.tally.security[SecurityEvent.TXN_OUT_OF_RANGE] += 1
            return self._nak(NakReason.TXN_OUT_OF_RANGE, f"txn {txn} more than 2^32 above {device.txn_seen_max}")
        kind = _KIND_OF[type(request)]
        tally = self.tally
        previous = device.recent.get(txn)
        if previous is not None:
            if not same_request(device.recent_requests[txn], kind, getattr(request, "identifier", b""),
                                request.reader_time_ms):
                # Another request under a txn this device used already: its counter went back
                # (its storage lost or restored, a spare with its id). The stored decision is
                # not this request's: answering it with DUPLICATE would open a turnstile for
                # someone else's grant, or swallow a fire alarm. Nothing decided; the txn does
                # not count as sent: the device moves its counter and sends it again (10.15).
                tally.security[SecurityEvent.TXN_REUSED] += 1
                return self._nak(NakReason.TXN_REUSED, f"txn {txn} was another request of this device")
            device.session_last_txn = txn
            tally.decisions[kind][previous.reason] += 1
            if previous.outcome and txn <= device.durable_txn:
                # Already durable: the device can drop it only on a watermark that comes
                # after this DECISION in this session (spec 10.3), so one goes out with it.
                device.ack_pending = True
            return msgspec.structs.replace(previous, flags=DECISION_FLAG_DUPLICATE)
        if txn <= device.forgotten_txn_max:
            device.session_last_txn = txn
            tally.decisions[kind][TXN_TOO_OLD] += 1
            return Decision(txn, DENY, TXN_TOO_OLD, 0, 0, NO_ITEM_INDEX, TXN_TOO_OLD, ())
        if not self.journal.has_room():
            if request.advice:
                # An advice is never declined: the device keeps it and sends it again
                # later (in this session too: its txn does not count as sent).
                return self._nak(NakReason.SERVER_BUSY, "journal full, replay later")
            device.session_last_txn = txn
            tally.decisions[kind][TRY_AGAIN_LATER] += 1
            return Decision(txn, DENY, TRY_AGAIN_LATER, 0, 0, NO_ITEM_INDEX, TRY_AGAIN_LATER, ())
        device.session_last_txn = txn
        if txn > device.txn_seen_max:
            device.txn_seen_max = txn
        if kind == KIND_FIRE_ALARM or kind == KIND_FIRE_RESET:
            return self._fire_request(device, kind, request, now_ms, frame_ns)
        advice = request.advice  # a property: read once, passed on
        if advice:
            at_ms, reader_ms = self.judged_at(request, now_ms)
        else:  # judged_at's live branch, inline: most requests are live
            at_ms = now_ms
            reader_ms = request.reader_time_ms
            if not now_ms - self._earliest_ms <= reader_ms <= now_ms + self._skew_ms:
                reader_ms = None
        state = self.state
        if kind == KIND_PURCHASE:
            verdict = authorize_purchase(state, device, request, at_ms)
        elif kind == KIND_ENTRY:
            verdict = authorize_entry(state, device, request, at_ms)
        elif kind == KIND_PASSAGE:
            verdict = authorize_passage(state, device, request, at_ms, self.limits.passage_window_ms)
        else:
            verdict = authorize_topup(state, device, request, at_ms, self.limits.topup_kopecks_max)
        if verdict.reason != OK:
            return self._deny(device, kind, request, verdict, advice, at_ms, frame_ns)
        return self._accept(device, kind, request, verdict, now_ms, at_ms, reader_ms, frame_ns, advice)

    def _deny(
        self, device: DeviceState, kind: int, request, verdict: Verdict, advice: bool, at_ms: int, frame_ns: int
    ) -> Decision:
        txn = request.txn
        reason = verdict.reason
        self.tally.decisions[kind][reason] += 1
        if advice and reason == AMOUNT_INVALID:
            self.tally.security[SecurityEvent.ADVICE_TOPUP_ABOVE_CAP] += 1
        elif reason == NO_GRANT:
            self.tally.security[SecurityEvent.PASSAGE_WITHOUT_GRANT] += 1
        if reason == INSUFFICIENT_FUNDS and kind == KIND_PURCHASE and not advice and verdict.reserved:
            # Refused for money another till may still spend alone: it moves here (ledger.allowance).
            self.state.allowances.wanted_at(verdict.account_id, device.device_id, verdict.identifier)  # type: ignore[union-attr]
        balance = 0
        if reason in BALANCE_SHOWN_ON_DENY and not advice and device.kind == DeviceKind.TILL:
            # Only once the card and school checks passed (an advice skips them).
            balance = self.state.accounts.balance[verdict.account_id]
        decision = Decision(txn, DENY, reason, 0, balance, verdict.item_index, reason, verdict.params)
        device.remember(txn, decision, self._window, _fingerprint(request))
        if reason == ANTI_PASSBACK:
            # Refused at the door: the guard's log keeps it (a retransmit is answered from
            # the window; after a restart its record is not written twice: same key).
            event = AccessEvent(_PASSBACK_DENIED, device.school_id, verdict.account_id, device.device_id, txn,
                                verdict.direction, at_ms, verdict.passback)
            self.journal.append(JournalEntry(None, (), (), None, frame_ns, (event,)))
        return decision

    def _accept(
        self, device: DeviceState, kind: int, request, verdict: Verdict, now_ms: int, at_ms: int,
        reader_ms: int | None, frame_ns: int, advice: bool,
    ) -> Decision:
        state = self.state
        _, _, alert = commit(state, verdict, at_ms)
        kind = verdict.kind  # a card presented may be a trusted person's (KIND_ESCORT)
        account_id = verdict.account_id
        accounts = state.accounts
        pupil_balance = accounts.balance[account_id]
        direction = cashier = items = granted = grant = None
        access = ()
        txn = request.txn
        amount = verdict.amount_kopecks
        debit, credit = verdict.debit_account_id, verdict.credit_account_id
        checkpoints = self._checkpoints(debit, credit) if amount else ()
        if kind == KIND_PURCHASE:
            items = encode_items(request.items)
            allowances = state.allowances
            if allowances is not None:
                # The till lowered its own allowance of the card by the total (online or not).
                allowances.spent(device.device_id, request.identifier, account_id, request.total_kopecks,
                                 not advice, state.policy(device.school_id).offline_floor_kopecks > 0)
        elif kind == KIND_TOPUP:
            cashier = request.cashier_id
        else:
            direction = request.direction
            if kind == KIND_PASSAGE:
                granted = request.granted_txn
                grant = device.grants[granted]
                if account_id:
                    checkpoints = (accounts.checkpoint(account_id),)  # its presence moved
                    if grant.escort:
                        access = (AccessEvent(_ESCORTED, device.school_id, account_id, device.device_id, txn,
                                              direction, at_ms,
                                              f"representative {grant.escort_id}: {grant.escort} ({grant.escort_relation})"),)
            elif verdict.passback:
                access = (AccessEvent(_PASSBACK_VIOLATION, device.school_id, account_id, device.device_id, txn,
                                      direction, at_ms, verdict.passback),)
        row = JournalRow(
            device.device_id, txn, kind, account_id, request.identifier, direction, debit or None, credit or None,
            amount, pupil_balance, advice, reader_ms, now_ms, at_ms, cashier, items, granted,
        )
        # Parents hear of passages, purchases and top-ups (_notice); a grant (entry) tells nobody.
        notice = (self._notice(kind, device, request, verdict, pupil_balance, at_ms, grant)
                  if account_id and (kind == KIND_PURCHASE or kind == KIND_PASSAGE or kind == KIND_TOPUP) else None)
        if notice is None:
            outbox = (self._low_balance(alert, f"{device.device_id}:{txn}", now_ms),) if alert else ()
        else:
            key = f"{device.device_id}:{txn}"
            tag = type(notice).__struct_config__.tag
            event = OutboxEvent(f"{key}:{tag}", tag, account_id, notice, now_ms)
            outbox = (event, self._low_balance(alert, key, now_ms)) if alert else (event,)
        self.journal.append(JournalEntry(row, checkpoints, outbox, None, frame_ns, access))
        self.tally.decisions[kind][OK] += 1
        # Turnstile screens are seen by the whole queue: they never show a balance.
        shown = pupil_balance if kind == KIND_PURCHASE or kind == KIND_TOPUP else 0
        template, params = accept_template(kind, direction or 0, amount, shown)
        decision = Decision(txn, ACCEPT, OK, 0, shown, NO_ITEM_INDEX, template, params)
        device.undurable.add(txn)
        device.remember(txn, decision, self._window, _fingerprint(request))
        if kind == KIND_ENTRY:
            escort = relation = ""
            if verdict.escort_id:
                adult = device.escort[0]  # type: ignore[index]  # the rules read it just now
                escort, relation = adult.name, adult.relation
                device.escort = None  # one child per adult's tap; the next child, the next tap
            self._grant(device, txn, Grant(request.identifier, account_id, direction, request.reader_time_ms, now_ms,
                                           verdict.escort_id, escort, relation))
        elif kind == KIND_ESCORT:
            device.escort = (state.escorts[request.identifier], now_ms)
            self._grant(device, txn, Grant(request.identifier, 0, direction, request.reader_time_ms, now_ms))
        elif kind == KIND_PASSAGE:
            del device.grants[granted]  # used up: one opening, one person
        return decision

    def _grant(self, device: DeviceState, txn: int, grant: Grant) -> None:
        device.grant(txn, grant, self._window)
        expiries = self._expiries
        limits = self.limits
        expiries.append((grant.decided_at_ms + limits.passage_window_ms + limits.passage_report_ms_max,
                         device.device_id, txn))
        if len(expiries) > GRANT_EXPIRIES_MAX:
            expiries.popleft()  # nobody ticks (a bench of the machine alone): forget the oldest
            self.tally.security[SecurityEvent.GRANT_EXPIRY_UNRECORDED] += 1

    # ---------------------------------------------------------------- the building

    def expire_grants(self, now_ms: int, frame_ns: int) -> int:
        """Record the grants nobody went through (the shell calls this every second or so).

        A grant is expired once ``passage_window_ms + passage_report_ms_max`` passed on
        the gateway's clock without its PASSAGE. It stays usable: a PASSAGE the turnstile
        reports later with its own times inside the window (after a reconnect) still
        counts; the device's report is the truth. Returns how many were recorded.
        """
        expiries = self._expiries
        if not expiries or expiries[0][0] > now_ms or not self.journal.has_room():
            return 0
        devices = self.state.devices
        events = []
        window_ms = self.limits.passage_window_ms
        while expiries and expiries[0][0] <= now_ms and len(events) < EXPIRED_PER_ENTRY_MAX:
            _, device_id, txn = expiries.popleft()
            device = devices.get(device_id)
            grant = device.grants.get(txn) if device is not None else None
            if grant is None:
                continue  # went through (or the window forgot it)
            events.append(AccessEvent(_GRANT_EXPIRED, device.school_id, grant.account_id, device_id, txn,
                                      grant.direction, grant.decided_at_ms + window_ms, ""))
        if events:
            self.journal.append(JournalEntry(None, (), (), None, frame_ns, tuple(events)))
        return len(events)

    # ---------------------------------------------------------------- fire alarm

    def _fire(self, kind: int, school_id: int, device_id: int, txn: int, source: str, now_ms: int) -> tuple:
        """Raise (``KIND_FIRE_ALARM``) or reset a school's alarm. Idempotent: raising a
        raised alarm or resetting a quiet school changes nothing. Returns the access events
        to journal with the request's row.

        Raising takes the muster at that instant (who is inside, from the passages) and
        queues MODE RELEASED for the school's turnstiles; resetting queues MODE NORMAL and
        reconciles the school's presence (everyone left unread through released turnstiles,
        so nobody may be refused re-entry by anti-passback)."""
        state = self.state
        alarm = state.alarms.get(school_id)
        if kind == KIND_FIRE_ALARM:
            if alarm is not None:
                return ()
            state.alarms[school_id] = Alarm(school_id, device_id, txn, now_ms, source)
            self.mode_changes.append((school_id, _RELEASED))
            muster = [AccessEvent(_MUSTERED, school_id, account_id, device_id, txn, None, now_ms, "")
                      for account_id in state.inside(school_id, now_ms)]
            return (AccessEvent(_FIRE_ALARM, school_id, 0, device_id, txn, None, now_ms, source), *muster)
        if alarm is None:
            return ()
        del state.alarms[school_id]
        state.presence_reset_ms[school_id] = now_ms
        self.mode_changes.append((school_id, _NORMAL))
        return (
            AccessEvent(_FIRE_RESET, school_id, 0, device_id, txn, None, now_ms, f"{source}; alarm {alarm.key}"),
            AccessEvent(_PRESENCE_RESET, school_id, 0, device_id, txn, None, now_ms, "evacuation"),
        )

    def _fire_request(self, device: DeviceState, kind: int, request, now_ms: int, frame_ns: int) -> Decision:
        """FIRE_ALARM / FIRE_RESET from a fire panel: journaled like any txn (the panel keeps
        it until durable), the alarm judged at the gateway's time (it is happening now)."""
        txn = request.txn
        if device.kind != _FIRE_PANEL:
            return self._deny(device, kind, request, Verdict(_WRONG_DEVICE_KIND, kind), request.advice, now_ms, frame_ns)
        access = self._fire(kind, device.school_id, device.device_id, txn, f"panel {device.device_id}", now_ms)
        row = JournalRow(device.device_id, txn, kind, 0, b"", None, None, None, 0, 0, request.advice,
                         request.reader_time_ms, now_ms, now_ms, None, None)
        self.journal.append(JournalEntry(row, (), (), None, frame_ns, access))
        self.tally.decisions[kind][OK] += 1
        template, params = accept_template(kind, 0, 0, 0)
        decision = Decision(txn, ACCEPT, OK, 0, 0, NO_ITEM_INDEX, template, params)
        device.undurable.add(txn)
        device.remember(txn, decision, self._window, _fingerprint(request))
        return decision

    def mode_of(self, school_id: int) -> Mode:
        """The MODE a turnstile of the school must be in now (sent after HELLO_ACK too)."""
        alarm = self.state.alarms.get(school_id)
        return Mode(_NORMAL, 0) if alarm is None else Mode(_RELEASED, alarm.raised_at_ms)

    def turnstile_mode(self, device: DeviceState, mode: int, alarm_at_ms: int, now_ms: int, frame_ns: int) -> int:
        """A turnstile confirms the mode it is in (MODE_APPLIED). A release for its school's
        current alarm is recorded once (the time all turnstiles took to open). Returns the
        mode it should be in: the shell sends MODE again if they differ."""
        alarm = self.state.alarms.get(device.school_id)
        expected = _RELEASED if alarm is not None else _NORMAL
        if (
            alarm is not None
            and device.kind == _TURNSTILE
            and mode == _RELEASED
            and alarm_at_ms == alarm.raised_at_ms
            and device.device_id not in alarm.released
            and self.journal.has_room()
        ):
            alarm.released[device.device_id] = now_ms
            event = AccessEvent(_TURNSTILE_RELEASED, device.school_id, 0, device.device_id, alarm.raised_at_ms, None,
                                now_ms, alarm.key)
            self.journal.append(JournalEntry(None, (), (), None, frame_ns, (event,)))
        return expected

    def reset_presence(self, school_id: int, now_ms: int, detail: str, frame_ns: int) -> bool:
        """Reconcile a school's presence (after an evacuation): nobody counts as inside or
        outside any more, so every pupil may enter again under anti-passback. Journaled,
        so a restart keeps it. False when the journal has no room (try again)."""
        if not self.journal.has_room():
            return False
        self.state.presence_reset_ms[school_id] = now_ms
        event = AccessEvent(_PRESENCE_RESET, school_id, 0, 0, 0, None, now_ms, detail)
        self.journal.append(JournalEntry(None, (), (), None, frame_ns, (event,)))
        return True

    def _checkpoints(self, debit: int, credit: int) -> tuple[AccountCheckpoint, AccountCheckpoint]:
        accounts = self.state.accounts
        kind = accounts.kind
        balance = accounts.balance
        return (
            accounts.checkpoint(debit) if kind[debit] == _PUPIL else AccountCheckpoint(debit, balance[debit], _NO_COUNTERS),
            accounts.checkpoint(credit) if kind[credit] == _PUPIL else AccountCheckpoint(credit, balance[credit], _NO_COUNTERS),
        )

    def _notice(self, kind: int, device: DeviceState, request, verdict: Verdict, balance: int, at_ms: int,
                grant: Grant | None = None):
        """What the pupil's parents hear of an accepted request (None: nothing; the
        turnstile's grant is not an entry until the PASSAGE)."""
        account_id, school_id = verdict.account_id, device.school_id
        if kind == KIND_PASSAGE:
            cls = EntryNotice if request.direction == Direction.IN else ExitNotice
            return cls(account_id=account_id, school_id=school_id, at_ms=at_ms, device_id=device.device_id,
                       escort=grant.escort if grant is not None else "",
                       escort_relation=grant.escort_relation if grant is not None else "")
        if kind == KIND_PURCHASE:
            return PurchaseNotice(
                account_id=account_id, school_id=school_id, at_ms=at_ms, device_id=device.device_id,
                amount_kopecks=verdict.amount_kopecks, balance_kopecks=balance, items=request.items,
                free_meal=verdict.free_meal,
            )
        if kind == KIND_TOPUP:
            return CashTopupNotice(
                account_id=account_id, school_id=school_id, at_ms=at_ms, device_id=device.device_id,
                amount_kopecks=verdict.amount_kopecks, balance_kopecks=balance,
            )
        return None

    def _low_balance(self, account_id: int, key: str, now_ms: int) -> OutboxEvent:
        """The event for a balance that just fell below its school's threshold (one per crossing)."""
        state = self.state
        accounts = state.accounts
        school_id = accounts.school[account_id]
        notice = LowBalanceNotice(
            account_id=account_id, school_id=school_id, at_ms=now_ms, balance_kopecks=accounts.balance[account_id],
            threshold_kopecks=state.policy(school_id).low_balance_threshold_kopecks,
        )
        tag = OutboxKind.LOW_BALANCE.value
        return OutboxEvent(f"{key}:{tag}", tag, account_id, notice, now_ms)

    # ---------------------------------------------------------------- money commands

    def command(
        self, seq: int, kind_name: str, payload: object, original: Original | None, now_ms: int, frame_ns: int
    ) -> CommandResult:
        """Decide a money command (staff API, payments) and journal it with its result.

        Journaled with device_id 0 and device_txn = seq; the result is stored in the
        same group commit. The caller must check ``journal.has_room()`` first.
        """
        assert self.journal.has_room(), "the caller checks for room before taking a command"
        kind = CommandKind.__members__.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None or type(payload) is not dict:
            return self._refuse_command(seq, {"reason": "MALFORMED", "detail": "unknown kind or payload"}, now_ms,
                                        frame_ns)
        if kind is CommandKind.fire_alarm or kind is CommandKind.fire_reset:
            return self._fire_command(seq, int(kind), payload, now_ms, frame_ns)
        verdict = authorize_command(self.state, kind, payload, original, self.limits.command_amount_kopecks_max,
                                     self.limits.topup_kopecks_max)
        self.tally.decisions[verdict.kind][verdict.reason] += 1
        if verdict.reason != OK:
            refusal = {"reason": DenyReason(verdict.reason).name, "params": list(verdict.params)}
            return self._refuse_command(seq, refusal, now_ms, frame_ns)
        _, _, alert = commit(self.state, verdict, now_ms)
        balances = self.state.accounts.balance
        debit, credit = verdict.debit_account_id, verdict.credit_account_id
        result = CommandResult(
            seq,
            _APPLIED,
            {
                "reason": "OK",
                "amount_kopecks": verdict.amount_kopecks,
                "balances": {str(debit): balances[debit], str(credit): balances[credit]},
                "journal": {"device_id": 0, "device_txn": seq},
            },
            now_ms,
        )
        if kind is CommandKind.refund:
            result.result["refund_of"] = [payload["device_id"], payload["device_txn"]]
        account_id = verdict.account_id
        row = JournalRow(
            0, seq, verdict.kind, account_id, b"", None, debit, credit, verdict.amount_kopecks,
            balances[account_id], False, now_ms, now_ms, now_ms, None, None,
        )
        outbox = (self._low_balance(alert, f"0:{seq}", now_ms),) if alert else ()
        if kind is CommandKind.bank_topup:
            notice = BankTopupNotice(
                account_id=account_id, school_id=self.state.accounts.school[account_id], at_ms=now_ms,
                amount_kopecks=verdict.amount_kopecks, balance_kopecks=balances[account_id],
            )
            tag = OutboxKind.BANK_TOPUP.value
            outbox = (OutboxEvent(f"0:{seq}:{tag}", tag, account_id, notice, now_ms),) + outbox
        elif kind is CommandKind.cash_topup:
            # The parents hear of cash taken at the office as of cash taken at a till (no device).
            notice = CashTopupNotice(
                account_id=account_id, school_id=self.state.accounts.school[account_id], at_ms=now_ms,
                device_id=0, amount_kopecks=verdict.amount_kopecks, balance_kopecks=balances[account_id],
            )
            tag = OutboxKind.CASH_TOPUP.value
            outbox = (OutboxEvent(f"0:{seq}:{tag}", tag, account_id, notice, now_ms),) + outbox
        self.journal.append(JournalEntry(row, self._checkpoints(debit, credit), outbox, result, frame_ns))
        return result

    def _fire_command(self, seq: int, kind: int, payload: dict, now_ms: int, frame_ns: int) -> CommandResult:
        """A school officer raises or resets the alarm: payload {"school_id", "by"}."""
        school_id, by = payload.get("school_id"), payload.get("by")
        if type(school_id) is not int or school_id not in self.state.school_offset_ms or type(by) is not str:
            self.tally.decisions[kind][_WRONG_SCHOOL] += 1
            return self._refuse_command(seq, {"reason": "WRONG_SCHOOL", "params": []}, now_ms, frame_ns)
        active = self.state.alarms.get(school_id)
        access = self._fire(kind, school_id, 0, seq, f"staff {by}", now_ms)
        alarm = self.state.alarms.get(school_id) or active
        result = CommandResult(seq, _APPLIED, {
            "reason": "OK",
            "changed": bool(access),
            "alarm": None if alarm is None else {"key": alarm.key, "raised_at_ms": alarm.raised_at_ms,
                                                 "source": alarm.source},
            "mustered": sum(1 for e in access if e.kind == _MUSTERED),
            "journal": {"device_id": 0, "device_txn": seq},
        }, now_ms)
        row = JournalRow(0, seq, kind, 0, b"", None, None, None, 0, 0, False, now_ms, now_ms, now_ms, None, None)
        self.tally.decisions[kind][OK] += 1
        self.journal.append(JournalEntry(row, (), (), result, frame_ns, access))
        return result

    def _refuse_command(self, seq: int, refusal: dict, now_ms: int, frame_ns: int) -> CommandResult:
        result = CommandResult(seq, _REFUSED, refusal, now_ms)
        self.journal.append(JournalEntry(None, (), (), result, frame_ns))
        return result

    # ---------------------------------------------------------------- durability and restart

    def on_durable(self, entries: list[JournalEntry]) -> list[DeviceState]:
        """These entries are committed: move the devices' watermarks (a prefix, see
        DeviceState.made_durable). Returns the devices whose watermark moved."""
        by_device: dict[int, list[int]] = {}
        for entry in entries:
            row = entry.row
            if row is not None and row.device_id:
                txns = by_device.get(row.device_id)
                if txns is None:
                    by_device[row.device_id] = [row.device_txn]
                else:
                    txns.append(row.device_txn)
        moved = []
        devices = self.state.devices
        for device_id, txns in by_device.items():
            device = devices.get(device_id)
            if device is not None and device.made_durable(txns):
                device.ack_pending = True
                moved.append(device)
        return moved

    def recall(self, rows: list[JournalRow], now_ms: int | None = None) -> None:
        """After a restart: the last journaled rows of each device (oldest first) back
        into its idempotency window and grants, as the live path left them. With ``now_ms``,
        only grants that expire after ``now_ms - GRANT_RECALL_LOOKBACK_MS`` are checked for
        expiry again (older ones were recorded before the stop; a city's restart must not
        re-check millions)."""
        recheck_after_ms = None if now_ms is None else now_ms - GRANT_RECALL_LOOKBACK_MS
        devices = self.state.devices
        window = self._window
        counts: dict[int, int] = {}
        for row in rows:
            device = devices.get(row.device_id)
            if device is None:
                continue
            device.remember(row.device_txn, stored_decision(row), window, stored_fingerprint(row))
            if row.kind == KIND_ENTRY or row.kind == KIND_ESCORT:
                reader_ms = row.device_time_ms if row.device_time_ms is not None else row.happened_at_ms
                grant = Grant(bytes(row.identifier), row.account_id, row.direction or 0, reader_ms, row.decided_at_ms)
                limits = self.limits
                deadline_ms = row.decided_at_ms + limits.passage_window_ms + limits.passage_report_ms_max
                if recheck_after_ms is None or deadline_ms > recheck_after_ms:
                    self._grant(device, row.device_txn, grant)
                else:
                    device.grant(row.device_txn, grant, window)
            elif row.kind == KIND_PASSAGE and row.granted_txn is not None:
                device.grants.pop(row.granted_txn, None)
            counts[row.device_id] = counts.get(row.device_id, 0) + 1
            if row.device_txn > device.txn_seen_max:
                device.txn_seen_max = row.device_txn
        for device_id, count in counts.items():
            device = devices[device_id]
            if count >= window and device.recent_order:
                # Older journaled txns exist: they are forgotten.
                device.forgotten_txn_max = max(device.forgotten_txn_max, device.recent_order[0] - 1)

