"""The embedded MQTT broker of `make run`: amqtt (pure Python, asyncio), on loopback.

``python -m relay broker [--host 127.0.0.1] [--port 1884]`` runs it as a process of
its own (the launcher does); ``python -m relay run --embedded-broker`` runs it inside
the relay. It is for a developer's machine and the tests: MQTT 3.1.1, anonymous
clients, loopback only, nothing kept on disk (a restart forgets sessions). In
production ECARD_MQTT_URL names a real broker (Mosquitto with the password and ACL
files of ``relay.mosquitto``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger("ecard.broker")

# Clients of a developer's broker: the relay, a notifier, a few subscribers of tests
# and of a person watching with mosquitto_sub. A runaway script stops at this.
EMBEDDED_BROKER_CONNECTIONS_MAX = 256
# A persistent (clean_session=0) subscriber away for longer loses its session and
# the messages queued for it: bounds what the broker holds for a client that is gone.
EMBEDDED_SESSION_EXPIRY_S = 3_600

READY_LINE = "ecard MQTT broker (amqtt) listening on"


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, anonymous clients, no $SYS topics, no packet log."""
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": EMBEDDED_BROKER_CONNECTIONS_MAX},
        },
        "session_expiry_interval": EMBEDDED_SESSION_EXPIRY_S,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def quiet_logs() -> None:
    """amqtt logs every connection at INFO and its state machine at DEBUG."""
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def start_broker(host: str, port: int):
    """Start an amqtt broker on ``host:port`` in the running loop; return it (``await b.shutdown()``)."""
    from amqtt.broker import Broker

    quiet_logs()
    broker = Broker(broker_config(host, port))
    await broker.start()
    return broker


async def serve(host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = await start_broker(host, port)
    print(f"{READY_LINE} mqtt://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()
    return 0
