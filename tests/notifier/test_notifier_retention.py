"""Retention against PostgreSQL: events taken in before the horizon go with their deliveries, SMS
parts and digests; recent ones stay; an event with a delivery still pending, claimed or failed is
never purged (also when a dead letter is requeued while a purge holds its event); batches loop until
done and stop at the run's bound; two purgers share the work; the metric counts the rows; the
configuration refuses a retention shorter than the broker's session; ``python -m notifier purge``
and the running notifier purge on their own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from notifier import retention
from notifier.config import MQTT_SESSION_EXPIRY_S, RETENTION_DAYS, ConfigError, NotifierConfig, load_config
from notifier_support import ROOT, Broker, NotifierProcess, fetch, seed, wait_until
from relay.broker import EMBEDDED_SESSION_EXPIRY_S
from relay.mosquitto import MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S, config_text
from storage import deliveries as store
from storage.deliveries import PURGE_BATCH_EVENTS_MAX, Outcome, Purged, Target
from test_notifier_storage import TARGETS, run, take

DAY_MS = 86_400_000
NOW = 1_764_063_660_000
BEFORE = NOW - RETENTION_DAYS * DAY_MS  # the horizon: taken in before it goes
OLD = BEFORE - DAY_MS
RECENT = NOW - DAY_MS
SMS = Target(1, "sms", "+79000000001")
WAIT_S = 30.0  # a lock wait or a purge on this small machine shows within this


async def statuses(conn, event_id: str, status: str) -> None:
    await conn.execute("UPDATE deliveries SET status = $2, claimed_by = NULL WHERE event_id = $1", event_id, status)


async def event_ids(conn) -> set[str]:
    return {r["event_id"] for r in await conn.fetch("SELECT event_id FROM processed_events")}


async def old_events(conn, n: int, *, prefix: str = "bulk", received_at_ms: int = OLD, status: str = "sent") -> None:
    """``n`` events taken in at ``received_at_ms``, each with one e-mail and one push delivery in ``status``."""
    await conn.execute(
        "INSERT INTO processed_events (event_id, kind, account_id, school_id, at_ms, created_at_ms, received_at_ms, "
        "notice, deliveries) SELECT $1 || g, 'entry', 1, 1, $2, $2, $2, '{}'::jsonb, 2 FROM generate_series(1, $3) g",
        prefix, received_at_ms, n)
    await conn.execute(
        "INSERT INTO deliveries (event_id, representative_id, channel, address, status, next_attempt_at_ms, "
        "created_at_ms, updated_at_ms) SELECT $1 || g, 1, c, 'x', $4, $2, $2, $2 "
        "FROM generate_series(1, $3) g, unnest(ARRAY['email', 'app_push']) c",
        prefix, received_at_ms, n, status)


def test_old_finished_events_go_with_everything_of_theirs_and_recent_ones_stay(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        await take(conn, "old-sent", TARGETS + [SMS], now_ms=OLD)
        await statuses(conn, "old-sent", "sent")
        await take(conn, "old-final", TARGETS, now_ms=OLD)  # every final status: sent, dead (a dead letter), cancelled
        rows = await store.by_event(conn, "old-final")
        for d, status in zip(rows, ("sent", "dead", "cancelled")):
            await conn.execute("UPDATE deliveries SET status = $2 WHERE id = $1", d.id, status)
        await take(conn, "old-nobody", [], now_ms=OLD)  # nobody to tell: the event row alone
        await take(conn, "at-horizon", TARGETS, now_ms=BEFORE)  # exactly at the horizon: kept
        await statuses(conn, "at-horizon", "sent")
        await take(conn, "recent", TARGETS + [SMS], now_ms=RECENT)
        await statuses(conn, "recent", "sent")
        old_sms = next(d.id for d in await store.by_event(conn, "old-sent") if d.channel == "sms")
        new_sms = next(d.id for d in await store.by_event(conn, "recent") if d.channel == "sms")
        await store.sms_submitted(conn, old_sms, ["OLD1", "OLD2"], now_ms=OLD)
        await store.sms_receipt(conn, "OLD1", "DELIVRD", now_ms=OLD)
        await store.sms_submitted(conn, new_sms, ["NEW1"], now_ms=RECENT)
        await conn.execute("INSERT INTO sms_digests (representative_id, period_end_ms, carrier_delivery_id, covered, "
                           "created_at_ms) VALUES (1, $1, $2, ARRAY[$2]::bigint[], $1), (1, $3, $4, ARRAY[$4]::bigint[], $3)",
                           OLD, old_sms, RECENT, new_sms)
        deliveries_before = await conn.fetchval("SELECT count(*) FROM deliveries")

        purged = await store.purge_batch(conn, before_ms=BEFORE)
        assert purged == Purged(events=3, deliveries=7, sms_parts=2, sms_digests=1, candidates=3)
        assert await event_ids(conn) == {"at-horizon", "recent"}
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == deliveries_before - 7
        assert [r["smsc_message_id"] for r in await conn.fetch("SELECT smsc_message_id FROM sms_parts")] == ["NEW1"]
        assert [r["carrier_delivery_id"] for r in await conn.fetch("SELECT carrier_delivery_id FROM sms_digests")] == [new_sms]
        assert (await store.sms_receipt_of(conn, new_sms)).smsc_message_id == "NEW1"
        # nothing older is left: the next batch finds nothing
        assert await store.purge_batch(conn, before_ms=BEFORE) == Purged()
        # the reads parents and operators use show what stayed
        assert [e.event_id for e in await store.events_of_pupil(conn, 1)] and await store.by_event(conn, "old-sent") == []

    run(pg_dsn, body)


def test_an_unfinished_delivery_keeps_its_event_whatever_its_age(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        for name in ("pending", "claimed", "failed", "deferred"):
            await take(conn, f"old-{name}", TARGETS, now_ms=OLD, at_ms=OLD)
        await statuses(conn, "old-pending", "sent")
        await conn.execute("UPDATE deliveries SET status = 'pending' WHERE id = (SELECT min(id) FROM deliveries "
                           "WHERE event_id = 'old-pending')")  # one pending among sent siblings
        for name in ("claimed", "failed", "deferred"):
            await statuses(conn, f"old-{name}", "sent")
        claimable = next(d.id for d in await store.by_event(conn, "old-claimed") if d.channel == "app_push")
        await conn.execute("UPDATE deliveries SET status = 'pending' WHERE id = $1", claimable)
        claimed = await store.claim_due(conn, now_ms=NOW, limit=1, lease_ms=120_000, worker="w", channels=["app_push"])
        assert [d.id for d in claimed] == [claimable]  # status sending, the lease running
        failed = (await store.by_event(conn, "old-failed"))[0].id
        await conn.execute("UPDATE deliveries SET status = 'failed', next_attempt_at_ms = $2 WHERE id = $1", failed, NOW)
        deferred = (await store.by_event(conn, "old-deferred"))[0].id  # quiet hours or a digest: pending, due later
        await conn.execute("UPDATE deliveries SET status = 'pending', next_attempt_at_ms = $2 WHERE id = $1",
                           deferred, NOW + DAY_MS)
        before = await conn.fetchval("SELECT count(*) FROM deliveries")

        assert await store.purge_batch(conn, before_ms=BEFORE) == Purged()
        assert await event_ids(conn) == {"old-pending", "old-claimed", "old-failed", "old-deferred"}
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == before  # the sent siblings stay too

        # Once finished, they go.
        assert await store.finish(conn, [Outcome(claimable, "sent", NOW, None)], now_ms=NOW, worker="w") == 1
        await conn.execute("UPDATE deliveries SET status = 'dead' WHERE status <> 'sent'")
        purged = await store.purge_batch(conn, before_ms=BEFORE)
        assert purged.events == 4 and purged.deliveries == before
        assert await event_ids(conn) == set()

    run(pg_dsn, body)


def test_a_dead_letter_requeued_while_the_purge_waits_keeps_its_event(pg_dsn):
    """The purge takes its events, then locks their deliveries and reads them again: a requeue that
    commits in between (here: holding the delivery's row lock until the purge waits on it) wins."""
    seed(pg_dsn)

    async def body(conn):
        await take(conn, "old-dead", TARGETS, now_ms=OLD)
        await statuses(conn, "old-dead", "dead")
        await take(conn, "old-sent", TARGETS, now_ms=OLD)
        await statuses(conn, "old-sent", "sent")
        dead = (await store.by_event(conn, "old-dead"))[0].id
        operator = await asyncpg.connect(pg_dsn)
        try:
            tr = operator.transaction()
            await tr.start()
            await operator.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", dead)
            purger = await asyncpg.connect(pg_dsn)
            try:
                pid = purger.get_server_pid()
                task = asyncio.ensure_future(store.purge_batch(purger, before_ms=BEFORE))
                deadline = time.monotonic() + WAIT_S
                while not await conn.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
                    assert not task.done(), task
                    assert time.monotonic() < deadline, "the purge never waited for the delivery's lock"
                    await asyncio.sleep(0.02)
                assert await store.requeue(operator, dead, now_ms=NOW)
                await tr.commit()
                purged = await asyncio.wait_for(task, WAIT_S)
            finally:
                await purger.close()
        finally:
            await operator.close()
        assert purged.candidates == 2 and purged.events == 1 and purged.deliveries == 3
        assert await event_ids(conn) == {"old-dead"}
        assert {(d.id, d.status) for d in await store.by_event(conn, "old-dead")} >= {(dead, "pending")}
        assert len(await store.by_event(conn, "old-dead")) == 3  # every delivery of the kept event kept

    run(pg_dsn, body)


def purge_config(**fields) -> NotifierConfig:
    return NotifierConfig(**fields)


def test_batches_loop_until_done_and_stop_at_the_runs_bound(pg_dsn):
    seed(pg_dsn)
    n = 2 * PURGE_BATCH_EVENTS_MAX + 345

    async def body(conn):
        await old_events(conn, n)
        await old_events(conn, 10, prefix="recent", received_at_ms=RECENT)
        await conn.execute("INSERT INTO sms_parts (smsc_message_id, stat, receipt_at_ms) VALUES "
                           "('ORPHAN-OLD', 'DELIVRD', $1), ('ORPHAN-NEW', 'DELIVRD', $2)", OLD, RECENT)
        registry = CollectorRegistry()
        metrics = retention.PurgeMetrics(registry)
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            bounded = purge_config(purge_batches_per_run_max=2)
            first = await retention.purge(pool, bounded, before_ms=BEFORE, metrics=metrics)
            assert (first.batches, first.done) == (2, False)
            assert first.purged == Purged(events=2 * PURGE_BATCH_EVENTS_MAX, deliveries=4 * PURGE_BATCH_EVENTS_MAX,
                                          candidates=2 * PURGE_BATCH_EVENTS_MAX)
            assert await conn.fetchval("SELECT count(*) FROM sms_parts") == 2  # orphans only once a run is done
            second = await retention.purge(pool, purge_config(), before_ms=BEFORE, metrics=metrics)
            assert (second.batches, second.done) == (1, True)
            assert second.purged == Purged(events=345, deliveries=690, sms_parts=1, candidates=345)
            # smaller batches: the same loop, more of them
            await old_events(conn, 25, prefix="again")
            small = await retention.purge(pool, purge_config(purge_batch_events=10), before_ms=BEFORE)
            assert (small.batches, small.done, small.purged.events) == (3, True, 25)
        finally:
            await pool.close()
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 10  # the recent ones
        assert [r["smsc_message_id"] for r in await conn.fetch("SELECT smsc_message_id FROM sms_parts")] == ["ORPHAN-NEW"]

        def metric(name: str, **labels) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        assert metric("ecard_notifier_purged_rows_total", table="processed_events") == n
        assert metric("ecard_notifier_purged_rows_total", table="deliveries") == 2 * n
        assert metric("ecard_notifier_purged_rows_total", table="sms_parts") == 1
        assert metric("ecard_notifier_purged_rows_total", table="sms_digests") == 0

    run(pg_dsn, body)


def test_two_purgers_share_the_work(pg_dsn):
    seed(pg_dsn)
    n = 3 * PURGE_BATCH_EVENTS_MAX

    async def body(conn):
        await old_events(conn, n)
        pools = [await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) for _ in range(2)]
        try:
            config = purge_config(purge_batch_events=100)
            reports = await asyncio.gather(*(retention.purge(p, config, before_ms=BEFORE) for p in pools))
            # one may stop early when the other holds the rest (SKIP LOCKED): a run after them finds nothing
            rest = await retention.purge(pools[0], config, before_ms=BEFORE)
        finally:
            for p in pools:
                await p.close()
        assert sum(r.purged.events for r in reports) + rest.purged.events == n
        assert sum(r.purged.deliveries for r in reports) + rest.purged.deliveries == 2 * n
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 0

    run(pg_dsn, body)


def test_the_periodic_purge_counts_failures_and_goes_on(pg_dsn):
    seed(pg_dsn)

    async def body(conn):
        await old_events(conn, 5)
        registry = CollectorRegistry()
        metrics = retention.PurgeMetrics(registry)
        runs = lambda outcome: registry.get_sample_value("ecard_notifier_purge_runs_total", {"outcome": outcome})  # noqa: E731
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        stop = asyncio.Event()
        config = purge_config(purge_start_delay_ms=0)
        try:
            task = asyncio.ensure_future(retention.run(config, pool, metrics, stop, clock_ms=lambda: NOW))
            deadline = time.monotonic() + WAIT_S
            while runs("done") < 1:
                assert not task.done() and time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert await conn.fetchval("SELECT count(*) FROM processed_events") == 0
            stop.set()
            await asyncio.wait_for(task, WAIT_S)  # the wait for the next run ends at the stop

            await conn.execute("ALTER TABLE processed_events RENAME TO processed_events_away")
            stop = asyncio.Event()
            task = asyncio.ensure_future(retention.run(config, pool, metrics, stop, clock_ms=lambda: NOW))
            deadline = time.monotonic() + WAIT_S
            while runs("failed") < 1:
                assert not task.done() and time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert not task.done()  # a failed purge never stops the notifier
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
        finally:
            await conn.execute("ALTER TABLE IF EXISTS processed_events_away RENAME TO processed_events")
            await pool.close()

    run(pg_dsn, body)


# -- configuration ---------------------------------------------------------------------------------


def test_retention_must_outlive_the_brokers_session():
    config = NotifierConfig()
    assert config.retention_days == RETENTION_DAYS == 400
    assert config.mqtt_session_expiry_s == MQTT_SESSION_EXPIRY_S
    assert MQTT_SESSION_EXPIRY_S >= max(EMBEDDED_SESSION_EXPIRY_S, MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S)
    assert config.retention_ms > config.mqtt_session_expiry_s * 1000
    # the Mosquitto configuration the relay writes expires a session within what the notifier assumes
    conf = config_text(1883, "/x/passwd", "/x/acl")
    assert f"persistent_client_expiration {MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S // 86_400}d" in conf
    with pytest.raises(ConfigError, match="retention_days: must be longer than mqtt_session_expiry_s"):
        NotifierConfig(retention_days=30)  # 30 days = the Mosquitto session: not longer
    with pytest.raises(ConfigError, match="retention_days"):
        load_config(env={"ECARD_NOTIFIER_RETENTION_DAYS": "1", "ECARD_NOTIFIER_MQTT_SESSION_EXPIRY_S": "86400"})
    assert load_config(env={"ECARD_NOTIFIER_RETENTION_DAYS": "2", "ECARD_NOTIFIER_MQTT_SESSION_EXPIRY_S": "86400",
                            "ECARD_NOTIFIER_PURGE_INTERVAL_MS": "3600000"}).purge_interval_ms == 3_600_000
    for field, value in (("purge_batch_events", PURGE_BATCH_EVENTS_MAX + 1), ("purge_batch_events", 0),
                         ("purge_interval_ms", 10), ("purge_batches_per_run_max", 0), ("retention_days", 0)):
        with pytest.raises(ConfigError, match=field):
            NotifierConfig(**{field: value})
    assert NotifierConfig(purge_interval_ms=0).purge_interval_ms == 0  # no purge in that process


# -- the processes ---------------------------------------------------------------------------------


@pytest.mark.processes
def test_the_cli_and_the_running_notifier_purge(pg_dsn, tmp_path):
    seed(pg_dsn)
    now = int(time.time() * 1000)
    retention_days = 31  # the shortest the default session expiry (30 days) allows
    old = now - (retention_days + 1) * DAY_MS

    async def add(conn, prefix):
        await old_events(conn, 3, prefix=prefix, received_at_ms=old)
        await old_events(conn, 2, prefix=f"{prefix}-recent", received_at_ms=now - DAY_MS)

    run(pg_dsn, lambda conn: add(conn, "cli"))
    env = {**os.environ, "ECARD_PG_DSN": pg_dsn, "ECARD_NOTIFIER_RETENTION_DAYS": str(retention_days)}
    p = subprocess.run([sys.executable, "-m", "notifier", "purge"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "purged 3 events, 6 deliveries, 0 SMS parts, 0 digests" in p.stdout and "nothing older is left" in p.stdout
    assert {r["event_id"] for r in fetch(pg_dsn, "SELECT event_id FROM processed_events")} == {"cli-recent1", "cli-recent2"}
    short = subprocess.run([sys.executable, "-m", "notifier", "purge"], cwd=ROOT, capture_output=True, text=True,
                           env={**env, "ECARD_NOTIFIER_RETENTION_DAYS": "30"}, timeout=120)
    assert short.returncode == 2 and "retention_days" in short.stderr  # refused before anything is deleted

    run(pg_dsn, lambda conn: add(conn, "live"))
    broker = Broker(tmp_path).start()
    try:
        notifier = NotifierProcess(pg_dsn, broker, None, tmp_path / "notifier.log", client_id=f"retention-{broker.tag}",
                                   ECARD_NOTIFIER_RETENTION_DAYS=str(retention_days),
                                   ECARD_NOTIFIER_PURGE_START_DELAY_MS="0", ECARD_NOTIFIER_CHANNELS="app_push").start()
        try:
            assert f"records kept {retention_days} days (purged every 24 h)" in notifier.ready_line
            wait_until(lambda: notifier.metrics().get('ecard_notifier_purge_runs_total{outcome="done"}', 0) >= 1,
                       WAIT_S, "the notifier's first purge")
            rows = notifier.metrics()
            assert rows['ecard_notifier_purged_rows_total{table="processed_events"}'] == 3
            assert rows['ecard_notifier_purged_rows_total{table="deliveries"}'] == 6
        finally:
            assert notifier.terminate() == 0  # a clean stop with the purge task in it
    finally:
        broker.stop()
    left = {r["event_id"] for r in fetch(pg_dsn, "SELECT event_id FROM processed_events")}
    assert left == {"cli-recent1", "cli-recent2", "live-recent1", "live-recent2"}
