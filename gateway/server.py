"""The device-facing server: one asyncio Protocol per TCP connection.

``data_received`` feeds the sans-IO connection, decides every complete request
synchronously against the cache (authorizer), appends accepted events to the
journal queue and writes the replies, all in the same callback: there is no
await between a decoded request and its written reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from protocol import (
    CLOSED,
    DECISION_FLAG_DUPLICATE,
    NEED_DATA,
    NO_ITEM_INDEX,
    BalanceQuery,
    CardPresented,
    Connection,
    Decision,
    DenyReason,
    DurableAck,
    Heartbeat,
    Hello,
    HelloAck,
    Nak,
    NakReason,
    Passage,
    PupilInfo,
    PupilInfoQuery,
    Purchase,
    RemoteProtocolError,
    Retransmit,
    Role,
    TopupCash,
)
from protocol.auth import verify_hello
from protocol.limits import PENDING_FRAMES_MAX, TXN_MAX

from .authorizer import (
    KIND_BALANCE,
    KIND_ENTRY,
    KIND_PASSAGE,
    KIND_PURCHASE,
    KIND_TOPUP,
    OK,
    Verdict,
    accept_template,
    authorize_balance,
    authorize_entry,
    authorize_passage,
    authorize_purchase,
    authorize_topup,
    commit,
)
from .cache import Cache, DeviceState
from .outbox import low_balance_outbox
from .config import Config
from .metrics import GatewayMetrics

from storage.journal import encode_items

if TYPE_CHECKING:
    from storage.journal import JournalWriter

log = logging.getLogger("ecard.gateway")

ACCEPT = 1
DENY = 0
TRY_AGAIN_LATER = int(DenyReason.TRY_AGAIN_LATER)
TXN_TOO_OLD = int(DenyReason.TXN_TOO_OLD)
# Denials that say nothing about the txn itself: a retry must be decided anew.
_NOT_REMEMBERED = frozenset((TRY_AGAIN_LATER, TXN_TOO_OLD))
_KIND_OF = {CardPresented: KIND_ENTRY, Passage: KIND_PASSAGE, Purchase: KIND_PURCHASE, TopupCash: KIND_TOPUP}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class GatewayCore:
    """What every session shares: the cache, the journal, the metrics, the clock."""

    def __init__(self, config: Config, cache: Cache, journal: "JournalWriter", metrics: GatewayMetrics) -> None:
        self.config = config
        self.cache = cache
        self.journal = journal
        self.metrics = metrics
        self.sessions: set[DeviceSession] = set()
        self.window = config.idempotency_window_txns
        self.clock_ms = wall_clock_ms  # replaced in tests
        self.frame_received_ns = 0  # perf_counter_ns when the frame being decided arrived
        self.commands_in_flight: set[int] = set()  # money commands applied, not yet known durable
        self.commands_committed: set[int] = set()  # of those, committed since the last read
        self.acks_pending: list[DeviceState] = []  # devices whose durable watermark moved

    def connected_by_kind(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for session in self.sessions:
            if session.device is not None:
                counts[session.device.kind] = counts.get(session.device.kind, 0) + 1
        return counts

    def on_commit(
        self, durable: dict[int, int], enqueued_ns: list[int], duration_ns: int, command_seqs: list[int]
    ) -> None:
        """Journal writer callback after COMMIT: advance watermarks, tell the devices."""
        now_ns = time.perf_counter_ns()
        m = self.metrics
        m.batch_events.observe(len(enqueued_ns))
        m.flush_ms.observe(duration_ns // 1_000_000)
        observe = m.durable_lag_ms.observe
        for t in enqueued_ns:
            observe((now_ns - t) // 1_000_000)
        if command_seqs:
            # Not taken out of commands_in_flight here: a read of pending commands that
            # began before this COMMIT still sees them pending (see gateway.commands).
            self.commands_committed.update(command_seqs)
        devices = self.cache.devices
        pending = self.acks_pending
        for device_id, txn in durable.items():
            device = devices.get(device_id)
            if device is None or txn <= device.durable_txn:
                continue
            device.durable_txn = txn
            if device.session is not None:
                # Told with its next reply (same write) or by the ack timer, whichever is first.
                device.ack_pending = True
                pending.append(device)

    def send_pending_acks(self) -> None:
        """Timer: DURABLE_ACK to the devices that got no reply since their last commit."""
        pending, self.acks_pending = self.acks_pending, []
        for device in pending:
            if device.ack_pending:
                device.ack_pending = False
                if device.session is not None:
                    device.session.send_durable_ack(device.durable_txn)


class DeviceSession(asyncio.Protocol):
    __slots__ = ("core", "conn", "transport", "device", "last_txn", "last_seen_ms", "paused", "closing")

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.conn = Connection(Role.GATEWAY)
        self.transport: asyncio.Transport | None = None
        self.device: DeviceState | None = None
        self.last_txn = 0  # highest txn seen in this session: txns must increase
        self.last_seen_ms = 0
        self.paused = False
        self.closing = False

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        core = self.core
        self.last_seen_ms = core.clock_ms()
        if len(core.sessions) >= core.config.connections_max:
            core.metrics.naks[NakReason.SERVER_BUSY] += 1
            transport.write(self.conn.send(Nak(NakReason.SERVER_BUSY, "connection limit")))  # type: ignore[attr-defined]
            transport.close()
            self.closing = True
            return
        transport.set_write_buffer_limits(high=core.config.write_buffer_bytes_high)  # type: ignore[attr-defined]
        core.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.sessions.discard(self)
        device = self.device
        if device is not None and device.session is self:
            device.session = None
        self.device = None

    def pause_writing(self) -> None:
        # The device does not read its replies: stop reading its requests until it does.
        self.paused = True
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.paused = False
        if not self.closing:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # close our side too

    def data_received(self, data: bytes) -> None:
        started_ns = time.perf_counter_ns()
        if self.closing:
            return
        core = self.core
        core.frame_received_ns = started_ns
        conn = self.conn
        conn.receive_data(data)
        now_ms = core.clock_ms()
        self.last_seen_ms = now_ms
        out: list[bytes] = []
        observe = core.metrics.latency_us.observe
        for _ in range(PENDING_FRAMES_MAX + 1):
            try:
                event = conn.next_event()
            except RemoteProtocolError as err:
                core.metrics.naks[err.reason] += 1
                out.append(conn.send(err.nak()))
                if err.fatal:
                    self._close_after(out)
                    return
                continue
            if event is NEED_DATA or event is CLOSED:
                break
            if type(event) is Retransmit:
                out.append(event.reply)
                continue
            out.append(self._handle(event, now_ms))
            observe((time.perf_counter_ns() - started_ns) // 1_000)
            if self.closing:  # the session was refused
                self._close_after(out)
                return
        else:
            # More complete frames than a one-request-at-a-time device can have in flight.
            core.metrics.naks[NakReason.TOO_MANY_PENDING] += 1
            out.append(conn.send(Nak(NakReason.TOO_MANY_PENDING, f"more than {PENDING_FRAMES_MAX} frames pending")))
            self._close_after(out)
            return
        device = self.device
        if device is not None and device.ack_pending:
            device.ack_pending = False
            out.append(conn.send(DurableAck(device.durable_txn)))
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]

    # ---------------------------------------------------------------- requests

    def _handle(self, event, now_ms: int) -> bytes:
        cls = type(event)
        if cls is Hello:
            return self._hello(event, now_ms)
        device = self.device
        assert device is not None, "the state table admits requests only after HELLO"
        if cls is Heartbeat:
            return self.conn.send(Heartbeat(now_ms))
        if cls is BalanceQuery:
            return self._balance(device, event, now_ms)
        if cls is PupilInfoQuery:
            return self._pupil_info(device, event, now_ms)
        return self._transaction(device, event, now_ms)

    def _pupil_info(self, device: DeviceState, request: PupilInfoQuery, now_ms: int) -> bytes:
        """Photo reference, the parent's note and today's pre-order: what the cashier needs."""
        cache = self.core.cache
        verdict = authorize_balance(cache, device, BalanceQuery(request.identifier), now_ms)
        if verdict.reason != OK:
            return self.conn.send(PupilInfo(DENY, verdict.reason))
        account_id = verdict.account_id
        controls = cache.controls.get(account_id)
        note = controls.cashier_note if controls is not None else ""
        day = cache.day_of(device.school_id, now_ms)
        lines = cache.preorders.get(account_id, {}).get(day, ())
        return self.conn.send(PupilInfo(ACCEPT, OK, cache.photo_refs.get(account_id, ""), note, lines))

    def _nak(self, reason: NakReason, detail: str) -> bytes:
        self.core.metrics.naks[reason] += 1
        return self.conn.send(Nak(int(reason), detail))

    def _hello(self, hello: Hello, now_ms: int) -> bytes:
        core = self.core
        device_id = self.conn.device_id
        device = core.cache.devices.get(device_id)
        reason, detail = None, ""
        if device is None:
            reason, detail = NakReason.UNKNOWN_DEVICE, f"device {device_id} is not registered"
        elif not verify_hello(device.key, device_id, hello):
            reason, detail = NakReason.AUTH_FAILED, "bad HELLO MAC"
        elif abs(hello.device_time_ms - now_ms) > core.config.hello_clock_skew_ms_max:
            reason, detail = NakReason.AUTH_FAILED, "device clock too far off"
        elif hello.nonce in device.nonces:
            reason, detail = NakReason.AUTH_FAILED, "HELLO replayed"
        elif hello.kind != device.kind:
            reason, detail = NakReason.AUTH_FAILED, "device kind differs from its registration"
        if reason is not None:
            log.info("HELLO from device %d refused: %s", device_id, detail)
            self.closing = True
            return self._nak(reason, detail)
        assert device is not None
        device.nonces.append(hello.nonce)
        previous = device.session
        if previous is not None and previous is not self:
            previous.close("replaced by a new session of the same device")
        device.session = self
        self.device = device
        self.last_txn = 0
        return self.conn.send(HelloAck(now_ms, device.durable_txn, core.config.heartbeat_interval_ms))

    def _balance(self, device: DeviceState, request: BalanceQuery, now_ms: int) -> bytes:
        core = self.core
        verdict = authorize_balance(core.cache, device, request, now_ms)
        core.metrics.decisions[KIND_BALANCE][verdict.reason] += 1
        if verdict.reason == OK:
            balance = core.cache.accounts.balance[verdict.account_id]
            template, params = accept_template(KIND_BALANCE, 0, 0, balance)
            decision = Decision(0, ACCEPT, OK, 0, balance, NO_ITEM_INDEX, template, params)
        else:
            decision = Decision(0, DENY, verdict.reason, 0, 0, NO_ITEM_INDEX, verdict.reason, verdict.params)
        return self.conn.send(decision)

    def _transaction(self, device: DeviceState, request, now_ms: int) -> bytes:
        core = self.core
        txn = request.txn
        if txn <= self.last_txn:
            return self._nak(NakReason.TXN_OUT_OF_ORDER, f"txn {txn} after {self.last_txn}")
        if request.reader_time_ms > TXN_MAX:
            return self._nak(NakReason.MALFORMED_PAYLOAD, "reader_time_ms beyond 2^63-1")
        previous_last_txn, self.last_txn = self.last_txn, txn
        kind = _KIND_OF[type(request)]
        metrics = core.metrics
        previous = device.recent.get(txn)
        if previous is not None:
            metrics.decisions[kind][previous.reason] += 1
            return self.conn.send(msgspec.structs.replace(previous, flags=DECISION_FLAG_DUPLICATE))
        if txn <= device.forgotten_txn_max:
            return self._deny(device, kind, txn, TXN_TOO_OLD)
        if not core.journal.has_room():
            if request.advice:
                # An advice is never declined: the device keeps it and replays it later
                # (even in this session: the txn is not counted as seen).
                self.last_txn = previous_last_txn
                return self._nak(NakReason.SERVER_BUSY, "journal full, replay later")
            return self._deny(device, kind, txn, TRY_AGAIN_LATER)
        cache = core.cache
        if kind == KIND_PURCHASE:
            verdict = authorize_purchase(cache, device, request, now_ms)
        elif kind == KIND_ENTRY:
            verdict = authorize_entry(cache, device, request, now_ms)
        elif kind == KIND_PASSAGE:
            verdict = authorize_passage(cache, device, request, now_ms)
        else:
            verdict = authorize_topup(cache, device, request, now_ms, core.config.topup_kopecks_max)
        if verdict.reason != OK:
            return self._deny(device, kind, txn, verdict.reason, verdict.params, verdict.item_index)
        return self._accept(device, kind, request, verdict, now_ms)

    def _deny(
        self,
        device: DeviceState,
        kind: int,
        txn: int,
        reason: int,
        params: tuple[int, ...] = (),
        item_index: int = NO_ITEM_INDEX,
    ) -> bytes:
        self.core.metrics.decisions[kind][reason] += 1
        decision = Decision(txn, DENY, reason, 0, 0, item_index, reason, params)
        if reason not in _NOT_REMEMBERED:
            device.remember(txn, decision, self.core.window)
        return self.conn.send(decision)

    def _accept(self, device: DeviceState, kind: int, request, verdict: Verdict, now_ms: int) -> bytes:
        core = self.core
        debit_after, credit_after, alert_account = commit(core.cache, verdict, now_ms)
        account_id = verdict.account_id
        pupil_balance = core.cache.accounts.balance[account_id]
        direction = None
        cashier = None
        items = None
        if kind == KIND_PURCHASE:
            items = encode_items(request.items)
        elif kind == KIND_TOPUP:
            cashier = request.cashier_id
        else:
            direction = request.direction
        amount = verdict.amount_kopecks
        row = (
            device.device_id,
            request.txn,
            kind,
            account_id,
            request.identifier,
            direction,
            verdict.debit_account_id or None,
            verdict.credit_account_id or None,
            amount,
            pupil_balance,
            request.advice,
            request.reader_time_ms,
            now_ms,
            cashier,
            items,
        )
        core.journal.append(
            (
                row,
                verdict.debit_account_id or None,
                debit_after,
                verdict.credit_account_id or None,
                credit_after,
                core.frame_received_ns,
                (low_balance_outbox(core.cache, alert_account, now_ms),) if alert_account else None,
            )
        )
        core.metrics.decisions[kind][OK] += 1
        # Turnstile screens are seen by the whole queue: they never show a balance.
        shown_balance = pupil_balance if kind == KIND_PURCHASE or kind == KIND_TOPUP else 0
        template, params = accept_template(kind, direction or 0, amount, shown_balance)
        decision = Decision(request.txn, ACCEPT, OK, 0, shown_balance, NO_ITEM_INDEX, template, params)
        device.remember(request.txn, decision, core.window)
        return self.conn.send(decision)

    # ---------------------------------------------------------------- unsolicited and closing

    def send_durable_ack(self, txn: int) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(self.conn.send(DurableAck(txn)))

    def _close_after(self, out: list[bytes]) -> None:
        self.closing = True
        transport = self.transport
        assert transport is not None
        if out:
            transport.write(b"".join(out))
        transport.close()

    def close(self, why: str) -> None:
        if self.closing or self.transport is None:
            return
        log.info("closing session of device %s: %s", self.conn.device_id, why)
        self.closing = True
        self.transport.close()
