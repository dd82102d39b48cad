"""The auditor's daily report against the real gateway, PostgreSQL and the staff API: sales made
by a simulated till (paid and free lunches), cash taken, a refund and a correction made through
the API, all in the report of the school's day; free meals as counts only; the CSV export safe
for spreadsheets; roles and schools refused."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime, timedelta, timezone

import pytest

from protocol import TXN_FLAG_ADVICE, DeviceKind, Item, Outcome, Purchase
from simulators.crash import free_port
from simulators.device import Device, DeviceConfig
from staff_api.reports import csv_cell
from storage.demo_dataset import demo_card_uid, demo_device_key, till_ids
from tests.gateway.test_gateway import running_gateway
from tests.staff_api.test_staff_api import make_api
from tests.staff_api.test_staff_api_sessions import signed_in
from tests.support import async_wait_until

pytestmark = pytest.mark.processes

MSK = timezone(timedelta(hours=3))
FREE_PUPIL = 1  # grade 1: entitled to the free lunch in the demo with free meals on
PAID_PUPIL = 5  # grade 5


def test_csv_cells_never_run_as_formulas():
    assert [csv_cell(v) for v in ("=1+1", "+7900", "-2", "@SUM(A1)", "\tx", "Булочка", 1500, -300)] == [
        "'=1+1", "'+7900", "'-2", "'@SUM(A1)", "'\tx", "Булочка", "1500", "-300"]


def test_the_daily_report_of_a_school(pg_dsn, tmp_path):
    from tests.conftest import _load_demo, _run

    _run(_load_demo(pg_dsn, free_meals=True))
    api, server = make_api(pg_dsn, command_wait_ms=5_000)
    port = free_port()
    now = datetime.now(MSK)
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    if noon > now:
        noon -= timedelta(days=1)  # the lunch of the last day that has had one: within the offline window
    noon_ms = int(noon.timestamp() * 1000)
    till = till_ids()[0]

    async def main():
        async with running_gateway(pg_dsn, listen_port=port, commands_poll_interval_ms=50) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            device = Device(till, DeviceKind.TILL, demo_device_key(till), DeviceConfig(host="127.0.0.1", port=port),
                            tmp_path, seed=1)
            await device.start()
            # Two lunches sold at noon (reported as advices: the till was offline), one of them free.
            for pupil in (FREE_PUPIL, PAID_PUPIL):  # txns 1 and 2
                decision = await device._transaction(lambda t, p=pupil: Purchase(
                    t, TXN_FLAG_ADVICE, noon_ms, 16_500, demo_card_uid(p), (Item(2, 1, 16_500),)))
                assert decision.outcome == Outcome.ACCEPT, decision
            assert (await device.topup(demo_card_uid(PAID_PUPIL), 20_000, 7)).outcome == Outcome.ACCEPT
            assert await device.wait_settled(10)
            await device.close()
            refund = await asyncio.to_thread(api.as_, "cash1", "POST", "/money/refunds",
                                             json={"device_id": till, "device_txn": 2, "amount_kopecks": 5_000},
                                             headers={"Idempotency-Key": "r1"})
            assert refund.status_code == 200 and refund.json()["status"] == "applied", refund.text
            correction = await asyncio.to_thread(api.as_, "op", "POST", "/money/corrections",
                                                 json={"account_id": PAID_PUPIL, "amount_kopecks": -1_000,
                                                       "reason": "=HYPERLINK(\"x\")"},
                                                 headers={"Idempotency-Key": "c1"})
            assert correction.status_code == 200 and correction.json()["status"] == "applied", correction.text

    try:
        asyncio.run(main())
        day = noon.date().isoformat()
        today = datetime.now(MSK).date().isoformat()
        r = api.as_("aud", "GET", "/schools/1/reports/daily", params={"day": day})
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["sales"], report["sales_kopecks"]) == (2, 33_000)
        assert (report["free_meals"], report["paid_sales"], report["paid_kopecks"]) == (1, 1, 16_500)
        assert report["free_by_product"] == [{"product_code": 2, "name": "Обед комплексный", "quantity": 1,
                                              "amount_kopecks": 16_500}]
        assert "account_id" not in str(report["free_by_product"])  # who ate free is not in the report
        assert report["by_till"][0]["device_id"] == till and report["by_till"][0]["sales"] == 2
        later = api.as_("aud", "GET", "/schools/1/reports/daily", params={"day": today}).json()
        # The cash, the refund and the correction happened now (today), the lunches at noon.
        assert (later["cash_topups"], later["cash_kopecks"]) == (1, 20_000)
        assert later["refunds_kopecks"] == 5_000 and later["corrections_kopecks"] == -1_000
        kinds = sorted((m["kind"], m["requested_by"]) for m in later["money"])
        assert kinds == [("correction", "op"), ("refund", "cash1")]
        exported = api.as_("aud", "GET", "/schools/1/reports/daily", params={"day": today, "format": "csv"})
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        cells = [c for row in csv.reader(io.StringIO(exported.text)) for c in row]
        assert "op: =HYPERLINK(\"x\")" in cells  # text after the actor: it cannot start a formula
        assert not any(c.startswith(("=", "@")) for c in cells)
        # The same day in the console: the auditor's page, and a cashier's (own school only).
        console = signed_in(api, "aud")
        page = console.get("/console/schools/1/report", params={"day": today})
        assert page.status_code == 200, page.text
        assert "Отчёт за день" in page.text and "возврат" in page.text and "корректировка" in page.text
        assert "Скачать CSV" in page.text
        cashier = signed_in(api, "cash1")
        assert cashier.get("/console/schools/1/report").status_code == 200
        _in_a_browser(api, today)
        # Roles and schools.
        assert api.as_("cash1", "GET", "/schools/1/reports/daily", params={"day": day}).status_code == 200
        assert api.as_("off1", "GET", "/schools/2/reports/daily", params={"day": day}).status_code in (403, 404)
        assert api.as_("aud", "GET", "/schools/99/reports/daily", params={"day": day}).status_code == 404
        assert api.as_("aud", "GET", "/schools/1/reports/daily", params={"day": "31.12.2026"}).status_code == 422
        assert api.as_(None, "GET", "/schools/1/reports/daily", params={"day": day}).status_code == 401
    finally:
        api.http.close()
        server.stop()


def _in_a_browser(api, day: str) -> None:
    """The auditor signs in to the console in chromium and reads the day: no serious axe violation."""
    from tests.browser import BrowserUnavailable, axe_violations, format_violations, open_page, screenshot

    try:
        with open_page() as page:
            page.goto(f"{api.url}/console/signin")
            page.get_by_label("Логин").fill("aud")
            page.get_by_label("Ключ доступа").fill(api.tokens["aud"])
            page.get_by_role("button", name="Войти").click()
            page.wait_for_url(f"{api.url}/console", timeout=10_000)
            page.goto(f"{api.url}/console/schools/1/report?day={day}")
            page.wait_for_selector("h1:text('Отчёт за день')", timeout=10_000)
            screenshot(page, "staff-console-report")
            violations = axe_violations(page)
            assert not violations, format_violations(violations)
    except BrowserUnavailable as exc:
        pytest.skip(f"no browser for browser tests: {exc}")
