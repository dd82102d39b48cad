"""Offline tills against a real gateway and PostgreSQL (docs/protocol.md 4.16, 10.14): both demo
tills keep their allowances, the gateway goes away, pupils buy from their own till's allowance and
nowhere else, never beyond the school's floor; blocked and unknown cards, a card at its
consecutive-sales cap or short of allowance, and a cash top-up are refused; on reconnect every sale is replayed with its
original time and journaled exactly once, and the pupil's offline spending is within the floor."""

from __future__ import annotations

import asyncio
import urllib.request

import asyncpg

from gateway.display import render
from ledger.codes import JournalKind
from protocol import DenyReason, DeviceKind, ListOp, Outcome
from simulators.crash import free_port
from simulators.device import Device, DeviceConfig
from storage.changes import notify
from storage.demo_dataset import DEMO_OPENING_BALANCE_KOPECKS, demo_card_uid, demo_device_key, demo_unknown_uid, till_ids
from tests.gateway.test_gateway import running_gateway
from tests.support import async_wait_until

TILL_A, TILL_B = till_ids()
FLOOR = 20_000
PER_CARD = 2
BUN = (3, 1, 3_500)  # (product code, quantity, unit price)
BREAKFAST = (1, 1, 9_500)
LOW_PUPIL = 40  # a pupil with little money left
BLOCKED_PUPIL = 41


async def execute(dsn: str, *statements: tuple) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(*statement)
    finally:
        await conn.close()


async def fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def test_offline_tills_sell_within_the_floor_and_replay_exactly_once(demo_dsn, tmp_path):
    port = free_port()

    async def main():
        await execute(
            demo_dsn,
            ("UPDATE school_policies SET offline_floor_kopecks = $1, offline_sales_per_card_max = $2", FLOOR, PER_CARD),
        )
        config = DeviceConfig(host="127.0.0.1", port=port, offline_sales=True, connect_timeout_s=0.5,
                              backoff_max_s=0.5, deadline_s=30, allowance_sync_interval_s=3600)
        a = Device(TILL_A, DeviceKind.TILL, demo_device_key(TILL_A), config, tmp_path, seed=1)
        b = Device(TILL_B, DeviceKind.TILL, demo_device_key(TILL_B), config, tmp_path, seed=2)
        async with running_gateway(demo_dsn, listen_port=port) as gw:
            await a.start()
            await b.start()
            allowances = gw.core.state.allowances
            assert not allowances.unsynced, "both tills of the school confirmed their RESET page"
            # Till A synced first after the start: every pupil is held there, one meal's floor each.
            await a.sync_allowances()
            assert a.allowances[demo_card_uid(7)] == [ListOp.ALLOW, FLOOR, 0]
            assert demo_card_uid(7) not in b.allowances
            # Pupil 7 buys at B online: the holder moves to B; A gives the allowance back first.
            assert (await b.purchase(demo_card_uid(7), [BUN])).outcome == Outcome.ACCEPT
            await b.sync_allowances()
            assert b.allowances.get(demo_card_uid(7), [0, 0])[1] == 0, "not given while A still holds it"
            await a.sync_allowances()
            assert a.allowances[demo_card_uid(7)][1] == 0
            await a.sync_allowances()  # confirms the release
            await b.sync_allowances()
            assert b.allowances[demo_card_uid(7)][1] == FLOOR
            # A pupil nearly out of money: the allowance is what is left, not the floor.
            await execute(demo_dsn, ("UPDATE identifiers SET status = 1 WHERE identifier = $1",
                                     demo_card_uid(BLOCKED_PUPIL)))
            conn = await asyncpg.connect(demo_dsn)
            try:
                async with conn.transaction():
                    await notify(conn, "identifier", demo_card_uid(BLOCKED_PUPIL).hex())
            finally:
                await conn.close()
            await async_wait_until(lambda: demo_card_uid(BLOCKED_PUPIL) in gw.core.state.identifier_state, 5,
                                   "the block reached the gateway")
            spend = DEMO_OPENING_BALANCE_KOPECKS - 7_000
            while spend > 0:
                step = min(spend, 16_500)
                decision = await a.purchase(demo_card_uid(LOW_PUPIL), [(2, 1, step)])
                assert decision.outcome == Outcome.ACCEPT, decision
                spend -= step
            await a.sync_allowances()
            assert a.allowances[demo_card_uid(LOW_PUPIL)][1] == 7_000
            assert a.allowances[demo_card_uid(BLOCKED_PUPIL)][0] == ListOp.BLOCK
            # Online, the money A may still sell alone is set aside: B cannot take it.
            low_at_b = await b.purchase(demo_card_uid(LOW_PUPIL), [BREAKFAST])
            assert low_at_b.reason == DenyReason.INSUFFICIENT_FUNDS, low_at_b
            for pupil in range(1, 101):
                reserved = allowances.reserved_total(pupil, 1, FLOOR)
                assert reserved <= FLOOR, (pupil, reserved)
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).read().decode())
            assert "ecard_allowance_tills_unseen 0.0" in text
            assert f"ecard_allowance_pages_total {float(allowances.pages_sent)}" in text and allowances.pages_sent > 2
        # The gateway is gone: both tills sell alone.
        sold: dict[int, list[int]] = {}

        async def sell(till: Device, pupil: int, item) -> Outcome:
            decision = await till.purchase(demo_card_uid(pupil), [item])
            if decision.outcome == Outcome.ACCEPT:
                sold.setdefault(pupil, []).append(decision.txn)
            return decision

        first = await sell(b, 7, BREAKFAST)
        assert first.outcome == Outcome.ACCEPT and first.template_id == 110 and first.params == (9_500, 1)
        assert (await sell(b, 7, BREAKFAST)).outcome == Outcome.ACCEPT  # 19,000 of 20,000
        assert (await sell(b, 7, BUN)).reason == DenyReason.OFFLINE_LIMIT  # allowance and cap used up
        assert (await sell(a, 7, BUN)).reason == DenyReason.OFFLINE_LIMIT  # nothing of 7's at A
        assert (await sell(a, LOW_PUPIL, BUN)).outcome == Outcome.ACCEPT  # 3,500 of 7,000
        assert (await sell(a, LOW_PUPIL, BREAKFAST)).reason == DenyReason.OFFLINE_LIMIT  # 9,500 > 3,500 left
        assert (await sell(b, LOW_PUPIL, BUN)).reason == DenyReason.OFFLINE_LIMIT
        assert (await sell(a, BLOCKED_PUPIL, BUN)).reason == DenyReason.CARD_BLOCKED
        assert (await a.purchase(demo_unknown_uid(2), [BUN])).reason == DenyReason.OFFLINE_LIMIT  # no allowance
        assert (await a.topup(demo_card_uid(8), 10_000, 1)).reason == DenyReason.TRY_AGAIN_LATER
        for pupil in range(50, 60):  # held at A: one meal each
            assert (await sell(a, pupil, BREAKFAST)).outcome == Outcome.ACCEPT
            assert (await sell(b, pupil, BREAKFAST)).reason == DenyReason.OFFLINE_LIMIT
        assert a.awaiting_sync == 11 and b.awaiting_sync == 2
        assert render(*a.display) == "Нет связи с сервером. Продаж ждут отправки: 11."  # on the till's screen
        assert render(first.template_id, first.params).startswith("Оплачено 95,00")
        await asyncio.sleep(0.05)  # the clock moves on: replayed rows must keep the original times
        async with running_gateway(demo_dsn, listen_port=port) as gw:
            assert await a.wait_settled(20) and await b.wait_settled(20), "every offline sale durable"
            assert a.awaiting_sync == 0 and b.awaiting_sync == 0
            await a.sync_allowances()
            assert a.display is None
        await a.close()
        await b.close()
        rows = await fetch(
            demo_dsn,
            "SELECT device_id, device_txn, account_id, amount_kopecks, advice, device_time_ms, happened_at_ms"
            " FROM journal WHERE kind = $1 AND advice ORDER BY device_id, device_txn", int(JournalKind.PURCHASE))
        journaled: dict[int, list[int]] = {}
        for row in rows:
            assert row["happened_at_ms"] == row["device_time_ms"], "judged at the time of the sale"
            journaled.setdefault(row["account_id"], []).append(row["device_txn"])
        assert {p: sorted(t) for p, t in journaled.items()} == {p: sorted(t) for p, t in sold.items()}
        offline_by_pupil = {}
        for row in rows:
            offline_by_pupil[row["account_id"]] = offline_by_pupil.get(row["account_id"], 0) + row["amount_kopecks"]
        assert max(offline_by_pupil.values()) <= FLOOR
        balance = await fetch(demo_dsn, "SELECT balance_kopecks FROM accounts WHERE id = $1", LOW_PUPIL)
        assert balance[0]["balance_kopecks"] == 7_000 - 3_500

    asyncio.run(main())
