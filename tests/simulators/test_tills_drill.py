"""The offline tills drill (``python -m simulators tills``) against a real gateway, the staff API
and PostgreSQL: it sets the school's floor as the operator, both tills sell alone while cut off,
every pupil's offline spending over both tills stays within the floor, every sale is journaled
once at its own time, and the school's policy is put back."""

from __future__ import annotations

import asyncio

from simulators.tills_offline import DRILL_FLOOR_KOPECKS, run_tills_offline
from tests.gateway.test_gateway import running_gateway
from tests.staff_api.test_staff_api import make_api
from tests.support import async_wait_until


def test_tills_drill_keeps_every_pupil_within_the_floor(demo_dsn, tmp_path):
    api, server = make_api(demo_dsn)
    try:
        async def main():
            async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
                await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
                report = await run_tills_offline(
                    "127.0.0.1", gw.port, staff_api=api.url, token=api.tokens["op"], pupils=25, seed=3,
                    log_dir=tmp_path, pg_dsn=demo_dsn, timeout_s=20)
                print(report.summary())
                assert report.ok, report.summary()
                assert report.offline_sales >= 10 and report.refused.get("OFFLINE_LIMIT", 0) > 0
                assert 0 < report.max_exposure_kopecks <= DRILL_FLOOR_KOPECKS
                assert report.journaled == report.offline_sales and report.original_times
                await async_wait_until(lambda: gw.core.state.policy(1).offline_floor_kopecks == 0, 10,
                                       "the school's policy put back")

        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()
