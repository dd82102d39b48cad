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
    Heartbeat,
    Hello,
    HelloAck,
    Nak,
    NakReason,
    Passage,
    PupilInfo,
    PupilInfoQuery,
    Purchase,
    TopupCash,
)
from protocol.auth import verify_hello
from protocol.items import encode_items
from protocol.limits import TXN_GAP_MAX

from .codes import AccountKind, CommandKind, CommandStatus, JournalKind, OutboxKind
from .notices import BankTopupNotice, CashTopupNotice, EntryNotice, ExitNotice, LowBalanceNotice, PurchaseNotice
from .records import AccountCheckpoint, AccountCounters, CommandResult, JournalEntry, JournalRow, OutboxEvent
from .rules import (
    BALANCE_SHOWN_ON_DENY,
    KIND_BALANCE,
    KIND_ENTRY,
    KIND_PASSAGE,
    KIND_PURCHASE,
    KIND_TOPUP,
    OK,
    AMOUNT_INVALID,
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
from .state import DeviceState, LedgerState

ACCEPT, DENY = 1, 0
TRY_AGAIN_LATER = int(DenyReason.TRY_AGAIN_LATER)
TXN_TOO_OLD = int(DenyReason.TXN_TOO_OLD)
_KIND_OF = {CardPresented: KIND_ENTRY, Passage: KIND_PASSAGE, Purchase: KIND_PURCHASE, TopupCash: KIND_TOPUP}
_PUPIL = int(AccountKind.PUPIL)
_APPLIED = int(CommandStatus.APPLIED)
_REFUSED = int(CommandStatus.REFUSED)
_NO_COUNTERS = AccountCounters()  # the counters of a non-pupil account: always empty


class SecurityEvent:
    """Names of ecard_security_events_total{event}: a device broke the protocol on purpose or by a bug."""

    ADVICE_TOPUP_ABOVE_CAP = "advice_topup_above_cap"
    HELLO_WATERMARK_AHEAD = "hello_watermark_ahead"
    TXN_OUT_OF_RANGE = "txn_out_of_range"
    PASSAGE_WITHOUT_GRANT = "passage_without_grant"

    ALL = (ADVICE_TOPUP_ABOVE_CAP, HELLO_WATERMARK_AHEAD, TXN_OUT_OF_RANGE, PASSAGE_WITHOUT_GRANT)


class MachineLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits the machine decides by (from the gateway's Config)."""

    idempotency_window_txns: int  # decisions remembered per device beyond the undurable ones
    topup_kopecks_max: int  # the largest cash top-up a till may take in one go
    command_amount_kopecks_max: int  # the largest money command
    hello_clock_skew_ms_max: int  # a HELLO's device clock may be this far off
    offline_window_ms: int  # an advice is judged at its own time if it happened within this
    reader_clock_skew_ms: int  # a reader's clock may be this far off the gateway's
    heartbeat_interval_ms: int  # told to the device in HELLO_ACK


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


class Machine:
    __slots__ = ("state", "journal", "limits", "tally", "_window", "_earliest_ms", "_skew_ms")

    def __init__(self, state: LedgerState, journal: JournalSink, limits: MachineLimits) -> None:
        self.state = state
        self.journal = journal
        self.limits = limits
        self.tally = Tally()
        self._window = limits.idempotency_window_txns
        self._earliest_ms = limits.offline_window_ms + limits.reader_clock_skew_ms
        self._skew_ms = limits.reader_clock_skew_ms

    # ---------------------------------------------------------------- sessions

    def hello(self, device_id: int, hello: Hello, now_ms: int) -> HelloAck | Nak:
        """Authenticate a HELLO. A Nak is a refusal: the shell closes the connection."""
        device = self.state.devices.get(device_id)
        reason, detail = None, ""
        if device is None:
            reason, detail = NakReason.UNKNOWN_DEVICE, f"device {device_id} is not registered"
        elif not verify_hello(device.key, device_id, hello):
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
        if cls is Heartbeat:
            return Heartbeat(now_ms)
        if cls is BalanceQuery:
            return self._balance(device, event, now_ms)
        if cls is PupilInfoQuery:
            return self._pupil_info(device, event, now_ms)
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
        if request.advice:
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
            verdict = authorize_passage(state, device, request, at_ms)
        else:
            verdict = authorize_topup(state, device, request, at_ms, self.limits.topup_kopecks_max)
        if verdict.reason != OK:
            return self._deny(device, kind, txn, verdict, request.advice)
        return self._accept(device, kind, request, verdict, now_ms, at_ms, reader_ms, frame_ns)

    def _deny(self, device: DeviceState, kind: int, txn: int, verdict: Verdict, advice: bool) -> Decision:
        reason = verdict.reason
        self.tally.decisions[kind][reason] += 1
        if advice and reason == AMOUNT_INVALID:
            self.tally.security[SecurityEvent.ADVICE_TOPUP_ABOVE_CAP] += 1
        elif reason == NO_GRANT:
            self.tally.security[SecurityEvent.PASSAGE_WITHOUT_GRANT] += 1
        balance = 0
        if reason in BALANCE_SHOWN_ON_DENY and not advice and device.kind == DeviceKind.TILL:
            # Only once the card and school checks passed (an advice skips them).
            balance = self.state.accounts.balance[verdict.account_id]
        decision = Decision(txn, DENY, reason, 0, balance, verdict.item_index, reason, verdict.params)
        device.remember(txn, decision, self._window)
        return decision

    def _accept(
        self, device: DeviceState, kind: int, request, verdict: Verdict, now_ms: int, at_ms: int,
        reader_ms: int | None, frame_ns: int,
    ) -> Decision:
        state = self.state
        _, _, alert = commit(state, verdict, at_ms)
        account_id = verdict.account_id
        accounts = state.accounts
        pupil_balance = accounts.balance[account_id]
        direction = cashier = items = None
        if kind == KIND_PURCHASE:
            items = encode_items(request.items)
        elif kind == KIND_TOPUP:
            cashier = request.cashier_id
        else:
            direction = request.direction
        txn = request.txn
        amount = verdict.amount_kopecks
        debit, credit = verdict.debit_account_id, verdict.credit_account_id
        row = JournalRow(
            device.device_id, txn, kind, account_id, request.identifier, direction, debit or None, credit or None,
            amount, pupil_balance, request.advice, reader_ms, now_ms, at_ms, cashier, items,
        )
        checkpoints = self._checkpoints(debit, credit) if amount else ()
        key = f"{device.device_id}:{txn}"
        notice = self._notice(kind, device, request, verdict, pupil_balance, at_ms)
        if notice is None:
            outbox = (self._low_balance(alert, key, now_ms),) if alert else ()
        else:
            tag = type(notice).__struct_config__.tag
            event = OutboxEvent(f"{key}:{tag}", tag, account_id, notice, now_ms)
            outbox = (event, self._low_balance(alert, key, now_ms)) if alert else (event,)
        self.journal.append(JournalEntry(row, checkpoints, outbox, None, frame_ns))
        self.tally.decisions[kind][OK] += 1
        # Turnstile screens are seen by the whole queue: they never show a balance.
        shown = pupil_balance if kind == KIND_PURCHASE or kind == KIND_TOPUP else 0
        template, params = accept_template(kind, direction or 0, amount, shown)
        decision = Decision(txn, ACCEPT, OK, 0, shown, NO_ITEM_INDEX, template, params)
        device.undurable.add(txn)
        device.remember(txn, decision, self._window)
        if kind == KIND_ENTRY:
            device.grant(txn, request.identifier, self._window)
        return decision

    def _checkpoints(self, debit: int, credit: int) -> tuple[AccountCheckpoint, AccountCheckpoint]:
        accounts = self.state.accounts
        kind = accounts.kind
        balance = accounts.balance
        return (
            accounts.checkpoint(debit) if kind[debit] == _PUPIL else AccountCheckpoint(debit, balance[debit], _NO_COUNTERS),
            accounts.checkpoint(credit) if kind[credit] == _PUPIL else AccountCheckpoint(credit, balance[credit], _NO_COUNTERS),
        )

    def _notice(self, kind: int, device: DeviceState, request, verdict: Verdict, balance: int, at_ms: int):
        """What the pupil's parents hear of an accepted request (None: nothing; the
        turnstile's grant is not an entry until the PASSAGE)."""
        account_id, school_id = verdict.account_id, device.school_id
        if kind == KIND_PASSAGE:
            cls = EntryNotice if request.direction == Direction.IN else ExitNotice
            return cls(account_id=account_id, school_id=school_id, at_ms=at_ms, device_id=device.device_id)
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
        verdict = authorize_command(self.state, kind, payload, original, self.limits.command_amount_kopecks_max)
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
        self.journal.append(JournalEntry(row, self._checkpoints(debit, credit), outbox, result, frame_ns))
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

    def recall(self, rows: list[JournalRow]) -> None:
        """After a restart: the last journaled rows of each device (oldest first) back
        into its idempotency window and grants, as the live path left them."""
        devices = self.state.devices
        window = self._window
        counts: dict[int, int] = {}
        for row in rows:
            device = devices.get(row.device_id)
            if device is None:
                continue
            device.remember(row.device_txn, stored_decision(row), window)
            if row.kind == KIND_ENTRY:
                device.grant(row.device_txn, bytes(row.identifier), window)
            counts[row.device_id] = counts.get(row.device_id, 0) + 1
            if row.device_txn > device.txn_seen_max:
                device.txn_seen_max = row.device_txn
        for device_id, count in counts.items():
            device = devices[device_id]
            if count >= window and device.recent_order:
                # Older journaled txns exist: they are forgotten.
                device.forgotten_txn_max = max(device.forgotten_txn_max, device.recent_order[0] - 1)

