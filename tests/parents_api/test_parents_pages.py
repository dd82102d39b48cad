"""The parents' personal account pages over real HTTP against real PostgreSQL: sign-in by a
one-time code (SMS as files), the server-side session in an HttpOnly cookie, CSRF on every form,
the family's children and nobody else's, sign-out, and the TV view's live stream. The same pages
in a real browser: tests/parents_api/test_parents_browser.py."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from ledger.codes import JournalKind
from parents_api.pages import SESSION_COOKIE
from parents_support import T0, Line, World, journal, sql, world  # noqa: F401  (world: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server and an SMTP server per test

PHONE7 = "+79000000007"
CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def sign_in(world: World, phone: str = PHONE7) -> httpx.Client:
    browser = httpx.Client(base_url=world.url, timeout=30, follow_redirects=False)
    home = browser.get("/")
    assert home.status_code == 200 and 'lang="ru"' in home.text
    before = len(world.sms_files(phone))
    sent = browser.post("/signin", data={"contact": "8 (900) 000-00-07" if phone == PHONE7 else phone,
                                         "_csrf_token": csrf(home)})
    assert sent.status_code == 200 and "Код входа" in sent.text, sent.text
    code = world.sms_code(phone, before + 1)
    signed = browser.post("/signin/code", data={"contact": phone, "code": code, "_csrf_token": csrf(sent)})
    assert signed.status_code == 303 and signed.headers["location"] == "/account", signed.text
    cookie = signed.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    return browser


def test_a_parent_signs_in_with_the_code_and_sees_both_children_today(world: World):
    journal(world.dsn, [
        {"device": 1_000_001, "txn": 1, "kind": JournalKind.PASSAGE, "account": 7, "direction": 1, "at": T0 - 2 * 3_600_000},
        {"device": 2_000_001, "txn": 1, "kind": JournalKind.PURCHASE, "account": 7, "debit": 7, "credit": 2,
         "amount": 16_500, "balance": 33_500, "at": T0 - 3_600_000, "items": [Line(2, 1, 16_500)]},
    ])
    browser = sign_in(world)
    account = browser.get("/account")
    assert account.status_code == 200
    page = account.text
    assert page.count('class="child"') == 2  # pupils 7 and 8: one family
    assert "08:00 — вход в школу" in page
    assert "Обед комплексный" in page and "165,00 ₽" in page and "335,00 ₽" in page
    assert "Иванов Пётр" not in page  # another family's child
    # The stored session is the token's hash, never the token.
    token = browser.cookies[SESSION_COOKIE]
    assert token.encode() not in b"".join(bytes(r["token_sha256"]) for r in sql(world.dsn, "SELECT token_sha256 FROM parent_sessions"))


def test_forms_without_the_csrf_token_are_refused(world: World):
    browser = httpx.Client(base_url=world.url, timeout=30)
    browser.get("/")
    refused = browser.post("/signin", data={"contact": PHONE7})
    assert refused.status_code == 403
    assert not world.sms_files(PHONE7), "nothing was sent"
    signed = sign_in(world)
    assert signed.post("/signout", data={}).status_code == 403  # a cross-site sign-out is refused too
    assert signed.get("/account").status_code == 200


def test_wrong_code_and_bad_contact_are_told_in_russian(world: World):
    browser = httpx.Client(base_url=world.url, timeout=30)
    home = browser.get("/")
    bad = browser.post("/signin", data={"contact": "12345", "_csrf_token": csrf(home)})
    assert bad.status_code == 422 and "номер мобильного телефона" in bad.text
    sent = browser.post("/signin", data={"contact": PHONE7, "_csrf_token": csrf(home)})
    wrong = browser.post("/signin/code", data={"contact": PHONE7, "code": "000000", "_csrf_token": csrf(sent)})
    assert wrong.status_code == 401 and "Код неверный" in wrong.text
    assert browser.get("/account", follow_redirects=False).status_code == 303  # still signed out


def test_sign_out_ends_the_session_for_good(world: World):
    browser = sign_in(world)
    token = browser.cookies[SESSION_COOKIE]
    account = browser.get("/account")
    out = browser.post("/signout", data={"_csrf_token": csrf(account)})
    assert out.status_code == 303 and out.headers["location"] == "/"
    replay = httpx.Client(base_url=world.url, timeout=30, cookies={SESSION_COOKIE: token})
    assert replay.get("/account", follow_redirects=False).status_code == 303  # the stolen cookie is dead
    assert world.get(token, "/me").status_code == 401  # and so is the same token on the API


def test_the_tv_stream_sends_the_family_again_when_a_tap_arrives(world: World):
    browser = sign_in(world)
    tv = browser.get("/tv")
    assert tv.status_code == 200 and "EventSource" in tv.text
    assert httpx.get(f"{world.url}/tv/stream", timeout=10).status_code == 401  # no session, no stream
    with browser.stream("GET", "/tv/stream", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = _next_event(lines)
        assert "Проходов сегодня не было." in first
        journal(world.dsn, [{"device": 1_000_001, "txn": 5, "kind": JournalKind.PASSAGE, "account": 8,
                             "direction": 1, "at": T0 - 60_000}])
        second = _next_event(lines)
        assert "09:59 — вход в школу" in second


def _next_event(lines) -> str:
    for line in lines:
        if line.startswith("data:"):
            return json.loads(line[len("data:"):].strip())["html"]
    raise AssertionError("the stream ended")


def test_limits_preview_shows_what_the_till_will_refuse_and_save_stores_it(world: World):
    browser = sign_in(world)
    page = browser.get("/account/7/limits")
    assert page.status_code == 200 and "Булочка с маком" in page.text and "откажет:" not in page.text
    token = csrf(page)
    # Preview: ban the bun, block milk: nothing stored yet.
    shown = browser.post("/account/7/limits", data={
        "banned_products": "3", "blocked_allergens": "milk", "daily_limit": "150", "action": "preview",
        "_csrf_token": token})
    assert shown.status_code == 200, shown.text
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r'<label for="ban-\d+">([^<]+)</label>.*?<td>(продаст|откажет: [^<]+)</td>', shown.text, re.S)}
    assert rows["Булочка с маком"] == "откажет: запрещено вами"
    assert rows["Йогурт питьевой"] == "откажет: содержит аллерген"  # milk
    assert rows["Обед комплексный"] == "откажет: дороже дневного лимита"  # 165 > 150
    assert rows["Чай с лимоном"] == "продаст"
    assert sql(world.dsn, "SELECT count(*) AS n FROM account_controls")[0]["n"] == 0
    # Save.
    saved = browser.post("/account/7/limits", data={
        "banned_products": "3", "blocked_allergens": "milk", "daily_limit": "150", "action": "save",
        "_csrf_token": token}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/account/7/limits?saved=true"
    row = sql(world.dsn, "SELECT banned_products, blocked_allergens FROM account_controls WHERE account_id = 7")[0]
    assert (list(row["banned_products"]), list(row["blocked_allergens"])) == ([3], ["milk"])
    assert sql(world.dsn, "SELECT daily_limit_kopecks FROM accounts WHERE id = 7")[0]["daily_limit_kopecks"] == 15_000
    audit = sql(world.dsn, "SELECT actor, action FROM audit_log WHERE entity = 'pupil:7'")
    assert [(a["actor"], a["action"]) for a in audit] == [("parent:phone:+79000000007", "controls.set")]
    again = browser.get("/account/7/limits?saved=true")
    assert "Сохранено" in again.text and 'value="3" checked' in again.text


def test_limits_refuse_bad_input_another_family_and_forged_forms(world: World):
    browser = sign_in(world)
    page = browser.get("/account/7/limits")
    bad = browser.post("/account/7/limits", data={"daily_limit": "сто", "action": "save", "_csrf_token": csrf(page)})
    assert bad.status_code == 422 and "Введите сумму в рублях" in bad.text
    assert browser.get("/account/2000/limits").status_code == 404  # another family's child: same as none
    assert browser.get("/account/999999999999999999999/limits").status_code in (400, 404)
    forged = browser.post("/account/7/limits", data={"banned_products": "3", "action": "save"})
    assert forged.status_code == 403
    assert sql(world.dsn, "SELECT count(*) AS n FROM account_controls")[0]["n"] == 0
    assert httpx.get(f"{world.url}/account/7/limits", follow_redirects=False).status_code == 303  # signed out


def test_calendar_day_and_spending_charts(world: World):
    day = 86_400_000
    journal(world.dsn, [
        {"device": 2_000_001, "txn": 11, "kind": JournalKind.PURCHASE, "account": 7, "debit": 7, "credit": 2,
         "amount": 16_500, "balance": 33_500, "at": T0 - 7 * day, "items": [Line(2, 1, 16_500)]},  # 25 August
        {"device": 2_000_001, "txn": 12, "kind": JournalKind.PURCHASE, "account": 7, "debit": 7, "credit": 2,
         "amount": 7_000, "balance": 26_500, "at": T0 - 3_600_000, "items": [Line(3, 2, 3_500)]},  # 1 September
        {"device": 1_000_001, "txn": 13, "kind": JournalKind.PASSAGE, "account": 7, "direction": 1,
         "at": T0 - 2 * 3_600_000},
    ])
    browser = sign_in(world)
    september = browser.get("/account/7/history")
    assert september.status_code == 200, september.text
    page = september.text
    assert "Сентябрь 2026" in page and 'aria-current="date"' in page  # today, chosen
    assert "08:00 — вход в школу" in page and "Булочка с маком × 2" in page
    assert page.count("есть события") == 1  # only 1 September this month
    assert "выпечка" in page and "70,00 ₽" in page  # the month by category
    assert "165,00 ₽" in page  # the week of 25 August in the weekly chart
    august = browser.get("/account/7/history", params={"month": "2026-08", "day": "2026-08-25"})
    assert august.status_code == 200 and "Обед комплексный" in august.text and "обеды" in august.text
    assert "Следующий месяц" in august.text
    for bad in ({"month": "2026-10"}, {"month": "2026-13"}, {"month": "сентябрь"},
                {"month": "2026-09", "day": "2026-08-31"}, {"month": "2026-09", "day": "2026-09-02"}):
        assert browser.get("/account/7/history", params=bad).status_code == 422, bad
    assert browser.get("/account/2000/history").status_code == 404


def test_notice_settings_per_channel_and_kind_and_the_familys_representatives(world: World):
    browser = sign_in(world)
    page = browser.get("/account/notices")
    assert page.status_code == 200 and "Представители семьи" in page.text
    assert "Иванова Анна" not in page.text  # another family's representative
    rid = sql(world.dsn, "SELECT id FROM representatives WHERE phone = '+79000000007'")[0]["id"]
    saved = browser.post("/account/notices", data={
        f"channels_{rid}": ["sms", "portal"], f"kinds_{rid}": ["entry", "low_balance"], "_csrf_token": csrf(page),
        # a forged field for another representative is ignored: the rows come from the session
        "channels_5000": ["sms"], "kinds_5000": ["purchase"]}, follow_redirects=False)
    assert saved.status_code == 303, saved.text
    row = sql(world.dsn, "SELECT channels, kinds FROM representatives WHERE id = $1", rid)[0]
    assert (list(row["channels"]), list(row["kinds"])) == (["portal", "sms"], ["entry", "low_balance"])
    other = sql(world.dsn, "SELECT kinds FROM representatives WHERE id = 5000")[0]
    assert list(other["kinds"]) == ["entry"]
    audit = sql(world.dsn, "SELECT actor FROM audit_log WHERE entity = $1", f"representative:{rid}")
    assert [a["actor"] for a in audit] == ["parent:phone:+79000000007"]
    unknown = browser.post("/account/notices", data={f"channels_{rid}": ["pigeon"], f"kinds_{rid}": ["entry"],
                                                     "_csrf_token": csrf(page)})
    assert unknown.status_code == 422 and "хотя бы один способ" in unknown.text  # not a box: dropped, none left
    nothing = browser.post("/account/notices", data={f"channels_{rid}": ["sms"], "_csrf_token": csrf(page)})
    assert nothing.status_code == 422 and "хотя бы одно событие" in nothing.text
    row = sql(world.dsn, "SELECT channels, kinds FROM representatives WHERE id = $1", rid)[0]
    assert (list(row["channels"]), list(row["kinds"])) == (["portal", "sms"], ["entry", "low_balance"])  # unchanged


def test_menu_and_preorders_until_the_lock_day(world: World):
    browser = sign_in(world)  # today is Tuesday 1 September 2026 at the school; lock: 3 days
    page = browser.get("/account/7/menu")
    assert page.status_code == 200, page.text
    assert 'id="d2026-09-02"' in page.text and "Заказ закрыт" in page.text
    assert 'id="d2026-09-05"' not in page.text  # Saturday
    assert "Каша молочная" in page.text and "520 ккал" in page.text  # composition and energy value
    token = csrf(page)
    ok = browser.post("/account/7/menu", data={"day": "2026-09-04", "period": "lunch", "q_2": "1", "q_4": "2",
                                               "q_5": "", "_csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303, ok.text
    rows = sql(world.dsn, "SELECT product_code, quantity, updated_by FROM preorders WHERE account_id = 7 ORDER BY product_code")
    assert [(r["product_code"], r["quantity"], r["updated_by"]) for r in rows] == [
        (2, 1, "parent:phone:+79000000007"), (4, 2, "parent:phone:+79000000007")]
    shown = browser.get("/account/7/menu")
    assert "Итого по заказу: 255,00 ₽" in shown.text  # 165 + 2 × 45
    locked = browser.post("/account/7/menu", data={"day": "2026-09-03", "period": "lunch", "q_2": "1",
                                                   "_csrf_token": token})
    assert locked.status_code == 409 and "уже закрыт" in locked.text
    unknown = browser.post("/account/7/menu", data={"day": "2026-09-04", "period": "lunch", "q_999": "1",
                                                    "_csrf_token": token})
    assert unknown.status_code == 422 and "нет в меню" in unknown.text
    too_many = browser.post("/account/7/menu", data={"day": "2026-09-04", "period": "lunch", "q_2": "21",
                                                     "_csrf_token": token})
    assert too_many.status_code == 422
    cancel = browser.post("/account/7/menu", data={"day": "2026-09-04", "period": "lunch", "q_2": "0", "q_4": "",
                                                   "_csrf_token": token}, follow_redirects=False)
    assert cancel.status_code == 303
    assert sql(world.dsn, "SELECT count(*) AS n FROM preorders")[0]["n"] == 0
    assert browser.get("/account/2000/menu").status_code == 404
    assert browser.post("/account/7/menu", data={"day": "2026-09-04", "period": "lunch", "q_2": "1"}).status_code == 403


def test_top_up_without_a_payments_service_says_so(world: World):
    browser = sign_in(world)
    page = browser.get("/account/7/topup")
    assert page.status_code == 200 and "Оплата картой сейчас недоступна" in page.text
    assert browser.get("/account/2000/topup").status_code == 404
    bad = browser.post("/account/7/topup", data={"amount": "0,5", "_csrf_token": csrf(page)})
    assert bad.status_code == 422 and "Введите сумму от 1 до 15 000 ₽" in bad.text
    down = browser.post("/account/7/topup", data={"amount": "300", "_csrf_token": csrf(page)})
    assert down.status_code == 503 and "недоступна" in down.text
