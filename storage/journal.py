"""The journal writer: group commit of accepted device transactions.

The gateway appends entries synchronously (no await on the hot path); a flusher
task writes them every ``flush_interval_ms`` or every ``batch_events_max``
entries, whichever comes first, in ONE transaction per batch: COPY of the
journal rows, one set-based UPDATE of the balances they leave, and the results
of money commands and outbox events that came with them. Only after COMMIT are
entries dropped from the queue and reported durable, so a failed batch is
retried whole. A device's durable watermark is the highest txn of its journal
rows (read back at start); it is not written separately.

The queue is bounded (``queue_events_max``): when PostgreSQL is slow or down the
gateway keeps deciding while there is room, then refuses with TRY_AGAIN_LATER.
The writer reconnects by itself with a capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from itertools import islice
from typing import Awaitable, Callable

import asyncpg

log = logging.getLogger("ecard.journal")

# Column order of a journal row as the gateway builds it (see JournalEntry).
JOURNAL_COLUMNS = (
    "device_id",
    "device_txn",
    "kind",
    "account_id",
    "identifier",
    "direction",
    "debit_account_id",
    "credit_account_id",
    "amount_kopecks",
    "balance_after_kopecks",
    "advice",
    "device_time_ms",
    "decided_at_ms",
    "cashier_id",
    "items",
)

_ITEM = struct.Struct("<IHI")  # product_code, quantity, unit_price_kopecks: the PURCHASE wire layout


def encode_items(items) -> bytes:
    """A purchase's lines as stored in journal.items."""
    pack = _ITEM.pack
    return b"".join([pack(i.product_code, i.quantity, i.unit_price_kopecks) for i in items])


def decode_items(data: bytes | None) -> list[tuple[int, int, int]] | None:
    """journal.items back into (product_code, quantity, unit_price_kopecks) lines."""
    return None if data is None else list(_ITEM.iter_unpack(bytes(data)))

# An entry: (journal row | None, debit account id | None, its balance after,
#            credit account id | None, its balance after, monotonic ns when appended,
#            extras | None)
# extras: a tuple of ("outbox", kind, account_id, payload_json, created_at_ms) and
# ("command", seq, status, result_json, decided_at_ms): an outbox event, or the
# result of a money command, written in the same transaction as the row.
JournalEntry = tuple

DONE_CHANNEL = "ecard_command_done"
# pg_notify payloads must stay under 8000 bytes: command seqs go in chunks.
NOTIFY_SEQS_MAX = 500

# "a.id = ANY($1)" lets the planner probe the primary key for the touched
# accounts; without it, it hashes the whole accounts table on every commit.
_UPDATE_BALANCES = """
UPDATE accounts AS a SET balance_kopecks = v.balance
FROM unnest($1::bigint[], $2::bigint[]) AS v(id, balance)
WHERE a.id = v.id AND a.id = ANY($1::bigint[])
"""
_UPDATE_COMMANDS = """
UPDATE commands AS c SET status = v.status, result = v.result::jsonb, decided_at_ms = v.decided_at_ms
FROM unnest($1::bigint[], $2::smallint[], $3::text[], $4::bigint[]) AS v(seq, status, result, decided_at_ms)
WHERE c.seq = v.seq AND c.status = 0
"""
_INSERT_STAGED = f"""
INSERT INTO journal ({", ".join(JOURNAL_COLUMNS)})
SELECT {", ".join(JOURNAL_COLUMNS)} FROM journal_stage
ON CONFLICT (device_id, device_txn) DO NOTHING
"""

OnCommit = Callable[[dict[int, int], list[int], int, list[int]], None]


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
        self._wake = asyncio.Event()
        self._stopping = False
        self._conn: asyncpg.Connection | None = None
        self.connected = False
        self.flush_failures = 0

    # -- hot path (synchronous)

    def has_room(self) -> bool:
        return len(self._queue) < self._queue_events_max

    def append(self, entry: JournalEntry) -> None:
        assert len(self._queue) < self._queue_events_max, "caller must check has_room()"
        self._queue.append(entry)
        if len(self._queue) >= self._batch_events_max:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def oldest_age_ns(self, now_ns: int) -> int:
        return now_ns - self._queue[0][5] if self._queue else 0

    # -- flusher task

    async def run(self) -> None:
        backoff_s = 0.05
        try:
            await self._ensure_connection()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("journal writer cannot connect yet (%s); it will retry", exc)
        while True:
            if len(self._queue) < self._batch_events_max and not self._stopping:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
                except TimeoutError:
                    pass
            if not self._queue:
                if self._stopping:
                    return
                continue
            try:
                await self._flush_once()
                backoff_s = 0.05
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
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
        batch = list(islice(self._queue, self._batch_events_max))
        rows = []
        balances: dict[int, int] = {}
        durable: dict[int, int] = {}
        outbox: list[tuple] = []
        commands: list[tuple] = []
        for row, debit_id, debit_after, credit_id, credit_after, _, extras in batch:
            if debit_id is not None:
                balances[debit_id] = debit_after  # entries are in decision order: the last one wins
            if credit_id is not None:
                balances[credit_id] = credit_after
            if row is not None:
                rows.append(row)
                device_id, txn = row[0], row[1]
                if device_id and txn > durable.get(device_id, 0):
                    durable[device_id] = txn
            if extras:
                for extra in extras:
                    (outbox if extra[0] == "outbox" else commands).append(extra[1:])
        started_ns = time.perf_counter_ns()
        conn = await self._ensure_connection()
        timeout = self._statement_timeout_s
        async with conn.transaction():
            try:
                async with conn.transaction():  # savepoint: a duplicate key must not lose the batch
                    if rows:
                        await conn.copy_records_to_table(
                            "journal", records=rows, columns=JOURNAL_COLUMNS, timeout=timeout
                        )
            except asyncpg.UniqueViolationError:
                # The gateway de-duplicates before it decides, so this is a bug worth
                # shouting about; the rows that are new still go in, the others stay as they were.
                log.error("journal batch holds an already-journaled (device, txn); inserting the new rows only")
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS journal_stage (LIKE journal) ON COMMIT DELETE ROWS",
                    timeout=timeout,
                )
                await conn.copy_records_to_table("journal_stage", records=rows, columns=JOURNAL_COLUMNS, timeout=timeout)
                await conn.execute(_INSERT_STAGED, timeout=timeout)
            if balances:
                await conn.execute(_UPDATE_BALANCES, list(balances), list(balances.values()), timeout=timeout)
            if outbox:
                await conn.copy_records_to_table(
                    "outbox", records=outbox, columns=("kind", "account_id", "payload", "created_at_ms"), timeout=timeout
                )
            if commands:
                await conn.execute(_UPDATE_COMMANDS, *map(list, zip(*commands)), timeout=timeout)
                seqs = [str(c[0]) for c in commands]
                for i in range(0, len(seqs), NOTIFY_SEQS_MAX):
                    # Delivered at COMMIT: whoever waits for a command learns it is durable.
                    await conn.execute("SELECT pg_notify($1, $2)", DONE_CHANNEL, ",".join(seqs[i : i + NOTIFY_SEQS_MAX]))
        duration_ns = time.perf_counter_ns() - started_ns
        for _ in range(len(batch)):
            self._queue.popleft()
        self._on_commit(durable, [entry[5] for entry in batch], duration_ns, [c[0] for c in commands])

    async def stop(self, task: asyncio.Task, timeout_s: float) -> int:
        """Flush what is queued within ``timeout_s``, then stop. Returns the entries left unwritten."""
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
        await self._drop_connection()
        return len(self._queue)
