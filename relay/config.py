"""The relay's configuration: one typed object, from a TOML file plus environment variables.

Shared with the rest of ecard: ``ECARD_PG_DSN``, ``ECARD_DATA_DIR`` and
``ECARD_MQTT_URL``. The relay's own fields: ``ECARD_RELAY_<FIELD>`` (so that the
gateway's ``ECARD_METRICS_PORT`` and the relay's ``ECARD_RELAY_METRICS_PORT`` never
mix when the launcher hands both the same environment). Validated once at start;
units are the last part of every name. Each default is a named limit below with
its reason.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from relay.layout import valid_prefix

# -- the limits, with their units and reasons

# How often the relay looks for new outbox rows when nothing woke it. Every writer of
# outbox rows NOTIFYs storage.outbox.OUTBOX_CHANNEL at COMMIT (the journal writer in its
# group-commit statement, the staff and parents' APIs after their card events), and the
# relay LISTENs: it wakes at once. The poll is the safety net for a writer that does not
# notify; a second is still far below what a parent notices, and one indexed read a
# second costs PostgreSQL nothing measurable.
RELAY_POLL_INTERVAL_MS = 1_000
# Rows read, published and marked per round: one SELECT and one UPDATE per batch.
# It bounds the relay's memory (about 0.5 KiB per event: ~250 KiB), the work lost to
# a crash between PUBACK and the UPDATE (at most one batch is published again) and
# the time a batch holds the connection. 500 events drain the city's morning peak
# (about 400 entries/s) in one batch a second.
RELAY_BATCH_EVENTS_MAX = 500
# QoS 1 PUBLISHes sent and not yet acknowledged (paho's in-flight window). One PUBACK
# round trip per event would cap the relay at 1/RTT; 100 in flight give 5,000
# events/s over a 20 ms WAN round trip and stay well inside what Mosquitto accepts
# from one client. Above it, paho queues (at most one batch).
RELAY_INFLIGHT_EVENTS_MAX = 100
# A PUBACK (or CONNACK) slower than this means a stuck broker or a dead route: the
# relay drops the connection, keeps the outbox as it is and reconnects.
RELAY_PUBACK_TIMEOUT_MS = 10_000
# MQTT keep-alive: a broker that vanished without closing the socket is noticed
# within 1.5 x this while the relay is idle (PUBACK timeouts catch it when busy).
RELAY_KEEPALIVE_S = 10
# Reconnect (broker or PostgreSQL): capped exponential backoff with jitter, from the
# minimum (a restart of the broker takes well under a second) to the cap (a broker
# down for long is retried every few seconds, not hammered by every relay at once).
RELAY_RECONNECT_BACKOFF_MS_MIN = 100
RELAY_RECONNECT_BACKOFF_MS_MAX = 5_000
# How many unsent events the outbox may hold before the relay raises the alarm
# (logged as an error at the crossing and every RELAY_PENDING_ALARM_INTERVAL_MS,
# exported as ecard_outbox_pending_events against ecard_outbox_pending_events_limit).
# The gateway keeps deciding past it: a pupil is never kept out of school or lunch
# because parents' notices are late; the rows wait in PostgreSQL (~0.5 KiB each,
# ~0.5 GiB at the limit) and drain in order when the broker is back. A million is
# about 40 minutes of the whole city's morning peak (1.4 million entries between
# 07:30 and 08:30): long enough to ride out a broker restart or upgrade, short enough
# that someone is paged before parents lose a morning of notices.
OUTBOX_PENDING_EVENTS_MAX = 1_000_000
# The backlog is counted this often (also while the broker is down: the gauge must
# rise then). The count itself stops at OUTBOX_PENDING_COUNT_FACTOR x the limit, so
# it stays bounded work however far behind the relay is.
RELAY_PENDING_CHECK_INTERVAL_MS = 1_000
OUTBOX_PENDING_COUNT_FACTOR = 10
RELAY_PENDING_ALARM_INTERVAL_MS = 60_000
# No statement of the relay may hold it longer; it reconnects instead.
RELAY_STATEMENT_TIMEOUT_MS = 5_000
# The CPU priority (nice, 0..19) of the notices' processes, the relay and the notifier (one
# figure for both). Where they share cores with the gateway the devices come first: a
# turnstile answers in milliseconds, a notice may take up to a second. On 2 shared cores (make
# bench, notices phase) the notices' path at normal priority took the morning rush's device
# reply p99 from 3.6-4.3 ms (the gateway alone) to 20 ms.
NOTICES_CPU_NICE = 10
# Bounded stop: the batch in flight finishes (PUBACKs, UPDATE) within this.
RELAY_SHUTDOWN_GRACE_MS = 5_000

# The embedded broker (amqtt) of `make run`: beside the system's Mosquitto on 1883.
EMBEDDED_BROKER_HOST = "127.0.0.1"
EMBEDDED_BROKER_PORT = 1884

TOPIC_PREFIX = "ecard/v1"


# MQTT version towards the broker. "5" lets the broker say, in each PUBACK, that the event
# matched no subscription (reason 0x10, "No matching subscribers"): the relay then keeps the
# row unsent and publishes it again, so an event published while no notifier's subscription
# exists (Mosquitto keeps no shared subscription across its restart) is never marked sent.
# "3.1.1" has no such answer. "auto": 5, and 3.1.1 from the first broker that refuses 5 as an
# unsupported protocol version (amqtt, the embedded broker of `make run`, speaks 3.1.1 only).
MQTT_PROTOCOLS = ("auto", "5", "3.1.1")


class ConfigError(ValueError):
    pass


class RelayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pg_dsn: str = ""  # empty: the embedded PostgreSQL under data_dir
    data_dir: str = "var"
    # mqtt://user:password@host:port (or mqtts://); empty: the embedded broker below
    mqtt_url: str = ""
    broker_host: str = EMBEDDED_BROKER_HOST
    broker_port: int = EMBEDDED_BROKER_PORT
    topic_prefix: str = TOPIC_PREFIX
    # One publisher per outbox (advisory lock), so a fixed id is safe: a restarted
    # relay takes over its predecessor's session at once.
    client_id: str = "ecard-relay"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9109  # 0 picks a free port (tests)
    poll_interval_ms: int = RELAY_POLL_INTERVAL_MS
    batch_events_max: int = RELAY_BATCH_EVENTS_MAX
    inflight_events_max: int = RELAY_INFLIGHT_EVENTS_MAX
    puback_timeout_ms: int = RELAY_PUBACK_TIMEOUT_MS
    keepalive_s: int = RELAY_KEEPALIVE_S
    reconnect_backoff_ms_min: int = RELAY_RECONNECT_BACKOFF_MS_MIN
    reconnect_backoff_ms_max: int = RELAY_RECONNECT_BACKOFF_MS_MAX
    pending_events_max: int = OUTBOX_PENDING_EVENTS_MAX
    pending_check_interval_ms: int = RELAY_PENDING_CHECK_INTERVAL_MS
    statement_timeout_ms: int = RELAY_STATEMENT_TIMEOUT_MS
    shutdown_grace_ms: int = RELAY_SHUTDOWN_GRACE_MS
    cpu_nice: int = NOTICES_CPU_NICE
    mqtt_protocol: str = "auto"

    def __post_init__(self) -> None:
        _require(self.mqtt_protocol in MQTT_PROTOCOLS, "mqtt_protocol", f"must be one of {', '.join(MQTT_PROTOCOLS)}")
        _require(0 < self.broker_port < 65536, "broker_port", "must be 1..65535")
        _require(0 <= self.metrics_port < 65536, "metrics_port", "must be 0..65535 (0 picks a free port)")
        _require(valid_prefix(self.topic_prefix), "topic_prefix", "must be topic levels without '+', '#' or empty levels")
        # MQTT 3.1.1 promises 23 characters everywhere; Mosquitto and amqtt take longer ones.
        _require(1 <= len(self.client_id) <= 64, "client_id", "must be 1..64 characters")
        _require(10 <= self.poll_interval_ms <= 60_000, "poll_interval_ms", "must be 10..60000")
        _require(1 <= self.batch_events_max <= 10_000, "batch_events_max", "must be 1..10000")
        _require(0 <= self.cpu_nice <= 19, "cpu_nice", "must be 0..19")
        _require(1 <= self.inflight_events_max <= 65_535, "inflight_events_max", "must be 1..65535")
        _require(100 <= self.puback_timeout_ms <= 600_000, "puback_timeout_ms", "must be 100..600000")
        _require(1 <= self.keepalive_s <= 3_600, "keepalive_s", "must be 1..3600")
        _require(self.reconnect_backoff_ms_min >= 1, "reconnect_backoff_ms_min", "must be at least 1")
        _require(
            self.reconnect_backoff_ms_max >= self.reconnect_backoff_ms_min,
            "reconnect_backoff_ms_max",
            "must be at least reconnect_backoff_ms_min",
        )
        _require(self.pending_events_max >= 1, "pending_events_max", "must be positive")
        _require(10 <= self.pending_check_interval_ms <= 600_000, "pending_check_interval_ms", "must be 10..600000")
        _require(self.statement_timeout_ms >= 100, "statement_timeout_ms", "must be at least 100")
        _require(self.shutdown_grace_ms >= 0, "shutdown_grace_ms", "must be >= 0")
        broker(self)  # the URL parses

    @property
    def pending_count_max(self) -> int:
        return OUTBOX_PENDING_COUNT_FACTOR * self.pending_events_max


class Broker(msgspec.Struct, frozen=True):
    """Where the relay publishes: parsed from mqtt_url, or the embedded broker."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    embedded: bool

    @property
    def url(self) -> str:
        """The address without credentials (for logs)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def redacted(config: RelayConfig) -> RelayConfig:
    """The configuration without the broker's password (for printing)."""
    parts = urlsplit(config.mqtt_url)
    if parts.password is None:
        return config
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return msgspec.structs.replace(config, mqtt_url=parts._replace(netloc=netloc).geturl())


def broker(config: RelayConfig) -> Broker:
    if not config.mqtt_url:
        return Broker(config.broker_host, config.broker_port, None, None, False, True)
    return Broker(*split_server_url(config.mqtt_url, "mqtt_url", ("mqtt", "mqtts"), 1883, 8883), False)


def split_server_url(
    url: str, field: str, schemes: tuple[str, str], port: int, tls_port: int
) -> tuple[str, int, str | None, str | None, bool]:
    """(host, port, user, password, tls) of ``scheme://[user:password@]host[:port]``, the second
    scheme being the TLS one; the default port by scheme. The one URL rule of the relay's and the
    notifier's servers (MQTT, SMTP, SMPP); a ConfigError names ``field``."""
    try:
        parts = urlsplit(url)
        parsed_port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    _require(parts.scheme in schemes, field, f"must be {schemes[0]}://[user:password@]host[:port] or {schemes[1]}://...")
    _require(bool(parts.hostname), field, "names no host")
    _require(parts.path in ("", "/") and not parts.query, field, "takes no path or query")
    tls = parts.scheme == schemes[1]
    return (
        parts.hostname or "",
        parsed_port or (tls_port if tls else port),
        unquote(parts.username) if parts.username is not None else None,
        unquote(parts.password) if parts.password is not None else None,
        tls,
    )


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


_SHARED = {"pg_dsn": "ECARD_PG_DSN", "data_dir": "ECARD_DATA_DIR", "mqtt_url": "ECARD_MQTT_URL"}


def env_name(field: str) -> str:
    """The environment variable of a field: ECARD_PG_DSN, ECARD_MQTT_URL, ECARD_RELAY_BATCH_EVENTS_MAX, ..."""
    return _SHARED.get(field, f"ECARD_RELAY_{field.upper()}")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> RelayConfig:
    """TOML file (optional), then the environment, then ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    for field in RelayConfig.__struct_fields__:
        name = env_name(field)
        if name in env:
            values[field] = env[name]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, RelayConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def lower_cpu_priority(nice: int) -> None:
    """This process's nice value raised to ``nice`` (NOTICES_CPU_NICE); never lowered: an
    unprivileged process cannot take a priority back, and one started lower stays lower."""
    if nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
