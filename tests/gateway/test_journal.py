"""The journal under a failing database: cut PostgreSQL off through a TCP proxy, bring it back.

While the database is away the gateway keeps deciding from memory as long as
the journal queue has room, then refuses with TRY_AGAIN_LATER (an ADVICE gets
NAK SERVER_BUSY: it is never declined). When the database returns, the writer
reconnects by itself and everything accepted becomes durable, exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from protocol import TXN_FLAG_ADVICE, Decision, DenyReason, DeviceKind, Nak, NakReason
from tests.support import TcpProxy, async_wait_until, pg_upstream, proxied_dsn
from tests.gateway.test_gateway import TILL, balance, device, fetch, purchase, running_gateway, wait_durable


def test_database_outage_fills_queue_then_refuses_then_recovers(demo_dsn):
    upstream, _ = pg_upstream(demo_dsn)
    proxy = TcpProxy(upstream).start()
    dsn = proxied_dsn(demo_dsn, proxy.port)

    async def main():
        async with running_gateway(
            dsn, journal_queue_events_max=20, batch_events_max=10, statement_timeout_ms=500, retry_backoff_ms_max=50
        ) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            assert (await d.request(purchase(1, 30, price=100))).outcome == 1
            await asyncio.wait_for(wait_durable(d, 1), 10)
            proxy.cut()
            accepted = 1
            txn = 1
            while True:
                txn += 1
                reply = await d.request(purchase(txn, 30, price=100))
                if reply.outcome == 0:
                    break
                accepted += 1
            assert type(reply) is Decision and reply.reason == DenyReason.TRY_AGAIN_LATER
            assert gw.core.journal.depth == 20
            txn += 1
            busy = await d.request(purchase(txn, 30, price=100, flags=TXN_FLAG_ADVICE))
            assert type(busy) is Nak and busy.reason == NakReason.SERVER_BUSY
            assert gw.core.state.accounts.balance[30] == 50_000 - 100 * accepted
            await async_wait_until(lambda: gw.core.journal.flush_failures > 0, 10, "the writer to meet the outage")
            proxy.restore()
            await async_wait_until(lambda: gw.core.journal.depth == 0, 30, "the queue to drain after recovery")
            await asyncio.wait_for(wait_durable(d, txn - 2), 10)
            # The advice that met a full queue is replayed and now applied.
            later = await d.request(purchase(txn, 30, price=100, flags=TXN_FLAG_ADVICE))
            assert later.outcome == 1
            accepted += 1
            await asyncio.wait_for(wait_durable(d, txn), 10)
            return accepted

    try:
        accepted = asyncio.run(main())
    finally:
        proxy.close()

    async def check():
        assert await balance(demo_dsn, 30) == 50_000 - 100 * accepted
        rows = await fetch(demo_dsn, "SELECT count(*), sum(amount_kopecks) FROM journal WHERE account_id = 30")
        assert tuple(rows[0]) == (accepted, 100 * accepted)
        total = await fetch(demo_dsn, "SELECT sum(balance_kopecks) FROM accounts")
        assert total[0][0] == 0

    asyncio.run(check())


def test_gateway_starts_deciding_even_if_the_writer_connects_late(demo_dsn):
    """Cut after start: decisions continue from memory; the writer catches up on restore."""
    upstream, _ = pg_upstream(demo_dsn)
    proxy = TcpProxy(upstream).start()
    dsn = proxied_dsn(demo_dsn, proxy.port)

    async def main():
        async with running_gateway(dsn, statement_timeout_ms=500, retry_backoff_ms_max=50) as gw:
            proxy.cut()
            d = await device(gw, TILL, DeviceKind.TILL)
            for txn in range(1, 31):
                assert (await d.request(purchase(txn, 31, price=10))).outcome == 1
            assert gw.core.journal.depth == 30
            proxy.restore()
            await asyncio.wait_for(wait_durable(d, 30), 30)

    try:
        asyncio.run(main())
    finally:
        proxy.close()

    async def check():
        assert await balance(demo_dsn, 31) == 50_000 - 300

    asyncio.run(check())


def test_the_journal_row_type_is_the_ledger_record_with_the_journal_columns_types(pg_dsn):
    """The writer sends journal rows as journal_row[] (migration 0023), built from JournalRow's
    fields by position: the type must have those fields, in that order, typed as the journal's
    columns, or a row would land in the wrong columns or be refused."""
    import asyncpg

    from ledger.records import JournalRow

    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            def attributes(relation: str):
                return conn.fetch(
                    """SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a
                       WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
                    relation,
                )

            row_type = [tuple(r) for r in await attributes("journal_row")]
            columns = dict(tuple(r) for r in await attributes("journal"))
        finally:
            await conn.close()
        assert [name for name, _ in row_type] == list(JournalRow.__struct_fields__)
        assert all(columns[name] == type_ for name, type_ in row_type), (row_type, columns)

    asyncio.run(main())


def test_the_account_checkpoint_type_is_the_ledger_record_with_the_accounts_columns_types(demo_dsn):
    """The writer sends the accounts' checkpoints as account_checkpoint[] (migration 0025), built
    from AccountCheckpoint's fields by position with the counters as msgspec's JSON bytes, which
    accounts.counters keeps as they are: a restart decodes them back to the same counters."""
    import asyncpg
    import msgspec

    from ledger.records import AccountCheckpoint, AccountCounters
    from storage import snapshot

    counters = AccountCounters(spent_day=20_600, spent_kopecks=12_345, grace_used=2, low_alerted=True,
                               period_spent=(("lunch", 9_000),), presence=1, passage_ms=1_795_550_000_000)

    async def main():
        conn = await asyncpg.connect(demo_dsn)
        try:
            fields = await conn.fetch(
                """SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a
                   WHERE a.attrelid = 'account_checkpoint'::regclass AND a.attnum > 0 ORDER BY a.attnum""")
            columns = dict(tuple(r) for r in await conn.fetch(
                """SELECT column_name, data_type FROM information_schema.columns
                   WHERE table_name = 'accounts' AND column_name IN ('id', 'balance_kopecks', 'counters')"""))
            account_id = await conn.fetchval("SELECT min(id) FROM accounts WHERE kind = 1")
            checkpoint = AccountCheckpoint(account_id, -4_200, counters)
            await conn.execute(
                "UPDATE accounts AS a SET balance_kopecks = v.balance_kopecks, counters = v.counters "
                "FROM unnest($1::account_checkpoint[]) AS v WHERE a.id = v.account_id",
                [(account_id, checkpoint.balance_kopecks, msgspec.json.encode(checkpoint.counters))])
            loaded = [r async for chunk in snapshot.accounts(conn) for r in chunk if r[0] == account_id]
        finally:
            await conn.close()
        assert [r[0] for r in fields] == list(AccountCheckpoint.__struct_fields__)
        assert [r[1] for r in fields] == ["bigint", "bigint", "bytea"]
        assert columns == {"id": "bigint", "balance_kopecks": "bigint", "counters": "bytea"}
        assert [(r[4], snapshot.decode_counters(r[6])) for r in loaded] == [(-4_200, counters)]

    asyncio.run(main())


def test_a_batch_meeting_a_key_already_journaled_is_written_by_the_retry_and_logged(pg_dsn, caplog):
    """A first attempt inserts plainly; a key already there (a double decision: a bug) fails it,
    and the retry, which skips what is there, writes the rest and says so in the error log.
    Nothing is lost and nothing is written twice; every entry is reported durable."""
    import logging
    import time

    import asyncpg

    from ledger.records import JournalEntry, JournalRow, OutboxEvent
    from ledger.notices import EntryNotice
    from storage.journal import JournalWriter

    def entry(txn: int) -> JournalEntry:
        row = JournalRow(1_000_001, txn, 2, 30, b"\x04\x00\x00\x00\x00\x00\x1e", 1, None, None, 0, 50_000, False,
                         None, 1_795_550_000_000, 1_795_550_000_000, None, None, txn)
        notice = EntryNotice(account_id=30, school_id=1, at_ms=1_795_550_000_000, device_id=1_000_001)
        event = OutboxEvent(f"1000001:{txn}:entry", "entry", 30, notice, 1_795_550_000_000)
        return JournalEntry(row, (), (event,), None, time.perf_counter_ns())

    async def write(entries: list[JournalEntry]) -> list[JournalEntry]:
        committed: list[JournalEntry] = []
        writer = JournalWriter(
            lambda: asyncpg.connect(pg_dsn), lambda batch, _ns: committed.extend(batch), flush_interval_ms=5,
            batch_events_max=100, queue_events_max=1_000, statement_timeout_ms=10_000, retry_backoff_ms_max=100,
        )
        for e in entries:
            writer.append(e)
        task = asyncio.create_task(writer.run())
        assert await writer.stop(task, 30) == 0
        return committed

    async def main():
        assert len(await write([entry(1)])) == 1
        with caplog.at_level(logging.INFO, logger="ecard.journal"):
            committed = await write([entry(1), entry(2), entry(3)])
        assert [e.row.device_txn for e in committed] == [1, 2, 3]
        first_failures = [r for r in caplog.records if "UniqueViolation" in r.getMessage()]
        assert first_failures, "the plain first attempt should have met the key already there"
        assert any(r.levelno == logging.ERROR and "1 already-journaled" in r.getMessage() for r in caplog.records)
        conn = await asyncpg.connect(pg_dsn)
        try:
            txns = [r[0] for r in await conn.fetch("SELECT device_txn FROM journal ORDER BY device_txn")]
            events = [r[0] for r in await conn.fetch("SELECT event_id FROM outbox_events ORDER BY row_id, position")]
        finally:
            await conn.close()
        assert txns == [1, 2, 3]
        assert events == ["1000001:1:entry", "1000001:2:entry", "1000001:3:entry"]

    asyncio.run(main())


def test_a_commits_events_for_parents_go_in_rows_of_at_most_row_events_max_and_a_retry_adds_none(pg_dsn):
    """A group commit writes its events as outbox rows of up to ROW_EVENTS_MAX, in decision order
    (``outbox_events`` reads them one by one); the retry of a batch that had committed (its outcome
    unknown to the writer) writes neither journal rows nor events again."""
    import time

    import asyncpg
    import msgspec

    from ledger.notices import EntryNotice
    from ledger.records import JournalEntry, JournalRow, OutboxEvent
    from storage import outbox
    from storage.journal import _FLUSH, _FLUSH_RETRY, _outbox_rows
    from storage.outbox import BATCH_KIND, ROW_EVENTS_MAX

    def entry(txn: int) -> JournalEntry:
        row = JournalRow(1_000_001, txn, 2, 30, b"\x04\x00\x00\x00\x00\x00\x1e", 1, None, None, 0, 50_000, False,
                         None, 1_795_550_000_000, 1_795_550_000_000 + txn, None, None, None)
        notice = EntryNotice(account_id=30, school_id=1, at_ms=1_795_550_000_000 + txn, device_id=1_000_001)
        return JournalEntry(row, (), (OutboxEvent(f"1000001:{txn}:entry", "entry", 30, notice, 1_795_550_000_000 + txn),),
                            None, time.perf_counter_ns())

    count = 2 * ROW_EVENTS_MAX + 22
    entries = [entry(txn) for txn in range(1, count + 1)]
    events = [e for entry_ in entries for e in entry_.outbox]
    args = (
        [msgspec.structs.astuple(e.row) for e in entries], [], "[]",
        _outbox_rows(events), "[]",
    )

    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval(_FLUSH, *args) == count
            rows = await conn.fetch("SELECT id, event_id, kind, events, created_at_ms FROM outbox ORDER BY id")
            assert [(r["kind"], r["events"]) for r in rows] == [
                (BATCH_KIND, ROW_EVENTS_MAX), (BATCH_KIND, ROW_EVENTS_MAX), (BATCH_KIND, 22)
            ]
            assert [r["event_id"] for r in rows] == [f"{BATCH_KIND}:1000001:{n}:entry" for n in (1, 65, 129)]
            assert [r["created_at_ms"] for r in rows] == [1_795_550_000_000 + n for n in (1, 65, 129)]
            stored = await conn.fetch("SELECT event_id, kind, account_id, payload::text AS payload, created_at_ms "
                                      "FROM outbox_events ORDER BY row_id, position")
            assert [r["event_id"] for r in stored] == [e.event_id for e in events]
            assert all(
                (r["kind"], r["account_id"], r["created_at_ms"]) == (e.kind, e.account_id, e.created_at_ms)
                and msgspec.json.decode(r["payload"], type=EntryNotice) == e.payload
                for r, e in zip(stored, events)
            )
            # The relay splits the rows' bytes itself: the same events, in order, whole rows at a time.
            pending = await outbox.pending(conn, ROW_EVENTS_MAX + 1, timeout_s=10)
            assert [p.event_id for p in pending] == [e.event_id for e in events[: 2 * ROW_EVENTS_MAX]]
            assert [p.id for p in pending] == [r["id"] for r in rows[:2] for _ in range(ROW_EVENTS_MAX)]
            assert all(
                (p.kind, p.account_id, p.school_id, p.created_at_ms) == (e.kind, e.account_id, 1, e.created_at_ms)
                and msgspec.json.decode(p.notice, type=EntryNotice) == e.payload
                for p, e in zip(pending, events)
            )
            # A row holds its events one way: a batch row as bytes, a single row as jsonb, never both or neither.
            for kind, payload, batch in (("batch", '{"school_id": 1}', None), ("batch", '{"school_id": 1}', b"[]"),
                                         ("entry", None, b"[]"), ("entry", '{"school_id": 1}', b"[]"),
                                         ("entry", None, None), ("batch", None, None)):
                with pytest.raises(asyncpg.CheckViolationError):
                    await conn.execute(
                        "INSERT INTO outbox (event_id, kind, account_id, payload, batch_events, created_at_ms) "
                        "VALUES ('check', $1, 30, $2::jsonb, $3, 0)", kind, payload, batch)
            # The same batch again, as the writer retries one whose COMMIT it did not hear of.
            assert await conn.fetchval(_FLUSH_RETRY, *args) == 0
            assert await conn.fetchval("SELECT count(*) FROM outbox") == 3
            assert await conn.fetchval("SELECT count(*) FROM outbox_events") == count
        finally:
            await conn.close()

    asyncio.run(main())
