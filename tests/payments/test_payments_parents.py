"""The parents' payment endpoints over real HTTP: who may start a top-up, for which child, sent
back where, and what ecard sees of a card (nothing but its last 4 digits and a token).

Every refusal is a 4xx JSON ``{code, message}`` and writes nothing; an unexpected error is a
logged JSON 500. The payer's browser is httpx on the sandbox's hosted page.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import httpx

from payments.sandbox import CARD_DECLINED, CARD_DECLINES_LATER, CARD_INSUFFICIENT_FUNDS, CARD_OK
from payments.webhook import TOPUP_KOPECKS_MAX
from payments_support import (  # noqa: F401  (sandbox, sandbox_url, return_pages, ecard: fixtures)
    OTHER_PUPIL, PUPIL, Ecard, acks_at_least, bearer, database_text, ecard, eventually, payment_status, q, refused,
    return_pages, running_ecard, sandbox, sandbox_url, start_topup, status_is, token_of, topup, topup_view,
)
from simulators.bank import pay_hosted

BIGINT_MAX = 2**63 - 1
DAY_MS = 86_400_000


def _endpoints(ecard: Ecard, account: int) -> list[tuple[str, str, dict]]:
    """Every parent endpoint naming ``account`` (method, url, request kwargs)."""
    base = f"{ecard.url}/children/{account}"
    return [
        ("POST", f"{base}/topups", {"json": {"amount_kopecks": 1_000, "return_url": ecard.return_url},
                                    "headers": {"Idempotency-Key": "k"}}),
        ("GET", f"{base}/topups/pay_x", {}),
        ("GET", f"{base}/auto-topup", {}),
        ("PUT", f"{base}/auto-topup", {"json": {"saved_card_id": 1, "amount_kopecks": 1_000, "threshold_kopecks": 1}}),
        ("DELETE", f"{base}/auto-topup", {}),
    ]


async def _call(c: httpx.AsyncClient, method: str, url: str, token: str | None, kw: dict) -> httpx.Response:
    headers = {**kw.get("headers", {}), **bearer(token)}
    return await c.request(method, url, json=kw.get("json"), headers=headers)


async def _nothing_written(dsn: str) -> None:
    for table in ("card_payments", "saved_cards", "auto_topups", "commands", "audit_log"):
        assert await q(dsn, f"SELECT * FROM {table}") == [], table


# ---------------------------------------------------------------- who is asking


def test_every_endpoint_needs_a_live_parent_token(ecard: Ecard, demo_dsn):
    async def main() -> None:
        now = time.time_ns() // 1_000_000
        expired = await token_of(demo_dsn, PUPIL, now_ms=now - 2 * DAY_MS, ttl_ms=DAY_MS)
        revoked = await token_of(demo_dsn, PUPIL)
        await q(demo_dsn, "UPDATE parent_sessions SET revoked_at_ms = $1 WHERE expires_at_ms > $1::bigint + 1000", now)
        suspended = await token_of(demo_dsn, 11)
        await q(demo_dsn, "UPDATE representatives SET suspended_at_ms = 1 WHERE id = 11")
        removed = await token_of(demo_dsn, 12)
        await q(demo_dsn, "UPDATE representatives SET removed_at_ms = 1 WHERE id = 12")
        async with httpx.AsyncClient() as c:
            calls = _endpoints(ecard, PUPIL) + [("GET", f"{ecard.url}/saved-cards", {}),
                                                ("DELETE", f"{ecard.url}/saved-cards/1", {})]
            for method, url, kw in calls:
                for label, headers in [
                    ("none", {}),
                    ("basic", {"Authorization": "Basic cGFyZW50OnNlY3JldA=="}),
                    ("empty bearer", {"Authorization": "Bearer"}),
                    ("unknown", bearer("not-a-token")),
                    ("huge", bearer("x" * 10_000)),
                    ("expired", bearer(expired)),
                    ("revoked", bearer(revoked)),
                    ("suspended representative", bearer(suspended)),
                    ("removed representative", bearer(removed)),
                ]:
                    r = await c.request(method, url, json=kw.get("json"), headers={**kw.get("headers", {}), **headers})
                    body = refused(r, 401)
                    assert r.headers.get("www-authenticate", "").startswith("Bearer"), (label, method, url)
                    assert body["code"] == "unauthorized", (label, body)
        await _nothing_written(demo_dsn)

    asyncio.run(main())


def test_another_familys_child_is_404_like_no_account(ecard: Ecard, demo_dsn):
    """Parent 7 names pupil 8 (another family), an account that does not exist, a non-pupil
    account, or an id out of range: the same 404 whichever, so ids cannot be probed."""
    async def main() -> None:
        token = await token_of(demo_dsn, PUPIL)
        clearing = (await q(demo_dsn, "SELECT id FROM accounts WHERE kind <> 1 ORDER BY id LIMIT 1"))[0][0]
        async with httpx.AsyncClient() as c:
            answers = {}
            for account in (OTHER_PUPIL, 999_999, clearing, 10**12):
                for method, url, kw in _endpoints(ecard, account):
                    body = refused(await _call(c, method, url, token, kw), 404)
                    answers.setdefault((method, url.rsplit("/", 1)[-1]), set()).add(
                        (body["code"], body["message"].replace(str(account), "N")))
            assert all(len(v) == 1 for v in answers.values()), answers
            assert {next(iter(v))[0] for v in answers.values()} == {"unknown_account"}
            for account in ("99999999999999999999", str(BIGINT_MAX + 1), "-1", "0"):
                for method, url, kw in _endpoints(ecard, account):  # type: ignore[arg-type]
                    refused(await _call(c, method, url, token, kw), 400, 404)
        await _nothing_written(demo_dsn)

    asyncio.run(main())


def test_return_url_must_be_on_the_allow_list(ecard: Ecard, demo_dsn):
    """No open redirect: the acquirer sends the browser back only to the parents' pages."""
    async def main() -> None:
        token = await token_of(demo_dsn, PUPIL)
        ours = ecard.return_url.split("/topup-done")[0]  # http://127.0.0.1:<port>
        port = int(ours.rsplit(":", 1)[1])
        async with httpx.AsyncClient() as c:
            for url in [
                "https://evil.example/topup-done",
                f"{ours}@evil.example/topup-done",
                f"http://evil.example\\@127.0.0.1:{port}/",
                f"http://127.0.0.1:{port}.evil.example/",
                f"http://127.0.0.1:{port + 1}/topup-done",
                f"https://127.0.0.1:{port}/topup-done",  # another scheme is another origin
                "//evil.example/topup-done",
                "/topup-done",
                "javascript:alert(1)",
                "data:text/html,<script>alert(1)</script>",
                f"{ours}/topup done",
                f"{ours}/\u0442\u043e\u043f",
                f"{ours}/" + "a" * 3_000,
                "",
            ]:
                r = await start_topup(c, ecard, token, PUPIL, 10_000, return_url=url)
                assert r.status_code == 422, (url, r.text)
                body = refused(r, 422)
                assert body["code"] == "return_url_not_allowed", (url, body)
            # The allowed origin, whatever the path and query (and the scheme's case).
            r = await start_topup(c, ecard, token, PUPIL, 10_000, return_url=f"HTTP://127.0.0.1:{port}/x?y=1")
            assert r.status_code == 201, r.text
        rows = await q(demo_dsn, "SELECT count(*) FROM card_payments")
        assert rows[0][0] == 1

    asyncio.run(main())


def test_topup_requests_out_of_range_are_4xx(ecard: Ecard, demo_dsn):
    async def main() -> None:
        token = await token_of(demo_dsn, PUPIL)
        async with httpx.AsyncClient() as c:
            body = refused(await start_topup(c, ecard, token, PUPIL, 10_000, key=None), 400)
            assert body["code"] == "idempotency_key_required"
            refused(await start_topup(c, ecard, token, PUPIL, 10_000, key="fixed:" + "k" * 300), 400)
            for amount in (-1, 0, TOPUP_KOPECKS_MAX + 1, BIGINT_MAX + 1, 10**30):
                refused(await start_topup(c, ecard, token, PUPIL, amount), 400)
            for extra in ({"save_card": "yes"}, {"return_url": 7}, {"card_number": "0000000000000000"},
                          {"card_token": "tok_x"}):
                refused(await start_topup(c, ecard, token, PUPIL, 10_000, extra=extra), 400)
            r = await c.post(f"{ecard.url}/children/{PUPIL}/topups", content=b"{not json",
                             headers={**bearer(token), "Idempotency-Key": "k"})
            refused(r, 400)
        await _nothing_written(demo_dsn)

    asyncio.run(main())


# ---------------------------------------------------------------- outcomes


def test_declined_canceled_and_unconfirmed_payments_move_nothing(ecard: Ecard, sandbox_url, demo_dsn):
    """A declined card (decided at the confirmation step), a wrong code then the cancel button,
    three wrong codes, and the cancel button on the card form: the browser comes back each
    time, the payment ends failed or canceled, no command, no saved card."""
    async def main() -> None:
        token = await token_of(demo_dsn, PUPIL)
        visits_before = len(ecard.pages.visits)
        async with httpx.AsyncClient() as c:
            cases = [
                (CARD_DECLINED, {}, "failed", "payment.failed", "declined"),
                (CARD_INSUFFICIENT_FUNDS, {}, "failed", "payment.failed", "declined"),
                (CARD_OK, {"wrong_codes": 1, "cancel_on": "3ds"}, "canceled", "payment.canceled", "canceled"),
                (CARD_OK, {"wrong_codes": 3}, "failed", "payment.failed", "authentication_failed"),
                (CARD_OK, {"cancel_on": "card"}, "canceled", "payment.canceled", "canceled"),
            ]
            for card, browser, status, event, failure in cases:
                done = await topup(c, ecard, token, PUPIL, 10_000, card, save_card=True, **browser)
                pid = done["payment_id"]
                await eventually(lambda: acks_at_least(c, sandbox_url, pid, event, 1), f"{event} acknowledged")
                assert await payment_status(demo_dsn, pid) == status
                view = await topup_view(c, ecard, token, PUPIL, pid)
                assert (view["status"], view["failure"], view["credit"]) == (status, failure, None), (card, browser)
                # The completed page only sends the browser back: no second chance to pay.
                again = await pay_hosted(c, done["confirmation_url"], CARD_OK)
                assert again.location == done["back"]
            assert len(ecard.pages.visits) - visits_before == len(cases)  # back on the parents' page each time
        assert await q(demo_dsn, "SELECT * FROM commands") == []
        assert await q(demo_dsn, "SELECT * FROM saved_cards") == []
        codes = sorted(r[0] or "" for r in await q(demo_dsn, "SELECT decline_code FROM card_payments"))
        assert codes == sorted(["card_declined", "insufficient_funds", "canceled_by_payer", "authentication_failed",
                                "canceled_by_payer"])

    asyncio.run(main())


def test_starting_a_topup_is_idempotent_per_parent(ecard: Ecard, demo_dsn):
    async def main() -> None:
        token7 = await token_of(demo_dsn, PUPIL)
        grandmother = (await q(demo_dsn, "SELECT r.phone FROM representatives r JOIN representative_pupils rp "
                                         "ON rp.representative_id = r.id WHERE rp.account_id = 10 "
                                         "AND r.relation = 'grandmother'"))[0][0]
        parent10, granny10 = await token_of(demo_dsn, 10), await token_of(demo_dsn, contact=f"phone:{grandmother}")
        key = f"fixed:{uuid.uuid4().hex}"
        async with httpx.AsyncClient() as c:
            # A double submit: one payment, one page.
            a, b = await asyncio.gather(start_topup(c, ecard, token7, PUPIL, 10_000, key=key),
                                        start_topup(c, ecard, token7, PUPIL, 10_000, key=key))
            assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
            assert a.json()["payment_id"] == b.json()["payment_id"]
            assert a.json()["confirmation_url"] == b.json()["confirmation_url"]
            # The same key for another amount: refused by the acquirer.
            body = refused(await start_topup(c, ecard, token7, PUPIL, 20_000, key=key), 409)
            assert body["code"] == "idempotency_conflict"
            # The same key from two representatives of one pupil: two payments.
            p, g = await start_topup(c, ecard, parent10, 10, 5_000, key=key), \
                await start_topup(c, ecard, granny10, 10, 5_000, key=key)
            assert p.json()["payment_id"] != g.json()["payment_id"]
            # Each sees its own payment only.
            assert (await topup_view(c, ecard, parent10, 10, p.json()["payment_id"]))["status"] == "created"
            r = await c.get(f"{ecard.url}/children/10/topups/{p.json()['payment_id']}", headers=bearer(granny10))
            assert refused(r, 404)["code"] == "unknown_payment"
            r = await c.get(f"{ecard.url}/children/{PUPIL}/topups/{p.json()['payment_id']}", headers=bearer(token7))
            refused(r, 404)
            for pid in ("pay_nothing", "x" * 300):
                refused(await c.get(f"{ecard.url}/children/{PUPIL}/topups/{pid}", headers=bearer(token7)), 404)
        rows = await q(demo_dsn, "SELECT account_id, representative_id FROM card_payments ORDER BY account_id, "
                                 "representative_id")
        assert [tuple(r) for r in rows][0] == (PUPIL, PUPIL) and len(rows) == 3

    asyncio.run(main())


def test_too_many_topups_in_an_hour_is_429(demo_dsn, sandbox_url, return_pages):
    async def main(ecard: Ecard) -> None:
        token = await token_of(demo_dsn, PUPIL)
        async with httpx.AsyncClient() as c:
            for _ in range(2):
                assert (await start_topup(c, ecard, token, PUPIL, 1_000)).status_code == 201
            r = await start_topup(c, ecard, token, PUPIL, 1_000)
            assert refused(r, 429)["code"] == "too_many_topups" and int(r.headers["retry-after"]) > 0
            # Another parent is not affected.
            assert (await start_topup(c, ecard, await token_of(demo_dsn, OTHER_PUPIL), OTHER_PUPIL, 1_000)).status_code == 201

    with running_ecard(demo_dsn, sandbox_url, return_pages, topups_per_hour_max=2) as ecard:
        asyncio.run(main(ecard))


def test_server_errors_are_json_and_logged_with_a_traceback(demo_dsn, return_pages, monkeypatch):
    """The acquirer unreachable: 502 JSON, logged with its traceback. A bug: 500 JSON, logged."""
    async def main(ecard: Ecard) -> None:
        token = await token_of(demo_dsn, PUPIL)
        async with httpx.AsyncClient(timeout=30) as c:
            body = refused_5xx(await start_topup(c, ecard, token, PUPIL, 1_000), 502)
            assert body["code"] == "acquirer_unavailable"
            assert any(r.levelno >= logging.ERROR and r.exc_info for r in ecard.logs.records), ecard.logs.text()

            from storage import card_payments

            async def broken(*_a, **_k):
                raise RuntimeError("a bug in the rate limit")

            monkeypatch.setattr(card_payments, "manual_topups_since", broken)
            body = refused_5xx(await start_topup(c, ecard, token, PUPIL, 1_000), 500)
            assert body["code"] == "internal_error"
            assert "RuntimeError: a bug in the rate limit" in ecard.logs.text()
            assert "Traceback" in ecard.logs.text() or any(r.exc_info for r in ecard.logs.records)

    with running_ecard(demo_dsn, "http://127.0.0.1:9", return_pages) as ecard:
        asyncio.run(main(ecard))
    assert asyncio.run(q(demo_dsn, "SELECT * FROM card_payments")) == []


def refused_5xx(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body.get("code") and body.get("message"), body
    return body


# ---------------------------------------------------------------- ecard never sees a card number

TEST_CARDS = (CARD_OK, CARD_DECLINED, CARD_INSUFFICIENT_FUNDS, CARD_DECLINES_LATER)


def _spellings(card: str) -> list[str]:
    """The card as digits, and in groups of four with spaces and with dashes."""
    groups = [card[i:i + 4] for i in range(0, len(card), 4)]
    return [card, " ".join(groups), "-".join(groups)]


def test_ecard_never_receives_stores_or_logs_a_card_number(ecard: Ecard, sandbox, demo_dsn):
    """Every kind of payment (captured and saved, declined, canceled, failed confirmation, an
    automatic charge with the saved token), then: every byte ecard received (paths, queries,
    headers, bodies), every row of every table, and every log line of ecard's process hold no
    card number; only last 4 digits and the acquirer's token. The sandbox's own log neither."""
    from payments import autotopup
    from payments.acquirer import SandboxAcquirerClient
    import asyncpg

    async def main() -> None:
        token = await token_of(demo_dsn, PUPIL)
        async with httpx.AsyncClient() as c:
            saved = await topup(c, ecard, token, PUPIL, 10_000, CARD_OK, save_card=True, cardholder="IVAN PETROV")
            await topup(c, ecard, token, PUPIL, 10_000, CARD_DECLINES_LATER, save_card=True)
            await topup(c, ecard, token, PUPIL, 10_000, CARD_DECLINED, save_card=True)
            await topup(c, ecard, token, PUPIL, 10_000, CARD_INSUFFICIENT_FUNDS)
            await topup(c, ecard, token, PUPIL, 10_000, CARD_OK, wrong_codes=1, cancel_on="3ds")
            await topup(c, ecard, token, PUPIL, 10_000, CARD_OK, wrong_codes=3)
            cards = await eventually(lambda: _cards(c, token, 2), "both saved cards")
            assert sorted(x["last4"] for x in cards) == ["0341", "1111"]
            by_last4 = {x["last4"]: x["saved_card_id"] for x in cards}
            r = await c.put(f"{ecard.url}/children/{PUPIL}/auto-topup", headers=bearer(token),
                            json={"saved_card_id": by_last4["1111"], "amount_kopecks": 20_000,
                                  "threshold_kopecks": 10**9})
            assert r.status_code == 200, r.text
            acq = SandboxAcquirerClient(sandbox.url)
            conn = await asyncpg.connect(demo_dsn)
            try:
                charges = await autotopup.run_once(conn, acq, time.time_ns() // 1_000_000,
                                                   callback_url=ecard.url + "/payments/webhook")
            finally:
                await conn.close()
                await acq.close()
            assert [(x.account_id, x.status) for x in charges] == [(PUPIL, "captured")]
            await eventually(lambda: status_is(demo_dsn, charges[0].payment_id, "captured"), "auto charge recorded")
            await eventually(lambda: _all_settled(demo_dsn), "every payment's event processed")
            assert saved["payment_id"]

        received = ecard.recorder.everything().decode("utf-8", "replace")
        stored = await database_text(demo_dsn)
        logged = ecard.logs.text()
        sandbox_log = sandbox.log_path.read_text(errors="replace")
        assert "/children/" in received and "tok_" in stored and "HTTP Request" in logged  # the nets hold things
        for card in TEST_CARDS:
            for spelled in _spellings(card):
                assert spelled not in received, f"ecard received {spelled}"
                assert spelled not in stored, f"ecard stored {spelled}"
                assert spelled not in logged, f"ecard logged {spelled}"
                assert spelled not in sandbox_log, f"the sandbox logged {spelled}"
        assert "IVAN PETROV" not in received + stored + logged
        # What ecard keeps of a card: its last 4 digits and the token.
        rows = await q(demo_dsn, "SELECT last4, card_token FROM saved_cards ORDER BY id")
        assert [r["last4"] for r in rows] == ["1111", "0341"]
        assert all(re.fullmatch(r"tok_[0-9a-f]{24}", r["card_token"]) for r in rows)
        tokens = [r["card_token"] for r in rows]
        assert not any(t in logged for t in tokens), "a card token was logged"
        audit = "\n".join(str(dict(r)) for r in await q(demo_dsn, "SELECT * FROM audit_log"))
        assert "auto_topup.set" in audit and not any(t in audit for t in tokens)
        last4 = sorted(r[0] for r in await q(demo_dsn, "SELECT card_last4 FROM card_payments"))
        assert set(last4) == {"1111", "0341", "0002", "9995"}

    async def _cards(c, token, n):
        r = await c.get(f"{ecard.url}/saved-cards", headers=bearer(token))
        cards = r.json()["cards"]
        return cards if len(cards) == n else None

    asyncio.run(main())


async def _all_settled(dsn: str) -> bool:
    rows = await q(dsn, "SELECT count(*) FROM card_payments WHERE status = 'created'")
    return rows[0][0] == 0
