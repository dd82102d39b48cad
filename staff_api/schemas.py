"""Request and response bodies (msgspec Structs; Litestar validates and documents them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar.params import PathParameter
from msgspec import UNSET, Meta, Struct, UnsetType

from parents_api.hardening import INT32_MAX, INT64_MAX, NAME_PATTERN, NAME_RULE, TEXT_PATTERN
from protocol.limits import CASHIER_NOTE_BYTES_MAX
from storage.controls import ALLERGENS_RU, DIET_FLAGS_RU, MEAL_PERIODS_RU

# The vocabularies are storage.controls's (one definition, with the Russian a parent reads).
Allergen = Literal[tuple(ALLERGENS_RU)]  # type: ignore[valid-type]  # the 14 EU allergens
DietFlag = Literal[tuple(DIET_FLAGS_RU)]  # type: ignore[valid-type]
MealPeriod = Literal[tuple(MEAL_PERIODS_RU)]  # type: ignore[valid-type]
FreeMealCategory = Literal["grades_1_4", "large_family", "low_income", "orphan", "disability"]
CardKind = Literal["service_card", "social_card", "bracelet", "fob", "muscovite_card"]
TemporaryReason = Literal["forgotten", "lost", "broken"]
Role = Literal["operator", "officer", "cashier", "auditor"]

Kopecks = Annotated[int, Meta(ge=0, le=10**12)]
Grade = Annotated[int, Meta(ge=0, le=11)]
# The text rule (parents_api.hardening, one definition): no control characters, line breaks or
# bidi overrides in any text; a name also holds a visible character. Names reach till screens,
# pages and spreadsheets. 200 characters: the longest Russian full name with patronymic and a
# double surname is well under 100.
TEXT_CHARS_MAX = 200
ShortText = Annotated[str, Meta(max_length=TEXT_CHARS_MAX, pattern=TEXT_PATTERN)]
Name = Annotated[str, Meta(min_length=1, max_length=TEXT_CHARS_MAX, pattern=NAME_PATTERN, description=NAME_RULE)]
# A class ("5А"): a name, or empty for a pupil not in a class.
ClassName = Annotated[str, Meta(max_length=TEXT_CHARS_MAX, pattern=f"^$|{NAME_PATTERN}",
                                description="empty (no class), or a name: " + NAME_RULE)]
UID_PATTERN = r"^(0x)?([0-9a-fA-F]{2}){4,16}$"
UidHex = Annotated[str, Meta(pattern=UID_PATTERN, description="card UID, 4..16 bytes as hex")]
DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# Path parameters as the OpenAPI document shows them (the handlers check them too: 422 naming them).
UidPath = Annotated[str, PathParameter(pattern=UID_PATTERN, description="card UID, 4..16 bytes as hex")]
DayPath = Annotated[str, PathParameter(pattern=DAY_PATTERN, description="a day, YYYY-MM-DD")]
Minute = Annotated[int, Meta(ge=0, le=1440)]
AccountId = Annotated[int, Meta(ge=1, le=INT64_MAX)]  # accounts.id is bigint
FamilyId = Annotated[int, Meta(ge=1, le=INT64_MAX)]
ProductCode = Annotated[int, Meta(ge=1, le=INT32_MAX)]  # products.code is integer


class Base(Struct, forbid_unknown_fields=True, omit_defaults=False):
    pass


# --- schools -------------------------------------------------------------------------------


PassbackModeName = Literal["off", "soft", "hard"]  # ledger.codes.PassbackMode, lower-case


class SchoolPolicy(Base):
    grace_kopecks: Kopecks = 0
    grace_meals: Annotated[int, Meta(ge=0, le=100)] = 0
    low_balance_threshold_kopecks: Kopecks = 10_000
    preorder_lock_days: Annotated[int, Meta(ge=0, le=60)] = 3
    # anti-passback: off; soft (allow, record the violation); hard (deny, record it)
    anti_passback: PassbackModeName = "off"
    # timed anti-passback: two entries at least this many seconds apart (0: no interval)
    passback_entry_interval_s: Annotated[int, Meta(ge=0, le=86_400)] = 0
    # a kindergarten: a child's card opens a turnstile only right after one of its trusted persons'
    escort_required: bool = False
    # offline tills: the most one pupil may spend offline in total over all the school's tills
    # (0: tills sell nothing offline), and consecutive offline sales per card
    offline_floor_kopecks: Annotated[int, Meta(ge=0, le=4_294_967_295)] = 0
    offline_sales_per_card_max: Annotated[int, Meta(ge=0, le=255)] = 0


class MealPeriodBody(Base):
    starts_minute: Annotated[int, Meta(ge=0, le=1439)]
    ends_minute: Annotated[int, Meta(ge=1, le=1440)]


class MealPeriodOut(Base):
    name: str
    starts_minute: int
    ends_minute: int


class ProductBody(Base):
    name: Name  # Russian display name, as shown on the till
    price_kopecks: Annotated[int, Meta(ge=0, le=10**9)]
    category: Name = "other"
    composition: Annotated[str, Meta(max_length=2000, pattern=TEXT_PATTERN)] = ""
    allergens: list[Allergen] = []
    diet_flags: list[DietFlag] = []
    energy_kcal: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    hot_meal: bool = False


class ProductOut(Base):
    code: int
    name: str
    price_kopecks: int
    category: str
    composition: str
    allergens: list[str]
    diet_flags: list[str]
    energy_kcal: int | None
    hot_meal: bool


class MenuBody(Base):
    product_codes: Annotated[list[ProductCode], Meta(max_length=500)]


class MenuOut(Base):
    school_id: int
    day: str
    period: str
    product_codes: list[int]


class SchoolBody(Base):
    """A new school: its number (default: the next free one), name and time zone."""

    name: Name
    id: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None  # schools.id is integer
    # minutes east of UTC: Russia's zones are UTC+2..UTC+12; the range is the world's (-12:00..+14:00)
    utc_offset_minutes: Annotated[int, Meta(ge=-12 * 60, le=14 * 60)] = 180


class SchoolOut(Base):
    id: int
    name: str
    utc_offset_minutes: int
    policy: SchoolPolicy | None = None
    meal_periods: list[MealPeriodOut] = []
    products: list[ProductOut] = []


# --- pupils and cards ----------------------------------------------------------------------


class CardBody(Base):
    uid: UidHex
    kind: CardKind = "service_card"


class EnrolBody(Base):
    full_name: Name
    grade: Grade
    class_name: ClassName = ""
    photo_ref: ShortText | None = None
    free_meal_category: FreeMealCategory | None = None
    family_id: FamilyId | None = None
    card: CardBody | None = None


class PupilPatch(Base):
    grade: Grade | UnsetType = UNSET
    class_name: ClassName | UnsetType = UNSET
    free_meal_category: FreeMealCategory | None | UnsetType = UNSET
    family_id: FamilyId | None | UnsetType = UNSET
    photo_ref: ShortText | None | UnsetType = UNSET
    status: Literal["active", "blocked"] | UnsetType = UNSET


class CardOut(Base):
    uid: str
    account_id: int
    kind: str
    status: str
    expires_at_ms: int | None
    replaces: str | None
    bound_at_ms: int | None


class CardEventOut(Base):
    identifier: str
    account_id: int
    action: str
    related: str | None
    actor: str
    at_ms: int


class CardDetail(Base):
    card: CardOut
    events: list[CardEventOut]


class TemporaryBody(Base):
    reason: TemporaryReason
    temporary_uid: UidHex


class TemporaryOut(Base):
    original: CardOut
    temporary: CardOut


class ReturnOut(Base):
    temporary: CardOut
    original: CardOut | None  # restored when it was suspended (forgotten)


class ControlsBody(Base):
    daily_limit_kopecks: Kopecks | None = None
    period_limits_kopecks: dict[MealPeriod, Kopecks] = {}
    items_per_day_max: Annotated[int, Meta(ge=0, le=1000)] | None = None
    banned_products: list[ProductCode] = []
    banned_categories: list[Name] = []
    blocked_allergens: list[Allergen] = []
    required_diet: list[DietFlag] = []
    # The till shows it on one line of PUPIL_INFO, at most CASHIER_NOTE_BYTES_MAX bytes of UTF-8
    # (protocol.limits; the API checks the bytes too: 200 Latin letters, 100 Cyrillic ones).
    cashier_note: Annotated[str, Meta(max_length=CASHIER_NOTE_BYTES_MAX, pattern=TEXT_PATTERN,
                                      description=f"one line, at most {CASHIER_NOTE_BYTES_MAX} bytes of UTF-8")] = ""


class PupilOut(Base):
    account_id: int
    school_id: int
    full_name: str
    grade: int
    class_name: str
    photo_ref: str | None
    free_meal_category: str | None
    family_id: int | None
    status: str
    balance_kopecks: int
    cards: list[CardOut] = []
    controls: ControlsBody | None = None


class PupilList(Base):
    pupils: list[PupilOut]
    next_offset: int | None


class LedgerEntry(Base):
    device_id: int
    device_txn: int
    kind: str
    account_id: int
    identifier: str
    debit_account_id: int | None
    credit_account_id: int | None
    amount_kopecks: int
    balance_after_kopecks: int
    advice: bool
    device_time_ms: int | None  # the reader's clock; None when it was outside the trusted window
    decided_at_ms: int
    happened_at_ms: int  # the time the rules judged it at (the reader's for an advice inside the window)
    items: list[list[int]] | None  # [product_code, quantity, unit_price_kopecks] per line


class Ledger(Base):
    account_id: int
    balance_kopecks: int
    entries: list[LedgerEntry]
    next_offset: int | None


class RowError(Base):
    row: int  # line number in the file, the header being line 1
    field: str
    message: str


class ImportReport(Base):
    imported: int
    account_ids: list[int]


# --- money ---------------------------------------------------------------------------------


class TransferBody(Base):
    from_account_id: AccountId
    to_account_id: AccountId
    amount_kopecks: Annotated[int, Meta(gt=0, le=10**9)]


class RefundBody(Base):
    device_id: Annotated[int, Meta(ge=1, le=4294967295)]
    device_txn: Annotated[int, Meta(ge=0, le=INT64_MAX)]
    amount_kopecks: Annotated[int, Meta(gt=0, le=10**9)] | None = None  # None: the whole purchase


class CorrectionBody(Base):
    account_id: AccountId
    amount_kopecks: Annotated[int, Meta(ge=-(10**9), le=10**9)]  # signed, non-zero
    reason: Annotated[str, Meta(min_length=1, max_length=500, pattern=NAME_PATTERN, description=NAME_RULE)]


class CashTopupBody(Base):
    """Cash taken at the school office's desk (the gateway caps it as it caps a till's: 409 AMOUNT_INVALID)."""

    account_id: AccountId
    amount_kopecks: Annotated[int, Meta(gt=0, le=10**9)]


class CommandOut(Base):
    seq: int
    status: Literal["pending", "applied", "refused"]
    reason: str | None
    result: dict[str, Any] | None


# --- staff and audit -----------------------------------------------------------------------


class StaffBody(Base):
    login: Annotated[str, Meta(pattern=r"^[a-z0-9_.@-]{2,64}$")]
    role: Role
    school_id: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None


class StaffOut(Base):
    login: str
    role: str
    school_id: int | None
    active: bool
    token_expires_at_ms: int  # the member's bearer token stops working then (rotate it before)


class StaffCreated(Base):
    login: str
    role: str
    school_id: int | None
    token: str  # shown once; only its sha256 is stored
    token_expires_at_ms: int


class StaffToken(Base):
    """A new bearer token (rotation): shown once; the previous token stopped working."""

    login: str
    token: str
    token_expires_at_ms: int


class Me(Base):
    """The caller."""

    login: str
    role: str
    school_id: int | None
    token_expires_at_ms: int  # the member's bearer token


class AuditEntry(Base):
    id: int
    actor: str
    action: str
    entity: str
    before: Any
    after: Any
    at_ms: int


class AuditPage(Base):
    entries: list[AuditEntry]
    next_before_id: int | None


def to_builtins(s: Struct) -> dict[str, Any]:
    return msgspec.to_builtins(s)
