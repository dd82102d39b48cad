"""Saved cards and auto top-up: a parent saves a card on the acquirer's page (ecard keeps the
token and the last 4 digits), sets the child's rule with it (own child, own card only), and
the worker charges the token by threshold or schedule, never twice, and never again once the
card is revoked or its parent suspended.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import httpx

from payments import autotopup
from payments.acquirer import SandboxAcquirerClient
from payments.sandbox import CARD_DECLINES_LATER, CARD_OK
from payments_support import (  # noqa: F401  (sandbox, sandbox_url, return_pages, ecard: fixtures)
    OTHER_PUPIL, PUPIL, START_BALANCE, Ecard, balance_is, bearer, command_done, ecard, eventually, q,
    refused, return_pages, running_gateway, sandbox, sandbox_url, status_is, token_of, topup,
)

BIGINT_MAX = 2**63 - 1


async def save_card(c: httpx.AsyncClient, ecard: Ecard, token: str, account: int, card: str = CARD_OK) -> int:
    """Top up once with "save the card" ticked; the saved card's id once the capture is in."""
    done = await topup(c, ecard, token, account, 10_000, card, save_card=True)

    async def saved():
        r = await c.get(f"{ecard.url}/saved-cards", headers=bearer(token))
        ids = [x["saved_card_id"] for x in r.json()["cards"] if x["saved_for_account_id"] == account]
        rows = await q(ecard.service.dsn, "SELECT id FROM saved_cards WHERE payment_id = $1", done["payment_id"])
        return rows[0][0] if rows and rows[0][0] in ids else None

    return await eventually(saved, "the card saved from the capture event")


async def set_rule(c: httpx.AsyncClient, ecard: Ecard, token: str, account: int, **rule) -> httpx.Response:
    return await c.put(f"{ecard.url}/children/{account}/auto-topup", headers=bearer(token), json=rule)


def _ms(day: dt.date, hour: int, offset_minutes: int = 180) -> int:
    return autotopup.day_start_ms(day, offset_minutes) + hour * 3_600_000


def test_saved_cards_and_rules_belong_to_their_parent(ecard: Ecard, demo_dsn):
    async def main() -> None:
        token7, token8 = await token_of(demo_dsn, PUPIL), await token_of(demo_dsn, OTHER_PUPIL)
        async with httpx.AsyncClient() as c:
            card7 = await save_card(c, ecard, token7, PUPIL)
            cards = (await c.get(f"{ecard.url}/saved-cards", headers=bearer(token7))).json()["cards"]
            assert [(x["saved_card_id"], x["last4"], x["saved_for_account_id"]) for x in cards] == [(card7, "1111", PUPIL)]
            assert set(cards[0]) == {"saved_card_id", "last4", "created_at_ms", "saved_for_account_id"}  # no token
            assert (await c.get(f"{ecard.url}/saved-cards", headers=bearer(token8))).json()["cards"] == []

            r = await c.get(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token7))
            assert r.json()["active"] is False
            r = await set_rule(c, ecard, token7, PUPIL, saved_card_id=card7, amount_kopecks=30_000,
                               threshold_kopecks=20_000)
            assert r.status_code == 200, r.text
            rule = r.json()
            assert (rule["active"], rule["amount_kopecks"], rule["threshold_kopecks"], rule["schedule_weekday"],
                    rule["card"], rule["own_card"]) == (True, 30_000, 20_000, None,
                                                        {"saved_card_id": card7, "last4": "1111"}, True)
            assert (await c.get(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token7))).json() == rule

            # Another family: not their child (404 like no account), not their card (404).
            body = refused(await set_rule(c, ecard, token8, PUPIL, saved_card_id=card7, amount_kopecks=1_000,
                                          threshold_kopecks=1), 404)
            assert body["code"] == "unknown_account"
            refused(await c.delete(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token8)), 404)
            refused(await c.get(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token8)), 404)
            body = refused(await set_rule(c, ecard, token8, OTHER_PUPIL, saved_card_id=card7, amount_kopecks=1_000,
                                          threshold_kopecks=1), 404)
            assert body["code"] == "unknown_card"
            refused(await c.delete(f"{ecard.url}/saved-cards/{card7}", headers=bearer(token8)), 404)
            for card_id in (0, -1, 10**6, BIGINT_MAX + 1):
                refused(await set_rule(c, ecard, token7, PUPIL, saved_card_id=card_id, amount_kopecks=1_000,
                                       threshold_kopecks=1), 400, 404)
            # Out of range: 400, nothing changed.
            for bad in ({"amount_kopecks": 0}, {"amount_kopecks": 10**30}, {"threshold_kopecks": -1},
                        {"threshold_kopecks": BIGINT_MAX + 1}, {"threshold_kopecks": 10**30},
                        {"threshold_kopecks": None, "schedule_weekday": 7},
                        {"threshold_kopecks": None, "schedule_weekday": None}, {"card_token": "tok_x"},
                        {"card_number": "0000000000000000"}):
                refused(await set_rule(c, ecard, token7, PUPIL, **{"saved_card_id": card7, "amount_kopecks": 1_000,
                                                                    "threshold_kopecks": 1, **bad}), 400)
            assert (await c.get(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token7))).json() == rule

            # Switched off, then revoking the card keeps it off and it cannot be chosen again.
            r = await c.delete(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token7))
            assert (r.status_code, r.json()["active"]) == (200, False)
            assert (await set_rule(c, ecard, token7, PUPIL, saved_card_id=card7, amount_kopecks=30_000,
                                   schedule_weekday=2)).json()["active"] is True
            r = await c.delete(f"{ecard.url}/saved-cards/{card7}", headers=bearer(token7))
            assert r.json() == {"saved_card_id": card7, "revoked": True, "auto_topups_stopped": [PUPIL]}
            assert (await c.get(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token7))).json()["active"] is False
            assert (await c.get(f"{ecard.url}/saved-cards", headers=bearer(token7))).json()["cards"] == []
            refused(await set_rule(c, ecard, token7, PUPIL, saved_card_id=card7, amount_kopecks=1_000,
                                   threshold_kopecks=1), 404)
        audit = [tuple(r) for r in await q(demo_dsn, "SELECT actor, action, entity FROM audit_log ORDER BY id")]
        actor = "parent:phone:+79000000007"
        assert audit == [(actor, "auto_topup.set", f"account:{PUPIL}"), (actor, "auto_topup.stop", f"account:{PUPIL}"),
                         (actor, "auto_topup.set", f"account:{PUPIL}"), (actor, "saved_card.revoke", f"saved_card:{card7}")]

    asyncio.run(main())


def test_autotopup_threshold_charges_once(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        c1, c2 = await asyncpg.connect(demo_dsn), await asyncpg.connect(demo_dsn)
        callback = ecard.url + "/payments/webhook"
        token7, token8 = await token_of(demo_dsn, PUPIL), await token_of(demo_dsn, OTHER_PUPIL)
        try:
            async with httpx.AsyncClient() as c:
                card7, card8 = await save_card(c, ecard, token7, PUPIL), await save_card(c, ecard, token8, OTHER_PUPIL)
                # PUPIL is below its threshold (50,000 < 60,000); OTHER_PUPIL is above its own.
                assert (await set_rule(c, ecard, token7, PUPIL, saved_card_id=card7, amount_kopecks=20_000,
                                       threshold_kopecks=60_000)).status_code == 200
                assert (await set_rule(c, ecard, token8, OTHER_PUPIL, saved_card_id=card8, amount_kopecks=20_000,
                                       threshold_kopecks=10_000)).status_code == 200
            day = dt.date(2026, 11, 24)
            now = _ms(day, 9)
            # Two workers at once: one payment (the acquirer's idempotency key).
            a, b = await asyncio.gather(autotopup.run_once(c1, acq, now, callback_url=callback),
                                        autotopup.run_once(c2, acq, now, callback_url=callback))
            # Whichever ran first charged; the other either met the same payment (same key) or,
            # if it started after the first had recorded it, found the account in flight.
            charged = a + b
            assert a or b
            assert {x.account_id for x in charged} == {PUPIL} and len({x.payment_id for x in charged}) == 1
            assert charged[0].reason == "threshold"
            pid = charged[0].payment_id
            await eventually(lambda: status_is(demo_dsn, pid, "captured"), "capture recorded")
            row = await c1.fetchrow("SELECT saved_card_id, card_last4, representative_id FROM card_payments "
                                    "WHERE payment_id = $1", pid)
            assert tuple(row) == (card7, "1111", None)
            # In flight (the credit is not applied yet): no second charge, whatever the time.
            assert await autotopup.run_once(c1, acq, now + 60_000, callback_url=callback) == []
            assert await autotopup.run_once(c1, acq, _ms(day + dt.timedelta(days=1), 9), callback_url=callback) == []
            # As the gateway would: the credit applied. The balance is still below the
            # threshold (nobody moved it here), but today's threshold charge is spent.
            await c1.execute("UPDATE commands SET status = 1 WHERE idempotency_key = $1", f"bank:{pid}:captured")
            assert await autotopup.run_once(c1, acq, now + 120_000, callback_url=callback) == []
            tomorrow = await autotopup.run_once(c1, acq, _ms(day + dt.timedelta(days=1), 9), callback_url=callback)
            assert [(x.account_id, x.reason) for x in tomorrow] == [(PUPIL, "threshold")]
            assert tomorrow[0].payment_id != pid
            rows = await c1.fetch("SELECT account_id, origin FROM card_payments WHERE origin <> 'manual' "
                                  "ORDER BY created_at_ms")
            assert [tuple(r) for r in rows] == [(PUPIL, "auto_threshold"), (PUPIL, "auto_threshold")]
            # The parent of the charged card sees the automatic payment on the return page's endpoint.
            async with httpx.AsyncClient() as c:
                r = await c.get(f"{ecard.url}/children/{PUPIL}/topups/{pid}", headers=bearer(token7))
                assert (r.status_code, r.json()["origin"]) == (200, "auto_threshold"), r.text
        finally:
            await c1.close()
            await c2.close()
            await acq.close()

    asyncio.run(main())


def test_autotopup_schedule_once_per_day(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        conn = await asyncpg.connect(demo_dsn)
        callback = ecard.url + "/payments/webhook"
        token = await token_of(demo_dsn, PUPIL)
        try:
            # A card whose first payment succeeds (and saves it) and whose token charges are all
            # declined: every scheduled charge ends at once (nothing in flight), so only the
            # once-per-scheduled-day rule limits the charges.
            async with httpx.AsyncClient() as c:
                card = await save_card(c, ecard, token, PUPIL, CARD_DECLINES_LATER)
                assert (await set_rule(c, ecard, token, PUPIL, saved_card_id=card, amount_kopecks=30_000,
                                       schedule_weekday=0)).status_code == 200
            monday = dt.date(2026, 11, 23)
            assert monday.weekday() == 0
            runs = {}
            for label, when in [
                ("sunday", _ms(monday - dt.timedelta(days=1), 23)),
                ("monday 00:30", _ms(monday, 0) + 1_800_000),
                ("monday 12:00", _ms(monday, 12)),
                ("monday 23:59", _ms(monday, 24) - 60_000),
                ("tuesday", _ms(monday + dt.timedelta(days=1), 8)),
                ("next monday", _ms(monday + dt.timedelta(days=7), 8)),
                ("next monday later", _ms(monday + dt.timedelta(days=7), 18)),
            ]:
                runs[label] = [(x.account_id, x.reason, x.status)
                               for x in await autotopup.run_once(conn, acq, when, callback_url=callback)]
            charged = [label for label, r in runs.items() if r]
            assert charged == ["monday 00:30", "next monday"], runs
            assert runs["monday 00:30"] == [(PUPIL, "schedule", "failed")]
            assert await conn.fetchval("SELECT last_scheduled_day FROM auto_topups") == monday + dt.timedelta(days=7)
            pids = [r[0] for r in await conn.fetch("SELECT payment_id FROM card_payments WHERE origin = 'auto_schedule'")]
            assert len(pids) == 2
            for pid in pids:
                await eventually(lambda: status_is(demo_dsn, pid, "failed"), "the decline recorded")
            assert await conn.fetch("SELECT * FROM commands WHERE payload->>'payment_id' = ANY($1::text[])", pids) == []
        finally:
            await conn.close()
            await acq.close()

    asyncio.run(main())


def test_autotopup_stops_when_the_card_or_its_parent_goes(ecard: Ecard, sandbox_url, demo_dsn):
    """A revoked card, a suspended card owner, a representative no longer covering the pupil:
    the rule charges nothing; rules from before migration 0018 (no saved card) never charge."""
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        conn = await asyncpg.connect(demo_dsn)
        callback = ecard.url + "/payments/webhook"
        token = await token_of(demo_dsn, PUPIL)
        day = dt.date(2026, 11, 24)
        try:
            async with httpx.AsyncClient() as c:
                card = await save_card(c, ecard, token, PUPIL)
                assert (await set_rule(c, ecard, token, PUPIL, saved_card_id=card, amount_kopecks=20_000,
                                       threshold_kopecks=60_000)).status_code == 200
                # A legacy rule (raw token, no saved card) cannot be active.
                try:
                    await conn.execute("INSERT INTO auto_topups (account_id, card_token, amount_kopecks, "
                                       "threshold_kopecks) VALUES ($1, 'tok_legacy', 1000, 60000)", OTHER_PUPIL)
                except asyncpg.CheckViolationError:
                    pass
                else:
                    raise AssertionError("an active rule without a saved card was accepted")

                await conn.execute("UPDATE representatives SET suspended_at_ms = 1 WHERE id = $1", PUPIL)
                assert await autotopup.run_once(conn, acq, _ms(day, 9), callback_url=callback) == []
                await conn.execute("UPDATE representatives SET suspended_at_ms = NULL WHERE id = $1", PUPIL)
                await conn.execute("DELETE FROM representative_pupils WHERE account_id = $1 AND representative_id = $1",
                                   PUPIL)
                assert await autotopup.run_once(conn, acq, _ms(day, 10), callback_url=callback) == []
                await conn.execute("INSERT INTO representative_pupils (account_id, representative_id) VALUES ($1, $1)",
                                   PUPIL)
                r = await c.delete(f"{ecard.url}/saved-cards/{card}", headers=bearer(token))
                assert r.status_code == 200, r.text
                # Even switched back on by hand, a revoked card is never charged.
                await conn.execute("UPDATE auto_topups SET active = true WHERE account_id = $1", PUPIL)
                assert await autotopup.run_once(conn, acq, _ms(day, 11), callback_url=callback) == []
            assert await conn.fetch("SELECT * FROM card_payments WHERE origin <> 'manual'") == []
        finally:
            await conn.close()
            await acq.close()

    asyncio.run(main())


def test_money_autotopup_credits_once(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        conn = await asyncpg.connect(demo_dsn)
        callback = ecard.url + "/payments/webhook"
        token = await token_of(demo_dsn, PUPIL)
        try:
            async with running_gateway(demo_dsn), httpx.AsyncClient() as c:
                card = await save_card(c, ecard, token, PUPIL)  # a top-up of 10,000 saves it
                await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 10_000), "the top-up credited")
                assert (await set_rule(c, ecard, token, PUPIL, saved_card_id=card, amount_kopecks=20_000,
                                       threshold_kopecks=70_000)).status_code == 200
                # A day no other test of this module charges on: the sandbox outlives each test's
                # database, and the acquirer's key is per account and day.
                now = _ms(dt.date(2026, 12, 8), 9)
                [charge] = await autotopup.run_once(conn, acq, now, callback_url=callback)
                await eventually(lambda: command_done(demo_dsn, charge.payment_id, 1), "the auto top-up applied")
                await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 30_000), "credited")
                # Above the threshold now: nothing more, today or tomorrow.
                assert await autotopup.run_once(conn, acq, now + 60_000, callback_url=callback) == []
                assert await autotopup.run_once(conn, acq, now + 86_400_000, callback_url=callback) == []
            assert (await q(demo_dsn, "SELECT sum(balance_kopecks) FROM accounts"))[0][0] == 0
        finally:
            await conn.close()
            await acq.close()

    asyncio.run(main())
