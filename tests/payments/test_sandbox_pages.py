"""The sandbox acquirer's hosted page and tokens, in process (Litestar's TestClient, no
sockets, no database): the card form's checks, the 3-D-Secure-like step, cancel, expiry,
a page that completes once, what the events carry, and charges with a saved token.

Events are caught instead of delivered, so every outcome is checked on the event ecard
would receive.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from litestar.testing import TestClient

from payments.sandbox import (CARD_DECLINED, CARD_DECLINES_LATER, CARD_INSUFFICIENT_FUNDS, CARD_OK,
                              THREE_DS_ATTEMPTS_MAX, SandboxConfig, create_app, with_payment_id)
from payments.sandbox_pages import Card, card_page, luhn_ok, parse_card_form, rubles, three_ds_code

RETURN = "https://parents.example:8443/topup-done?child=7"
CALLBACK = "http://127.0.0.1:9/payments/webhook"
TODAY = dt.date(2026, 11, 25)


class Clock:
    def __init__(self) -> None:
        self.now_s = dt.datetime(2026, 11, 25, 12, tzinfo=dt.timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def sandbox():
    clock = Clock()
    app = create_app(SandboxConfig(webhook_secret="s", public_url="https://acquirer.example", page_ttl_s=600,
                                   sweep_interval_s=3_600, clock_s=clock))
    state = app.state.sandbox
    events: list[dict[str, Any]] = []
    state._deliver_all = lambda payment, event, first: events.append(event)  # caught, not sent
    with TestClient(app) as client:
        yield client, state, events, clock


def _hosted(client, key: str = "k1", save: bool = False, amount: int = 50_000, **extra) -> dict:
    r = client.post("/payments", headers={"Idempotency-Key": key}, json={
        "account_ref": "7", "amount_kopecks": amount, "callback_url": CALLBACK, "metadata": {"origin": "manual"},
        "description": "Пополнение лицевого счёта ученика № 7",
        "confirmation": {"type": "redirect", "return_url": RETURN}, "save_payment_method": save, **extra})
    assert r.status_code in (200, 201), r.text
    return r.json()


def _card(client, pid: str, number: str = CARD_OK, expiry: str = "12/30", cvc: str = "123", **more):
    return client.post(f"/pay/{pid}", data={"card_number": number, "expiry": expiry, "cvc": cvc, **more},
                       follow_redirects=False)


def _code(client, pid: str, code: str):
    return client.post(f"/pay/{pid}/3ds", data={"code": code}, follow_redirects=False)


def _back(pid: str) -> str:
    return with_payment_id(RETURN, pid)


# ---------------------------------------------------------------- pure checks


def test_luhn_and_the_card_form_checks():
    assert luhn_ok(CARD_OK) and luhn_ok(CARD_DECLINED) and luhn_ok(CARD_INSUFFICIENT_FUNDS) and luhn_ok(CARD_DECLINES_LATER)
    assert not luhn_ok("4111111111111112") and not luhn_ok("41111") and not luhn_ok("4111\u0661111111111111")
    ok, errors = parse_card_form({"card_number": "4111 1111-1111 1111", "expiry": " 1/27 ", "cvc": "123",
                                  "cardholder": "  ivan   petrov "}, TODAY)
    assert errors == {} and ok == Card(CARD_OK, 1, 2027, "IVAN PETROV")
    assert three_ds_code(ok) == "1111"
    # This month is still valid; last month is not.
    assert parse_card_form({"card_number": CARD_OK, "expiry": "11/26", "cvc": "000"}, TODAY)[1] == {}
    for fields, field, words in [
        ({"card_number": ""}, "card_number", "Введите номер"),
        ({"card_number": "4111111111111112"}, "card_number", "с ошибкой"),
        ({"card_number": "4" * 40}, "card_number", "с ошибкой"),
        ({"expiry": ""}, "expiry", "ММ/ГГ"),
        ({"expiry": "13/29"}, "expiry", "например"),
        ({"expiry": "1229"}, "expiry", "например"),
        ({"expiry": "10/26"}, "expiry", "истёк"),
        ({"expiry": "12/99"}, "expiry", "Проверьте"),
        ({"cvc": "12"}, "cvc", "три цифры"),
        ({"cvc": "1234"}, "cvc", "три цифры"),
        ({"cvc": "12a"}, "cvc", "три цифры"),
        ({"cardholder": "Иван Петров"}, "cardholder", "латинскими"),
        ({"cardholder": "A" * 101}, "cardholder", "латинскими"),
    ]:
        card, errors = parse_card_form({"card_number": CARD_OK, "expiry": "12/30", "cvc": "123", **fields}, TODAY)
        assert card is None and list(errors) == [field] and words in errors[field], (fields, errors)


def test_amounts_in_roubles():
    assert rubles(50_000) == "500,00\u00a0₽"
    assert rubles(12_345_678) == "123\u00a0456,78\u00a0₽"
    assert rubles(5) == "0,05\u00a0₽"


def test_the_card_page_is_russian_labelled_and_escapes():
    html = card_page(payment_id="pay_1", merchant="<Школа & Ко>", description="Пополнение", amount_kopecks=100,
                     save_payment_method=True, values={"card_number": '"><script>', "cvc": "999"},
                     errors={"card_number": "Номер карты введён с ошибкой"})
    assert '<html lang="ru">' in html and "<h1>Оплата картой</h1>" in html
    assert "&lt;Школа &amp; Ко&gt;" in html and "<script>" not in html
    for field in ("card_number", "expiry", "cvc", "cardholder"):
        assert f'<label for="{field}">' in html and f'id="{field}"' in html
    assert 'aria-invalid="true" aria-describedby="card_number-error"' in html and 'role="alert"' in html
    assert 'value="999"' not in html  # the CVC is never written back
    assert "сохранена для автопополнения" in html


# ---------------------------------------------------------------- the hosted page over HTTP


def test_a_hosted_payment_pays_once_and_saves_the_card(sandbox):
    client, state, events, _ = sandbox
    p = _hosted(client, save=True)
    assert (p["status"], p["confirmation_url"]) == ("pending", f"https://acquirer.example/pay/{p['payment_id']}")
    assert _hosted(client, save=True)["payment_id"] == p["payment_id"]  # the same key: the same payment
    pid = p["payment_id"]
    page = client.get(f"/pay/{pid}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "500,00" in page.text and "Пополнение лицевого счёта ученика № 7" in page.text
    csp = page.headers["content-security-policy"]
    assert "form-action 'self' https://parents.example:8443" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    # No code page before a card.
    assert client.get(f"/pay/{pid}/3ds", follow_redirects=False).headers["location"] == f"/pay/{pid}"
    r = _card(client, pid, "4111 1111 1111 1111", cardholder="Ivan Petrov")
    assert (r.status_code, r.headers["location"]) == (303, f"/pay/{pid}/3ds")
    page = client.get(f"/pay/{pid}/3ds")
    assert "Подтверждение платежа" in page.text and "•••• 1111" in page.text
    assert re.search(r'id="sandbox-code">1111<', page.text)
    assert CARD_OK not in page.text
    assert events == []  # nothing decided yet
    r = _code(client, pid, "1111")
    assert (r.status_code, r.headers["location"]) == (303, _back(pid))
    assert _back(pid) == "https://parents.example:8443/topup-done?child=7&payment_id=" + pid
    [event] = events
    assert (event["type"], event["payment_id"], event["amount_kopecks"], event["card_last4"]) == \
        ("payment.captured", pid, 50_000, "1111")
    token = event["card_token"]
    assert re.fullmatch(r"tok_[0-9a-f]{24}", token) and CARD_OK not in str(event)
    # Completed: every page and every post only sends the browser back; nothing is charged again.
    for r in (client.get(f"/pay/{pid}", follow_redirects=False), _card(client, pid),
              client.get(f"/pay/{pid}/3ds", follow_redirects=False), _code(client, pid, "1111"),
              client.post(f"/pay/{pid}/cancel", follow_redirects=False)):
        assert (r.status_code, r.headers["location"]) == (303, _back(pid))
    assert len(events) == 1
    view = client.get(f"/payments/{pid}").json()
    assert (view["status"], view["card_last4"], view["card_saved"]) == ("captured", "1111", True)
    assert "card_token" not in view and token not in str(view)
    assert state.payments[pid].card is None  # the number is forgotten; only the token keeps the card
    # The saved card pays by token, without the payer.
    r = client.post("/payments", headers={"Idempotency-Key": "auto-1"},
                    json={"account_ref": "7", "amount_kopecks": 20_000, "callback_url": CALLBACK, "card_token": token})
    assert (r.status_code, r.json()["status"], r.json()["card_last4"]) == (201, "captured", "1111")
    assert events[-1]["type"] == "payment.captured" and "card_token" not in events[-1]


def test_declines_happen_at_the_confirmation_step(sandbox):
    client, _, events, _ = sandbox
    for i, (card, code) in enumerate(((CARD_DECLINED, "card_declined"), (CARD_INSUFFICIENT_FUNDS, "insufficient_funds"))):
        pid = _hosted(client, key=f"d{i}", save=True)["payment_id"]
        assert _card(client, pid, card).status_code == 303
        r = _code(client, pid, card[-4:])
        assert (r.status_code, r.headers["location"]) == (303, _back(pid))
        assert (events[-1]["type"], events[-1]["decline_code"], events[-1]["card_last4"]) == \
            ("payment.failed", code, card[-4:])
        assert "card_token" not in events[-1]  # a declined card is never saved


def test_wrong_codes_are_limited_and_cancel_works_anywhere(sandbox):
    client, _, events, _ = sandbox
    pid = _hosted(client, key="w")["payment_id"]
    _card(client, pid)
    for left in range(THREE_DS_ATTEMPTS_MAX - 1, 0, -1):
        r = _code(client, pid, "0000")
        assert r.status_code == 422 and f"Осталось попыток: {left}" in r.text and 'aria-invalid="true"' in r.text
    assert events == []
    r = _code(client, pid, "abcd")  # not even a code: counts as a wrong one, the last
    assert (r.status_code, r.headers["location"]) == (303, _back(pid))
    assert (events[-1]["type"], events[-1]["decline_code"]) == ("payment.failed", "authentication_failed")

    pid = _hosted(client, key="c1")["payment_id"]
    _card(client, pid)
    _code(client, pid, "0000")
    r = client.post(f"/pay/{pid}/cancel", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, _back(pid))
    assert (events[-1]["type"], events[-1]["decline_code"]) == ("payment.canceled", "canceled_by_payer")
    assert _code(client, pid, "1111").headers["location"] == _back(pid)  # too late: nothing captured
    assert client.get(f"/payments/{pid}").json()["status"] == "canceled"

    pid = _hosted(client, key="c2")["payment_id"]
    assert client.post(f"/pay/{pid}/cancel", follow_redirects=False).status_code == 303
    assert events[-1]["type"] == "payment.canceled" and "card_last4" not in events[-1]


def test_a_bad_card_form_is_shown_again_with_the_errors(sandbox):
    client, _, events, _ = sandbox
    pid = _hosted(client)["payment_id"]
    r = _card(client, pid, "4111 1111 1111 1112", expiry="10/26", cvc="12")
    assert r.status_code == 422
    for words in ("Проверьте данные карты", "с ошибкой", "истёк", "три цифры"):
        assert words in r.text
    assert 'value="4111 1111 1111 1112"' in r.text and 'value="10/26"' in r.text
    r = client.post(f"/pay/{pid}", content=b"x" * 5_000, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    assert client.get(f"/pay/{pid}/3ds", follow_redirects=False).headers["location"] == f"/pay/{pid}"
    assert events == []
    assert client.get("/pay/pay_nope").status_code == 404
    assert 'lang="ru"' in client.get("/pay/pay_nope").text


def test_an_unfinished_page_expires(sandbox):
    client, state, events, clock = sandbox
    pid = _hosted(client)["payment_id"]
    _card(client, pid)
    clock.now_s += 601
    assert state.sweep() == 1
    assert (events[-1]["type"], events[-1]["decline_code"]) == ("payment.canceled", "expired")
    assert client.get(f"/pay/{pid}", follow_redirects=False).headers["location"] == _back(pid)
    # Found expired by the payer before the sweep: the same.
    pid = _hosted(client, key="k2")["payment_id"]
    clock.now_s += 601
    assert client.get(f"/pay/{pid}", follow_redirects=False).status_code == 303
    assert events[-1]["type"] == "payment.canceled" and state.sweep() == 0


def test_merchant_requests_that_are_refused(sandbox):
    client, _, events, _ = sandbox
    base = {"account_ref": "7", "amount_kopecks": 1_000, "callback_url": CALLBACK}
    hosted = {"confirmation": {"type": "redirect", "return_url": RETURN}}
    for body, status, code in [
        ({**base, "card_number": CARD_OK}, 400, "card_data_not_accepted"),
        ({**base, **hosted, "card_number": CARD_OK}, 400, "card_data_not_accepted"),
        (base, 400, "invalid_request"),  # neither a page nor a token
        ({**base, **hosted, "card_token": "tok_x"}, 400, "invalid_request"),
        ({**base, "confirmation": {"type": "embedded"}}, 400, "invalid_confirmation"),
        ({**base, "confirmation": {"type": "redirect", "return_url": "javascript:alert(1)"}}, 400, "invalid_confirmation"),
        ({**base, **hosted, "save_payment_method": "yes"}, 400, "invalid_request"),
        ({**base, **hosted, "amount_kopecks": 0}, 400, "invalid_amount"),
        ({**base, "card_token": "tok_unknown"}, 404, "unknown_token"),
    ]:
        r = client.post("/payments", headers={"Idempotency-Key": f"bad-{code}-{status}-{len(str(body))}"}, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    assert client.post("/payments", json={**base, **hosted}).status_code == 400  # no Idempotency-Key
    _hosted(client, key="same")
    r = client.post("/payments", headers={"Idempotency-Key": "same"}, json={
        "account_ref": "7", "amount_kopecks": 1, "callback_url": CALLBACK, **hosted})
    assert r.status_code == 409
    assert events == []


def test_a_saved_card_can_be_declined_later_or_expire(sandbox):
    client, state, events, clock = sandbox
    tokens = {}
    for card, expiry in ((CARD_DECLINES_LATER, "12/30"), (CARD_OK, "11/26")):
        pid = _hosted(client, key=f"save-{card}", save=True)["payment_id"]
        _card(client, pid, card, expiry=expiry)
        _code(client, pid, card[-4:])
        assert events[-1]["type"] == "payment.captured"
        tokens[card] = events[-1]["card_token"]
    clock.now_s += 40 * 86_400  # into next year's January: the 11/26 card has expired
    for card, decline in ((CARD_DECLINES_LATER, "card_declined"), (CARD_OK, "expired_card")):
        r = client.post("/payments", headers={"Idempotency-Key": f"by-token-{card}"},
                        json={"account_ref": "7", "amount_kopecks": 1_000, "callback_url": CALLBACK,
                              "card_token": tokens[card]})
        assert (r.json()["status"], r.json()["decline_code"]) == ("failed", decline)
        assert (events[-1]["type"], events[-1]["decline_code"]) == ("payment.failed", decline)
