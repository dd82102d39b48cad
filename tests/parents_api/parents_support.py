"""Fixtures and helpers of the parents' API tests: a real uvicorn server on a free port, a
real SMTP server (aiosmtpd) that keeps what it receives, SMS as files, a settable clock,
and the demo database (school 1, pupils 1..1000 each with demo parent N: phone
+7900000NNNN, e-mail parentN@example.ru) plus:

- parent 7 also represents pupil 8 (a family of two children: 7 and 8);
- school 2 with pupil 2000 and its own parent (another family, another school).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller

from parents_api import FileSender, Senders, Settings, SmtpSender, create_app
from protocol.items import encode_items
from support import wait_until
from support import ThreadServer as Server  # noqa: F401  (shared)

MSK = 180
T0 = 1_788_246_000_000  # 2026-09-01 10:00 Moscow time (07:00 UTC)
HOUR = 3_600_000
OTHER_FAMILY_PHONE = "+79000009999"


def run(coro):
    return asyncio.run(coro)


async def _sql(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args) -> list[asyncpg.Record]:
    return run(_sql(dsn, query, *args))


@dataclass
class Clock:
    now_ms: int = T0

    def __call__(self) -> int:
        return self.now_ms


class SmtpSink:
    """aiosmtpd on a free loopback port; ``messages`` are the e-mails it accepted."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802  (aiosmtpd's hook name)
        mail = message_from_bytes(envelope.content, policy=policy.default)
        with self._lock:
            self.messages.append({"to": envelope.rcpt_tos, "mail": mail,
                                  "text": mail.get_body(preferencelist=("plain",)).get_content()})
        return "250 Message accepted for delivery"

    def for_address(self, address: str) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if address in m["to"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CODE = re.compile(r"\b([0-9]{6})\b")


@dataclass
class World:
    dsn: str
    url: str
    clock: Clock
    smtp: SmtpSink
    sent: Path
    settings: Settings
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30)

    # --- auth helpers
    def ask_code(self, **contact) -> httpx.Response:
        return self.http.post("/auth/code", json=contact)

    def email_code(self, address: str, nth: int = 1) -> str:
        wait_until(lambda: len(self.smtp.for_address(address)) >= nth, 10, f"e-mail {nth} to {address}")
        return CODE.search(self.smtp.for_address(address)[nth - 1]["text"]).group(1)

    def sms_files(self, phone: str) -> list[Path]:
        directory = self.sent / "sms"
        return sorted(directory.glob(f"*{phone}.txt"), key=lambda p: p.name) if directory.exists() else []

    def sms_code(self, phone: str, nth: int = 1) -> str:
        wait_until(lambda: len(self.sms_files(phone)) >= nth, 10, f"SMS {nth} to {phone}")
        return CODE.search(self.sms_files(phone)[nth - 1].read_text(encoding="utf-8")).group(1)

    def login_email(self, address: str) -> str:
        before = len(self.smtp.for_address(address))
        assert self.ask_code(email=address).status_code == 202
        code = self.email_code(address, before + 1)
        r = self.http.post("/auth/token", json={"email": address, "code": code})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def login_phone(self, phone: str) -> str:
        before = len(self.sms_files(phone))
        assert self.ask_code(phone=phone).status_code == 202
        code = self.sms_code(phone, before + 1)
        r = self.http.post("/auth/token", json={"phone": phone, "code": code})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def get(self, token: str | None, path: str, **kw) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.http.get(path, headers=headers, **kw)

    # --- USSD
    def ussd(self, session: str, text: str, phone: str = "+79000000007", *, as_json: bool = False,
             **extra) -> httpx.Response:
        fields = {"sessionId": session, "phoneNumber": phone, "serviceCode": "*377*888#", "text": text, **extra}
        headers = {"Authorization": f"Bearer {self.settings.ussd_token}"} if self.settings.ussd_token else {}
        r = (self.http.post("/ussd", json=fields, headers=headers) if as_json
             else self.http.post("/ussd", data=fields, headers=headers))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text.startswith(("CON ", "END ")), r.text
        return r


def prepare(dsn: str) -> None:
    """The second child of family 7 and another family at another school."""
    sql(dsn, "INSERT INTO representative_pupils (account_id, representative_id) VALUES (8, 7)")
    sql(dsn, "INSERT INTO schools (id, name, utc_offset_minutes) VALUES (2, 'ГБОУ Школа № 2', 420)")
    sql(dsn, "INSERT INTO accounts (id, kind, school_id, holder_name, balance_kopecks) "
             "VALUES (2000, 1, 2, 'Иванов Пётр', 12345)")
    sql(dsn, "INSERT INTO pupils (account_id, school_id, full_name, grade, class_name) "
             "VALUES (2000, 2, 'Иванов Пётр Ильич', 5, '5А')")
    sql(dsn, "INSERT INTO identifiers (identifier, account_id, kind) VALUES ($1, 2000, 1)", bytes.fromhex("0a0b0c0d"))
    sql(dsn, """INSERT INTO representatives (id, school_id, full_name, relation, phone, email, channels, kinds,
                    consent_date, registered_by, registered_at_ms, updated_at_ms)
                VALUES (5000, 2, 'Иванова Анна', 'parent', $1, 'anna@example.ru', '{portal,ussd,email}', '{entry}',
                        '2026-08-30', 'test', 0, 0)""", OTHER_FAMILY_PHONE)
    sql(dsn, "INSERT INTO representative_pupils (account_id, representative_id) VALUES (2000, 5000)")


def journal(dsn: str, rows: list[dict]) -> None:
    """Journal rows as the gateway's group commit writes them (ledger.records.JournalRow's columns)."""
    for r in rows:
        sql(dsn, """INSERT INTO journal (device_id, device_txn, kind, account_id, identifier, direction,
                        debit_account_id, credit_account_id, amount_kopecks, balance_after_kopecks, advice,
                        device_time_ms, decided_at_ms, happened_at_ms, cashier_id, items)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, false, $11, $11, $11, NULL, $12)""",
            r["device"], r["txn"], r["kind"], r["account"], r.get("identifier", b"\x04\x00\x00\x00\x00\x00\x07"),
            r.get("direction"), r.get("debit"), r.get("credit"), r.get("amount", 0), r.get("balance", 0), r["at"],
            None if r.get("items") is None else encode_items(r["items"]))


class Line:
    def __init__(self, product_code: int, quantity: int, unit_price_kopecks: int) -> None:
        self.product_code, self.quantity, self.unit_price_kopecks = product_code, quantity, unit_price_kopecks


def make_world(dsn: str, tmp_path: Path, **settings_kw) -> tuple[World, Server, SmtpSink]:
    prepare(dsn)
    clock = Clock()
    smtp = SmtpSink()
    smtp.controller.start()
    sent = tmp_path / "sent"
    settings = Settings(dsn=dsn, clock=clock, pool_size_max=4, **settings_kw)
    senders = Senders(email=SmtpSender("127.0.0.1", smtp.port, start_tls=False), sms=FileSender(sent))
    try:
        server = Server(create_app(settings, senders)).start()
    except BaseException:
        smtp.controller.stop()
        raise
    return World(dsn, f"http://127.0.0.1:{server.port}", clock, smtp, sent, settings), server, smtp


@pytest.fixture
def world(demo_dsn, tmp_path):
    w, server, smtp = make_world(demo_dsn, tmp_path)
    try:
        yield w
    finally:
        w.http.close()
        server.stop()
        smtp.controller.stop()


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)
