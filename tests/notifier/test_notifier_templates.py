"""The Russian texts: every event kind renders in every channel, compared with golden files
(tests/notifier/golden/<channel>/<case>.txt and .html), read by a person once.

Regenerate after a deliberate change of a template, then read the diff:

    ECARD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/notifier/test_notifier_templates.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger.codes import OutboxKind
from notifier.config import IMPLEMENTED_CHANNELS
from notifier.render import Renderer, RenderError, money, notice_context
from notifier_support import PRODUCTS, SCHOOL_NAME, sample_notices

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("ECARD_UPDATE_GOLDEN") == "1"
HTML_CHANNELS = ("email",)


def cases() -> list[tuple[str, object]]:
    """One case per sample notice, named by its kind (the free meal is a purchase of its own)."""
    out = []
    for _, notice in sample_notices(5):
        kind = type(notice).__struct_config__.tag
        name = f"{kind}_free_meal" if getattr(notice, "free_meal", False) else kind
        name = f"{kind}_no_expiry" if getattr(notice, "expires_at_ms", None) == 0 else name
        out.append((name, notice))
    return out


def render(channel: str, notice) -> tuple[str, str | None]:
    ctx = notice_context(notice, pupil="Иванов Иван", school_name=SCHOOL_NAME, utc_offset_minutes=180,
                         products=PRODUCTS)
    kind = type(notice).__struct_config__.tag
    rendered = Renderer().render(channel, kind, ctx, html=channel in HTML_CHANNELS)
    return f"Subject: {rendered.subject}\n\n{rendered.text}", rendered.html


def check(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with ECARD_UPDATE_GOLDEN=1 and read what it wrote"
    assert actual == path.read_text(encoding="utf-8"), f"{path} differs"


def test_the_cases_cover_every_kind():
    assert {type(n).__struct_config__.tag for _, n in cases()} == {k.value for k in OutboxKind}


@pytest.mark.parametrize("channel", IMPLEMENTED_CHANNELS)
@pytest.mark.parametrize("name,notice", cases(), ids=[name for name, _ in cases()])
def test_every_kind_renders_in_every_channel_as_its_golden_file(channel, name, notice):
    text, html = render(channel, notice)
    assert "Иванов Иван" in text
    assert "{{" not in text and "{%" not in text
    check(GOLDEN / channel / f"{name}.txt", text)
    if channel in HTML_CHANNELS:
        assert html is not None and html.startswith("<!DOCTYPE html>") and 'lang="ru"' in html
        check(GOLDEN / channel / f"{name}.html", html)


def test_money_is_rubles_and_kopecks_with_no_break_spaces():
    assert money(12_345) == "123,45\u00a0₽"
    assert money(5) == "0,05\u00a0₽"
    assert money(0) == "0,00\u00a0₽"
    assert money(123_456_789) == "1\u00a0234\u00a0567,89\u00a0₽"
    assert money(-1_500) == "\u221215,00\u00a0₽"


def test_times_are_the_schools_local_time():
    _, notice = sample_notices(5)[0]  # entry at 04:41 UTC
    ctx = notice_context(notice, pupil="x", school_name="x", utc_offset_minutes=180, products={})
    assert (ctx["date"], ctx["time"]) == ("25.11.2025", "08:41")
    ctx = notice_context(notice, pupil="x", school_name="x", utc_offset_minutes=12 * 60, products={})  # Kamchatka
    assert (ctx["date"], ctx["time"]) == ("25.11.2025", "17:41")


def test_an_unknown_product_is_named_by_its_code_and_html_is_escaped():
    _, notice = sample_notices(5)[2]
    ctx = notice_context(notice, pupil="<b>Иван</b>", school_name="Школа", utc_offset_minutes=180, products={3: "Булочка"})
    rendered = Renderer().render("email", "purchase", ctx, html=True)
    assert "Товар № 5: 1 × 15,00\u00a0₽" in rendered.text
    assert "<b>Иван</b>" in rendered.text  # plain text is not escaped
    assert "&lt;b&gt;Иван&lt;/b&gt;" in rendered.html and "<b>Иван</b>" not in rendered.html


def test_a_missing_template_is_a_render_error():
    with pytest.raises(RenderError):
        Renderer().render("sms", "purchase", {"pupil": "x"})


@pytest.mark.parametrize("channel", IMPLEMENTED_CHANNELS)
def test_a_kindergarten_entry_and_exit_name_the_trusted_person_in_every_channel(channel):
    import msgspec

    escort = "Смирнова Ольга Петровна (бабушка)"  # the name, and the relation said in Russian by the templates
    for _, notice in cases():
        if type(notice).__struct_config__.tag in ("entry", "exit"):
            escorted = msgspec.structs.replace(notice, escort="Смирнова Ольга Петровна", escort_relation="grandmother")
            text, html = render(channel, escorted)
            assert escort in text, (channel, text)
            other, _ = render(channel, msgspec.structs.replace(escorted, escort_relation="neighbour"))
            assert "Смирнова Ольга Петровна (доверенное лицо)" in other
            if html is not None:
                assert "Смирнова Ольга Петровна" in html
            plain, _ = render(channel, notice)
            assert "сопровожд" not in plain.lower()
