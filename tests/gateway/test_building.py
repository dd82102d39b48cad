"""The building over the wire: a grant opens the turnstile for one passage, presence and
anti-passback follow passages, unused grants and violations land in access_events, and a
school officer's reconciliation reaches the gateway at once. Real sockets, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from ledger.codes import AccessKind, Presence
from protocol import TXN_FLAG_ADVICE, CardPresented, DenyReason, DeviceKind, Passage
from storage import building
from storage.changes import notify
from storage.demo_dataset import demo_card_uid, turnstile_ids
from tests.gateway.test_gateway import device, fetch, running_gateway, wait_durable
from tests.support import async_wait_until

IN, OUT = 1, 2
ENTRANCE, EXIT = turnstile_ids()[0], turnstile_ids()[1]


def now_ms() -> int:
    return int(time.time() * 1000)


async def execute(dsn: str, query: str, *args) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def set_passback(dsn: str, mode: int, interval_s: int = 0) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO school_policies (school_id, anti_passback, passback_entry_interval_s) VALUES (1, $1, $2)"
                " ON CONFLICT (school_id) DO UPDATE SET anti_passback = $1, passback_entry_interval_s = $2",
                mode, interval_s,
            )
            await notify(conn, "school", 1)
    finally:
        await conn.close()


async def presence(dsn: str, account_id: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        pupils = await building.presence(conn, 1, now_ms())
    finally:
        await conn.close()
    return next(p.presence for p in pupils if p.account_id == account_id)


async def walk(t, txn: int, pupil: int, direction: int = IN) -> int:
    """Present the card, go through: returns the next txn."""
    granted = await t.request(CardPresented(txn, 0, direction, now_ms(), demo_card_uid(pupil)))
    assert granted.reason == DenyReason.OK, granted
    through = await t.request(Passage(txn + 1, TXN_FLAG_ADVICE, direction, now_ms(), txn, demo_card_uid(pupil)))
    assert through.reason == DenyReason.OK, through
    return txn + 2


def test_passages_set_presence_checkpointed_and_read_back_after_a_restart(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            t = await device(gw, ENTRANCE, DeviceKind.TURNSTILE)
            txn = await walk(t, 1, 5)
            txn = await walk(t, txn, 6)
            out = await device(gw, EXIT, DeviceKind.TURNSTILE)
            await walk(out, 1, 6, OUT)
            # presented, never through: no entry, no notice; recorded expired later
            assert (await t.request(CardPresented(txn, 0, IN, now_ms(), demo_card_uid(7)))).reason == DenyReason.OK
            await asyncio.wait_for(wait_durable(t, txn), 10)
            await asyncio.wait_for(wait_durable(out, 2), 10)
            assert gw.core.state.inside(1, now_ms()) == [5]
        assert (await presence(demo_dsn, 5), await presence(demo_dsn, 6), await presence(demo_dsn, 7)) == (
            Presence.INSIDE, Presence.OUTSIDE, Presence.UNKNOWN)
        rows = await fetch(demo_dsn, "SELECT granted_txn FROM journal WHERE kind = 2 ORDER BY device_id, device_txn")
        assert [r[0] for r in rows] == [1, 3, 1]
        notices = await fetch(demo_dsn, "SELECT kind, account_id FROM outbox_events ORDER BY row_id, position")
        assert [tuple(r) for r in notices] == [("entry", 5), ("entry", 6), ("exit", 6)]
        async with running_gateway(demo_dsn) as gw:  # a restart: presence comes back from the checkpoints
            assert gw.core.state.inside(1, now_ms()) == [5]
            t = await device(gw, ENTRANCE, DeviceKind.TURNSTILE)
            used = await t.request(Passage(20, TXN_FLAG_ADVICE, IN, now_ms(), 3, demo_card_uid(6)))
            assert used.reason == DenyReason.NO_GRANT, "a grant used before the restart stays used"

    asyncio.run(main())


def test_unused_grants_are_recorded_expired_once(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn, passage_window_ms=1_000, passage_report_ms_max=0,
                                   grant_expiry_interval_ms=50) as gw:
            t = await device(gw, ENTRANCE, DeviceKind.TURNSTILE)
            assert (await t.request(CardPresented(1, 0, IN, now_ms(), demo_card_uid(9)))).reason == DenyReason.OK
            late_ms = now_ms() + 1_500
            await async_wait_until(lambda: now_ms() > late_ms, 5, "the window to pass")
            late = await t.request(Passage(2, TXN_FLAG_ADVICE, IN, now_ms(), 1, demo_card_uid(9)))
            assert late.reason == DenyReason.GRANT_EXPIRED

            async def expired():
                return await fetch(demo_dsn, "SELECT kind, account_id, device_id, device_txn FROM access_events")

            deadline = time.monotonic() + 10
            while not (rows := await expired()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [tuple(r) for r in rows] == [(AccessKind.GRANT_EXPIRED, 9, ENTRANCE, 1)]
        async with running_gateway(demo_dsn, passage_window_ms=1_000, passage_report_ms_max=0,
                                   grant_expiry_interval_ms=50) as gw:
            # the recalled grant is checked again after the restart: still one record
            await async_wait_until(lambda: not gw.core.machine._expiries, 10, "the recalled grant checked")
            await asyncio.sleep(0)
        rows = await fetch(demo_dsn, "SELECT count(*) FROM access_events")
        assert rows[0][0] == 1

    asyncio.run(main())


def test_hard_passback_refuses_and_an_officers_reconciliation_reaches_the_gateway(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            # the change listener first: a NOTIFY sent before its LISTEN reaches nobody
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            await set_passback(demo_dsn, 2)
            await async_wait_until(lambda: gw.core.state.policy(1).anti_passback == 2, 10, "the policy reloaded")
            t = await device(gw, ENTRANCE, DeviceKind.TURNSTILE)
            txn = await walk(t, 1, 11)
            again = await t.request(CardPresented(txn, 0, IN, now_ms(), demo_card_uid(11)))
            assert (again.outcome, again.reason, again.template_id) == (0, DenyReason.ANTI_PASSBACK, 24)
            conn = await asyncpg.connect(demo_dsn)
            try:
                async with conn.transaction():
                    await building.record_presence_reset(conn, 1, now_ms(), "evacuation")
                    await notify(conn, "school", 1)
            finally:
                await conn.close()
            await async_wait_until(lambda: gw.core.state.inside(1, now_ms()) == [], 10, "the reconciliation applied")
            assert (await t.request(CardPresented(txn + 1, 0, IN, now_ms(), demo_card_uid(11)))).reason == DenyReason.OK
            await asyncio.wait_for(wait_durable(t, txn + 1), 10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rows = await fetch(demo_dsn, "SELECT kind, account_id, device_txn, detail FROM access_events ORDER BY id")
                if len(rows) == 2:
                    break
                await asyncio.sleep(0.05)
            assert sorted(tuple(r) for r in rows) == [  # the deny's group commit may land after the officer's insert
                (AccessKind.PASSBACK_DENIED, 11, txn, "inside"), (AccessKind.PRESENCE_RESET, 0, 0, "evacuation")]

    asyncio.run(main())
