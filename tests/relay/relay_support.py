"""Support for the relay's tests: real brokers, the relay process, a subscriber, outbox rows.

Every wait polls a condition with a deadline; every process and port is the test's own
(except the system Mosquitto at 127.0.0.1:1883, used read-mostly under a topic prefix
of the test's own).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import aiomqtt
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from ledger.notices import (
    BankTopupNotice,
    CardNotice,
    CashTopupNotice,
    EntryNotice,
    ExitNotice,
    LowBalanceNotice,
    PurchaseNotice,
    TemporaryCardIssuedNotice,
    TemporaryCardReturnedNotice,
)
from ledger.records import JournalEntry, OutboxEvent
from protocol import Item
from relay import layout
from relay.app import READY_LINE as RELAY_READY
from relay.broker import READY_LINE as BROKER_READY
from storage.journal import JournalWriter
from tests.support import LoggedProcess

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
# How long a test waits for the relay to move events end to end on this 2-core machine.
DELIVERY_TIMEOUT_S = 60.0
_METRICS = re.compile(r"metrics on http://[\d.]+:(\d+)/metrics")


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def unique_prefix() -> str:
    """A topic prefix of the test's own: runs sharing the system broker never see each other."""
    return f"ecardtest-{secrets.token_hex(4)}/v1"


# ---------------------------------------------------------------- outbox rows, as the gateway writes them


def make_events(count: int, first_txn: int = 1, at_ms: int = 1_764_050_000_000) -> list[OutboxEvent]:
    """Events of every notice kind, over a few schools and accounts; event ids as the machine makes them."""
    events = []
    for n in range(count):
        txn = first_txn + n
        device_id, account_id, school_id = 10 + n % 4, 100 + n % 37, 1 + n % 3
        common = {"account_id": account_id, "school_id": school_id, "at_ms": at_ms + n}
        choice = n % 9
        if choice == 0:
            notice = EntryNotice(**common, device_id=device_id)
        elif choice == 1:
            notice = ExitNotice(**common, device_id=device_id)
        elif choice == 2:
            notice = PurchaseNotice(
                **common, device_id=device_id, amount_kopecks=12_350, balance_kopecks=50_000 - n,
                items=(Item(101, 1, 8_000), Item(202, 2, 2_175)), free_meal=n % 2 == 0,
            )
        elif choice == 3:
            notice = CashTopupNotice(**common, device_id=device_id, amount_kopecks=100_000, balance_kopecks=150_000)
        elif choice == 4:
            notice = BankTopupNotice(**common, amount_kopecks=50_000, balance_kopecks=75_000)
        elif choice == 5:
            notice = LowBalanceNotice(**common, balance_kopecks=9_000, threshold_kopecks=10_000)
        elif choice == 6:
            notice = CardNotice(**common, identifier_hex="04a1b2c3d4e5f6")
        elif choice == 7:
            notice = TemporaryCardIssuedNotice(**common, identifier_hex="0ff1ce0001", expires_at_ms=at_ms + 86_400_000)
        else:
            notice = TemporaryCardReturnedNotice(**common, identifier_hex="0ff1ce0001")
        tag = type(notice).__struct_config__.tag
        key = f"0:{txn}" if choice == 4 else f"{device_id}:{txn}"
        events.append(OutboxEvent(f"{key}:{tag}", tag, account_id, notice, at_ms + n))
    return events


def write_outbox(dsn: str, events: list[OutboxEvent], per_entry: int = 1) -> None:
    """Write the events through the gateway's own group-commit writer (storage.journal)."""

    async def main() -> None:
        committed: list[JournalEntry] = []
        writer = JournalWriter(
            lambda: asyncpg.connect(dsn),
            lambda batch, _ns: committed.extend(batch),
            flush_interval_ms=5,
            batch_events_max=1_000,
            queue_events_max=1_000_000,
            statement_timeout_ms=10_000,
            retry_backoff_ms_max=200,
        )
        entries = [
            JournalEntry(None, (), tuple(events[i : i + per_entry]), None, time.perf_counter_ns())
            for i in range(0, len(events), per_entry)
        ]
        for entry in entries:
            writer.append(entry)
        task = asyncio.create_task(writer.run())
        left = await writer.stop(task, 60.0)
        assert left == 0 and len(committed) == len(entries)

    asyncio.run(main())


async def _fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def outbox_rows(dsn: str) -> list[asyncpg.Record]:
    """Every outbox event in publication order (``outbox_events``: a group commit's events share
    one row, ``id``), the payload as PostgreSQL renders it."""
    return asyncio.run(_fetch(dsn, "SELECT row_id AS id, event_id, kind, account_id, payload::text AS payload, "
                                   "created_at_ms, sent_at_ms FROM outbox_events ORDER BY row_id, position"))


def unsent_count(dsn: str) -> int:
    """Events not yet marked sent."""
    return asyncio.run(_fetch(dsn, "SELECT count(*) FROM outbox_events WHERE sent_at_ms IS NULL"))[0][0]


# ---------------------------------------------------------------- processes


class AmqttBroker(LoggedProcess):
    """The embedded broker as `make run` starts it: ``python -m relay broker`` on a free port."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "AmqttBroker":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._spawn([sys.executable, "-m", "relay", "broker", "--host", "127.0.0.1", "--port", str(self.port)],
                    env, self.log_path, BROKER_READY)
        return self


def mosquitto_user() -> str | None:
    """The user a Mosquitto started as root drops to (its own account when the package made one)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("mosquitto")
        return "mosquitto"
    except KeyError:
        return "root"


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (os.path.exists("/usr/sbin/mosquitto") and "/usr/sbin/mosquitto") or None


class Mosquitto(LoggedProcess):
    """``mosquitto -c <conf>`` in the foreground, ready when its port accepts connections."""

    def __init__(self, conf: Path, port: int, log_path: Path) -> None:
        self.conf = conf
        self.port = port
        self.log_path = log_path

    def start(self) -> "Mosquitto":
        binary = mosquitto_binary()
        assert binary, "mosquitto is not installed"
        self._spawn([binary, "-c", str(self.conf)], dict(os.environ), self.log_path, None)
        try:
            wait_until(lambda: accepts(self.port) or not self.running, START_TIMEOUT_S, f"mosquitto on port {self.port}")
        except TimeoutError:
            self.kill()
            raise
        assert self.running, f"mosquitto exited with {self.proc.returncode}; see {self.log_path}"
        return self


class RelayProcess(LoggedProcess):
    """``python -m relay run`` against ``dsn`` and ``mqtt_url`` with fast test timings."""

    def __init__(self, dsn: str, mqtt_url: str, prefix: str, log_path: Path, *args: str, **env: str) -> None:
        self.log_path = log_path
        self.args = args
        self.metrics_port = 0
        self.env = {
            **os.environ,
            "ECARD_PG_DSN": dsn,
            "ECARD_MQTT_URL": mqtt_url,
            "ECARD_RELAY_TOPIC_PREFIX": prefix,
            "ECARD_RELAY_CLIENT_ID": f"ecard-relay-test-{secrets.token_hex(4)}",
            "ECARD_RELAY_METRICS_PORT": "0",
            "ECARD_RELAY_POLL_INTERVAL_MS": "20",
            "ECARD_RELAY_PENDING_CHECK_INTERVAL_MS": "50",
            "ECARD_RELAY_RECONNECT_BACKOFF_MS_MAX": "300",
            "ECARD_RELAY_PUBACK_TIMEOUT_MS": "5000",
            "ECARD_RELAY_KEEPALIVE_S": "5",
            "PYTHONUNBUFFERED": "1",
            **env,
        }

    def start(self) -> "RelayProcess":
        line = self._spawn([sys.executable, "-m", "relay", "run", *self.args], self.env, self.log_path, RELAY_READY)
        m = _METRICS.search(line)
        assert m, line
        self.metrics_port = int(m.group(1))
        return self

    def metrics(self) -> dict[str, float]:
        """Samples by name, labels folded in: {'ecard_relay_published_total': 3.0, ...}."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# ---------------------------------------------------------------- a subscriber


class Subscriber:
    """An MQTT subscriber in a thread of its own that keeps every message it gets, in order.

    It reconnects when the broker goes away. ``persistent`` uses a persistent session
    (clean_session=0, QoS 1 subscription): the broker queues for it while it is away.
    """

    def __init__(self, port: int, topic_filter: str, *, username: str | None = None, password: str | None = None,
                 persistent: bool = False) -> None:
        self.port = port
        self.topic_filter = topic_filter
        self.username, self.password = username, password
        self.persistent = persistent
        self.client_id = f"ecard-test-sub-{secrets.token_hex(4)}"
        self.messages: list[tuple[str, bytes]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Subscriber":
        self._thread.start()
        if not self._subscribed.wait(START_TIMEOUT_S):
            raise TimeoutError(f"subscriber could not subscribe to {self.topic_filter} on port {self.port}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._main())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _main(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, username=self.username, password=self.password,
                    identifier=self.client_id, clean_session=not self.persistent, keepalive=5, timeout=5,
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.connections += 1
                    self._subscribed.set()
                    async for message in client.messages:
                        with self._lock:
                            self.messages.append((str(message.topic), bytes(message.payload)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker is away: try again shortly

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def event_ids(self) -> list[str]:
        return [layout.decode(payload).event_id for _, payload in self.snapshot()]

    def close(self) -> None:
        if self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)


def first_appearances(ids: list[str]) -> tuple[list[str], int]:
    """(ids in order of first appearance, how many were repeats)."""
    seen: set[str] = set()
    order = []
    for event_id in ids:
        if event_id not in seen:
            seen.add(event_id)
            order.append(event_id)
    return order, len(ids) - len(order)
