"""The fire drill against a real gateway and PostgreSQL: the panel's alarm releases every
connected turnstile within RELEASE_MS_MAX, the journaled muster is exactly the simulated
presence, exits during the evacuation are journaled, an offline turnstile releases by its
wired input and is returned to normal when it reconnects; and a school officer's alarm
through the staff API does the same from the office.
"""

from __future__ import annotations

import asyncio

import asyncpg

from ledger.codes import AccessKind
from protocol import DenyReason, DeviceKind, Direction, TurnstileMode
from simulators.device import Device, DeviceConfig
from simulators.fire import RELEASE_MS_MAX, run_fire
from storage.demo_dataset import demo_card_uid, demo_device_key, turnstile_ids
from tests.gateway.test_gateway import running_gateway
from tests.support import async_wait_until


def test_fire_drill_releases_musters_and_resets(demo_dsn, tmp_path):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            report = await run_fire("127.0.0.1", gw.port, pupils=1000, turnstiles=4, seed=11, log_dir=tmp_path,
                                    inside=120, exit_share=0.4, offline=1, pg_dsn=demo_dsn)
            assert gw.core.state.alarms == {}
            return report

    report = asyncio.run(main())
    print(report.summary())
    assert report.ok, report.summary()
    assert len(report.release_ms) == 3 and max(report.release_ms.values()) <= RELEASE_MS_MAX
    assert report.muster == report.inside_expected and len(report.muster) == 120 - 12
    assert report.evacuated_journaled == report.evacuated and len(report.evacuated) == int(108 * 0.4)


def test_an_alarm_from_the_office_releases_the_turnstiles_and_a_reconnecting_one(demo_dsn, tmp_path):
    """The officer's command reaches the gateway like a money command; a turnstile that
    connects during the alarm is released at HELLO; reset returns both to normal."""

    async def main():
        async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
            config = DeviceConfig(host="127.0.0.1", port=gw.port)
            first, second = turnstile_ids()[:2]
            t1 = Device(first, DeviceKind.TURNSTILE, demo_device_key(first), config, tmp_path, seed=1)
            await t1.start()
            conn = await asyncpg.connect(demo_dsn)
            try:
                from storage import commands

                raised = await commands.submit(conn, "office-1", "fire_alarm", {"school_id": 1, "by": "off1"},
                                               "off1", wait_ms=5_000)
                assert raised.result["changed"] and raised.result["alarm"]["key"] == f"0:{raised.seq}"
                await async_wait_until(lambda: t1.mode == TurnstileMode.RELEASED, 5, "t1 released")
                t2 = Device(second, DeviceKind.TURNSTILE, demo_device_key(second), config, tmp_path, seed=1)
                await t2.start()
                await async_wait_until(lambda: t2.mode == TurnstileMode.RELEASED, 5, "t2 released at HELLO")
                await async_wait_until(lambda: len(gw.core.state.alarms[1].released) == 2, 5, "both confirmed")
                await commands.submit(conn, "office-2", "fire_reset", {"school_id": 1, "by": "off1"}, "off1",
                                      wait_ms=5_000)
                await async_wait_until(lambda: t1.mode == t2.mode == TurnstileMode.NORMAL, 5, "both normal")
                await async_wait_until(lambda: gw.core.journal.depth == 0, 5, "journal drained")
                await asyncio.sleep(0)
                rows = await conn.fetch("SELECT kind, device_id FROM access_events ORDER BY id")
            finally:
                await conn.close()
            await t1.close()
            await t2.close()
            kinds = [r[0] for r in rows]
            assert kinds.count(AccessKind.FIRE_ALARM) == 1 and kinds.count(AccessKind.FIRE_RESET) == 1
            assert sorted(r[1] for r in rows if r[0] == AccessKind.TURNSTILE_RELEASED) == [first, second]

    asyncio.run(main())


def test_a_drill_after_a_morning_counts_who_was_inside_before_it(demo_dsn, tmp_path):
    """As in the README: a morning's entries first, on the same turnstiles (one device log each,
    one txn counter for each device's life), then the drill. The muster the gateway journals
    holds the morning's pupils too, and the drill expects them (it reads the presence first)."""
    morning = list(range(1, 61))

    async def main():
        async with running_gateway(demo_dsn) as gw:
            first = turnstile_ids()[0]
            t = Device(first, DeviceKind.TURNSTILE, demo_device_key(first), DeviceConfig(host="127.0.0.1", port=gw.port),
                       tmp_path, seed=3)
            await t.start()
            try:
                for pupil in morning:  # in
                    card = demo_card_uid(pupil)
                    t.register_card(card, pupil)
                    granted = await t.card_presented(card, Direction.IN)
                    assert granted.reason == DenyReason.OK
                    assert (await t.passage(card, Direction.IN, granted.txn)).reason == DenyReason.OK
                assert await t.wait_settled(10)
            finally:
                await t.close()
            return await run_fire("127.0.0.1", gw.port, pupils=1000, turnstiles=4, seed=11, log_dir=tmp_path,
                                  inside=120, exit_share=0.4, offline=1, pg_dsn=demo_dsn)

    report = asyncio.run(main())
    print(report.summary())
    assert report.ok, report.summary()
    # everyone of the morning is mustered, but for those of them the drill sent home before the alarm
    assert len(set(morning) - report.muster) <= 12 and len(report.muster) > 108
    assert report.muster == report.inside_expected
    # one log directory, every device's accepts (the fire panel's name no pupil): the journal matches
    from simulators.verify import verify

    checked = asyncio.run(verify(demo_dsn, tmp_path))
    assert checked.ok, checked.verdict()
