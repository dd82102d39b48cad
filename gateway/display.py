"""Render the Russian device display texts of gateway/templates/display_ru.toml (Jinja2)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES_PATH = Path(__file__).resolve().parent / "templates" / "display_ru.toml"


def rubles(kopecks: int) -> str:
    """12345 -> '123,45 ₽' (Russian decimal comma, thin no-break space before the sign)."""
    sign = "−" if kopecks < 0 else ""
    whole, part = divmod(abs(int(kopecks)), 100)
    return f"{sign}{whole:,}".replace(",", "\u202f") + f",{part:02d}\u00a0₽"


@lru_cache(maxsize=1)
def _templates() -> dict[int, jinja2.Template]:
    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    env.filters["rub"] = rubles
    with open(TEMPLATES_PATH, "rb") as f:
        table = tomllib.load(f)
    return {int(key): env.from_string(entry["text"]) for key, entry in table.items()}


def template_names() -> dict[int, str]:
    with open(TEMPLATES_PATH, "rb") as f:
        return {int(key): entry["name"] for key, entry in tomllib.load(f).items()}


def render(template_id: int, params: tuple[int, ...] | list[int] = ()) -> str:
    """The text a device shows for a DECISION; KeyError for an unknown template id."""
    values = {f"p{i}": value for i, value in enumerate(params)}
    return _templates()[template_id].render(**values)
