"""Who should hear of a pupil's events: the representatives connected through the school.

Rows are written by the staff API (migration 0008: ``representatives``,
``representative_pupils``); the notifier reads them here. A representative hears of
an event of account X when it covers X, wants that event kind, and is neither
suspended nor removed. The parents change their own channels, kinds and SMS terms
(migration 0012: ``representative_sms``) through the same functions as the staff.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import asyncpg
import msgspec

from ledger.codes import OutboxKind

# The leaflet's ways of being informed, in its order.
CHANNELS = ("portal", "sms", "ussd", "app_push", "tv_push", "email")
RELATIONS = ("parent", "grandmother", "grandfather", "nanny", "guardian", "other")
KINDS = tuple(kind.value for kind in OutboxKind)
# What a parent reads for each (the parents' pages; the notifier's templates take RELATIONS_RU).
RELATIONS_RU = {"parent": "родитель", "grandmother": "бабушка", "grandfather": "дедушка", "nanny": "няня",
                "guardian": "опекун", "other": "доверенное лицо"}
CHANNELS_RU = {"portal": "личный кабинет", "sms": "SMS", "ussd": "USSD *377*888#",
               "app_push": "приложение «Мой ребенок в школе»", "tv_push": "Smart-TV", "email": "электронная почта"}
KINDS_RU = {"entry": "вход в школу", "exit": "выход из школы", "purchase": "питание и покупки",
            "cash_topup": "пополнение наличными", "bank_topup": "пополнение картой", "low_balance": "низкий баланс",
            "temporary_card_issued": "выдана временная карта", "temporary_card_returned": "временная карта сдана",
            "card_blocked": "карта заблокирована"}
assert set(CHANNELS_RU) == set(CHANNELS) and set(KINDS_RU) == set(KINDS) and set(RELATIONS_RU) == set(RELATIONS)


def preferences_problem(channels: list[str], kinds: list[str] | None, email: str | None) -> tuple[str, str] | None:
    """(field, why) if the channels and kinds (None: not being changed) cannot be a
    representative's, else None. The table's CHECKs say the same; this says it first, in words."""
    if not channels:
        return "channels", "at least one channel"
    if not set(channels) <= set(CHANNELS):
        return "channels", f"unknown channel; one of {', '.join(CHANNELS)}"
    if kinds is not None and not kinds:
        return "kinds", "at least one event kind"
    if kinds is not None and not set(kinds) <= set(KINDS):
        return "kinds", f"unknown event kind; one of {', '.join(KINDS)}"
    if "email" in channels and email is None:
        return "email", 'required when the channels include "email"'
    return None


async def set_preferences(conn: asyncpg.Connection, representative_id: int, channels: list[str], kinds: list[str],
                          *, actor: str, now_ms: int) -> None:
    """Replace a representative's channels and event kinds (in the caller's transaction), audited.
    ValueError with the reason if they are not valid (see ``preferences_problem``)."""
    row = await conn.fetchrow("SELECT email, channels, kinds FROM representatives WHERE id = $1 FOR UPDATE",
                              representative_id)
    if row is None:
        raise ValueError(f"no representative {representative_id}")
    channels = [c for c in CHANNELS if c in channels]  # canonical order, no repeats
    kinds = [k for k in KINDS if k in kinds]
    problem = preferences_problem(channels, kinds, row["email"])
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    await conn.execute("UPDATE representatives SET channels = $2, kinds = $3, updated_at_ms = $4 WHERE id = $1",
                       representative_id, channels, kinds, now_ms)
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, before, after, at_ms) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        actor, "representative.preferences", f"representative:{representative_id}",
        msgspec.json.encode({"channels": list(row["channels"]), "kinds": list(row["kinds"])}).decode(),
        msgspec.json.encode({"channels": channels, "kinds": kinds}).decode(), now_ms)


class Subscriber(msgspec.Struct, frozen=True):
    """A representative to tell of one event, with the channels to tell it on."""

    representative_id: int
    full_name: str
    relation: str
    phone: str  # E.164, +7XXXXXXXXXX
    email: str | None
    channels: tuple[str, ...]


# The subscribers of several (account, kind) pairs in one statement: the notifier takes a batch
# of events in with one round trip for all their subscribers.
_SUBSCRIBERS = """
SELECT q.n, r.id, r.full_name, r.relation, r.phone, r.email, r.channels
FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS q(account_id, kind, n)
JOIN representative_pupils rp ON rp.account_id = q.account_id
JOIN representatives r ON r.id = rp.representative_id
WHERE q.kind = ANY (r.kinds) AND r.removed_at_ms IS NULL AND r.suspended_at_ms IS NULL
ORDER BY q.n, r.id
"""


async def subscribers_of(
    conn: asyncpg.Connection | asyncpg.Pool, pairs: list[tuple[int, OutboxKind | str]], timeout_s: float | None = None,
) -> list[list[Subscriber]]:
    """For each (account id, event kind): the active (not suspended, not removed) representatives
    of the account who want events of the kind, by representative id, each with its channels."""
    kinds = [OutboxKind(kind).value for _, kind in pairs]  # ValueError for a kind that does not exist
    found: list[list[Subscriber]] = [[] for _ in pairs]
    for r in await conn.fetch(_SUBSCRIBERS, [account_id for account_id, _ in pairs], kinds, timeout=timeout_s):
        found[r["n"] - 1].append(Subscriber(
            representative_id=r["id"], full_name=r["full_name"], relation=r["relation"], phone=r["phone"],
            email=r["email"], channels=tuple(r["channels"])))
    return found


async def subscribers(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, kind: OutboxKind | str
) -> list[Subscriber]:
    """The subscribers of one (account, kind) (``subscribers_of``)."""
    return (await subscribers_of(conn, [(account_id, kind)]))[0]


# -- SMS settings (migration 0012: representative_sms; no row: the defaults) ---------------------
# One definition of what a representative's SMS terms may be, for the staff API, the parents' API
# and the parents' pages (their bodies use the annotated types below; ``sms_settings_problem``
# checks a value again right before it is written). What each setting does: ``notifier.sms.decide``.

SMS_PLANS = ("free", "paid")
SmsPlan = Literal["free", "paid"]
assert get_args(SmsPlan) == SMS_PLANS
# Migration 0012's CHECK (daily_cap BETWEEN 0 AND 500). 0 stops SMS for the day (the app and the
# portal still show every event); a real school day is a dozen events per child, so 500 is only a
# ceiling against a runaway till filling a paid plan's phone.
SMS_DAILY_CAP_MAX = 500
SMS_DAILY_CAP_DEFAULT = 20  # notifier.sms.SMS_PER_DAY_MAX, migration 0012's default
MINUTES_PER_DAY = 24 * 60  # quiet hours and the digest are minutes of the school's local day
SmsDailyCap = Annotated[int, msgspec.Meta(
    ge=0, le=SMS_DAILY_CAP_MAX, description="SMS messages a school day (a digest is one); 0: none")]
MinuteOfDay = Annotated[int, msgspec.Meta(
    ge=0, le=MINUTES_PER_DAY - 1, description="minutes after midnight, school local time")]


class SmsSettings(msgspec.Struct, frozen=True):
    """A representative's SMS plan and limits (migration 0012's defaults when no row)."""

    plan: SmsPlan = "free"  # free: one SMS part, the text cut to fit; paid: up to notifier.sms.SMS_PARTS_MAX parts
    daily_cap: SmsDailyCap = SMS_DAILY_CAP_DEFAULT
    quiet_from_minute: MinuteOfDay = 22 * 60  # school local time; equal to quiet_to_minute: no quiet hours
    quiet_to_minute: MinuteOfDay = 7 * 60
    digest: bool = False
    digest_minute: MinuteOfDay = 20 * 60


def sms_settings_problem(settings: SmsSettings) -> tuple[str, str] | None:
    """(field, why) if ``settings`` cannot be a representative's SMS terms, else None. The table's
    CHECKs say the same; the APIs' bodies say it first (the annotated types above)."""
    if settings.plan not in SMS_PLANS:
        return "plan", f"one of {', '.join(SMS_PLANS)}"
    if type(settings.daily_cap) is not int or not 0 <= settings.daily_cap <= SMS_DAILY_CAP_MAX:
        return "daily_cap", f"an integer 0..{SMS_DAILY_CAP_MAX}"
    for field in ("quiet_from_minute", "quiet_to_minute", "digest_minute"):
        value = getattr(settings, field)
        if type(value) is not int or not 0 <= value < MINUTES_PER_DAY:
            return field, f"minutes after midnight, 0..{MINUTES_PER_DAY - 1}"
    if type(settings.digest) is not bool:
        return "digest", "true or false"
    return None


async def sms_settings(conn: asyncpg.Connection | asyncpg.Pool, representative_id: int,
                       timeout_s: float | None = None) -> SmsSettings:
    row = await conn.fetchrow(
        "SELECT plan, daily_cap, quiet_from_minute, quiet_to_minute, digest, digest_minute "
        "FROM representative_sms WHERE representative_id = $1", representative_id, timeout=timeout_s,
    )
    return SmsSettings(**dict(row)) if row is not None else SmsSettings()


async def set_sms_settings(conn: asyncpg.Connection | asyncpg.Pool, representative_id: int, settings: SmsSettings,
                           *, now_ms: int) -> None:
    """Insert or replace a representative's SMS settings (not audited: ``change_sms_settings`` is
    the APIs' way). ValueError "<field>: <why>" if they are not valid (``sms_settings_problem``)."""
    problem = sms_settings_problem(settings)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    await conn.execute(
        """
        INSERT INTO representative_sms (representative_id, plan, daily_cap, quiet_from_minute, quiet_to_minute,
                                        digest, digest_minute, updated_at_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (representative_id) DO UPDATE SET plan = $2, daily_cap = $3, quiet_from_minute = $4,
            quiet_to_minute = $5, digest = $6, digest_minute = $7, updated_at_ms = $8
        """,
        representative_id, settings.plan, settings.daily_cap, settings.quiet_from_minute, settings.quiet_to_minute,
        settings.digest, settings.digest_minute, now_ms,
    )


async def change_sms_settings(conn: asyncpg.Connection, representative_id: int, settings: SmsSettings,
                              *, actor: str, now_ms: int) -> SmsSettings:
    """Replace a representative's SMS settings and audit it (``representative.sms``, before and
    after), in the caller's transaction; returns the settings before. The caller has checked that
    ``actor`` may change this representative (and holds its row, ``lock_active`` or the staff
    API's own lock). ValueError "<field>: <why>" if the settings are not valid."""
    before = await sms_settings(conn, representative_id)
    await set_sms_settings(conn, representative_id, settings, now_ms=now_ms)
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, before, after, at_ms) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        actor, "representative.sms", f"representative:{representative_id}",
        msgspec.json.encode(before).decode(), msgspec.json.encode(settings).decode(), now_ms)
    return before


async def lock_active(conn: asyncpg.Connection, representative_id: int) -> bool:
    """Lock a representative's row for a change of its own settings (in the caller's transaction)
    if it is active (neither suspended nor removed). FOR NO KEY UPDATE: the notifier's deliveries,
    which reference the row, are not held up."""
    return bool(await conn.fetchval(
        "SELECT true FROM representatives WHERE id = $1 AND removed_at_ms IS NULL AND suspended_at_ms IS NULL "
        "FOR NO KEY UPDATE", representative_id))
