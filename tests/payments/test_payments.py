"""Card payments end to end: the sandbox acquirer (a subprocess, real HTTP), ecard's
payments app (uvicorn in a thread, real HTTP), a real database (demo_dsn) and, for the
money, an in-process gateway applying the commands. A top-up goes the way real acquirers
do it: a parent's bearer token asks ecard for a payment, the payer's browser (httpx) pays
on the sandbox's hosted page and comes back; the signed webhook credits the pupil.

Here: the signature, the acquirer itself, the webhook's bookkeeping (duplicated,
reordered, declined, canceled), the money, and events that must be refused. The parents'
endpoints and their refusals: test_payments_parents.py; saved cards and auto top-up:
test_payments_autotopup.py.

Nothing sleeps blindly: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import msgspec
import pytest

from payments import signing
from payments.acquirer import AcquirerError, SandboxAcquirerClient
from payments.sandbox import CARD_DECLINED, CARD_OK
from payments.webhook import TOPUP_KOPECKS_MAX
from payments_support import (  # noqa: F401  (sandbox, sandbox_url, return_pages, ecard, ecard_url: fixtures)
    PUPIL, SECRET, START_BALANCE, Ecard, acked, acks_at_least, balance, balance_is, command_done, commands_of,
    deliveries, ecard, ecard_url, eventually, journal_balanced, payment_status, q, refused,
    return_pages, running_gateway, sandbox, sandbox_url, signed_post, token_of, topup, topup_view,
)
from simulators.bank import pay_hosted

DEAD_CALLBACK = "http://127.0.0.1:9/payments/webhook"  # nobody listens there
RETURN = "http://127.0.0.1:8820/topup-done"


# ---------------------------------------------------------------- signatures


def test_signature_scheme():
    body = b'{"event_id":"evt_1"}'
    now = 1_700_000_000
    header = signing.sign_header("s3cret", now, body)
    assert header.startswith(f"t={now},v1=")
    assert signing.verify("s3cret", header, body, now + 10) == now
    # A rotated secret: any matching v1 is enough.
    rotated = f"{header},v1={signing.compute('other', now, body)}"
    assert signing.verify("other", rotated, body, now) == now
    for bad_header, bad_body, at, malformed in [
        (None, body, now, True),
        ("", body, now, True),
        ("garbage", body, now, True),
        (f"v1={signing.compute('s3cret', now, body)}", body, now, True),  # no timestamp
        (f"t={now}", body, now, True),  # no signature
        ("t=\u00b2,v1=00", body, now, True),  # a digit to str.isdigit(), not to int()
        (header, body + b" ", now, False),  # tampered body
        (signing.sign_header("wrong", now, body), body, now, False),
        (header, body, now + signing.SIGNATURE_TOLERANCE_S + 1, False),  # stale
        (header, body, now - signing.SIGNATURE_TOLERANCE_S - 1, False),  # from the future
    ]:
        with pytest.raises(signing.SignatureError) as e:
            signing.verify("s3cret", bad_header, bad_body, at)
        assert e.value.malformed is malformed, bad_header


def test_webhook_rejects_unauthentic_events(ecard_url, demo_dsn):
    async def main() -> None:
        event = {"event_id": "evt_x", "type": "payment.captured", "payment_id": "pay_forged",
                 "account_ref": str(PUPIL), "amount_kopecks": 100_000, "payment_amount_kopecks": 100_000}
        async with httpx.AsyncClient() as c:
            assert (await signed_post(c, ecard_url, event, header=None)).status_code == 400
            assert (await signed_post(c, ecard_url, event, header="t=abc,v1=00")).status_code == 400
            assert (await signed_post(c, ecard_url, event, secret="not-the-secret")).status_code == 401
            stale = int(time.time()) - signing.SIGNATURE_TOLERANCE_S - 60
            assert (await signed_post(c, ecard_url, event, ts=stale)).status_code == 401
            # Signed correctly but then altered in transit.
            body = msgspec.json.encode(event)
            header = signing.sign_header(SECRET, int(time.time()), body)
            forged = body.replace(b"100000", b"900000")
            r = await c.post(ecard_url + "/payments/webhook", content=forged,
                             headers={signing.SIGNATURE_HEADER: header, "Content-Type": "application/json"})
            assert r.status_code == 401
            # Authentic but not an event.
            r = await signed_post(c, ecard_url, {"hello": 1})
            assert r.status_code == 400
        assert await q(demo_dsn, "SELECT * FROM card_payments") == []
        assert await q(demo_dsn, "SELECT * FROM commands") == []

    asyncio.run(main())


# ---------------------------------------------------------------- the acquirer itself


def test_sandbox_acquirer(sandbox_url):
    """The merchant API: hosted payments (idempotent, no card data accepted), the hosted page's
    outcomes, tokens, refunds, and deliveries retried to a dead callback."""
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        run = uuid.uuid4().hex[:8]
        try:
            p = await acq.create_payment(account_ref="1", amount_kopecks=10_000, callback_url=DEAD_CALLBACK,
                                         idempotency_key=f"k-ok-{run}", return_url=RETURN)
            assert (p.status, p.amount_kopecks, p.account_ref) == ("pending", 10_000, "1")
            assert p.confirmation_url == f"{sandbox_url}/pay/{p.payment_id}"
            again = await acq.create_payment(account_ref="1", amount_kopecks=10_000, callback_url=DEAD_CALLBACK,
                                             idempotency_key=f"k-ok-{run}", return_url=RETURN)
            assert (again.payment_id, again.confirmation_url) == (p.payment_id, p.confirmation_url)
            with pytest.raises(AcquirerError) as e:
                await acq.create_payment(account_ref="1", amount_kopecks=20_000, callback_url=DEAD_CALLBACK,
                                         idempotency_key=f"k-ok-{run}", return_url=RETURN)
            assert e.value.status == 409
            with pytest.raises(AcquirerError) as e:
                await acq.create_payment(account_ref="2", amount_kopecks=5_000, callback_url=DEAD_CALLBACK,
                                         idempotency_key=f"k-token-{run}", card_token="tok_unknown")
            assert e.value.status == 404
            async with httpx.AsyncClient() as c:
                # A merchant may not send card data at all: only the hosted page takes it.
                r = await c.post(f"{sandbox_url}/payments", headers={"Idempotency-Key": f"k-pan-{run}"},
                                 json={"account_ref": "1", "amount_kopecks": 100, "callback_url": DEAD_CALLBACK,
                                       "card_number": CARD_OK})
                assert (r.status_code, r.json()["code"]) == (400, "card_data_not_accepted")
                back = await pay_hosted(c, p.confirmation_url, CARD_OK)
                assert back.location == f"{RETURN}?payment_id={p.payment_id}"
                assert (await c.get(f"{sandbox_url}/payments/{p.payment_id}")).json()["status"] == "captured"
                # The completed page only sends the browser back, whatever is posted to it.
                again = await pay_hosted(c, p.confirmation_url, CARD_DECLINED)
                assert again.location == back.location
                view = (await c.get(f"{sandbox_url}/payments/{p.payment_id}")).json()
                assert (view["status"], view["card_last4"], view["card_saved"]) == ("captured", "1111", False)

                declined = await acq.create_payment(account_ref="1", amount_kopecks=10_000, callback_url=DEAD_CALLBACK,
                                                    idempotency_key=f"k-declined-{run}", return_url=RETURN)
                await pay_hosted(c, declined.confirmation_url, CARD_DECLINED)
                view = (await c.get(f"{sandbox_url}/payments/{declined.payment_id}")).json()
                assert (view["status"], view["decline_code"]) == ("failed", "card_declined")

            refunded = await acq.refund(p.payment_id, 4_000)
            assert refunded.status == "refunded"
            assert (await acq.refund(p.payment_id, 4_000)).status == "refunded"  # same key: same answer
            with pytest.raises(AcquirerError) as e:
                await acq.refund(p.payment_id, 1_000, idempotency_key=f"second-refund-{run}")
            assert e.value.status == 409
            with pytest.raises(AcquirerError) as e:
                await acq.refund(declined.payment_id)
            assert e.value.status == 409
            async with httpx.AsyncClient() as c:
                await eventually(lambda: _attempts(c, p.payment_id), "two failed delivery attempts to a dead callback")
        finally:
            await acq.close()

    async def _attempts(c: httpx.AsyncClient, payment_id: str) -> bool:
        rows = await deliveries(c, sandbox_url, payment_id)
        tries = [d["attempt"] for d in rows if d["type"] == "payment.captured"]
        return len(tries) >= 2 and all(d["status"] == 0 for d in rows)

    asyncio.run(main())


# ---------------------------------------------------------------- bookkeeping (no gateway needed)


def test_topup_duplicate_callbacks_one_command(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        token = await token_of(demo_dsn, PUPIL)
        async with httpx.AsyncClient() as c:
            first = await topup(c, ecard, token, PUPIL, 30_000, CARD_OK, test={"duplicate": True})
            pid = first["payment_id"]
            assert ecard.pages.visits[-1] == pid  # the browser came back to the parents' page
            rows = await eventually(lambda: _two_acks(c, pid), "both copies of the capture acknowledged")
            assert len({d["event_id"] for d in rows}) == 1  # the same event, twice
            # The return page asks ecard how it went.
            view = await topup_view(c, ecard, token, PUPIL, pid)
            assert (view["status"], view["credit"], view["card_last4"], view["failure"]) == \
                ("captured", "pending", "1111", None)
        assert await payment_status(demo_dsn, pid) == "captured"
        assert len(await q(demo_dsn, "SELECT 1 FROM card_payments WHERE account_id = $1", PUPIL)) == 1
        cmds = await commands_of(demo_dsn, pid)
        assert [(k, kind) for k, kind, _ in cmds] == [(f"bank:{pid}:captured", "bank_topup")]
        payload = (await q(demo_dsn, "SELECT payload FROM commands"))[0][0]
        assert msgspec.json.decode(payload) == {"account_id": PUPIL, "amount_kopecks": 30_000, "payment_id": pid}
        row = (await q(demo_dsn, "SELECT origin, representative_id, save_card FROM card_payments"))[0]
        assert tuple(row) == ("manual", PUPIL, False)  # demo parent N is representative N
        assert await q(demo_dsn, "SELECT * FROM saved_cards") == []  # not asked to save

    async def _two_acks(c, pid):
        rows = await deliveries(c, sandbox_url, pid)
        return rows if acked(rows, "payment.captured") == 2 else None

    asyncio.run(main())


def test_refund_before_capture_is_retried_until_it_applies(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        token = await token_of(demo_dsn, PUPIL)
        try:
            async with httpx.AsyncClient() as c:
                # reorder: the sandbox holds the capture event and sends the refund event first.
                r = await topup(c, ecard, token, PUPIL, 25_000, CARD_OK, test={"reorder": True})
                pid = r["payment_id"]
                assert await payment_status(demo_dsn, pid) == "created"
                await acq.refund(pid)
                rows = await eventually(lambda: _settled(c, pid), "refund acknowledged after the capture")
        finally:
            await acq.close()
        first = rows[0]
        assert (first["type"], first["status"]) == ("payment.refunded", 409)  # too early: retry later
        captured_ok = next(i for i, d in enumerate(rows) if d["type"] == "payment.captured" and d["status"] == 200)
        refund_ok = next(i for i, d in enumerate(rows) if d["type"] == "payment.refunded" and d["status"] == 200)
        assert captured_ok < refund_ok
        assert await payment_status(demo_dsn, pid) == "refunded"
        cmds = await commands_of(demo_dsn, pid)
        assert [(k, kind) for k, kind, _ in cmds] == [
            (f"bank:{pid}:captured", "bank_topup"), (f"bank:{pid}:refunded", "bank_refund")]

    async def _settled(c, pid):
        rows = await deliveries(c, sandbox_url, pid)
        return rows if acked(rows, "payment.captured") and acked(rows, "payment.refunded") else None

    asyncio.run(main())


# ---------------------------------------------------------------- money (needs the gateway)


def test_money_topup_once_declined_and_canceled_nothing(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        token7, token8 = await token_of(demo_dsn, PUPIL), await token_of(demo_dsn, PUPIL + 1)
        async with running_gateway(demo_dsn), httpx.AsyncClient() as c:
            ok = await topup(c, ecard, token7, PUPIL, 30_000, CARD_OK, test={"duplicate": True})
            no = await topup(c, ecard, token8, PUPIL + 1, 30_000, CARD_DECLINED, test={"duplicate": True})
            off = await topup(c, ecard, token8, PUPIL + 1, 40_000, CARD_OK, cancel_on="3ds", wrong_codes=1,
                              test={"duplicate": True})
            for pid, type_ in ((ok["payment_id"], "payment.captured"), (no["payment_id"], "payment.failed"),
                               (off["payment_id"], "payment.canceled")):
                await eventually(lambda: acks_at_least(c, sandbox_url, pid, type_, 2), f"{type_} acknowledged twice")
            await eventually(lambda: command_done(demo_dsn, ok["payment_id"], 1), "bank_topup applied")
            await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 30_000), "pupil credited")
            # The same event once more, by hand: still nothing new.
            await _redeliver(c, ecard.url, ok["payment_id"], "payment.captured", 30_000)
            # The browser replays the completed page (a double click, the back button): nothing new.
            replay = await pay_hosted(c, ok["confirmation_url"], CARD_OK)
            assert replay.location == ok["back"]
            view = await topup_view(c, ecard, token7, PUPIL, ok["payment_id"])
            assert (view["status"], view["credit"]) == ("captured", "applied")
        assert await balance(demo_dsn, PUPIL) == START_BALANCE + 30_000
        assert await balance(demo_dsn, PUPIL + 1) == START_BALANCE
        statuses = [tuple(r) for r in await q(demo_dsn, "SELECT kind, status FROM commands")]
        assert statuses == [("bank_topup", 1)]
        assert await payment_status(demo_dsn, no["payment_id"]) == "failed"
        assert await payment_status(demo_dsn, off["payment_id"]) == "canceled"
        assert await journal_balanced(demo_dsn)

    asyncio.run(main())


def test_money_refund_and_reordered_callbacks(ecard: Ecard, sandbox_url, demo_dsn):
    async def main() -> None:
        acq = SandboxAcquirerClient(sandbox_url)
        token7, token8 = await token_of(demo_dsn, PUPIL), await token_of(demo_dsn, PUPIL + 1)
        try:
            async with running_gateway(demo_dsn), httpx.AsyncClient() as c:
                plain = await topup(c, ecard, token7, PUPIL, 40_000, CARD_OK)
                await eventually(lambda: command_done(demo_dsn, plain["payment_id"], 1), "top-up applied")
                await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 40_000), "credited")
                await acq.refund(plain["payment_id"], 15_000)  # partial
                await eventually(lambda: command_done(demo_dsn, plain["payment_id"], 2), "refund applied")
                await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 25_000), "refund reversed")

                odd = await topup(c, ecard, token8, PUPIL + 1, 20_000, CARD_OK, test={"reorder": True, "duplicate": True})
                await acq.refund(odd["payment_id"])
                await eventually(lambda: command_done(demo_dsn, odd["payment_id"], 2), "both commands applied")
                await eventually(lambda: acks_at_least(c, sandbox_url, odd["payment_id"], "payment.refunded", 2),
                                 "refund acknowledged")
                await eventually(lambda: balance_is(demo_dsn, PUPIL + 1, START_BALANCE), "net zero")
        finally:
            await acq.close()
        assert await payment_status(demo_dsn, plain["payment_id"]) == "refunded"
        assert await payment_status(demo_dsn, odd["payment_id"]) == "refunded"
        assert await balance(demo_dsn, PUPIL) == START_BALANCE + 25_000
        assert await balance(demo_dsn, PUPIL + 1) == START_BALANCE
        assert await journal_balanced(demo_dsn)

    asyncio.run(main())


async def _redeliver(c: httpx.AsyncClient, ecard_url: str, pid: str, type_: str, amount: int) -> None:
    event = {"event_id": "evt_again", "type": type_, "payment_id": pid, "account_ref": str(PUPIL),
             "amount_kopecks": amount, "payment_amount_kopecks": amount}
    r = await signed_post(c, ecard_url, event)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- hostile or wrong events


def _event(type_: str, pid: str, amount: int, payment_amount: int | None = None, account: object = PUPIL) -> dict:
    return {"event_id": f"evt_{uuid.uuid4().hex[:12]}", "type": type_, "payment_id": pid,
            "account_ref": str(account), "amount_kopecks": amount,
            "payment_amount_kopecks": amount if payment_amount is None else payment_amount}


async def _refund_commands(dsn: str, pid: str) -> list[int]:
    rows = await q(dsn, "SELECT (payload->>'amount_kopecks')::bigint FROM commands "
                        "WHERE kind = 'bank_refund' AND payload->>'payment_id' = $1 ORDER BY seq", pid)
    return [r[0] for r in rows]


def test_refunds_never_exceed_the_captured_amount(ecard_url, demo_dsn):
    """A refund larger than its payment, a negative one, or a second partial one that would
    take the sum above the capture is refused (4xx, JSON) and moves nothing; the first valid
    partial refund moves exactly its amount, once, however often it is delivered."""
    async def main() -> None:
        pid = f"pay_refund_{uuid.uuid4().hex[:8]}"
        async with running_gateway(demo_dsn), httpx.AsyncClient() as c:
            r = await signed_post(c, ecard_url, _event("payment.captured", pid, 20_000))
            assert r.status_code == 200, r.text
            await eventually(lambda: command_done(demo_dsn, pid, 1), "bank_topup applied")
            await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 20_000), "credited")

            # More than was ever paid in: refused, nothing submitted, the payment stays captured.
            body = refused(await signed_post(c, ecard_url, _event("payment.refunded", pid, 30_000, 20_000)), 409, 422)
            assert "20000" in body["message"] and "30000" in body["message"], body
            for bad in (-5_000, 0):
                refused(await signed_post(c, ecard_url, _event("payment.refunded", pid, bad, 20_000)), 400, 409, 422)
            assert await _refund_commands(demo_dsn, pid) == []
            assert await payment_status(demo_dsn, pid) == "captured"

            # A partial refund, delivered three times (two at once): reversed once.
            partial = _event("payment.refunded", pid, 15_000, 20_000)
            replies = await asyncio.gather(*(signed_post(c, ecard_url, partial) for _ in range(2)))
            replies.append(await signed_post(c, ecard_url, partial))
            assert [x.status_code for x in replies] == [200, 200, 200], [x.text for x in replies]
            await eventually(lambda: command_done(demo_dsn, pid, 2), "bank_refund applied")
            # A second partial refund would take the refunds to 25,000 > 20,000: refused.
            refused(await signed_post(c, ecard_url, _event("payment.refunded", pid, 10_000, 20_000)), 409, 422)
            assert await _refund_commands(demo_dsn, pid) == [15_000]
            await eventually(lambda: balance_is(demo_dsn, PUPIL, START_BALANCE + 5_000), "refund reversed once")
        assert await payment_status(demo_dsn, pid) == "refunded"
        assert await balance(demo_dsn, PUPIL) == START_BALANCE + 5_000
        assert await journal_balanced(demo_dsn)

    asyncio.run(main())


def test_racing_refunds_of_one_payment_pass_the_check_once(ecard_url, demo_dsn):
    """Two refund events of one payment at once, together more than the capture: exactly one
    is accepted, whichever wins; the refunds recorded never exceed the captured amount."""
    async def main() -> None:
        async with httpx.AsyncClient() as c:
            for round_ in range(6):
                pid = f"pay_race_{round_}_{uuid.uuid4().hex[:8]}"
                r = await signed_post(c, ecard_url, _event("payment.captured", pid, 20_000))
                assert r.status_code == 200, r.text
                a, b = (_event("payment.refunded", pid, amount, 20_000) for amount in (12_000, 11_000))
                replies = await asyncio.gather(signed_post(c, ecard_url, a), signed_post(c, ecard_url, b))
                codes = sorted(x.status_code for x in replies)
                assert codes[0] == 200 and 400 <= codes[1] < 500, [x.text for x in replies]
                refunds = await _refund_commands(demo_dsn, pid)
                assert len(refunds) == 1 and sum(refunds) <= 20_000, refunds

    asyncio.run(main())


BIGINT_MAX = 2**63 - 1


@pytest.mark.parametrize("field, value", [
    ("account_ref", "-1"),
    ("account_ref", "0"),
    ("account_ref", "99999999999999999999"),
    ("account_ref", str(BIGINT_MAX + 1)),
    ("account_ref", "abc"),
    ("account_ref", ""),
    ("account_ref", " 7"),
    ("account_ref", "7_0"),
    ("account_ref", "\u0667"),  # an Arabic-Indic seven: int() would take it
    ("amount_kopecks", -100),
    ("amount_kopecks", 0),
    ("amount_kopecks", TOPUP_KOPECKS_MAX + 1),  # fits, but no payment of ecard's is that large
    ("amount_kopecks", BIGINT_MAX + 1),
    ("amount_kopecks", 10**30),
    ("payment_amount_kopecks", -1),
    ("payment_amount_kopecks", 0),
    ("payment_amount_kopecks", TOPUP_KOPECKS_MAX + 1),
    ("payment_amount_kopecks", 2**64),
    ("payment_id", ""),
])
def test_out_of_range_event_fields_are_4xx(ecard_url, demo_dsn, field, value):
    async def main() -> None:
        event = _event("payment.captured", f"pay_range_{uuid.uuid4().hex[:8]}", 10_000)
        event[field] = value
        async with httpx.AsyncClient() as c:
            for type_ in ("payment.captured", "payment.refunded", "payment.failed"):
                event["type"] = type_
                refused(await signed_post(c, ecard_url, event), 400, 422)
        assert await q(demo_dsn, "SELECT * FROM card_payments") == []
        assert await q(demo_dsn, "SELECT * FROM commands") == []

    asyncio.run(main())


def test_capture_for_a_non_pupil_account_isrefused(ecard_url, demo_dsn):
    """The acquirer's clearing account, a school's revenue or a till's drawer is no pupil: its
    capture is refused (422), nothing is recorded or submitted, nothing is marked captured."""
    async def main() -> None:
        others = await q(demo_dsn, "SELECT DISTINCT ON (kind) id, kind FROM accounts WHERE kind <> 1 ORDER BY kind, id")
        assert {r["kind"] for r in others} >= {2, 3, 5}
        async with httpx.AsyncClient() as c:
            for account, kind in others:
                pid = f"pay_kind{kind}_{uuid.uuid4().hex[:8]}"
                for type_ in ("payment.captured", "payment.refunded"):
                    body = refused(await signed_post(c, ecard_url, _event(type_, pid, 10_000, account=account)), 422)
                    assert str(account) in body["message"], body
                assert await payment_status(demo_dsn, pid) is None
            # An account that does not exist at all.
            refused(await signed_post(c, ecard_url, _event("payment.captured", "pay_nobody", 10_000, account=10**12)), 422)
        assert await q(demo_dsn, "SELECT * FROM card_payments") == []
        assert await q(demo_dsn, "SELECT * FROM commands") == []

    asyncio.run(main())


def test_event_with_an_odd_origin_is_recorded_as_manual(ecard_url, demo_dsn):
    """metadata.origin is the acquirer's echo of what ecard sent; anything else (a list, a
    number, an unknown word) is recorded as manual, never a 500."""
    async def main() -> None:
        async with httpx.AsyncClient() as c:
            for i, origin in enumerate((["auto_threshold"], {"a": 1}, 7, "somebody")):
                event = {**_event("payment.captured", f"pay_origin_{i}_{uuid.uuid4().hex[:8]}", 1_000),
                         "metadata": {"origin": origin}}
                r = await signed_post(c, ecard_url, event)
                assert r.status_code == 200, r.text
        rows = await q(demo_dsn, "SELECT origin, status FROM card_payments")
        assert [tuple(r) for r in rows] == [("manual", "captured")] * 4

    asyncio.run(main())


def test_capture_of_a_canceled_payment_is_refused(ecard_url, demo_dsn):
    """The status only moves forward: a payment canceled at the acquirer never reads captured."""
    async def main() -> None:
        pid = f"pay_cancel_{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient() as c:
            r = await signed_post(c, ecard_url, {**_event("payment.canceled", pid, 10_000),
                                                 "decline_code": "canceled_by_payer"})
            assert (r.status_code, r.json()["status"]) == (200, "canceled")
            refused(await signed_post(c, ecard_url, _event("payment.captured", pid, 10_000)), 409)
            r = await signed_post(c, ecard_url, _event("payment.refunded", pid, 10_000))
            assert (r.status_code, r.json()["status"]) == (200, "canceled")
        assert await payment_status(demo_dsn, pid) == "canceled"
        assert await q(demo_dsn, "SELECT * FROM commands") == []

    asyncio.run(main())


def test_a_card_token_ecard_did_not_ask_for_is_not_saved(ecard_url, demo_dsn):
    """A capture event carrying a token for a payment nobody asked to save (or written from the
    event alone, with no parent behind it) stores no card; the money is still credited."""
    async def main() -> None:
        pid = f"pay_tok_{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient() as c:
            event = {**_event("payment.captured", pid, 10_000), "card_token": "tok_x", "card_last4": "1111"}
            assert (await signed_post(c, ecard_url, event)).status_code == 200
        assert await q(demo_dsn, "SELECT * FROM saved_cards") == []
        assert [r[0] for r in await q(demo_dsn, "SELECT kind FROM commands")] == ["bank_topup"]

    asyncio.run(main())
