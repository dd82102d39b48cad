"""The auditor's daily report of a school (storage.reports): sales by till and by product, free
meals served (counts only), cash taken at the tills, refunds and corrections. JSON, or CSV for a
spreadsheet (every cell that a spreadsheet would run as a formula is neutralised).

    GET /schools/{id}/reports/daily?day=YYYY-MM-DD[&format=csv]
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, QueryParameter

from storage import reports

from . import db
from .auth import PrincipalDep
from .errors import answers, invalid, refuse
from .refusals import Refusal
from .schemas import DAY_PATTERN

# Who reads a school's day of money: the auditor and the operator everywhere, the school's
# officer and cashier their own school (the cashier reconciles the drawer with it).
READERS = ("operator", "auditor", "officer", "cashier")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading formula character is escaped with an apostrophe
    (numbers are written as numbers: a negative amount is not text that could run)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def report_csv(report: reports.DailyReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    rows: list[list[object]] = [
        ["раздел", "код", "название", "количество", "сумма, коп."],
        ["итого", "", "продажи", report.sales, report.sales_kopecks],
        ["итого", "", "оплачено с лицевых счетов", report.paid_sales, report.paid_kopecks],
        ["итого", "", "бесплатное питание", report.free_meals, report.free_meals_kopecks],
        ["итого", "", "пополнения наличными", report.cash_topups, report.cash_kopecks],
        ["итого", "", "из них в канцелярии", report.desk_cash_topups, report.desk_cash_kopecks],
        ["итого", "", "возвраты", "", report.refunds_kopecks],
        ["итого", "", "корректировки", "", report.corrections_kopecks],
    ]
    rows += [["касса", t.device_id, "продажи", t.sales, t.amount_kopecks] for t in report.by_till]
    rows += [["касса", t.device_id, "наличные", t.cash_topups, t.cash_kopecks] for t in report.by_till]
    rows += [["товар", p.product_code, p.name, p.quantity, p.amount_kopecks] for p in report.by_product]
    rows += [["бесплатно", p.product_code, p.name, p.quantity, p.amount_kopecks] for p in report.free_by_product]
    rows += [[m.kind, m.account_id, f"{m.requested_by}: {m.reason}", "", m.amount_kopecks] for m in report.money]
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return out.getvalue()


class ReportController(Controller):
    tags = ["reports"]

    @get("/schools/{school_id:int}/reports/daily", opt=answers(success_content={
        "application/json": {"schema": {"$ref": "#/components/schemas/DailyReport"}},
        "text/csv": {"schema": {"type": "string", "description": "format=csv: the same report for a spreadsheet"}},
    }))
    async def daily(
        self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
        day: Annotated[str, QueryParameter(pattern=DAY_PATTERN, description="the school-local day, YYYY-MM-DD")],
        format: Annotated[Literal["json", "csv"], QueryParameter()] = "json",  # noqa: A002
    ) -> reports.DailyReport | Response:
        """Sales by till and product, free meals (counts only), cash, refunds and corrections of one day."""
        principal.require(*READERS, action="read the daily report")
        principal.require_school(school_id, f"school {school_id}")
        try:
            on = date.fromisoformat(day)
        except ValueError:
            raise invalid("day", Refusal.DAY_INVALID, source="query", day=day) from None
        async with pool.acquire() as conn:
            report = await reports.daily(conn, school_id, on)
        if report is None:
            raise refuse(NotFoundException, Refusal.NO_SCHOOL, school_id=school_id)
        if format == "csv":
            return Response(report_csv(report), media_type="text/csv; charset=utf-8", headers={
                "content-disposition": f'attachment; filename="report-{school_id}-{on.isoformat()}.csv"'})
        return report
