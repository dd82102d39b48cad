"""The relay end to end, with real parts: PostgreSQL, the gateway's own outbox writer,
`python -m relay run`, real brokers (the system's Mosquitto, the embedded amqtt broker,
a Mosquitto of the test's own that it stops and starts) and a real MQTT subscriber."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from pathlib import Path

import asyncpg
import msgspec
import pytest

from relay import layout
from relay.mosquitto import write_files
from storage.outbox import OUTBOX_CHANNEL, ROW_EVENTS_MAX
from tests.support import TcpProxy, pg_upstream, proxied_dsn

from relay_support import (
    DELIVERY_TIMEOUT_S,
    AmqttBroker,
    Mosquitto,
    RelayProcess,
    Subscriber,
    accepts,
    first_appearances,
    free_port,
    make_events,
    mosquitto_binary,
    mosquitto_user,
    outbox_rows,
    unique_prefix,
    unsent_count,
    wait_until,
    write_outbox,
)

pytestmark = pytest.mark.processes

SYSTEM_MOSQUITTO_PORT = 1883
needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)"
)


@pytest.fixture
def amqtt_broker(tmp_path):
    broker = AmqttBroker(tmp_path / "amqtt.log").start()
    yield broker
    broker.terminate()


@pytest.fixture(params=["system-mosquitto", "embedded-amqtt"])
def broker(request, tmp_path):
    """(url, port) of a running broker: the machine's Mosquitto on 1883, or `python -m relay broker`."""
    if request.param == "system-mosquitto":
        if not accepts(SYSTEM_MOSQUITTO_PORT):
            pytest.skip("no Mosquitto listens on 127.0.0.1:1883 (the machine's service is not running)")
        yield f"mqtt://127.0.0.1:{SYSTEM_MOSQUITTO_PORT}", SYSTEM_MOSQUITTO_PORT
        return
    amqtt = AmqttBroker(tmp_path / "amqtt.log").start()
    try:
        yield amqtt.url, amqtt.port
    finally:
        amqtt.terminate()


@pytest.fixture
def own_mosquitto_dir():
    """A directory for a Mosquitto of the test's own, reachable by the user it drops to."""
    directory = Path(tempfile.mkdtemp(prefix="ecard-mosquitto-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def delivered(sub: Subscriber, dsn: str, count: int) -> bool:
    return len(set(sub.event_ids())) >= count and unsent_count(dsn) == 0


def test_rows_reach_a_subscriber_as_stored_in_order_and_are_marked_sent(pg_dsn, broker, tmp_path):
    url, port = broker
    prefix = unique_prefix()
    sub = Subscriber(port, layout.events_filter(prefix)).start()
    relay = RelayProcess(pg_dsn, url, prefix, tmp_path / "relay.log").start()
    try:
        events = make_events(270)
        write_outbox(pg_dsn, events[:90], per_entry=1)  # one event per decision
        write_outbox(pg_dsn, events[90:], per_entry=3)  # several per entry (a sale and its low-balance alert)
        wait_until(lambda: delivered(sub, pg_dsn, len(events)), DELIVERY_TIMEOUT_S, "every event delivered and marked")

        rows = outbox_rows(pg_dsn)
        messages = sub.snapshot()
        assert len(messages) == len(rows) == len(events)  # no broker trouble: none twice
        for row, (topic, payload), event in zip(rows, messages, events):
            assert row["event_id"] == event.event_id  # rows and messages in outbox id order
            notice = event.payload
            assert topic == f"{prefix}/events/{notice.school_id}/{event.kind}/{event.account_id}"
            message = layout.decode(payload)
            assert (message.event_id, message.kind, message.account_id, message.created_at_ms) == (
                row["event_id"], row["kind"], row["account_id"], row["created_at_ms"],
            )
            # the notice's JSON exactly as the gateway encoded and stored it (a batch row's bytes)
            assert bytes(message.notice) == msgspec.json.encode(notice)
            assert msgspec.json.decode(message.notice) == msgspec.json.decode(row["payload"])  # = what the view reads
            assert layout.decode_notice(message) == notice  # ... which is the Struct the gateway wrote
            assert row["sent_at_ms"] is not None
        wait_until(lambda: relay.metrics().get("ecard_outbox_pending_events") == 0, 10, "the pending gauge at 0")
        metrics = relay.metrics()
        assert metrics["ecard_relay_published_total"] == len(events)
        assert metrics["ecard_relay_broker_connected"] == 1
        assert metrics["ecard_relay_lock_held"] == 1
        assert metrics.get("ecard_relay_unacknowledged_total", 0) == 0
    finally:
        assert relay.terminate() == 0
        sub.close()
    assert relay.log_text().count("Traceback") == 0


def test_the_relay_runs_the_embedded_broker_when_asked(pg_dsn, tmp_path):
    port = free_port()
    prefix = unique_prefix()
    relay = RelayProcess(pg_dsn, "", prefix, tmp_path / "relay.log", "--embedded-broker",
                         ECARD_RELAY_BROKER_PORT=str(port)).start()
    sub = None
    try:
        sub = Subscriber(port, layout.events_filter(prefix)).start()
        events = make_events(20)
        write_outbox(pg_dsn, events)
        wait_until(lambda: delivered(sub, pg_dsn, len(events)), DELIVERY_TIMEOUT_S, "the events delivered")
        assert sub.event_ids() == [e.event_id for e in events]
    finally:
        if sub is not None:
            sub.close()
        assert relay.terminate() == 0
    assert not accepts(port)  # the broker went with the relay


def test_the_group_commits_notify_wakes_the_relay_before_its_poll(pg_dsn, amqtt_broker, tmp_path):
    prefix = unique_prefix()
    sub = Subscriber(amqtt_broker.port, layout.events_filter(prefix)).start()
    # A poll a minute: only the NOTIFY that the journal writer's group commit sends on
    # storage.outbox.OUTBOX_CHANNEL can bring these events within the waits below.
    relay = RelayProcess(pg_dsn, amqtt_broker.url, prefix, tmp_path / "relay.log",
                         ECARD_RELAY_POLL_INTERVAL_MS="60000").start()
    try:
        wait_until(lambda: relay.metrics().get("ecard_relay_broker_connected") == 1, 10, "the relay connected")
        first, second = make_events(5), make_events(5, first_txn=100)
        write_outbox(pg_dsn, first)
        wait_until(lambda: delivered(sub, pg_dsn, len(first)), 20, "the events after the group commit")
        write_outbox(pg_dsn, second)  # and again: the relay listens for as long as it runs
        wait_until(lambda: delivered(sub, pg_dsn, len(first) + len(second)), 20, "the next ones")

        async def bare_notify() -> None:  # a writer of its own (the staff API's card events)
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute(
                    "INSERT INTO outbox (event_id, kind, account_id, payload, created_at_ms) "
                    "VALUES ('staff:1:card_blocked', 'card_blocked', 7, "
                    """'{"kind": "card_blocked", "at_ms": 1, "school_id": 2, "account_id": 7, "identifier_hex": "04"}', 1)"""
                )
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            finally:
                await conn.close()

        asyncio.run(bare_notify())
        wait_until(lambda: delivered(sub, pg_dsn, len(first) + len(second) + 1), 20, "the card event")
        topic, payload = sub.snapshot()[-1]
        assert topic == f"{prefix}/events/2/card_blocked/7" and layout.decode(payload).event_id == "staff:1:card_blocked"
    finally:
        relay.terminate()
        sub.close()


@needs_mosquitto
@pytest.mark.parametrize("when", ["idle", "mid-stream"])
def test_broker_down_the_outbox_holds_then_drains_in_order(pg_dsn, own_mosquitto_dir, tmp_path, when):
    port = free_port()
    prefix = unique_prefix()
    passwords = {"ecard-relay": secrets.token_hex(12), "ecard-notifier": secrets.token_hex(12)}
    files = write_files(
        own_mosquitto_dir, port, relay_user="ecard-relay", users=passwords, notifier_user="ecard-notifier",
        prefix=prefix, persistent=True, run_as=mosquitto_user(),
    )
    broker = Mosquitto(files.conf, port, tmp_path / "mosquitto-1.log").start()
    # The notifier's way: a persistent session, so the broker keeps what arrives while it reconnects.
    sub = Subscriber(port, layout.events_filter(prefix), username="ecard-notifier",
                     password=passwords["ecard-notifier"], persistent=True).start()
    relay = RelayProcess(pg_dsn, f"mqtt://ecard-relay:{passwords['ecard-relay']}@127.0.0.1:{port}", prefix,
                         tmp_path / "relay.log", ECARD_RELAY_BATCH_EVENTS_MAX="50").start()
    try:
        if when == "idle":  # everything delivered, then the broker goes; more events come meanwhile
            before = make_events(200)
            write_outbox(pg_dsn, before)
            wait_until(lambda: delivered(sub, pg_dsn, len(before)), DELIVERY_TIMEOUT_S, "the first events delivered")
        else:  # the broker goes while the relay drains a backlog: PUBLISHes are left without PUBACK
            before = make_events(3_000)
            write_outbox(pg_dsn, before, per_entry=10)
            wait_until(lambda: unsent_count(pg_dsn) <= len(before) - 200, DELIVERY_TIMEOUT_S, "the relay under way")

        assert broker.terminate() == 0  # the broker process ends, for real
        wait_until(lambda: relay.metrics().get("ecard_relay_broker_connected") == 0, 30, "the relay to see it go")
        failures = relay.metrics().get('ecard_relay_connection_failures_total{peer="broker"}', 0)
        held = unsent_count(pg_dsn)
        assert (held == 0) if when == "idle" else (0 < held < len(before))
        during = make_events(300, first_txn=10_000)
        write_outbox(pg_dsn, during, per_entry=2)
        wait_until(lambda: relay.metrics().get("ecard_outbox_pending_events") == held + len(during), 30,
                   "the pending gauge to count the held events")
        # It keeps trying (and failing) to reconnect while the rows wait, unsent.
        wait_until(
            lambda: relay.metrics().get('ecard_relay_connection_failures_total{peer="broker"}', 0) >= failures + 3,
            30, "reconnect attempts while the broker is down",
        )
        assert unsent_count(pg_dsn) == held + len(during)
        assert relay.metrics()["ecard_relay_broker_connected"] == 0

        broker = Mosquitto(files.conf, port, tmp_path / "mosquitto-2.log").start()  # back, same port and data
        everything = before + during
        wait_until(lambda: delivered(sub, pg_dsn, len(everything)), DELIVERY_TIMEOUT_S, "the held events drained")
        order, duplicates = first_appearances(sub.event_ids())
        assert order == [e.event_id for e in everything]  # none lost, in outbox order
        # At least once, and counted: the relay publishes again only what it counts (a
        # PUBLISH never acknowledged, or acknowledged and not marked); the restarted broker
        # may also deliver again to the persistent session what it had not seen acknowledged.
        metrics = relay.metrics()
        assert metrics["ecard_relay_published_total"] == len(everything) + metrics["ecard_relay_unmarked_total"]
        print(f"broker down and back ({when}): {len(everything)} events, {duplicates} delivered twice; the relay published "
              f"{metrics['ecard_relay_unacknowledged_total']:.0f} without PUBACK, "
              f"{metrics['ecard_relay_unmarked_total']:.0f} acknowledged and not marked")
        wait_until(lambda: relay.metrics().get("ecard_outbox_pending_events") == 0, 10, "the pending gauge at 0")
        assert relay.metrics()["ecard_relay_broker_connected"] == 1
    finally:
        relay.terminate()
        sub.close()
        broker.terminate()


def test_relay_killed_mid_stream_loses_nothing(pg_dsn, amqtt_broker, tmp_path):
    prefix = unique_prefix()
    batch = 50
    sub = Subscriber(amqtt_broker.port, layout.events_filter(prefix)).start()
    events = make_events(4_000)
    write_outbox(pg_dsn, events, per_entry=10)
    env = {"ECARD_RELAY_BATCH_EVENTS_MAX": str(batch)}
    first = RelayProcess(pg_dsn, amqtt_broker.url, prefix, tmp_path / "relay-1.log", **env).start()
    try:
        wait_until(lambda: unsent_count(pg_dsn) <= len(events) - 300, DELIVERY_TIMEOUT_S, "the relay under way")
        first.kill()  # SIGKILL: whatever was acknowledged and not yet marked is published again
        left = unsent_count(pg_dsn)
        assert 0 < left < len(events), "the relay must be killed mid-stream"
        second = RelayProcess(pg_dsn, amqtt_broker.url, prefix, tmp_path / "relay-2.log", **env).start()
        try:
            wait_until(lambda: delivered(sub, pg_dsn, len(events)), DELIVERY_TIMEOUT_S, "the rest delivered")
        finally:
            second.terminate()
        order, duplicates = first_appearances(sub.event_ids())
        assert order == [e.event_id for e in events]  # none lost, in outbox order
        # at most the read in flight at the kill: the rows that begin within the batch, whole
        assert duplicates <= batch + ROW_EVENTS_MAX - 1
        print(f"SIGKILL mid-stream: {left} of {len(events)} left, {duplicates} delivered twice")
    finally:
        first.kill()
        sub.close()


def test_a_second_relay_stands_by_until_the_first_is_gone(pg_dsn, amqtt_broker, tmp_path):
    prefix = unique_prefix()
    sub = Subscriber(amqtt_broker.port, layout.events_filter(prefix)).start()
    active = RelayProcess(pg_dsn, amqtt_broker.url, prefix, tmp_path / "relay-1.log").start()
    standby = None
    try:
        wait_until(lambda: active.metrics().get("ecard_relay_lock_held") == 1, 10, "the first relay holds the lock")
        standby = RelayProcess(pg_dsn, amqtt_broker.url, prefix, tmp_path / "relay-2.log").start()
        wait_until(lambda: "standing by" in standby.log_text(), 10, "the second relay standing by")
        events = make_events(100)
        write_outbox(pg_dsn, events)
        wait_until(lambda: delivered(sub, pg_dsn, len(events)), DELIVERY_TIMEOUT_S, "the events delivered")
        assert standby.metrics().get("ecard_relay_published_total") == 0
        assert standby.metrics().get("ecard_relay_lock_held") == 0

        active.kill()
        wait_until(lambda: standby.metrics().get("ecard_relay_lock_held") == 1, 30, "the second relay takes over")
        more = make_events(100, first_txn=5_000)
        write_outbox(pg_dsn, more)
        wait_until(lambda: delivered(sub, pg_dsn, len(events) + len(more)), DELIVERY_TIMEOUT_S, "delivered by it")
        order, duplicates = first_appearances(sub.event_ids())
        assert order == [e.event_id for e in events + more] and duplicates == 0
    finally:
        active.kill()
        if standby is not None:
            standby.terminate()
        sub.close()


def test_a_backlog_above_the_limit_is_logged_loudly_and_exported(pg_dsn, tmp_path):
    nowhere = free_port()  # no broker listens here
    relay = RelayProcess(pg_dsn, f"mqtt://127.0.0.1:{nowhere}", unique_prefix(), tmp_path / "relay.log",
                         ECARD_RELAY_PENDING_EVENTS_MAX="10").start()
    try:
        write_outbox(pg_dsn, make_events(25))
        wait_until(lambda: "OUTBOX BACKLOG" in relay.log_text(), 30, "the alarm in the log")
        metrics = relay.metrics()
        assert metrics["ecard_outbox_pending_events"] == 25
        assert metrics["ecard_outbox_pending_events_limit"] == 10
        assert metrics["ecard_relay_broker_connected"] == 0
        assert unsent_count(pg_dsn) == 25
    finally:
        relay.terminate()


def test_postgresql_away_the_relay_waits_and_resumes(pg_dsn, amqtt_broker, tmp_path):
    proxy = TcpProxy(pg_upstream(pg_dsn)[0]).start()
    prefix = unique_prefix()
    sub = Subscriber(amqtt_broker.port, layout.events_filter(prefix)).start()
    relay = RelayProcess(proxied_dsn(pg_dsn, proxy.port), amqtt_broker.url, prefix, tmp_path / "relay.log").start()
    try:
        first = make_events(50)
        write_outbox(pg_dsn, first)
        wait_until(lambda: delivered(sub, pg_dsn, len(first)), DELIVERY_TIMEOUT_S, "the first events delivered")
        proxy.cut()
        wait_until(lambda: relay.metrics().get('ecard_relay_connection_failures_total{peer="postgres"}', 0) >= 1, 30,
                   "the relay to lose PostgreSQL")
        second = make_events(50, first_txn=1_000)
        write_outbox(pg_dsn, second)  # the gateway's writes go on (not through the proxy)
        assert unsent_count(pg_dsn) == len(second)
        proxy.restore()
        wait_until(lambda: delivered(sub, pg_dsn, len(first) + len(second)), DELIVERY_TIMEOUT_S, "the rest delivered")
        order, duplicates = first_appearances(sub.event_ids())
        assert order == [e.event_id for e in first + second] and duplicates == 0
    finally:
        relay.terminate()
        sub.close()
        proxy.close()


def test_events_that_match_no_subscription_stay_unsent_until_a_subscriber_comes(pg_dsn, tmp_path):
    """Over MQTT 5 the broker's PUBACK says an event matched no subscription (0x10): the relay
    keeps it unsent and publishes it again, so nothing is marked sent that nobody received (as
    after a Mosquitto restart, which keeps no shared subscription). With amqtt (3.1.1 only) the
    relay falls back to 3.1.1 by itself."""
    if not accepts(SYSTEM_MOSQUITTO_PORT):
        pytest.skip("no Mosquitto listens on 127.0.0.1:1883 (the machine's service is not running)")
    prefix = unique_prefix()
    events = make_events(40)
    write_outbox(pg_dsn, events)
    relay = RelayProcess(pg_dsn, f"mqtt://127.0.0.1:{SYSTEM_MOSQUITTO_PORT}", prefix, tmp_path / "relay.log",
                         ECARD_RELAY_RECONNECT_BACKOFF_MS_MAX="200").start()
    sub = None
    try:
        wait_until(lambda: relay.metrics().get("ecard_relay_unmatched_total", 0) >= 2 * len(events), 20,
                   "every event published twice and matched by no subscription")
        assert unsent_count(pg_dsn) == len(events)  # nothing marked sent that nobody got
        assert relay.metrics().get("ecard_relay_published_total", 0) == 0
        sub = Subscriber(SYSTEM_MOSQUITTO_PORT, layout.events_filter(prefix)).start()
        wait_until(lambda: delivered(sub, pg_dsn, len(events)), DELIVERY_TIMEOUT_S, "every event delivered and marked")
        assert sorted(set(sub.event_ids())) == sorted(e.event_id for e in events)
        assert relay.metrics()["ecard_relay_published_total"] == len(events)
    finally:
        assert relay.terminate() == 0
        if sub is not None:
            sub.close()
    log = relay.log_text()
    assert "matched no subscription" in log and "Traceback" not in log


def test_the_relay_speaks_3_1_1_to_a_broker_without_mqtt_5(pg_dsn, amqtt_broker, tmp_path):
    prefix = unique_prefix()
    sub = Subscriber(amqtt_broker.port, layout.events_filter(prefix)).start()
    relay = RelayProcess(pg_dsn, amqtt_broker.url, prefix, tmp_path / "relay.log").start()
    try:
        events = make_events(5)
        write_outbox(pg_dsn, events)
        wait_until(lambda: delivered(sub, pg_dsn, len(events)), DELIVERY_TIMEOUT_S, "every event delivered and marked")
        assert relay.metrics().get('ecard_relay_connection_failures_total{peer="broker"}', 0) == 0  # the fallback is no failure
    finally:
        assert relay.terminate() == 0
        sub.close()
    assert "does not speak MQTT 5; using 3.1.1" in relay.log_text()
