"""Support for the notifier's tests: a real broker, a real SMTP server, the notifier
process, an MQTT subscriber, reference data and events.

Every wait polls a condition with a deadline; every process, port and database is the
test's own (the system Mosquitto at 127.0.0.1:1883 is used only when no mosquitto binary
can be started, then under a topic prefix and client ids of the test's own).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

import aiomqtt
import asyncpg
import msgspec
import pytest
from aiosmtpd.controller import Controller

from ledger.notices import (
    AnyNotice,
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
from notifier.app import READY_LINE
from protocol import Item
from relay import layout
from tests.support import LoggedProcess

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
# How long a test waits for events to go end to end on this small machine.
DELIVERY_TIMEOUT_S = 60.0
_METRICS = re.compile(r"metrics on http://[\d.]+:(\d+)/metrics")
AT_MS = 1_764_063_660_000  # 2025-11-25 09:41 UTC, 12:41 in Moscow


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


# ---------------------------------------------------------------- the broker


class Broker:
    """A Mosquitto of the test's own (foreground process, loopback, free port), or the
    system one on 1883 when the binary cannot be found."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.prefix = "ecard/v1"
        self.tag = secrets.token_hex(4)  # client ids and share group of this test

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if binary is None:
            if not accepts(1883):
                pytest.skip("no mosquitto binary and no broker on 127.0.0.1:1883 (apt-get install mosquitto)")
            self.port = 1883
            self.prefix = f"ecardtest-{self.tag}/v1"
            return self
        self.port = free_port()
        conf = self.tmp / "mosquitto.conf"
        # max_inflight_messages: the notifier's batch can fill (the default 20 would cap it);
        # max_queued_messages: the notifier's persistent session holds a test's events while
        # it is killed and restarted.
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 100\nmax_queued_messages 100000\nlog_dest stdout\n"
        )
        self._log = open(self.tmp / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: accepts(self.port) or self.proc.poll() is not None, START_TIMEOUT_S, "mosquitto")
        assert self.proc.poll() is None, f"mosquitto exited with {self.proc.returncode}"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()


def forget_session(port: int, client_id: str) -> None:
    """Remove a persistent session from the broker (connect with a clean session, leave)."""

    async def main() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=True, timeout=5):
            pass

    try:
        asyncio.run(main())
    except aiomqtt.MqttError:
        pass


# ---------------------------------------------------------------- the SMTP server


class Mail(msgspec.Struct):
    rcpt: str
    message_id: str
    subject: str
    text: str
    html: str | None
    content_type: str
    raw: bytes


class SmtpHandler:
    """aiosmtpd handler: keeps every message; answers RCPT for some addresses with a refusal."""

    def __init__(self, refusals: dict[str, str] | None = None) -> None:
        self.refusals = refusals or {}
        self.mails: list[Mail] = []
        self.refused: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        answer = self.refusals.get(address)
        if answer is not None:
            with self._lock:
                self.refused.append((address, answer))
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        raw = envelope.original_content or envelope.content
        msg = message_from_bytes(raw, policy=policy.default)
        text_part = msg.get_body(preferencelist=("plain",))
        html_part = msg.get_body(preferencelist=("html",))
        mail = Mail(
            rcpt=envelope.rcpt_tos[0], message_id=str(msg["Message-ID"]), subject=str(msg["Subject"]),
            text=text_part.get_content() if text_part is not None else "",
            html=html_part.get_content() if html_part is not None else None,
            content_type=msg.get_content_type(), raw=raw,
        )
        with self._lock:
            self.mails.append(mail)
        return "250 Message accepted for delivery"

    def snapshot(self) -> list[Mail]:
        with self._lock:
            return list(self.mails)


class SmtpServer:
    """aiosmtpd's Controller (its own thread and loop) on a free loopback port."""

    def __init__(self, refusals: dict[str, str] | None = None) -> None:
        self.handler = SmtpHandler(refusals)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=START_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> "SmtpServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


# ---------------------------------------------------------------- an MQTT subscriber


class Subscriber:
    """An MQTT subscriber in a thread of its own that keeps every message it gets."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.port = port
        self.topic_filter = topic_filter
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Subscriber":
        self._thread.start()
        if not self._subscribed.wait(START_TIMEOUT_S):
            raise TimeoutError(f"subscriber could not subscribe to {self.topic_filter}")
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
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"ecard-test-sub-{secrets.token_hex(4)}",
                                          clean_session=True, keepalive=5, timeout=5) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        with self._lock:
                            self.messages.append((str(message.topic), bytes(message.payload)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker is away: try again shortly

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        if self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)


# ---------------------------------------------------------------- the notifier process


class NotifierProcess(LoggedProcess):
    """``python -m notifier`` against ``dsn``, the broker and the SMTP server, fast timings."""

    def __init__(self, dsn: str, broker: Broker, smtp: SmtpServer | None, log_path: Path, *, client_id: str,
                 sent_dir: Path | None = None, **env: str) -> None:
        self.log_path = log_path
        self.client_id = client_id
        self.metrics_port = 0
        self.proc: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "ECARD_PG_DSN": dsn,
            "ECARD_MQTT_URL": broker.url,
            "ECARD_NOTIFIER_TOPIC_PREFIX": broker.prefix,
            "ECARD_NOTIFIER_SHARE_GROUP": f"notifier-{broker.tag}",
            "ECARD_NOTIFIER_CLIENT_ID": client_id,
            "ECARD_NOTIFIER_METRICS_PORT": "0",
            "ECARD_NOTIFIER_SMTP_SINK_PORT": "0",
            "ECARD_NOTIFIER_DELIVERY_POLL_INTERVAL_MS": "50",
            "ECARD_NOTIFIER_DELIVERY_BACKOFF_MS_MIN": "50",
            "ECARD_NOTIFIER_DELIVERY_BACKOFF_MS_MAX": "200",
            "ECARD_NOTIFIER_RECONNECT_BACKOFF_MS_MAX": "300",
            "ECARD_NOTIFIER_KEEPALIVE_S": "5",
            "ECARD_NOTIFIER_SENT_DIR": str(sent_dir) if sent_dir is not None else "",
            "PYTHONUNBUFFERED": "1",
            # SMS and TV push have tests of their own (test_notifier_sms.py); these tests count e-mails and pushes
            "ECARD_NOTIFIER_CHANNELS": "email,app_push",
            **env,
        }
        if smtp is not None:
            self.env["ECARD_NOTIFIER_SMTP_URL"] = smtp.url

    def start(self) -> "NotifierProcess":
        line = self._spawn([sys.executable, "-m", "notifier"], self.env, self.log_path, READY_LINE)
        m = _METRICS.search(line)
        assert m, line
        self.metrics_port = int(m.group(1))
        self.ready_line = line
        return self

    def metrics(self) -> dict[str, float]:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

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


# ---------------------------------------------------------------- reference data and events

SCHOOL_ID = 1
SCHOOL_NAME = "ГБОУ Школа № 1"
PRODUCTS = {3: "Булочка с маком", 5: "Чай с лимоном", 10: "Сырники со сметаной"}
PUPILS = {1: "Иванов Иван", 2: "Петрова Мария", 3: "Сидоров Пётр", 4: "Козлова Анна"}
EVERY_KIND = ["entry", "exit", "purchase", "cash_topup", "bank_topup", "low_balance", "temporary_card_issued",
              "temporary_card_returned", "card_blocked"]


class Rep(msgspec.Struct):
    id: int
    pupils: list[int]
    email: str | None
    channels: list[str]
    kinds: list[str] = msgspec.field(default_factory=lambda: list(EVERY_KIND))
    suspended: bool = False
    removed: bool = False
    full_name: str = "Иванова Ольга Петровна"


# Pupil 1: a parent on e-mail, push and SMS (SMS is not sent by this notifier) and a
# grandmother who wants purchases by e-mail only. Pupil 2: one suspended and one removed
# representative. Pupil 3: addresses the SMTP server refuses. Pupil 4: nobody.
REPS = [
    Rep(1, [1], "parent1@example.ru", ["email", "app_push", "sms"]),
    Rep(2, [1], "granny1@example.ru", ["email"], kinds=["purchase"], full_name="Иванова Нина Ивановна"),
    Rep(3, [2], "suspended2@example.ru", ["email", "app_push"], suspended=True),
    Rep(4, [2], "removed2@example.ru", ["email", "app_push"], removed=True),
    Rep(5, [3], "refused3@example.ru", ["email"]),
    Rep(6, [3], "greylisted3@example.ru", ["email"]),
]
REFUSALS = {
    "refused3@example.ru": "550 5.1.1 Mailbox unavailable",
    "greylisted3@example.ru": "451 4.7.1 Greylisted, try again later",
}


async def _seed(dsn: str, reps: list[Rep], pupils: dict[int, str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO schools (id, name, utc_offset_minutes) VALUES ($1, $2, 180)",
                               SCHOOL_ID, SCHOOL_NAME)
            await conn.executemany("INSERT INTO products (school_id, code, name, price_kopecks) VALUES ($1, $2, $3, 100)",
                                   [(SCHOOL_ID, code, name) for code, name in PRODUCTS.items()])
            await conn.executemany("INSERT INTO accounts (id, kind, school_id, holder_name) VALUES ($1, 1, $2, $3)",
                                   [(a, SCHOOL_ID, name) for a, name in pupils.items()])
            await conn.executemany("INSERT INTO pupils (account_id, school_id, full_name, grade) VALUES ($1, $2, $3, 5)",
                                   [(a, SCHOOL_ID, name) for a, name in pupils.items()])
            for rep in reps:
                await add_representative(conn, rep)
    finally:
        await conn.close()


async def add_representative(conn: asyncpg.Connection, rep: Rep) -> None:
    """The rows the staff API writes for an application (migration 0008's tables)."""
    now = int(time.time() * 1000)
    await conn.execute(
        """
        INSERT INTO representatives (id, school_id, full_name, relation, phone, email, channels, kinds, consent_date,
                                     registered_by, registered_at_ms, updated_at_ms, suspended_at_ms, removed_at_ms)
        VALUES ($1, $2, $3, 'parent', $4, $5, $6, $7, current_date, 'test', $8, $8, $9, $10)
        """,
        rep.id, SCHOOL_ID, rep.full_name, f"+7900000{rep.id:04d}", rep.email, rep.channels, rep.kinds, now,
        now if rep.suspended else None, now if rep.removed else None,
    )
    await conn.executemany("INSERT INTO representative_pupils (account_id, representative_id) VALUES ($1, $2)",
                           [(a, rep.id) for a in rep.pupils])


def seed(dsn: str, reps: list[Rep] = REPS, pupils: dict[int, str] = PUPILS) -> None:
    asyncio.run(_seed(dsn, reps, pupils))


async def _fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def fetch(dsn: str, query: str, *args) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(dsn, query, *args))


def purchase(account_id: int, n: int = 0, *, at_ms: int = AT_MS) -> tuple[str, AnyNotice]:
    notice = PurchaseNotice(account_id=account_id, school_id=SCHOOL_ID, at_ms=at_ms, device_id=2_000_001,
                            amount_kopecks=8_500, balance_kopecks=41_500 - n,
                            items=(Item(3, 2, 3_500), Item(5, 1, 1_500)), free_meal=False)
    return f"2000001:{1000 + n}:purchase", notice


def sample_notices(account_id: int, at_ms: int = AT_MS) -> list[tuple[str, AnyNotice]]:
    """One notice of every kind for ``account_id``, with the event ids the machine would give."""
    common = {"account_id": account_id, "school_id": SCHOOL_ID}
    return [
        ("1000001:7:entry", EntryNotice(**common, at_ms=at_ms - 4 * 3_600_000, device_id=1_000_001)),
        ("1000002:9:exit", ExitNotice(**common, at_ms=at_ms + 3 * 3_600_000, device_id=1_000_002)),
        purchase(account_id, 0, at_ms=at_ms),
        ("2000002:15:purchase", PurchaseNotice(**common, at_ms=at_ms + 60_000, device_id=2_000_002,
                                               amount_kopecks=7_500, balance_kopecks=41_500,
                                               items=(Item(10, 1, 7_500),), free_meal=True)),
        ("2000001:20:cash_topup", CashTopupNotice(**common, at_ms=at_ms + 120_000, device_id=2_000_001,
                                                  amount_kopecks=100_000, balance_kopecks=141_500)),
        ("0:31:bank_topup", BankTopupNotice(**common, at_ms=at_ms + 180_000, amount_kopecks=123_456_78,
                                            balance_kopecks=125_456_78)),
        ("2000001:21:low_balance", LowBalanceNotice(**common, at_ms=at_ms + 240_000, balance_kopecks=-1_500,
                                                    threshold_kopecks=10_000)),
        ("card:04a1b2c3d4e5f6:card_blocked:1", CardNotice(**common, at_ms=at_ms + 300_000,
                                                          identifier_hex="04a1b2c3d4e5f6")),
        ("card:0ff1ce0001:temporary_card_issued:1", TemporaryCardIssuedNotice(
            **common, at_ms=at_ms + 360_000, identifier_hex="0ff1ce0001", expires_at_ms=at_ms + 40_000_000)),
        ("card:0ff1ce0002:temporary_card_issued:1", TemporaryCardIssuedNotice(
            **common, at_ms=at_ms + 380_000, identifier_hex="0ff1ce0002", expires_at_ms=0)),
        ("card:0ff1ce0001:temporary_card_returned:1", TemporaryCardReturnedNotice(
            **common, at_ms=at_ms + 420_000, identifier_hex="0ff1ce0001")),
    ]


def encode_event(event_id: str, notice: AnyNotice, created_at_ms: int | None = None) -> tuple[str, str, bytes]:
    """(event_id, topic suffix args, payload) as the relay publishes an outbox row."""
    kind = type(notice).__struct_config__.tag
    payload = layout.encode(event_id, kind, notice.account_id,
                            created_at_ms if created_at_ms is not None else int(time.time() * 1000),
                            msgspec.Raw(msgspec.json.encode(notice)))
    return event_id, kind, payload


def publish(port: int, prefix: str, events: list[tuple[str, AnyNotice]], *, pace_s: float = 0.0) -> None:
    """Publish events QoS 1 as the relay does (topic layout and message of relay.layout)."""

    async def main() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"ecard-test-pub-{secrets.token_hex(4)}",
                                  clean_session=True, timeout=10) as client:
            for event_id, notice in events:
                _, kind, payload = encode_event(event_id, notice)
                topic = layout.event_topic(prefix, notice.school_id, kind, notice.account_id)
                await client.publish(topic, payload, qos=1, retain=False)
                if pace_s:
                    await asyncio.sleep(pace_s)  # a steady stream, not a burst (the pace of the test, not a wait)

    asyncio.run(main())
