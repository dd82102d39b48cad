"""The journal writer: group commit of accepted device transactions.

The gateway appends entries synchronously (no await on the hot path); a flusher
task writes them every ``flush_interval_ms`` or every ``batch_events_max``
entries, whichever comes first, in ONE statement per batch (atomic): the
journal rows, one set-based UPDATE of the balances and day counters they leave
(the machine's checkpoints), the results of money commands and the outbox
events that came with them. Only after COMMIT are entries dropped from the
queue and reported durable (the machine then moves the devices' prefix
watermarks), so a failed batch is retried whole, and exactly: after a failure
whose outcome is unknown the same entries go again, and rows already there are
skipped (ON CONFLICT), which the log then reports as such.

The queue is bounded (``queue_events_max``): when PostgreSQL is slow or down the
gateway keeps deciding while there is room, then refuses with TRY_AGAIN_LATER.
The writer reconnects by itself with a capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import islice
from typing import Awaitable, Callable

import asyncpg
import msgspec

from ledger.records import AccountCheckpoint, JournalEntry

from .outbox import OUTBOX_CHANNEL

log = logging.getLogger("ecard.journal")

DONE_CHANNEL = "ecard_command_done"
# pg_notify payloads must stay under 8000 bytes: command seqs go in chunks.
NOTIFY_SEQS_MAX = 500

# One group commit is ONE statement (one round trip, atomic without BEGIN/COMMIT):
# a round trip costs a turn of the event loop, which is busy with the devices, so
# a flush of several statements waited for several turns. The batch travels as
# JSON (encoded in C by msgspec from the ledger's records; bytes as base64) and
# PostgreSQL unpacks it as jsonb: parsed once per batch, then ``->>N`` is an index
# into a parsed array. (As ``json`` every ``->>`` re-scanned the element's text:
# 19.5 us of backend CPU per journal row against 10-11 us as jsonb, measured with
# 2,000-row batches; binary arrays through ``unnest`` cost PostgreSQL about the same
# as jsonb and the gateway more; measured again for issue 7 with 64-row batches: taking the
# parameters apart costs PostgreSQL ~9 us per journal row either way (the rest is the writes),
# unnest costs the gateway ~4x the encoding, jsonb_to_recordset saves nothing.) Positions
# r->>N are the fields of ledger.records.JournalRow
# in order; $2 holds AccountCheckpoint arrays, $4 OutboxEvent arrays, $5 AccessEvent arrays.
_FLUSH = f"""
WITH j AS (
    INSERT INTO journal (device_id, device_txn, kind, account_id, identifier, direction, debit_account_id,
                         credit_account_id, amount_kopecks, balance_after_kopecks, advice, device_time_ms,
                         decided_at_ms, happened_at_ms, cashier_id, items, granted_txn)
    SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::smallint, (r->>3)::bigint, decode(r->>4, 'base64'),
           (r->>5)::smallint, (r->>6)::bigint, (r->>7)::bigint, (r->>8)::bigint, (r->>9)::bigint,
           (r->>10)::boolean, (r->>11)::bigint, (r->>12)::bigint, (r->>13)::bigint, (r->>14)::bigint,
           decode(r->>15, 'base64'), (r->>16)::bigint
    FROM jsonb_array_elements($1::jsonb) AS r
    ON CONFLICT (device_id, device_txn) DO NOTHING
    RETURNING 1
), b AS (
    -- each touched account as the batch leaves it (the machine is the only writer):
    -- balance and the day counters a restart restores
    UPDATE accounts AS a SET balance_kopecks = (v->>1)::bigint, counters = (v->2)::jsonb
    FROM jsonb_array_elements($2::jsonb) AS v
    WHERE a.id = (v->>0)::bigint
    RETURNING 1
), c AS (
    UPDATE commands AS c SET status = (v->>'status')::smallint, result = (v->'result')::jsonb,
                             decided_at_ms = (v->>'decided_at_ms')::bigint
    FROM jsonb_array_elements($3::jsonb) AS v
    WHERE c.seq = (v->>'seq')::bigint AND c.status = 0
    RETURNING c.seq
), o AS (
    INSERT INTO outbox (event_id, kind, account_id, payload, created_at_ms)
    SELECT v->>0, v->>1, (v->>2)::bigint, (v->3)::jsonb, (v->>4)::bigint FROM jsonb_array_elements($4::jsonb) AS v
    ON CONFLICT (event_id) DO NOTHING
    RETURNING 1
), a AS (
    -- what happened at the doors besides entries and exits (ledger.records.AccessEvent)
    INSERT INTO access_events (kind, school_id, account_id, device_id, device_txn, direction, at_ms, detail)
    SELECT (v->>0)::smallint, (v->>1)::bigint, (v->>2)::bigint, (v->>3)::bigint, (v->>4)::bigint,
           (v->>5)::smallint, (v->>6)::bigint, v->>7
    FROM jsonb_array_elements($5::jsonb) AS v
    ON CONFLICT (kind, device_id, device_txn, account_id) WHERE device_id <> 0 OR device_txn <> 0 DO NOTHING
    RETURNING 1
), w AS (
    -- wakes the relay at COMMIT when the batch brought events for parents
    SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM (SELECT 1 FROM o LIMIT 1) AS any_event
), n AS (
    -- delivered at COMMIT: whoever waits for a command learns it is durable; payloads
    -- stay under PostgreSQL's 8000 bytes in groups of NOTIFY_SEQS_MAX
    SELECT pg_notify('{DONE_CHANNEL}', string_agg(seq::text, ','))
    FROM (SELECT seq, (row_number() OVER ()) / {NOTIFY_SEQS_MAX} AS g FROM c) AS s GROUP BY g
)
SELECT (SELECT count(*) FROM j) + 0 * (SELECT count(*) FROM b) + 0 * (SELECT count(*) FROM o)
       + 0 * (SELECT count(*) FROM n) + 0 * (SELECT count(*) FROM w) + 0 * (SELECT count(*) FROM a)
"""
_encode = msgspec.json.Encoder().encode

OnCommit = Callable[[list[JournalEntry], int], None]


def _release(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class JournalWriter:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        on_commit: OnCommit,
        *,
        flush_interval_ms: int,
        batch_events_max: int,
        queue_events_max: int,
        statement_timeout_ms: int,
        retry_backoff_ms_max: int,
    ) -> None:
        assert 0 < batch_events_max <= queue_events_max
        self._connect = connect
        self._on_commit = on_commit
        self._flush_interval_s = flush_interval_ms / 1000
        self._batch_events_max = batch_events_max
        self._queue_events_max = queue_events_max
        self._statement_timeout_s = statement_timeout_ms / 1000
        self._retry_backoff_s_max = retry_backoff_ms_max / 1000
        self._queue: deque[JournalEntry] = deque()
        # The flusher's wait for a full batch or the flush interval: a future and a timer
        # (asyncio.wait_for of an Event cost about five times the CPU per flush: a task per wait).
        self._waiter: asyncio.Future | None = None
        self._stopping = False
        self._conn: asyncpg.Connection | None = None
        # After a failure whose outcome is unknown (the connection broke during the
        # statement: it may have committed), the same batch is retried exactly: its
        # rows then either all went in before (0 inserted now) or none did.
        self._retry_events = 0
        self.connected = False
        self.flush_failures = 0

    # -- hot path (synchronous)

    def has_room(self) -> bool:
        return len(self._queue) < self._queue_events_max

    def append(self, entry: JournalEntry) -> None:
        """Called by the ledger machine, synchronously, for every accepted decision."""
        assert len(self._queue) < self._queue_events_max, "caller must check has_room()"
        self._queue.append(entry)
        if len(self._queue) >= self._batch_events_max:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def oldest_age_ns(self, now_ns: int) -> int:
        return now_ns - self._queue[0].enqueued_ns if self._queue else 0

    # -- flusher task

    async def run(self) -> None:
        backoff_s = 0.05
        try:
            await self._ensure_connection()
        except _FAILURES as exc:
            log.warning("journal writer cannot connect yet (%s); it will retry", exc)
        while True:
            if len(self._queue) < self._batch_events_max and not self._stopping:
                loop = asyncio.get_running_loop()
                self._waiter = waiter = loop.create_future()
                timer = loop.call_later(self._flush_interval_s, _release, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
            if not self._queue:
                if self._stopping:
                    return
                continue
            try:
                await self._flush_once()
                backoff_s = 0.05
            except _FAILURES as exc:
                self.flush_failures += 1
                log.warning("journal flush failed (%s: %s); %d entries wait", type(exc).__name__, exc, len(self._queue))
                await self._drop_connection()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_backoff_s_max)

    async def _ensure_connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncio.wait_for(self._connect(), self._statement_timeout_s)
            self.connected = True
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None:
            conn.terminate()

    async def _flush_once(self) -> None:
        retrying = self._retry_events
        batch = list(islice(self._queue, retrying or self._batch_events_max))
        rows = []
        accounts: dict[int, AccountCheckpoint] = {}
        outbox = []
        commands = []
        access = []
        for entry in batch:
            for checkpoint in entry.accounts:
                accounts[checkpoint.account_id] = checkpoint  # entries are in decision order: the last one wins
            if entry.row is not None:
                rows.append(entry.row)
            if entry.outbox:
                outbox.extend(entry.outbox)
            if entry.command is not None:
                commands.append(entry.command)
            if entry.access:
                access.extend(entry.access)
        started_ns = time.perf_counter_ns()
        conn = await self._ensure_connection()
        encode = _encode
        self._retry_events = len(batch)  # until we know the outcome
        inserted = await conn.fetchval(
            _FLUSH,
            encode(rows).decode(),
            encode(list(accounts.values())).decode(),
            encode(commands).decode(),
            encode(outbox).decode(),
            encode(access).decode(),
            timeout=self._statement_timeout_s,
        )
        self._retry_events = 0
        if inserted != len(rows) and not (retrying and inserted == 0):
            # The machine de-duplicates before it decides, so this is a bug worth shouting
            # about; the new rows went in, the others stayed as they were.
            log.error("journal batch held %d already-journaled (device, txn)", len(rows) - inserted)
        elif retrying and inserted == 0 and rows:
            log.info("journal batch of %d rows had committed before its connection broke", len(rows))
        duration_ns = time.perf_counter_ns() - started_ns
        for _ in range(len(batch)):
            self._queue.popleft()
        self._on_commit(batch, duration_ns)

    async def stop(self, task: asyncio.Task, timeout_s: float) -> int:
        """Flush what is queued within ``timeout_s``, then stop. Returns the entries left unwritten."""
        self._stopping = True
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
        await self._drop_connection()
        return len(self._queue)
