"""The notifier's two loops: take events in from MQTT, and send the deliveries.

Intake (one MQTT connection, persistent session, QoS 1, manual acknowledgement):

1. receive up to ``ingest_batch_events_max`` events (whatever has arrived; at least one);
2. decode each (``relay.layout``: the message, ``ledger.notices.NOTICE_DECODER``: the
   notice); a message that does not decode is logged, counted and acknowledged (it would
   never decode);
3. one transaction: for each event, its subscribers (``storage.representatives``) and
   ``storage.deliveries.take_in`` (the processed_events row ON CONFLICT DO NOTHING, and
   only for a new one its delivery records); COMMIT;
4. only then PUBACK the batch. A crash before the PUBACK: the broker sends the events again
   (persistent session) and they find their processed_events rows.

Delivery (``send_concurrency_max`` sends in flight):

1. claim due deliveries (``storage.deliveries.claim_due``: SKIP LOCKED, a lease, committed);
2. read the names of the batch's pupils not cached yet (one statement);
3. for each: render the texts (``render``, reference data cached), ``channel.send``, and
   hand the outcome (sent; failed with its backoff; dead; cancelled when the representative
   was suspended or removed in the meantime) to the ``OutcomeWriter``, which writes what the
   sends finished meanwhile in one statement (group commit). The send's slot is freed once
   its outcome is written.

Nothing here sleeps blindly: waits are on events with timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from typing import Callable

import aiomqtt
import asyncpg
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ledger.notices import NOTICE_DECODER, AnyNotice, PurchaseNotice
from relay import layout
from storage import deliveries as store
from storage import representatives
from storage.deliveries import CANCELLED, DEAD, SENT, Claimed, Outcome, Target

from .channels import (
    Channel,
    DeferDelivery,
    PermanentDeliveryError,
    SkipDelivery,
    TemporaryDeliveryError,
    representative_topic,
    tv_topic,
)
from .config import NotifierConfig, Server
from .reference import ReferenceCache
from .render import Renderer, RenderError, Rendered, notice_context
from .retry import after_failure, retry_delay_ms

log = logging.getLogger("ecard.notifier")

_DB_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncio.TimeoutError)


def now_ms() -> int:
    return int(time.time() * 1000)


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "ecard_notifier_events", "events received from MQTT, by outcome: new (deliveries made), "
            "duplicate (taken in before: QoS 1 redelivery), rejected (did not decode)",
            ["outcome"], registry=registry,
        )
        self.created = Counter(
            "ecard_notifier_deliveries_created", "delivery records made, by channel", ["channel"], registry=registry
        )
        self.finished = Counter(
            "ecard_notifier_deliveries_finished", "delivery attempts ended, by channel and the status they left",
            ["channel", "status"], registry=registry,
        )
        self.in_flight = Gauge("ecard_notifier_sends_in_flight", "sends handed to a channel and not yet answered",
                               registry=registry)
        self.latency = Histogram(
            "ecard_notifier_delivery_seconds", "from the outbox row's creation to the peer's acceptance",
            ["channel"], registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
        )


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


class Reconnect:
    """Capped exponential backoff with jitter for reconnects."""

    def __init__(self, config: NotifierConfig, rng: random.Random) -> None:
        self.base_ms = config.reconnect_backoff_ms_min
        self.cap_ms = config.reconnect_backoff_ms_max
        self.failures = 0
        self.rng = rng

    def next_delay_s(self) -> float:
        self.failures += 1
        return retry_delay_ms(self.failures, self.base_ms, self.cap_ms, self.rng) / 1000

    def reset(self) -> None:
        self.failures = 0


def targets_of(subscribers: list[representatives.Subscriber], channels: tuple[str, ...], prefix: str) -> list[Target]:
    """One target per (subscriber, channel) this notifier sends on."""
    out: list[Target] = []
    for s in subscribers:
        for channel in dict.fromkeys(s.channels):  # a channel named twice is one delivery
            if channel not in channels:
                continue
            if channel == "email":
                if s.email:
                    out.append(Target(s.representative_id, channel, s.email))
            elif channel == "app_push":
                out.append(Target(s.representative_id, channel, representative_topic(prefix, s.representative_id)))
            elif channel == "tv_push":
                out.append(Target(s.representative_id, channel, tv_topic(prefix, s.representative_id)))
            elif channel == "sms":
                out.append(Target(s.representative_id, channel, s.phone))
    return out


class Decoded(msgspec.Struct, frozen=True):
    message: layout.Message
    notice: AnyNotice
    kind: str


class Intake:
    def __init__(self, config: NotifierConfig, broker: Server, pool: asyncpg.Pool, metrics: NotifierMetrics,
                 wake: Callable[[], None], rng: random.Random) -> None:
        self.config = config
        self.broker = broker
        self.pool = pool
        self.metrics = metrics
        self.wake = wake
        self.rng = rng
        self.subscribed = asyncio.Event()
        self.timeout_s = config.statement_timeout_ms / 1000

    async def run(self, stop: asyncio.Event) -> None:
        reconnect = Reconnect(self.config, self.rng)
        while not stop.is_set():
            try:
                await self._session(stop, reconnect)
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                delay = reconnect.next_delay_s()
                log.warning("MQTT %s: %s; reconnecting in %.1f s", self.broker.url, exc, delay)
                await _sleep_unless(stop, delay)

    async def _session(self, stop: asyncio.Event, reconnect: Reconnect) -> None:
        client = aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=self.config.client_id,
            # A persistent session: the broker keeps the subscription and queues the events
            # while this process is away (a restart, a crash), and sends again those it
            # sent and we never acknowledged.
            clean_session=False,
            username=self.broker.username, password=self.broker.password, keepalive=self.config.keepalive_s,
            timeout=self.timeout_s, tls_context=ssl.create_default_context() if self.broker.tls else None,
        )
        # paho acknowledges a QoS 1 PUBLISH on receipt unless told otherwise: the PUBACK must
        # wait for our COMMIT, or a crash in between would lose the event. aiomqtt has no
        # switch for it, so it is set on its paho client, before the connection is made.
        paho = client._client  # noqa: SLF001
        paho.manual_ack_set(True)
        async with client:
            await client.subscribe(self.config.events_filter, qos=1)
            self.subscribed.set()
            reconnect.reset()
            log.info("subscribed to %s on %s as %s", self.config.events_filter, self.broker.url, self.config.client_id)
            messages = client.messages
            while not stop.is_set():
                batch = [await messages.__anext__()]
                while len(messages) and len(batch) < self.config.ingest_batch_events_max:
                    batch.append(await messages.__anext__())
                await self.take_in(batch, stop)
                for m in batch:
                    paho.ack(m.mid, m.qos)

    def decode(self, message: aiomqtt.Message) -> Decoded | None:
        payload = message.payload
        try:
            if not isinstance(payload, (bytes, bytearray)):
                raise ValueError(f"payload of type {type(payload).__name__}")
            decoded = layout.decode(bytes(payload))
            notice = layout.decode_notice(decoded)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            self.metrics.events.labels("rejected").inc()
            log.error("event on %s does not decode, dropped: %s", message.topic, exc)
            return None
        kind = type(notice).__struct_config__.tag
        if kind != decoded.kind:
            log.warning("event %s: message kind %r, notice kind %r; the notice's is used", decoded.event_id,
                        decoded.kind, kind)
        return Decoded(decoded, notice, kind)

    async def take_in(self, batch: list[aiomqtt.Message], stop: asyncio.Event) -> None:
        """Record the batch (retried while PostgreSQL is away: the events are not acknowledged
        until this returns)."""
        events = [d for d in (self.decode(m) for m in batch) if d is not None]
        if not events:
            return
        reconnect = Reconnect(self.config, self.rng)
        while True:
            try:
                made = await self._transaction(events)
                break
            except _DB_LOST as exc:
                if stop.is_set():
                    raise asyncio.CancelledError from None
                delay = reconnect.next_delay_s()
                log.warning("PostgreSQL: %s; taking in %d events again in %.1f s", exc, len(events), delay)
                await _sleep_unless(stop, delay)
            except asyncpg.PostgresError as exc:
                if len(events) == 1:
                    self.metrics.events.labels("rejected").inc()
                    log.error("event %s cannot be recorded, dropped: %s", events[0].message.event_id, exc)
                    return
                log.warning("a batch of %d events failed (%s); taking them in one by one", len(events), exc)
                for event in events:
                    await self._take_in_one(event, stop)
                return
        self._count(made)

    async def _take_in_one(self, event: Decoded, stop: asyncio.Event) -> None:
        reconnect = Reconnect(self.config, self.rng)
        while True:
            try:
                self._count(await self._transaction([event]))
                return
            except _DB_LOST as exc:
                if stop.is_set():
                    raise asyncio.CancelledError from None
                await _sleep_unless(stop, reconnect.next_delay_s())
                log.warning("PostgreSQL: %s; taking event %s in again", exc, event.message.event_id)
            except asyncpg.PostgresError as exc:
                self.metrics.events.labels("rejected").inc()
                log.error("event %s cannot be recorded, dropped: %s", event.message.event_id, exc)
                return

    async def _transaction(self, events: list[Decoded]) -> list[list[Target] | None]:
        made: list[list[Target] | None] = []
        at = now_ms()
        # Two statements for the whole batch, no BEGIN/COMMIT around them (each is a round trip,
        # and a turn of a busy loop): its subscribers (a read), then its events and deliveries in
        # one statement, atomic by itself. A representative removed in between gets a delivery
        # that is cancelled when claimed (``representative_active``), as one removed later would.
        async with self.pool.acquire() as conn:
            subs = await representatives.subscribers_of(
                conn, [(event.notice.account_id, event.kind) for event in events], timeout_s=self.timeout_s)
            batch = [
                store.EventIn(event.message.event_id, event.kind, event.notice.account_id, event.notice.school_id,
                              event.notice.at_ms, event.message.created_at_ms, bytes(event.message.notice).decode(),
                              targets_of(found, self.config.channels, self.config.topic_prefix))
                for event, found in zip(events, subs)
            ]
            counts = await store.take_in_batch(conn, batch, now_ms=at, timeout_s=self.timeout_s)
        made.extend(None if count is None else e.targets for e, count in zip(batch, counts))
        return made

    def _count(self, made: list[list[Target] | None]) -> None:
        any_new = False
        for targets in made:
            if targets is None:
                self.metrics.events.labels("duplicate").inc()
                continue
            self.metrics.events.labels("new").inc()
            for target in targets:
                self.metrics.created.labels(target.channel).inc()
                any_new = True
        if any_new:
            self.wake()


# The outcome writer waits this long after the first outcome for others (unless
# OUTCOMES_BATCH_ROWS_MIN are already waiting): in a rush a statement then carries tens of rows
# instead of one or two. It delays the freeing of a send slot, not the recorded sent_at_ms.
OUTCOMES_FLUSH_INTERVAL_MS = 10
OUTCOMES_BATCH_ROWS_MIN = 16
# A claim is a statement: with sends in flight it waits until 1/CLAIM_FREE_SLOTS_DIVISOR of the
# send slots are free (a finished send frees one; a claim for each was a statement per delivery).
CLAIM_FREE_SLOTS_DIVISOR = 4


class OutcomeWriter:
    """Group commit of delivery outcomes: every send that finished while the last statement was
    on its way is written by the next one (``storage.deliveries.finish``), instead of one
    statement (and one pool round) per send. At most ``send_concurrency_max`` outcomes wait (one
    per send in flight, each awaits its own), so a statement holds at most that many rows.

    While PostgreSQL is away an outcome is retried, but not past its claim's lease: after it
    the delivery is another process's to take, and that one sends it again."""

    def __init__(self, config: NotifierConfig, pool: asyncpg.Pool, rng: random.Random) -> None:
        self.config = config
        self.pool = pool
        self.rng = rng
        self.timeout_s = config.statement_timeout_ms / 1000
        self._waiting: list[tuple[Outcome, asyncio.Future, float]] = []
        self._wake = asyncio.Event()
        self._closing = False

    async def write(self, outcome: Outcome) -> None:
        """Return once the outcome is written (or given up, logged)."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((outcome, done, time.monotonic() + self.config.delivery_lease_ms / 1000))
        self._wake.set()
        await done

    def close(self) -> None:
        """Write what waits, then end ``run``."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and len(self._waiting) < OUTCOMES_BATCH_ROWS_MIN:
                # let the sends finishing meanwhile join this statement
                await asyncio.sleep(OUTCOMES_FLUSH_INTERVAL_MS / 1000)
            self._wake.clear()
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._write(batch)
            if self._closing:
                return

    async def _write(self, batch: list[tuple[Outcome, asyncio.Future, float]]) -> None:
        reconnect = Reconnect(self.config, self.rng)
        while batch:
            try:
                async with self.pool.acquire() as conn:
                    await store.finish(conn, [outcome for outcome, _, _ in batch], now_ms=now_ms(),
                                       worker=self.config.client_id, timeout_s=self.timeout_s)
                break
            except asyncio.CancelledError:
                raise
            except _DB_LOST as exc:
                now = time.monotonic()
                for outcome, done, give_up_at in batch:
                    if now > give_up_at:
                        log.error("delivery %d: its outcome (%s) could not be written: %s", outcome.id,
                                  outcome.status, exc)
                        done.set_result(None)
                batch = [item for item in batch if now <= item[2]]
                if batch:
                    await asyncio.sleep(reconnect.next_delay_s())
            except Exception:  # a bug: the claims run out and are sent again
                log.exception("%d delivery outcomes could not be written", len(batch))
                break
        for _, done, _ in batch:
            if not done.done():
                done.set_result(None)


class Deliverer:
    def __init__(self, config: NotifierConfig, pool: asyncpg.Pool, channels: dict[str, Channel], renderer: Renderer,
                 reference: ReferenceCache, metrics: NotifierMetrics, rng: random.Random) -> None:
        self.config = config
        self.pool = pool
        self.channels = channels
        self.renderer = renderer
        self.reference = reference
        self.metrics = metrics
        self.rng = rng
        self.timeout_s = config.statement_timeout_ms / 1000
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self.outcomes = OutcomeWriter(config, pool, rng)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        reconnect = Reconnect(self.config, self.rng)
        while not stop.is_set():
            try:
                async with self.pool.acquire() as conn:
                    reclaimed = await store.reclaim_interrupted(conn, worker=self.config.client_id, now_ms=now_ms(),
                                                                timeout_s=self.timeout_s)
                break
            except _DB_LOST as exc:
                log.warning("PostgreSQL: %s", exc)
                await _sleep_unless(stop, reconnect.next_delay_s())
        else:
            return
        if reclaimed:
            log.warning("%d deliveries were being sent when this notifier last stopped; they go out again "
                        "(a peer may see them twice)", reclaimed)
        stop_waiter = asyncio.ensure_future(stop.wait())
        stop_waiter.add_done_callback(lambda _: self._wake.set())
        poll_s = self.config.delivery_poll_interval_ms / 1000
        writing = asyncio.create_task(self.outcomes.run(), name="outcomes")
        try:
            claim_slots_min = max(1, self.config.send_concurrency_max // CLAIM_FREE_SLOTS_DIVISOR)
            while not stop.is_set():
                self._wake.clear()
                free = self.config.send_concurrency_max - len(self._in_flight)
                claimed: list[Claimed] = []
                if free >= claim_slots_min or (free > 0 and not self._in_flight):
                    try:
                        claimed = await self._claim(free)
                        reconnect.reset()
                    except _DB_LOST as exc:
                        delay = reconnect.next_delay_s()
                        log.warning("PostgreSQL: %s; claiming again in %.1f s", exc, delay)
                        await _sleep_unless(stop, delay)
                        continue
                if claimed:
                    try:
                        await self.reference.preload_pupils([d.account_id for d in claimed])
                    except _DB_LOST as exc:  # each send reads its pupil's name itself, or fails and is retried
                        log.warning("PostgreSQL: %s; pupils' names not read ahead", exc)
                for delivery in claimed:
                    task = asyncio.create_task(self._deliver(delivery))
                    self._in_flight.add(task)
                    task.add_done_callback(self._done)
                if claimed and len(claimed) == free:
                    continue  # there may be more due: claim again (at once if a slot is free)
                # Woken by a new event taken in, a send finished (a slot is free), or stop;
                # the poll finds retries that came due and other processes' leftovers.
                try:
                    await asyncio.wait_for(self._wake.wait(), poll_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            stop_waiter.cancel()
            await self._drain()
            self.outcomes.close()
            try:  # bounded: with PostgreSQL away the writer would retry until the leases ran out
                await asyncio.wait_for(writing, self.config.shutdown_grace_ms / 1000)
            except asyncio.TimeoutError:
                log.warning("delivery outcomes not written within the grace time: those deliveries go out again "
                            "at the next start")

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _drain(self) -> None:
        """Let the sends in flight finish within the grace time; the rest stay claimed and
        are taken again at the next start (reclaim_interrupted)."""
        if not self._in_flight:
            return
        done, pending = await asyncio.wait(set(self._in_flight), timeout=self.config.shutdown_grace_ms / 1000)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("%d sends did not finish within the grace time; they go out again at the next start",
                        len(pending))

    async def _claim(self, free: int) -> list[Claimed]:
        async with self.pool.acquire() as conn:
            return await store.claim_due(
                conn, now_ms=now_ms(), limit=min(free, store.PAGE_ROWS_MAX), lease_ms=self.config.delivery_lease_ms,
                worker=self.config.client_id, channels=self.channels.keys(), timeout_s=self.timeout_s,
            )

    async def _render(self, delivery: Claimed, notice: AnyNotice, channel: Channel) -> Rendered:
        codes = tuple(item.product_code for item in notice.items) if isinstance(notice, PurchaseNotice) else ()
        school = await self.reference.school(delivery.school_id, codes)
        pupil = await self.reference.pupil(delivery.account_id)
        ctx = notice_context(notice, pupil=pupil, school_name=school.name,
                             utc_offset_minutes=school.utc_offset_minutes, products=school.products)
        return self.renderer.render(channel.name, delivery.kind, ctx, html=channel.html)

    async def _deliver(self, delivery: Claimed) -> None:
        channel = self.channels[delivery.channel]
        if not delivery.representative_active:
            at = now_ms()
            outcome = Outcome(delivery.id, CANCELLED, at, "representative suspended or removed", at)
        else:
            self.metrics.in_flight.inc()
            try:
                outcome = await self._attempt(delivery, channel)
            finally:
                self.metrics.in_flight.dec()
            if isinstance(outcome, DeferDelivery):
                self.metrics.finished.labels(delivery.channel, "deferred").inc()
                await self._defer(delivery, outcome)
                return
        self.metrics.finished.labels(delivery.channel, outcome.status).inc()
        if outcome.status == SENT:
            self.metrics.latency.labels(delivery.channel).observe(max(0, now_ms() - delivery.created_at_ms) / 1000)
        elif outcome.status == DEAD:
            log.warning("delivery %d (%s, %s) is dead after %d attempts: %s", delivery.id, delivery.channel,
                        delivery.event_id, delivery.attempts, outcome.last_error)
        await self.outcomes.write(outcome)

    async def _defer(self, delivery: Claimed, deferred: DeferDelivery) -> None:
        try:
            async with self.pool.acquire() as conn:
                await store.defer(conn, delivery.id, until_ms=deferred.until_ms, reason=f"deferred: {deferred}",
                                  now_ms=now_ms(), worker=self.config.client_id, timeout_s=self.timeout_s)
        except _DB_LOST as exc:  # the lease runs out and the delivery is claimed again, and deferred again
            log.warning("delivery %d: deferral not written: %s", delivery.id, exc)

    async def _attempt(self, delivery: Claimed, channel: Channel) -> Outcome | DeferDelivery:
        try:
            notice = NOTICE_DECODER.decode(delivery.notice)
            rendered = await self._render(delivery, notice, channel)
            await channel.send(delivery, rendered)
            at = now_ms()
            return Outcome(delivery.id, SENT, at, None, at)
        except DeferDelivery as exc:
            return exc
        except SkipDelivery as exc:
            at = now_ms()
            return Outcome(delivery.id, exc.status, at, str(exc)[:1000], at)
        except (PermanentDeliveryError, RenderError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._failed(delivery, exc, permanent=True)
        except TemporaryDeliveryError as exc:
            return self._failed(delivery, exc, permanent=False)
        except _DB_LOST as exc:  # reading reference data: the send did not happen
            return self._failed(delivery, exc, permanent=False)
        except Exception as exc:  # a bug in a channel: retried, and it shows in last_error
            log.exception("delivery %d: unexpected error in channel %s", delivery.id, channel.name)
            return self._failed(delivery, exc, permanent=False)

    def _failed(self, delivery: Claimed, exc: BaseException, *, permanent: bool) -> Outcome:
        at = now_ms()
        status, next_at = after_failure(
            attempts=delivery.attempts, permanent=permanent, now_ms=at, attempts_max=self.config.delivery_attempts_max,
            base_ms=self.config.delivery_backoff_ms_min, cap_ms=self.config.delivery_backoff_ms_max, rng=self.rng,
        )
        text = str(exc) if isinstance(exc, (PermanentDeliveryError, TemporaryDeliveryError, RenderError)) \
            else f"{type(exc).__name__}: {exc}"
        return Outcome(delivery.id, status, next_at, text[:1000], at)
