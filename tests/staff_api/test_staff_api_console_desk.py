"""The console's pages people use, in chromium against the real staff API and PostgreSQL:

- the pupil's page binds a card, and issues a temporary card, with the school's desk reader: the
  officer picks the reader, the page starts the pending operation, waits (a countdown, a cancel
  button) and polls it; the card is "laid on the reader" by posting its UID exactly as the bridge
  does (deskreader.staff.StaffClient, with the desk PC's own officer token), and the page shows
  the card bound. Then the deny paths: cancelled at the page (the card presented afterwards is used
  for nothing), a card already bound to another pupil, the wait timed out, a newer operation on
  the reader; and who is not offered the reader at all.
- the find page searches with the list endpoint's name filter (case and ё/е ignored, a page at a
  time, only the school's own pupils, the API's 422 at the field).

Every state is checked with axe-core; screenshots: test-artifacts/screenshots/staff-console-desk-*.png
and staff-console-find-*.png.
"""

from __future__ import annotations

import re
import secrets
import threading
from types import SimpleNamespace

import asyncpg
import pytest
from playwright.sync_api import expect

from deskreader.config import DeskReaderConfig
from deskreader.staff import StaffClient
from staff_api.auth import token_sha256
from staff_api.db import CARD_KINDS, CARD_STATUS_NAMES
from staff_api.pupils import NAME_QUERY_CHARS_MAX
from storage.demo_dataset import demo_card_uid
from tests.browser import browser_page, run_async  # noqa: F401  (browser_page: the fixture)
from test_staff_api import make_api, sql
from test_staff_api_console import PAGE_WAIT_MS, accessible, nav_link, sign_in

pytestmark = pytest.mark.processes  # uvicorn and chromium

DESK, OTHER_DESK = "office-1", "window-1"
PUPIL = 5  # a demo pupil of school 1, with the card demo_card_uid(5)
NEW_UID, UNUSED_UID, TEMPORARY_UID = "04d35c0000a1b2", "04d35c0000ffee", "06d35c00000077"
WAITING = f"Приложите карту к считывателю «{DESK}»."


@pytest.fixture
def office(demo_dsn, tmp_path):
    """The staff API (wall clock, which a test may hold), two desk readers of school 1, and the
    office-1 bridge's staff client: the desk PC's own officer login, its token in a file."""
    api, server = make_api(demo_dsn)
    token = f"token-bridge1-{secrets.token_hex(8)}"
    sql(demo_dsn, "INSERT INTO staff (login, role, school_id, token_sha256) VALUES ('bridge1', 'officer', 1, $1)",
        token_sha256(token))
    token_file = tmp_path / "desk-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = DeskReaderConfig(reader="ACS ACR122U", desk=DESK, token_file=str(token_file), staff_url=api.url,
                              uid_post_attempts_max=1)
    bridge = StaffClient(config, config.token(), threading.Event())
    try:
        for name in (DESK, OTHER_DESK):
            r = api.as_("op", "PUT", f"/desk-readers/{name}", json={"school_id": 1})
            assert r.status_code == 200, r.text
        yield SimpleNamespace(api=api, bridge=bridge)
    finally:
        bridge.close()
        api.http.close()
        server.stop()


async def _fetch(dsn: str, sql_text: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql_text, *args)
    finally:
        await conn.close()


def query(dsn: str, sql_text: str, *args):
    return run_async(_fetch(dsn, sql_text, *args))  # asyncio.run cannot run while the browser is open


def card(dsn: str, uid: str):
    rows = query(dsn, "SELECT account_id, kind, status, replaces FROM identifiers WHERE identifier = $1",
                 bytes.fromhex(uid))
    return rows[0] if rows else None


def current_operation(api) -> dict:
    r = api.as_("off1", "GET", f"/desk-readers/{DESK}/operation")
    assert r.status_code == 200, r.text
    return r.json()


def start_waiting(form, start_label: str) -> None:
    """Press the form's start button; the page waits for the card, counting down."""
    form.get_by_role("button", name=start_label).click()
    expect(form.locator("[data-desk-state]")).to_have_text(WAITING, timeout=PAGE_WAIT_MS)
    expect(form.get_by_role("timer")).to_have_text(re.compile(r"^[12]:[0-5]\d$"))
    expect(form.get_by_role("button", name="Отменить")).to_be_focused()


def test_an_officer_binds_and_issues_cards_with_the_desk_reader(office, browser_page):
    api, page = office.api, browser_page
    page.goto(api.url + "/console/signin")
    sign_in(page, api.url, "off1", api.tokens["off1"])
    page.goto(api.url + f"/console/pupils/{PUPIL}")
    bind = page.locator("form[data-action=bind]")
    reader = bind.get_by_label("Считыватель")
    assert reader.locator("option").all_inner_texts() == [DESK, OTHER_DESK]  # GET /desk-readers?school_id=1
    expect(bind.get_by_role("timer")).to_be_hidden()
    accessible(page, "staff-console-desk-ready")

    # bind a bracelet: the page starts the pending operation and waits for the card
    bind.get_by_label("Вид карты").select_option("bracelet")
    reader.select_option(DESK)
    start_waiting(bind, "Приложить карту к считывателю")
    op = current_operation(api)
    assert (op["status"], op["action"], op["pupil_id"], op["kind"], op["started_by"]) == (
        "pending", "bind_card", PUPIL, "bracelet", "off1")
    accessible(page, "staff-console-desk-waiting")
    # the card laid on the reader: the bridge posts its UID; the page shows the card bound
    posted = office.bridge.post_uid(NEW_UID)
    assert posted.outcome == "done", posted
    page.wait_for_url(re.compile(rf".*/console/pupils/{PUPIL}\?done=card_bound$"), timeout=PAGE_WAIT_MS)
    assert page.inner_text("#done") == "Карта привязана."
    assert "браслет" in page.inner_text(f"#cards tr[data-uid='{NEW_UID}']")
    bound = card(api.dsn, NEW_UID)
    assert (bound["account_id"], bound["kind"], CARD_STATUS_NAMES[bound["status"]]) == (
        PUPIL, CARD_KINDS["bracelet"], "active")
    accessible(page, "staff-console-desk-bound")

    # cancelled at the page: the card presented afterwards is used for nothing
    bind = page.locator("form[data-action=bind]")
    assert bind.get_by_label("Считыватель").input_value() == DESK  # remembered
    start_waiting(bind, "Приложить карту к считывателю")
    assert page.locator("#done").count() == 0 and "done=" not in page.url  # the last action's line is gone
    waiting_id = current_operation(api)["id"]
    bind.get_by_role("button", name="Отменить").click()
    expect(bind.locator("[data-desk-state]")).to_have_text("Отменено: карту не ждём.", timeout=PAGE_WAIT_MS)
    expect(bind.get_by_role("timer")).to_be_hidden()
    expect(bind.get_by_role("button", name="Приложить карту к считывателю")).to_be_enabled()
    op = current_operation(api)
    assert (op["id"], op["status"], op["error"]) == (waiting_id, "cancelled", "cancelled by off1")
    posted = office.bridge.post_uid(UNUSED_UID)
    assert (posted.outcome, posted.status_code) == ("refused", 409), posted
    assert card(api.dsn, UNUSED_UID) is None
    accessible(page, "staff-console-desk-cancelled")

    # a card already bound to another pupil: the page says so, in Russian, with the API's detail
    start_waiting(bind, "Приложить карту к считывателю")
    other = demo_card_uid(6).hex()
    posted = office.bridge.post_uid(other)
    assert posted.outcome == "failed", posted
    error = bind.locator("[data-desk-error]")
    expect(error).to_contain_text("Карта не привязана. Эта карта уже привязана к другому ученику (лицевой счёт № 6).",
                                  timeout=PAGE_WAIT_MS)
    assert "account 6" not in error.inner_text()  # the English only folded away, for the support desk
    assert f"card {other} is already bound to account 6" in error.locator("details [lang=en]").text_content()
    assert card(api.dsn, other)["account_id"] == 6
    assert current_operation(api)["status"] == "failed"
    accessible(page, "staff-console-desk-already-bound")

    # the wait timed out: the API's clock is moved to the operation's expiry
    start_waiting(bind, "Приложить карту к считывателю")
    expect(error).to_be_empty()
    api.clock.fixed_ms = current_operation(api)["expires_at_ms"]
    try:
        expect(error).to_have_text("Время ожидания истекло: карту не приложили к считывателю. Начните снова.",
                                   timeout=PAGE_WAIT_MS)
        assert current_operation(api)["status"] == "expired"
    finally:
        api.clock.fixed_ms = None
    accessible(page, "staff-console-desk-expired")

    # a newer operation on the reader (another officer's) ends this page's wait
    start_waiting(bind, "Приложить карту к считывателю")
    newer = api.as_("op", "POST", f"/desk-readers/{DESK}/operation", json={"action": "bind_card", "pupil_id": 7})
    assert newer.status_code == 201, newer.text
    expect(error).to_have_text(f"Ожидание прервано: на считывателе «{DESK}» начали другую операцию.",
                               timeout=PAGE_WAIT_MS)
    assert api.as_("op", "POST", f"/desk-readers/{DESK}/operation/cancel",
                   json={"id": newer.json()["id"]}).status_code == 200

    # a temporary card for the card left at home, presented on the reader
    temporary = page.locator("form[data-action=temporary]")
    original = demo_card_uid(PUPIL).hex()
    temporary.get_by_label("Взамен карты").select_option(original)
    temporary.get_by_label("Причина").select_option("forgotten")
    start_waiting(temporary, "Приложить временную карту к считывателю")
    op = current_operation(api)
    assert (op["action"], op["original_uid"], op["reason"]) == ("issue_temporary", original, "forgotten")
    posted = office.bridge.post_uid(TEMPORARY_UID)
    assert posted.outcome == "done", posted
    page.wait_for_url(re.compile(rf".*/console/pupils/{PUPIL}\?done=temporary_issued$"), timeout=PAGE_WAIT_MS)
    assert page.inner_text("#done") == "Временная карта выдана."
    assert "временная карта" in page.inner_text(f"#cards tr[data-uid='{TEMPORARY_UID}']")
    assert "приостановлена" in page.inner_text(f"#cards tr[data-uid='{original}']")
    issued = card(api.dsn, TEMPORARY_UID)
    assert (issued["account_id"], issued["kind"], bytes(issued["replaces"]).hex()) == (
        PUPIL, CARD_KINDS["temporary"], original)
    accessible(page, "staff-console-desk-temporary")

    # who is not offered the reader: the auditor (reads only); a school without readers says so
    page.get_by_role("button", name="Выйти").click()
    page.wait_for_url(api.url + "/console/signin", timeout=PAGE_WAIT_MS)
    sign_in(page, api.url, "aud", api.tokens["aud"])
    page.goto(api.url + f"/console/pupils/{PUPIL}")
    assert page.locator("fieldset.desk").count() == 0 and page.locator("[data-desk-start]").count() == 0
    page.get_by_role("button", name="Выйти").click()
    page.wait_for_url(api.url + "/console/signin", timeout=PAGE_WAIT_MS)
    sign_in(page, api.url, "op", api.tokens["op"])
    page.goto(api.url + "/console/pupils/2000")  # school 2: no desk reader registered
    assert page.locator("[data-desk-start]").count() == 0
    assert "В школе нет зарегистрированных считывателей карт" in page.inner_text("form[data-action=bind]")
    accessible(page, "staff-console-desk-no-reader")


def test_the_find_page_searches_with_the_apis_name_filter(office, browser_page):
    api, page = office.api, browser_page
    r = api.as_("off1", "POST", "/schools/1/pupils",
                json={"full_name": "Ёлкина Алёна Петровна", "grade": 2, "class_name": "2Б"})
    assert r.status_code == 201, r.text
    yolkina = r.json()["account_id"]
    query(api.dsn, "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES (9001, 1, 2, 'Ёлкина Мария')")
    query(api.dsn, "INSERT INTO pupils (account_id, school_id, full_name, grade) VALUES (9001, 2, 'Ёлкина Мария', 5)")
    page.goto(api.url + "/console/signin")
    sign_in(page, api.url, "off1", api.tokens["off1"])

    def find(q: str, class_name: str = "") -> None:
        nav_link(page, "Найти ученика").click()
        page.wait_for_url(api.url + "/console/pupils", timeout=PAGE_WAIT_MS)
        page.get_by_label("Фамилия, имя").fill(q)
        page.get_by_label("Класс", exact=True).fill(class_name)
        page.get_by_role("button", name="Найти").click()
        page.wait_for_selector("#results-heading", timeout=PAGE_WAIT_MS)

    # е for ё, small for capital letters; school 2's Ёлкина is not the officer's to find
    find("елкина АЛЕНА")
    assert page.inner_text("#results-heading") == "Найдено: 1"
    find("ЁЛКИНА")
    assert page.inner_text("#results-heading") == "Найдено: 1"
    assert page.locator("tbody tr").all_inner_texts() == [
        f"{yolkina}\tЁлкина Алёна Петровна\t2Б\t0,00\u00a0₽\tдействует"]
    accessible(page, "staff-console-find-name")
    find("алёна", class_name="3А")  # both filters: she is in 2Б
    assert page.inner_text("#results-heading") == "Найдено: 0"
    find("алёна", class_name="2Б")
    assert page.inner_text("#results-heading") == "Найдено: 1"

    # the demo's 1,000 "Ученик N": a page of 200 at a time
    find("ученик")
    assert page.inner_text("#results-heading") == "Найдено больше 200, показаны 1–200"
    assert page.locator("tbody tr").count() == 200
    assert page.locator("tbody tr").first.inner_text().startswith("1\tУченик 1\t")
    pages = page.get_by_role("navigation", name="Страницы результатов")
    assert pages.get_by_role("link").all_inner_texts() == ["Следующие"]
    accessible(page, "staff-console-find-pages")
    pages.get_by_role("link", name="Следующие").click()
    page.wait_for_url(re.compile(r".*/console/pupils\?q=.*&offset=200$"), timeout=PAGE_WAIT_MS)
    assert page.inner_text("#results-heading") == "Найдено больше 400, показаны 201–400"
    assert page.locator("tbody tr").first.inner_text().startswith("201\tУченик 201\t")
    assert pages.get_by_role("link").all_inner_texts() == ["Предыдущие", "Следующие"]
    page.goto(api.url + "/console/pupils?q=%D1%83%D1%87%D0%B5%D0%BD%D0%B8%D0%BA&offset=800")
    assert page.inner_text("#results-heading") == "Найдено: 1000, показаны 801–1000"
    assert pages.get_by_role("link").all_inner_texts() == ["Предыдущие"]

    # a name the API does not take: its 422, at the field
    response = page.goto(api.url + "/console/pupils?q=" + "я" * (NAME_QUERY_CHARS_MAX + 1))
    assert response is not None and response.status == 422
    alert = page.inner_text("#page-error")
    assert "Проверьте введённые данные. (422)" in alert, alert
    # in Russian, at the field; the API's English only in the folded-away details for the support desk
    assert f"«Фамилия, имя»: Слишком длинно: не больше {NAME_QUERY_CHARS_MAX} символов." in alert, alert
    assert "longer than" not in alert
    details = page.locator("#page-error details")
    assert details.get_attribute("open") is None and details.locator("summary").inner_text() == \
        "Подробности для службы поддержки"
    assert f"name: longer than {NAME_QUERY_CHARS_MAX} characters" in details.locator("[lang=en]").text_content()
    assert page.get_attribute("#q", "aria-invalid") == "true"
    assert page.locator("#results-heading").count() == 0
    accessible(page, "staff-console-find-refused")
