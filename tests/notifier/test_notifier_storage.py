"""storage.deliveries against PostgreSQL: durable de-duplication, claims that never overlap,
leases taken over, outcomes guarded by the claim, the reads operators and parents use."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from notifier_support import purchase, seed
from storage import deliveries as store
from storage.deliveries import Outcome, Target

NOW = 1_764_063_660_000


async def take(conn, event_id: str, targets: list[Target], account_id: int = 1, at_ms: int = NOW, now_ms: int = NOW):
    _, notice = purchase(account_id)
    return await store.take_in(
        conn, event_id=event_id, kind="purchase", account_id=account_id, school_id=1, at_ms=at_ms,
        created_at_ms=at_ms, notice_json=msgspec.json.encode(notice).decode(), targets=targets, now_ms=now_ms,
    )


def run(dsn: str, body):
    async def main():
        conn = await asyncpg.connect(dsn)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


TARGETS = [Target(1, "email", "parent1@example.ru"), Target(1, "app_push", "ecard/v1/representatives/1/events"),
           Target(2, "email", "granny1@example.ru")]


def test_an_event_is_taken_in_once(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        assert await take(conn, "e1", TARGETS) == 3
        assert await take(conn, "e1", TARGETS) is None  # a redelivery: nothing written
        assert await take(conn, "e1", TARGETS[:1]) is None
        assert await take(conn, "e2", TARGETS) == 3
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 6
        tr = conn.transaction()  # rolled back (a crash before COMMIT): nothing stays
        await tr.start()
        assert await take(conn, "e3", TARGETS) == 3
        await tr.rollback()
        assert await conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = 'e3'") == 0
        assert await take(conn, "e3", TARGETS) == 3  # it comes again after the rollback and is taken in
        assert await take(conn, "e4", []) == 0  # nobody to tell: recorded all the same
        assert await take(conn, "e4", TARGETS) is None
        rows = await store.by_event(conn, "e1")
        assert [(d.representative_id, d.channel, d.status, d.attempts) for d in rows] == [
            (1, "email", "pending", 0), (1, "app_push", "pending", 0), (2, "email", "pending", 0)]

    run(pg_dsn, body)


def test_a_batch_is_taken_in_in_one_statement_each_event_once(pg_dsn):
    seed(pg_dsn)
    _, notice = purchase(1)
    json = msgspec.json.encode(notice).decode()

    def event(event_id: str, targets: list[Target]) -> store.EventIn:
        return store.EventIn(event_id, "purchase", 1, 1, NOW, NOW, json, targets)

    async def body(conn):
        assert await take(conn, "before", TARGETS) == 3
        batch = [event("b1", TARGETS), event("before", TARGETS), event("b2", TARGETS[:1]), event("b1", TARGETS),
                 event("b3", [])]
        # taken in before: None; the same event twice in one batch: the second None, nothing doubled
        assert await store.take_in_batch(conn, batch, now_ms=NOW) == [3, None, 1, None, 0]
        assert await store.take_in_batch(conn, batch, now_ms=NOW) == [None] * 5
        rows = await conn.fetch("SELECT event_id, count(*) AS n FROM deliveries GROUP BY event_id ORDER BY event_id")
        assert [(r["event_id"], r["n"]) for r in rows] == [("b1", 3), ("b2", 1), ("before", 3)]
        deliveries = await conn.fetchval("SELECT deliveries FROM processed_events WHERE event_id = 'b2'")
        assert deliveries == 1
        assert await store.take_in_batch(conn, [], now_ms=NOW) == []

    run(pg_dsn, body)


def test_claims_never_overlap_and_outcomes_need_the_claim(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        for n in range(20):
            await take(conn, f"e{n}", TARGETS)
        other = await asyncpg.connect(pg_dsn)
        try:
            a, b = await asyncio.gather(
                store.claim_due(conn, now_ms=NOW, limit=40, lease_ms=1_000, worker="a", channels=["email", "app_push"]),
                store.claim_due(other, now_ms=NOW, limit=40, lease_ms=1_000, worker="b", channels=["email", "app_push"]),
            )
        finally:
            await other.close()
        assert len(a) + len(b) == 60 and not {d.id for d in a} & {d.id for d in b}
        assert all(d.attempts == 1 and not d.interrupted and d.representative_active for d in a + b)
        # Only e-mail asked for: push deliveries are left alone.
        assert await store.claim_due(conn, now_ms=NOW, limit=10, lease_ms=1_000, worker="c", channels=["email"]) == []
        # b's outcome written by a is ignored: the claim is b's.
        assert await store.finish(conn, [Outcome(b[0].id, "sent", NOW, None)], now_ms=NOW, worker="a") == 0
        assert await store.finish(conn, [Outcome(d.id, "sent", NOW, None) for d in a], now_ms=NOW, worker="a") == len(a)
        # b dies: after the lease its claims are due again, taken over and counted as interrupted.
        taken = await store.claim_due(conn, now_ms=NOW + 1_000, limit=100, lease_ms=1_000, worker="c",
                                      channels=["email", "app_push"])
        assert {d.id for d in taken} == {d.id for d in b}
        assert all(d.attempts == 2 and d.interrupted for d in taken)
        record = (await store.by_event(conn, taken[0].event_id))
        mine = next(d for d in record if d.id == taken[0].id)
        assert mine.interrupted_attempts == 1 and mine.last_error.startswith("interrupted")
        # c restarts: its own claims are due at once, without waiting for the lease.
        assert await store.reclaim_interrupted(conn, worker="c", now_ms=NOW + 1_001) == len(taken)
        again = await store.claim_due(conn, now_ms=NOW + 1_001, limit=100, lease_ms=1_000, worker="c",
                                      channels=["email", "app_push"])
        assert len(again) == len(taken)
        outcomes = [Outcome(d.id, "failed", NOW + 5_000, "SMTP 451 later") for d in again]
        assert await store.finish(conn, outcomes, now_ms=NOW + 1_002, worker="c") == len(again)
        assert await store.claim_due(conn, now_ms=NOW + 4_999, limit=100, lease_ms=1_000, worker="c",
                                     channels=["email", "app_push"]) == []
        assert await store.next_due_at_ms(conn, ["email", "app_push"]) == NOW + 5_000
        counts = await store.status_counts(conn)
        assert counts == {"sent": len(a), "failed": len(again)}

    run(pg_dsn, body)


def test_a_suspended_representative_is_seen_at_the_claim(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        await take(conn, "e1", TARGETS)
        await conn.execute("UPDATE representatives SET suspended_at_ms = 1 WHERE id = 2")
        claimed = await store.claim_due(conn, now_ms=NOW, limit=10, lease_ms=1_000, worker="a", channels=["email"])
        assert {(d.representative_id, d.representative_active) for d in claimed} == {(1, True), (2, False)}

    run(pg_dsn, body)


def test_reads_are_paginated_newest_first(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        for n in range(7):
            await take(conn, f"e{n}", TARGETS, at_ms=NOW + n)
        page1 = await store.by_representative(conn, 1, limit=5)
        page2 = await store.by_representative(conn, 1, limit=5, before_id=page1[-1].id)
        page3 = await store.by_representative(conn, 1, limit=5, before_id=page2[-1].id)
        page4 = await store.by_representative(conn, 1, limit=5, before_id=page3[-1].id)
        ids = [d.id for d in page1 + page2 + page3]
        assert len(ids) == 14 and ids == sorted(ids, reverse=True) and len(page3) == 4 and page4 == []
        assert all(d.representative_id == 1 and d.kind == "purchase" and d.account_id == 1 for d in page1)
        events = await store.events_of_pupil(conn, 1, limit=4)
        more = await store.events_of_pupil(conn, 1, limit=4, before_at_ms=events[-1].at_ms)
        assert [e.event_id for e in events + more] == [f"e{n}" for n in range(6, -1, -1)]
        assert msgspec.json.decode(events[0].notice)["kind"] == "purchase" and events[0].deliveries == 3
        assert await store.events_of_pupil(conn, 2) == []
        assert await store.dead_letters(conn) == []
        with pytest.raises(ValueError):
            await store.by_representative(conn, 1, limit=store.PAGE_ROWS_MAX + 1)
        with pytest.raises(ValueError):
            await store.by_status(conn, "lost")

    run(pg_dsn, body)


def test_the_subscribers_of_a_batch_in_one_statement(pg_dsn):
    from storage import representatives

    seed(pg_dsn)

    async def body(conn):
        found = await representatives.subscribers_of(
            conn, [(1, "purchase"), (1, "entry"), (2, "purchase"), (3, "entry"), (1, "purchase"), (99, "entry")])
        ids = [[s.representative_id for s in subs] for subs in found]
        # rep 2 wants purchases only; 3 and 4 (pupil 2) are suspended and removed; no one for 99
        assert ids == [[1, 2], [1], [], [5, 6], [1, 2], []]
        assert found[0][0].channels == ("email", "app_push", "sms")
        with pytest.raises(ValueError):
            await representatives.subscribers_of(conn, [(1, "no_such_kind")])

    run(pg_dsn, body)


def test_sms_ids_and_receipts_meet_in_either_order(pg_dsn):
    """sms_submitted (one statement) and sms_receipt: a receipt that came before the submit side
    wrote the ids is matched when they are written; one after, at once; all parts DELIVRD
    make the delivery delivered, a failed part names the delivery's status."""
    seed(pg_dsn)
    sms = [Target(1, "sms", "+79000000001")]

    async def body(conn):
        await take(conn, "s1", sms)
        await take(conn, "s2", sms)
        await take(conn, "s3", sms)
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM deliveries ORDER BY id")]

        async def row(delivery_id):
            return await conn.fetchrow("SELECT smsc_message_id, sms_parts, receipt_status, delivered_at_ms "
                                       "FROM deliveries WHERE id = $1", delivery_id)

        # receipt of part 1 first, then the ids, then part 2's receipt
        assert await store.sms_receipt(conn, "A1", "DELIVRD", now_ms=NOW + 10) is None
        await store.sms_submitted(conn, ids[0], ["A1", "A2"], now_ms=NOW)
        r = await row(ids[0])
        assert (r["smsc_message_id"], r["sms_parts"], r["receipt_status"], r["delivered_at_ms"]) == ("A1", 2, None, None)
        assert await store.sms_receipt(conn, "A2", "DELIVRD", now_ms=NOW + 20) == ids[0]
        r = await row(ids[0])
        assert (r["receipt_status"], r["delivered_at_ms"]) == ("DELIVRD", NOW + 20)
        # every receipt before the ids: delivered at once when they are written
        await store.sms_receipt(conn, "B1", "DELIVRD", now_ms=NOW + 30)
        await store.sms_submitted(conn, ids[1], ["B1"], now_ms=NOW)
        r = await row(ids[1])
        assert (r["smsc_message_id"], r["receipt_status"], r["delivered_at_ms"]) == ("B1", "DELIVRD", NOW + 30)
        # a part that failed: the delivery says so, not delivered
        await store.sms_receipt(conn, "C2", "UNDELIV", now_ms=NOW + 40)
        await store.sms_submitted(conn, ids[2], ["C1", "C2"], now_ms=NOW)
        r = await row(ids[2])
        assert (r["receipt_status"], r["delivered_at_ms"]) == ("UNDELIV", None)
        parts = await conn.fetch("SELECT smsc_message_id, delivery_id, part, parts FROM sms_parts ORDER BY 1")
        assert [tuple(p) for p in parts] == [("A1", ids[0], 1, 2), ("A2", ids[0], 2, 2), ("B1", ids[1], 1, 1),
                                             ("C1", ids[2], 1, 2), ("C2", ids[2], 2, 2)]

    run(pg_dsn, body)
