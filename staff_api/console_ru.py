"""What the staff console shows a person, in Russian: names of the API's codes, money, times.

Only names: which codes exist is defined where the API validates them (``schemas``,
``storage.representatives``, ``ledger.codes``); a code without a name here is shown as it is.
"""

from __future__ import annotations

import datetime as dt
from typing import get_args

from storage.representatives import CHANNELS, KINDS, RELATIONS

from .schemas import CardKind, FreeMealCategory, TemporaryReason

ROLE = {
    "operator": "оператор города",
    "officer": "ответственный сотрудник школы",
    "cashier": "кассир столовой",
    "auditor": "аудитор",
}
CARD_KIND = {
    "service_card": "сервисная карта",
    "social_card": "социальная карта",
    "bracelet": "браслет",
    "fob": "брелок",
    "muscovite_card": "карта москвича",
    "temporary": "временная карта",
}
CARD_STATUS = {"active": "действует", "blocked": "заблокирована", "suspended": "приостановлена"}
ACCOUNT_STATUS = {"active": "действует", "blocked": "заблокирован"}
TEMPORARY_REASON = {"forgotten": "забыта дома", "lost": "потеряна", "broken": "сломана"}
FREE_MEAL = {
    None: "платное питание",
    "grades_1_4": "1–4 классы",
    "large_family": "многодетная семья",
    "low_income": "малоимущая семья",
    "orphan": "сирота",
    "disability": "ребёнок с инвалидностью или ОВЗ",
}
# as the notifier says them (notifier/templates/relations.txt)
RELATION = {"parent": "родитель", "grandmother": "бабушка", "grandfather": "дедушка", "nanny": "няня",
            "guardian": "опекун", "other": "доверенное лицо"}
CHANNEL = {"portal": "личный кабинет", "sms": "SMS", "ussd": "USSD", "app_push": "уведомления в приложении",
           "tv_push": "уведомления на телевизоре", "email": "электронная почта"}
KIND = {
    "entry": "вход в школу",
    "exit": "выход из школы",
    "purchase": "покупки в столовой",
    "cash_topup": "пополнение наличными",
    "bank_topup": "пополнение с банковской карты",
    "low_balance": "низкий баланс",
    "temporary_card_issued": "выдача временной карты",
    "temporary_card_returned": "возврат временной карты",
    "card_blocked": "блокировка карты",
}
REPRESENTATIVE_STATUS = {"active": "действует", "suspended": "приостановлен", "removed": "удалён"}
ALLERGEN = {
    "celery": "сельдерей", "gluten": "глютен", "crustaceans": "ракообразные", "eggs": "яйца", "fish": "рыба",
    "lupin": "люпин", "milk": "молоко", "molluscs": "моллюски", "mustard": "горчица", "tree_nuts": "орехи",
    "peanuts": "арахис", "sesame": "кунжут", "soybeans": "соя", "sulphites": "сульфиты",
}
DIET = {"vegetarian": "вегетарианское", "vegan": "веганское", "halal": "халяль", "kosher": "кошерное"}
PERIOD = {"breakfast": "завтрак", "lunch": "обед", "snack": "полдник"}

# The choices the forms offer, in the API's order: (code, name).
CARD_KINDS = [(k, CARD_KIND.get(k, k)) for k in get_args(CardKind)]
TEMPORARY_REASONS = [(r, TEMPORARY_REASON.get(r, r)) for r in get_args(TemporaryReason)]
FREE_MEALS = [(c, FREE_MEAL.get(c, c)) for c in (None, *get_args(FreeMealCategory))]
RELATIONS_RU = [(r, RELATION.get(r, r)) for r in RELATIONS]
CHANNELS_RU = [(c, CHANNEL.get(c, c)) for c in CHANNELS]
KINDS_RU = [(k, KIND.get(k, k)) for k in KINDS]

# What an API refusal means, by status; the page shows it with the API's own detail beside it.
# The console's script gets the same table (base.html), so a page and an action say it alike.
STATUS_TITLE = {
    400: "Запрос не принят.",
    401: "Сеанс закончился или недействителен. Войдите снова.",
    403: "Недостаточно прав для этого действия.",
    404: "Не найдено.",
    409: "Действие невозможно в текущем состоянии.",
    413: "Слишком большой запрос.",
    422: "Проверьте введённые данные.",
    429: "Слишком много попыток. Подождите и попробуйте снова.",
    500: "Ошибка на сервере. Попробуйте позже или сообщите в поддержку.",
    0: "Нет связи с сервером. Проверьте сеть и попробуйте снова.",
}

# The messages after an action succeeded (the page reloads with ?done=<key>).
DONE = {
    "enrolled": "Ученик зачислен.",
    "card_bound": "Карта привязана.",
    "card_unbound": "Карта отвязана.",
    "card_blocked": "Карта заблокирована.",
    "temporary_issued": "Временная карта выдана.",
    "temporary_returned": "Временная карта принята.",
    "application": "Заявление зарегистрировано.",
    "school_created": "Школа создана.",
    "staff_deactivated": "Сотрудник отключён: его ключ и сеансы больше не действуют.",
}

MS_PER_MINUTE = 60_000


def rubles(kopecks: int | None) -> str:
    """1234567 -> '12 345,67 ₽' (a no-break space between thousands and before the sign)."""
    if kopecks is None:
        return "—"
    sign = "−" if kopecks < 0 else ""
    whole, part = divmod(abs(kopecks), 100)
    return f"{sign}{whole:,}".replace(",", "\u00a0") + f",{part:02d}\u00a0₽"


def local_time(at_ms: int | None, utc_offset_minutes: int, *, date: bool = True) -> str:
    """Unix ms as the school's wall clock: '01.09.2026 10:00' (or '10:00')."""
    if at_ms is None:
        return "—"
    local = dt.datetime.fromtimestamp(at_ms / 1000, dt.timezone(dt.timedelta(minutes=utc_offset_minutes)))
    return local.strftime("%d.%m.%Y %H:%M" if date else "%H:%M")


def class_label(grade: int, class_name: str) -> str:
    if class_name:
        return class_name
    return "подготовительный" if grade == 0 else f"{grade} класс"


def names(mapping: dict, codes: list, empty: str = "—") -> str:
    """The codes' names, in the order given, or ``empty``."""
    return ", ".join(str(mapping.get(c, c)) for c in codes) if codes else empty
