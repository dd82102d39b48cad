"""A simulated device (turnstile or till) speaking protocol v1 to the gateway over TCP.

It is the reference device of docs/protocol.md section 10 (the durability contract):

- every state-changing request takes a fresh txn from a counter that only grows
  over the device's whole life; the request (txn and payload) is written to the
  device's log before it leaves, so a restarted simulator resends it with the
  same txn and continues above it (10.1);
- an ACCEPTED txn is kept until, IN ONE SESSION, its DECISION (fresh or
  DUPLICATE) arrived and AFTER it a DURABLE_ACK with durable_txn >= txn (10.4).
  A HELLO_ACK's watermark drops nothing: after every HELLO all kept txns are
  replayed in txn order as advices, together with the request whose reply never
  arrived (same txn, plain; a PASSAGE carries ADVICE always), and only then new
  requests go out (10.5);
- an advice answered NAK SERVER_BUSY is sent again in the same session after a
  jittered pause, before anything with a higher txn (10.7); a kept txn answered
  TXN_TOO_OLD is durable (the gateway forgets accepted decisions only once they
  are durable) and is dropped (10.11); any other DENY of an advice is final and
  recorded as a gateway contract error;
- NAK TXN_OUT_OF_RANGE: the counter is corrupt; it moves to one above the
  greater of this session's HELLO_ACK durable_txn and the highest txn used, and
  the request goes again with the new txn in the same session (10.1);
- a counter that went back (10.15): a device with no log at all starts its counter at its
  first HELLO_ACK's durable_txn; a new request answered NAK TXN_REUSED or DENY TXN_TOO_OLD
  moves the counter above the greater of that watermark, the highest txn used and the refused
  txn, and goes again in the same session (``counter`` record, ``counter_caught_up``);
- a HELLO_ACK below the highest watermark ever seen (a restored database) is
  logged and counted; nothing else changes (10.6);
- one request in flight; on a reply timeout the last frame is retransmitted
  byte for byte a few times, then the connection is dropped. Reconnects back off
  as section 10.12 says: before the n-th consecutive attempt a uniformly random
  wait in [0, min(30 s, 100 ms * 2^(n-1))] (seeded jitter), n reset once a
  session lasted 60 s; the device gives up after ``deadline_s`` without a
  session. A disconnect the simulator injects on purpose (``disconnect_rate``,
  to lose a reply) is a test fault, not a failing link: it reconnects at once;
- HEARTBEAT when idle, every heartbeat_interval_ms from the HELLO_ACK.

Every device keeps a JSON-lines log (one object a line, field ``t``):

- ``txn``: the counter and the full request, written before the request leaves;
- ``accept``: what the gateway accepted (once per txn: a DUPLICATE accept of a
  logged txn is not logged again) - what simulators.verify compares with the journal;
- ``answered``: a DENY of the request in flight;
- ``durable``: a higher watermark seen (what the next HELLO reports);
- ``dropped``: kept txns confirmed durable (or ended by the gateway's DENY);
- ``counter``: the counter moved after TXN_OUT_OF_RANGE (``refused``: the corrupt txn), after
  TXN_REUSED or TXN_TOO_OLD of a new request (``refused``: that txn) or at a first start
  (``refused``: null);
- ``watermark_back``: a HELLO_ACK below the highest watermark seen.

``read_log`` turns it back into the counter, the accepted set and what is still kept.
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

from ledger.codes import JournalKind
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
    LIST_FLAG_MORE,
    LIST_FLAG_RESET,
    LIST_FLAG_SNAPSHOT,
    AllowancePage,
    AllowanceSync,
    DurableAck,
    FireAlarm,
    FireReset,
    ListOp,
    ListPage,
    ListSync,
    Heartbeat,
    Hello,
    HelloAck,
    Item,
    Mode,
    ModeApplied,
    Nak,
    NakReason,
    Outcome,
    Passage,
    ProtocolError,
    Purchase,
    Role,
    TopupCash,
    TurnstileMode,
)
from protocol.auth import sign_hello

# Journal kinds (storage schema: journal.kind) by request type.
# Journal kinds (ledger.codes): what each request becomes in the journal.
KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP = (
    JournalKind.ENTRY, JournalKind.PASSAGE, JournalKind.PURCHASE, JournalKind.CASH_TOPUP
)
KIND_FIRE_ALARM, KIND_FIRE_RESET = JournalKind.FIRE_ALARM, JournalKind.FIRE_RESET
KIND_OF = {
    CardPresented: KIND_ENTRY, Passage: KIND_PASSAGE, Purchase: KIND_PURCHASE, TopupCash: KIND_TOPUP,
    FireAlarm: KIND_FIRE_ALARM, FireReset: KIND_FIRE_RESET,
}
KIND_NAMES = {
    KIND_ENTRY: "entry", KIND_PASSAGE: "passage", KIND_PURCHASE: "purchase", KIND_TOPUP: "topup",
    KIND_FIRE_ALARM: "fire_alarm", KIND_FIRE_RESET: "fire_reset",
}
_CLASS_OF = {v: k for k, v in KIND_OF.items()}
# A till's own offline screens (docs/protocol.md 9.2): the sales awaiting sync, and a sale made alone.
TEMPLATE_OFFLINE_PENDING = 109
TEMPLATE_ACCEPT_PURCHASE_OFFLINE = 110


class Unavailable(Exception):
    """The gateway could not be reached (or kept refusing) until the device's deadline."""


class _Dropped(Exception):
    """The connection is gone (or we dropped it): reconnect and go on."""


class _Injected(_Dropped):
    """A disconnect the simulator injected on purpose (a lost reply): reconnect at once."""


class _GoOffline(Exception):
    """A turnstile with an allow-list lost the gateway with a tap in flight: decide it alone."""


# Events a turnstile keeps while it decides alone, until the gateway has them durable: a
# 1,500-pupil school's turnstile sees at most ~4 events per pupil a day (in, out, their
# passages), 6,000 a day: this is over two weeks offline. When full it refuses (fails secure).
OFFLINE_EVENTS_MAX = 100_000
# A counter that went back (10.15) moves past each refused txn; the gateway remembers at most its
# idempotency window (256 by default) above what it forgot, so more moves than this mean
# something else is wrong.
CATCH_UP_MOVES_MAX = 1_024


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
    replays_deferred: int = 0  # advices answered NAK SERVER_BUSY (kept, sent again after a pause)
    replays_too_old: int = 0  # replayed accepted txns answered TXN_TOO_OLD: durable and forgotten, dropped
    renumbered: int = 0  # requests sent again with a new txn after NAK TXN_OUT_OF_RANGE
    counter_caught_up: int = 0  # moves of a counter that went back (NAK TXN_REUSED, TXN_TOO_OLD of a new request)
    watermark_regressions: int = 0  # HELLO_ACKs below the highest watermark seen (restored database)
    backoff_waits: int = 0  # reconnect attempts that waited first (section 10.12)
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
            f"replays_too_old={self.replays_too_old} resends={self.resends} retransmits={self.retransmits} "
            f"injected_disconnects={self.injected_disconnects} heartbeats={self.heartbeats} "
            f"backoff_waits={self.backoff_waits} renumbered={self.renumbered} counter_caught_up={self.counter_caught_up} "
            f"watermark_regressions={self.watermark_regressions}\n"
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
        "identifier": getattr(event, "identifier", b"").hex(),
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
    """What a device's log says: its counter, its accepted txns, what it still keeps."""

    txn_high: int = 0  # the counter: the highest txn handed out (after a ``counter`` record, from there)
    used_high: int = 0  # the highest txn the gateway answered with a DECISION
    durable_txn: int = 0  # the highest watermark seen (reported in HELLO)
    accepted: dict[int, dict[str, Any]] = field(default_factory=dict)  # txn -> accept record
    dropped: set[int] = field(default_factory=set)  # accepted txns no longer kept
    sent: dict[int, dict[str, Any]] = field(default_factory=dict)  # txn -> event JSON of the last unanswered request

    @property
    def kept(self) -> dict[int, dict[str, Any]]:
        """Accepted txns not yet confirmed durable: replayed after every HELLO."""
        return {txn: rec for txn, rec in self.accepted.items() if txn not in self.dropped}


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
                state.used_high = max(state.used_high, rec["txn"])
            elif t == "accept":
                state.accepted.setdefault(rec["txn"], rec)
                state.sent.pop(rec["txn"], None)
                state.used_high = max(state.used_high, rec["txn"])
            elif t == "durable":
                state.durable_txn = max(state.durable_txn, rec["txn"])
            elif t == "dropped":
                state.dropped.update(rec["txns"])
            elif t == "counter":
                state.txn_high = rec["txn"]  # moved back from a corrupt value (TXN_OUT_OF_RANGE)
                state.sent.pop(rec.get("refused"), None)
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
    # Reconnect back-off (docs/protocol.md 10.12): full jitter below min(max, initial * 2^(n-1))
    # before the n-th consecutive attempt; n starts again once a session lasted backoff_reset_s.
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 30.0
    backoff_reset_s: float = 60.0
    deadline_s: float = 120.0  # give up reaching the gateway after this long without success
    disconnect_rate: float = 0.0  # probability per request to drop the connection abruptly
    heartbeats: bool = True
    firmware: str = "ecard-sim-1.0"
    # A turnstile that keeps its school's allow-list (LIST_SYNC after every HELLO) and decides
    # from it alone while the gateway cannot be reached (docs/building.md).
    offline_list: bool = False
    # A till that keeps its offline allowances (ALLOWANCE_SYNC after every HELLO and every
    # allowance_sync_interval_s) and sells from them alone while the gateway cannot be reached
    # (docs/protocol.md 4.16, 10.14).
    offline_sales: bool = False
    allowance_sync_interval_s: float = 10.0


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
        # Injected disconnects and the reconnect jitter: seeded, never the global RNG (two
        # streams, so that the back-off does not shift which requests lose their reply).
        self._rng = random.Random(f"{seed}/device/{device_id}")
        self._backoff_rng = random.Random(f"{seed}/backoff/{device_id}")
        self.log_path = log_path(log_dir, device_id)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        state = read_log(self.log_path)
        # No persisted state at all (a first start, or the log lost): the counter starts at the
        # first HELLO_ACK's watermark (10.15).
        self._first_life_start = not (state.txn_high or state.kept or state.sent or state.durable_txn)
        self._fresh_txn = 0  # the txn a request of this call was given (a TXN_TOO_OLD for it: 10.15)
        self.txn_high = state.txn_high  # the counter: the last txn handed out
        self.txn_used = state.used_high  # the highest txn answered with a DECISION
        self.watermark = state.durable_txn  # the highest watermark ever seen (reported in HELLO)
        self.logged: set[int] = set(state.accepted)
        # Accepted txns not yet confirmed durable (10.4): txn -> request (as first sent).
        self.kept: dict[int, Any] = {txn: event_from_json(rec["event"]) for txn, rec in state.kept.items()}
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
        # Session-scoped confirmation (10.4): ACCEPTs received in this session, in stream
        # order before any DURABLE_ACK that can confirm them, and txns confirmed durable
        # that the requester has not filed into ``kept`` yet.
        self._decided: set[int] = set()
        self._confirmed: set[int] = set()
        self._session_watermark = 0  # durable_txn of this session's HELLO_ACK
        # Reconnect back-off (10.12).
        self._failures = 0  # consecutive failed attempts / broken sessions
        self._wait_before_connect = False
        self._session_up_at: float | None = None  # monotonic time of the HELLO_ACK
        # The building (docs/building.md). A turnstile's arm: NORMAL, or RELEASED both ways by
        # the gateway's MODE during a fire alarm; it stays released when the gateway is lost
        # until told NORMAL. ``fire_input`` is the panel's wired contact: released by itself.
        self.mode = int(TurnstileMode.NORMAL)
        self.alarm_at_ms = 0
        self.fire_input = False
        self.mode_at = 0.0  # monotonic time the last MODE arrived
        self.mode_changed = asyncio.Event()
        self._mode_report: asyncio.Task | None = None
        # The offline allow-list (config.offline_list): identifier -> ListOp, at list_version.
        self.allow_list: dict[bytes, int] = {}
        self.list_version = 0
        self.offline_decisions = 0
        # The offline allowances (config.offline_sales): identifier -> [ListOp, allowance in
        # kopecks (signed), consecutive offline sales], at allowance_version, with the school's
        # floor and cap from the last page.
        self.allowances: dict[bytes, list[int]] = {}
        self.allowance_version = 0
        self.offline_floor_kopecks = 0
        self.offline_sales_per_card_max = 0
        self.allowance_synced_at = 0.0  # monotonic time of the last completed sync
        # What the till's screen shows besides a decision: (display template, params) of
        # gateway/templates/display_ru.toml; offline, 109 OFFLINE_PENDING with the sales awaiting
        # sync. None: nothing.
        self.display: tuple[int, tuple[int, ...]] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def settled(self) -> bool:
        """Every accepted txn is confirmed durable and no request waits for its reply."""
        return not self.kept and self.pending is None

    async def start(self) -> None:
        """Connect (replaying what the log says is still kept) and keep the session alive."""
        async with self._lock:
            await self._ensure_session()
        self._background = asyncio.create_task(self._keepalive(), name=f"device-{self.device_id}")

    async def close(self) -> None:
        self._closing = True
        if self._mode_report is not None:
            self._mode_report.cancel()
        if self._background is not None:
            self._background.cancel()
            try:
                await self._background
            except (asyncio.CancelledError, Exception):
                pass
        async with self._lock:
            self._drop(abort=False)
        self._log.close()

    @property
    def released(self) -> bool:
        """The arm turns freely both ways: the gateway said so, or the panel's wire does."""
        return self.fire_input or self.mode == TurnstileMode.RELEASED

    async def fire_alarm(self) -> Decision:
        """A fire panel: the alarm went off (journaled; kept until durable like a sale)."""
        return await self._transaction(lambda txn: FireAlarm(txn, 0, now_ms()))

    async def fire_reset(self) -> Decision:
        return await self._transaction(lambda txn: FireReset(txn, 0, now_ms()))

    def _on_mode(self, event: Mode) -> None:
        if event.mode != self.mode:
            self.mode_at = time.monotonic()
        self.mode, self.alarm_at_ms = event.mode, event.alarm_at_ms
        self._write({"t": "mode", "mode": event.mode, "alarm_at_ms": event.alarm_at_ms})
        self.mode_changed.set()
        if self._mode_report is None or self._mode_report.done():
            self._mode_report = asyncio.create_task(self._report_mode(), name=f"mode-{self.device_id}")

    async def _report_mode(self) -> None:
        """MODE_APPLIED: the gateway records the release (and corrects a wrong mode)."""
        async with self._lock:
            if self._conn is None:
                return  # reported after the next HELLO
            try:
                await self._roundtrip(ModeApplied(self.mode, self.alarm_at_ms), inject=False)
            except _Dropped:
                self._drop(broken=True)

    def register_card(self, identifier: bytes, account_id: int | None) -> None:
        """What the simulator knows about a card (for the log's account id column)."""
        self._account_of[identifier] = account_id

    async def card_presented(self, identifier: bytes, direction: int) -> Decision:
        if await self._offline():
            return self._decide_offline(
                lambda txn: CardPresented(txn, TXN_FLAG_ADVICE, direction, now_ms(), identifier), identifier)
        try:
            return await self._transaction(lambda txn: CardPresented(txn, 0, direction, now_ms(), identifier))
        except _GoOffline:
            return self._decide_in_flight_offline(identifier)

    async def passage(self, identifier: bytes, direction: int, granted_txn: int) -> Decision:
        # A passage reports a fact: ADVICE on every PASSAGE, first send and resends alike (4.5).
        build = lambda txn: Passage(txn, TXN_FLAG_ADVICE, direction, now_ms(), granted_txn, identifier)  # noqa: E731
        if await self._offline():
            return self._decide_offline(build, identifier, passage=True)
        try:
            return await self._transaction(build)
        except _GoOffline:
            return self._decide_in_flight_offline(identifier, passage=True)

    # ------------------------------------------------------------------ offline (turnstile)

    async def _offline(self) -> bool:
        """True when this turnstile decides alone: it keeps a list and one attempt to reach the
        gateway failed (no waiting through the back-off: the pupil is at the arm)."""
        if not self._alone:
            return False
        if self.pending is not None and not (self.kind == DeviceKind.TILL and type(self.pending) is TopupCash):
            return False  # settle the request in flight first (a till's top-up waits for its answer)
        async with self._lock:
            return not await self._reconnect_once()

    @property
    def _alone(self) -> bool:
        """This device decides alone when it cannot reach the gateway."""
        return self.config.offline_list or self.config.offline_sales

    async def _reconnect_once(self) -> bool:
        """One attempt at a session (HELLO, replay, list sync) if there is none. Lock held."""
        if self._conn is not None and not self._reader_alive():
            self._drop(broken=True)
        if self._conn is not None and not self._needs_replay:
            return True
        try:
            if self._conn is None:
                await self._open()
            await self._replay()
            await self._sync_list()
            await self._sync_allowances()
            return True
        except (_Dropped, OSError, TimeoutError):
            self.stats.connect_failures += 1
            self._drop(broken=True)
            return False

    def _decide_in_flight_offline(self, identifier: bytes, *, passage: bool = False) -> Decision:
        """The connection died with this tap in flight: it is decided alone under the same txn, as
        an ADVICE (if the gateway had decided it, the replay gets its stored decision back)."""
        pending = self.pending
        assert pending is not None
        advice = msgspec.structs.replace(pending, flags=pending.flags | TXN_FLAG_ADVICE)
        self.txn_high -= 1  # _decide_offline numbers it again: the same txn
        return self._decide_offline(lambda _txn: advice, identifier, passage=passage)

    def _decide_offline(self, build, identifier: bytes, *, passage: bool = False) -> Decision:
        """Judge from the local list; keep an accepted event as an ADVICE with its own time, to
        replay in txn order after the next HELLO (the gateway applies it exactly once)."""
        op = self.allow_list.get(identifier)
        if len(self.kept) >= OFFLINE_EVENTS_MAX:
            reason = DenyReason.TRY_AGAIN_LATER  # full: fail secure, nothing more is taken
        elif passage or op == ListOp.ALLOW:
            reason = DenyReason.OK
        else:
            reason = DenyReason.CARD_BLOCKED if op == ListOp.BLOCK else DenyReason.UNKNOWN_CARD
        self.txn_high += 1
        event = build(self.txn_high)
        self._write({"t": "txn", "txn": event.txn, "event": event_to_json(event)})
        self.offline_decisions += 1
        if reason != DenyReason.OK:
            decision = Decision(event.txn, int(Outcome.DENY), int(reason), 0, 0, 0xFF, int(reason), ())
        else:
            template = 105 if passage else (100 if event.direction == 1 else 101)
            decision = Decision(event.txn, int(Outcome.ACCEPT), 0, 0, 0, 0xFF, template, ())
        self._answered(event, decision)
        return decision

    async def sync_list(self) -> int:
        """Bring the allow-list up to date now (it is also synced after every HELLO)."""
        async with self._lock:
            await self._ensure_session()
            await self._sync_list()
        return self.list_version

    async def _sync_list(self) -> None:
        """LIST_SYNC until the list is current: a snapshot's pages, then the changes (4.15). Lock held."""
        if not self.config.offline_list or self.kind != DeviceKind.TURNSTILE:
            return
        after = b""
        while True:
            page = await self._roundtrip(ListSync(self.list_version, after), inject=False)
            if type(page) is not ListPage:
                raise _Dropped(f"unexpected answer to LIST_SYNC: {page!r}")
            if page.flags & LIST_FLAG_RESET:
                self.allow_list.clear()
            for entry in page.entries:
                if entry.op == ListOp.REMOVE:
                    self.allow_list.pop(entry.identifier, None)
                else:
                    self.allow_list[entry.identifier] = entry.op
            self.list_version = page.version
            if page.flags & LIST_FLAG_SNAPSHOT and page.flags & LIST_FLAG_MORE:
                after = page.entries[-1].identifier
                continue
            after = b""
            if not page.flags & (LIST_FLAG_SNAPSHOT | LIST_FLAG_MORE):
                return

    async def purchase(self, identifier: bytes, items: list[tuple[int, int, int]]) -> Decision:
        its = tuple(Item(*i) for i in items)
        total = sum(i.quantity * i.unit_price_kopecks for i in its)
        build = lambda txn: Purchase(txn, 0, now_ms(), total, identifier, its)  # noqa: E731
        if not self.config.offline_sales:
            return await self._transaction(build)
        if await self._offline():
            return self._sell_offline(build, identifier, total)
        try:
            return await self._transaction(build)
        except _GoOffline:
            return self._sell_in_flight_offline(identifier, total)

    async def topup(self, identifier: bytes, amount_kopecks: int, cashier_id: int) -> Decision:
        build = lambda txn: TopupCash(txn, 0, now_ms(), amount_kopecks, cashier_id, identifier)  # noqa: E731
        if not self.config.offline_sales:
            return await self._transaction(build)
        if await self._offline():
            return self._refuse_offline(DenyReason.TRY_AGAIN_LATER)  # cash is taken online only
        try:
            return await self._transaction(build)
        except _GoOffline:
            # The gateway may have credited it: the till holds the cash until the gateway answers
            # the resend after the next HELLO (10.5). Nothing more is taken meanwhile.
            return self._refuse_offline(DenyReason.TRY_AGAIN_LATER)

    # ------------------------------------------------------------------ offline (till)

    @property
    def awaiting_sync(self) -> int:
        """Sales made alone that the gateway has not confirmed yet (shown on the till)."""
        return sum(1 for event in self.kept.values() if event.flags & TXN_FLAG_ADVICE)

    def _refuse_offline(self, reason: int) -> Decision:
        self.display = (TEMPLATE_OFFLINE_PENDING, (self.awaiting_sync,))
        return Decision(0, int(Outcome.DENY), int(reason), 0, 0, 0xFF, int(reason), ())

    def _offline_refusal(self, identifier: bytes, total: int, *, spent: bool = False) -> int:
        """What a till alone says to this card and total (docs/protocol.md 10.14). ``spent``: the
        total is already taken off the card's allowance (a sale that was in flight)."""
        entry = self.allowances.get(identifier)
        if len(self.kept) >= OFFLINE_EVENTS_MAX:
            return DenyReason.TRY_AGAIN_LATER  # full: fail secure
        if entry is not None and entry[0] == ListOp.BLOCK:
            return DenyReason.CARD_BLOCKED
        if entry is None:
            return DenyReason.OFFLINE_LIMIT  # no allowance here (unknown, or held at another till)
        left = entry[1] + (total if spent else 0)
        if left < total or entry[2] >= self.offline_sales_per_card_max or total > self.offline_floor_kopecks:
            return DenyReason.OFFLINE_LIMIT
        return DenyReason.OK

    def _sell_offline(self, build, identifier: bytes, total: int, *, in_flight: Any = None) -> Decision:
        """Sell from the card's allowance alone; keep the sale as an ADVICE with its own time."""
        spent = in_flight is not None
        reason = self._offline_refusal(identifier, total, spent=spent)
        if in_flight is not None:
            event = msgspec.structs.replace(in_flight, flags=in_flight.flags | TXN_FLAG_ADVICE)
        else:
            self.txn_high += 1
            event = msgspec.structs.replace(build(self.txn_high), flags=TXN_FLAG_ADVICE)
        self._write({"t": "txn", "txn": event.txn, "event": event_to_json(event)})
        self.offline_decisions += 1
        if reason != DenyReason.OK:
            decision = Decision(event.txn, int(Outcome.DENY), int(reason), 0, 0, 0xFF, int(reason), ())
        else:
            entry = self.allowances[identifier]
            if not spent:
                entry[1] -= total
            entry[2] += 1
            # The total and the sales awaiting sync, this one included.
            decision = Decision(event.txn, int(Outcome.ACCEPT), 0, 0, 0, 0xFF, TEMPLATE_ACCEPT_PURCHASE_OFFLINE,
                                (total, self.awaiting_sync + 1))
        waiting = self.pending
        self._answered(event, decision)
        if in_flight is None:
            self.pending = waiting  # a top-up in flight still waits for the gateway's answer
        self.display = (TEMPLATE_OFFLINE_PENDING, (self.awaiting_sync,))
        return decision

    def _sell_in_flight_offline(self, identifier: bytes, total: int) -> Decision:
        """The link died with this sale in flight. The gateway may have accepted it and counted it
        against the card's allowance, so it is taken off here too, whatever the till decides now;
        then it is decided alone under the same txn (an approved one is replayed as an ADVICE and
        gets the gateway's stored decision back if it had one). A refused one is not sent again:
        a fresh ACCEPT later would charge for a meal not given (10.14)."""
        pending = self.pending
        assert pending is not None
        entry = self.allowances.get(identifier)
        if entry is not None:
            entry[1] -= total
        return self._sell_offline(None, identifier, total, in_flight=pending)

    async def sync_allowances(self) -> int:
        """Bring the allowances up to date now (also done after every HELLO and on a timer)."""
        async with self._lock:
            await self._ensure_session()
            await self._sync_allowances()
        return self.allowance_version

    async def _sync_allowances(self) -> None:
        """ALLOWANCE_SYNC until a page without MORE (4.16). After the replay: the gateway has
        counted every sale made alone before it answers. Lock held."""
        if not self.config.offline_sales or self.kind != DeviceKind.TILL:
            return
        while True:
            page = await self._roundtrip(AllowanceSync(self.allowance_version), inject=False)
            if type(page) is not AllowancePage:
                raise _Dropped(f"unexpected answer to ALLOWANCE_SYNC: {page!r}")
            if page.flags & LIST_FLAG_RESET:
                self.allowances.clear()
            for e in page.entries:
                if e.op == ListOp.REMOVE:
                    self.allowances.pop(e.identifier, None)
                    continue
                entry = self.allowances.setdefault(e.identifier, [e.op, 0, 0])
                entry[0] = e.op
                entry[1] += e.delta_kopecks
            self.allowance_version = page.version
            self.offline_floor_kopecks = page.floor_kopecks
            self.offline_sales_per_card_max = page.sales_per_card_max
            if not page.flags & LIST_FLAG_MORE:
                self.allowance_synced_at = time.monotonic()
                self.display = None
                return

    async def balance(self, identifier: bytes) -> Decision:
        async with self._lock:
            return await self._request(BalanceQuery(identifier), kind=None)

    async def wait_settled(self, timeout_s: float) -> bool:
        """Wait until every kept txn is confirmed durable (reconnecting as needed)."""
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
            # Persisted (txn and payload) before the first byte leaves (10.1).
            self._write({"t": "txn", "txn": event.txn, "event": event_to_json(event)})
            self.pending = event
            self._fresh_txn = event.txn
            return await self._request(event, kind=KIND_OF[type(event)])

    async def _request(self, event: Any, kind: int | None) -> Decision:
        """Send ``event`` until it gets a decision (reconnecting as needed). Lock held."""
        started = time.perf_counter()
        while True:
            if self._alone and kind is not None:
                if not await self._reconnect_once():
                    raise _GoOffline  # the pupil is at the arm: no waiting through the back-off
            else:
                await self._ensure_session()
            if kind is not None:
                if self.pending is None:
                    # The resend after a reconnect got the answer (and logged it).
                    decision = self._resolved
                    break
                event = self.pending  # possibly renumbered after TXN_OUT_OF_RANGE
            try:
                decision = await self._exchange(event, kind, inject=True)
            except _Dropped as exc:
                self._drop(broken=not isinstance(exc, _Injected))
                if self._alone and kind is not None and not isinstance(exc, _Injected):
                    raise _GoOffline from exc
                continue
            break
        assert decision is not None
        self.stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        return decision

    async def _exchange(self, event: Any, kind: int | None, *, inject: bool = False) -> Decision:
        """One request on the current session until it is decided. Lock held.

        NAK SERVER_BUSY of an advice: its txn did not count as sent, so it goes again in this
        session after a jittered pause (before anything with a higher txn). NAK TXN_OUT_OF_RANGE:
        renumber and go again. Any other NAK, or a broken connection: ``_Dropped``.
        """
        busy = renumbered = caught_up = 0
        while True:
            reply = await self._roundtrip(event, inject=inject)
            inject = False
            if type(reply) is Decision:
                if (reply.reason == DenyReason.TXN_TOO_OLD and kind is not None and event is self.pending
                        and event.txn == self._fresh_txn):
                    # A new request below what the gateway has forgotten: the counter went back.
                    caught_up, event = self._catch_up(caught_up, event)
                    continue
                if kind is not None:
                    if (type(event) is Purchase and reply.outcome == Outcome.ACCEPT and event.txn not in self.logged
                            and event.identifier in self.allowances):
                        entry = self.allowances[event.identifier]  # its first ACCEPT (4.16)
                        entry[1] -= event.total_kopecks
                        entry[2] = 0
                    self._answered(event, reply)
                else:
                    self._count(None, reply)
                return reply
            if type(reply) is not Nak:
                raise _Dropped(f"unexpected reply {reply!r}")
            self.stats.nak(reply.reason)
            if reply.reason == NakReason.SERVER_BUSY and kind is not None and _is_advice(event):
                busy += 1
                self.stats.replays_deferred += 1
                await asyncio.sleep(self._jitter(busy))
                continue
            if reply.reason == NakReason.TXN_OUT_OF_RANGE and kind is not None and event is self.pending:
                if renumbered:
                    # Even the txns we used are out of range: the gateway lost them (a restored
                    # database); renumbering cannot help, the operator must look.
                    self.stats.errors.append(f"device {self.device_id}: txn {event.txn} still out of range")
                    raise _Dropped("TXN_OUT_OF_RANGE after renumbering")
                renumbered += 1
                event = self._renumber(event)
                continue
            if reply.reason == NakReason.TXN_REUSED and kind is not None and event is self.pending:
                # The gateway remembers this txn for another request: the counter went back.
                caught_up, event = self._catch_up(caught_up, event)
                continue
            raise _Dropped(f"request refused: {_nak_name(reply.reason)} {reply.detail}")

    def _catch_up(self, moves: int, event: Any) -> tuple[int, Any]:
        """A counter that went back (10.15): one more move, past the refused txn. Returns the
        moves so far and the request with its new txn (it goes again in this session)."""
        if moves >= CATCH_UP_MOVES_MAX:
            raise _Dropped(f"txn {event.txn} still behind the gateway after {moves} moves")
        self.stats.counter_caught_up += 1
        event = self._renumber(event, above=event.txn)
        self._fresh_txn = event.txn
        return moves + 1, event

    def _renumber(self, event: Any, above: int = 0) -> Any:
        """NAK TXN_OUT_OF_RANGE: the counter is corrupt. Move it to one above the greater of this
        session's HELLO_ACK durable_txn and the highest txn used, persist it, and return the same
        request with the new txn (it goes again in this session: the refused txn did not count).
        NAK TXN_REUSED or TXN_TOO_OLD for a new request (10.15): the same, and above the refused txn."""
        base = max(self._session_watermark, self.txn_used, max(self.kept, default=0), above)
        self._write({"t": "counter", "txn": base, "refused": event.txn})
        self.txn_high = base + 1
        renumbered = msgspec.structs.replace(event, txn=self.txn_high)
        self._write({"t": "txn", "txn": renumbered.txn, "event": event_to_json(renumbered)})
        self.pending = renumbered
        self.stats.renumbered += 1
        return renumbered

    def _answered(self, event: Any, decision: Decision) -> None:
        """The decision of the request in flight (possibly a DUPLICATE): log and keep an accept."""
        self.pending = None
        self._resolved = decision
        self.txn_used = max(self.txn_used, event.txn)
        self._count(KIND_OF[type(event)], decision)
        if decision.outcome == Outcome.ACCEPT:
            if event.txn not in self.logged:
                self.logged.add(event.txn)
                account_id = self._account_of.get(getattr(event, "identifier", b""))  # a fire panel's: none
                self._write(accepted_record(self.device_id, event, decision, account_id))
            self.kept[event.txn] = event
            self._drop_confirmed()  # its DURABLE_ACK may have been read before we got here
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
        last_ok = time.monotonic()
        while self._conn is None or self._needs_replay:
            if self._closing:
                raise Unavailable(f"device {self.device_id} is closing")
            if self._conn is None:
                if time.monotonic() - last_ok > self.config.deadline_s:
                    raise Unavailable(f"device {self.device_id}: gateway unreachable for {self.config.deadline_s} s")
                if self._wait_before_connect:
                    self._wait_before_connect = False
                    self.stats.backoff_waits += 1
                    await asyncio.sleep(self._jitter(self._failures))
                try:
                    await self._open()
                except (_Dropped, OSError, TimeoutError):
                    self.stats.connect_failures += 1
                    self._drop(broken=True)
                    continue
            try:
                await self._replay()
                await self._sync_list()
                await self._sync_allowances()
            except _Dropped:
                self._drop(broken=True)
                continue
            last_ok = time.monotonic()

    async def _open(self) -> None:
        cfg = self.config
        reader, writer = await asyncio.wait_for(asyncio.open_connection(cfg.host, cfg.port), cfg.connect_timeout_s)
        self._reader, self._writer = reader, writer
        self._conn = Connection(Role.DEVICE, self.device_id, self.key)  # the secure channel (spec 5a)
        self._replies = asyncio.Queue()
        self._decided = set()
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
        self._session_up_at = time.monotonic()
        # HELLO_ACK confirms nothing (10.4, 10.6): remember the watermark, drop nothing.
        self._session_watermark = reply.durable_txn
        if self._first_life_start:
            self._first_life_start = False
            if reply.durable_txn > self.txn_high:
                # Nothing persisted, and the gateway has made txns of this id durable: numbering
                # from 1 would meet them (TXN_TOO_OLD, TXN_REUSED). Start above them (10.15).
                self._write({"t": "counter", "txn": reply.durable_txn, "refused": None})
                self.txn_high = reply.durable_txn
        if reply.durable_txn < self.watermark:
            # The gateway is behind what we saw (a restored database): keep everything, replay it,
            # keep our counter; the operator has to look at it.
            self.stats.watermark_regressions += 1
            self._write({"t": "watermark_back", "gateway": reply.durable_txn, "seen": self.watermark})
        self._note_watermark(reply.durable_txn)
        if self._sessions:
            self.stats.reconnects += 1
        self._sessions += 1
        self._needs_replay = True
        self._disconnected.clear()
        if self.kind == DeviceKind.TURNSTILE and self.mode != TurnstileMode.NORMAL:
            # Released (through a lost connection, maybe): say so after HELLO_ACK; the gateway
            # answers MODE NORMAL if the alarm is over (docs/building.md). A turnstile in NORMAL
            # has nothing to report: during an alarm the gateway sends MODE after HELLO_ACK.
            reply = await self._roundtrip(ModeApplied(self.mode, self.alarm_at_ms), inject=False)
            if type(reply) is Nak:
                self.stats.nak(reply.reason)

    _needs_replay = False
    _resolved: Decision | None = None

    async def _replay(self) -> None:
        """After HELLO: every kept txn as an advice and the request whose reply is missing, in txn order."""
        order = sorted(self.kept)
        if self.pending is not None:
            order = sorted(set(order) | {self.pending.txn})
        for txn in order:
            if self.pending is not None and txn == self.pending.txn:
                self.stats.resends += 1
                await self._exchange(self.pending, KIND_OF[type(self.pending)])
                continue
            event = self.kept.get(txn)
            if event is None:  # confirmed meanwhile
                continue
            advice = msgspec.structs.replace(event, flags=event.flags | TXN_FLAG_ADVICE)
            self.stats.replays += 1
            reply = await self._replay_one(advice)
            self._count(KIND_OF[type(event)], reply, replay=True)
            self.txn_used = max(self.txn_used, txn)
            if reply.outcome == Outcome.ACCEPT:
                if not reply.flags & DECISION_FLAG_DUPLICATE:
                    self.stats.replays_applied += 1
                continue
            if reply.reason == DenyReason.TXN_TOO_OLD:
                # We hold an ACCEPT for it and the gateway forgets an accepted decision only once it
                # is durable: it is durable (10.11).
                self.stats.replays_too_old += 1
                self._end_kept(txn, "TXN_TOO_OLD")
                continue
            # Any other DENY of an advice is final (10.7): the gateway will not apply what we did.
            self.stats.errors.append(
                f"device {self.device_id}: advice txn {txn} declined: {_reason_name(reply.reason)}"
            )
            self._end_kept(txn, _reason_name(reply.reason))
        self._needs_replay = False

    async def _replay_one(self, advice: Any) -> Decision:
        """A kept txn as an advice; SERVER_BUSY: pause and send it again in this session."""
        busy = 0
        while True:
            reply = await self._roundtrip(advice, inject=False)
            if type(reply) is Decision:
                return reply
            if type(reply) is not Nak:
                raise _Dropped(f"unexpected reply {reply!r}")
            self.stats.nak(reply.reason)
            if reply.reason != NakReason.SERVER_BUSY:
                if reply.reason == NakReason.TXN_OUT_OF_RANGE:
                    # An accepted txn the gateway does not know: its database lost it.
                    self.stats.errors.append(f"device {self.device_id}: kept txn {advice.txn} is out of range")
                raise _Dropped(f"advice refused: {_nak_name(reply.reason)} {reply.detail}")
            busy += 1
            self.stats.replays_deferred += 1
            await asyncio.sleep(self._jitter(busy))

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
            raise _Injected("injected disconnect")
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
                        if self._conn is conn:
                            self._on_durable(event.durable_txn)
                        continue
                    if type(event) is Mode:
                        if self._conn is conn:
                            self._on_mode(event)
                        continue
                    if type(event) is Decision and event.outcome == Outcome.ACCEPT and event.txn and self._conn is conn:
                        # Read in stream order: only a DURABLE_ACK read after this can confirm it.
                        self._decided.add(event.txn)
                    replies.put_nowait(event)
                if not data:
                    return
        except (OSError, ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            replies.put_nowait(None)
            if self._conn is conn:
                self._disconnected.set()

    def _note_watermark(self, txn: int) -> None:
        """The highest watermark seen, for the next HELLO (it drops nothing by itself)."""
        if txn > self.watermark:
            self.watermark = txn
            self._write({"t": "durable", "txn": txn})

    def _on_durable(self, txn: int) -> None:
        """DURABLE_ACK in the current session: confirms the txns ACCEPTed in it before (10.4)."""
        self._note_watermark(txn)
        confirmed = {t for t in self._decided if t <= txn}
        if confirmed:
            self._decided -= confirmed
            self._confirmed |= confirmed
            self._drop_confirmed()
        self._durable_changed.set()

    def _drop_confirmed(self) -> None:
        done = sorted(t for t in self._confirmed if t in self.kept)
        if not done:
            return
        for t in done:
            del self.kept[t]
            self._confirmed.discard(t)
        self._write({"t": "dropped", "txns": done})
        self._durable_changed.set()

    def _end_kept(self, txn: int, why: str) -> None:
        """The gateway ended a kept txn by a DENY (TXN_TOO_OLD: durable; any other: final)."""
        if self.kept.pop(txn, None) is not None:
            self._write({"t": "dropped", "txns": [txn], "why": why})
            self._durable_changed.set()

    def _drop(self, abort: bool = True, *, broken: bool = False) -> None:
        """Close the connection. ``broken``: a failed attempt or a lost session, so the next
        connection attempt backs off (10.12); a session that lasted backoff_reset_s resets it."""
        writer, self._writer = self._writer, None
        self._conn = None
        self._replies = None
        self._decided = set()
        up_at, self._session_up_at = self._session_up_at, None
        if up_at is not None and time.monotonic() - up_at >= self.config.backoff_reset_s:
            self._failures = 0
        if broken:
            self._failures += 1
            self._wait_before_connect = True
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

    def _jitter(self, n: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^(n-1))] (docs/protocol.md 10.12)."""
        cfg = self.config
        cap = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(max(n, 1) - 1, 32)))
        return self._backoff_rng.uniform(0, cap)

    def _reader_alive(self) -> bool:
        return self._conn is not None and self._reader_task is not None and not self._reader_task.done()

    async def _keepalive(self) -> None:
        """Reconnect when the session dies (kept txns must be replayed) and heartbeat when idle."""
        while not self._closing:
            if self._conn is not None:
                idle_left = self._heartbeat_s - (time.monotonic() - self._last_io)
                if self.config.offline_sales:
                    idle_left = min(idle_left, self.config.allowance_sync_interval_s
                                    - (time.monotonic() - self.allowance_synced_at))
                if idle_left > 0:
                    try:
                        await asyncio.wait_for(self._disconnected.wait(), idle_left)
                    except TimeoutError:
                        pass
            if self._alone and self._conn is None:
                # Deciding alone meanwhile: one attempt at a time, never holding the lock
                # through the back-off (a pupil at the arm must not wait for it).
                async with self._lock:
                    back = await self._reconnect_once()
                if not back:
                    await asyncio.sleep(self._jitter(self._failures))  # _drop counted the failure
                continue
            async with self._lock:
                if self._conn is not None and not self._reader_alive():
                    self._drop(broken=True)
                if self._conn is None and self._alone:
                    continue  # it decides alone meanwhile: retried above, never holding the lock through waits
                if self._conn is None:
                    try:
                        await self._ensure_session()
                    except Unavailable:
                        return
                elif (self.config.offline_sales and time.monotonic() - self.allowance_synced_at
                      >= self.config.allowance_sync_interval_s):
                    try:
                        await self._sync_allowances()
                    except _Dropped:
                        self._drop(broken=True)
                elif self.config.heartbeats and time.monotonic() - self._last_io >= self._heartbeat_s:
                    try:
                        reply = await self._roundtrip(Heartbeat(now_ms()), inject=False)
                        self.stats.heartbeats += 1
                        if type(reply) is Nak:
                            self.stats.nak(reply.reason)
                    except _Dropped:
                        self._drop(broken=True)
                if self._reader_alive():
                    self._disconnected.clear()

    # ------------------------------------------------------------------ log

    def _write(self, record: dict[str, Any]) -> None:
        self._log.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._log.flush()


def _is_advice(event: Any) -> bool:
    return bool(event.flags & TXN_FLAG_ADVICE) or type(event) is Passage
