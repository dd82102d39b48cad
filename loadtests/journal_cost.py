"""Where PostgreSQL's CPU per journaled decision goes: the group commit's statement alone.

    python -m loadtests.journal_cost [--decisions 20000] [--batch 64]

The batches are the gateway's own: ``loadtests.gateway_path`` records the held phase's
workload (1,000 devices of the ``mixed`` workload: turnstile grants and till baskets)
through the real gateway core and journal writer, and keeps every statement's parameters
exactly as ``JournalWriter._flush_once`` encoded them. Here they are sent, batch after
batch, to fresh databases of the bench's dataset (100,000 pupils), as the writer sends
them: one statement each, on one connection per database.

Measured per journaled decision, for the backend that ran the statements (its CPU
times through psutil, so PostgreSQL must run on this machine): CPU, wall time per batch
and WAL bytes. The same batches go to one database per variant, with parts left out or
indexes dropped, the variants taking turns slice by slice (so that drift falls on all
alike), and the differences are the parts' costs:

- ``journal``: the journal rows only (the other parameters empty);
- ``+accounts``: and the accounts' checkpoints (balance and counters);
- ``+outbox``: and the parents' events (no accounts);
- ``all``: everything, as the gateway sends it;
- ``all, no journal_account_time`` / ``no journal_command_*`` / ``no outbox_unsent``: the
  same without one secondary index (what that index costs per row);
- two floors, what PostgreSQL would cost if the gateway wrote less: ``floor: journal rows, no
  index`` (the rows alone into a journal with neither its key nor any index: a row per decision
  at the least), and ``floor: one log row per batch`` (the batch's journal rows as ONE row of
  msgpack bytes keyed by the batch's number: no index entry per decision, nothing else written).

``--per-commit`` measures instead what a group commit costs PostgreSQL whatever its size, one
statement kind after another on one connection (``PER_COMMIT_CALLS`` calls each, two rounds):
a prepared ``SELECT 1`` (a round trip), the journal's INSERT alone with no rows, the group
commit's statement with every part empty, and a one-row INSERT committed with the WAL flushed
and, for the measurement only, without (``synchronous_commit = off``). With the per-row cost
from two ``--batch`` sizes this says where the ~300 us a commit costs go.

What this leaves out and ``make bench`` includes: the other processes of the server
(walwriter, checkpointer; autovacuum where it is on), the other connections, and the CPU
contention of a shared machine (the bench's figure per journaled decision is higher).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import NamedTuple

import asyncpg
import msgspec
import psutil

from storage.journal import _FLUSH, JOURNAL_INSERT

from . import gateway_path, procs

class Variant(NamedTuple):
    """What a variant sends: which of the statement's parameters keep their values ($1 rows,
    $2 accounts, $3 commands, $4 outbox, $5 access events), what it changes in its database
    first, and whether it sends the journal rows as one log row instead of the statement."""

    name: str
    keep: tuple[int, ...]
    setup: str | None = None
    log_row: bool = False


_DROP_JOURNAL_INDEXES = (
    "ALTER TABLE journal DROP CONSTRAINT journal_pkey; DROP INDEX journal_account_time; "
    "DROP INDEX journal_command_debit; DROP INDEX journal_command_credit"
)
# The log-structured floor: a batch's journal rows as one row of bytes, keyed by the batch's number.
# Not compressed (EXTERNAL): migration 0024 found that cheapest where the server has no lz4.
_LOG_TABLE = (
    "CREATE TABLE journal_log (seq bigint PRIMARY KEY, entries integer NOT NULL, rows bytea NOT NULL); "
    "ALTER TABLE journal_log ALTER COLUMN rows SET STORAGE EXTERNAL"
)
_LOG_INSERT = "INSERT INTO journal_log VALUES ($1, $2, $3)"
VARIANTS: tuple[Variant, ...] = (
    Variant("journal", (0,)),
    Variant("+accounts", (0, 1)),
    Variant("+outbox", (0, 3)),
    Variant("all", (0, 1, 2, 3, 4)),
    Variant("all, no journal_account_time", (0, 1, 2, 3, 4), "DROP INDEX journal_account_time"),
    Variant("all, no journal_command_*", (0, 1, 2, 3, 4), "DROP INDEX journal_command_debit; DROP INDEX journal_command_credit"),
    Variant("all, no outbox_unsent", (0, 1, 2, 3, 4), "DROP INDEX outbox_unsent"),
    Variant("floor: journal rows, no index", (0,), _DROP_JOURNAL_INDEXES),
    Variant("floor: one log row per batch", (0,), _LOG_TABLE, log_row=True),
)
# The bench's dataset (loadtests.bench phase c): the account ids of the recorded batches exist.
DATASET = {"pupils": gateway_path.PUPILS, "turnstiles": 600, "tills": 400}
_EMPTY_JSON = "[]"
# The parameters that travel as arrays of a composite type ($1 journal_row, $2 account_checkpoint,
# $4 outbox_batch).
_BINARY_ARRAYS = (0, 1, 3)


_pack = msgspec.msgpack.Encoder().encode


def _log_row(seq: int, rows: list[tuple]) -> tuple[int, int, bytes]:
    """A batch's journal rows as the log-structured floor's one row: the batch's sequence
    number (a log's key), how many rows, and their msgpack bytes."""
    return (seq, len(rows), _pack(rows))


def _cpu_s(backend: psutil.Process) -> float:
    t = backend.cpu_times()
    return t.user + t.system


async def _measure(dsns: list[str], batches: list[tuple], rounds: int) -> list[dict]:
    """Every variant gets the same batches, interleaved: round r sends the r-th slice of the
    batches to each variant's database in turn, so that the machine's drift (other work, CPU
    frequency, a checkpoint) falls on all variants alike."""
    conns = [await asyncpg.connect(dsn) for dsn in dsns]
    try:
        backends = []
        for conn, variant in zip(conns, VARIANTS):
            if variant.setup:
                await conn.execute(variant.setup)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            try:
                backends.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                raise RuntimeError("PostgreSQL does not run on this machine: its backend's CPU cannot be read") from None
        params = [
            [_log_row(seq, args[0]) for seq, args in enumerate(batches)]
            if variant.log_row
            else [tuple(arg if i in variant.keep else [] if i in _BINARY_ARRAYS else _EMPTY_JSON for i, arg in enumerate(args))
                  for args in batches]
            for variant in VARIANTS
        ]
        statements = [_LOG_INSERT if variant.log_row else _FLUSH for variant in VARIANTS]
        # The first batches plan the statement and warm the caches; they are not measured.
        warm = max(1, len(batches) // 10)
        for conn, statement, variant in zip(conns, statements, params):
            for args in variant[:warm]:
                await conn.fetchval(statement, *args)
        measured = len(batches) - warm
        rows = sum(len(args[0]) for args in batches[warm:])
        cpu = [0.0] * len(conns)
        wall = [0.0] * len(conns)
        wal = [0] * len(conns)
        per_round: list[list[float]] = [[] for _ in conns]  # us per row, each round: the spread shows the noise
        for r in range(rounds):
            lo, hi = warm + measured * r // rounds, warm + measured * (r + 1) // rounds
            round_rows = sum(len(args[0]) for args in batches[lo:hi]) or 1
            for v, conn in enumerate(conns):
                wal0 = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
                cpu0, wall0 = _cpu_s(backends[v]), time.perf_counter()
                for args in params[v][lo:hi]:
                    await conn.fetchval(statements[v], *args)
                wall[v] += time.perf_counter() - wall0
                used = _cpu_s(backends[v]) - cpu0
                cpu[v] += used
                per_round[v].append(used / round_rows * 1e6)
                # WAL of the whole server in the slice (nothing else writes here during it).
                wal[v] += int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)", wal0))
        return [
            {
                "rows": rows,
                "batches": measured,
                "backend_cpu_us_per_row": round(cpu[v] / rows * 1e6, 2),
                "wall_ms_per_batch": round(wall[v] / measured * 1e3, 3),
                "wal_bytes_per_row": round(wal[v] / rows, 1),
                # CPU times come in clock ticks (10 ms): a round must hold enough rows for its figure to mean much
                "round_cpu_us_per_row_min_max": [round(min(per_round[v]), 1), round(max(per_round[v]), 1)],
            }
            for v in range(len(conns))
        ]
    finally:
        for conn in conns:
            await conn.close()


def run(decisions: int, batch: int, rounds: int = 10, dbs: procs.Databases | None = None, log=print,
        pupils: int = DATASET["pupils"]) -> dict:
    """Record ``decisions`` through the gateway in batches of ``batch`` entries; send them per variant.

    ``pupils`` below the dataset's (bench --quick) leaves most accounts' checkpoints without a row
    to update: quicker to set up, and its figures are not the benchmark's."""
    recorded = gateway_path.record(decisions, batch=batch)
    batches = recorded["batches"]
    own = dbs is None
    dbs = dbs or procs.Databases()
    out: dict = {"decisions": decisions, "batch_entries": batch, "rounds": rounds, "variants": {}}
    dsns: list[str] = []
    try:
        for _ in VARIANTS:
            dsns.append(dbs.create(**{**DATASET, "pupils": pupils}))
        results = asyncio.run(_measure(dsns, batches, rounds))
    finally:
        for dsn in dsns:
            dbs.drop(dsn)
        if own:
            dbs.close()
    for (name, *_), r in zip(VARIANTS, results):
        out["variants"][name] = r
        lo, hi = r["round_cpu_us_per_row_min_max"]
        log(f"journal cost: {name:<30} {r['backend_cpu_us_per_row']:>6} us CPU/row ({lo}..{hi} over the rounds) "
            f"{r['wal_bytes_per_row']:>7} WAL bytes/row {r['wall_ms_per_batch']:>7} ms/batch")
    v = {name: r["backend_cpu_us_per_row"] for name, r in out["variants"].items()}
    out["split_us_per_row"] = {
        "journal row": v["journal"],
        "accounts' checkpoints": round(v["+accounts"] - v["journal"], 2),
        "outbox events": round(v["+outbox"] - v["journal"], 2),
        "commands, access events, NOTIFY and the rest": round(v["all"] - v["+accounts"] - v["+outbox"] + v["journal"], 2),
        # within the above: what one secondary index costs (all minus all without it)
        "index journal_account_time": round(v["all"] - v["all, no journal_account_time"], 2),
        "indexes journal_command_*": round(v["all"] - v["all, no journal_command_*"], 2),
        "index outbox_unsent": round(v["all"] - v["all, no outbox_unsent"], 2),
    }
    # What the statement would cost if the gateway wrote less (the target is 8 us for everything)
    out["floor_us_per_row"] = {
        "a journal row with no index": v["floor: journal rows, no index"],
        "one log row per batch": v["floor: one log row per batch"],
    }
    return out


# Calls per statement kind in --per-commit: CPU times come in 10 ms clock ticks, so 3,000 calls
# of 30-150 us give each figure to within a few us.
PER_COMMIT_CALLS = 3_000
_JOURNAL_INSERT_ALONE = f"WITH j AS ({JOURNAL_INSERT} RETURNING 1) SELECT count(*) FROM j"


async def _per_commit(dsn: str, calls: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE per_commit_probe (v bigint)")
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        one = await conn.prepare("SELECT 1")
        alone = await conn.prepare(_JOURNAL_INSERT_ALONE)
        flush = await conn.prepare(_FLUSH)
        insert = await conn.prepare("INSERT INTO per_commit_probe VALUES (1)")

        async def synchronous(on: bool) -> None:
            await conn.execute(f"SET synchronous_commit = {'on' if on else 'off'}")

        kinds = (
            ("a prepared SELECT 1 (a round trip)", None, lambda: one.fetchval()),
            ("the journal's INSERT alone, no rows", None, lambda: alone.fetchval([])),
            ("the group commit's statement, every part empty", None,
             lambda: flush.fetchval([], [], _EMPTY_JSON, [], _EMPTY_JSON)),
            ("one row INSERTed, COMMIT flushes the WAL", True, lambda: insert.fetch()),
            ("one row INSERTed, COMMIT without the flush", False, lambda: insert.fetch()),
        )
        sums = {name: 0.0 for name, _, _ in kinds}
        for _ in range(2):  # two rounds, the kinds taking turns: drift falls on all alike
            for name, sync, call in kinds:
                if sync is not None:
                    await synchronous(sync)
                for _ in range(calls // 10):  # warm
                    await call()
                cpu0 = _cpu_s(backend)
                for _ in range(calls):
                    await call()
                sums[name] += _cpu_s(backend) - cpu0
                await synchronous(True)
        return {name: round(total / (2 * calls) * 1e6, 1) for name, total in sums.items()}
    finally:
        await conn.close()


def per_commit(calls: int = PER_COMMIT_CALLS, log=print, dbs: procs.Databases | None = None) -> dict:
    own = dbs is None
    dbs = dbs or procs.Databases()
    try:
        dsn = dbs.create(pupils=1_000, turnstiles=10, tills=10)
        try:
            out = asyncio.run(_per_commit(dsn, calls))
        finally:
            dbs.drop(dsn)
    finally:
        if own:
            dbs.close()
    for name, us in out.items():
        log(f"per commit: {name:<50} {us:>6} us backend CPU per call")
    return {"calls": calls, "backend_cpu_us_per_call": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=gateway_path.BATCH, help="entries per group commit")
    parser.add_argument("--rounds", type=int, default=10, help="slices the variants take turns on")
    parser.add_argument("--per-commit", action="store_true", help="what a commit costs whatever its size (see above)")
    args = parser.parse_args(argv)
    if args.per_commit:
        print(json.dumps(per_commit(log=lambda line: print(line, file=sys.stderr)), indent=1))
        return 0
    out = run(args.decisions, args.batch, args.rounds, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
