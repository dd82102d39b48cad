"""The offline turnstile drill: a turnstile keeps its school's allow-list, loses the gateway (the
drill cuts its own TCP proxy in front of it), lets pupils in from the list alone, refuses an
unknown card, and on reconnect replays everything in order with the original times.

Against ``make run``: ``python -m simulators offline --gateway 127.0.0.1:7700``. With
``--pg-dsn`` the journal must hold every offline event exactly once, judged at its own time.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from protocol import DenyReason, DeviceKind
from storage.demo_dataset import demo_card_uid, demo_device_key, demo_unknown_uid, turnstile_ids

from .device import Device, DeviceConfig, log_path

IN = 1
# Bytes one read of the proxy moves: a frame is at most 1 KiB, a burst a few.
PROXY_READ_BYTES_MAX = 65_536
# How long close() waits for the open connections' handlers to see their transports aborted:
# they end within a turn of the loop or two; this only bounds a stuck one.
PROXY_CLOSE_WAIT_S = 1.0


class CuttableProxy:
    """A TCP proxy in front of the gateway that the drill can cut (every connection dropped, new
    ones refused) and restore: the network between a turnstile and the gateway."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.cut = False
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> "CuttableProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(PROXY_READ_BYTES_MAX):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.transport.abort()

        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            # The drill ended while this connection was open (asyncio.run cancels what is left).
            # Ending quietly: a connection handler of Python 3.11's start_server that ends
            # cancelled has its callback log "Exception in callback ... CancelledError".
            writer.transport.abort()
            up_writer.transport.abort()
        finally:
            self._writers.difference_update((writer, up_writer))
            self._handlers.discard(handler)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

    async def close(self) -> None:
        self.set_cut(True)  # every pipe sees its transport aborted and its handler ends
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=PROXY_CLOSE_WAIT_S)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class OfflineReport:
    seed: int
    list_size: int = 0
    entered_offline: list[int] = field(default_factory=list)
    refused_offline: int = 0
    kept: int = 0
    settled: bool = False
    journaled: int | None = None  # offline events in the journal (--pg-dsn)
    original_times: bool | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.errors and self.settled and self.kept == 2 * len(self.entered_offline)
            and (self.journaled is None or self.journaled == self.kept) and self.original_times is not False
        )

    def summary(self) -> str:
        lines = [
            f"offline drill (seed {self.seed}): allow-list of {self.list_size} cards; "
            f"{len(self.entered_offline)} pupils let in offline, {self.refused_offline} card(s) refused offline",
            f"kept {self.kept} events, replayed on reconnect: {'all durable' if self.settled else 'NOT SETTLED'}",
        ]
        if self.journaled is not None:
            lines.append(f"journaled: {self.journaled} of them, exactly once; at their original reader times: "
                         f"{'yes' if self.original_times else 'NO'}")
        lines += [f"ERROR {e}" for e in self.errors]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


async def run_offline(
    host: str, port: int, *, pupils: int, entering: int, seed: int, log_dir: Path, pg_dsn: str = "",
    timeout_s: float = 30.0,
) -> OfflineReport:
    rng = random.Random(f"{seed}/offline")
    report = OfflineReport(seed)
    proxy = await CuttableProxy(host, port).start()
    turnstile_id = turnstile_ids()[0]
    config = DeviceConfig(host="127.0.0.1", port=proxy.port, offline_list=True, connect_timeout_s=0.5,
                          backoff_max_s=0.5, deadline_s=timeout_s)
    t = Device(turnstile_id, DeviceKind.TURNSTILE, demo_device_key(turnstile_id), config, log_dir, seed=seed)
    kept_before = 0
    offline_txns: list[int] = []
    try:
        await t.start()
        report.list_size = len(t.allow_list)
        kept_before = len(t.kept)
        proxy.set_cut(True)  # the network to the gateway is gone
        for pupil in sorted(rng.sample(range(1, pupils + 1), min(entering, pupils))):
            card = demo_card_uid(pupil)
            t.register_card(card, pupil)
            granted = await t.card_presented(card, IN)
            if granted.reason != DenyReason.OK:
                report.errors.append(f"pupil {pupil} refused offline: {DenyReason(granted.reason).name}")
                continue
            through = await t.passage(card, IN, granted.txn)
            if through.reason == DenyReason.OK:
                report.entered_offline.append(pupil)
                offline_txns += [granted.txn, through.txn]
        if (await t.card_presented(demo_unknown_uid(rng.randrange(1, 1000)), IN)).reason != DenyReason.OK:
            report.refused_offline += 1
        report.kept = len(t.kept) - kept_before
        proxy.set_cut(False)  # back: the next attempt reconnects and replays
        report.settled = await t.wait_settled(timeout_s)
    finally:
        await t.close()
        await proxy.close()
    if pg_dsn:
        report.journaled, report.original_times = await _journaled(pg_dsn, log_dir, turnstile_id, offline_txns)
    return report


async def _journaled(dsn: str, log_dir: Path, turnstile_id: int, txns: list[int]) -> tuple[int, bool]:
    """How many of the events decided alone are journaled (each (device, txn) is the journal's key:
    at most once), and whether each carries the reader time the device logged when it decided."""
    import asyncpg

    wanted = set(txns)
    offline: dict[int, int] = {}
    for line in log_path(log_dir, turnstile_id).read_text().splitlines():
        record = json.loads(line)
        if record.get("t") == "txn" and record["txn"] in wanted:
            offline[record["txn"]] = record["event"]["reader_time_ms"]
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT device_txn, device_time_ms FROM journal WHERE device_id = $1"
                                " AND device_txn = ANY($2::bigint[])", turnstile_id, list(offline))
    finally:
        await conn.close()
    return len(rows), all(r["device_time_ms"] == offline[r["device_txn"]] for r in rows)

