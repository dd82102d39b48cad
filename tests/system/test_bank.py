"""A Jepsen-style bank test: money moves from everywhere while the system is being broken.

For LOAD_S seconds, at once:
- tills (purchases, cash top-ups) and turnstiles, the seeded device simulators
  with the durability contract, against a gateway SUBPROCESS whose PostgreSQL
  connection goes through a TCP proxy the test controls;
- bank-card top-ups the way parents make them: a parent's bearer token asks ecard
  for a top-up, the parent's browser (httpx, ``simulators.bank.pay_hosted``) pays on
  the real sandbox acquirer's hosted page (a subprocess) with a test card and the
  3-D-Secure-like code, or cancels there, or fails the code three times; some start
  twice with one Idempotency-Key, some confirm with a double click, some replay the
  completed page; every event is delivered twice and each payment's first event held
  back (duplicated and reordered webhooks) to ecard's signed webhook; some captured
  payments are refunded at once;
- staff money commands (transfers between siblings, refunds of durable till
  purchases from the simulators' logs, corrections, some that must be refused),
  some submitted twice with the same idempotency key.
The webhook and the staff commands talk to PostgreSQL directly: they only queue
commands, which the gateway applies when it can.

Faults at seeded moments: the proxy is cut for a few seconds and restored (the
gateway decides from memory until its small journal queue is full, then answers
TRY_AGAIN_LATER), and the gateway is SIGKILLed and restarted on the same port.

Then: every device's accepted txns become durable, every command is decided,
every card payment's events are processed, and ``simulators.bank.audit`` checks
that the total is conserved to the kopeck and every account equals its history.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn

from payments.acquirer import AcquirerError, SandboxAcquirerClient
from payments.app import create_app
from payments.sandbox import CARD_DECLINED, CARD_INSUFFICIENT_FUNDS, CARD_OK, bind_socket
from payments.webhook import PaymentsService, PaymentsSettings
from protocol import DeviceKind
from simulators.bank import PurchaseTail, StaffLoad, audit, parent_session, pay_hosted, undecided_commands
from simulators.crash import free_port
from simulators.device import Device
from simulators.scenarios import Fleet, perform, random_action
from storage.demo_dataset import (DEMO_OPENING_BALANCE_KOPECKS, DEMO_PUPILS, demo_parent_phone, till_ids,
                                  turnstile_ids)
from tests.payments.payments_support import SECRET, start_sandbox, stop_process
from tests.support import GatewayProcess, TcpProxy, pg_upstream, proxied_dsn

SEED = 20261124
LOAD_S = 20.0  # the load runs at least this long (and until the last fault is over)
SETTLE_S = 40.0  # deadline for everything to become durable / decided / delivered
# Where the acquirer sends the parents' browsers back (the parents' pages; not followed here).
RETURN_ORIGIN = "http://127.0.0.1:8820"
RETURN_URL = RETURN_ORIGIN + "/topup-done"
REQUESTED_BY_TEST = "staff:bank-test"
GATEWAY_ENV = {
    # A small journal queue: a cut fills it within a second and TRY_AGAIN_LATER is hit.
    "ECARD_JOURNAL_QUEUE_EVENTS_MAX": "300",
    "ECARD_BATCH_EVENTS_MAX": "100",
    # A slower group commit leaves accepted-but-not-durable txns for every kill to lose.
    "ECARD_FLUSH_INTERVAL_MS": "20",
    "ECARD_STATEMENT_TIMEOUT_MS": "1000",
    "ECARD_RETRY_BACKOFF_MS_MAX": "200",
    "ECARD_COMMANDS_POLL_INTERVAL_MS": "100",
    "ECARD_LOG_LEVEL": "WARNING",
}
DEVICE_PACE_S = 0.004  # between one device's requests: leaves CPU for the others on small machines


# ---------------------------------------------------------------- servers


class ThreadServer:
    """A Litestar app under uvicorn in its own thread and event loop."""

    def __init__(self, app, sock) -> None:
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def start(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


async def poll(check, what: str, timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll an async check until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval_s)


# ---------------------------------------------------------------- card top-ups


class CardLoad:
    """Parents topping up by card: a parent's token asks ecard for a top-up, the parent's
    browser pays (or does not) on the acquirer's hosted page; some captured payments are
    refunded at the acquirer right away."""

    # (share, card, browser behaviour, the acquirer's status once the page is done)
    OUTCOMES = (
        (0.70, CARD_OK, {}, "captured"),
        (0.08, CARD_DECLINED, {}, "failed"),
        (0.04, CARD_INSUFFICIENT_FUNDS, {}, "failed"),
        (0.06, CARD_OK, {"cancel_on": "card"}, "canceled"),
        (0.06, CARD_OK, {"wrong_codes": 1, "cancel_on": "3ds"}, "canceled"),
        (0.06, CARD_OK, {"wrong_codes": 3}, "failed"),
    )

    def __init__(self, ecard_url: str, acquirer: SandboxAcquirerClient, pool: asyncpg.Pool, rng: random.Random) -> None:
        self.ecard_url = ecard_url
        self.acquirer = acquirer
        self.pool = pool
        self.rng = rng
        self.payment_ids: set[str] = set()
        self.expected: dict[str, str] = {}  # payment id -> the status its page ended with
        self.outcomes: dict[str, int] = {}
        self.refunds: list[asyncio.Task] = []
        self.errors: list[str] = []
        self.tokens: dict[int, str] = {}
        self.run_id = uuid.uuid4().hex[:8]  # the sandbox is per test, but keep keys unique anyway
        self._n = 0

    async def token(self, account: int) -> str:
        """The bearer token of the pupil's demo parent (a parents' API session)."""
        if account not in self.tokens:
            async with self.pool.acquire() as conn:
                self.tokens[account] = await parent_session(conn, f"phone:{demo_parent_phone(account)}",
                                                            time.time_ns() // 1_000_000)
        return self.tokens[account]

    def _outcome(self) -> tuple[str, dict, str]:
        r, floor = self.rng.random(), 0.0
        for share, card, browser, status in self.OUTCOMES:
            floor += share
            if r < floor:
                return card, dict(browser), status
        return self.OUTCOMES[0][1], {}, self.OUTCOMES[0][3]

    async def one(self, client: httpx.AsyncClient) -> None:
        rng = self.rng
        self._n += 1
        account = rng.randint(1, DEMO_PUPILS)
        card, browser, status = self._outcome()
        body = {"amount_kopecks": rng.choice((5_000, 10_000, 25_000, 100_000)), "return_url": RETURN_URL,
                "save_card": rng.random() < 0.2}
        headers = {"Idempotency-Key": f"bank-{self.run_id}-{self._n}",
                   "Authorization": f"Bearer {await self.token(account)}"}
        url = f"{self.ecard_url}/children/{account}/topups"
        calls = 2 if rng.random() < 0.2 else 1  # a parent's double submit: the same payment
        replies = await asyncio.gather(*(client.post(url, json=body, headers=headers) for _ in range(calls)))
        for r in replies:
            if r.status_code != 201:
                self.errors.append(f"top-up {headers['Idempotency-Key']} answered {r.status_code}: {r.text}")
                return
        started = {(r.json()["payment_id"], r.json()["confirmation_url"]) for r in replies}
        if len(started) != 1:
            self.errors.append(f"one Idempotency-Key, several payments: {started}")
        pid, confirmation_url = started.pop()
        self.payment_ids.add(pid)
        back = f"{RETURN_URL}?payment_id={pid}"
        page = await pay_hosted(client, confirmation_url, card, double_click=rng.random() < 0.2, **browser)
        if page.location != back:
            self.errors.append(f"payment {pid}: the page ended at {page.status} {page.location}, not back at {back}")
            return
        if rng.random() < 0.1:  # the back button and a second try: the page only sends the browser back
            again = await pay_hosted(client, confirmation_url, CARD_OK)
            if again.location != back:
                self.errors.append(f"payment {pid}: a replay of the completed page went to {again.location}")
        self.expected[pid] = status
        self.outcomes[status] = self.outcomes.get(status, 0) + 1
        if status == "captured" and rng.random() < 0.3:
            # Refunded right away: the refund event overtakes the held capture event.
            amount = None if rng.random() < 0.5 else rng.randint(1, body["amount_kopecks"])
            self.refunds.append(asyncio.create_task(self._refund(pid, amount)))

    async def _refund(self, pid: str, amount: int | None) -> None:
        try:
            await self.acquirer.refund(pid, amount)
        except AcquirerError as exc:
            self.errors.append(f"refund of {pid}: {exc}")

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                try:
                    await self.one(client)
                except Exception as exc:  # noqa: BLE001  (kept and reported by the test)
                    self.errors.append(f"card load: {exc!r}")
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass
        await asyncio.gather(*self.refunds)

    async def acquirer_view(self) -> dict[str, dict]:
        out = {}
        async with httpx.AsyncClient(base_url=self.acquirer.base_url, timeout=10) as client:
            for pid in sorted(self.payment_ids):
                r = await client.get(f"/payments/{pid}")
                r.raise_for_status()
                out[pid] = r.json()
        return out


# ---------------------------------------------------------------- faults


def fault_plan(rng: random.Random) -> list[tuple[float, str, float]]:
    """(start offset s, "cut" | "kill", cut duration s): two cuts, three kills, in a seeded order."""
    kinds = ["cut", "cut", "kill", "kill", "kill"]
    rng.shuffle(kinds)
    plan, t = [], rng.uniform(1.5, 2.5)
    for kind in kinds:
        duration = rng.uniform(1.5, 3.0) if kind == "cut" else 0.0
        plan.append((t, kind, duration))
        t += duration + rng.uniform(1.0, 2.5)
    return plan


# ---------------------------------------------------------------- the test


def test_bank_conserves_money_under_partitions_and_crashes(demo_dsn, tmp_path):
    rng = random.Random(SEED)
    upstream, _ = pg_upstream(demo_dsn)
    proxy = TcpProxy(upstream).start()
    gateway_dsn = proxied_dsn(demo_dsn, proxy.port)
    port = free_port()
    log_dir = tmp_path / "sim"
    gateways: list[GatewayProcess] = []

    def start_gateway() -> GatewayProcess:
        gw = GatewayProcess(gateway_dsn, tmp_path / "gateway.log", ECARD_LISTEN_PORT=str(port), **GATEWAY_ENV)
        gateways.append(gw)
        return gw.start()

    async def opening_balances() -> dict[int, int]:
        conn = await asyncpg.connect(demo_dsn)
        try:
            return dict(await conn.fetch("SELECT id, balance_kopecks FROM accounts"))
        finally:
            await conn.close()

    opening = asyncio.run(opening_balances())
    # Duplicated and reordered deliveries, fast and long retries.
    sandbox, sandbox_url = start_sandbox(tmp_path / "sandbox.log", "--duplicate", "--reorder", "--reorder-hold-ms", "400",
                                         "--retry-cap-ms", "500", "--retry-attempts", "60")
    webhook = None
    try:
        sock = bind_socket("127.0.0.1", 0)
        ecard_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = PaymentsSettings(webhook_secret=SECRET, public_url=ecard_url, command_wait_ms=300,
                                    allow_sandbox_test_options=True, return_origins=(RETURN_ORIGIN,))
        service = PaymentsService(demo_dsn, SandboxAcquirerClient(sandbox_url), settings)
        webhook = ThreadServer(create_app(service), sock).start()
        start_gateway()
        result = asyncio.run(_run(rng, demo_dsn, port, log_dir, proxy, start_gateway, gateways, sandbox_url, ecard_url,
                                  opening))
    finally:
        for gw in gateways:
            gw.kill()
        if webhook is not None:
            webhook.stop()
        stop_process(sandbox)
        proxy.close()
    assert result["audit"].ok, result["audit"].verdict()
    # The journal writer shouts when a batch repeats an already-journaled key: a decision taken twice.
    log_text = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "already-journaled" not in log_text, "the gateway decided a journaled txn or command again; see gateway.log"


async def _run(rng, dsn, port, log_dir: Path, proxy: TcpProxy, start_gateway, gateways: list[GatewayProcess],
               sandbox_url, ecard_url, opening):
    stop = asyncio.Event()
    fleet = Fleet("127.0.0.1", port, log_dir, SEED, disconnect_rate=0.01, deadline_s=30.0, reply_timeout_s=0.5)
    tills = till_ids(2)
    for device_id in turnstile_ids(2):
        fleet.add(device_id, DeviceKind.TURNSTILE)
    for device_id in tills:
        fleet.add(device_id, DeviceKind.TILL)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)
    acquirer = SandboxAcquirerClient(sandbox_url)
    staff = StaffLoad(pool, random.Random(f"{SEED}/staff"), PurchaseTail(log_dir, tills), pupils=DEMO_PUPILS,
                      key_prefix=f"bank-test-{uuid.uuid4().hex[:8]}")
    cards = CardLoad(ecard_url, acquirer, pool, random.Random(f"{SEED}/cards"))
    faults_done: list[str] = []

    async def device_load(device: Device) -> None:
        drng = random.Random(f"{SEED}/load/{device.device_id}")
        kind = DeviceKind(device.kind)
        while not stop.is_set():
            await perform(device, random_action(drng, kind, DEMO_PUPILS))
            await asyncio.sleep(DEVICE_PACE_S)  # pacing, not synchronisation

    async def faults(t0: float) -> None:
        for at, kind, duration in fault_plan(rng):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # a timed fault schedule
            if kind == "cut":
                proxy.cut()
                await asyncio.sleep(duration)
                proxy.restore()
            else:
                await asyncio.to_thread(gateways[-1].kill)
                await asyncio.to_thread(start_gateway)  # the same port: devices reconnect and replay
            faults_done.append(f"{kind}@{time.monotonic() - t0:.1f}s")

    tasks: list[asyncio.Task] = []
    try:
        await fleet.start()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(device_load(d)) for d in fleet.devices]
        tasks.append(asyncio.create_task(staff.run(stop, 0.05)))
        tasks.append(asyncio.create_task(cards.run(stop, 0.15)))
        fault_task = asyncio.create_task(faults(t0))
        await asyncio.wait_for(fault_task, LOAD_S + 60)
        left = t0 + LOAD_S - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)  # the load's duration
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), SETTLE_S)
        load_s = time.monotonic() - t0

        # Everything durable, decided, delivered.
        settled = await fleet.settle(SETTLE_S)
        assert settled, "devices never settled: accepted txns without DURABLE_ACK"
        assert not fleet.stats.errors, fleet.stats.errors[:5]
        assert not cards.errors, cards.errors[:5]
        acquirer_view: dict[str, dict] = {}

        async def payments_processed() -> bool:
            nonlocal acquirer_view
            acquirer_view = await cards.acquirer_view()
            async with pool.acquire() as conn:
                mine = dict(await conn.fetch("SELECT payment_id, status FROM card_payments"))
            return all(mine.get(pid) == v["status"] for pid, v in acquirer_view.items())

        await poll(payments_processed, "every card payment's events processed", SETTLE_S)
        for pid, status in cards.expected.items():  # what each page ended with, refunds aside
            seen = acquirer_view[pid]["status"]
            if seen != status and not (status == "captured" and seen == "refunded"):
                cards.errors.append(f"payment {pid}: the page ended {status}, the acquirer says {seen}")
        assert not cards.errors, cards.errors[:5]

        async def all_decided() -> bool:
            async with pool.acquire() as conn:
                return await undecided_commands(conn) == 0

        await poll(all_decided, "every command applied or refused", SETTLE_S)
        async with httpx.AsyncClient(timeout=10) as client:
            deliveries = (await client.get(f"{sandbox_url}/sandbox/deliveries")).json()
        gave_up = [d for d in deliveries if d["status"] == -1]
        assert not gave_up, f"the acquirer gave up delivering: {gave_up[:5]}"
        await asyncio.to_thread(gateways[-1].terminate)  # ordered shutdown of the last one
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fleet.close()
        await acquirer.close()
        await pool.close()

    report = await audit(dsn, log_dir, opening, staff.submitted, acquirer_view)
    stats = fleet.stats
    summary = (
        f"[bank] load {load_s:.1f} s, faults {faults_done}\n[bank] devices: {stats.summary()}\n"
        f"[bank] webhook deliveries={len(deliveries)} non-2xx={sum(1 for d in deliveries if not 200 <= d['status'] < 300)}\n"
        f"[bank] card pages: {dict(sorted(cards.outcomes.items()))}\n"
        f"[bank] {report.verdict()}"
    )
    print(summary)
    # The run did what it claims: both faults happened and were felt, money moved every way.
    assert sum(1 for f in faults_done if f.startswith("cut")) == 2 and sum(1 for f in faults_done if f.startswith("kill")) == 3
    assert stats.denies.get("TRY_AGAIN_LATER", 0) > 0, "the journal queue never filled during a cut"
    c = report.counts
    assert c.get("cmd_transfer_applied", 0) and c.get("cmd_transfer_refused", 0), c
    assert c.get("cmd_refund_applied", 0) and c.get("cmd_bank_topup_applied", 0) and c.get("cmd_bank_refund_applied", 0), c
    assert all(cards.outcomes.get(status) for status in ("captured", "failed", "canceled")), cards.outcomes
    return {"audit": report, "summary": summary}



# ---------------------------------------------------------------- a command burst (regression test)


def test_command_burst_is_applied_once(demo_dsn):
    """Thousands of commands back to back: each applied once, in memory and in PostgreSQL."""
    from gateway.app import Gateway
    from gateway.config import load_config
    from storage import commands as command_store

    workers, per_worker, amount = 8, 300, 100

    async def main() -> None:
        gw = Gateway(load_config(env={}, pg_dsn=demo_dsn, listen_port=0, metrics_port=0, progress_interval_ms=0,
                                 flush_interval_ms=1))
        await gw.start()
        pool = await asyncpg.create_pool(demo_dsn, min_size=workers, max_size=workers)
        try:
            wrng = random.Random(f"{SEED}/burst")

            async def worker(w: int) -> None:
                for i in range(per_worker):
                    async with pool.acquire() as conn:
                        await command_store.submit(
                            conn, f"burst:{w}:{i}", "correction",
                            {"account_id": wrng.randint(1, DEMO_PUPILS), "amount_kopecks": amount, "reason": "burst"},
                            REQUESTED_BY_TEST, wait_ms=0,
                        )

            await asyncio.gather(*(worker(w) for w in range(workers)))

            async def all_decided() -> bool:
                async with pool.acquire() as conn:
                    return await undecided_commands(conn) == 0

            await poll(all_decided, "every command decided", 30)
            async with pool.acquire() as conn:
                applied = await conn.fetchval("SELECT count(*) FROM commands WHERE status = 1")
                rows = await conn.fetchval("SELECT count(*) FROM journal WHERE device_id = 0")
                pupils = await conn.fetchval("SELECT sum(balance_kopecks) FROM accounts WHERE kind = 1")
            in_memory = sum(gw.machine.state.accounts.balance[i] for i in range(1, DEMO_PUPILS + 1))
        finally:
            await pool.close()
            await gw.stop()
        opening = DEMO_PUPILS * DEMO_OPENING_BALANCE_KOPECKS
        assert applied == rows == workers * per_worker
        assert (pupils - opening, in_memory - opening) == (applied * amount, applied * amount)

    asyncio.run(main())
