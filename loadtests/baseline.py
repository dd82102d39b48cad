"""The baseline: the server most teams would write for this protocol.

Same protocol (the sans-IO ``protocol.Connection``, HELLO MAC checked against
the devices table), asyncio streams on uvloop, and for every tap ONE
PostgreSQL transaction through an asyncpg pool before the reply:

    UPDATE accounts SET balance_kopecks = balance_kopecks - $amount
     WHERE id = (card's account) AND balance_kopecks >= $amount RETURNING ...
    INSERT INTO journal (...) VALUES (...)
    COMMIT

(a turnstile entry debits 0). The reply is written after COMMIT, so every
decision is durable when the device sees it, at the price of a database round
trip and a WAL flush per tap.

    python -m loadtests.baseline --dsn DSN [--port 0] [--pool-size 20]

prints "baseline listening on HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

import asyncpg

from protocol import (
    CLOSED,
    NEED_DATA,
    CardPresented,
    Connection,
    Decision,
    DenyReason,
    Heartbeat,
    Hello,
    HelloAck,
    Nak,
    NakReason,
    Passage,
    Purchase,
    RemoteProtocolError,
    Retransmit,
    Role,
)
from ledger.codes import JournalKind
from protocol.auth import verify_hello
try:
    from protocol.items import encode_items
except ImportError:  # before the basket codec moved to protocol/
    from storage.journal import encode_items

log = logging.getLogger("ecard.baseline")

_DEBIT = """
UPDATE accounts SET balance_kopecks = balance_kopecks - $1
 WHERE id = (SELECT account_id FROM identifiers WHERE identifier = $2 AND status = 0)
   AND status = 0 AND balance_kopecks >= $1
RETURNING id, balance_kopecks
"""
_JOURNAL = """
INSERT INTO journal (device_id, device_txn, kind, account_id, identifier, direction, amount_kopecks,
                     balance_after_kopecks, advice, device_time_ms, decided_at_ms,
                     items, granted_txn)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $12, $9, $10, $11, $13)
ON CONFLICT (device_id, device_txn) DO NOTHING
"""
KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE = int(JournalKind.ENTRY), int(JournalKind.PASSAGE), int(JournalKind.PURCHASE)


class Baseline:
    def __init__(self, pool: asyncpg.Pool, keys: dict[int, bytes]) -> None:
        self.pool = pool
        self.keys = keys
        self.decisions = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.GATEWAY)
        try:
            while True:
                data = await reader.read(65536)
                conn.receive_data(data)
                while True:
                    try:
                        event = conn.next_event()
                    except RemoteProtocolError as err:
                        writer.write(conn.send(err.nak()))
                        if err.fatal:
                            return
                        continue
                    if event is NEED_DATA:
                        break
                    if event is CLOSED:
                        return
                    if type(event) is Retransmit:
                        writer.write(event.reply)
                        continue
                    reply = await self.decide(conn, event)
                    writer.write(conn.send(reply))
                    if type(reply) is Nak and type(event) is Hello:
                        return
                if not data:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def decide(self, conn: Connection, event):
        now_ms = time.time_ns() // 1_000_000
        cls = type(event)
        if cls is Hello:
            key = self.keys.get(conn.device_id)
            if key is None or not verify_hello(key, conn.device_id, event):
                return Nak(int(NakReason.AUTH_FAILED), "unknown device or bad MAC")
            return HelloAck(now_ms, 0, 10_000)
        if cls is Heartbeat:
            return Heartbeat(now_ms)
        granted = None
        if cls is CardPresented:
            kind, amount, direction, items = KIND_ENTRY, 0, event.direction, None
        elif cls is Passage:
            # The pupil went through: journaled like the entry it follows (no check of the grant:
            # the naive server trusts the turnstile).
            kind, amount, direction, items, granted = KIND_PASSAGE, 0, event.direction, None, event.granted_txn
        elif cls is Purchase:
            kind, amount, direction, items = KIND_PURCHASE, event.total_kopecks, None, event.items
        else:
            return Decision(getattr(event, "txn", 0), 0, int(DenyReason.AMOUNT_INVALID), 0, 0, 0xFF, 8, ())
        async with self.pool.acquire() as db:
            async with db.transaction():
                row = await db.fetchrow(_DEBIT, amount, event.identifier)
                if row is None:
                    reason = DenyReason.INSUFFICIENT_FUNDS if amount else DenyReason.UNKNOWN_CARD
                    self.decisions += 1
                    return Decision(event.txn, 0, int(reason), 0, 0, 0xFF, int(reason), ())
                account_id, balance = row
                await db.execute(
                    _JOURNAL,
                    conn.device_id,
                    event.txn,
                    kind,
                    account_id,
                    event.identifier,
                    direction,
                    amount,
                    balance,
                    event.reader_time_ms,
                    now_ms,
                    encode_items(items) if items else None,
                    event.advice,
                    granted,
                )
        self.decisions += 1
        shown = balance if kind == KIND_PURCHASE else 0
        return Decision(event.txn, 1, 0, 0, shown, 0xFF, 1, ())


async def serve(dsn: str, host: str, port: int, pool_size: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    assert pool is not None
    keys = {r["id"]: bytes(r["key"]) for r in await pool.fetch("SELECT id, key FROM devices")}
    app = Baseline(pool, keys)
    server = await asyncio.start_server(app.handle, host, port, backlog=4096, reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"baseline listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    await pool.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.baseline")
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pool-size", type=int, default=20)
    args = ap.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.dsn, args.host, args.port, args.pool_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
