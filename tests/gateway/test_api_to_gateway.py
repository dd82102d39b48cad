"""The staff API and the gateway together: a change made through the API is decided on
at the next tap, within a second, with no restart."""

from __future__ import annotations

import asyncio
import time

from protocol import CardPresented, DenyReason, DeviceKind, Item, Purchase
from storage.demo_dataset import demo_card_uid
from tests.support import async_wait_until
from tests.gateway.test_gateway import TILL, TURNSTILE, device, running_gateway
from tests.staff_api.test_staff_api import make_api


def test_block_temporary_card_and_controls_through_the_api_reach_the_taps(demo_dsn):
    api, server = make_api(demo_dsn, command_wait_ms=3_000)
    original, temp = demo_card_uid(60), bytes.fromhex("06000000000060")

    async def main():
        async with running_gateway(demo_dsn) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            t = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            till = await device(gw, TILL, DeviceKind.TILL)
            assert (await t.request(CardPresented(1, 0, 1, 1, original))).outcome == 1

            # forgotten at home: a temporary card, the original suspended (clock: real time)
            api.clock.fixed_ms = time.time_ns() // 1_000_000
            r = await asyncio.to_thread(
                api.as_, "off1", "POST", f"/cards/{original.hex()}/temporary",
                json={"reason": "forgotten", "temporary_uid": temp.hex()},
            )
            assert r.status_code == 201, r.text
            started = time.monotonic()
            await async_wait_until(lambda: temp in gw.core.state.identifiers, 1.0, "the temporary card")
            await async_wait_until(lambda: original in gw.core.state.identifier_state, 1.0, "the suspension")
            assert time.monotonic() - started < 1.0
            assert (await t.request(CardPresented(2, 0, 1, 1, original))).reason == DenyReason.CARD_SUSPENDED
            assert (await t.request(CardPresented(3, 0, 1, 1, temp))).outcome == 1
            # the temporary card pays from the same account
            paid = await till.request(Purchase(1, 0, 1, 3_500, temp, (Item(3, 1, 3_500),)))
            assert paid.outcome == 1 and paid.balance_kopecks == 46_500

            # a parent's ban set through the API
            controls = {"banned_products": [3]}
            r = await asyncio.to_thread(api.as_, "off1", "PUT", "/pupils/60/controls", json=controls)
            assert r.status_code == 200, r.text
            await async_wait_until(lambda: 60 in gw.core.state.controls, 1.0, "the controls")
            banned = await till.request(Purchase(2, 0, 1, 3_500, temp, (Item(3, 1, 3_500),)))
            assert banned.reason == DenyReason.PRODUCT_BANNED and banned.item_index == 0

            # returned: the original works again, the temporary card no more
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/cards/{temp.hex()}/return")
            assert r.status_code == 200, r.text
            await async_wait_until(lambda: original not in gw.core.state.identifier_state, 1.0, "the restore")
            assert (await t.request(CardPresented(4, 0, 1, 1, original))).outcome == 1
            await async_wait_until(lambda: temp in gw.core.state.identifier_state, 1.0, "the temporary card's end")
            assert (await t.request(CardPresented(5, 0, 1, 1, temp))).reason == DenyReason.CARD_BLOCKED

            # lost: blocked for good
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/cards/{original.hex()}/block")
            assert r.status_code == 200, r.text
            await async_wait_until(
                lambda: gw.core.state.identifier_state.get(original, (0,))[0] == 1, 1.0, "the block"
            )
            assert (await t.request(CardPresented(6, 0, 1, 1, original))).reason == DenyReason.CARD_BLOCKED

    try:
        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()
