"""Russian texts of the notices: Jinja2 templates per channel and event kind.

``notifier/templates/<channel>/<kind>.txt`` (and ``.html`` for e-mail) each define a
``subject`` block (the e-mail subject, the push title) and a ``body`` block, and extend
the channel's base template. ``notice_context`` turns a ``ledger.notices`` Struct and the
reference data (pupil, school, products) into what the templates read; it is pure, so the
golden-file tests render every kind without a database.

Times are the school's local time (``schools.utc_offset_minutes``); money is
``1 234,56 ₽`` (no-break spaces; a minus sign for a negative balance).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jinja2
import msgspec

from ledger.codes import OutboxKind
from storage.representatives import RELATIONS_RU
from ledger.notices import (
    AnyNotice,
    BankTopupNotice,
    CardNotice,
    CashTopupNotice,
    EntryNotice,
    ExitNotice,
    LowBalanceNotice,
    PurchaseNotice,
    TemporaryCardIssuedNotice,
    TemporaryCardReturnedNotice,
)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
NBSP = "\u00a0"  # between the digits' groups and before ₽: a sum never breaks across lines
MINUS = "\u2212"
# Characters of a card's identifier shown in a notice: enough for a parent to tell the
# cards apart, too few to copy the card.
CARD_TAIL_HEX_CHARS = 4


class Rendered(msgspec.Struct, frozen=True):
    subject: str  # e-mail subject, push title
    text: str
    html: str | None = None


class RenderError(Exception):
    """A template is missing or failed: a bug, never retried."""


def money(kopecks: int) -> str:
    """12345 -> "123,45 ₽"; 123456789 -> "1 234 567,89 ₽"; -1500 -> "−15,00 ₽"."""
    sign = MINUS if kopecks < 0 else ""
    rubles, kop = divmod(abs(int(kopecks)), 100)
    groups = f"{rubles:,}".replace(",", NBSP)
    return f"{sign}{groups},{kop:02d}{NBSP}₽"


def local_time(at_ms: int, utc_offset_minutes: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, timezone(timedelta(minutes=utc_offset_minutes)))


def card_tail(identifier_hex: str) -> str:
    return "…" + identifier_hex[-CARD_TAIL_HEX_CHARS:].upper()


def notice_context(
    notice: AnyNotice,
    *,
    pupil: str,
    school_name: str,
    utc_offset_minutes: int,
    products: dict[int, str],
) -> dict[str, Any]:
    """What the templates of ``notice``'s kind read."""
    at = local_time(notice.at_ms, utc_offset_minutes)
    ctx: dict[str, Any] = {
        "kind": type(notice).__struct_config__.tag,
        "pupil": pupil,
        "school_name": school_name,
        "date": at.strftime("%d.%m.%Y"),
        "time": at.strftime("%H:%M"),
    }
    if isinstance(notice, PurchaseNotice):
        ctx["items"] = [
            {
                "name": products.get(item.product_code) or f"Товар № {item.product_code}",
                "quantity": item.quantity,
                "unit_price": item.unit_price_kopecks,
                "total": item.quantity * item.unit_price_kopecks,
            }
            for item in notice.items
        ]
        ctx.update(amount=notice.amount_kopecks, balance=notice.balance_kopecks, free_meal=notice.free_meal)
    elif isinstance(notice, (CashTopupNotice, BankTopupNotice)):
        ctx.update(amount=notice.amount_kopecks, balance=notice.balance_kopecks)
    elif isinstance(notice, (EntryNotice, ExitNotice)):
        ctx["escort"] = notice.escort  # a kindergarten: who brought or collected the child ("" for none)
        ctx["escort_relation"] = notice.escort_relation
    elif isinstance(notice, LowBalanceNotice):
        ctx.update(balance=notice.balance_kopecks, threshold=notice.threshold_kopecks)
    elif isinstance(notice, (CardNotice, TemporaryCardReturnedNotice)):
        ctx["card"] = card_tail(notice.identifier_hex)
    elif isinstance(notice, TemporaryCardIssuedNotice):
        ctx["card"] = card_tail(notice.identifier_hex)
        if notice.expires_at_ms:
            expires = local_time(notice.expires_at_ms, utc_offset_minutes)
            ctx.update(expires_date=expires.strftime("%d.%m.%Y"), expires_time=expires.strftime("%H:%M"))
        else:  # 0: no expiry, it stands until the card is found or replaced
            ctx.update(expires_date=None, expires_time=None)
    return ctx


class Renderer:
    """One Jinja2 environment over the templates directory (templates compiled once)."""

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty string
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # Templates are part of the release: compiled once, never looked at again (with the
            # default, every render stat()ed its file to see whether it changed).
            auto_reload=False,
        )
        self.env.filters["money"] = money
        self.env.globals["relations_ru"] = RELATIONS_RU  # storage.representatives: one list of relations

    def has(self, channel: str, kind: str) -> bool:
        try:
            self.env.get_template(f"{channel}/{kind}.txt")
        except jinja2.TemplateNotFound:
            return False
        return True

    def render(self, channel: str, kind: str, ctx: dict[str, Any], *, html: bool = False) -> Rendered:
        try:
            text_template = self.env.get_template(f"{channel}/{kind}.txt")
            subject = self._block(text_template, "subject", ctx)
            text = _tidy(text_template.render(ctx))
            html_text = self.env.get_template(f"{channel}/{kind}.html").render(ctx) if html else None
        except jinja2.TemplateError as exc:
            raise RenderError(f"{channel}/{kind}: {type(exc).__name__}: {exc}") from exc
        return Rendered(subject=subject, text=text, html=html_text)

    @staticmethod
    def _block(template: jinja2.Template, name: str, ctx: dict[str, Any]) -> str:
        block = template.blocks.get(name)
        if block is None:
            raise RenderError(f"{template.name}: no {{% block {name} %}}")
        # One line: runs of spaces and newlines become one space (no-break spaces stay).
        return _SPACES.sub(" ", "".join(block(template.new_context(ctx)))).strip(" ")


_SPACES = re.compile(r"[ \t\r\n]+")


def _tidy(text: str) -> str:
    """No trailing spaces, at most one empty line in a row, one final newline."""
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).rstrip("\n") + "\n"


KINDS = tuple(kind.value for kind in OutboxKind)
