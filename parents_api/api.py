"""The parents' JSON API: the representative, their children, today, the history, deliveries,
and each of the representative's own SMS terms (plan, daily cap, quiet hours, daily digest).

Every resource takes the caller's contact (``parent_guard``) and reads through
``storage.parents``, whose queries join the contact's active representatives: an
account id that is not one of the caller's children is 404, exactly like one that does
not exist (nothing tells another family's child from no child).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, Parameter

from storage import parents
from storage import representatives as representative_store
from storage.representatives import MinuteOfDay, SmsDailyCap, SmsPlan, SmsSettings

from . import config, views
from .auth import Parent, parent_guard
from .errors import Unprocessable

from storage import deliveries as notifier_deliveries  # the notifier's records (migration 0009)

DELIVERY_EVENTS_PAGE_MAX = 50  # events per page of /deliveries (one small query each)


def _child_view(c: Any) -> dict[str, Any]:
    return {
        "account_id": c["account_id"], "full_name": c["full_name"], "grade": c["grade"],
        "class_name": c["class_name"], "school_id": c["school_id"], "school_name": c["school_name"],
        "balance_kopecks": c["balance_kopecks"], "blocked": c["account_status"] != 0,
    }


def _not_found(account_id: int) -> NotFoundException:
    return NotFoundException(f"no child with account {account_id} among yours")


ACCOUNT_ID_MAX = 2**63 - 1  # accounts.id is bigint: anything beyond is no one's child (404, not a 500)


class SmsTerms(msgspec.Struct, forbid_unknown_fields=True):
    """A representative's SMS terms. The ranges are storage.representatives' (one definition with
    the staff API and the parents' pages). Every field is required: a PUT replaces them all, so a
    field left out never quietly goes back to its default."""

    plan: SmsPlan  # free: one SMS (the text cut to 70 characters); paid: the whole text, up to 6 parts
    daily_cap: SmsDailyCap
    quiet_from_minute: MinuteOfDay  # equal to quiet_to_minute: no quiet hours
    quiet_to_minute: MinuteOfDay
    digest: bool  # one SMS a day at digest_minute instead of one per event
    digest_minute: MinuteOfDay


class SmsTermsOut(msgspec.Struct):
    representative_id: int
    school_id: int
    sms_channel: bool  # SMS among the representative's channels: the terms apply to what it is sent
    terms: SmsTerms  # the body of a PUT as it is


def _representative_not_found(representative_id: int) -> NotFoundException:
    return NotFoundException(f"no representative {representative_id} among yours")


def _own_representative(parent: Parent, representative_id: int) -> Any:
    """One of the caller's own active representative rows (the token's), else 404: another family's
    representative is answered like one that does not exist."""
    row = next((r for r in parent.representatives if r["id"] == representative_id), None)
    if row is None:
        raise _representative_not_found(representative_id)
    return row


def _terms_out(row: Any, settings: SmsSettings) -> SmsTermsOut:
    return SmsTermsOut(representative_id=row["id"], school_id=row["school_id"], sms_channel="sms" in row["channels"],
                       terms=SmsTerms(**msgspec.structs.asdict(settings)))


async def _pupil(conn, parent: Parent, account_id: int):
    pupil = await parents.child(conn, parent.contact, account_id) if 0 < account_id <= ACCOUNT_ID_MAX else None
    if pupil is None:
        raise _not_found(account_id)
    return pupil


class ParentController(Controller):
    path = "/"
    guards = [parent_guard]
    tags = ["parents"]

    @get("/me")
    async def me(self, request: Request) -> dict[str, Any]:
        """The representative (every active application with this phone or e-mail) and their children."""
        parent: Parent = request.state.parent
        children = await parents.children(request.app.state.pool, parent.contact)
        kind, _, address = parent.contact.partition(":")
        return {
            "contact": {"kind": kind, "value": address},
            "representatives": [
                {"id": r["id"], "school_id": r["school_id"], "full_name": r["full_name"], "relation": r["relation"],
                 "phone": r["phone"], "email": r["email"], "channels": list(r["channels"]), "kinds": list(r["kinds"])}
                for r in parent.representatives
            ],
            "children": [_child_view(c) for c in children],
        }

    @get("/children/{account_id:int}")
    async def child(self, request: Request, account_id: FromPath[int]) -> dict[str, Any]:
        """Name, class, balance, and today's entries, exits and meals (school local day)."""
        parent: Parent = request.state.parent
        pool = request.app.state.pool
        pupil = await _pupil(pool, parent, account_id)
        return {**_child_view(pupil),
                "today": await views.today(pool, pupil, request.app.state.settings.clock())}

    @get("/children/{account_id:int}/events")
    async def events(
        self, request: Request, account_id: FromPath[int],
        before: str | None = Parameter(default=None, max_length=64),
        limit: int = Parameter(default=config.HISTORY_LIMIT_DEFAULT, ge=1, le=config.HISTORY_LIMIT_MAX),
    ) -> dict[str, Any]:
        """The history, newest first: entries, exits, purchases (items), top-ups, transfers, refunds.
        Page on with ``before`` = the previous page's ``next_before`` (null on the last page)."""
        parent: Parent = request.state.parent
        key = None
        if before is not None:
            key = views.parse_before(before)
            if key is None:
                raise Unprocessable("before", "expected a page's next_before: <ms>.<device>.<txn>", source="query")
        async with request.app.state.pool.acquire() as conn:
            pupil = await _pupil(conn, parent, account_id)
            return await views.history_page(conn, pupil, limit, key)

    @get("/children/{account_id:int}/deliveries")
    async def deliveries(
        self, request: Request, account_id: FromPath[int],
        before_at_ms: int | None = Parameter(default=None, ge=0, le=ACCOUNT_ID_MAX),
        limit: int = Parameter(default=20, ge=1, le=DELIVERY_EVENTS_PAGE_MAX),
    ) -> dict[str, Any]:
        """What the notifier did with the child's events, newest first: for each event, its
        deliveries to the caller's own representative rows (channel, status, attempts, sent
        time); other representatives' deliveries (a grandmother's phone) are not shown.
        Page on with ``before_at_ms`` = the previous page's ``next_before_at_ms``."""
        parent: Parent = request.state.parent
        mine = {r["id"] for r in parent.representatives}
        async with request.app.state.pool.acquire() as conn:
            pupil = await _pupil(conn, parent, account_id)
            events = await notifier_deliveries.events_of_pupil(
                conn, pupil["account_id"], limit=limit + 1, before_at_ms=before_at_ms)
            out = []
            for e in events[:limit]:
                records = await notifier_deliveries.by_event(conn, e.event_id)
                out.append({
                    "event_id": e.event_id, "kind": e.kind, "at_ms": e.at_ms, "received_at_ms": e.received_at_ms,
                    "deliveries": [
                        {"channel": d.channel, "status": d.status, "attempts": d.attempts,
                         "sent_at_ms": d.sent_at_ms, "updated_at_ms": d.updated_at_ms}
                        for d in records if d.representative_id in mine
                    ],
                })
        more = len(events) > limit
        return {"account_id": account_id, "events": out,
                "next_before_at_ms": out[-1]["at_ms"] if more and out else None}

    @get("/me/representatives/{representative_id:int}/sms")
    async def sms_terms(self, request: Request, representative_id: FromPath[int]) -> SmsTermsOut:
        """The SMS terms of one of the caller's own representative rows (their ids: ``/me``): plan,
        daily cap, quiet hours and daily digest, in the school's local time (the defaults if never set)."""
        row = _own_representative(request.state.parent, representative_id)
        return _terms_out(row, await representative_store.sms_settings(request.app.state.pool, representative_id))

    @put("/me/representatives/{representative_id:int}/sms")
    async def set_sms_terms(
        self, request: Request, representative_id: FromPath[int], data: JSONBody[SmsTerms]
    ) -> SmsTermsOut:
        """Set the SMS terms of one of the caller's own representative rows: plan (free: one SMS, the
        text cut to fit; paid: the whole text in up to 6 parts), daily cap (0: none), quiet hours
        (minutes of the school's day; SMS due inside them come at their end; equal values: none) and
        the daily digest. Audited (``representative.sms``, actor ``parent:<contact>``)."""
        parent: Parent = request.state.parent
        row = _own_representative(parent, representative_id)
        settings = SmsSettings(**msgspec.structs.asdict(data))
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            if not await representative_store.lock_active(conn, representative_id):
                raise _representative_not_found(representative_id)  # suspended or removed since the token was read
            try:
                await representative_store.change_sms_settings(
                    conn, representative_id, settings, actor=f"parent:{parent.contact}",
                    now_ms=request.app.state.settings.clock())
            except ValueError as exc:  # the body's types refused it already: the pair check before the write
                field, _, why = str(exc).partition(": ")
                raise Unprocessable(field, why) from None
        return _terms_out(row, settings)
