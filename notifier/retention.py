"""Retention: the notifier's records older than ``retention_days`` are deleted, in batches.

Every ``purge_interval_ms`` (the first time ``purge_start_delay_ms`` after the start) each
notifier process runs ``purge``: ``storage.deliveries.purge_batch`` again and again, one short
transaction each (``purge_batch_events`` events with their deliveries, SMS parts and digests),
until a batch finds fewer events than it asked for (nothing older is left, or another process
holds the rest: SKIP LOCKED), a batch deletes nothing, the run's bound
(``purge_batches_per_run_max``) is reached, or the process stops. Then the SMS receipts that
never met their submit. A delivery not finished (pending, sending, failed) keeps its event,
whatever its age. Dead letters go with the rest at the same horizon (docs/notifier.md
"Retention").

``python -m notifier purge`` runs the same once and prints what it deleted.

A purge that fails (PostgreSQL away, a statement over its timeout) is logged and counted; the
next run starts where it stopped. It never stops the notifier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import asyncpg
import msgspec
from prometheus_client import CollectorRegistry, Counter

from storage import deliveries as store
from storage.deliveries import Purged

from .config import NotifierConfig

log = logging.getLogger("ecard.notifier.retention")

TABLES = ("processed_events", "deliveries", "sms_parts", "sms_digests")


def now_ms() -> int:
    return int(time.time() * 1000)


class PurgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            "ecard_notifier_purged_rows", "rows deleted by the retention purge, by table", ["table"], registry=registry
        )
        self.runs = Counter(
            "ecard_notifier_purge_runs", "purge runs, by outcome: done (nothing older left to this process), "
            "partial (stopped at the run's bound or by a stop), failed (logged)", ["outcome"], registry=registry,
        )
        for table in TABLES:  # every series from the start: a dashboard sees 0, not "no data"
            self.rows.labels(table)
        for outcome in ("done", "partial", "failed"):
            self.runs.labels(outcome)

    def count(self, purged: Purged) -> None:
        for table, n in (("processed_events", purged.events), ("deliveries", purged.deliveries),
                         ("sms_parts", purged.sms_parts), ("sms_digests", purged.sms_digests)):
            if n:
                self.rows.labels(table).inc(n)


class PurgeReport(msgspec.Struct):
    before_ms: int  # rows taken in before this went
    purged: Purged
    batches: int
    done: bool  # False: stopped at the run's bound or by a stop; the rest goes next run


async def purge(pool: asyncpg.Pool, config: NotifierConfig, *, before_ms: int, metrics: PurgeMetrics | None = None,
                stop: asyncio.Event | None = None) -> PurgeReport:
    """Delete what was taken in before ``before_ms``, in batches (see the module's docstring)."""
    timeout_s = config.statement_timeout_ms / 1000
    total = Purged()
    batches = 0
    done = False
    while batches < config.purge_batches_per_run_max and not (stop is not None and stop.is_set()):
        async with pool.acquire() as conn:
            batch = await store.purge_batch(conn, before_ms=before_ms, limit=config.purge_batch_events,
                                            timeout_s=timeout_s)
        batches += 1
        total = total + batch
        if metrics is not None:
            metrics.count(batch)
        if batch.candidates < config.purge_batch_events or batch.events == 0:
            done = True
            break
    if done:
        while True:  # the receipts without a submit: rare, a batch or two
            async with pool.acquire() as conn:
                orphans = await store.purge_orphan_sms_parts(conn, before_ms=before_ms,
                                                             limit=config.purge_batch_events, timeout_s=timeout_s)
            total = total + Purged(sms_parts=orphans)
            if metrics is not None:
                metrics.count(Purged(sms_parts=orphans))
            if orphans < config.purge_batch_events or (stop is not None and stop.is_set()):
                break
    return PurgeReport(before_ms=before_ms, purged=total, batches=batches, done=done)


def describe(report: PurgeReport, config: NotifierConfig) -> str:
    p = report.purged
    return (f"purged {p.events} events, {p.deliveries} deliveries, {p.sms_parts} SMS parts, {p.sms_digests} digests "
            f"taken in before {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(report.before_ms / 1000))} UTC "
            f"(retention {config.retention_days} days) in {report.batches} batches; "
            + ("nothing older is left" if report.done else "more is left for the next run"))


async def _wait(stop: asyncio.Event, ms: int) -> None:
    try:
        await asyncio.wait_for(stop.wait(), ms / 1000)
    except asyncio.TimeoutError:
        pass


async def run(config: NotifierConfig, pool: asyncpg.Pool, metrics: PurgeMetrics, stop: asyncio.Event,
              clock_ms: Callable[[], int] = now_ms) -> None:
    """The periodic purge of one notifier process, until ``stop``."""
    await _wait(stop, config.purge_start_delay_ms)
    while not stop.is_set():
        try:
            report = await purge(pool, config, before_ms=clock_ms() - config.retention_ms, metrics=metrics, stop=stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  housekeeping: logged and retried next run, never fatal
            metrics.runs.labels("failed").inc()
            log.warning("retention purge failed (next run in %d s): %s: %s", config.purge_interval_ms // 1000,
                        type(exc).__name__, exc, exc_info=not isinstance(exc, (OSError, asyncpg.PostgresError,
                                                                                asyncio.TimeoutError)))
        else:
            metrics.runs.labels("done" if report.done else "partial").inc()
            log.info("%s", describe(report, config))
        await _wait(stop, config.purge_interval_ms)


async def purge_once(config: NotifierConfig, dsn: str, clock_ms: Callable[[], int] = now_ms) -> PurgeReport:
    """``python -m notifier purge``: one run, as the periodic one does it."""
    from storage import database

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, timeout=database.CONNECT_TIMEOUT_S,
                                     command_timeout=config.statement_timeout_ms / 1000)
    try:
        return await purge(pool, config, before_ms=clock_ms() - config.retention_ms)
    finally:
        await pool.close()
