"""A simulated device (turnstile or till) speaking protocol v1 to the gateway over TCP.

It implements the device half of the durability contract:

- every state-changing request takes a fresh txn from a counter that only grows
  over the device's whole life (the counter is written to the device's log
  before the request leaves, so a restarted simulator continues above it);
- an ACCEPTED txn is kept until a DURABLE_ACK (or the watermark of a HELLO_ACK)
  covers it; after every (re)connect the kept txns are replayed in txn order as
  advices, then the request whose reply never arrived is sent again with the
  same txn, and only then new requests go out;
- one request in flight; on a reply timeout the last frame is retransmitted
  byte for byte a few times, then the connection is dropped and re-established
  with a bounded, jittered (seeded) backoff until a deadline;
- HEARTBEAT when idle, every heartbeat_interval_ms from the HELLO_ACK.

Every device keeps a JSON-lines log: its txn counter, what the gateway accepted
(once per txn, a DUPLICATE accept of a logged txn is not logged again) and the
durable watermarks it saw. ``read_log`` turns it back into the accepted set.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from protocol import (
    CLOSED,
    DECISION_FLAG_DUPLICATE,
    NEED_DATA,
    TXN_FLAG_ADVICE,
    BalanceQuery,
    CardPresented,
    Connection,
    Decision,
    DenyReason,
    DeviceKind,
    DurableAck,
    Heartbeat,
    Hello,
    HelloAck,
    Item,
    Nak,
    NakReason,
    Outcome,
    Passage,
    ProtocolError,
    Purchase,
    Role,
    TopupCash,
)
from protocol.auth import sign_hello

# Journal kinds (storage schema: journal.kind) by request type.
KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP = 1, 2, 3, 4
KIND_OF = {CardPresented: KIND_ENTRY, Passage: KIND_PASSAGE, Purchase: KIND_PURCHASE, TopupCash: KIND_TOPUP}
KIND_NAMES = {KIND_ENTRY: "entry", KIND_PASSAGE: "passage", KIND_PURCHASE: "purchase", KIND_TOPUP: "topup"}
_CLASS_OF = {v: k for k, v in KIND_OF.items()}


class Unavailable(Exception):
    """The gateway could not be reached (or kept refusing) until the device's deadline."""


class _Dropped(Exception):
    """The connection is gone (or we dropped it): reconnect and go on."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- statistics


@dataclass
class Stats:
    """Counters shared by the devices of one simulator run."""

    requests: int = 0  # state-changing requests and balance queries answered
    accepts: int = 0
    duplicates: int = 0  # answers carrying DECISION_FLAG_DUPLICATE
    denies: dict[str, int] = field(default_factory=dict)
    naks: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0  # sessions opened after the first one of a device
    connect_failures: int = 0
    replays: int = 0  # advices replayed after a (re)connect
    replays_applied: int = 0  # replayed advices the gateway did not have (lost in a crash): applied now
    replays_deferred: int = 0  # replayed advices answered TXN_TOO_OLD (kept, replayed later)
    errors: list[str] = field(default_factory=list)  # contract violations seen from the gateway
    resends: int = 0  # requests sent again after a reconnect (reply never arrived)
    retransmits: int = 0
    injected_disconnects: int = 0
    heartbeats: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    decisions: dict[tuple[int, str], int] = field(default_factory=dict)  # (kind, reason name) -> count

    def deny(self, reason: int) -> None:
        name = _reason_name(reason)
        self.denies[name] = self.denies.get(name, 0) + 1

    def nak(self, reason: int) -> None:
        name = _nak_name(reason)
        self.naks[name] = self.naks.get(name, 0) + 1

    def quantile_ms(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    def progress_line(self) -> str:
        return (
            f"requests={self.requests} accepts={self.accepts} denies={sum(self.denies.values())} "
            f"naks={sum(self.naks.values())} reconnects={self.reconnects} replays={self.replays} "
            f"p50_ms={self.quantile_ms(0.5):.2f} p99_ms={self.quantile_ms(0.99):.2f}"
        )

    def summary(self) -> str:
        denies = ", ".join(f"{k}={v}" for k, v in sorted(self.denies.items())) or "none"
        naks = ", ".join(f"{k}={v}" for k, v in sorted(self.naks.items())) or "none"
        return (
            f"requests={self.requests} accepts={self.accepts} duplicates={self.duplicates}\n"
            f"denies: {denies}\n"
            f"naks: {naks}\n"
            f"reconnects={self.reconnects} connect_failures={self.connect_failures} replays={self.replays} "
            f"replays_applied={self.replays_applied} replays_deferred={self.replays_deferred} "
            f"resends={self.resends} retransmits={self.retransmits} "
            f"injected_disconnects={self.injected_disconnects} heartbeats={self.heartbeats}\n"
            f"latency_ms p50={self.quantile_ms(0.5):.2f} p99={self.quantile_ms(0.99):.2f} "
            f"max={max(self.latencies_ms, default=0.0):.2f}"
            + ("".join(f"\nERROR {e}" for e in self.errors[:20]))
        )


def _reason_name(reason: int) -> str:
    try:
        return DenyReason(reason).name
    except ValueError:
        return f"REASON_{reason}"


def _nak_name(reason: int) -> str:
    try:
        return NakReason(reason).name
    except ValueError:
        return f"NAK_{reason}"


# --------------------------------------------------------------------------- events <-> JSON


def event_to_json(event: Any) -> dict[str, Any]:
    """A state-changing request as a JSON object (enough to rebuild it exactly)."""
    d: dict[str, Any] = {"type": KIND_NAMES[KIND_OF[type(event)]]}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if name == "identifier":
            value = value.hex()
        elif name == "items":
            value = [[i.product_code, i.quantity, i.unit_price_kopecks] for i in value]
        d[name] = value
    return d


def event_from_json(d: dict[str, Any]) -> Any:
    kind = {v: k for k, v in KIND_NAMES.items()}[d["type"]]
    cls = _CLASS_OF[kind]
    kwargs = {}
    for name in cls.__struct_fields__:
        value = d[name]
        if name == "identifier":
            value = bytes.fromhex(value)
        elif name == "items":
            value = tuple(Item(*i) for i in value)
        kwargs[name] = value
    return cls(**kwargs)


def accepted_record(device_id: int, event: Any, decision: Decision, account_id: int | None) -> dict[str, Any]:
    kind = KIND_OF[type(event)]
    if kind == KIND_PURCHASE:
        amount = event.total_kopecks
    elif kind == KIND_TOPUP:
        amount = event.amount_kopecks
    else:
        amount = 0
    return {
        "t": "accept",
        "device_id": device_id,
        "txn": event.txn,
        "kind": kind,
        "identifier": event.identifier.hex(),
        "account_id": account_id,
        "amount_kopecks": amount,
        "direction": getattr(event, "direction", None),
        "items": [[i.product_code, i.quantity, i.unit_price_kopecks] for i in getattr(event, "items", ())],
        "cashier_id": getattr(event, "cashier_id", None),
        "advice": bool(event.flags & TXN_FLAG_ADVICE) or kind == KIND_PASSAGE,
        "duplicate": bool(decision.flags & DECISION_FLAG_DUPLICATE),
        "balance_kopecks": decision.balance_kopecks,
        "event": event_to_json(event),
    }


@dataclass
class LogState:
    """What a device's log says: its counter, its accepted txns, its watermark."""

    txn_high: int = 0
    durable_txn: int = 0
    accepted: dict[int, dict[str, Any]] = field(default_factory=dict)  # txn -> accept record
    sent: dict[int, dict[str, Any]] = field(default_factory=dict)  # txn -> event JSON of the last unanswered request


def read_log(path: Path) -> LogState:
    state = LogState()
    if not path.exists():
        return state
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line (the simulator was killed mid-write)
            t = rec.get("t")
            if t == "txn":
                state.txn_high = max(state.txn_high, rec["txn"])
                state.sent = {rec["txn"]: rec["event"]}
            elif t == "answered":
                state.sent.pop(rec["txn"], None)
            elif t == "accept":
                state.accepted.setdefault(rec["txn"], rec)
                state.sent.pop(rec["txn"], None)
            elif t == "durable":
                state.durable_txn = max(state.durable_txn, rec["txn"])
    return state


def log_path(log_dir: Path, device_id: int) -> Path:
    return Path(log_dir) / f"device-{device_id}.jsonl"


def read_logs(log_dir: Path) -> dict[int, LogState]:
    """Every device log under ``log_dir``: device id -> its state."""
    out = {}
    for path in sorted(Path(log_dir).glob("device-*.jsonl")):
        out[int(path.stem.split("-", 1)[1])] = read_log(path)
    return out


# --------------------------------------------------------------------------- the device


@dataclass
class DeviceConfig:
    host: str
    port: int
    reply_timeout_s: float = 1.0
    retransmits: int = 3
    connect_timeout_s: float = 2.0
    backoff_min_s: float = 0.02
    backoff_max_s: float = 1.0
    deadline_s: float = 120.0  # give up reaching the gateway after this long without success
    disconnect_rate: float = 0.0  # probability per request to drop the connection abruptly
    heartbeats: bool = True
    firmware: str = "ecard-sim-1.0"


class Device:
    """One simulated device. Use ``await start()``, the request methods, ``await close()``."""

    def __init__(
        self,
        device_id: int,
        kind: DeviceKind,
        key: bytes,
        config: DeviceConfig,
        log_dir: Path,
        *,
        seed: int,
        stats: Stats | None = None,
    ) -> None:
        self.device_id = device_id
        self.kind = int(kind)
        self.key = key
        self.config = config
        self.stats = stats if stats is not None else Stats()
        # Jitter and injected disconnects: seeded, never the global RNG.
        self._rng = random.Random(f"{seed}/device/{device_id}")
        self.log_path = log_path(log_dir, device_id)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        state = read_log(self.log_path)
        self.txn_high = state.txn_high
        self.watermark = state.durable_txn
        self.logged: set[int] = set(state.accepted)
        # Accepted txns not covered by a DURABLE_ACK yet: txn -> request (as first sent).
        self.kept: dict[int, Any] = {
            txn: event_from_json(rec["event"]) for txn, rec in state.accepted.items() if txn > self.watermark
        }
        # A request whose reply never arrived (from a previous life of the simulator).
        self.pending: Any = None
        if state.sent:
            (txn, ev), = state.sent.items()
            self.pending = event_from_json(ev)
        self._account_of: dict[bytes, int | None] = {
            bytes.fromhex(rec["identifier"]): rec["account_id"] for rec in state.accepted.values()
        }
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._lock = asyncio.Lock()
        self._conn: Connection | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._replies: asyncio.Queue | None = None
        self._sessions = 0
        self._heartbeat_s = 10.0
        self._last_io = time.monotonic()
        self._background: asyncio.Task | None = None
        self._disconnected = asyncio.Event()
        self._durable_changed = asyncio.Event()
        self._closing = False

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def settled(self) -> bool:
        """Every accepted txn is durable and no request waits for its reply."""
        return not self.kept and self.pending is None

    async def start(self) -> None:
        """Connect (replaying what the log says is not durable) and keep the session alive."""
        async with self._lock:
            await self._ensure_session()
        self._background = asyncio.create_task(self._keepalive(), name=f"device-{self.device_id}")

    async def close(self) -> None:
        self._closing = True
        if self._background is not None:
            self._background.cancel()
            try:
                await self._background
            except (asyncio.CancelledError, Exception):
                pass
        async with self._lock:
            self._drop(abort=False)
        self._log.close()

    def register_card(self, identifier: bytes, account_id: int | None) -> None:
        """What the simulator knows about a card (for the log's account id column)."""
        self._account_of[identifier] = account_id

    async def card_presented(self, identifier: bytes, direction: int) -> Decision:
        return await self._transaction(lambda txn: CardPresented(txn, 0, direction, now_ms(), identifier))

    async def passage(self, identifier: bytes, direction: int, granted_txn: int) -> Decision:
        return await self._transaction(
            lambda txn: Passage(txn, TXN_FLAG_ADVICE, direction, now_ms(), granted_txn, identifier)
        )

    async def purchase(self, identifier: bytes, items: list[tuple[int, int, int]]) -> Decision:
        its = tuple(Item(*i) for i in items)
        total = sum(i.quantity * i.unit_price_kopecks for i in its)
        return await self._transaction(lambda txn: Purchase(txn, 0, now_ms(), total, identifier, its))

    async def topup(self, identifier: bytes, amount_kopecks: int, cashier_id: int) -> Decision:
        return await self._transaction(
            lambda txn: TopupCash(txn, 0, now_ms(), amount_kopecks, cashier_id, identifier)
        )

    async def balance(self, identifier: bytes) -> Decision:
        async with self._lock:
            return await self._request(BalanceQuery(identifier), kind=None)

    async def wait_settled(self, timeout_s: float) -> bool:
        """Wait until every kept txn is covered by a DURABLE_ACK (reconnecting as needed)."""
        deadline = time.monotonic() + timeout_s
        while not self.settled:
            if not self._reader_alive():
                if self._background is None or self._background.done():
                    # No keepalive task (it gave up, or start() was never called): reconnect here.
                    async with self._lock:
                        try:
                            await self._ensure_session()
                        except Unavailable:
                            return False
                else:
                    self._disconnected.set()  # wake the keepalive task to reconnect and replay
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._durable_changed.clear()
            try:
                await asyncio.wait_for(self._durable_changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass
        return True

    # ------------------------------------------------------------------ transactions

    async def _transaction(self, build) -> Decision:
        async with self._lock:
            if self.pending is not None:
                # A request of an earlier call never got its answer: settle it first, same txn,
                # on a new session (this one may have seen higher txns).
                self._drop()
                await self._ensure_session()
            self.txn_high += 1
            event = build(self.txn_high)
            self._write({"t": "txn", "txn": event.txn, "event": event_to_json(event)})
            self.pending = event
            return await self._request(event, kind=KIND_OF[type(event)])

    async def _request(self, event: Any, kind: int | None) -> Decision:
        """Send ``event`` until it gets a decision (reconnecting as needed). Lock held."""
        started = time.perf_counter()
        while True:
            await self._ensure_session()
            if kind is not None and self.pending is not event:
                # The resend after a reconnect got the answer (and logged it).
                decision = self._resolved
                break
            try:
                reply = await self._roundtrip(event, inject=True)
            except _Dropped:
                self._drop()
                continue
            if type(reply) is Nak:
                # SERVER_BUSY or anything unexpected: back off, reconnect, send the same txn again
                # (a new session, because this one has seen the txn).
                self.stats.nak(reply.reason)
                self._drop()
                await asyncio.sleep(self._backoff(1))
                continue
            if type(reply) is not Decision:
                self._drop()
                continue
            decision = reply
            if kind is not None:
                self._answered(event, decision)
            else:
                self._count(None, decision)
            break
        self.stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        return decision

    def _answered(self, event: Any, decision: Decision) -> None:
        """The decision of the request in flight (possibly a DUPLICATE): log and keep an accept."""
        self.pending = None
        self._resolved = decision
        self._count(KIND_OF[type(event)], decision)
        if decision.outcome == Outcome.ACCEPT:
            if event.txn not in self.logged:
                self.logged.add(event.txn)
                self._write(accepted_record(self.device_id, event, decision, self._account_of.get(event.identifier)))
            if event.txn > self.watermark:
                self.kept[event.txn] = event
        else:
            self._write({"t": "answered", "txn": event.txn, "reason": decision.reason})

    def _count(self, kind: int | None, decision: Decision, replay: bool = False) -> None:
        s = self.stats
        key = (kind or 5, _reason_name(decision.reason))
        s.decisions[key] = s.decisions.get(key, 0) + 1
        if replay:
            return
        s.requests += 1
        if decision.flags & DECISION_FLAG_DUPLICATE:
            s.duplicates += 1
        if decision.outcome == Outcome.ACCEPT:
            s.accepts += 1
        else:
            s.deny(decision.reason)

    # ------------------------------------------------------------------ session

    async def _ensure_session(self) -> None:
        """Connected, HELLO answered, kept txns replayed, the lost request resent. Lock held."""
        attempt = 0
        last_ok = time.monotonic()
        while self._conn is None or self._needs_replay:
            if self._closing:
                raise Unavailable(f"device {self.device_id} is closing")
            if self._conn is None:
                if time.monotonic() - last_ok > self.config.deadline_s:
                    raise Unavailable(f"device {self.device_id}: gateway unreachable for {self.config.deadline_s} s")
                if attempt:
                    await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                try:
                    await self._open()
                except (_Dropped, OSError, TimeoutError):
                    self.stats.connect_failures += 1
                    self._drop()
                    continue
            try:
                await self._replay()
            except _Dropped:
                self._drop()
                continue
            last_ok = time.monotonic()

    async def _open(self) -> None:
        cfg = self.config
        reader, writer = await asyncio.wait_for(asyncio.open_connection(cfg.host, cfg.port), cfg.connect_timeout_s)
        self._reader, self._writer = reader, writer
        self._conn = Connection(Role.DEVICE, self.device_id)
        self._replies = asyncio.Queue()
        self._reader_task = asyncio.create_task(self._read_loop(self._conn, reader, self._replies))
        hello = Hello(self.kind, cfg.firmware, self.watermark, now_ms(), os.urandom(16), b"\0" * 16)
        hello = sign_hello(self.key, self.device_id, hello)
        reply = await self._roundtrip(hello, inject=False)
        if type(reply) is Nak:
            self.stats.nak(reply.reason)
            raise _Dropped(f"HELLO refused: {_nak_name(reply.reason)} {reply.detail}")
        if type(reply) is not HelloAck:
            raise _Dropped(f"unexpected answer to HELLO: {reply!r}")
        self._heartbeat_s = reply.heartbeat_interval_ms / 1000
        self._on_durable(reply.durable_txn)
        if self._sessions:
            self.stats.reconnects += 1
        self._sessions += 1
        self._needs_replay = True
        self._disconnected.clear()

    _needs_replay = False
    _resolved: Decision | None = None

    async def _replay(self) -> None:
        """After HELLO: kept txns as advices in txn order, then the request whose reply is missing."""
        for txn in sorted(self.kept):
            event = self.kept.get(txn)
            if event is None:  # a DURABLE_ACK arrived meanwhile
                continue
            advice = msgspec.structs.replace(event, flags=event.flags | TXN_FLAG_ADVICE)
            self.stats.replays += 1
            reply = await self._roundtrip(advice, inject=False)
            if type(reply) is Nak:
                self.stats.nak(reply.reason)
                # SERVER_BUSY: keep it, replay later (on a new session, after a backoff).
                await asyncio.sleep(self._backoff(1))
                raise _Dropped("advice refused")
            if type(reply) is not Decision:
                raise _Dropped(f"unexpected reply {reply!r}")
            self._count(KIND_OF[type(event)], reply, replay=True)
            if reply.outcome == Outcome.ACCEPT:
                if not reply.flags & DECISION_FLAG_DUPLICATE:
                    self.stats.replays_applied += 1
                continue
            # The gateway must not decline an advice. TXN_TOO_OLD happens when this txn fell out of
            # the gateway's idempotency window while still waiting in its journal queue: the
            # DURABLE_ACK will cover it, or the next process will take the replay. Keep it either
            # way (never drop an accepted txn) and go on; anything else is recorded as an error.
            if reply.reason == DenyReason.TXN_TOO_OLD:
                self.stats.replays_deferred += 1
            else:
                self.stats.errors.append(
                    f"device {self.device_id}: advice txn {txn} declined: {_reason_name(reply.reason)}"
                )
        if self.pending is not None:
            self.stats.resends += 1
            reply = await self._roundtrip(self.pending, inject=False)
            if type(reply) is Nak:
                self.stats.nak(reply.reason)
                await asyncio.sleep(self._backoff(1))
                raise _Dropped("resend refused")
            if type(reply) is not Decision:
                raise _Dropped(f"unexpected reply {reply!r}")
            self._answered(self.pending, reply)
        self._needs_replay = False

    async def _roundtrip(self, event: Any, *, inject: bool) -> Any:
        """Send one frame and wait for its reply, retransmitting on timeouts. Lock held."""
        conn, writer, replies = self._conn, self._writer, self._replies
        if conn is None or writer is None or replies is None:
            raise _Dropped("not connected")
        try:
            writer.write(conn.send(event))
        except (ProtocolError, OSError, RuntimeError) as exc:
            raise _Dropped(str(exc)) from None
        self._last_io = time.monotonic()
        if inject and self.config.disconnect_rate and self._rng.random() < self.config.disconnect_rate:
            # Drop the TCP connection abruptly right after the request left: the reply is lost.
            self.stats.injected_disconnects += 1
            raise _Dropped("injected disconnect")
        for attempt in range(self.config.retransmits + 1):
            try:
                reply = await asyncio.wait_for(replies.get(), self.config.reply_timeout_s)
            except TimeoutError:
                if attempt == self.config.retransmits or self._conn is not conn:
                    raise _Dropped("no reply") from None
                self.stats.retransmits += 1
                try:
                    writer.write(conn.retransmit())
                except (ProtocolError, OSError, RuntimeError) as exc:
                    raise _Dropped(str(exc)) from None
                continue
            if reply is None:
                raise _Dropped("connection lost")
            self._last_io = time.monotonic()
            return reply
        raise _Dropped("no reply")  # pragma: no cover

    async def _read_loop(self, conn: Connection, reader: asyncio.StreamReader, replies: asyncio.Queue) -> None:
        try:
            while True:
                data = await reader.read(65536)
                conn.receive_data(data)
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        break
                    if event is CLOSED:
                        return
                    if type(event) is DurableAck:
                        self._on_durable(event.durable_txn)
                    else:
                        replies.put_nowait(event)
                if not data:
                    return
        except (OSError, ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            replies.put_nowait(None)
            if self._conn is conn:
                self._disconnected.set()

    def _on_durable(self, txn: int) -> None:
        if txn > self.watermark:
            self.watermark = txn
            self._write({"t": "durable", "txn": txn})
        for t in [t for t in self.kept if t <= self.watermark]:
            del self.kept[t]
        self._durable_changed.set()

    def _drop(self, abort: bool = True) -> None:
        writer, self._writer = self._writer, None
        self._conn = None
        self._replies = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None
        if writer is not None:
            try:
                if abort:
                    writer.transport.abort()
                else:
                    writer.close()
            except Exception:
                pass
        self._disconnected.set()

    def _backoff(self, attempt: int) -> float:
        cfg = self.config
        cap = min(cfg.backoff_max_s, cfg.backoff_min_s * (2 ** min(attempt, 16)))
        return cap / 2 + self._rng.random() * cap / 2

    def _reader_alive(self) -> bool:
        return self._conn is not None and self._reader_task is not None and not self._reader_task.done()

    async def _keepalive(self) -> None:
        """Reconnect when the session dies (kept txns must be replayed) and heartbeat when idle."""
        while not self._closing:
            if self._conn is not None:
                idle_left = self._heartbeat_s - (time.monotonic() - self._last_io)
                if idle_left > 0:
                    try:
                        await asyncio.wait_for(self._disconnected.wait(), idle_left)
                    except TimeoutError:
                        pass
            async with self._lock:
                if self._conn is not None and not self._reader_alive():
                    self._drop()
                if self._conn is None:
                    try:
                        await self._ensure_session()
                    except Unavailable:
                        return
                elif self.config.heartbeats and time.monotonic() - self._last_io >= self._heartbeat_s:
                    try:
                        reply = await self._roundtrip(Heartbeat(now_ms()), inject=False)
                        self.stats.heartbeats += 1
                        if type(reply) is Nak:
                            self.stats.nak(reply.reason)
                    except _Dropped:
                        self._drop()
                if self._reader_alive():
                    self._disconnected.clear()

    # ------------------------------------------------------------------ log

    def _write(self, record: dict[str, Any]) -> None:
        self._log.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._log.flush()
