"""Fixtures and helpers of the card-payment tests: the sandbox acquirer (a subprocess, real
HTTP), ecard's payments app (uvicorn in a thread, real HTTP, every request it receives
recorded), the parents' return page (a tiny app: where the acquirer sends the browser
back), parents' bearer tokens, and the payer's browser on the hosted page
(``simulators.bank.pay_hosted``, httpx).

Nothing sleeps blindly: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import asyncpg
import httpx
import msgspec
import pytest
import uvicorn
from litestar import Litestar, Request, Response, get

from payments import signing
from payments.acquirer import SandboxAcquirerClient
from payments.app import create_app
from payments.sandbox import bind_socket
from payments.webhook import PaymentsService, PaymentsSettings
from simulators.bank import parent_session, pay_hosted
from storage.demo_dataset import demo_parent_phone
from tests.support import ROOT

SECRET = "whsec_test_secret"
PUPIL = 7
OTHER_PUPIL = 8  # another family (demo parent 8)
START_BALANCE = 50_000  # storage.demo_dataset.DEMO_OPENING_BALANCE_KOPECKS
WAIT_S = 10.0


# ---------------------------------------------------------------- waits and servers


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = WAIT_S,
                     interval_s: float = 0.02) -> Any:
    """Poll an async check until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval_s)


class ThreadServer:
    """An ASGI app under uvicorn in its own thread and event loop, on a given socket."""

    def __init__(self, app, sock: socket.socket) -> None:
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)
        self.sock.close()


@dataclass
class Sandbox:
    url: str
    log_path: Path


def start_sandbox(log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python -m payments.sandbox`` on a free port (fast retries); its log to ``log_path``."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "payments.sandbox", "--port", "0", "--webhook-secret", SECRET,
         "--retry-base-ms", "50", "--retry-cap-ms", "400", "--retry-attempts", "12", "--reorder-hold-ms", "3000",
         *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    try:
        line = proc.stdout.readline().decode()  # the first line names the port
        assert "listening on http://" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("sandbox did not answer /health")
            time.sleep(0.02)
    except BaseException:
        stop_process(proc)
        raise


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    log_path = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    proc, url = start_sandbox(log_path)
    try:
        yield Sandbox(url, log_path)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def sandbox_url(sandbox: Sandbox) -> str:
    return sandbox.url


class ReturnPages:
    """The parents' page the acquirer sends the browser back to (GET /topup-done?payment_id=)."""

    def __init__(self) -> None:
        self.visits: list[str] = []

        @get("/topup-done")
        async def done(request: Request) -> Response:
            self.visits.append(request.query_params.get("payment_id", ""))
            return Response("<!doctype html><html lang=\"ru\"><title>Оплата</title><p>Спасибо</p></html>",
                            media_type="text/html")

        self.app = Litestar(route_handlers=[done])


@pytest.fixture(scope="module")
def return_pages() -> Iterator[tuple[ReturnPages, str]]:
    pages = ReturnPages()
    with ThreadServer(pages.app, bind_socket("127.0.0.1", 0)) as server:
        yield pages, server.url


class RequestRecorder:
    """ASGI middleware keeping every byte of every request ecard receives: path, query,
    headers and body (to prove that no card number ever reaches ecard)."""

    def __init__(self, app) -> None:
        self.app = app
        self.seen: list[bytes] = []
        self._lock = threading.Lock()

    def _keep(self, data: bytes) -> None:
        with self._lock:
            self.seen.append(data)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self._keep(scope["path"].encode() + b"?" + scope.get("query_string", b"")
                   + b"".join(k + b": " + v + b"\n" for k, v in scope["headers"]))

        async def recorded_receive():
            message = await receive()
            if message["type"] == "http.request":
                self._keep(message.get("body", b""))
            return message

        return await self.app(scope, recorded_receive, send)

    def everything(self) -> bytes:
        with self._lock:
            return b"\n".join(self.seen)


class LogKeeper(logging.Handler):
    """Every log record of the test process (ecard's app runs in a thread of it), formatted
    with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Ecard:
    url: str
    return_url: str
    service: PaymentsService
    recorder: RequestRecorder
    logs: LogKeeper
    pages: ReturnPages
    tokens: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def running_ecard(dsn: str, sandbox_url: str, return_pages: tuple[ReturnPages, str], **settings: Any) -> Iterator[Ecard]:
    """ecard's payments app on a free port against ``dsn``; the return page's origin allowed."""
    pages, pages_url = return_pages
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = dict(
        webhook_secret=SECRET, public_url=f"http://127.0.0.1:{port}",
        # Short: without a running gateway the command stays pending and the webhook answers anyway.
        command_wait_ms=300, allow_sandbox_test_options=True, return_origins=(pages_url,),
    )
    config.update(settings)
    service = PaymentsService(dsn, SandboxAcquirerClient(sandbox_url), PaymentsSettings(**config))
    recorder = RequestRecorder(create_app(service))
    logs = LogKeeper()
    root = logging.getLogger()
    level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    try:
        with ThreadServer(recorder, sock):
            yield Ecard(f"http://127.0.0.1:{port}", f"{pages_url}/topup-done", service, recorder, logs, pages)
    finally:
        root.removeHandler(logs)
        root.setLevel(level)


@pytest.fixture
def ecard(demo_dsn, sandbox_url, return_pages) -> Iterator[Ecard]:
    with running_ecard(demo_dsn, sandbox_url, return_pages) as e:
        yield e


@pytest.fixture
def ecard_url(ecard: Ecard) -> str:
    return ecard.url


@contextlib.asynccontextmanager
async def running_gateway(dsn: str):
    from gateway.app import Gateway
    from gateway.config import load_config

    gateway = Gateway(load_config(env={}, pg_dsn=dsn, listen_port=0, metrics_port=0, progress_interval_ms=0))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


# ---------------------------------------------------------------- database reads


async def q(dsn: str, query: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def balance(dsn: str, account: int) -> int:
    return (await q(dsn, "SELECT balance_kopecks FROM accounts WHERE id = $1", account))[0][0]


async def balance_is(dsn: str, account: int, expected: int) -> bool:
    return await balance(dsn, account) == expected


async def payment_status(dsn: str, payment_id: str) -> str | None:
    rows = await q(dsn, "SELECT status FROM card_payments WHERE payment_id = $1", payment_id)
    return rows[0][0] if rows else None


async def status_is(dsn: str, pid: str, status: str) -> bool:
    return await payment_status(dsn, pid) == status


async def commands_of(dsn: str, payment_id: str) -> list[tuple[str, str, int]]:
    rows = await q(dsn, "SELECT idempotency_key, kind, status FROM commands WHERE payload->>'payment_id' = $1 ORDER BY seq",
                   payment_id)
    return [tuple(r) for r in rows]


async def command_done(dsn: str, pid: str, n: int) -> bool:
    cmds = await commands_of(dsn, pid)
    return len(cmds) == n and all(status != 0 for _, _, status in cmds)


async def journal_balanced(dsn: str) -> bool:
    return (await q(dsn, "SELECT sum(balance_kopecks) FROM accounts"))[0][0] == 0


async def database_text(dsn: str) -> str:
    """Every row of every table of the database as text: what a dump would hold."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
        parts = []
        for table in tables:
            parts.append(await conn.fetchval(f"SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t"))
        return "\n".join(parts)
    finally:
        await conn.close()


# ---------------------------------------------------------------- the acquirer's deliveries


async def deliveries(client: httpx.AsyncClient, sandbox_url: str, payment_id: str) -> list[dict]:
    r = await client.get(f"{sandbox_url}/sandbox/deliveries", params={"payment_id": payment_id})
    return r.json()


def acked(rows: list[dict], type_: str) -> int:
    return sum(1 for d in rows if d["type"] == type_ and 200 <= d["status"] < 300)


async def acks_at_least(c: httpx.AsyncClient, sandbox_url: str, pid: str, type_: str, n: int) -> bool:
    return acked(await deliveries(c, sandbox_url, pid), type_) >= n


# ---------------------------------------------------------------- parents


async def token_of(dsn: str, account: int = PUPIL, contact: str | None = None, *, ttl_ms: int = 86_400_000,
                   now_ms: int | None = None) -> str:
    """A parents' API bearer token of the demo parent of ``account`` (or of ``contact``)."""
    conn = await asyncpg.connect(dsn)
    try:
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return await parent_session(conn, contact or f"phone:{demo_parent_phone(account)}", now, ttl_ms)
    finally:
        await conn.close()


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


async def start_topup(client: httpx.AsyncClient, ecard: Ecard, token: str | None, account: int, amount: int, *,
                      key: str | None = "k", save_card: bool = False, return_url: str | None = None,
                      test: dict | None = None, extra: dict | None = None) -> httpx.Response:
    """POST /children/{account}/topups as a parent's app would (a fresh key per call unless given)."""
    body: dict[str, Any] = {"amount_kopecks": amount, "save_card": save_card,
                            "return_url": ecard.return_url if return_url is None else return_url, **(extra or {})}
    if test:
        body["sandbox_test"] = test
    headers = bearer(token)
    if key is not None:
        # The sandbox outlives each test's database: keys are made unique per run.
        headers["Idempotency-Key"] = key if key.startswith("fixed:") else f"{key}-{uuid.uuid4().hex[:12]}"
    return await client.post(f"{ecard.url}/children/{account}/topups", json=body, headers=headers)


async def topup(client: httpx.AsyncClient, ecard: Ecard, token: str, account: int, amount: int, card: str, *,
                save_card: bool = False, test: dict | None = None, follow: bool = True, **browser: Any) -> dict:
    """A whole top-up: ecard gives the payment page, the browser pays there and comes back."""
    r = await start_topup(client, ecard, token, account, amount, save_card=save_card, test=test)
    assert r.status_code == 201, r.text
    started = r.json()
    page = await pay_hosted(client, started["confirmation_url"], card, **browser)
    back = page.location
    assert back is not None and back.startswith(ecard.return_url + "?"), (page.status, back, page.alerts)
    assert f"payment_id={started['payment_id']}" in back
    if follow:
        r = await client.get(back)
        assert r.status_code == 200, r.text
    return {**started, "back": back, "page": page}


async def topup_view(client: httpx.AsyncClient, ecard: Ecard, token: str, account: int, pid: str) -> dict:
    r = await client.get(f"{ecard.url}/children/{account}/topups/{pid}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def refused(r: httpx.Response, *codes: int) -> dict:
    """A 4xx with a JSON message (never a 500)."""
    assert r.status_code in codes, (r.status_code, r.text)
    body = r.json()
    assert body.get("message") and body.get("code"), body
    return body


def signed_post(client: httpx.AsyncClient, url: str, event: dict, secret: str = SECRET, ts: int | None = None,
                header: str | None = "auto"):
    body = msgspec.json.encode(event)
    headers = {"Content-Type": "application/json"}
    if header == "auto":
        headers[signing.SIGNATURE_HEADER] = signing.sign_header(secret, int(time.time()) if ts is None else ts, body)
    elif header is not None:
        headers[signing.SIGNATURE_HEADER] = header
    return client.post(url + "/payments/webhook", content=body, headers=headers)

