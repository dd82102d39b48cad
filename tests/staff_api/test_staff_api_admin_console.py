"""The operator's page of the console in chromium: a new school, a new staff member whose key is
shown once and works, a key rotated (the old one dead at once), a member deactivated; the auditor
reads the page without the forms; every step checked with axe."""

from __future__ import annotations

import pytest

from tests.browser import BrowserUnavailable, axe_violations, format_violations, open_page, screenshot
from tests.staff_api.test_staff_api import make_api

pytestmark = pytest.mark.processes

WAIT_MS = 10_000


def test_the_operator_creates_a_school_and_a_member_rotates_and_deactivates(demo_dsn):
    api, server = make_api(demo_dsn)
    try:
        with open_page() as page:
            page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
            page.goto(f"{api.url}/console/signin")
            page.get_by_label("Логин").fill("op")
            page.get_by_label("Ключ доступа").fill(api.tokens["op"])
            page.get_by_role("button", name="Войти").click()
            page.wait_for_url(f"{api.url}/console", timeout=WAIT_MS)
            page.get_by_role("link", name="Школы и сотрудники").click()
            page.wait_for_selector("h1:text('Школы и сотрудники')", timeout=WAIT_MS)
            violations = axe_violations(page)
            assert not violations, format_violations(violations)
            # A new school.
            page.get_by_label("Название").fill("ГБОУ Школа № 3")
            page.get_by_role("button", name="Создать школу").click()
            page.wait_for_selector("text=Школа создана.", timeout=WAIT_MS)
            assert "ГБОУ Школа № 3" in page.inner_text("main")
            # A new cashier of school 1: the key is shown once, and it works.
            page.get_by_label("Логин").fill("cash7")
            page.get_by_label("Роль").select_option("cashier")
            page.get_by_label("Школа (для сотрудника школы и кассира)").select_option("1")
            page.get_by_role("button", name="Создать и показать ключ").click()
            key = page.wait_for_selector("#new-key", timeout=WAIT_MS).inner_text()
            screenshot(page, "staff-console-admin-key")
            assert api.as_(key, "GET", "/me").json()["login"] == "cash7"
            # Rotate it: the old key is dead at once, the new one works.
            page.reload()
            page.get_by_role("button", name="Новый ключ: cash7").click()
            page.wait_for_selector("#new-key", timeout=WAIT_MS)
            rotated = page.inner_text("#new-key")
            assert rotated != key
            assert api.as_(key, "GET", "/me").status_code == 401
            assert api.as_(rotated, "GET", "/me").status_code == 200
            # Deactivate: cut off.
            page.reload()
            page.get_by_role("button", name="Отключить: cash7").click()
            page.wait_for_selector("text=Сотрудник отключён", timeout=WAIT_MS)
            assert api.as_(rotated, "GET", "/me").status_code == 401
            violations = axe_violations(page)
            assert not violations, format_violations(violations)
            screenshot(page, "staff-console-admin")
            # The auditor reads it, without the forms; an officer is refused with the API's 403.
            page.get_by_role("button", name="Выйти").click()
            page.goto(f"{api.url}/console/signin")
            page.get_by_label("Логин").fill("aud")
            page.get_by_label("Ключ доступа").fill(api.tokens["aud"])
            page.get_by_role("button", name="Войти").click()
            page.wait_for_url(f"{api.url}/console", timeout=WAIT_MS)
            page.goto(f"{api.url}/console/admin")
            assert "cash7" in page.inner_text("main") and page.locator("form[data-action]").count() == 0
    except BrowserUnavailable as exc:
        pytest.skip(f"no browser for browser tests: {exc}")
    finally:
        api.http.close()
        server.stop()
