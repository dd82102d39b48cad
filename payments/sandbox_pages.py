"""The sandbox acquirer's hosted payment pages (HTML, Russian) and the checks of the card form.

Pure: no I/O, no clock of its own (the caller passes the time). ``payments/sandbox.py``
serves these pages; nothing of ecard's imports this module, and nothing here logs.

Accessibility (checked with axe-core in a real browser): ``<html lang="ru">``, one ``<h1>``,
every input has a ``<label for>``, an error is tied to its input (``aria-invalid``,
``aria-describedby``) and summed up in a ``role="alert"`` box whose links jump to the fields;
the page sits in header/main/footer landmarks; colours pass WCAG AA contrast.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from dataclasses import dataclass

import jinja2

# Card numbers are 12..19 digits (ISO/IEC 7812); a typed number may carry spaces or dashes.
CARD_DIGITS_MIN, CARD_DIGITS_MAX = 12, 19
CARD_TYPED_CHARS_MAX = 32
# A card is issued for at most this many years ahead; a later expiry is a typo.
EXPIRY_YEARS_AHEAD_MAX = 20
CARDHOLDER_CHARS_MAX = 100
# The one-time code of the 3-D-Secure-like step: in the sandbox, the card number's last 4 digits.
THREE_DS_CODE_DIGITS = 4

_EXPIRY = re.compile(r"^\s*([0-9]{1,2})\s*/\s*([0-9]{2})\s*$")
_CVC = re.compile(r"^[0-9]{3}$")
_CARDHOLDER = re.compile(r"^[A-Za-z][A-Za-z .'\-]*$")
_CODE = re.compile(r"^[0-9]{4}$")


def luhn_ok(number: str) -> bool:
    if not (CARD_DIGITS_MIN <= len(number) <= CARD_DIGITS_MAX and number.isascii() and number.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Card:
    """A card as the hosted form took it. Lives only in the sandbox's memory."""

    number: str
    exp_month: int
    exp_year: int
    holder: str

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def expired(self, today: dt.date) -> bool:
        """Valid through the last day of its expiry month."""
        return (self.exp_year, self.exp_month) < (today.year, today.month)


def three_ds_code(card: Card) -> str:
    """The sandbox's documented, deterministic one-time code: the card number's last 4 digits."""
    return card.number[-THREE_DS_CODE_DIGITS:]


def code_ok(typed: str) -> bool:
    return bool(_CODE.match(typed.strip()))


def parse_card_form(fields: dict[str, str], today: dt.date) -> tuple[Card | None, dict[str, str]]:
    """(card, {}) or (None, {field: Russian message}) for the hosted form's fields."""
    errors: dict[str, str] = {}
    typed = fields.get("card_number", "")
    number = typed.replace(" ", "").replace("-", "")
    if not number:
        errors["card_number"] = "Введите номер карты."
    elif len(typed) > CARD_TYPED_CHARS_MAX or not luhn_ok(number):
        errors["card_number"] = "Номер карты введён с ошибкой: проверьте цифры."
    exp_month = exp_year = 0
    m = _EXPIRY.match(fields.get("expiry", ""))
    if not fields.get("expiry", "").strip():
        errors["expiry"] = "Введите срок действия карты в виде ММ/ГГ."
    elif m is None or not 1 <= int(m.group(1)) <= 12:
        errors["expiry"] = "Срок действия — месяц и две последние цифры года, например 08/29."
    else:
        exp_month, exp_year = int(m.group(1)), 2000 + int(m.group(2))
        if (exp_year, exp_month) < (today.year, today.month):
            errors["expiry"] = "Срок действия карты истёк."
        elif exp_year > today.year + EXPIRY_YEARS_AHEAD_MAX:
            errors["expiry"] = "Проверьте срок действия карты."
    if not _CVC.match(fields.get("cvc", "")):
        errors["cvc"] = "CVC — три цифры на обороте карты."
    holder = " ".join(fields.get("cardholder", "").split())
    if holder and (len(holder) > CARDHOLDER_CHARS_MAX or not _CARDHOLDER.match(holder)):
        errors["cardholder"] = "Имя владельца — латинскими буквами, как на карте."
    if errors:
        return None, errors
    return Card(number, exp_month, exp_year, holder.upper()), {}


def rubles(kopecks: int) -> str:
    """12345678 -> "123 456,78 ₽" (non-breaking spaces)."""
    rub, kop = divmod(kopecks, 100)
    return f"{rub:,}".replace(",", "\u00a0") + f",{kop:02d}\u00a0₽"


# ----------------------------------------------------------------------------- pages

STYLE = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:0;color:#1a1a1a;background:#fff;line-height:1.45}
header,main,footer{max-width:34rem;margin:0 auto;padding:0 1rem}
header{border-bottom:1px solid #c8c8c8}
.brand{font-weight:bold;margin:.8rem 0}
h1{font-size:1.6rem;margin:1.2rem 0 .8rem}
h2{font-size:1.1rem;margin:0 0 .4rem}
dl.order{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;margin:0 0 1.2rem}
dt{color:#444}dd{margin:0;font-weight:bold}
.field{margin:0 0 1rem}
label{display:block;font-weight:bold;margin:0 0 .25rem}
input{font:inherit;padding:.5rem;border:2px solid #555;border-radius:4px;width:100%;box-sizing:border-box}
input[aria-invalid=true]{border-color:#b00020}
.row{display:flex;gap:1rem}.row .field{flex:1}
.error{color:#b00020;margin:.25rem 0 0}
.errors{border:2px solid #b00020;padding:.6rem 1rem;margin:0 0 1rem}
.errors a{color:#b00020}
.hint{background:#eef4fb;border-left:4px solid #0b5cad;padding:.5rem .8rem}
button{font:inherit;padding:.6rem 1.2rem;border-radius:4px;border:2px solid #0b5cad;background:#0b5cad;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#0b5cad}
form.cancel{margin:1rem 0 1.5rem}
footer{border-top:1px solid #c8c8c8;margin-top:1.5rem;font-size:.9rem;color:#444}
"""
STYLE_CSP_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()

_BASE = """<!doctype html>
<html lang="ru">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} — тестовый эквайер</title>
<style>{{ style|safe }}</style>
</head>
<body>
<header><p class="brand">Тестовый эквайер · защищённая страница оплаты</p></header>
<main>
{% block main %}{% endblock %}
</main>
<footer>
<p>Тестовая среда: деньги не списываются. Данные карты вводятся только на этой странице;
магазин получает лишь последние 4 цифры карты и, если вы согласились её сохранить, токен.</p>
{% block footer %}{% endblock %}
</footer>
</body>
</html>
"""

_ORDER = """<dl class="order">
<dt>Получатель</dt><dd>{{ merchant }}</dd>
<dt>Назначение</dt><dd>{{ description }}</dd>
<dt>Сумма</dt><dd>{{ amount }}</dd>
{% if last4 %}<dt>Карта</dt><dd>•••• {{ last4 }}</dd>{% endif %}
</dl>
"""

_CANCEL = """<form class="cancel" method="post" action="/pay/{{ payment_id }}/cancel">
<button type="submit" class="secondary">Отменить оплату и вернуться</button>
</form>
"""

_FIELD = """{% macro field(name, label, value, errors, autocomplete, inputmode=None, maxlength=None, placeholder=None,
                   required=True) -%}
<div class="field">
<label for="{{ name }}">{{ label }}</label>
<input id="{{ name }}" name="{{ name }}" type="text" value="{{ value }}" autocomplete="{{ autocomplete }}"
{%- if inputmode %} inputmode="{{ inputmode }}"{% endif %}
{%- if maxlength %} maxlength="{{ maxlength }}"{% endif %}
{%- if placeholder %} placeholder="{{ placeholder }}"{% endif %}
{%- if required %} required aria-required="true"{% endif %}
{%- if errors.get(name) %} aria-invalid="true" aria-describedby="{{ name }}-error"{% endif %}>
{%- if errors.get(name) %}<p class="error" id="{{ name }}-error">{{ errors[name] }}</p>{% endif %}
</div>
{%- endmacro %}
"""

_CARD_PAGE = """{% extends "base.html" %}
{% from "field.html" import field %}
{% block title %}Оплата картой{% endblock %}
{% block main %}
<h1>Оплата картой</h1>
{% include "order.html" %}
{% if errors %}
<div class="errors" role="alert" id="error-summary">
<h2>Проверьте данные карты</h2>
<ul>{% for name, message in errors.items() %}<li><a href="#{{ name }}">{{ message }}</a></li>{% endfor %}</ul>
</div>
{% endif %}
<form method="post" action="/pay/{{ payment_id }}" novalidate>
{{ field("card_number", "Номер карты", values.card_number, errors, "cc-number", "numeric", 23) }}
<div class="row">
{{ field("expiry", "Срок действия (ММ/ГГ)", values.expiry, errors, "cc-exp", "numeric", 7, "ММ/ГГ") }}
{{ field("cvc", "CVC/CVV", "", errors, "cc-csc", "numeric", 3) }}
</div>
{{ field("cardholder", "Имя владельца (необязательно)", values.cardholder, errors, "cc-name", None, 100, None, False) }}
{% if save_payment_method %}
<p>После оплаты карта будет сохранена для автопополнения. Получатель не увидит номер карты:
только последние 4 цифры и токен, которым можно оплачивать только у него.</p>
{% endif %}
<button type="submit">Оплатить {{ amount }}</button>
</form>
{% include "cancel.html" %}
{% endblock %}
{% block footer %}
<p>Тестовые карты: 4111 1111 1111 1111 — оплата проходит; 4000 0000 0000 0002 — банк отклоняет;
4000 0000 0000 9995 — недостаточно средств; 4000 0000 0000 0341 — первая оплата проходит,
следующие по токену отклоняются. Срок — любой будущий, CVC — любые три цифры.</p>
{% endblock %}
"""

_THREE_DS_PAGE = """{% extends "base.html" %}
{% block title %}Подтверждение платежа{% endblock %}
{% block main %}
<h1>Подтверждение платежа</h1>
{% include "order.html" %}
<p>Банк отправил код подтверждения на телефон владельца карты •••• {{ last4 }}.</p>
<p class="hint" id="code-hint">Тестовый режим: код подтверждения — последние 4 цифры номера карты:
<strong id="sandbox-code">{{ code }}</strong>.</p>
{% if error %}<p class="error" role="alert" id="code-error">{{ error }}</p>{% endif %}
<form method="post" action="/pay/{{ payment_id }}/3ds" novalidate>
<div class="field">
<label for="code">Код из SMS</label>
<input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" maxlength="4" required
 aria-required="true" aria-describedby="code-hint{% if error %} code-error{% endif %}"
 {%- if error %} aria-invalid="true"{% endif %}>
</div>
<button type="submit">Подтвердить</button>
</form>
{% include "cancel.html" %}
{% endblock %}
"""

_MESSAGE_PAGE = """{% extends "base.html" %}
{% block title %}{{ heading }}{% endblock %}
{% block main %}
<h1>{{ heading }}</h1>
<p>{{ text }}</p>
{% endblock %}
"""

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader({
        "base.html": _BASE, "order.html": _ORDER, "cancel.html": _CANCEL, "field.html": _FIELD,
        "card.html": _CARD_PAGE, "3ds.html": _THREE_DS_PAGE, "message.html": _MESSAGE_PAGE,
    }),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
)


def card_page(*, payment_id: str, merchant: str, description: str, amount_kopecks: int, save_payment_method: bool,
              values: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> str:
    """The card form; ``values`` refills what was typed (never the CVC) after an error."""
    values = values or {}
    kept = {name: values.get(name, "")[:CARD_TYPED_CHARS_MAX if name != "cardholder" else CARDHOLDER_CHARS_MAX]
            for name in ("card_number", "expiry", "cardholder")}
    return _ENV.get_template("card.html").render(
        style=STYLE, payment_id=payment_id, merchant=merchant, description=description,
        amount=rubles(amount_kopecks), last4=None, save_payment_method=save_payment_method,
        values=kept, errors=errors or {},
    )


def three_ds_page(*, payment_id: str, merchant: str, description: str, amount_kopecks: int, last4: str, code: str,
                  error: str | None = None) -> str:
    return _ENV.get_template("3ds.html").render(
        style=STYLE, payment_id=payment_id, merchant=merchant, description=description,
        amount=rubles(amount_kopecks), last4=last4, code=code, error=error,
    )


def message_page(heading: str, text: str) -> str:
    return _ENV.get_template("message.html").render(style=STYLE, heading=heading, text=text)
