"""The device-facing server: one asyncio Protocol per TCP connection.

A thin shell around the sans-IO connection and the ledger machine.
``data_received`` feeds the connection, hands every decoded request to
``Machine.request`` (pure, synchronous), and writes the replies, all in the
same callback: there is no await between a decoded request and its written
reply. The machine appends what must become durable to the journal writer's
queue itself (a synchronous append).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import msgspec

from ledger.machine import Machine
from ledger.records import JournalEntry
from ledger.state import DeviceState
from protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    DeviceKind,
    DurableAck,
    Hello,
    Mode,
    Nak,
    NakReason,
    RemoteProtocolError,
    Retransmit,
    Role,
)
from protocol.auth import hello_key
from protocol.limits import HELLO_RND_B_BYTES

from .config import Config
from .metrics import GatewayMetrics
from .sessions import SessionRegistry

log = logging.getLogger("ecard.gateway")


_TURNSTILE = int(DeviceKind.TURNSTILE)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class GatewayCore:
    """What every session shares: the machine, the registry, the metrics, the clock."""

    def __init__(self, config: Config, machine: Machine, metrics: GatewayMetrics) -> None:
        self.config = config
        self.machine = machine
        self.state = machine.state
        self.journal = machine.journal
        self.metrics = metrics
        self.sessions = SessionRegistry()
        self.clock_ms = wall_clock_ms  # replaced in tests
        self.random_bytes = secrets.token_bytes  # replaced in benchmarks (a replay needs the same session keys)
        # Devices whose durable watermark moved and that were not told yet -> when it first moved.
        self.acks_pending: dict[DeviceState, int] = {}
        self.commands_committed: set[int] = set()  # money commands committed since the last read

    def on_commit(self, entries: list[JournalEntry], duration_ns: int) -> None:
        """Journal writer callback after COMMIT: advance watermarks, tell the devices."""
        now_ns = time.perf_counter_ns()
        m = self.metrics
        m.batch_events.observe(len(entries))
        m.flush_ms.observe(duration_ns // 1_000_000)
        record = m.durable_lag_ms.record
        for entry in entries:
            record((now_ns - entry.enqueued_ns) // 1_000_000)
            if entry.command is not None:
                # Not taken out of the processor's in-flight set here: a read of pending
                # commands that began before this COMMIT still sees them pending.
                self.commands_committed.add(entry.command.seq)
        m.fold()
        # Told with the device's next reply (same write) or, once it has been quiet for
        # durable_ack_quiet_ms, by the ack timer.
        pending = self.acks_pending
        now_ms = self.clock_ms()
        for device in self.machine.on_durable(entries):
            pending.setdefault(device, now_ms)

    def send_mode_changes(self) -> None:
        """The machine raised or reset a school's fire alarm: MODE to every turnstile session
        of that school, at once (the mode in force now: a raise and a reset in one batch
        end in the latest)."""
        machine = self.machine
        changes, machine.mode_changes = machine.mode_changes, []
        for school_id in dict.fromkeys(school for school, _ in changes):
            mode = machine.mode_of(school_id)
            for session in self.sessions.of_school(school_id, _TURNSTILE):
                session.send_unsolicited(mode)

    def send_pending_acks(self) -> None:
        """Timer: DURABLE_ACK to the devices told nothing since their watermark moved a while ago."""
        pending = self.acks_pending
        if not pending:
            return
        due_ms = self.clock_ms() - self.config.durable_ack_quiet_ms
        sessions = self.sessions
        for device, since_ms in list(pending.items()):
            if not device.ack_pending:
                del pending[device]  # told with a reply meanwhile
            elif since_ms <= due_ms:
                del pending[device]
                device.ack_pending = False
                session = sessions.of_device(device.device_id)
                if session is not None:
                    session.send_durable_ack(device.durable_txn)


class DeviceSession(asyncio.Protocol):
    __slots__ = ("core", "conn", "transport", "device", "key", "last_seen_ms", "paused", "closing")

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.conn = Connection(Role.GATEWAY)
        self.transport: asyncio.Transport | None = None
        self.device: DeviceState | None = None
        self.key: bytes | None = None  # the device key this session's HELLO verified under
        self.last_seen_ms = 0
        self.paused = False
        self.closing = False

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        core = self.core
        self.last_seen_ms = core.clock_ms()
        if len(core.sessions) >= core.config.connections_max:
            core.machine.tally.naks[NakReason.SERVER_BUSY] += 1
            transport.write(self.conn.send(Nak(NakReason.SERVER_BUSY, "connection limit")))  # type: ignore[attr-defined]
            transport.close()
            self.closing = True
            return
        transport.set_write_buffer_limits(high=core.config.write_buffer_bytes_high)  # type: ignore[attr-defined]
        core.sessions.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.sessions.closed(self)
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
        conn = self.conn
        conn.receive_data(data)  # more than PENDING_FRAMES_MAX frames: next_event refuses them all
        now_ms = core.clock_ms()
        self.last_seen_ms = now_ms
        out: list[bytes] = []
        record = core.metrics.latency_us.record  # array.append: no Python call per decision
        request = core.machine.request
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as err:
                core.machine.tally.naks[err.reason] += 1
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
            device = self.device
            if device is None or type(event) is Hello:
                out.append(self._hello(event, now_ms))
                if self.closing:  # the session was refused
                    self._close_after(out)
                    return
                continue
            out.append(conn.send(request(device, event, now_ms, started_ns)))
            record((time.perf_counter_ns() - started_ns) // 1_000)
        device = self.device
        if device is not None and device.ack_pending:
            device.ack_pending = False
            out.append(conn.send_durable_ack(device.durable_txn))
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]
        if core.machine.mode_changes:
            core.send_mode_changes()  # a fire panel raised or reset the alarm

    # ---------------------------------------------------------------- requests

    def _hello(self, hello: Hello, now_ms: int) -> bytes:
        assert type(hello) is Hello, "the state table admits requests only after HELLO"
        core = self.core
        device_id = self.conn.device_id
        reply = core.machine.hello(device_id, hello, now_ms)
        if type(reply) is Nak:
            log.info("HELLO from device %d refused: %s", device_id, reply.detail)
            self.closing = True
            return self.conn.send(reply)
        device = core.state.devices[device_id]
        key = hello_key((device.key, device.next_key), device_id, hello)
        assert key is not None, "Machine.hello accepted the HELLO under one of these keys"
        if hello.durable_txn > device.durable_txn:
            log.warning(
                "device %d saw watermark %d, ours is %d (a database restore, or a device from elsewhere)",
                device_id, hello.durable_txn, device.durable_txn,
            )
        previous = core.sessions.opened(self, device_id, device.school_id)
        if previous is not None:
            previous.close("replaced by a new session of the same device")
        self.device = device
        self.key = key
        # The secure channel (docs/protocol.md, section 5a): our challenge RND.B, our
        # cryptogram, and from here on a MAC on every frame both ways.
        reply = msgspec.structs.replace(reply, rnd_b=core.random_bytes(HELLO_RND_B_BYTES))
        accepted = self.conn.accept_hello(reply, key)
        if device.kind == _TURNSTILE and device.school_id in core.state.alarms:
            # A turnstile that comes (back) during its school's fire alarm is released at once.
            accepted += self.conn.send(core.machine.mode_of(device.school_id))
        return accepted

    # ---------------------------------------------------------------- unsolicited and closing

    def send_durable_ack(self, txn: int) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(self.conn.send_durable_ack(txn))

    def send_unsolicited(self, event: DurableAck | Mode) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(self.conn.send(event))

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
