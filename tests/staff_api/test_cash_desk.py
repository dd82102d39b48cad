"""Cash at the school office's desk, and the ledger accounts a school and a till are opened with,
against the real gateway, PostgreSQL and the staff API.

- A cashier takes cash for a pupil: the school's desk drawer pays the pupil, once per
  Idempotency-Key, audited, the parents told (a cash_topup outbox event), the report names
  who took it. Refused: above the till's cap, another school's pupil (as a missing one), roles
  that take no cash, no key.
- A school created through the API, with a till registered through the API, sells and takes
  cash at once; before, such a school had no revenue account and its till no drawer.
- The ledger refuses a sale at a school that has no revenue account (one written by hand)
  rather than credit a missing account.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from ledger.codes import AccountKind, JournalKind
from protocol import DenyReason, DeviceKind, Item, Outcome, Purchase, TopupCash
from storage.demo_dataset import demo_card_uid
from tests.gateway.test_gateway import device, fetch, running_gateway
from tests.staff_api.test_staff_api import make_api
from tests.support import async_wait_until
from tests.device_client import DeviceClient

PUPIL = 7  # a demo pupil of school 1 (balance 50,000)
OTHER_SCHOOL_PUPIL = 2000  # make_api's pupil of school 2
TOPUP_KOPECKS_MAX = 1_500_000  # gateway.config's default cap on a cash top-up (till or desk)


def _topup(api, who: str, account_id: int, amount, key: str | None = "k1"):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.as_(who, "POST", "/money/cash-topups", json={"account_id": account_id, "amount_kopecks": amount},
                   headers=headers)


def test_a_cashier_takes_cash_at_the_desk(demo_dsn):
    api, server = make_api(demo_dsn, command_wait_ms=5_000)

    async def main():
        async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            api.clock.fixed_ms = time.time_ns() // 1_000_000
            call = asyncio.to_thread

            # refusals first: nothing may move
            assert (await call(_topup, api, "off1", PUPIL, 10_000)).status_code == 403
            assert (await call(_topup, api, "aud", PUPIL, 10_000)).status_code == 403
            assert (await call(_topup, api, None, PUPIL, 10_000)).status_code == 401
            missing_key = await call(_topup, api, "cash1", PUPIL, 10_000, None)
            assert missing_key.status_code == 422 and "Idempotency-Key" in missing_key.text
            for bad in (0, -5, "100", 10**10):
                r = await call(_topup, api, "cash1", PUPIL, bad, f"bad-{bad}")
                assert r.status_code == 422 and "amount_kopecks" in r.text, (bad, r.text)
            other = await call(_topup, api, "cash1", OTHER_SCHOOL_PUPIL, 10_000, "other")
            nobody = await call(_topup, api, "cash1", 999_999, 10_000, "nobody")
            assert other.status_code == nobody.status_code == 422
            assert other.json()["detail"].replace(str(OTHER_SCHOOL_PUPIL), "N") == \
                nobody.json()["detail"].replace("999999", "N")  # another school's pupil: as none
            over = await call(_topup, api, "cash1", PUPIL, TOPUP_KOPECKS_MAX + 1, "over")
            assert over.status_code == 409 and over.json()["reason"] == "AMOUNT_INVALID", over.text
            assert gw.core.state.accounts.balance[PUPIL] == 50_000

            # the cash taken, once
            r = await call(_topup, api, "cash1", PUPIL, 25_000, "desk-1")
            assert r.status_code == 200 and r.json()["status"] == "applied", r.text
            again = await call(_topup, api, "cash1", PUPIL, 25_000, "desk-1")
            assert again.status_code == 200 and again.json()["seq"] == r.json()["seq"]
            by_operator = await call(_topup, api, "op", PUPIL, 5_000, "desk-2")
            assert by_operator.status_code == 200, by_operator.text
            state = gw.core.state
            drawer = state.desk_drawer_account[1]
            assert state.accounts.balance[PUPIL] == 80_000 and state.accounts.balance[drawer] == -30_000
            assert state.ledger_total() == 0
            await async_wait_until(lambda: gw.core.journal.depth == 0, 10, "the commands durable")
            return r.json()["seq"], drawer

    try:
        seq, drawer = asyncio.run(main())
        rows = asyncio.run(fetch(demo_dsn, "SELECT kind, debit_account_id, credit_account_id, amount_kopecks, "
                                 "balance_after_kopecks FROM journal WHERE device_id = 0 AND device_txn = $1", seq))
        assert [tuple(r) for r in rows] == [(int(JournalKind.DESK_CASH_TOPUP), drawer, PUPIL, 25_000, 75_000)]
        kind = asyncio.run(fetch(demo_dsn, "SELECT kind, holder_name FROM accounts WHERE id = $1", drawer))[0]
        assert kind["kind"] == int(AccountKind.DESK_DRAWER)
        events = asyncio.run(fetch(demo_dsn, "SELECT kind, payload FROM outbox_events WHERE event_id = $1", f"0:{seq}:cash_topup"))
        assert len(events) == 1 and events[0]["kind"] == "cash_topup"
        assert '"amount_kopecks": 25000' in events[0]["payload"] and '"balance_kopecks": 75000' in events[0]["payload"]
        audits = asyncio.run(fetch(demo_dsn, "SELECT actor FROM audit_log WHERE action = 'money.cash_topup'"))
        # audited once per key that reached the gateway: "over" (refused), "desk-1" (and not its retry), "desk-2"
        assert sorted(a["actor"] for a in audits) == ["cash1", "cash1", "op"]
        # the day's report: cash at the desk, with who took it
        today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 3 * 3600))
        report = api.as_("aud", "GET", "/schools/1/reports/daily", params={"day": today}).json()
        assert (report["desk_cash_topups"], report["desk_cash_kopecks"]) == (2, 30_000)
        assert (report["cash_topups"], report["cash_kopecks"]) == (2, 30_000)
        assert sorted((m["kind"], m["requested_by"], m["amount_kopecks"]) for m in report["money"]) == [
            ("desk_cash", "cash1", 25_000), ("desk_cash", "op", 5_000)]
        # the staff ledger names the kind
        ledger = api.as_("cash1", "GET", f"/accounts/{PUPIL}/ledger")
        assert ledger.status_code == 200 and '"kind":"desk_cash_topup"' in ledger.text.replace(" ", ""), ledger.text
    finally:
        api.http.close()
        server.stop()


def test_a_school_and_a_till_made_through_the_api_sell_and_take_cash(demo_dsn):
    api, server = make_api(demo_dsn, command_wait_ms=5_000)

    async def main():
        async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            api.clock.fixed_ms = time.time_ns() // 1_000_000
            call = asyncio.to_thread
            school = await call(api.as_, "op", "POST", "/schools", json={"name": "ГБОУ Школа № 77"})
            assert school.status_code == 201, school.text
            school_id = school.json()["id"]
            kinds = {r["kind"] for r in await fetch(demo_dsn, "SELECT kind FROM accounts WHERE school_id = $1",
                                                    school_id)}
            assert kinds == {int(AccountKind.REVENUE), int(AccountKind.FREE_MEALS), int(AccountKind.DESK_DRAWER)}
            product = await call(api.as_, "op", "PUT", f"/schools/{school_id}/products/5",
                                 json={"name": "Булочка", "price_kopecks": 4_500, "category": "bakery"})
            assert product.status_code in (200, 201), product.text
            pupil = await call(api.as_, "op", "POST", f"/schools/{school_id}/pupils",
                               json={"full_name": "Петрова Анна", "grade": 3, "class_name": "3А",
                                     "card": {"uid": "0a0b0c0e0f", "kind": "service_card"}})
            assert pupil.status_code == 201, pupil.text
            account_id = pupil.json()["account_id"]
            till = await call(api.as_, "op", "POST", "/devices",
                              json={"school_id": school_id, "kind": "till", "name": "Касса буфета"})
            assert till.status_code == 201, till.text
            till_id, key = till.json()["device"]["id"], bytes.fromhex(till.json()["key"])
            drawer = (await fetch(demo_dsn, "SELECT drawer_account_id FROM devices WHERE id = $1", till_id))[0][0]
            assert drawer is not None
            await async_wait_until(lambda: till_id in gw.core.state.devices
                                   and gw.core.state.devices[till_id].drawer_account_id == drawer, 2, "the till")
            await async_wait_until(lambda: account_id in gw.core.state.school_pupils.get(school_id, ()), 2,
                                   "the pupil")
            card = bytes.fromhex("0a0b0c0e0f")
            client = await DeviceClient(till_id, DeviceKind.TILL, gw.port, key=key).connect()
            assert type(await client.hello()).__name__ == "HelloAck"
            cash = await client.request(TopupCash(1, 0, 1, 10_000, 7, card))
            assert cash.outcome == Outcome.ACCEPT and cash.balance_kopecks == 10_000, cash
            await async_wait_until(lambda: (school_id, 5) in gw.core.state.products, 2, "the product")
            sale = await client.request(Purchase(2, 0, 1, 4_500, card, (Item(5, 1, 4_500),)))
            assert sale.outcome == Outcome.ACCEPT and sale.balance_kopecks == 5_500, sale
            desk = await call(_topup, api, "op", account_id, 1_000, "new-school-desk")
            assert desk.status_code == 200 and desk.json()["status"] == "applied", desk.text
            assert gw.core.state.ledger_total() == 0
            await async_wait_until(lambda: gw.core.journal.depth == 0, 10, "durable")
            await client.close()
            revenue = gw.core.state.revenue_account[school_id]
            return revenue, drawer

    try:
        revenue, drawer = asyncio.run(main())
        balances = {r["id"]: r["balance_kopecks"] for r in asyncio.run(fetch(
            demo_dsn, "SELECT id, balance_kopecks FROM accounts WHERE id = ANY($1::bigint[])", [revenue, drawer]))}
        assert balances == {revenue: 4_500, drawer: -10_000}
    finally:
        api.http.close()
        server.stop()


def test_a_school_without_a_revenue_account_sells_nothing(demo_dsn):
    """make_api writes school 2 by hand (no ledger accounts); a till there is refused, and the
    migration's rule (open what is missing) then lets it sell."""
    api, server = make_api(demo_dsn, command_wait_ms=5_000)
    till_id, card = 5_000_001, bytes.fromhex("0a0b0c0d")

    async def sql(query: str, *args):
        conn = await asyncpg.connect(demo_dsn)
        try:
            return await conn.execute(query, *args)
        finally:
            await conn.close()

    async def main():
        from storage.demo_dataset import demo_device_key

        await sql("INSERT INTO devices (id, school_id, kind, key, name) VALUES ($1, 2, 2, $2, 'Касса')",
                  till_id, demo_device_key(till_id))
        await sql("UPDATE accounts SET balance_kopecks = 10000 WHERE id = 2000")
        await sql("UPDATE accounts SET balance_kopecks = balance_kopecks - 10000 WHERE kind = 4")  # opening
        await sql("INSERT INTO products (school_id, code, name, price_kopecks) VALUES (2, 1, 'Чай', 500)")
        async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
            client = await device(gw, till_id, DeviceKind.TILL)
            refused = await client.request(Purchase(1, 0, 1, 500, card, (Item(1, 1, 500),)))
            assert refused.outcome == Outcome.DENY and refused.reason == DenyReason.WRONG_SCHOOL, refused
            assert gw.core.state.accounts.balance[0] == 0 and gw.core.state.ledger_total() == 0
            await client.close()
        # what migration 0021 does for such a school, through the one function that does it
        from storage import ledger_accounts

        conn = await asyncpg.connect(demo_dsn)
        try:
            async with conn.transaction():
                opened = await ledger_accounts.open_school_accounts(conn, 2)
                again = await ledger_accounts.open_school_accounts(conn, 2)
        finally:
            await conn.close()
        assert opened == again and set(opened) >= {AccountKind.REVENUE, AccountKind.DESK_DRAWER}
        async with running_gateway(demo_dsn, commands_poll_interval_ms=50) as gw:
            client = await device(gw, till_id, DeviceKind.TILL)
            sold = await client.request(Purchase(2, 0, 1, 500, card, (Item(1, 1, 500),)))
            assert sold.outcome == Outcome.ACCEPT and sold.balance_kopecks == 9_500, sold
            await client.close()

    try:
        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()
