"""The offline tills drill: both demo tills keep their offline allowances, lose the gateway (the
drill cuts its own TCP proxy in front of each), and pupils try to buy at every till while they are
cut off. What each pupil got alone, over all tills together, must stay within the school's offline
floor; on reconnect every sale is replayed and applied exactly once with its original time.

Against ``make run`` (the drill sets the demo school's floor through the staff API as the operator
and puts the old policy back at the end)::

    python -m simulators tills --gateway 127.0.0.1:7700 --staff-api http://127.0.0.1:8800 \\
        --token-file var/operator-token.txt [--pg-dsn ...]

With ``--pg-dsn`` the journal must hold every offline sale exactly once, judged at its own time.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from protocol import DenyReason, DeviceKind, Outcome
from storage.demo_dataset import DEMO_PRODUCTS, DEMO_SCHOOL_ID, demo_card_uid, demo_device_key, till_ids

from .device import Device, DeviceConfig, log_path
from .offline import CuttableProxy

# The drill's school policy: one complex lunch and a juice (the floor), two offline sales a card.
DRILL_FLOOR_KOPECKS = 21_000
DRILL_SALES_PER_CARD_MAX = 2
# How long the staff API may take to answer one call.
STAFF_API_TIMEOUT_S = 10.0


@dataclass
class TillsReport:
    seed: int
    floor_kopecks: int = DRILL_FLOOR_KOPECKS
    pupils: int = 0
    online_sales: int = 0
    offline_sales: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    exposure_kopecks: dict[int, int] = field(default_factory=dict)  # pupil -> sold alone, all tills
    awaiting_sync: list[int] = field(default_factory=list)  # per till, before the reconnect
    settled: bool = False
    journaled: int | None = None
    original_times: bool | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def max_exposure_kopecks(self) -> int:
        return max(self.exposure_kopecks.values(), default=0)

    @property
    def ok(self) -> bool:
        return (
            not self.errors and self.settled and self.offline_sales > 0
            and self.max_exposure_kopecks <= self.floor_kopecks
            and (self.journaled is None or self.journaled == self.offline_sales) and self.original_times is not False
        )

    def summary(self) -> str:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())) or "none"
        lines = [
            f"offline tills drill (seed {self.seed}): {self.pupils} pupils tried every till while both were cut off",
            f"online before the cut: {self.online_sales} sales; offline: {self.offline_sales} sales; refused: {refused}",
            f"offline exposure per pupil, all tills together: max {self.max_exposure_kopecks} kopecks "
            f"(floor {self.floor_kopecks})",
            f"awaiting sync on the tills before the reconnect: {self.awaiting_sync}; replayed: "
            f"{'all durable' if self.settled else 'NOT SETTLED'}",
        ]
        if self.journaled is not None:
            lines.append(f"journaled: {self.journaled} offline sales, exactly once; at their original reader times: "
                         f"{'yes' if self.original_times else 'NO'}")
        lines += [f"ERROR {e}" for e in self.errors]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _staff(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=STAFF_API_TIMEOUT_S)


async def _set_policy(client: httpx.AsyncClient, policy: dict) -> None:
    reply = await client.put(f"/schools/{DEMO_SCHOOL_ID}/policy", json=policy)
    if reply.status_code != 200:
        raise RuntimeError(f"PUT policy: {reply.status_code} {reply.text}")


async def run_tills_offline(
    host: str, port: int, *, staff_api: str, token: str, pupils: int, seed: int, log_dir: Path, pg_dsn: str = "",
    timeout_s: float = 30.0, policy_settle_s: float = 10.0,
) -> TillsReport:
    rng = random.Random(f"{seed}/tills")
    report = TillsReport(seed)
    async with _staff(staff_api, token) as client:
        school = await client.get(f"/schools/{DEMO_SCHOOL_ID}")
        if school.status_code != 200:
            raise RuntimeError(f"GET school: {school.status_code} {school.text}")
        before = school.json()["policy"]
        await _set_policy(client, {**before, "offline_floor_kopecks": DRILL_FLOOR_KOPECKS,
                                   "offline_sales_per_card_max": DRILL_SALES_PER_CARD_MAX})
        try:
            await _drill(host, port, rng, report, pupils, seed, log_dir, pg_dsn, timeout_s, policy_settle_s)
        finally:
            await _set_policy(client, before)
    return report


async def _drill(host: str, port: int, rng: random.Random, report: TillsReport, pupils: int, seed: int,
                 log_dir: Path, pg_dsn: str, timeout_s: float, policy_settle_s: float) -> None:
    import asyncio
    import time

    proxies = [await CuttableProxy(host, port).start() for _ in till_ids()]
    tills = [
        Device(till_id, DeviceKind.TILL, demo_device_key(till_id),
               DeviceConfig(host="127.0.0.1", port=proxy.port, offline_sales=True, connect_timeout_s=0.5,
                            backoff_max_s=0.5, deadline_s=timeout_s),
               log_dir, seed=seed)
        for till_id, proxy in zip(till_ids(), proxies)
    ]
    prices = [price for _, _, price in DEMO_PRODUCTS]
    codes = [code for code, _, _ in DEMO_PRODUCTS]
    chosen = sorted(rng.sample(range(1, 1001), min(pupils, 1000)))
    report.pupils = len(chosen)
    offline_txns: dict[int, list[int]] = {t.device_id: [] for t in tills}
    try:
        for till in tills:
            await till.start()
        # The floor reaches the gateway through the change feed: wait until a till is given it.
        deadline = time.monotonic() + policy_settle_s
        while True:
            for till in tills:
                await till.sync_allowances()
            if all(t.offline_floor_kopecks == DRILL_FLOOR_KOPECKS for t in tills):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the school's offline floor did not reach the tills")
            await asyncio.sleep(0.2)
        # Some pupils buy a bun online at a random till: their allowance moves there.
        for pupil in chosen:
            till = rng.choice(tills)
            till.register_card(demo_card_uid(pupil), pupil)
            decision = await till.purchase(demo_card_uid(pupil), [(3, 1, 3_500)])
            report.online_sales += decision.outcome == Outcome.ACCEPT
        # The old holder releases (its next sync) and confirms (the one after); the new holder is
        # given the allowance at its sync after that: three rounds of the tills' sync timer.
        for _ in range(3):
            for till in tills:
                await till.sync_allowances()
        for proxy in proxies:
            proxy.set_cut(True)  # the network to the gateway is gone
        for pupil in chosen:
            card = demo_card_uid(pupil)
            for till in tills:
                till.register_card(card, pupil)
            for _attempt in range(4):  # every till, twice: nothing more once refused everywhere
                for till in rng.sample(tills, len(tills)):
                    i = rng.randrange(len(prices))
                    decision = await till.purchase(card, [(codes[i], 1, prices[i])])
                    if decision.outcome == Outcome.ACCEPT:
                        report.offline_sales += 1
                        report.exposure_kopecks[pupil] = report.exposure_kopecks.get(pupil, 0) + prices[i]
                        offline_txns[till.device_id].append(decision.txn)
                    else:
                        name = DenyReason(decision.reason).name
                        report.refused[name] = report.refused.get(name, 0) + 1
        report.awaiting_sync = [t.awaiting_sync for t in tills]
        for proxy in proxies:
            proxy.set_cut(False)  # back: the next attempt reconnects and replays
        report.settled = all([await t.wait_settled(timeout_s) for t in tills])
    finally:
        for till in tills:
            await till.close()
        for proxy in proxies:
            await proxy.close()
    if pg_dsn:
        report.journaled, report.original_times = await _journaled(pg_dsn, log_dir, offline_txns)


async def _journaled(dsn: str, log_dir: Path, txns: dict[int, list[int]]) -> tuple[int, bool]:
    """How many of the sales made alone are journaled (each (device, txn) at most once: the journal's
    key), and whether each carries the reader time the till logged when it sold."""
    import asyncpg

    count, same_time = 0, True
    conn = await asyncpg.connect(dsn)
    try:
        for device_id, wanted in txns.items():
            logged: dict[int, int] = {}
            for line in log_path(log_dir, device_id).read_text().splitlines():
                record = json.loads(line)
                if record.get("t") == "txn" and record["txn"] in set(wanted):
                    logged[record["txn"]] = record["event"]["reader_time_ms"]
            rows = await conn.fetch("SELECT device_txn, device_time_ms FROM journal WHERE device_id = $1"
                                    " AND device_txn = ANY($2::bigint[]) AND advice", device_id, list(logged))
            count += len(rows)
            same_time = same_time and all(r["device_time_ms"] == logged[r["device_txn"]] for r in rows)
    finally:
        await conn.close()
    return count, same_time
