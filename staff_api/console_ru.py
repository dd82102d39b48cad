"""What the staff console shows a person, in Russian: names of the API's codes, money, times,
and the API's refusals.

Only names and texts: which codes exist is defined where the API validates them (``schemas``,
``storage.representatives``, ``ledger.codes``, ``staff_api.refusals``); a code without a name here
is shown as it is, a refusal without a text by a generic sentence (``REFUSAL_UNKNOWN``).
"""

from __future__ import annotations

import datetime as dt
import re
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

# What an API refusal means, by status; the page shows the refusal's own text after it
# (``refusal_view``). The console's script gets the same table (base.html), so a page and an
# action say it alike.
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
# refusal is shown by the line above and the text of its code (``REFUSAL``, the operation's
# ``error_code``).
DESK_FAILURES = [
    (r"already bound to account (\d+)", "Эта карта уже привязана к другому ученику (лицевой счёт № {1})."),
    (r"already bound to another account", "Эта карта уже привязана к лицевому счёту другой школы."),
    (r"trusted", "Это карта доверенного лица (представителя): её нельзя привязать ученику."),
    (r"no longer belongs|a temporary card stands only for an active card",
     "Карта, взамен которой выдаётся временная, больше не действует."),
    (r"must differ from the original", "Приложена та же карта, взамен которой выдаётся временная."),
]


# --- the API's refusals, in Russian ------------------------------------------------------------------
#
# A refusal of the staff API carries a code and its parameters (staff_api.refusals: the English
# ``detail`` is for programs and the support desk). The person reads the text below, by the code,
# with the same ``{parameters}``; a page (``refusal_view``) and the script (static/console.js
# ``refusalView``, from CLIENT) make it alike. The English detail is shown only folded away, for
# the support desk (``SUPPORT_SUMMARY``).

REFUSAL = {
    "role_forbidden": "Роль «{role}» не может {action}. Это могут роли: {allowed}.",
    "auditor_read_only": "Аудитор может только просматривать данные, но не изменять их.",
    "foreign_school": "Вы работаете в школе № {own_school_id}, а это данные школы № {school_id}.",
    "city_level_data": "Вы работаете в школе № {own_school_id}, а это данные городского уровня.",
    "bearer_missing": "Не указан ключ доступа. Войдите снова.",
    "token_unknown": "Ключ доступа не действует. Войдите снова или получите новый ключ у оператора.",
    "token_expired": "Срок действия ключа доступа истёк. Новый ключ выдаёт оператор города.",
    "staff_deactivated": "Учётная запись сотрудника «{login}» отключена.",
    "session_invalid": "Сеанс закончился или вы вышли из консоли. Войдите снова.",
    "csrf_missing": "Страница устарела. Обновите её и повторите действие.",
    "install_code_refused": "Режим установки в школе выключен, или код установки неверен либо уже использован.",
    "no_school": "Школы № {school_id} нет.",
    "school_does_not_exist": "Школы № {school_id} нет.",
    "no_pupil": "Ученика с лицевым счётом № {account_id} нет.",
    "no_account": "Лицевого счёта № {account_id} нет.",
    "no_card": "Карты {uid} нет.",
    "no_representative": "Представителя № {representative_id} нет.",
    "no_device": "Устройства № {device_id} нет.",
    "no_staff_login": "Сотрудника с логином «{login}» нет.",
    "no_fire_alarm": "В школе № {school_id} пожарной тревоги ещё не было.",
    "no_desk_reader": "Считывателя «{name}» нет: его нужно сначала зарегистрировать.",
    "desk_no_operation_yet": "На считывателе «{name}» ещё не начинали ни одной операции.",
    "desk_no_operation": "Операции № {operation_id} на считывателе «{name}» нет.",
    "trusted_no_card": "У представителя № {representative_id} нет карты {uid}.",
    "city_role_has_no_school": "Сотрудник с ролью «{role}» работает на уровне города: школу для него не указывают.",
    "role_needs_school": "Для роли «{role}» нужно выбрать школу.",
    "staff_login_exists": "Сотрудник с логином «{login}» уже есть.",
    "staff_deactivated_no_token": "Сотрудник «{login}» отключён: отключённому ключ доступа не выдаётся.",
    "last_operator": "«{login}» — последний действующий оператор. Сначала создайте другого оператора.",
    "school_exists": "Школа № {school_id} уже есть.",
    "no_next_school_id": "Школа № {school_id} уже есть, следующего номера нет: укажите номер школы.",
    "ends_before_starts": "Время окончания должно быть позже времени начала.",
    "unknown_products": "В школе № {school_id} нет товаров с кодами: {codes}.",
    "uid_not_hex": "Номер карты (UID) — от 4 до 16 байт в шестнадцатеричной записи (8–32 символа 0–9, A–F).",
    "not_a_card_uid": "Это не номер карты (UID): нужны 8–32 символа 0–9, A–F.",
    "card_bound_elsewhere": "Карта {uid} уже привязана к лицевому счёту в другой школе.",
    "card_bound_to_account": "Карта {uid} уже привязана к лицевому счёту № {account_id} (карта {status}).",
    "card_trusted_elsewhere": "Карта {uid} — карта доверенного лица: её нельзя привязать ученику.",
    "card_trusted_of": "Карта {uid} — карта доверенного лица (представитель № {representative_id}): "
                       "её нельзя привязать ученику.",
    "card_temporary_active": "Карта {uid} — действующая временная карта: её нужно принять обратно, а не отвязать.",
    "card_blocked_for_good": "Карта {uid} заблокирована навсегда и остаётся в истории.",
    "card_already_blocked": "Карта {uid} уже заблокирована.",
    "temporary_not_replaceable": "Временную карту нельзя заменить другой временной картой.",
    "original_not_active": "Карта {uid} {status}: временная карта выдаётся только взамен действующей.",
    "temporary_same_as_original": "Временная карта должна отличаться от той, взамен которой она выдаётся.",
    "not_temporary": "Карта {uid} — не временная.",
    "temporary_already_returned": "Временная карта {uid} уже возвращена или заблокирована.",
    "desk_name_invalid": "Имя считывателя: от 1 до 64 латинских букв, цифр и знаков «.», «_», «-».",
    "card_left_pupil": "Карта {uid} больше не принадлежит ученику (лицевой счёт № {account_id}).",
    "desk_reader_other_school": "Считыватель «{name}» уже зарегистрирован в школе № {school_id}.",
    "desk_pupil_other_school": "Ученик (лицевой счёт № {pupil_id}) учится в школе № {pupil_school_id}, "
                               "а считыватель «{name}» стоит в школе № {school_id}.",
    "desk_card_not_pupils": "Карта {uid} не принадлежит этому ученику (лицевой счёт № {pupil_id}).",
    "desk_operation_ended": "Операция № {operation_id} на считывателе «{name}» уже завершена: {status}.",
    "desk_operation_expired": "Время ожидания карты на считывателе «{name}» истекло ({ttl_s} с). Начните снова.",
    "desk_nothing_pending": "На считывателе «{name}» сейчас ничего не ждёт карту: карта {uid} не использована.",
    "only_for_issue_temporary": "Это поле нужно только при выдаче временной карты.",
    "only_for_bind_card": "Вид карты указывают только при привязке карты.",
    "required_for_issue_temporary": "Это поле обязательно при выдаче временной карты.",
    "device_kind_invalid": "Неизвестный вид устройства. Допустимо: {kinds}.",
    "device_name_length": "Название: от 1 до {chars_max} символов.",
    "device_id_range": "Номер устройства: от 1 до {device_id_max}.",
    "device_exists": "Устройство № {device_id} уже есть.",
    "device_revoked": "Устройство № {device_id} отозвано.",
    "device_no_next_key": "У устройства № {device_id} нет нового ключа: сначала создайте его.",
    "install_minutes_range": "Режим установки открывают на срок от 1 до {minutes_max} минут.",
    "device_key_invalid": "Ключ устройства: {key_bytes} случайных байт в шестнадцатеричной записи.",
    "idempotency_key_required": "Страница устарела. Обновите её и повторите действие.",
    "too_long_chars": "Слишком длинно: не больше {chars_max} символов.",
    "idempotency_conflict": "Этот запрос уже отправлялся с другими данными. Обновите страницу и повторите.",
    "not_a_pupils_account": "Лицевой счёт № {account_id} — не счёт ученика этой школы.",
    "transfer_same_account": "Счёт получателя должен отличаться от счёта отправителя.",
    "transfer_other_family": "Переводить можно только между детьми одной семьи.",
    "device_not_a_till": "Устройство № {device_id} — не касса столовой.",
    "amount_zero": "Сумма не должна быть нулевой.",
    "day_invalid": "«{day}» — не дата. Нужен формат ГГГГ-ММ-ДД.",
    "preorder_locked": "Предзаказ на {day} ({period}) уже нельзя изменить: это можно было сделать до конца дня "
                       "{last_day}.",
    "range_to_before_from": "Конец периода не может быть раньше начала ({first_day}).",
    "range_too_long": "Период — не больше {days_max} дней от {first_day}.",
    "body_too_large": "Файл слишком большой: не больше {bytes_max} байт.",
    "not_utf8": "Файл не в кодировке UTF-8. Сохраните его как «CSV UTF-8».",
    "csv_row_errors": "Ошибок в файле: {count}. Ничего не импортировано.",
    "nothing_to_change": "Нечего менять: ни одно поле не изменено.",
    "cashier_note_too_long": "Заметка для кассира слишком длинная: не больше {bytes_max} байт (сейчас {bytes_given}).",
    "line_break": "Без переносов строки.",
    "phone_taken": "Телефон {phone} уже указан у представителя № {representative_id} ученика "
                   "(лицевой счёт № {account_id}).",
    "one_school_per_application": "В одном заявлении — только ученики одной школы.",
    "representatives_full": "У ученика уже {per_pupil_max} представителей: сначала удалите одного.",
    "consent_required": "Без согласия на обработку персональных данных заявление не регистрируется.",
    "consent_date_future": "Дата согласия {consent_date} ещё не наступила (сегодня в школе {today}).",
    "representative_removed": "Представитель № {representative_id} удалён: запись хранится, но больше не меняется.",
    "representative_not_active": "Представитель № {representative_id} {status}: приостановить можно только "
                                 "действующего.",
    "representative_not_suspended": "Представитель № {representative_id} {status}: возобновить можно только "
                                    "приостановленного.",
    "trusted_rep_not_active": "Представитель № {representative_id} {status}: карты выдаются только действующему.",
    "trusted_pupils_card": "Карта {uid} — карта ученика. Доверенному лицу нужна своя карта.",
    "trusted_card_taken_by_rep": "Карта {uid} уже выдана представителю № {representative_id}.",
    "trusted_card_taken": "Карта {uid} уже выдана другому доверенному лицу.",
    "trusted_cards_full": "У представителя № {representative_id} уже {count} карт (не больше {cards_max}): "
                          "сначала заберите одну.",
    "at_least_one_channel": "Выберите хотя бы один способ уведомления.",
    "unknown_channel": "Неизвестный способ уведомления.",
    "at_least_one_kind": "Выберите хотя бы одно событие для уведомлений.",
    "unknown_kind": "Неизвестный вид события.",
    "email_required": "Для уведомлений по электронной почте укажите адрес.",
    "not_a_meal_period": "В школе № {school_id} нет такого приёма пищи. Есть: {periods}.",
    "preorder_items_max": "Не больше {items_max} строк.",
    "unknown_product": "В школе № {school_id} нет товара с кодом {product_code}.",
    "product_twice": "Товар {product_code} указан дважды.",
    "quantity_range": "Количество: от 1 до {quantity_max}.",
    "preorder_lines_max": "Не больше {lines_max} строк предзаказа на ученика в день (все приёмы пищи вместе); "
                          "на {day} было бы {total}.",
    "concurrent_change": "Одновременно с вами эти данные изменил кто-то другой. Обновите страницу и проверьте.",
    "value_not_storable": "Значение не может быть сохранено.",
}

# How a parameter's value is named in Russian (a code's name; a list: each, joined). A key
# "<code>.<param>" applies to that refusal only, before the plain "<param>". A parameter whose name
# ends in "_kopecks" is money: shown in rubles.
DESK_OPERATION_STATUS = {"pending": "ожидает карту", "done": "выполнена", "failed": "не выполнена",
                         "expired": "время ожидания истекло", "cancelled": "отменена"}
DESK_ACTION = {"bind_card": "привязка карты", "issue_temporary": "выдача временной карты"}
# What a role may not do (the role check's ``action``, staff_api.auth.Principal.require), as the
# refusal says it after "не может". Every action the API checks has its phrase here (a test reads
# them from the code).
ACTION = {
    "bind cards": "привязывать карты",
    "block cards": "блокировать карты",
    "cancel desk reader operations": "отменять операции на считывателях",
    "change a school policy": "менять правила школы",
    "change meal periods": "менять периоды питания",
    "change menus": "менять меню",
    "change pre-orders": "менять предзаказы",
    "change products": "менять товары",
    "change pupils": "менять данные учеников",
    "change representatives": "менять данные представителей",
    "close install mode": "выключать режим установки",
    "correct balances": "исправлять балансы",
    "create schools": "создавать школы",
    "create staff": "создавать учётные записи сотрудников",
    "deactivate staff": "отключать сотрудников",
    "enrol pupils": "зачислять учеников",
    "give trusted cards": "выдавать карты доверенным лицам",
    "import pupils": "загружать списки учеников",
    "issue temporary cards": "выдавать временные карты",
    "issue tokens for other staff": "выдавать ключи доступа другим сотрудникам",
    "list staff": "просматривать список сотрудников",
    "open install mode": "включать режим установки",
    "present cards on desk readers": "прикладывать карты к считывателям",
    "promote device keys": "вводить в действие новые ключи устройств",
    "raise or reset a fire alarm": "объявлять и снимать пожарную тревогу",
    "read a school's access log": "просматривать журнал проходов школы",
    "read a school's fire alarm": "просматривать пожарную тревогу школы",
    "read deliveries": "просматривать доставку уведомлений",
    "read desk reader operations": "просматривать операции на считывателях",
    "read desk readers": "просматривать считыватели",
    "read representatives": "просматривать представителей",
    "read the audit log": "просматривать журнал действий",
    "read the daily report": "просматривать дневной отчёт",
    "read the dead letters": "просматривать недоставленные уведомления",
    "read trusted cards": "просматривать карты доверенных лиц",
    "reconcile a school's presence": "сверять, кто находится в школе",
    "refund purchases": "оформлять возвраты покупок",
    "register desk readers": "регистрировать считыватели",
    "register devices": "регистрировать устройства",
    "register representatives": "регистрировать представителей",
    "remove representatives": "удалять представителей",
    "resume representatives": "возобновлять доступ представителей",
    "retire device keys": "выводить из действия ключи устройств",
    "revoke devices": "отзывать устройства",
    "rotate device keys": "менять ключи устройств",
    "see the schools and the staff": "просматривать школы и сотрудников",
    "see who is inside a school": "смотреть, кто находится в школе",
    "set parent controls": "устанавливать ограничения родителей",
    "start desk reader operations": "начинать операции на считывателях",
    "suspend representatives": "приостанавливать доступ представителей",
    "take back temporary cards": "принимать обратно временные карты",
    "take cash top-ups": "принимать пополнения наличными",
    "take trusted cards back": "забирать карты доверенных лиц",
    "transfer money": "переводить деньги",
    "unbind cards": "отвязывать карты",
}

PARAM_NAMES: dict[str, dict] = {
    "role": ROLE,
    "allowed": ROLE,
    "period": PERIOD,
    "periods": PERIOD,
    "channels": CHANNEL,
    "card_bound_to_account.status": CARD_STATUS,
    "original_not_active.status": CARD_STATUS,
    "representative_not_active.status": REPRESENTATIVE_STATUS,
    "representative_not_suspended.status": REPRESENTATIVE_STATUS,
    "trusted_rep_not_active.status": REPRESENTATIVE_STATUS,
    "desk_operation_ended.status": DESK_OPERATION_STATUS,
    "desk_operation_expired.action": DESK_ACTION,
    "role_forbidden.action": ACTION,
}

# Messages with no code: msgspec's and Litestar's validation, the strict input rule's
# (parents_api.hardening), storage's, the CSV import's rows. Regular expressions (valid in Python
# and in JavaScript), the first that matches; ``{1}``, ``{2}`` are its groups.
VALIDATION = [
    (r"^Expected `[^`]+`, got `null`", "Значение обязательно."),
    (r"^Expected `int(?: \| null)?`, got `", "Нужно целое число."),
    (r"^Expected `(?:float|number)(?: \| null)?`, got `", "Нужно число."),
    (r"^Expected `str(?: \| null)?`, got `", "Нужен текст."),
    (r"^Expected `bool(?: \| null)?`, got `", "Нужно «да» или «нет»."),
    (r"^Expected `array(?: \| null)?`, got `", "Нужен список значений."),
    (r"^Expected `[^`]+`, got `", "Значение неподходящего вида."),
    (r"^Expected `(?:int|float)` >= (-?[0-9.]+)", "Не меньше {1}."),
    (r"^Expected `(?:int|float)` > (-?[0-9.]+)", "Больше {1}."),
    (r"^Expected `(?:int|float)` <= (-?[0-9.]+)", "Не больше {1}."),
    (r"^Expected `(?:int|float)` < (-?[0-9.]+)", "Меньше {1}."),
    (r"^Expected `(?:int|float)` that's a multiple of ([0-9.]+)", "Значение должно быть кратно {1}."),
    (r"^Expected `str` of length >= 1\b", "Поле не должно быть пустым."),
    (r"^Expected `str` of length >= ([0-9]+)", "Слишком коротко: не меньше {1} символов."),
    (r"^Expected `str` of length <= ([0-9]+)", "Слишком длинно: не больше {1} символов."),
    (r"^Expected `str` matching regex", "Значение записано в неверном виде."),
    (r"^Expected `(?:array|object)` of length >= ([0-9]+)", "Нужно выбрать или указать хотя бы {1}."),
    (r"^Expected `(?:array|object)` of length <= ([0-9]+)", "Не больше {1} значений."),
    (r"^Expected `object`", "Запрос неверного вида: обновите страницу и повторите."),
    (r"^Invalid enum value '([^']*)'", "Недопустимое значение «{1}»: выберите из списка."),
    (r"^Invalid RFC3339 encoded date$", "Неверная дата: нужен формат ГГГГ-ММ-ДД."),
    (r"^Invalid RFC3339 encoded", "Неверные дата или время."),
    (r"^Invalid (?:UUID|base64)", "Значение записано в неверном виде."),
    (r"^Object missing required field", "Обязательное поле не заполнено."),
    (r"^Object contains unknown field", "Лишнее поле в запросе: обновите страницу и повторите."),
    (r"^[Mm]issing required", "Обязательное поле не заполнено."),
    (r"^must be between (-?[0-9]+) and (-?[0-9]+)", "Число вне допустимого: от {1} до {2}."),
    (r"^must not contain control characters, line breaks or bidi overrides",
     "Текст содержит недопустимые символы (перенос строки, управляющие или невидимые знаки)."),
    (r"^must not be empty or only white space", "Поле не должно быть пустым."),
    (r"^not a JSON document", "Запрос повреждён: обновите страницу и повторите."),
    (r"^body: a value cannot be stored", "Значение не может быть сохранено."),
    # the CSV import's rows (staff_api.pupils.parse_csv)
    (r"^required$", "Обязательное поле не заполнено."),
    (r"^longer than ([0-9]+) characters", "Слишком длинно: не больше {1} символов."),
    (r"^must be an integer 0\.\.11$", "Класс — целое число от 0 до 11."),
    (r"^duplicate of line ([0-9]+) in this file", "Повторяет строку {1} этого файла."),
    (r"^one of service_card,", "Неизвестный вид карты."),
    (r"^card ([0-9a-f]+) is already bound to account ([0-9]+)", "Карта {1} уже привязана к лицевому счёту № {2}."),
    (r"^card ([0-9a-f]+) is already bound to another account", "Карта {1} уже привязана к счёту в другой школе."),
    (r"^no rows$", "В файле нет ни одного ученика."),
    (r"^empty file$", "Файл пустой."),
    (r"^missing columns: (.*)$", "Не хватает столбцов: {1}."),
    (r"^more than ([0-9]+) rows", "Больше {1} строк: разделите файл."),
    (r"^not a CSV file", "Это не файл CSV."),
]

# When nothing here names the refusal: the page says so in Russian, and the English detail goes
# to the support desk, folded away.
REFUSAL_UNKNOWN = ("Сервер отказал. Причина — в подробностях ниже, на английском: "
                   "если непонятно, что делать, передайте их в службу поддержки.")
ITEM_UNKNOWN = "Значение не принято (подробности ниже, для службы поддержки)."
SUPPORT_SUMMARY = "Подробности для службы поддержки"
# The API's field names on the pages that show a 422 themselves (the actions' forms name theirs
# with data-label).
FIELD = {"name": "Фамилия, имя", "day": "День", "account_id": "Лицевой счёт"}


def _param_text(code: str, name: str, value: object) -> str:
    names = PARAM_NAMES.get(f"{code}.{name}") or PARAM_NAMES.get(name) or {}
    if name.endswith("_kopecks") and isinstance(value, int):
        return rubles(value)
    if isinstance(value, list):
        return ", ".join(str(names.get(v, v)) for v in value)
    if isinstance(value, str) and names and ", " in value and value not in names:  # a list the text joined
        return ", ".join(str(names.get(v, v)) for v in value.split(", "))
    return str(names.get(value, value)) if isinstance(value, (str, int)) or value is None else str(value)


def fill(template: str, values: dict) -> str:
    """``{name}`` replaced by ``values[name]``; an unknown name stays as it is."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def refusal_text(code: object, params: object) -> str:
    """The Russian text of a refusal code with its parameters, or '' for a code without one."""
    template = REFUSAL.get(code) if isinstance(code, str) else None
    if template is None:
        return ""
    params = params if isinstance(params, dict) else {}
    return fill(template, {k: _param_text(code, k, v) for k, v in params.items()})  # type: ignore[arg-type]


def validation_text(message: str) -> str:
    """A validation message without a code, in Russian (VALIDATION), or ''."""
    for pattern, template in VALIDATION:
        m = re.search(pattern, message)
        if m is not None:
            return fill(template, {str(i): g or "" for i, g in enumerate(m.groups(), 1)})
    return ""


def refusal_view(status: int, body: object, labels: dict[str, str] | None = None) -> dict:
    """What a page shows of a refused API answer: the status line, the Russian text (or, for a
    422, one line per field), and the English detail for the support desk only.
    The script's ``refusalView`` (static/console.js) is this function again, from CLIENT."""
    body = body if isinstance(body, dict) else {"detail": str(body or "")}
    labels = {**FIELD, **(labels or {})}
    detail = str(body.get("detail") or "")
    view: dict = {"status": status, "title": STATUS_TITLE.get(status, STATUS_TITLE[500]), "text": "",
                  "items": [], "support": detail, "field": str(body.get("field") or "")}
    errors = body.get("errors") if isinstance(body.get("errors"), list) else []
    if status == 422 and errors:
        for e in errors:
            if not isinstance(e, dict):
                continue
            message = str(e.get("message") or "")
            field = str(e.get("field") or "")
            base = re.sub(r"\[\d+\]", "", field)
            view["items"].append({"field": field, "label": labels.get(base, ""),
                                  "text": refusal_text(e.get("code"), e.get("params")) or validation_text(message)
                                  or ITEM_UNKNOWN})
        return view
    reason = body.get("reason")
    if status == 409 and isinstance(reason, str) and reason in COMMAND_REFUSAL:
        params = (body.get("result") or {}).get("params") or []
        limit = rubles(params[1]) if len(params) > 1 and isinstance(params[1], int) else ""
        view["text"] = COMMAND_REFUSAL[reason].replace("{max}", limit)
        return view
    view["text"] = refusal_text(body.get("code"), body.get("params")) or REFUSAL_UNKNOWN
    return view
