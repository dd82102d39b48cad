"""The group-commit writer's schedule, without PostgreSQL: when a batch is due.

A batch leaves once its oldest entry has waited ``flush_interval_ms`` (or a full batch
waits, or the writer stops), counted from that entry's arrival, not from the end of the
previous flush: entries that arrived during a slow flush go at once when it ends.
"""

from __future__ import annotations

import asyncio
import time

from ledger.records import JournalEntry, JournalRow
from storage.journal import JournalWriter
from tests.support import async_wait_until


def _entry(txn: int, enqueued_ns: int) -> JournalEntry:
    row = JournalRow(1_000_001, txn, 1, 30, b"\x04\x00\x00\x00\x00\x00\x1e", 1, None, None, 0, 50_000, False,
                     None, 1_795_550_000_000, 1_795_550_000_000, None, None)
    return JournalEntry(row, (), (), None, enqueued_ns)


class _SlowDatabase:
    """Takes ``statement_s`` per statement and notes when each one started and ended."""

    def __init__(self, statement_s: float) -> None:
        self.statement_s = statement_s
        self.started: list[float] = []
        self.ended: list[float] = []
        self.rows: list[int] = []

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass

    async def fetchval(self, sql: str, rows, *json_params, timeout: float | None = None) -> int:
        self.started.append(time.perf_counter())
        await asyncio.sleep(self.statement_s)
        self.ended.append(time.perf_counter())
        self.rows.append(len(rows))
        return len(rows)


def _writer(db: _SlowDatabase, committed: list, interval_ms: int, batch_max: int = 100) -> JournalWriter:
    async def connect():
        return db

    return JournalWriter(
        connect, lambda entries, _ns: committed.extend(entries), flush_interval_ms=interval_ms,
        batch_events_max=batch_max, queue_events_max=1_000, statement_timeout_ms=5_000, retry_backoff_ms_max=100,
    )


def test_a_batch_is_due_an_interval_after_its_oldest_entry_arrived():
    writer = _writer(_SlowDatabase(0), [], interval_ms=20, batch_max=3)
    assert writer._due_in_s() is None  # nothing waits: an append wakes the writer
    now = time.perf_counter_ns()
    writer.append(_entry(1, now))
    due = writer._due_in_s()
    assert due is not None and 0 < due <= 0.020
    writer._queue.clear()
    writer.append(_entry(1, now - 30_000_000))  # arrived 30 ms ago: due already
    assert writer._due_in_s() == 0.0
    writer._queue.clear()
    for txn in (1, 2, 3):  # a full batch leaves at once however young
        writer.append(_entry(txn, time.perf_counter_ns()))
    assert writer._due_in_s() == 0.0


def test_entries_that_came_during_a_slow_flush_leave_when_it_ends():
    """The statement takes 300 ms, the interval is 200 ms: the entry that came 10 ms into the
    first flush has waited longer than the interval when it ends, so the second flush starts
    at once. (Counting the interval from the end of the flush, it started 200 ms later.)"""
    db = _SlowDatabase(0.3)
    committed: list[JournalEntry] = []

    async def main() -> None:
        writer = _writer(db, committed, interval_ms=200)
        task = asyncio.create_task(writer.run())
        writer.append(_entry(1, time.perf_counter_ns()))
        await async_wait_until(lambda: len(db.started) == 1, 5, "the first flush to start")
        await asyncio.sleep(0.01)
        writer.append(_entry(2, time.perf_counter_ns()))
        await async_wait_until(lambda: len(db.started) == 2, 5, "the second flush to start")
        assert db.started[1] - db.ended[0] < 0.15, "the second batch waited for another interval"
        assert await writer.stop(task, 5) == 0

    asyncio.run(main())
    assert db.rows == [1, 1]
    assert [e.row.device_txn for e in committed] == [1, 2]


def test_an_idle_writer_is_woken_by_the_first_entry_and_stops_when_empty():
    """With nothing queued the writer waits without a timer; the first append must wake it."""
    db = _SlowDatabase(0)
    committed: list[JournalEntry] = []

    async def main() -> None:
        writer = _writer(db, committed, interval_ms=5)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0.05)  # idle: nothing to write
        assert db.started == []
        writer.append(_entry(1, time.perf_counter_ns()))
        await async_wait_until(lambda: len(committed) == 1, 5, "the entry to be written")
        assert await writer.stop(task, 5) == 0
        assert task.done()

    asyncio.run(main())
