"""The building: who is inside a school now (by class), the doors' log, and the
reconciliation of presence after an evacuation.

Presence is the gateway's (each pupil's last counted passage, checkpointed with the
journal); this module reads it with the one rule, ``ledger.state.presence_at``. A
reconciliation is recorded here and the gateway applies it at once (the school's change
notification): from then on nobody counts as inside or outside, so anti-passback lets
every pupil enter again.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, Parameter
from msgspec import Meta

from ledger.codes import AccessKind, Presence
from protocol import DeviceKind, Direction
from storage import building
from parents_api.hardening import INT64_MAX

from . import db
from .auth import PrincipalDep
from .errors import answers, refuse
from .refusals import Refusal
from .money import IdempotencyHeader, _key, run_command
from .schemas import Base, CommandOut

# Who may see where pupils are: the school's officer and the operator; the auditor reads.
READERS = ("operator", "officer", "auditor")
WRITERS = ("operator", "officer")
# A reconciliation's reason is a line in the guard's log.
REASON_CHARS_MAX = 200


class PupilInside(Base):
    account_id: int
    full_name: str
    since_ms: int  # the passage that brought the pupil in


class ClassPresence(Base):
    grade: int
    class_name: str
    inside: list[PupilInside]
    pupils: int  # in the class at all


class PresenceOut(Base):
    school_id: int
    at_ms: int
    inside: int
    outside: int
    unknown: int  # no passage today (or since the last reconciliation)
    classes: list[ClassPresence]


class ResetBody(Base):
    reason: Annotated[str, Meta(min_length=1, max_length=REASON_CHARS_MAX)] = "evacuation"


class AccessEventOut(Base):
    id: int
    kind: str
    account_id: int | None
    device_id: int | None
    device_txn: int | None
    direction: str | None
    at_ms: int
    detail: str


class MusterPupil(Base):
    account_id: int
    full_name: str
    evacuated_at_ms: int | None  # the first exit a turnstile reported after the alarm


class MusterClass(Base):
    grade: int
    class_name: str
    pupils: list[MusterPupil]


class AlarmOut(Base):
    school_id: int
    key: str  # "<fire panel>:<txn>", or "0:<command seq>" when a school officer raised it
    raised_at_ms: int
    source: str
    active: bool
    reset_at_ms: int | None
    turnstiles: int  # of the school
    released: list[dict]  # {"device_id", "at_ms", "after_ms"}: each turnstile's confirmation
    mustered: int  # inside at the alarm
    evacuated: int  # of them, reported leaving since
    classes: list[MusterClass]


_DIRECTIONS = {int(d): d.name.lower() for d in Direction}


async def presence_out(conn, school_id: int, at_ms: int) -> PresenceOut:
    pupils = await building.presence(conn, school_id, at_ms)
    classes: dict[tuple[int, str], ClassPresence] = {}
    counts = {int(p): 0 for p in Presence}
    for p in pupils:
        counts[p.presence] += 1
        group = classes.get((p.grade, p.class_name))
        if group is None:
            group = classes[(p.grade, p.class_name)] = ClassPresence(p.grade, p.class_name, [], 0)
        group.pupils += 1
        if p.presence == Presence.INSIDE:
            group.inside.append(PupilInside(p.account_id, p.full_name, p.passage_ms))
    return PresenceOut(school_id, at_ms, counts[Presence.INSIDE], counts[Presence.OUTSIDE], counts[Presence.UNKNOWN],
                       list(classes.values()))


class BuildingController(Controller):
    path = "/schools"
    tags = ["building"]

    @get("/{school_id:int}/presence")
    async def get_presence(
        self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> PresenceOut:
        """Who is inside the school now, by class (the last passage of today of each pupil)."""
        principal.require(*READERS, action="see who is inside a school")
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn:
            await db.school_row(conn, school_id)
            return await presence_out(conn, school_id, now_ms)

    @post("/{school_id:int}/presence/reset", status_code=200)
    async def reset_presence(
        self, school_id: FromPath[int], data: JSONBody[ResetBody], principal: PrincipalDep, pool: db.PoolDep,
        now_ms: db.NowMs,
    ) -> PresenceOut:
        """Reconcile the school's presence (after an evacuation, or when the doors' record is
        known to be wrong): nobody counts as inside or outside any more."""
        principal.require(*WRITERS, action="reconcile a school's presence")
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn:
            async with conn.transaction():
                await db.school_row(conn, school_id)
                await building.record_presence_reset(conn, school_id, now_ms, data.reason)
                await db.audit(conn, principal.login, "school.presence_reset", f"school:{school_id}", None,
                               {"reason": data.reason, "at_ms": now_ms}, now_ms)
                await db.notify(conn, "school", school_id)
            return await presence_out(conn, school_id, now_ms)

    @get("/{school_id:int}/access-events")
    async def get_access_events(
        self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
        since_ms: int = Parameter(default=0, ge=0, le=INT64_MAX, description="events from this time on (Unix ms)"),
        limit: int = Parameter(default=100, ge=1, le=building.ACCESS_EVENTS_PAGE_MAX),
    ) -> list[AccessEventOut]:
        """The doors' log: grants nobody used, anti-passback violations, reconciliations; oldest first."""
        principal.require(*READERS, action="read a school's access log")
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn:
            await db.school_row(conn, school_id)
            events = await building.access_events(conn, school_id, since_ms, limit)
        return [
            AccessEventOut(
                id=i, kind=AccessKind(e.kind).label, account_id=e.account_id or None, device_id=e.device_id or None,
                device_txn=e.device_txn or None, direction=_DIRECTIONS.get(e.direction) if e.direction else None,
                at_ms=e.at_ms, detail=e.detail,
            )
            for i, e in events
        ]


class FireController(Controller):
    """The fire alarm from the school office (the fire panel raises it over the protocol):
    the gateway releases every turnstile of the school and takes the muster list."""

    path = "/schools"
    tags = ["building"]

    @post("/{school_id:int}/fire-alarm", status_code=200, opt=answers(202, 409))
    async def raise_alarm(
        self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
        command_wait_ms: db.CommandWaitMs, idempotency_key: str | None = IdempotencyHeader,
    ) -> Response[CommandOut]:
        """Raise the school's fire alarm (a no-op while one is on). 200 with the alarm's key and the
        number mustered; the muster list is at GET .../fire-alarm."""
        return await self._fire(school_id, "fire_alarm", principal, pool, now_ms, command_wait_ms, idempotency_key)

    @post("/{school_id:int}/fire-alarm/reset", status_code=200, opt=answers(202, 409))
    async def reset_alarm(
        self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
        command_wait_ms: db.CommandWaitMs, idempotency_key: str | None = IdempotencyHeader,
    ) -> Response[CommandOut]:
        """Reset the alarm: turnstiles back to normal, presence reconciled (everyone may enter)."""
        return await self._fire(school_id, "fire_reset", principal, pool, now_ms, command_wait_ms, idempotency_key)

    async def _fire(self, school_id, kind, principal, pool, now_ms, wait_ms, idempotency_key) -> Response[CommandOut]:
        principal.require(*WRITERS, action="raise or reset a fire alarm")
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn:
            await db.school_row(conn, school_id)
        # An alarm button pressed twice is one alarm (the gateway raises it once); a key is
        # optional, and without one each press is its own command.
        key = _key(idempotency_key) if idempotency_key is not None else f"{kind}:{school_id}:{uuid.uuid4()}"
        return await run_command(pool, principal, key, kind, {"school_id": school_id, "by": principal.login}, now_ms,
                                 wait_ms, audit_action=f"school.{kind}")

    @get("/{school_id:int}/fire-alarm")
    async def get_alarm(self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep) -> AlarmOut:
        """The school's latest alarm: who was inside at that instant, by class (the muster list,
        kept for good), who has been reported leaving since, which turnstiles released."""
        principal.require(*READERS, action="read a school's fire alarm")
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn:
            await db.school_row(conn, school_id)
            alarm = await building.latest_alarm(conn, school_id)
            turnstiles = await conn.fetchval(
                "SELECT count(*) FROM devices WHERE school_id = $1 AND kind = $2", school_id, int(DeviceKind.TURNSTILE))
        if alarm is None:
            raise refuse(NotFoundException, Refusal.NO_FIRE_ALARM, school_id=school_id)
        classes: dict[tuple[int, str], MusterClass] = {}
        for m in alarm.muster:
            group = classes.get((m.grade, m.class_name))
            if group is None:
                group = classes[(m.grade, m.class_name)] = MusterClass(m.grade, m.class_name, [])
            group.pupils.append(MusterPupil(m.account_id, m.full_name, m.evacuated_at_ms))
        return AlarmOut(
            school_id=school_id, key=f"{alarm.device_id}:{alarm.device_txn}", raised_at_ms=alarm.raised_at_ms,
            source=alarm.source, active=alarm.reset_at_ms is None, reset_at_ms=alarm.reset_at_ms,
            turnstiles=turnstiles,
            released=[{"device_id": d, "at_ms": at, "after_ms": at - alarm.raised_at_ms} for d, at in alarm.released],
            mustered=len(alarm.muster), evacuated=sum(1 for m in alarm.muster if m.evacuated_at_ms is not None),
            classes=list(classes.values()),
        )
