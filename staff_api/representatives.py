"""Pupils' representatives (parents, grandparents, nannies, guardians), connected through the
school by an application: who is told of a pupil's entries, meals, top-ups and cards, and on
which channels.

A school officer (or the operator) registers the application: one representative, the pupils
of one school it covers, the channels and event kinds wanted, and the consent to the
processing of personal data with its date (no consent, no registration). Representatives can
be changed, suspended, resumed and removed; a removed one stays on record (audit trail) and
is told nothing from that moment on. The notifier asks ``storage.representatives.subscribers``.

A representative may also carry trusted cards (kindergartens, ``staff_api/trusted_cards.py``):
every change that affects them (suspend, resume, remove, name) notifies the gateway.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, delete, get, patch, post, put
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from msgspec import UNSET, Meta, UnsetType

from storage import deliveries as delivery_store
from storage import representatives as representative_store
from storage.representatives import (CHANNELS, KINDS, RELATIONS, SMS_DAILY_CAP_DEFAULT, MinuteOfDay, SmsDailyCap,
                                     SmsPlan, preferences_problem)
from parents_api.hardening import INT64_MAX

from . import db
from .auth import Principal, PrincipalDep
from .errors import Conflict, Unprocessable, answers, error_item, invalid, refuse
from .refusals import Refusal
from .preorders import school_today
from .schemas import AccountId, Base, Name

# A pupil may have at most this many representatives that are not removed (suspended ones
# count: they may be resumed at any time). Two parents and four others (grandparents, a
# nanny, a guardian) cover a family; the cap bounds what one tap fans out to (every
# representative on up to six channels, and SMS may become paid) and keeps the set of
# people who learn where a child is, and when, small and deliberate.
REPRESENTATIVES_PER_PUPIL_MAX = 6
# The children of one family at one school; also bounds the pupil rows one request locks.
PUPILS_PER_APPLICATION_MAX = 20
WRITERS = ("operator", "officer")
# Parents' phones and e-mails are personal data the canteen does not need: no cashier.
READERS = ("operator", "officer", "auditor")

Relation = Literal[RELATIONS]  # type: ignore[valid-type]
Channel = Literal[CHANNELS]  # type: ignore[valid-type]
Kind = Literal[KINDS]  # type: ignore[valid-type]  # ledger.codes.OutboxKind, one definition
PHONE_PATTERN = r"^\+7[0-9]{10}$"
# The WHATWG (HTML input type=email) address syntax, with at least one dot in the domain.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
Phone = Annotated[str, Meta(pattern=PHONE_PATTERN, description="E.164: +7 and 10 digits, +79161234567")]
Email = Annotated[str, Meta(max_length=254, pattern=EMAIL_PATTERN, description="e-mail address")]
Channels = Annotated[list[Channel], Meta(min_length=1, max_length=len(CHANNELS) * 4)]
Kinds = Annotated[list[Kind], Meta(min_length=1, max_length=len(KINDS) * 4)]


# --- bodies ---------------------------------------------------------------------------------------


class ApplicationBody(Base):
    """An application to connect one representative to pupils of one school."""

    full_name: Name
    relation: Relation
    phone: Phone
    pupil_ids: Annotated[list[AccountId], Meta(min_length=1, max_length=PUPILS_PER_APPLICATION_MAX)]
    channels: Channels
    kinds: Kinds
    consent: bool  # consent to the processing of personal data: must be true
    consent_date: date  # the day it was given (not in the future)
    email: Email | None = None  # required when channels include "email"


class RepresentativePatch(Base):
    full_name: Name | UnsetType = UNSET
    relation: Relation | UnsetType = UNSET
    phone: Phone | UnsetType = UNSET
    email: Email | None | UnsetType = UNSET
    channels: Channels | UnsetType = UNSET
    kinds: Kinds | UnsetType = UNSET


class RepresentativeOut(Base):
    id: int
    school_id: int
    full_name: str
    relation: str
    phone: str
    email: str | None
    pupil_ids: list[int]
    channels: list[str]
    kinds: list[str]
    consent_date: str
    status: Literal["active", "suspended", "removed"]
    registered_by: str
    registered_at_ms: int
    updated_at_ms: int
    suspended_at_ms: int | None
    removed_at_ms: int | None


class PupilRepresentatives(Base):
    account_id: int
    representatives_max: int  # REPRESENTATIVES_PER_PUPIL_MAX
    not_removed: int  # counted against the maximum (active and suspended)
    representatives: list[RepresentativeOut]


# --- rows ------------------------------------------------------------------------------------------

_COLUMNS = """
r.id, r.school_id, r.full_name, r.relation, r.phone, r.email, r.channels, r.kinds, r.consent_date,
r.registered_by, r.registered_at_ms, r.updated_at_ms, r.suspended_at_ms, r.removed_at_ms,
ARRAY(SELECT rp.account_id FROM representative_pupils rp WHERE rp.representative_id = r.id
      ORDER BY rp.account_id) AS pupil_ids
"""


def _view(row: asyncpg.Record) -> RepresentativeOut:
    status = "removed" if row["removed_at_ms"] is not None else (
        "suspended" if row["suspended_at_ms"] is not None else "active")
    return RepresentativeOut(
        id=row["id"], school_id=row["school_id"], full_name=row["full_name"], relation=row["relation"],
        phone=row["phone"], email=row["email"], pupil_ids=list(row["pupil_ids"]), channels=list(row["channels"]),
        kinds=list(row["kinds"]), consent_date=row["consent_date"].isoformat(), status=status,  # type: ignore[arg-type]
        registered_by=row["registered_by"], registered_at_ms=row["registered_at_ms"],
        updated_at_ms=row["updated_at_ms"], suspended_at_ms=row["suspended_at_ms"],
        removed_at_ms=row["removed_at_ms"],
    )


def representative_not_found(representative_id: int) -> NotFoundException:
    return refuse(NotFoundException, Refusal.NO_REPRESENTATIVE, representative_id=representative_id)


async def load(conn: asyncpg.Connection, representative_id: int, *, for_update: bool = False) -> RepresentativeOut:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM representatives r WHERE r.id = $1" + (" FOR UPDATE OF r" if for_update else ""),
        representative_id,
    )
    if row is None:
        raise representative_not_found(representative_id)
    return _view(row)


def _canonical(values: list[str], order: tuple[str, ...]) -> list[str]:
    """Without repeats, in the order of their definition."""
    wanted = set(values)
    return [v for v in order if v in wanted]


def _check_one_line(**fields: str | None) -> None:
    """The patterns end with ``$``, which lets one trailing line break through."""
    for field, value in fields.items():
        if value is not None and "\n" in value:
            raise invalid(field, Refusal.LINE_BREAK)


def _check_email_channel(channels: list[str], email: str | None) -> None:
    problem = preferences_problem(channels, None, email)  # the one rule, shared with the parents' pages
    if problem is not None:
        raise Unprocessable(*problem)  # storage's words; the handler finds their code (refusals.recognise)


async def _check_phone_free(
    conn: asyncpg.Connection, phone: str, pupil_ids: list[int], exclude_id: int | None = None
) -> None:
    """409 when ``phone`` is already a (not removed) representative of one of the pupils."""
    taken = await conn.fetchrow(
        """
        SELECT rp.account_id, r.id FROM representative_pupils rp JOIN representatives r ON r.id = rp.representative_id
        WHERE rp.account_id = ANY($1::bigint[]) AND r.phone = $2 AND r.removed_at_ms IS NULL
          AND ($3::bigint IS NULL OR r.id <> $3)
        ORDER BY rp.account_id, r.id LIMIT 1
        """,
        pupil_ids, phone, exclude_id,
    )
    if taken is not None:
        raise refuse(Conflict, Refusal.PHONE_TAKEN, phone=phone, representative_id=taken["id"],
                     account_id=taken["account_id"])


async def _lock_pupils(conn: asyncpg.Connection, principal: Principal, body_ids: list[int]) -> tuple[int, list[int]]:
    """Lock the pupils' rows (ascending ids: concurrent applications do not deadlock), check
    that they exist, that the caller may act for their school and that it is one school.
    Returns the school and the pupils' ids, ascending, without repeats."""
    pupil_ids = sorted(set(body_ids))
    rows = await conn.fetch(
        "SELECT account_id, school_id FROM pupils WHERE account_id = ANY($1::bigint[]) ORDER BY account_id FOR UPDATE",
        pupil_ids,
    )
    # another school's pupil is refused exactly as an account that is no pupil's
    school_of = {r["account_id"]: r["school_id"] for r in rows
                 if principal.school_id is None or r["school_id"] == principal.school_id}
    missing = [(i, a) for i, a in enumerate(body_ids) if a not in school_of]
    if missing:
        raise invalid(f"pupil_ids[{missing[0][0]}]", Refusal.NOT_A_PUPILS_ACCOUNT, account_id=missing[0][1],
                      errors=[error_item(f"pupil_ids[{i}]", Refusal.NOT_A_PUPILS_ACCOUNT, account_id=a)
                              for i, a in missing])
    schools = sorted(set(school_of.values()))
    if len(schools) > 1:
        by_school = "; ".join(
            f"school {s}: {', '.join(str(a) for a in pupil_ids if school_of[a] == s)}" for s in schools)
        raise invalid("pupil_ids", Refusal.ONE_SCHOOL_PER_APPLICATION, by_school=by_school)
    return schools[0], pupil_ids


async def _check_room(conn: asyncpg.Connection, pupil_ids: list[int]) -> None:
    """409 when a pupil already has REPRESENTATIVES_PER_PUPIL_MAX representatives not removed."""
    rows = await conn.fetch(
        """
        SELECT rp.account_id, count(*) AS n FROM representative_pupils rp
        JOIN representatives r ON r.id = rp.representative_id
        WHERE rp.account_id = ANY($1::bigint[]) AND r.removed_at_ms IS NULL
        GROUP BY rp.account_id HAVING count(*) >= $2 ORDER BY rp.account_id
        """,
        pupil_ids, REPRESENTATIVES_PER_PUPIL_MAX,
    )
    if rows:
        full = ", ".join(f"pupil {r['account_id']} has {r['n']}" for r in rows)
        raise refuse(Conflict, Refusal.REPRESENTATIVES_FULL, per_pupil_max=REPRESENTATIVES_PER_PUPIL_MAX, full=full)


def _audit_view(rep: RepresentativeOut) -> dict[str, Any]:
    return msgspec.to_builtins(rep)


# --- resources -------------------------------------------------------------------------------------


class SmsSettingsBody(Base):
    """The ranges are storage.representatives' (one definition with the parents' API)."""

    plan: SmsPlan = "free"
    daily_cap: SmsDailyCap = SMS_DAILY_CAP_DEFAULT
    quiet_from_minute: MinuteOfDay = 22 * 60
    quiet_to_minute: MinuteOfDay = 7 * 60
    digest: bool = False
    digest_minute: MinuteOfDay = 20 * 60


class RepresentativeController(Controller):
    tags = ["representatives"]

    @post("/applications", status_code=201, opt=answers(409))
    async def register(
        self, data: JSONBody[ApplicationBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> RepresentativeOut:
        """Register an application: one representative for pupils of one school, with the channels and
        event kinds wanted and the consent to the processing of personal data (required)."""
        principal.require(*WRITERS, action="register representatives")
        if not data.consent:
            raise invalid("consent", Refusal.CONSENT_REQUIRED)
        _check_one_line(phone=data.phone, email=data.email)
        channels = _canonical(data.channels, CHANNELS)
        kinds = _canonical(data.kinds, KINDS)
        _check_email_channel(channels, data.email)
        async with pool.acquire() as conn, conn.transaction():
            school_id, pupil_ids = await _lock_pupils(conn, principal, data.pupil_ids)
            offset = (await db.school_row(conn, school_id))["utc_offset_minutes"]
            today = school_today(now_ms, offset)
            if data.consent_date > today:
                raise invalid("consent_date", Refusal.CONSENT_DATE_FUTURE, consent_date=data.consent_date.isoformat(),
                              today=today.isoformat())
            await _check_room(conn, pupil_ids)
            await _check_phone_free(conn, data.phone, pupil_ids)
            representative_id = await conn.fetchval(
                """
                INSERT INTO representatives (school_id, full_name, relation, phone, email, channels, kinds,
                    consent_date, registered_by, registered_at_ms, updated_at_ms)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING id
                """,
                school_id, data.full_name, data.relation, data.phone, data.email, channels, kinds,
                data.consent_date, principal.login, now_ms,
            )
            await conn.execute(
                "INSERT INTO representative_pupils (account_id, representative_id) "
                "SELECT unnest($1::bigint[]), $2",
                pupil_ids, representative_id,
            )
            out = await load(conn, representative_id)
            await db.audit(conn, principal.login, "representative.register", f"representative:{representative_id}",
                           None, _audit_view(out), now_ms)
        return out

    @get("/representatives/{representative_id:int}")
    async def get_representative(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep
    ) -> RepresentativeOut:
        """A representative (removed ones too: they stay on record)."""
        principal.require(*READERS, action="read representatives")
        async with pool.acquire() as conn:
            out = await load(conn, representative_id)
        principal.require_own(out.school_id, representative_not_found(representative_id))
        return out

    @get("/representatives/{representative_id:int}/deliveries")
    async def deliveries_of(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
        limit: int = Parameter(default=50, ge=1, le=delivery_store.PAGE_ROWS_MAX),
        before_id: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
    ) -> list[delivery_store.Delivery]:
        """What the notifier sent this representative (or is still trying to), newest first;
        the next page: before_id = the last id of this one."""
        principal.require(*READERS, action="read deliveries")
        async with pool.acquire() as conn:
            out = await load(conn, representative_id)
            principal.require_own(out.school_id, representative_not_found(representative_id))
            return await delivery_store.by_representative(conn, representative_id, limit=limit, before_id=before_id)

    @get("/representatives/{representative_id:int}/sms")
    async def get_sms(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep
    ) -> SmsSettingsBody:
        """The representative's SMS plan, daily cap, quiet hours and digest (defaults if never set)."""
        principal.require(*READERS, action="read representatives")
        async with pool.acquire() as conn:
            out = await load(conn, representative_id)
            principal.require_own(out.school_id, representative_not_found(representative_id))
            return SmsSettingsBody(**msgspec.structs.asdict(await representative_store.sms_settings(conn, representative_id)))

    @put("/representatives/{representative_id:int}/sms", opt=answers(409))
    async def put_sms(
        self, representative_id: FromPath[int], data: JSONBody[SmsSettingsBody], principal: PrincipalDep,
        pool: db.PoolDep, now_ms: db.NowMs,
    ) -> SmsSettingsBody:
        """Set the SMS plan (free: one part; paid: up to 6 joined parts), the daily cap, quiet
        hours (minutes of the school day; equal values: none) and the daily digest. Audited."""
        principal.require(*WRITERS, action="change representatives")
        async with pool.acquire() as conn, conn.transaction():
            await _writable(conn, principal, representative_id)
            after = representative_store.SmsSettings(**msgspec.structs.asdict(data))
            await representative_store.change_sms_settings(conn, representative_id, after, actor=principal.login,
                                                           now_ms=now_ms)
        return data

    @get("/deliveries/dead")
    async def dead_letters(
        self, principal: PrincipalDep, pool: db.PoolDep,
        limit: int = Parameter(default=50, ge=1, le=delivery_store.PAGE_ROWS_MAX),
        before_id: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
    ) -> list[delivery_store.Delivery]:
        """Deliveries the notifier gave up on (city-wide: operators and auditors)."""
        principal.require("operator", "auditor", action="read the dead letters")
        async with pool.acquire() as conn:
            return await delivery_store.dead_letters(conn, limit=limit, before_id=before_id)

    @get("/pupils/{account_id:int}/representatives")
    async def list_for_pupil(
        self, account_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
        include_removed: FromQuery[bool] = False,
    ) -> PupilRepresentatives:
        """A pupil's representatives by id (removed ones only with include_removed=true)."""
        principal.require(*READERS, action="read representatives")
        async with pool.acquire() as conn:
            principal.require_own(await db.pupil_school(conn, account_id), db.pupil_not_found(account_id))
            rows = await conn.fetch(
                f"""
                SELECT {_COLUMNS} FROM representatives r
                WHERE r.id IN (SELECT representative_id FROM representative_pupils WHERE account_id = $1)
                  AND ($2 OR r.removed_at_ms IS NULL)
                ORDER BY r.id
                """,
                account_id, include_removed,
            )
        reps = [_view(r) for r in rows]
        return PupilRepresentatives(
            account_id=account_id, representatives_max=REPRESENTATIVES_PER_PUPIL_MAX,
            not_removed=sum(1 for r in reps if r.status != "removed"), representatives=reps,
        )

    @patch("/representatives/{representative_id:int}", opt=answers(409))
    async def change(
        self, representative_id: FromPath[int], data: JSONBody[RepresentativePatch], principal: PrincipalDep,
        pool: db.PoolDep, now_ms: db.NowMs,
    ) -> RepresentativeOut:
        """Change the name, relation, phone, e-mail, channels or event kinds."""
        principal.require(*WRITERS, action="change representatives")
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not UNSET}
        if not changes:
            raise invalid("body", Refusal.NOTHING_TO_CHANGE)
        _check_one_line(phone=changes.get("phone"), email=changes.get("email"))
        if "channels" in changes:
            changes["channels"] = _canonical(changes["channels"], CHANNELS)
        if "kinds" in changes:
            changes["kinds"] = _canonical(changes["kinds"], KINDS)
        async with pool.acquire() as conn, conn.transaction():
            before = await _writable(conn, principal, representative_id)
            _check_email_channel(changes.get("channels", before.channels), changes.get("email", before.email))
            if "phone" in changes and changes["phone"] != before.phone:
                # under the pupils' locks, as a registration checks it
                await conn.execute("SELECT 1 FROM pupils WHERE account_id = ANY($1::bigint[]) ORDER BY account_id "
                                   "FOR UPDATE", before.pupil_ids)
                await _check_phone_free(conn, changes["phone"], before.pupil_ids, exclude_id=representative_id)
            columns = list(changes)
            assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=3))
            await conn.execute(
                f"UPDATE representatives SET updated_at_ms = $2, {assignments} WHERE id = $1",
                representative_id, now_ms, *[changes[c] for c in columns],
            )
            after = await load(conn, representative_id)
            await db.audit(conn, principal.login, "representative.update", f"representative:{representative_id}",
                           _audit_view(before), _audit_view(after), now_ms)
            await db.notify(conn, "representative", representative_id)  # a trusted card's name
        return after

    @post("/representatives/{representative_id:int}/suspend", status_code=200, opt=answers(409))
    async def suspend(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> RepresentativeOut:
        """Tell the representative nothing until resumed (it still counts against the maximum)."""
        return await _transition(pool, principal, representative_id, now_ms, "suspend")

    @post("/representatives/{representative_id:int}/resume", status_code=200, opt=answers(409))
    async def resume(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> RepresentativeOut:
        """Tell a suspended representative again, from now on."""
        return await _transition(pool, principal, representative_id, now_ms, "resume")

    @delete("/representatives/{representative_id:int}", status_code=200, opt=answers(409))
    async def remove(
        self, representative_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> RepresentativeOut:
        """Remove for good: told nothing from now on; the row stays for the audit trail."""
        return await _transition(pool, principal, representative_id, now_ms, "remove")


async def _writable(conn: asyncpg.Connection, principal: Principal, representative_id: int) -> RepresentativeOut:
    """The representative, locked; 403 for another school, 409 once removed."""
    rep = await load(conn, representative_id, for_update=True)
    principal.require_own(rep.school_id, representative_not_found(representative_id))
    if rep.status == "removed":
        raise refuse(Conflict, Refusal.REPRESENTATIVE_REMOVED, representative_id=representative_id,
                     removed_at_ms=rep.removed_at_ms)
    return rep


_TRANSITIONS = {
    # action: (status required, SQL assignment, refusal)
    "suspend": ("active", "suspended_at_ms = $2", Refusal.REPRESENTATIVE_NOT_ACTIVE),
    "resume": ("suspended", "suspended_at_ms = NULL", Refusal.REPRESENTATIVE_NOT_SUSPENDED),
    "remove": (None, "removed_at_ms = $2", None),
}


async def _transition(
    pool: asyncpg.Pool, principal: Principal, representative_id: int, now_ms: int, action: str
) -> RepresentativeOut:
    principal.require(*WRITERS, action=f"{action} representatives")
    required, assignment, refusal = _TRANSITIONS[action]
    async with pool.acquire() as conn, conn.transaction():
        before = await _writable(conn, principal, representative_id)
        if required is not None and before.status != required:
            assert refusal is not None
            raise refuse(Conflict, refusal, representative_id=representative_id, status=before.status)
        await conn.execute(
            f"UPDATE representatives SET {assignment}, updated_at_ms = $2 WHERE id = $1", representative_id, now_ms
        )
        after = await load(conn, representative_id)
        await db.audit(conn, principal.login, f"representative.{action}", f"representative:{representative_id}",
                       _audit_view(before), _audit_view(after), now_ms)
        await db.notify(conn, "representative", representative_id)  # their trusted cards stop (or work again)
    return after
