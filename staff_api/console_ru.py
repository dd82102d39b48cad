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
# the daily report's money lines (storage.reports.MoneyLine.kind)
MONEY_LINE = {"refund": "возврат", "correction": "корректировка", "desk_cash": "наличные в канцелярии"}
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
    "cash_taken": "Наличные зачислены на лицевой счёт; родители получат уведомление.",
    # 202: queued, the gateway has not decided yet (it will, once: the same key)
    "cash_pending": "Пополнение принято и будет зачислено, как только сервер его подтвердит. Баланс обновится позже.",
}
# A refused money command (409), by the gateway's reason (protocol.DenyReason names): what the
# person at the desk reads instead of the API's English detail. "{max}" is the command's limit
# (its second parameter), in rubles.
COMMAND_REFUSAL = {
    "AMOUNT_INVALID": "Неверная сумма: больше нуля и не больше {max}.",
    "INSUFFICIENT_FUNDS": "Недостаточно средств на лицевом счёте.",
    "ACCOUNT_BLOCKED": "Лицевой счёт заблокирован: деньги на него не зачисляются.",
    "UNKNOWN_ACCOUNT": "Такого лицевого счёта ученика нет.",
    "NOT_SAME_FAMILY": "Переводить можно только между детьми одной семьи.",
    "UNKNOWN_ORIGINAL": "Такой покупки нет.",
    "REFUND_EXCEEDS": "Сумма возврата больше, чем осталось вернуть по этой покупке ({max}).",
    "MALFORMED": "Запрос не принят: обратитесь в поддержку.",
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


# The desk reader on the pupil's page (staff_api/desk.py; static/console.js deskFlow): what the
# waiting panel says, by the operation's end. ``{reader}`` is the reader's name.
DESK = {
    "starting": "Готовим считыватель «{reader}»…",
    "waiting": "Приложите карту к считывателю «{reader}».",
    "bind_failed": "Карта не привязана.",
    "temporary_failed": "Временная карта не выдана.",
    "expired": "Время ожидания истекло: карту не приложили к считывателю. Начните снова.",
    "cancelled": "Отменено: карту не ждём.",
    "superseded": "Ожидание прервано: на считывателе «{reader}» начали другую операцию.",
    "lost": "Нет связи с сервером, результат неизвестен. Обновите страницу и проверьте карты ученика.",
    "same_pupil": "Эта карта уже привязана к этому ученику.",
}
# Why the card rules refused a presented card: the API's detail (staff_api.cards_core, in English)
# matched by a regular expression, the first that matches; ``{1}`` is its first group. Any other
# refusal is shown by the line above alone, with the API's detail beside it.
DESK_FAILURES = [
    (r"already bound to account (\d+)", "Эта карта уже привязана к другому ученику (лицевой счёт № {1})."),
    (r"already bound to another account", "Эта карта уже привязана к лицевому счёту другой школы."),
    (r"trusted", "Это карта доверенного лица (представителя): её нельзя привязать ученику."),
    (r"no longer belongs|a temporary card stands only for an active card",
     "Карта, взамен которой выдаётся временная, больше не действует."),
    (r"must differ from the original", "Приложена та же карта, взамен которой выдаётся временная."),
]
