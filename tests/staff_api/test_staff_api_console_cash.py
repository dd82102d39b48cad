"""The cashier's cash at the office desk, in the console, in chromium, against the real staff API,
PostgreSQL and gateway: a typo is refused at the field, an amount above the cap is refused in
Russian with the cap in rubles, then the cash is taken once and the balance and the day's report
show it. Screenshots: test-artifacts/screenshots/staff-console-cash-*.png."""

from __future__ import annotations

import re

import pytest

from tests.browser import browser_page, run_async  # noqa: F401
from tests.support import GatewayThread
from test_staff_api_console import PAGE_WAIT_MS, accessible, alert_text, console, query, sign_in  # noqa: F401

pytestmark = pytest.mark.processes  # uvicorn, a gateway and chromium

PUPIL = 3  # a demo pupil of school 1: 500,00 ₽


def test_a_cashier_takes_cash_at_the_desk_in_the_console(console, browser_page):
    api, page = console, browser_page
    with GatewayThread(api.dsn):
        page.goto(api.url + "/console/signin")
        sign_in(page, api.url, "cash1", api.tokens["cash1"])
        page.goto(api.url + f"/console/pupils/{PUPIL}")
        assert page.inner_text(".balance") == "500,00\u00a0₽"
        key = page.get_attribute("form[data-action=cash]", "data-key")
        assert key and len(key) >= 20
        accessible(page, "staff-console-cash")

        page.get_by_label("Сумма, ₽").fill("12abc")
        page.get_by_role("button", name="Зачислить наличные").click()
        error = alert_text(page, "#cash-error")
        assert "Проверьте введённые данные" in error and "«Сумма»" in error, error
        assert page.get_attribute("#cash-amount", "aria-invalid") == "true"
        accessible(page, "staff-console-cash-422")

        page.get_by_label("Сумма, ₽").fill("20000")  # above the till's cap of 15 000 ₽
        page.get_by_role("button", name="Зачислить наличные").click()
        page.locator("#cash-error").filter(has_text="15").wait_for(timeout=PAGE_WAIT_MS)
        error = page.inner_text("#cash-error")
        assert "Неверная сумма: больше нуля и не больше 15\u00a0000,00\u00a0₽." in error, error
        assert "AMOUNT_INVALID" not in error  # the person reads Russian, not the gateway's code
        accessible(page, "staff-console-cash-409")

        page.get_by_label("Сумма, ₽").fill("250,50")
        page.get_by_role("button", name="Зачислить наличные").click()
        page.wait_for_url(re.compile(rf".*/console/pupils/{PUPIL}\?done=cash_taken$"), timeout=PAGE_WAIT_MS)
        assert "Наличные зачислены" in page.inner_text("[role=status]")
        assert page.inner_text(".balance") == "750,50\u00a0₽"
        assert page.get_attribute("form[data-action=cash]", "data-key") != key  # a new page, a new key
        accessible(page, "staff-console-cash-done")

        rows = query(api.dsn, "SELECT c.idempotency_key, c.status, j.amount_kopecks FROM commands c LEFT JOIN journal j "
                     "ON j.device_id = 0 AND j.device_txn = c.seq AND j.kind = 14 WHERE c.kind = 'cash_topup' ORDER BY c.seq")
        # one command per amount pressed on that page: the refused 20 000 ₽, then the 250,50 ₽ journaled once
        assert [(r["idempotency_key"], r["status"], r["amount_kopecks"]) for r in rows] == [
            (f"staff:{key}-2000000", 2, None), (f"staff:{key}-25050", 1, 25_050)]
