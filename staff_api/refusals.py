"""Every refusal the staff API gives of its own: one code each, with its English detail.

A refusal's JSON body carries the code and its parameters next to the English ``detail``
(``{"status_code": 409, "detail": "device 7 is revoked", "code": "device_revoked",
"params": {"device_id": 7}}``): programs read ``code``, people read a text made from it in their
language (the console's Russian: ``console_ru.REFUSAL``, same parameter names). The English
templates here are the one definition of the ``detail`` texts; a 422's template is the message
after ``"<field>: "``.

Raise through ``errors.refuse`` / ``errors.invalid`` (a test checks that no refusal in the
package is raised with a literal text). A text that comes from elsewhere (storage's own
messages, the hardening's path ids) is matched back to its code by ``recognise`` when it is one
of these templates.
"""

from __future__ import annotations

import re
import string
from enum import StrEnum
from typing import Any


class Refusal(StrEnum):
    # who may act
    ROLE_FORBIDDEN = "role_forbidden"
    AUDITOR_READ_ONLY = "auditor_read_only"
    FOREIGN_SCHOOL = "foreign_school"
    CITY_LEVEL_DATA = "city_level_data"
    BEARER_MISSING = "bearer_missing"
    TOKEN_UNKNOWN = "token_unknown"
    TOKEN_EXPIRED = "token_expired"
    STAFF_DEACTIVATED = "staff_deactivated"
    SESSION_INVALID = "session_invalid"
    CSRF_MISSING = "csrf_missing"
    INSTALL_CODE_REFUSED = "install_code_refused"
    # what does not exist
    NO_SCHOOL = "no_school"
    SCHOOL_DOES_NOT_EXIST = "school_does_not_exist"
    NO_PUPIL = "no_pupil"
    NO_ACCOUNT = "no_account"
    NO_CARD = "no_card"
    NO_REPRESENTATIVE = "no_representative"
    NO_DEVICE = "no_device"
    NO_STAFF_LOGIN = "no_staff_login"
    NO_FIRE_ALARM = "no_fire_alarm"
    NO_DESK_READER = "no_desk_reader"
    DESK_NO_OPERATION_YET = "desk_no_operation_yet"
    DESK_NO_OPERATION = "desk_no_operation"
    TRUSTED_NO_CARD = "trusted_no_card"
    # staff and schools
    CITY_ROLE_HAS_NO_SCHOOL = "city_role_has_no_school"
    ROLE_NEEDS_SCHOOL = "role_needs_school"
    STAFF_LOGIN_EXISTS = "staff_login_exists"
    STAFF_DEACTIVATED_NO_TOKEN = "staff_deactivated_no_token"
    LAST_OPERATOR = "last_operator"
    SCHOOL_EXISTS = "school_exists"
    NO_NEXT_SCHOOL_ID = "no_next_school_id"
    ENDS_BEFORE_STARTS = "ends_before_starts"
    UNKNOWN_PRODUCTS = "unknown_products"
    # cards
    UID_NOT_HEX = "uid_not_hex"
    NOT_A_CARD_UID = "not_a_card_uid"
    CARD_BOUND_ELSEWHERE = "card_bound_elsewhere"
    CARD_BOUND_TO_ACCOUNT = "card_bound_to_account"
    CARD_TRUSTED_ELSEWHERE = "card_trusted_elsewhere"
    CARD_TRUSTED_OF = "card_trusted_of"
    CARD_TEMPORARY_ACTIVE = "card_temporary_active"
    CARD_BLOCKED_FOR_GOOD = "card_blocked_for_good"
    CARD_ALREADY_BLOCKED = "card_already_blocked"
    TEMPORARY_NOT_REPLACEABLE = "temporary_not_replaceable"
    ORIGINAL_NOT_ACTIVE = "original_not_active"
    TEMPORARY_SAME_AS_ORIGINAL = "temporary_same_as_original"
    NOT_TEMPORARY = "not_temporary"
    TEMPORARY_ALREADY_RETURNED = "temporary_already_returned"
    # desk readers
    DESK_NAME_INVALID = "desk_name_invalid"
    CARD_LEFT_PUPIL = "card_left_pupil"
    DESK_READER_OTHER_SCHOOL = "desk_reader_other_school"
    DESK_PUPIL_OTHER_SCHOOL = "desk_pupil_other_school"
    DESK_CARD_NOT_PUPILS = "desk_card_not_pupils"
    DESK_OPERATION_ENDED = "desk_operation_ended"
    DESK_OPERATION_EXPIRED = "desk_operation_expired"
    DESK_NOTHING_PENDING = "desk_nothing_pending"
    ONLY_FOR_ISSUE_TEMPORARY = "only_for_issue_temporary"
    ONLY_FOR_BIND_CARD = "only_for_bind_card"
    REQUIRED_FOR_ISSUE_TEMPORARY = "required_for_issue_temporary"
    # devices
    DEVICE_KIND_INVALID = "device_kind_invalid"
    DEVICE_NAME_LENGTH = "device_name_length"
    DEVICE_ID_RANGE = "device_id_range"
    DEVICE_EXISTS = "device_exists"
    DEVICE_REVOKED = "device_revoked"
    DEVICE_NO_NEXT_KEY = "device_no_next_key"
    INSTALL_MINUTES_RANGE = "install_minutes_range"
    DEVICE_KEY_INVALID = "device_key_invalid"
    # money
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    TOO_LONG_CHARS = "too_long_chars"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    NOT_A_PUPILS_ACCOUNT = "not_a_pupils_account"
    TRANSFER_SAME_ACCOUNT = "transfer_same_account"
    TRANSFER_OTHER_FAMILY = "transfer_other_family"
    DEVICE_NOT_A_TILL = "device_not_a_till"
    AMOUNT_ZERO = "amount_zero"
    # pupils, pre-orders, reports
    DAY_INVALID = "day_invalid"
    PREORDER_LOCKED = "preorder_locked"
    RANGE_TO_BEFORE_FROM = "range_to_before_from"
    RANGE_TOO_LONG = "range_too_long"
    BODY_TOO_LARGE = "body_too_large"
    NOT_UTF8 = "not_utf8"
    CSV_ROW_ERRORS = "csv_row_errors"
    NOTHING_TO_CHANGE = "nothing_to_change"
    CASHIER_NOTE_TOO_LONG = "cashier_note_too_long"
    # representatives and trusted cards
    LINE_BREAK = "line_break"
    PHONE_TAKEN = "phone_taken"
    ONE_SCHOOL_PER_APPLICATION = "one_school_per_application"
    REPRESENTATIVES_FULL = "representatives_full"
    CONSENT_REQUIRED = "consent_required"
    CONSENT_DATE_FUTURE = "consent_date_future"
    REPRESENTATIVE_REMOVED = "representative_removed"
    REPRESENTATIVE_NOT_ACTIVE = "representative_not_active"
    REPRESENTATIVE_NOT_SUSPENDED = "representative_not_suspended"
    TRUSTED_REP_NOT_ACTIVE = "trusted_rep_not_active"
    TRUSTED_PUPILS_CARD = "trusted_pupils_card"
    TRUSTED_CARD_TAKEN_BY_REP = "trusted_card_taken_by_rep"
    TRUSTED_CARD_TAKEN = "trusted_card_taken"
    TRUSTED_CARDS_FULL = "trusted_cards_full"
    # storage's own refusals, passed on by the endpoints (storage.representatives, storage.preorders)
    AT_LEAST_ONE_CHANNEL = "at_least_one_channel"
    UNKNOWN_CHANNEL = "unknown_channel"
    AT_LEAST_ONE_KIND = "at_least_one_kind"
    UNKNOWN_KIND = "unknown_kind"
    EMAIL_REQUIRED = "email_required"
    NOT_A_MEAL_PERIOD = "not_a_meal_period"
    PREORDER_ITEMS_MAX = "preorder_items_max"
    UNKNOWN_PRODUCT = "unknown_product"
    PRODUCT_TWICE = "product_twice"
    QUANTITY_RANGE = "quantity_range"
    PREORDER_LINES_MAX = "preorder_lines_max"
    # the database's last word
    CONCURRENT_CHANGE = "concurrent_change"
    VALUE_NOT_STORABLE = "value_not_storable"

    @property
    def english(self) -> str:
        return ENGLISH[self]

    def detail(self, **params: Any) -> str:
        """The English text, as the API has always written it (a list parameter: ``a, b``)."""
        return ENGLISH[self].format(**{k: _english_value(v) for k, v in params.items()})


def _english_value(value: Any) -> Any:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


R = Refusal
ENGLISH: dict[Refusal, str] = {
    R.ROLE_FORBIDDEN: "role {role!r} may not {action}; allowed: {allowed}",
    R.AUDITOR_READ_ONLY: "role 'auditor' is read-only",
    R.FOREIGN_SCHOOL: "{role} {login!r} is bound to school {own_school_id}; {what} belongs to school {school_id}",
    R.CITY_LEVEL_DATA: "{role} {login!r} is bound to school {own_school_id}; {what} belongs to city-level data",
    R.BEARER_MISSING: "missing bearer token: send 'Authorization: Bearer <token>'",
    R.TOKEN_UNKNOWN: "unknown token",
    R.TOKEN_EXPIRED: "token expired (at {expired_at_ms} ms): an operator issues a new one (POST /staff/{login}/token)",
    R.STAFF_DEACTIVATED: "staff member {login!r} is deactivated",
    R.SESSION_INVALID: "console session unknown, expired or signed out: sign in again at /console/signin",
    R.CSRF_MISSING: "a console session's {method} needs the {header} header equal to the {cookie} cookie",
    R.INSTALL_CODE_REFUSED: "install mode is off for this school, or the code is wrong or used",
    R.NO_SCHOOL: "no school {school_id}",
    R.SCHOOL_DOES_NOT_EXIST: "school {school_id} does not exist",
    R.NO_PUPIL: "no pupil with account {account_id}",
    R.NO_ACCOUNT: "no account {account_id}",
    R.NO_CARD: "no card {uid}",
    R.NO_REPRESENTATIVE: "no representative {representative_id}",
    R.NO_DEVICE: "device {device_id} does not exist",
    R.NO_STAFF_LOGIN: "no staff login {login!r}",
    R.NO_FIRE_ALARM: "school {school_id} has had no fire alarm",
    R.NO_DESK_READER: "no desk reader {name!r}: register it with PUT /desk-readers/{name}",
    R.DESK_NO_OPERATION_YET: "desk reader {name!r} has had no operation yet",
    R.DESK_NO_OPERATION: "no operation {operation_id} on desk reader {name!r}",
    R.TRUSTED_NO_CARD: "representative {representative_id} has no card {uid}",
    R.CITY_ROLE_HAS_NO_SCHOOL: "a city-level {role} is not bound to a school",
    R.ROLE_NEEDS_SCHOOL: "role {role} needs a school",
    R.STAFF_LOGIN_EXISTS: "staff login {login!r} exists",
    R.STAFF_DEACTIVATED_NO_TOKEN: "staff member {login!r} is deactivated: a deactivated member gets no token",
    R.LAST_OPERATOR: "{login!r} is the last active operator: create another operator first",
    R.SCHOOL_EXISTS: "school {school_id} exists",
    R.NO_NEXT_SCHOOL_ID: "school {school_id} exists, so there is no next number: give an id",
    R.ENDS_BEFORE_STARTS: "must be after starts_minute",
    R.UNKNOWN_PRODUCTS: "unknown product codes of school {school_id}: [{codes}]",
    R.UID_NOT_HEX: "must be 4..16 bytes as hex",
    R.NOT_A_CARD_UID: "not a card UID",
    R.CARD_BOUND_ELSEWHERE: "{field}: card {uid} is already bound to another account",
    R.CARD_BOUND_TO_ACCOUNT: "{field}: card {uid} is already bound to account {account_id} ({status})",
    R.CARD_TRUSTED_ELSEWHERE: "{field}: card {uid} is a trusted person's card",
    R.CARD_TRUSTED_OF: "{field}: card {uid} is the trusted card of representative {representative_id}",
    R.CARD_TEMPORARY_ACTIVE: "card {uid} is an active temporary card: return it instead",
    R.CARD_BLOCKED_FOR_GOOD: "card {uid} is blocked for good and stays on record",
    R.CARD_ALREADY_BLOCKED: "card {uid} is already blocked",
    R.TEMPORARY_NOT_REPLACEABLE: "a temporary card cannot itself be replaced by a temporary card",
    R.ORIGINAL_NOT_ACTIVE: "card {uid} is {status}; a temporary card stands only for an active card",
    R.TEMPORARY_SAME_AS_ORIGINAL: "must differ from the original card",
    R.NOT_TEMPORARY: "card {uid} is not a temporary card",
    R.TEMPORARY_ALREADY_RETURNED: "temporary card {uid} was already returned or blocked",
    R.DESK_NAME_INVALID: "must be 1..64 of [A-Za-z0-9._-]",
    R.CARD_LEFT_PUPIL: "card {uid} no longer belongs to pupil {account_id}",
    R.DESK_READER_OTHER_SCHOOL: "desk reader {name!r} is registered to school {school_id}",
    R.DESK_PUPIL_OTHER_SCHOOL: "pupil {pupil_id} belongs to school {pupil_school_id}; desk reader {name!r} to school "
                               "{school_id}",
    R.DESK_CARD_NOT_PUPILS: "card {uid} is not pupil {pupil_id}'s",
    R.DESK_OPERATION_ENDED: "operation {operation_id} on desk reader {name!r} has already ended: {status}",
    R.DESK_OPERATION_EXPIRED: "the pending operation {operation_id} on desk reader {name!r} ({action} for pupil "
                              "{account_id}) expired at {expired_at_ms} ms, {ttl_s} s after it started: start it again",
    R.DESK_NOTHING_PENDING: "no pending operation on desk reader {name!r}: card {uid} was not used (an officer starts "
                            "one with POST /desk-readers/{name}/operation)",
    R.ONLY_FOR_ISSUE_TEMPORARY: "only for action issue_temporary",
    R.ONLY_FOR_BIND_CARD: "only for action bind_card (a temporary card's kind is temporary)",
    R.REQUIRED_FOR_ISSUE_TEMPORARY: "required for action issue_temporary",
    R.DEVICE_KIND_INVALID: "must be one of {kinds}",
    R.DEVICE_NAME_LENGTH: "must be 1..{chars_max} characters",
    R.DEVICE_ID_RANGE: "must be 1..{device_id_max}",
    R.DEVICE_EXISTS: "device {device_id} exists",
    R.DEVICE_REVOKED: "device {device_id} is revoked",
    R.DEVICE_NO_NEXT_KEY: "device {device_id} has no next key: rotate first",
    R.INSTALL_MINUTES_RANGE: "must be 1..{minutes_max}",
    R.DEVICE_KEY_INVALID: "must be {key_bytes} random bytes as hex",
    R.IDEMPOTENCY_KEY_REQUIRED: "header required for money requests",
    R.TOO_LONG_CHARS: "longer than {chars_max} characters",
    R.IDEMPOTENCY_CONFLICT: "IdempotencyConflict: {reason}",
    R.NOT_A_PUPILS_ACCOUNT: "account {account_id} is not a pupil's account",
    R.TRANSFER_SAME_ACCOUNT: "must differ from from_account_id",
    R.TRANSFER_OTHER_FAMILY: "transfers are only between pupils of one family",
    R.DEVICE_NOT_A_TILL: "device {device_id} is not a till",
    R.AMOUNT_ZERO: "must not be zero",
    R.DAY_INVALID: "{day!r} is not a date YYYY-MM-DD",
    R.PREORDER_LOCKED: "the pre-order of {day} {period} is locked: it was editable until the end of {last_day} "
                       "(00:00 of {next_day}, school time {zone}), {lock_days} day(s) before; today is {today} at the "
                       "school",
    R.RANGE_TO_BEFORE_FROM: "must not be before from ({first_day})",
    R.RANGE_TOO_LONG: "at most {days_max} days from {first_day}",
    R.BODY_TOO_LARGE: "larger than {bytes_max} bytes",
    R.NOT_UTF8: "not UTF-8 text",
    R.CSV_ROW_ERRORS: "{count} row errors; nothing imported",
    R.NOTHING_TO_CHANGE: "nothing to change",
    R.CASHIER_NOTE_TOO_LONG: "longer than {bytes_max} bytes of UTF-8 (what the till receives; {bytes_given} given)",
    R.LINE_BREAK: "must not contain a line break",
    R.PHONE_TAKEN: "phone {phone} is already representative {representative_id} of pupil {account_id}",
    R.ONE_SCHOOL_PER_APPLICATION: "one application covers pupils of one school ({by_school})",
    R.REPRESENTATIVES_FULL: "at most {per_pupil_max} representatives per pupil (active and suspended; remove one "
                            "first): {full}",
    R.CONSENT_REQUIRED: "the representative's consent to the processing of personal data is required: no consent, "
                        "no registration",
    R.CONSENT_DATE_FUTURE: "{consent_date} is in the future (today is {today} at the school)",
    R.REPRESENTATIVE_REMOVED: "representative {representative_id} was removed (at {removed_at_ms} ms); it stays on "
                              "record and changes no more",
    R.REPRESENTATIVE_NOT_ACTIVE: "representative {representative_id} is {status}: only an active representative can "
                                 "be suspended",
    R.REPRESENTATIVE_NOT_SUSPENDED: "representative {representative_id} is {status}: only a suspended representative "
                                    "can be resumed",
    R.TRUSTED_REP_NOT_ACTIVE: "representative {representative_id} is {status}: no cards until resumed",
    R.TRUSTED_PUPILS_CARD: "card {uid} is a pupil's card; a trusted person needs a card of their own",
    R.TRUSTED_CARD_TAKEN_BY_REP: "card {uid} is already the card of representative {representative_id}",
    R.TRUSTED_CARD_TAKEN: "card {uid} is already the card of another trusted person",
    R.TRUSTED_CARDS_FULL: "representative {representative_id} already has {count} cards (at most {cards_max}); take "
                          "one back first",
    R.AT_LEAST_ONE_CHANNEL: "at least one channel",
    R.UNKNOWN_CHANNEL: "unknown channel; one of {channels}",
    R.AT_LEAST_ONE_KIND: "at least one event kind",
    R.UNKNOWN_KIND: "unknown event kind; one of {kinds}",
    R.EMAIL_REQUIRED: 'required when the channels include "email"',
    R.NOT_A_MEAL_PERIOD: "not a meal period of school {school_id}; its periods: {periods}",
    R.PREORDER_ITEMS_MAX: "at most {items_max} lines",
    R.UNKNOWN_PRODUCT: "unknown product {product_code} of school {school_id}",
    R.PRODUCT_TWICE: "product {product_code} is listed twice",
    R.QUANTITY_RANGE: "quantity must be 1..{quantity_max}",
    R.PREORDER_LINES_MAX: "at most {lines_max} pre-ordered lines per pupil and day (all meal periods together; the "
                          "till receives no more); {day} would hold {total} ({counts})",
    R.CONCURRENT_CHANGE: "conflict with a concurrent change: {reason}",
    R.VALUE_NOT_STORABLE: "{reason}",
}


def param_names(template: str) -> set[str]:
    """The ``{name}`` parameters of a template (``{name!r}`` counts as ``name``)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# --- from a text back to its code ------------------------------------------------------------------

def _pattern(template: str) -> re.Pattern[str]:
    out = []
    for literal, name, _spec, conversion in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name:
            group = f"(?P<{name}>.*?)" if f"(?P<{name}>" not in "".join(out) else f"(?P={name})"
            out.append(f"'{group}'" if conversion == "r" else group)
    return re.compile("".join(out))


# Only templates with a literal part to anchor on; ``VALUE_NOT_STORABLE`` ("{reason}") matches anything.
_PATTERNS = [(code, _pattern(text)) for code, text in ENGLISH.items() if code is not Refusal.VALUE_NOT_STORABLE]


def recognise(text: str) -> tuple[Refusal, dict[str, str]] | None:
    """The code and parameters of a text made from one of the templates (whole text), else None.
    For texts made elsewhere from the same words: the path ids' 404 (``app.PATH_IDS``), storage's
    own refusals passed on."""
    for code, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if m is not None:
            return code, m.groupdict()
    return None
