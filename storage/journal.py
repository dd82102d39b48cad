"""The journal writer: group commit of accepted device transactions.

The gateway appends entries synchronously (no await on the hot path); a flusher
task writes them once the oldest waiting entry is ``flush_interval_ms`` old or
``batch_events_max`` entries wait, whichever comes first (a batch that waited
during the previous flush leaves as soon as that flush ends, if it is due), in
ONE statement per batch (atomic): the journal rows, one set-based UPDATE of
the balances and day counters they leave (the machine's checkpoints), the
results of money commands and the parents' events that came with them, in outbox
rows of up to ``storage.outbox.ROW_EVENTS_MAX`` events. Only after
COMMIT are entries dropped from the queue and reported durable (the machine then
moves the devices' prefix watermarks), so a failed batch is retried whole, and
exactly: after any failure the same entries go again, with a statement that
skips rows already there (ON CONFLICT DO NOTHING; a first attempt inserts
plainly), and the log says how many there were.

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

from ledger.records import AccountCheckpoint, JournalEntry, JournalRow, OutboxEvent

from .outbox import BATCH_KIND, OUTBOX_CHANNEL, ROW_EVENTS_MAX

log = logging.getLogger("ecard.journal")

DONE_CHANNEL = "ecard_command_done"
# pg_notify payloads must stay under 8000 bytes: command seqs go in chunks.
NOTIFY_SEQS_MAX = 500

# One group commit is ONE statement (one round trip, atomic without BEGIN/COMMIT):
# a round trip costs a turn of the event loop, which is busy with the devices, so
# a flush of several statements waited for several turns.
# - The journal rows ($1) travel as an array of the composite type ``journal_row``
#   (migration 0023: ledger.records.JournalRow's fields in order) in PostgreSQL's binary
#   format: asyncpg encodes the tuples in C and PostgreSQL reads the values as they are.
#   As JSON taken apart with ``->>N`` and a cast per field, the journal row cost the
#   backend 17.0 us against 11.8 us now (the gateway's own batches of 64, measured side
#   by side), for 1.2 us more of the gateway's CPU per row; binary COPY would be cheaper
#   still for PostgreSQL but needs BEGIN, COPY, the rest and COMMIT: four round trips,
#   and measured as a whole flush it saved PostgreSQL nothing and cost the gateway 2.5x.
# - The accounts' checkpoints ($2) travel the same way, as an array of ``account_checkpoint``
#   (migration 0025: AccountCheckpoint's fields, the counters as msgspec's JSON bytes, which
#   ``accounts.counters`` stores unparsed as bytea). As one jsonb array PostgreSQL parsed the
#   batch's JSON and then each account's counters again into jsonb: 30.6 / 27.0 against
#   25.0 / 20.4 us of backend CPU per journaled decision for the accounts' update (the
#   gateway's own batches of 50, side by side, two runs).
# - The events for parents ($4) too, as an array of ``outbox_batch`` (migration 0026): a row's
#   OutboxEvents as msgspec's JSON bytes, which ``outbox.batch_events`` stores unparsed (lz4
#   where the server has it). As one jsonb array of rows the outbox's INSERT cost the backend
#   12.6 / 13.3 against 7.8 / 7.4 us per journaled decision (the gateway's own batches of 50,
#   side by side, two pairs); lz4 took it to 4.4 (5.6 uncompressed, in another pair of runs).
# - The rest ($3 command results, $5 AccessEvent arrays, few and mostly empty) travels as
#   JSON (encoded in C by msgspec from the ledger's records) that PostgreSQL unpacks as jsonb:
#   parsed once per batch, then ``->>N`` is an index into a parsed array. (As ``json`` every
#   ``->>`` re-scanned the element's text.)
# The journal rows of a batch ($1, an array of journal_row) into the journal: its columns are
# JournalRow's fields, in order, as the composite type's are (migration 0023).
JOURNAL_INSERT = (
    f"INSERT INTO journal ({', '.join(JournalRow.__struct_fields__)}) SELECT r.* FROM unnest($1::journal_row[]) AS r"
)


def _flush_statement(retry: bool) -> str:
    """The group commit's statement. A batch's first attempt inserts its journal and outbox rows
    plainly: the machine decided each (device, txn) once and event ids derive from it, so they are
    new. PostgreSQL's ON CONFLICT (a speculative insertion: a probe of the unique index, then a
    confirmation record in the WAL per row) cost it 2-4 us per decision more, measured side by
    side on the gateway's own batches (22.0/22.2 against 24.1/26.3 us). The retry of a batch whose
    outcome is unknown, or which met a key already there (a bug: the error log says so), skips
    what is there already: the journal rows by their key, and the events for parents of the
    rows it skipped (they went in with those rows: an event's id begins with its row's key,
    ``device_id:device_txn:``), the rest in rows of up to ROW_EVENTS_MAX again."""
    journal_conflict = "ON CONFLICT (device_id, device_txn) DO NOTHING" if retry else ""
    if retry:
        # the kept events in rows of up to ROW_EVENTS_MAX again (rare: parsed here, as JSON)
        events = f"""
    SELECT '{BATCH_KIND}:' || (x->0->>0), '{BATCH_KIND}', 0, convert_to(x::text, 'UTF8'),
           (x->0->>4)::bigint, jsonb_array_length(x)
    FROM (
        SELECT jsonb_agg(v ORDER BY k) AS x, (k - 1) / {ROW_EVENTS_MAX} AS n
        FROM (
            SELECT e.v, row_number() OVER (ORDER BY b.n, e.n) AS k
            FROM unnest($4::outbox_batch[]) WITH ORDINALITY AS b(first_event_id, created_at_ms, events, batch_events, n)
            CROSS JOIN LATERAL jsonb_array_elements(convert_from(b.batch_events, 'UTF8')::jsonb) WITH ORDINALITY AS e(v, n)
            WHERE (split_part(e.v->>0, ':', 1)::bigint, split_part(e.v->>0, ':', 2)::bigint)
                  IN (SELECT device_id, device_txn FROM j)
        ) AS kept
        GROUP BY 2
    ) AS b
    ORDER BY n"""
    else:
        # as the writer made them: nothing in them is parsed
        events = f"""
    SELECT '{BATCH_KIND}:' || b.first_event_id, '{BATCH_KIND}', 0, b.batch_events, b.created_at_ms, b.events
    FROM unnest($4::outbox_batch[]) WITH ORDINALITY AS b(first_event_id, created_at_ms, events, batch_events, n)
    ORDER BY n"""
    return f"""
WITH j AS (
    {JOURNAL_INSERT}
    {journal_conflict}
    RETURNING {"device_id, device_txn" if retry else "1"}
), b AS (
    -- each touched account as the batch leaves it (the machine is the only writer):
    -- balance and the day counters a restart restores (bytes PostgreSQL stores unparsed)
    UPDATE accounts AS a SET balance_kopecks = v.balance_kopecks, counters = v.counters
    FROM unnest($2::account_checkpoint[]) AS v
    WHERE a.id = v.account_id
    RETURNING 1
), c AS (
    UPDATE commands AS c SET status = (v->>'status')::smallint, result = (v->'result')::jsonb,
                             decided_at_ms = (v->>'decided_at_ms')::bigint
    FROM jsonb_array_elements($3::jsonb) AS v
    WHERE c.seq = (v->>'seq')::bigint AND c.status = 0
    RETURNING c.seq
), o AS (
    -- the batch's events for parents in rows of up to ROW_EVENTS_MAX, as the JSON bytes of
    -- their OutboxEvent array (storage.outbox: the relay splits them): one tuple and three
    -- index entries per row, not per event
    INSERT INTO outbox (event_id, kind, account_id, batch_events, created_at_ms, events)
    {events}
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


_FLUSH = _flush_statement(retry=False)
_FLUSH_RETRY = _flush_statement(retry=True)
_encode = msgspec.json.Encoder().encode
_astuple = msgspec.structs.astuple


def _outbox_rows(events: list[OutboxEvent]) -> list[tuple[str, int, int, bytes]]:
    """A batch's events as ``outbox_batch`` rows of up to ROW_EVENTS_MAX, in decision order:
    (the first event's id, its created_at_ms, how many, their JSON array's bytes)."""
    rows = []
    for i in range(0, len(events), ROW_EVENTS_MAX):
        chunk = events[i : i + ROW_EVENTS_MAX]
        rows.append((chunk[0].event_id, chunk[0].created_at_ms, len(chunk), _encode(chunk)))
    return rows


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
        queue = self._queue
        queue.append(entry)
        depth = len(queue)
        if depth == 1 or depth >= self._batch_events_max:
            self._wake()  # the first entry starts the flush interval; a full batch leaves now

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
            delay_s = self._due_in_s()
            if delay_s != 0.0:
                loop = asyncio.get_running_loop()
                self._waiter = waiter = loop.create_future()
                timer = loop.call_later(delay_s, _release, waiter) if delay_s is not None else None
                try:
                    await waiter
                finally:
                    if timer is not None:
                        timer.cancel()
                    self._waiter = None
                continue  # woken by the first entry, a full batch, the timer or stop(): look again
            if not self._queue:
                return  # stopping, and everything is written
            try:
                await self._flush_once()
                backoff_s = 0.05
            except _FAILURES as exc:
                self.flush_failures += 1
                log.warning("journal flush failed (%s: %s); %d entries wait", type(exc).__name__, exc, len(self._queue))
                await self._drop_connection()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_backoff_s_max)

    def _due_in_s(self) -> float | None:
        """Seconds until the next batch is due: 0.0 now, None when nothing waits (an append wakes us).

        The interval counts from the oldest waiting entry, not from the end of the last flush:
        entries that came while a flush was under way have waited already, and when a flush
        takes longer than the interval the next one starts at once. (Counting from the end of
        the last flush added a whole interval to every entry's way to COMMIT.)
        """
        queue = self._queue
        if self._stopping or len(queue) >= self._batch_events_max:
            return 0.0
        if not queue:
            return None
        waited_s = (time.perf_counter_ns() - queue[0].enqueued_ns) / 1e9
        return max(0.0, self._flush_interval_s - waited_s)

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
                rows.append(_astuple(entry.row))  # a journal_row: JournalRow's fields in order
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
            _FLUSH_RETRY if retrying else _FLUSH,
            rows,
            [(c.account_id, c.balance_kopecks, encode(c.counters)) for c in accounts.values()],  # account_checkpoint
            encode(commands).decode(),
            _outbox_rows(outbox),
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
