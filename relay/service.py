"""The relay: publish the outbox to MQTT with QoS 1, in id order; mark what the broker acknowledged.

One loop, one batch at a time:

1. hold PostgreSQL (one connection: the relay's advisory lock, LISTEN, the reads and
   the marks) and the broker (one aiomqtt client, clean session);
2. read the first ``batch_events_max`` unsent events in id order
   (``storage.outbox.pending``; a group commit's events share one outbox row, which is
   read whole);
3. PUBLISH each with QoS 1, pipelined (``inflight_events_max`` at once, in order on
   the one connection), and wait for the PUBACKs, but no longer than the connection
   lives or ``puback_timeout_ms``;
4. set ``sent_at_ms`` on exactly the rows all of whose events' PUBACKs came (one UPDATE); if any did
   not, drop the connection, back off and start again from the first unsent row. Over
   MQTT 5 a PUBACK also says whether the event matched any subscription: one that
   matched none (reason 0x10; Mosquitto keeps no shared subscription across its
   restart, so the notifier's is gone until it subscribes again) stays unsent and goes
   again after a backoff, on the same connection;
5. nothing to read: wait for a NOTIFY on ``ecard_outbox``, the poll interval or the
   end of the connection.

So every row is published until the broker has acknowledged it (at least once), and
after a failure the unacknowledged tail goes again in id order. A crash between a
PUBACK and the UPDATE publishes that batch again: consumers de-duplicate by
``event_id``. While the broker is away the rows wait in the table; a separate task
counts them (``ecard_outbox_pending_events``) and raises the alarm above
``pending_events_max``. The gateway is a separate process and never waits for any of
this: its only contact with the relay is the outbox table.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import aiomqtt
import asyncpg
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from prometheus_client import CollectorRegistry, Counter, Gauge

from storage import database, outbox
from storage.outbox import PendingEvent

from . import layout
from .backoff import Backoff
from .config import RELAY_PENDING_ALARM_INTERVAL_MS, RelayConfig, broker

log = logging.getLogger("ecard.relay")

_DB_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class BrokerLost(Exception):
    """The broker did not acknowledge every PUBLISH of a batch (connection lost or too slow)."""


class NoSubscribers(Exception):
    """The broker took events that matched no subscription (MQTT 5 PUBACK 0x10): nobody got them."""


PUBACK_SUCCESS = 0x00
PUBACK_NO_MATCHING_SUBSCRIBERS = 0x10


def _unsupported_protocol(exc: MqttConnectError) -> bool:
    """A CONNACK refusing the protocol version: 3.1.1's return code 1, or MQTT 5's reason 0x84."""
    return getattr(exc.rc, "value", exc.rc) in (1, 0x84)


class PubackReasons:
    """QoS 1 PUBLISH over MQTT 5 with the PUBACK's reason code, which aiomqtt's publish() drops:
    paho's on_publish callback is wrapped (aiomqtt's own still runs) and each PUBLISH is waited
    for by its message id. Everything runs on the event loop's thread, and the id is registered
    before control returns to the loop, so no PUBACK can come first."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho: paho.Client = client._client  # aiomqtt's paho client: no public way to the reason code
        self._waiting: dict[int, asyncio.Future[int]] = {}
        chained = self._paho.on_publish

        def on_publish(c, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
            future = self._waiting.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(int(getattr(reason_code, "value", reason_code)))
            if chained is not None:
                chained(c, userdata, mid, reason_code, properties)

        self._paho.on_publish = on_publish

    async def publish(self, topic: str, payload: bytes, timeout_s: float) -> int:
        """PUBLISH with QoS 1; the PUBACK's reason code."""
        info = self._paho.publish(topic, payload, 1, False)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[info.mid] = future
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiting.pop(info.mid, None)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry, pending_events_max: int) -> None:
        self.pending = Gauge(
            "ecard_outbox_pending_events", "outbox rows not yet acknowledged by the broker", registry=registry
        )
        self.pending_limit = Gauge(
            "ecard_outbox_pending_events_limit",
            "OUTBOX_PENDING_EVENTS_MAX: above it the relay raises the alarm (the gateway keeps deciding)",
            registry=registry,
        )
        self.pending_limit.set(pending_events_max)
        self.oldest_age = Gauge(
            "ecard_outbox_oldest_pending_age_seconds", "age of the oldest unsent outbox row", registry=registry
        )
        self.published = Counter(
            "ecard_relay_published", "events published with QoS 1 and acknowledged by the broker (PUBACK)",
            registry=registry,
        )
        self.unacknowledged = Counter(
            "ecard_relay_unacknowledged",
            "PUBLISHes whose PUBACK never came (published again: a consumer may see them twice)",
            registry=registry,
        )
        self.unmatched = Counter(
            "ecard_relay_unmatched",
            "events the broker matched to no subscription (MQTT 5 PUBACK 0x10): kept unsent, published again",
            registry=registry,
        )
        self.unmarked = Counter(
            "ecard_relay_unmarked",
            "events acknowledged by the broker whose sent_at_ms could not be written, or whose outbox row "
            "held an event that was not acknowledged (published again)",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "ecard_relay_broker_connected", "1 while the relay holds a connection to the broker", registry=registry
        )
        self.lock_held = Gauge(
            "ecard_relay_lock_held", "1 while this relay is the outbox's one publisher (advisory lock)",
            registry=registry,
        )
        self.connects = Counter(
            "ecard_relay_connects", "connections made, by peer", ["peer"], registry=registry
        )
        self.failures = Counter(
            "ecard_relay_connection_failures", "connections lost or refused, by peer", ["peer"], registry=registry
        )


class Relay:
    def __init__(self, config: RelayConfig, dsn: str, metrics: RelayMetrics) -> None:
        self.config = config
        self.dsn = dsn
        self.metrics = metrics
        self.broker = broker(config)
        self._statement_timeout_s = config.statement_timeout_ms / 1000
        self._puback_timeout_s = config.puback_timeout_ms / 1000
        self._poll_interval_s = config.poll_interval_ms / 1000
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.pending_events = 0  # as last counted
        self.broker_connected = False
        self._above_limit = False
        self._alarm_next_s = 0.0
        # MQTT 5 unless configured 3.1.1; "auto" falls back to 3.1.1 for good at the first
        # broker that refuses 5 as an unsupported protocol version (amqtt)
        self.mqtt_v5 = config.mqtt_protocol != "3.1.1"

    def stop(self) -> None:
        """Finish the batch in flight, then return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        monitor = asyncio.create_task(self._monitor(), name="outbox-monitor")
        try:
            await self._publish_loop()
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)

    # ------------------------------------------------------------------ publishing

    async def _publish_loop(self) -> None:
        backoff = Backoff(self.config.reconnect_backoff_ms_min, self.config.reconnect_backoff_ms_max)
        conn: asyncpg.Connection | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await self._connect_db()
                        if conn is None:  # stopping while standing by
                            return
                    await self._session(conn, backoff)
                except _DB_FAILURES as exc:  # (aiomqtt turns its own OSErrors and timeouts into MqttError)
                    self.metrics.failures.labels("postgres").inc()
                    log.warning("relay: PostgreSQL failed (%s: %s); reconnecting", type(exc).__name__, exc)
                    conn = self._drop_db(conn)
                except MqttConnectError as exc:
                    if self.mqtt_v5 and self.config.mqtt_protocol == "auto" and _unsupported_protocol(exc):
                        log.info("relay: broker %s does not speak MQTT 5; using 3.1.1 (no PUBACK says whether "
                                 "an event matched a subscription)", self.broker.url)
                        self.mqtt_v5 = False
                        continue
                    self.metrics.failures.labels("broker").inc()
                    log.warning("relay: broker %s refused the connection (%s); the outbox holds (attempt %d)",
                                self.broker.url, exc, backoff.failures + 1)
                except (aiomqtt.MqttError, BrokerLost) as exc:
                    self.metrics.failures.labels("broker").inc()
                    log.warning(
                        "relay: broker %s failed (%s: %s); the outbox holds (attempt %d)",
                        self.broker.url, type(exc).__name__, exc, backoff.failures + 1,
                    )
                if self._stopping.is_set():
                    break
                await self._stopped_within(backoff.next_delay_s())
        finally:
            self._drop_db(conn)

    def _drop_db(self, conn: asyncpg.Connection | None, holds_lock: bool = True) -> None:
        if holds_lock:
            self.metrics.lock_held.set(0)
        if conn is not None and not conn.is_closed():
            conn.terminate()
        return None

    async def _connect_db(self) -> asyncpg.Connection | None:
        """A connection holding the relay's advisory lock and LISTENing; None if stopped first."""
        conn = await asyncpg.connect(
            self.dsn, timeout=database.CONNECT_TIMEOUT_S, command_timeout=self._statement_timeout_s
        )
        self.metrics.connects.labels("postgres").inc()
        try:
            announced = False
            while not await outbox.try_lock_relay(conn, self._statement_timeout_s):
                if not announced:
                    log.warning("relay: another relay publishes this outbox (advisory lock held); standing by")
                    announced = True
                if await self._stopped_within(self._poll_interval_s):
                    conn.terminate()
                    return None
            if announced:
                log.info("relay: the outbox lock is ours now")
            self.metrics.lock_held.set(1)
            await outbox.listen(conn, self._wake.set)
        except BaseException:
            self._drop_db(conn)
            raise
        return conn

    def _client(self) -> aiomqtt.Client:
        b, config = self.broker, self.config
        client = aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=config.client_id,
            # the outbox is the relay's memory, not the broker's session: a clean one every time
            **({"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True} if self.mqtt_v5
               else {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": True}),
            keepalive=config.keepalive_s,
            timeout=self._puback_timeout_s,
            max_inflight_messages=config.inflight_events_max,
            # a read holds the rows that begin within batch_events_max events, whole
            max_queued_outgoing_messages=config.batch_events_max + outbox.ROW_EVENTS_MAX,
            tls_context=ssl.create_default_context() if b.tls else None,
            logger=logging.getLogger("ecard.relay.mqtt"),
        )
        # aiomqtt warns above 10 pending calls; a batch is all pending by design.
        client.pending_calls_threshold = config.batch_events_max + outbox.ROW_EVENTS_MAX + 1
        return client

    async def _session(self, conn: asyncpg.Connection, backoff: Backoff) -> None:
        """Drain the outbox through one broker connection until it fails or we stop."""
        async with self._client() as client:
            self.metrics.connects.labels("broker").inc()
            self.metrics.broker_connected.set(1)
            self.broker_connected = True
            log.info("relay: connected to %s; publishing the outbox", self.broker.url)
            backoff.reset()
            # aiomqtt's message iterator raises MqttError when the connection ends: the
            # one public signal of a lost connection (the relay subscribes to nothing).
            lost = asyncio.ensure_future(anext(client.messages))
            reasons = PubackReasons(client) if self.mqtt_v5 else None
            unmatched_backoff = Backoff(self.config.reconnect_backoff_ms_min, self.config.reconnect_backoff_ms_max)
            try:
                while not self._stopping.is_set():
                    if lost.done():
                        lost.result()  # raises MqttError: the connection ended
                        lost = asyncio.ensure_future(anext(client.messages))  # a message? we subscribe to none
                    self._wake.clear()  # before the read: a NOTIFY during it is not lost
                    events = await outbox.pending(conn, self.config.batch_events_max, self._statement_timeout_s)
                    if events:
                        try:
                            await self._publish_batch(conn, client, reasons, events, lost)
                        except NoSubscribers as exc:
                            if not unmatched_backoff.failures:
                                log.warning("relay: %s; they stay in the outbox and go again until a "
                                            "subscriber takes them", exc)
                            await self._stopped_within(unmatched_backoff.next_delay_s())
                        else:
                            if unmatched_backoff.failures:
                                log.info("relay: a subscriber takes the events again")
                            unmatched_backoff.reset()
                    else:
                        await self._idle(lost)
            finally:
                self.metrics.broker_connected.set(0)
                self.broker_connected = False
                if not lost.done():
                    lost.cancel()
                elif not lost.cancelled():
                    lost.exception()  # retrieved: asyncio does not warn of it

    async def _idle(self, lost: asyncio.Future) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait([*waiters, lost], timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _publish_batch(
        self, conn: asyncpg.Connection, client: aiomqtt.Client, reasons: PubackReasons | None,
        events: list[PendingEvent], lost: asyncio.Future,
    ) -> None:
        prefix = self.config.topic_prefix
        timeout_s = self._puback_timeout_s
        # Tasks start in creation order, so the PUBLISHes leave in id order on the one
        # connection; paho keeps inflight_events_max unacknowledged and queues the rest.
        tasks = [
            asyncio.ensure_future(
                client.publish(
                    layout.event_topic(prefix, e.school_id, e.kind, e.account_id),
                    layout.encode(e.event_id, e.kind, e.account_id, e.created_at_ms, e.notice),
                    qos=1,
                    retain=False,
                    timeout=timeout_s,
                ) if reasons is None else reasons.publish(
                    layout.event_topic(prefix, e.school_id, e.kind, e.account_id),
                    layout.encode(e.event_id, e.kind, e.account_id, e.created_at_ms, e.notice),
                    timeout_s,
                )
            )
            for e in events
        ]
        try:
            acked = asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait([acked, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not all(t.done() for t in tasks):  # the connection ended (or we are cancelled)
                for t in tasks:
                    t.cancel()
                await asyncio.wait(tasks)
        acked = [(e, t) for e, t in zip(events, tasks) if not t.cancelled() and t.exception() is None]
        # MQTT 3.1.1: a PUBACK is all there is (result None). MQTT 5: only a success code counts;
        # 0x10 (matched no subscription) stays unsent, and so does a refusal (0x80 and above).
        done = [not t.cancelled() and t.exception() is None and t.result() in (None, PUBACK_SUCCESS) for t in tasks]
        # A row is sent once all its events are (a group commit's events share one row): the
        # acknowledged events of a row that is not go again, counted as unmarked.
        done_ids = outbox.sent_rows(events, done)
        marked = set(done_ids)
        self.metrics.unmarked.inc(sum(1 for e, ok in zip(events, done) if ok and e.id not in marked))
        unmatched = sum(1 for _, t in acked if t.result() == PUBACK_NO_MATCHING_SUBSCRIBERS)
        refused = [t.result() for _, t in acked if t.result() not in (None, PUBACK_SUCCESS,
                                                                        PUBACK_NO_MATCHING_SUBSCRIBERS)]
        missing = len(events) - len(acked)
        self.metrics.published.inc(sum(done))
        if done_ids:
            try:
                await outbox.mark_sent(conn, done_ids, int(time.time() * 1000), self._statement_timeout_s)
            except _DB_FAILURES:
                self.metrics.unmarked.inc(sum(1 for e in events if e.id in marked))
                raise
        if missing:
            self.metrics.unacknowledged.inc(missing)
            first = next(t for t in tasks if t.cancelled() or t.exception() is not None)
            why = "connection lost" if first.cancelled() else f"{type(first.exception()).__name__}: {first.exception()}"
            raise BrokerLost(f"{missing} of {len(events)} PUBLISHes not acknowledged ({why})")
        if refused:
            self.metrics.unacknowledged.inc(len(refused))
            raise BrokerLost(f"{len(refused)} of {len(events)} PUBLISHes refused by the broker "
                             f"(PUBACK reason 0x{refused[0]:02x})")
        if unmatched:
            self.metrics.unmatched.inc(unmatched)
            raise NoSubscribers(f"{unmatched} of {len(events)} events matched no subscription (PUBACK 0x10)")

    # ------------------------------------------------------------------ the backlog

    async def _monitor(self) -> None:
        """Count the backlog every pending_check_interval_ms, on a connection of its own
        (so the gauge rises while the broker is away), and raise the alarm above the limit."""
        interval_s = self.config.pending_check_interval_ms / 1000
        conn: asyncpg.Connection | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self.dsn, timeout=database.CONNECT_TIMEOUT_S, command_timeout=self._statement_timeout_s
                        )
                    pending, oldest_ms = await outbox.backlog(
                        conn, self.config.pending_count_max, self._statement_timeout_s
                    )
                except _DB_FAILURES as exc:
                    log.debug("relay: backlog count failed (%s)", exc)
                    conn = self._drop_db(conn, holds_lock=False)
                else:
                    self._report_backlog(pending, oldest_ms)
                await self._stopped_within(interval_s)
        finally:
            self._drop_db(conn, holds_lock=False)

    def _report_backlog(self, pending: int, oldest_ms: int | None) -> None:
        config = self.config
        self.pending_events = pending
        self.metrics.pending.set(pending)
        age_s = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms is not None else 0.0
        self.metrics.oldest_age.set(age_s)
        now_s = time.monotonic()
        if pending > config.pending_events_max:
            if now_s >= self._alarm_next_s:
                log.error(
                    "OUTBOX BACKLOG: %s%d events unsent, above OUTBOX_PENDING_EVENTS_MAX=%d; the oldest is %.0f s old; "
                    "broker %s %s. The gateway keeps deciding; parents' notices are late, none is lost (they drain "
                    "in order once the broker takes them).",
                    ">=" if pending >= config.pending_count_max else "", pending, config.pending_events_max, age_s,
                    self.broker.url, "connected" if self.broker_connected else "NOT connected",
                )
                self._alarm_next_s = now_s + RELAY_PENDING_ALARM_INTERVAL_MS / 1000
            self._above_limit = True
        elif self._above_limit:
            log.warning("outbox backlog back to %d events (limit %d)", pending, config.pending_events_max)
            self._above_limit, self._alarm_next_s = False, 0.0

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True if stop() came first."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

