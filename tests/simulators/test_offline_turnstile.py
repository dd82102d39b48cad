"""An offline turnstile against a real gateway and PostgreSQL: it keeps its school's
allow-list (a snapshot, then deltas), the gateway goes away, pupils keep entering from the
list while blocked and unknown cards stay out, and on reconnect every event is replayed in
order with its original time and applied exactly once."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from ledger.codes import JournalKind, Presence
from protocol import DenyReason, DeviceKind, ListOp
from simulators.crash import free_port
from simulators.device import Device, DeviceConfig, log_path
from storage import building
from storage.changes import notify
from storage.demo_dataset import demo_card_uid, demo_device_key, demo_unknown_uid, turnstile_ids
from tests.gateway.test_gateway import running_gateway
from tests.support import async_wait_until

TURNSTILE = turnstile_ids()[0]
IN = 1
BLOCKED_PUPIL = 9


async def block(dsn: str, pupil: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE identifiers SET status = 1 WHERE identifier = $1", demo_card_uid(pupil))
            await notify(conn, "identifier", demo_card_uid(pupil).hex())
    finally:
        await conn.close()


def test_offline_turnstile_decides_from_its_list_and_replays_exactly_once(demo_dsn, tmp_path):
    port = free_port()
    pupils = list(range(20, 40))

    async def main():
        config = DeviceConfig(host="127.0.0.1", port=port, offline_list=True, connect_timeout_s=0.5,
                              backoff_max_s=0.5, deadline_s=30)
        t = Device(TURNSTILE, DeviceKind.TURNSTILE, demo_device_key(TURNSTILE), config, tmp_path, seed=5)
        async with running_gateway(demo_dsn, listen_port=port) as gw:
            await t.start()
            assert len(t.allow_list) == 1000 and set(t.allow_list.values()) == {ListOp.ALLOW}
            version = t.list_version
            await block(demo_dsn, BLOCKED_PUPIL)
            await async_wait_until(lambda: demo_card_uid(BLOCKED_PUPIL) in gw.core.state.identifier_state, 5,
                                   "the block reached the gateway")
            assert await t.sync_list() == version + 1  # one change: a delta, not a snapshot
            assert t.allow_list[demo_card_uid(BLOCKED_PUPIL)] == ListOp.BLOCK
        # the gateway is gone: the turnstile decides alone
        offline = {}
        for pupil in pupils:
            granted = await t.card_presented(demo_card_uid(pupil), IN)
            assert granted.reason == DenyReason.OK, granted
            through = await t.passage(demo_card_uid(pupil), IN, granted.txn)
            assert through.reason == DenyReason.OK
            offline[pupil] = granted.txn
        assert (await t.card_presented(demo_card_uid(BLOCKED_PUPIL), IN)).reason == DenyReason.CARD_BLOCKED
        assert (await t.card_presented(demo_unknown_uid(3), IN)).reason == DenyReason.UNKNOWN_CARD
        assert t.offline_decisions == 2 * len(pupils) + 2 and len(t.kept) == 2 * len(pupils)
        reader_times = {}
        for line in log_path(tmp_path, TURNSTILE).read_text().splitlines():
            record = json.loads(line)
            if record["t"] == "txn":
                reader_times[record["txn"]] = record["event"]["reader_time_ms"]
        await asyncio.sleep(0.05)  # the clock moves on: replayed rows must keep the original times
        async with running_gateway(demo_dsn, listen_port=port) as gw:
            assert await t.wait_settled(20), "every offline event durable after the reconnect"
            assert gw.core.state.inside(1, reader_times[max(reader_times)]) == sorted(pupils)
        await t.close()
        conn = await asyncpg.connect(demo_dsn)
        try:
            rows = await conn.fetch(
                "SELECT device_txn, kind, account_id, advice, device_time_ms, happened_at_ms, decided_at_ms"
                " FROM journal WHERE device_id = $1 ORDER BY device_txn", TURNSTILE)
            presence = {p.account_id: p.presence for p in await building.presence(conn, 1, max(reader_times.values()))}
        finally:
            await conn.close()
        assert len(rows) == 2 * len(pupils) == len({r["device_txn"] for r in rows})  # exactly once
        assert {r["account_id"] for r in rows} == set(pupils)
        assert [r["kind"] for r in rows] == [JournalKind.ENTRY, JournalKind.PASSAGE] * len(pupils)
        for r in rows:
            assert r["advice"] and r["device_time_ms"] == r["happened_at_ms"] == reader_times[r["device_txn"]]
            assert r["decided_at_ms"] > r["device_time_ms"]  # decided at the replay, judged when it happened
        assert all(presence[p] == Presence.INSIDE for p in pupils) and presence[BLOCKED_PUPIL] != Presence.INSIDE

    asyncio.run(main())


def test_the_offline_drill_of_the_simulators_cli(demo_dsn, tmp_path):
    """``python -m simulators offline``: its own proxy cut in front of a running gateway."""
    from simulators.offline import run_offline

    async def main():
        async with running_gateway(demo_dsn) as gw:
            return await run_offline("127.0.0.1", gw.port, pupils=1000, entering=12, seed=3, log_dir=tmp_path,
                                     pg_dsn=demo_dsn)

    report = asyncio.run(main())
    print(report.summary())
    assert report.ok, report.summary()
    assert len(report.entered_offline) == 12 and report.journaled == 24 and report.original_times
    assert report.list_size == 1000 and report.refused_offline == 1
