"""The staff console in a real browser (headless Debian chromium, Playwright) against the real
staff API, PostgreSQL and gateway: a school officer signs in, enrols a pupil, issues the pupil a
temporary card by typing its UID, and the very next tap of that card at a turnstile of the school
is accepted by the gateway; then who is inside, the search, a representative's application, a CSV
import (its row report), the fire-alarm muster list (and its print layout), sign-out; and a cashier
who is offered only what a cashier may do and is shown the API's 403 elsewhere. Every page passes
axe-core's serious and critical checks. Screenshots: test-artifacts/screenshots/staff-console-*.png.
"""

from __future__ import annotations

import re
import time

import asyncpg
import httpx
import pytest

from protocol import DeviceKind, Direction, Outcome
from simulators.device import Device, DeviceConfig
from storage.demo_dataset import demo_device_key, turnstile_ids
from tests.browser import axe_violations, browser_page, format_violations, run_async, screenshot  # noqa: F401
from tests.support import GatewayThread
from test_staff_api import make_api

pytestmark = pytest.mark.processes  # uvicorn, a gateway and chromium

PAGE_WAIT_MS = 10_000  # a page, or the page's answer to an action, shows within this
GATEWAY_RELOAD_S = 5.0  # the gateway loads a changed card from its NOTIFY well within this
ORIGINAL_UID, TEMPORARY_UID = "04C0FFEE000001", "06C0FFEE0000FF"


@pytest.fixture
def console(demo_dsn):
    """The staff API on the wall clock (the gateway judges expiry by real time), before the browser."""
    api, server = make_api(demo_dsn, command_wait_ms=10_000)
    try:
        yield api
    finally:
        api.http.close()
        server.stop()


def accessible(page, name: str) -> None:
    screenshot(page, name)
    violations = axe_violations(page)
    assert not violations, f"{name}: {format_violations(violations)}"


async def _query(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def query(dsn: str, sql: str, *args):
    return run_async(_query(dsn, sql, *args))  # asyncio.run cannot run while the browser is open


def wait_for_card(gateway: GatewayThread, uid: bytes) -> None:
    deadline = time.monotonic() + GATEWAY_RELOAD_S
    while uid not in gateway.gateway.core.state.identifiers:
        assert time.monotonic() < deadline, f"the gateway did not load card {uid.hex()}"
        time.sleep(0.02)


def sign_in(page, url: str, login: str, token: str) -> None:
    page.get_by_label("Логин").fill(login)
    page.get_by_label("Ключ доступа").fill(token)
    page.get_by_role("button", name="Войти").click()
    page.wait_for_url(url + "/console", timeout=PAGE_WAIT_MS)


def nav_link(page, name: str):
    return page.get_by_role("navigation", name="Разделы консоли").get_by_role("link", name=name, exact=True)


def alert_text(page, selector: str) -> str:
    # a locator wait, not wait_for_function: a string predicate is evaluated with eval() in the page,
    # which the console's Content-Security-Policy forbids (it failed whenever the text was not there
    # at the first look)
    page.locator(selector).filter(has_text=re.compile(r"\S")).wait_for(timeout=PAGE_WAIT_MS)
    return page.inner_text(selector)


def russian_only(page, selector: str, russian: str, english: str = "") -> None:
    """A refusal shown in Russian: ``russian`` is read, no Latin word outside the folded-away
    "Подробности для службы поддержки", which holds the API's English detail (``english``)."""
    box = page.locator(selector)
    shown = " ".join(box.inner_text().split())
    assert russian in shown, shown
    details = box.locator("details")
    assert details.count() == 1 and details.get_attribute("open") is None, shown
    assert details.locator("summary").inner_text() == "Подробности для службы поддержки"
    outside = box.evaluate("""b => { const c = b.cloneNode(true); c.querySelectorAll('details').forEach(d => d.remove());
                                     return c.textContent; }""")
    assert not re.search(r"(?!UID\b)\b[A-Za-z]{3,}", outside), outside
    if english:
        assert english in details.locator("[lang=en]").text_content(), details.inner_html()


def test_an_officer_enrols_a_pupil_and_the_temporary_card_issued_opens_the_turnstile(console, browser_page, tmp_path):
    api, page = console, browser_page
    url = api.url
    with GatewayThread(api.dsn) as gateway:
        # sign-in: a wrong token first, the same Russian refusal whatever was wrong
        page.goto(url + "/console")
        page.wait_for_url(url + "/console/signin?next=/console", timeout=PAGE_WAIT_MS)
        accessible(page, "staff-console-signin")
        page.get_by_label("Логин").fill("off1")
        page.get_by_label("Ключ доступа").fill("token-cash1")
        page.get_by_role("button", name="Войти").click()
        page.wait_for_selector("[role=alert]", timeout=PAGE_WAIT_MS)
        assert page.inner_text("[role=alert]") == "Неверный логин или ключ доступа."
        assert page.get_attribute("#token", "aria-invalid") == "true"
        accessible(page, "staff-console-signin-error")
        sign_in(page, url, "off1", api.tokens["off1"])
        assert "off1 — ответственный сотрудник школы" in page.inner_text("header")
        accessible(page, "staff-console-start")

        # enrol: the API's 422 shown at the field, then the pupil enrolled with a card
        nav_link(page, "Зачислить ученика").click()
        page.wait_for_url(url + "/console/pupils/new", timeout=PAGE_WAIT_MS)
        accessible(page, "staff-console-enrol")
        page.get_by_label("Фамилия, имя, отчество").fill("Кузнецова Анна Сергеевна")
        page.get_by_label("Параллель").select_option("2")
        page.get_by_label("Класс", exact=True).fill("2Б")
        page.get_by_label("Номер карты (UID)").fill("04-C0")
        page.get_by_role("button", name="Зачислить").click()
        error = alert_text(page, "#enrol-error")
        assert "Проверьте введённые данные" in error and "«Номер карты (UID)»" in error, error
        russian_only(page, "#enrol-error", "«Номер карты (UID)»: Значение записано в неверном виде.")
        assert page.get_attribute("#card_uid", "aria-invalid") == "true"
        assert page.evaluate("document.activeElement.id") == "card_uid"
        accessible(page, "staff-console-enrol-error")
        page.get_by_label("Номер карты (UID)").fill(ORIGINAL_UID)
        page.get_by_role("button", name="Зачислить").click()
        page.wait_for_url(re.compile(r".*/console/pupils/\d+\?done=enrolled$"), timeout=PAGE_WAIT_MS)
        account_id = int(re.search(r"/pupils/(\d+)", page.url).group(1))
        assert page.inner_text("[role=status]") == "Ученик зачислен."
        assert "Кузнецова Анна Сергеевна" in page.inner_text("h1")
        assert "сервисная карта" in page.inner_text("#cards table")
        accessible(page, "staff-console-pupil")

        # a card already bound to another pupil: the API's 409, in Russian (its code and parameters)
        page.locator("#bind-uid").fill("04000000000003")
        page.locator("form[data-action=bind]").get_by_role("button", name="Привязать").click()
        alert_text(page, "#bind-error")
        russian_only(page, "#bind-error", "Действие невозможно в текущем состоянии. (409) Карта 04000000000003 уже "
                                          "привязана к лицевому счёту № 3 (карта действует).",
                     "uid: card 04000000000003 is already bound to account 3 (active)")
        accessible(page, "staff-console-pupil-bind-refused")

        # a temporary card, its UID typed: the original is suspended, the temporary card bound
        page.get_by_label("Взамен карты").select_option(ORIGINAL_UID.lower())
        page.get_by_label("Причина").select_option("forgotten")
        page.get_by_label("Номер временной карты (UID)").fill(TEMPORARY_UID)
        page.get_by_role("button", name="Выдать временную карту").click()
        page.wait_for_url(re.compile(rf".*/console/pupils/{account_id}\?done=temporary_issued$"), timeout=PAGE_WAIT_MS)
        cards = page.inner_text("#cards table")
        assert "временная карта" in cards and "приостановлена" in cards, cards
        assert page.get_by_role("button", name=f"Принять временную карту {TEMPORARY_UID.lower()}").is_visible()
        accessible(page, "staff-console-pupil-temporary-card")

        # the next tap of the temporary card at a turnstile of the school: accepted by the gateway
        wait_for_card(gateway, bytes.fromhex(TEMPORARY_UID))
        turnstile = turnstile_ids()[0]

        async def walk_in() -> tuple:
            device = Device(turnstile, DeviceKind.TURNSTILE, demo_device_key(turnstile),
                            DeviceConfig(host="127.0.0.1", port=gateway.port), tmp_path, seed=1)
            await device.start()
            try:
                granted = await device.card_presented(bytes.fromhex(TEMPORARY_UID), int(Direction.IN))
                through = None
                if granted.outcome == Outcome.ACCEPT:
                    through = await device.passage(bytes.fromhex(TEMPORARY_UID), int(Direction.IN), granted.txn)
                forgotten = await device.card_presented(bytes.fromhex(ORIGINAL_UID), int(Direction.IN))
                assert await device.wait_settled(10), "the taps durable"
                return granted, through, forgotten
            finally:
                await device.close()

        granted, through, forgotten = run_async(walk_in())
        assert granted.outcome == Outcome.ACCEPT, granted
        assert through is not None and through.outcome == Outcome.ACCEPT, through
        assert forgotten.outcome != Outcome.ACCEPT, forgotten  # the card left at home is suspended
        rows = query(api.dsn, "SELECT account_id, device_id FROM journal WHERE identifier = $1",
                     bytes.fromhex(TEMPORARY_UID))
        assert {(r["account_id"], r["device_id"]) for r in rows} == {(account_id, turnstile)}

        # who is inside: the pupil who just came in
        nav_link(page, "Кто в школе").click()
        page.wait_for_url(url + "/console/schools/1/presence", timeout=PAGE_WAIT_MS)
        assert "Кузнецова Анна Сергеевна" in page.inner_text("table")
        accessible(page, "staff-console-presence")

        # the search, by a part of the name
        nav_link(page, "Найти ученика").click()
        page.get_by_label("Фамилия, имя").fill("кузнецова ан")
        page.get_by_role("button", name="Найти").click()
        page.wait_for_selector("text=Найдено: 1", timeout=PAGE_WAIT_MS)
        accessible(page, "staff-console-find")
        page.get_by_role("link", name="Кузнецова Анна Сергеевна").click()
        page.wait_for_url(url + f"/console/pupils/{account_id}", timeout=PAGE_WAIT_MS)

        # a representative's application: without consent the API's refusal, then registered
        page.get_by_role("link", name="Зарегистрировать заявление представителя").click()
        page.wait_for_url(url + f"/console/applications/new?pupil={account_id}", timeout=PAGE_WAIT_MS)
        accessible(page, "staff-console-application")
        page.get_by_label("ФИО представителя").fill("Кузнецова Мария Ивановна")
        page.get_by_label("Кем приходится").select_option("grandmother")
        page.get_by_label("Мобильный телефон").fill("+7 916 123-45-67")
        page.get_by_role("textbox", name="Электронная почта").fill("maria@example.ru")
        page.get_by_role("checkbox", name="SMS").check()
        page.get_by_role("checkbox", name="электронная почта").check()
        page.get_by_label("вход в школу").check()
        page.get_by_label("выход из школы").check()
        page.get_by_role("button", name="Зарегистрировать заявление").click()
        error = alert_text(page, "#application-error")
        russian_only(page, "#application-error", "«Согласие»: Без согласия на обработку персональных данных "
                                                 "заявление не регистрируется.", "consent: the representative's consent")
        accessible(page, "staff-console-application-error")
        page.get_by_label("Представитель дал согласие на обработку персональных данных").check()
        page.get_by_role("button", name="Зарегистрировать заявление").click()
        page.wait_for_url(re.compile(rf".*/console/pupils/{account_id}\?done=application$"), timeout=PAGE_WAIT_MS)
        reps = page.inner_text("section[aria-labelledby=representatives-heading] table")
        assert "Кузнецова Мария Ивановна" in reps and "бабушка" in reps and "+79161234567" in reps, reps

        # a CSV import: the API's row report as a table, then the class enrolled
        nav_link(page, "Импорт из CSV").click()
        page.wait_for_url(url + "/console/pupils/import", timeout=PAGE_WAIT_MS)
        accessible(page, "staff-console-import")
        header = "full_name,grade,class_name,card_uid,card_kind\n"
        bad = header + "Смирнов Алексей,3,3А,04A1A2A3A4A5A6,service_card\nПопова Мария,13,3А,,\n"
        page.get_by_label("Файл CSV").set_input_files(files=[{"name": "3a.csv", "mimeType": "text/csv",
                                                              "buffer": bad.encode()}])
        page.get_by_role("button", name="Загрузить и зачислить").click()
        page.wait_for_selector("#import-report table", timeout=PAGE_WAIT_MS)
        report = page.inner_text("#import-report table")
        assert "3\tgrade" in report, report
        assert "Ничего не импортировано" in page.inner_text("#import-error")
        accessible(page, "staff-console-import-errors")
        good = header + "Смирнов Алексей,3,3А,04A1A2A3A4A5A6,service_card\nПопова Мария,3,3А,,\n"
        page.get_by_label("Файл CSV").set_input_files(files=[{"name": "3a.csv", "mimeType": "text/csv",
                                                              "buffer": good.encode()}])
        page.get_by_role("button", name="Загрузить и зачислить").click()
        page.wait_for_selector("text=Зачислено учеников: 2", timeout=PAGE_WAIT_MS)
        assert page.locator("#import-report a").count() == 2
        accessible(page, "staff-console-import-done")

        # the muster list: nothing before an alarm; after the office raises one, the pupil inside
        nav_link(page, "Эвакуация").click()
        page.wait_for_url(url + "/console/schools/1/fire-alarm", timeout=PAGE_WAIT_MS)
        assert "ещё не было пожарной тревоги" in page.inner_text("main")
        raised = httpx.post(url + "/schools/1/fire-alarm", headers={"Authorization": f"Bearer {api.tokens['off1']}"},
                            timeout=30)
        assert raised.status_code == 200 and raised.json()["status"] == "applied", raised.text
        page.reload()
        muster = page.inner_text("main")
        assert "2Б — 1 чел." in muster and "Кузнецова Анна Сергеевна" in muster and "идёт" in muster, muster
        accessible(page, "staff-console-fire")
        page.emulate_media(media="print")
        assert page.evaluate("getComputedStyle(document.querySelector('header.top')).display") == "none"
        assert page.evaluate("getComputedStyle(document.querySelector('nav.sections')).display") == "none"
        screenshot(page, "staff-console-fire-print")
        page.emulate_media(media="screen")

        # sign-out: the session ends, the console asks to sign in again
        page.get_by_role("button", name="Выйти").click()
        page.wait_for_url(url + "/console/signin", timeout=PAGE_WAIT_MS)
        page.goto(url + f"/console/pupils/{account_id}")
        page.wait_for_url(url + f"/console/signin?next=/console/pupils/{account_id}", timeout=PAGE_WAIT_MS)
        revoked = query(api.dsn, "SELECT revoked_at_ms FROM staff_sessions WHERE login = 'off1'")
        assert [r["revoked_at_ms"] is not None for r in revoked] == [True]


def test_a_cashier_is_offered_what_a_cashier_may_do_and_shown_the_apis_refusals(console, browser_page):
    api, page = console, browser_page
    page.goto(api.url + "/console/signin")
    sign_in(page, api.url, "cash1", api.tokens["cash1"])
    links = page.get_by_role("navigation", name="Разделы консоли").get_by_role("link").all_inner_texts()
    assert links == ["Начало", "Найти ученика"]
    page.goto(api.url + "/console/pupils/3")
    # the one action a cashier has on a pupil's page: cash at the desk (test_staff_api_console_cash.py)
    assert "Баланс" in page.inner_text("main")
    assert page.locator("[data-action]").count() == 1 and page.locator("form[data-action=cash]").count() == 1
    accessible(page, "staff-console-cashier-pupil")
    # a pupil of another school: the API's 404, as for no pupil (nothing told about it); a page of
    # the office: the API's 403, in the page
    page.goto(api.url + "/console/pupils/2000")
    russian_only(page, "[role=alert]", "Не найдено. (404) Ученика с лицевым счётом № 2000 нет.",
                 "no pupil with account 2000")
    assert "school 2" not in page.text_content("[role=alert]")
    page.goto(api.url + "/console/schools/1/presence")
    russian_only(page, "[role=alert]", "Роль «кассир столовой» не может смотреть, кто находится в школе. "
                                       "Это могут роли: оператор города, ответственный сотрудник школы, аудитор.",
                 "role 'cashier' may not see who is inside a school")
    accessible(page, "staff-console-cashier-403")
    # an action the page did not offer, tried from the browser all the same: the API refuses it
    answer = page.evaluate("""async () => {
        const token = document.cookie.split('; ').find(c => c.startsWith('ecard_staff_csrf=')).split('=')[1];
        const r = await fetch('/cards/04000000000003/block', {method: 'POST', headers: {'X-CSRF-Token': token}});
        return [r.status, (await r.json()).detail];
    }""")
    assert answer[0] == 403 and "cashier" in answer[1], answer
