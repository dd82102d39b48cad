"""Money commands and reference-data changes, end to end through PostgreSQL and the gateway."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from protocol import CardPresented, DenyReason, DeviceKind
from storage import changes, commands
from storage.demo_dataset import demo_card_uid
from tests.support import async_wait_until
from tests.gateway.test_gateway import TILL, TURNSTILE, device, fetch, purchase, running_gateway, wait_durable


async def submit(dsn: str, key: str, kind: str, payload: dict, wait_ms: int = 10_000):
    conn = await asyncpg.connect(dsn)
    try:
        return await commands.submit(conn, key, kind, payload, "test", wait_ms=wait_ms)
    finally:
        await conn.close()


async def ledger_total(dsn: str) -> int:
    return (await fetch(dsn, "SELECT sum(balance_kopecks) FROM accounts"))[0][0]


def test_bank_topup_applied_once_per_key_and_durable(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            first = await submit(demo_dsn, "bank:p1:captured", "bank_topup", {"account_id": 40, "amount_kopecks": 12_345, "payment_id": "p1"})
            assert first.status == commands.STATUS_APPLIED and first.result["reason"] == "OK"
            assert first.result["balances"]["40"] == 62_345
            again = await submit(demo_dsn, "bank:p1:captured", "bank_topup", {"account_id": 40, "amount_kopecks": 12_345, "payment_id": "p1"})
            assert again == first
            with pytest.raises(commands.IdempotencyConflict):
                await submit(demo_dsn, "bank:p1:captured", "bank_topup", {"account_id": 40, "amount_kopecks": 1, "payment_id": "p1"})
            assert gw.core.state.accounts.balance[40] == 62_345
        rows = await fetch(demo_dsn, "SELECT balance_kopecks FROM accounts WHERE id = 40")
        assert rows[0][0] == 62_345
        journal = await fetch(demo_dsn, "SELECT device_id, kind, amount_kopecks FROM journal WHERE account_id = 40")
        assert [tuple(r) for r in journal] == [(0, 6, 12_345)]
        assert await ledger_total(demo_dsn) == 0

    asyncio.run(main())


def test_transfer_within_a_family_only_and_covered_by_the_balance(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn):
            ok = await submit(demo_dsn, "t1", "transfer", {"from_account_id": 41, "to_account_id": 42, "amount_kopecks": 5_000})
            assert ok.result["reason"] == "OK" and ok.result["balances"] == {"41": 45_000, "42": 55_000}
            other = await submit(demo_dsn, "t2", "transfer", {"from_account_id": 42, "to_account_id": 43, "amount_kopecks": 100})
            assert other.status == commands.STATUS_REFUSED and other.result["reason"] == "NOT_SAME_FAMILY"
            broke = await submit(demo_dsn, "t3", "transfer", {"from_account_id": 41, "to_account_id": 42, "amount_kopecks": 45_001})
            assert broke.result["reason"] == "INSUFFICIENT_FUNDS"
        assert await ledger_total(demo_dsn) == 0

    asyncio.run(main())


def test_refund_of_a_till_purchase_partial_then_the_rest_then_no_more(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            assert (await d.request(purchase(1, 44))).outcome == 1
            await asyncio.wait_for(wait_durable(d, 1), 10)
            part = await submit(demo_dsn, "r1", "refund", {"device_id": TILL, "device_txn": 1, "amount_kopecks": 6_500})
            assert part.result["reason"] == "OK" and gw.core.state.accounts.balance[44] == 33_500 + 6_500
            too_much = await submit(demo_dsn, "r2", "refund", {"device_id": TILL, "device_txn": 1, "amount_kopecks": 10_001})
            assert too_much.result["reason"] == "REFUND_EXCEEDS"
            rest = await submit(demo_dsn, "r3", "refund", {"device_id": TILL, "device_txn": 1, "amount_kopecks": None})
            assert rest.result.get("amount_kopecks") == 10_000, rest
            assert gw.core.state.accounts.balance[44] == 50_000
            none = await submit(demo_dsn, "r4", "refund", {"device_id": TILL, "device_txn": 2})
            assert none.result["reason"] == "UNKNOWN_ORIGINAL"
        assert await ledger_total(demo_dsn) == 0

    asyncio.run(main())


def test_correction_both_ways_and_bad_input_refused(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            up = await submit(demo_dsn, "c1", "correction", {"account_id": 45, "amount_kopecks": 700, "reason": "x"})
            down = await submit(demo_dsn, "c2", "correction", {"account_id": 45, "amount_kopecks": -200, "reason": "y"})
            assert up.result["reason"] == down.result["reason"] == "OK"
            assert gw.core.state.accounts.balance[45] == 50_500
            zero = await submit(demo_dsn, "c3", "correction", {"account_id": 45, "amount_kopecks": 0, "reason": "z"})
            assert zero.result["reason"] == "AMOUNT_INVALID"
            nobody = await submit(demo_dsn, "c4", "correction", {"account_id": 10**9, "amount_kopecks": 5, "reason": "z"})
            assert nobody.result["reason"] == "UNKNOWN_ACCOUNT"
            revenue = await submit(demo_dsn, "c5", "bank_topup", {"account_id": 1002, "amount_kopecks": 5, "payment_id": "q"})
            assert revenue.result["reason"] == "UNKNOWN_ACCOUNT"  # only pupils' accounts take top-ups
        assert await ledger_total(demo_dsn) == 0

    asyncio.run(main())


def test_a_command_queued_while_the_gateway_is_down_is_applied_when_it_starts(demo_dsn):
    async def main():
        pending = await submit(demo_dsn, "late", "bank_topup", {"account_id": 46, "amount_kopecks": 900, "payment_id": "late"}, wait_ms=50)
        assert pending.pending
        async with running_gateway(demo_dsn) as gw:
            await async_wait_until(lambda: gw.core.state.accounts.balance[46] == 50_900, 10, "the queued command")
            conn = await asyncpg.connect(demo_dsn)
            try:
                done = await commands.wait_result(conn, pending.seq, 10_000)
            finally:
                await conn.close()
            assert done.status == commands.STATUS_APPLIED

    asyncio.run(main())


def test_a_card_blocked_in_the_database_is_refused_at_the_next_tap_within_a_second(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            t = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            assert (await t.request(CardPresented(1, 0, 1, 1, demo_card_uid(47)))).outcome == 1
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            conn = await asyncpg.connect(demo_dsn)
            try:
                async with conn.transaction():
                    await conn.execute("UPDATE identifiers SET status = 1 WHERE identifier = $1", demo_card_uid(47))
                    await changes.notify(conn, "identifier", demo_card_uid(47).hex())
            finally:
                await conn.close()
            started = time.monotonic()
            await async_wait_until(lambda: demo_card_uid(47) in gw.core.state.identifier_state, 1.0, "the change to arrive")
            assert time.monotonic() - started < 1.0
            denied = await t.request(CardPresented(2, 0, 1, 1, demo_card_uid(47)))
            assert denied.reason == DenyReason.CARD_BLOCKED

    asyncio.run(main())


def test_controls_set_in_the_database_reach_the_till(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            d = await device(gw, TILL, DeviceKind.TILL)
            conn = await asyncpg.connect(demo_dsn)
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO account_controls (account_id, banned_products) VALUES (48, '{2}')")
                    await changes.notify(conn, "account", 48)
            finally:
                await conn.close()
            await async_wait_until(lambda: 48 in gw.core.state.controls, 1.0, "the controls")
            denied = await d.request(purchase(1, 48))
            assert denied.reason == DenyReason.PRODUCT_BANNED and denied.item_index == 0

    asyncio.run(main())


def test_pupil_info_gives_the_till_photo_note_and_todays_preorder(demo_dsn):
    from protocol import PreorderLine, PupilInfo, PupilInfoQuery
    from storage.demo_dataset import demo_unknown_uid

    async def main():
        conn = await asyncpg.connect(demo_dsn)
        try:
            await conn.execute("UPDATE pupils SET photo_ref = 'photos/1/49.jpg' WHERE account_id = 49")
            await conn.execute("INSERT INTO account_controls (account_id, cashier_note) VALUES (49, 'Без сахара, пожалуйста')")
            await conn.execute(
                "INSERT INTO preorders (account_id, day, period, product_code, quantity, updated_at_ms, updated_by)"
                " VALUES (49, (now() AT TIME ZONE 'Europe/Moscow')::date, 'lunch', 2, 1, 0, 't'),"
                "        (49, (now() AT TIME ZONE 'Europe/Moscow')::date + 5, 'lunch', 10, 2, 0, 't')"
            )
        finally:
            await conn.close()
        async with running_gateway(demo_dsn) as gw:
            till = await device(gw, TILL, DeviceKind.TILL)
            info = await till.request(PupilInfoQuery(demo_card_uid(49)))
            assert type(info) is PupilInfo and info.outcome == 1
            assert (info.photo_ref, info.cashier_note) == ("photos/1/49.jpg", "Без сахара, пожалуйста")
            assert info.preorder == (PreorderLine(2, 1),)  # today's only
            plain = await till.request(PupilInfoQuery(demo_card_uid(50)))
            assert (plain.outcome, plain.photo_ref, plain.cashier_note, plain.preorder) == (1, "", "", ())
            unknown = await till.request(PupilInfoQuery(demo_unknown_uid(3)))
            assert (unknown.outcome, unknown.reason) == (0, DenyReason.UNKNOWN_CARD)
            turnstile = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            refused = await turnstile.request(PupilInfoQuery(demo_card_uid(49)))
            assert (refused.outcome, refused.reason) == (0, DenyReason.WRONG_DEVICE_KIND)
            assert gw.core.state.accounts.balance[49] == 50_000  # nothing changed

    asyncio.run(main())
