"""The sandbox acquirer's hosted payment page in a real browser (headless Debian chromium,
Playwright): a payer fills in the card form (first with mistakes), types a wrong code and then
the right one, and lands on the merchant's return page. Every page passes axe-core (every
impact level); the Content-Security-Policy lets the page's own style in and the redirect back
through. Screenshots: test-artifacts/screenshots/sandbox-*.png."""

from __future__ import annotations

import httpx
import pytest

from payments.sandbox import CARD_OK
from payments_support import return_pages, sandbox, sandbox_url  # noqa: F401  (fixtures)
from tests.browser import axe_violations, browser_page, format_violations, screenshot  # noqa: F401

pytestmark = pytest.mark.processes  # the sandbox, a return page and chromium

PAGE_WAIT_MS = 10_000


def accessible(page, name: str) -> None:
    screenshot(page, name)
    violations = axe_violations(page, impact_min="minor")
    assert not violations, f"{name}: {format_violations(violations)}"


def test_a_payer_pays_on_the_hosted_page(sandbox_url, return_pages, browser_page):
    pages, pages_url = return_pages
    r = httpx.post(f"{sandbox_url}/payments", headers={"Idempotency-Key": f"browser-{id(pages)}"}, json={
        "account_ref": "7", "amount_kopecks": 123_456, "callback_url": "http://127.0.0.1:9/payments/webhook",
        "description": "Пополнение лицевого счёта ученика № 7", "save_payment_method": True,
        "confirmation": {"type": "redirect", "return_url": f"{pages_url}/topup-done"}})
    assert r.status_code == 201, r.text
    payment = r.json()
    page = browser_page
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    page.goto(payment["confirmation_url"])
    assert page.title().startswith("Оплата картой")
    assert "1\u00a0234,56\u00a0₽" in page.inner_text("main")
    # The page's own style is allowed by its CSP hash (a blocked style would leave the default grey).
    colour = page.eval_on_selector("button[type=submit]", "b => getComputedStyle(b).backgroundColor")
    assert colour == "rgb(11, 92, 173)", colour
    accessible(page, "sandbox-card-form")

    page.get_by_label("Номер карты").fill("4111 1111 1111 1112")
    page.get_by_label("Срок действия (ММ/ГГ)").fill("01/20")
    page.get_by_label("CVC/CVV").fill("12")
    page.get_by_role("button", name="Оплатить").click()
    page.wait_for_selector("text=Проверьте данные карты", timeout=PAGE_WAIT_MS)
    accessible(page, "sandbox-card-errors")

    page.get_by_label("Номер карты").fill("4111 1111 1111 1111")
    page.get_by_label("Срок действия (ММ/ГГ)").fill("12/30")
    page.get_by_label("CVC/CVV").fill("123")
    page.get_by_label("Имя владельца (необязательно)").fill("IVAN PETROV")
    page.get_by_role("button", name="Оплатить").click()
    page.wait_for_selector("h1:text('Подтверждение платежа')", timeout=PAGE_WAIT_MS)
    accessible(page, "sandbox-3ds")
    code = page.inner_text("#sandbox-code")
    assert code == CARD_OK[-4:]

    page.get_by_label("Код из SMS").fill("0000")
    page.get_by_role("button", name="Подтвердить").click()
    page.wait_for_selector("text=Осталось попыток: 2", timeout=PAGE_WAIT_MS)
    accessible(page, "sandbox-3ds-wrong-code")

    page.get_by_label("Код из SMS").fill(code)
    page.get_by_role("button", name="Подтвердить").click()
    page.wait_for_url(f"{pages_url}/topup-done?payment_id={payment['payment_id']}", timeout=PAGE_WAIT_MS)
    assert pages.visits[-1] == payment["payment_id"]
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
    view = httpx.get(f"{sandbox_url}/payments/{payment['payment_id']}").json()
    assert (view["status"], view["card_last4"], view["card_saved"]) == ("captured", "1111", True)
