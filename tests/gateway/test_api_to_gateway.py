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


def test_fire_alarm_from_the_office_musters_by_class_within_a_second_and_resets(demo_dsn, tmp_path):
    """An officer presses the alarm in the staff API: the gateway releases the turnstiles, the
    muster list (who was inside, by class) is readable through the API, exits during the
    evacuation show, reset returns the turnstiles to normal. Roles refused on the way."""
    from protocol import TXN_FLAG_ADVICE, Passage, TurnstileMode
    from simulators.device import Device, DeviceConfig
    from storage.demo_dataset import demo_device_key

    api, server = make_api(demo_dsn, command_wait_ms=5_000)

    async def call(*args, **kw):
        return await asyncio.to_thread(api.as_, *args, **kw)

    async def main():
        async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            t = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            for txn, pupil in ((1, 21), (3, 22), (5, 400)):
                assert (await t.request(CardPresented(txn, 0, 1, time.time_ns() // 1_000_000,
                                                      demo_card_uid(pupil)))).outcome == 1
                assert (await t.request(Passage(txn + 1, TXN_FLAG_ADVICE, 1, time.time_ns() // 1_000_000, txn,
                                                demo_card_uid(pupil)))).outcome == 1
            sim = Device(TURNSTILE + 1, DeviceKind.TURNSTILE, demo_device_key(TURNSTILE + 1),
                         DeviceConfig(host="127.0.0.1", port=gw.port), tmp_path, seed=3)
            await sim.start()
            await async_wait_until(lambda: gw.core.journal.depth == 0, 10, "the passages durable")
            api.clock.fixed_ms = time.time_ns() // 1_000_000
            assert (await call("cash1", "POST", "/schools/1/fire-alarm")).status_code == 403
            assert (await call("aud", "POST", "/schools/1/fire-alarm")).status_code == 403
            assert (await call("off1", "POST", "/schools/2/fire-alarm")).status_code == 403
            assert (await call("op", "POST", "/schools/99/fire-alarm")).status_code == 404
            assert (await call("off1", "GET", "/schools/1/fire-alarm")).status_code == 404  # none yet
            pressed = time.monotonic()
            r = await call("off1", "POST", "/schools/1/fire-alarm", headers={"Idempotency-Key": "alarm-1"})
            assert r.status_code == 200 and r.json()["status"] == "applied", r.text
            assert r.json()["result"]["mustered"] == 3
            again = await call("off1", "POST", "/schools/1/fire-alarm", headers={"Idempotency-Key": "alarm-1"})
            assert again.json()["seq"] == r.json()["seq"]  # the same press, once
            await async_wait_until(lambda: sim.mode == TurnstileMode.RELEASED, 5, "the turnstile released")

            async def view():
                got = await call("off1", "GET", "/schools/1/fire-alarm")
                return got.json() if got.status_code == 200 else None

            deadline = time.monotonic() + 5
            while (body := await view()) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            available_s = time.monotonic() - pressed
            assert body is not None and body["active"] and body["mustered"] == 3, body
            print(f"muster readable {available_s * 1000:.0f} ms after the press")
            classes = {(c["grade"], c["class_name"]): [p["account_id"] for p in c["pupils"]] for c in body["classes"]}
            assert sorted(a for ids in classes.values() for a in ids) == [21, 22, 400]
            assert body["key"] == f"0:{r.json()['seq']}" and body["source"] == "staff off1"
            # a pupil taps out through the released turnstile
            now = time.time_ns() // 1_000_000
            assert (await t.request(CardPresented(7, 0, 2, now, demo_card_uid(22)))).outcome == 1
            assert (await t.request(Passage(8, TXN_FLAG_ADVICE, 2, now, 7, demo_card_uid(22)))).outcome == 1
            await async_wait_until(lambda: gw.core.journal.depth == 0, 10, "the exit durable")
            await async_wait_until(lambda: len(gw.core.state.alarms[1].released) >= 1, 5, "the release recorded")
            await async_wait_until(lambda: gw.core.journal.depth == 0, 10, "the release durable")
            body = await view()
            evacuated = {p["account_id"]: p["evacuated_at_ms"] for c in body["classes"] for p in c["pupils"]}
            assert evacuated[22] is not None and evacuated[21] is None and body["evacuated"] == 1
            assert [x["device_id"] for x in body["released"]] == [TURNSTILE + 1]
            assert body["turnstiles"] == 4
            r = await call("off1", "POST", "/schools/1/fire-alarm/reset")
            assert r.status_code == 200 and r.json()["result"]["changed"], r.text
            await async_wait_until(lambda: sim.mode == TurnstileMode.NORMAL, 5, "back to normal")
            body = await view()
            assert not body["active"] and body["reset_at_ms"] is not None and body["mustered"] == 3
            presence = (await call("off1", "GET", "/schools/1/presence")).json()
            assert presence["inside"] == 0  # reconciled: everyone may enter again
            await sim.close()

    try:
        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()


def test_kindergarten_trusted_cards_through_the_api_reach_the_turnstile(demo_dsn):
    """A kindergarten: the operator requires escorts, an officer gives a grandmother (the demo
    parent, representative 7, of pupil 7) a card; the child passes only after it, the entry names
    her; suspended, her card opens nothing. Deny paths of the API on the way."""
    from protocol import TXN_FLAG_ADVICE, Passage

    api, server = make_api(demo_dsn, command_wait_ms=3_000)
    granny_card = "0b0000000000a1"

    async def call(*args, **kw):
        return await asyncio.to_thread(api.as_, *args, **kw)

    async def main():
        async with running_gateway(demo_dsn) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            api.clock.fixed_ms = time.time_ns() // 1_000_000
            r = await call("op", "PUT", "/schools/1/policy", json={"escort_required": True})
            assert r.status_code == 200, r.text
            await async_wait_until(lambda: gw.core.state.policy(1).escort_required, 2, "the policy")
            assert (await call("cash1", "POST", "/representatives/7/cards", json={"uid": granny_card})).status_code == 403
            taken = await call("off1", "POST", "/representatives/7/cards", json={"uid": demo_card_uid(8).hex()})
            assert taken.status_code == 409 and "pupil's card" in taken.json()["detail"]
            r = await call("off1", "POST", "/representatives/7/cards", json={"uid": granny_card})
            assert r.status_code == 201, r.text
            again = await call("off1", "POST", "/representatives/8/cards", json={"uid": granny_card})
            assert again.status_code == 409 and "representative 7" in again.json()["detail"]
            bound = await call("off1", "POST", "/pupils/9/cards", json={"uid": granny_card, "kind": "service_card"})
            assert bound.status_code == 409 and "trusted card" in bound.json()["detail"], bound.text  # nor the reverse
            card = bytes.fromhex(granny_card)
            await async_wait_until(lambda: card in gw.core.state.escorts, 2, "the trusted card at the gateway")
            t = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            now = time.time_ns() // 1_000_000
            alone = await t.request(CardPresented(1, 0, 1, now, demo_card_uid(7)))
            assert alone.reason == DenyReason.ESCORT_REQUIRED and alone.template_id == 26
            adult = await t.request(CardPresented(2, 0, 1, now, card))
            assert (adult.outcome, adult.template_id) == (1, 108)
            child = await t.request(CardPresented(3, 0, 1, now, demo_card_uid(7)))
            assert child.outcome == 1
            assert (await t.request(Passage(4, TXN_FLAG_ADVICE, 1, now + 1_000, 3, demo_card_uid(7)))).outcome == 1
            await async_wait_until(lambda: gw.core.journal.depth == 0, 10, "durable")
            rows = await asyncio.to_thread(
                sql_rows, demo_dsn, "SELECT payload->>'escort', payload->>'escort_relation' FROM outbox_events WHERE kind = 'entry'")
            (name,) = (await asyncio.to_thread(sql_rows, demo_dsn, "SELECT full_name FROM representatives WHERE id = 7"))[0]
            assert rows == [(name, "parent")], rows
            r = await call("off1", "POST", "/representatives/7/suspend")
            assert r.status_code == 200, r.text
            await async_wait_until(lambda: card not in gw.core.state.escorts, 2, "the suspension at the gateway")
            assert (await t.request(CardPresented(5, 0, 1, now, card))).reason == DenyReason.UNKNOWN_CARD
            listed = (await call("aud", "GET", "/representatives/7/cards")).json()
            assert [c["uid"] for c in listed] == [granny_card]
            assert (await call("off1", "DELETE", f"/representatives/7/cards/{granny_card}")).status_code == 200
            assert (await call("off1", "DELETE", f"/representatives/7/cards/{granny_card}")).status_code == 404
    try:
        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()


def sql_rows(dsn: str, query: str) -> list[tuple]:
    import asyncpg

    async def go():
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(go())
