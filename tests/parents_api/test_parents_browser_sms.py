"""A parent sets their SMS terms on the notices page in a real browser (headless Debian chromium,
Playwright): the plan, the daily cap, quiet hours and the daily digest, a mistake told in Russian
first, then stored as the notifier will read them. The page passes axe-core's serious and critical
checks with and without the error shown. Screenshots: test-artifacts/screenshots/parents-sms-*.png."""

from __future__ import annotations

import re

import pytest

from parents_support import World, world  # noqa: F401  (world: the fixture)
from storage.representatives import SmsSettings, sms_settings
from tests.browser import browser_page, run_async, screenshot  # noqa: F401  (browser_page: the fixture)
from tests.parents_api.test_parents_browser import PAGE_WAIT_MS, accessible, sign_in

pytestmark = pytest.mark.processes  # uvicorn, SMTP and chromium

REP7 = 7  # demo parent 7, the one signed in


def stored_terms(dsn: str) -> SmsSettings:
    async def read() -> SmsSettings:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return await sms_settings(conn, REP7)
        finally:
            await conn.close()

    return run_async(read())


def test_a_parent_sets_the_sms_terms_on_the_notices_page(world: World, browser_page):
    page = browser_page
    sign_in(page, world)
    page.get_by_role("link", name="Уведомления и представители").click()
    page.wait_for_selector("h2:text('SMS: тариф, ограничения, сводка')", timeout=PAGE_WAIT_MS)
    accessible(page, "parents-sms-terms")
    assert page.get_by_role("radio", name=re.compile("^Бесплатный")).is_checked()  # the defaults
    assert page.get_by_label("С", exact=True).input_value() == "22:00"

    page.get_by_role("radio", name=re.compile("^Платный")).check()
    page.get_by_label("Не больше SMS в день (0 — не присылать)").fill("5")
    quiet = page.get_by_role("checkbox", name=re.compile("^Не присылать SMS в тихие часы"))
    assert quiet.is_checked()
    page.get_by_label("С", exact=True).fill("21:30")
    page.get_by_label("До", exact=True).fill("21:30")  # a mistake: the same time at both ends
    page.get_by_role("checkbox", name=re.compile("^Одно SMS в день")).check()
    page.get_by_label("Время сводки").fill("19:00")
    page.get_by_role("button", name="Сохранить условия SMS").click()
    page.wait_for_selector("[role=alert]", timeout=PAGE_WAIT_MS)
    assert "совпадают" in page.inner_text("main")
    assert page.get_by_label("До", exact=True).get_attribute("aria-invalid") == "true"
    assert page.get_by_role("radio", name=re.compile("^Платный")).is_checked()  # what was typed is kept
    accessible(page, "parents-sms-terms-error")
    assert stored_terms(world.dsn) == SmsSettings()  # nothing stored

    page.get_by_label("До", exact=True).fill("06:45")
    page.get_by_role("button", name="Сохранить условия SMS").click()
    page.wait_for_selector("text=Условия SMS сохранены.", timeout=PAGE_WAIT_MS)
    screenshot(page, "parents-sms-terms-saved")
    assert stored_terms(world.dsn) == SmsSettings(plan="paid", daily_cap=5, quiet_from_minute=21 * 60 + 30,
                                                  quiet_to_minute=6 * 60 + 45, digest=True, digest_minute=19 * 60)
    # The page shows what is stored.
    page.reload()
    assert page.get_by_role("radio", name=re.compile("^Платный")).is_checked()
    assert page.get_by_label("До", exact=True).input_value() == "06:45"
    assert page.get_by_label("Не больше SMS в день (0 — не присылать)").input_value() == "5"

    # Quiet hours off: no quiet hours stored (equal ends), by the box alone.
    page.get_by_role("checkbox", name=re.compile("^Не присылать SMS в тихие часы")).uncheck()
    page.get_by_role("button", name="Сохранить условия SMS").click()
    page.wait_for_selector("text=Условия SMS сохранены.", timeout=PAGE_WAIT_MS)
    terms = stored_terms(world.dsn)
    assert terms.quiet_from_minute == terms.quiet_to_minute and terms.plan == "paid"
    accessible(page, "parents-sms-terms-no-quiet-hours")
