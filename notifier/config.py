"""The notifier's configuration: one typed object, from a TOML file plus environment variables.

Shared with the rest of ecard: ``ECARD_PG_DSN``, ``ECARD_DATA_DIR``, ``ECARD_MQTT_URL``.
The notifier's own fields: ``ECARD_NOTIFIER_<FIELD>``. Validated once at start; units
are the last part of every name; every default is a named limit below with its reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from relay.broker import EMBEDDED_SESSION_EXPIRY_S
from relay.config import NOTICES_CPU_NICE, ConfigError, split_server_url  # one URL rule, one error of configuration
from relay.layout import valid_prefix
from relay.mosquitto import MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S
from storage.deliveries import PURGE_BATCH_EVENTS_MAX

# -- the limits, with their units and reasons

# A delivery is tried at most this many times, then it is dead (a dead letter an operator
# can requeue). With the backoff below the attempts span about 20 to 45 minutes: enough to
# ride out an SMTP relay or broker restart, an upgrade or a short outage; past that the
# notice is stale (an entry time learned an hour late tells a parent little) and a person
# should look at the cause rather than the notifier hammering a dead peer.
DELIVERY_ATTEMPTS_MAX = 12
# Retry n waits a uniformly drawn time in [d/2, d], d = min(MAX, MIN * 2**(n-1)): doubling
# finds a peer that comes back late without hammering it; the cap keeps a long outage
# retried every few minutes; the jitter spreads the retries of a burst (a whole morning of
# notices failing at once) so the recovered peer is not met by all of them in one second.
DELIVERY_BACKOFF_MS_MIN = 2_000
DELIVERY_BACKOFF_MS_MAX = 15 * 60_000
# A claimed delivery belongs to its process this long: longer than any send may take
# (SMTP_TIMEOUT_MS, PUSH_TIMEOUT_MS), so a live sender is never overtaken; a dead one's
# claims are taken over after it (at once by the same process name after a restart).
DELIVERY_LEASE_MS = 120_000
# Deliveries sent at once by one process. Bounds the open SMTP connections (one per send
# in flight), the memory of rendered texts and what a crash leaves in doubt; 32 sends of
# ~20 ms each give well over 1,000 deliveries a second, above a city's morning peak for
# one process.
SEND_CONCURRENCY_MAX = 32
# How often the delivery worker looks for due retries when nothing woke it (a new event
# taken in by this process wakes it at once; retries and other processes' leftovers are
# found by this poll).
DELIVERY_POLL_INTERVAL_MS = 500
# Events taken in per transaction: one COMMIT and one PUBACK round per batch. Bounds the
# work redone after a crash (the batch is redelivered and de-duplicated) and the time a
# batch holds a connection. Also the MQTT receive window: the broker sends at most this
# many unacknowledged events (Mosquitto's per-client in-flight limit must be at least as
# large for the batch to fill; its default is 20).
INGEST_BATCH_EVENTS_MAX = 100
# One SMTP conversation (connect, MAIL, RCPT, DATA) and one push PUBLISH (until PUBACK).
SMTP_TIMEOUT_MS = 30_000
PUSH_TIMEOUT_MS = 10_000
# MQTT keep-alive: a broker that vanished without closing the socket is noticed within
# 1.5 x this while idle.
MQTT_KEEPALIVE_S = 10
# Reconnect (broker, PostgreSQL): capped exponential backoff with jitter.
RECONNECT_BACKOFF_MS_MIN = 100
RECONNECT_BACKOFF_MS_MAX = 5_000
# No statement may hold the notifier longer; it reconnects instead.
STATEMENT_TIMEOUT_MS = 5_000
# Bounded stop: sends in flight finish within this; what is left is reclaimed at the next start.
SHUTDOWN_GRACE_MS = 5_000
# School names, product names and pupils' names are cached this long (they change rarely;
# a renamed product shows its new name within this).
REFERENCE_TTL_MS = 300_000
# Pupils' names kept in memory at once (one line each): a city's busiest minutes fit.
PUPIL_NAMES_CACHED_MAX = 200_000

# Retention (docs/notifier.md "Retention"): an event taken in (processed_events, the durable
# de-duplication) goes with its deliveries this long after the notifier took it in, once every
# delivery of it is finished. A school year and a month (400 days): the parents' history
# horizon (the parents' API and the portal list a child's events and their deliveries from these
# rows, and last September's are still asked about in October).
RETENTION_DAYS = 400
MS_PER_DAY = 86_400_000
# The longest a broker keeps this notifier's persistent session, and so its events not yet
# acknowledged, while the notifier is away: the embedded amqtt's session expiry and the
# persistent_client_expiration of the Mosquitto configuration the relay writes. An event can come
# again (QoS 1) until then, so its processed_events row must outlive it: retention_days is
# checked to be longer. Set it to a named broker's own expiry if that is longer.
MQTT_SESSION_EXPIRY_S = max(EMBEDDED_SESSION_EXPIRY_S, MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S)
# How often each notifier process purges (several processes share the work: SKIP LOCKED). Daily:
# a day's events are a day's deleting, and against a 400-day horizon a day late costs nothing.
PURGE_INTERVAL_MS = MS_PER_DAY
# The first purge this long after the start, not at once: a restart's backlog of events and
# retries goes first, and a crash loop does not purge at every start.
PURGE_START_DELAY_MS = 10 * 60_000
# Batches of one purge run at most (storage.deliveries.PURGE_BATCH_EVENTS_MAX events each):
# 20,000,000 events, three to four days of a whole city's (1.4 M pupils, about four events a
# day each). Bounds the run; what is left waits for the next run.
PURGE_BATCHES_PER_RUN_MAX = 20_000

# The embedded broker (amqtt) of `make run`, the relay's (relay/config.py).
EMBEDDED_BROKER_HOST = "127.0.0.1"
EMBEDDED_BROKER_PORT = 1884
# The embedded SMTP sink of `make run` (aiosmtpd, inside the notifier).
EMBEDDED_SMTP_HOST = "127.0.0.1"
EMBEDDED_SMTP_PORT = 8025
# The embedded SMSC simulator of `make run` (smpp34, inside the notifier, notifier/smsc.py).
EMBEDDED_SMSC_HOST = "127.0.0.1"
EMBEDDED_SMSC_PORT = 2775
# SMS (notifier/sms.py has the reasons): PDUs a second, and submit_sm to its response.
SMS_PER_SECOND_MAX = 10
SMS_SUBMIT_TIMEOUT_MS = 10_000
TOPIC_PREFIX = "ecard/v1"
SHARE_GROUP = "notifier"

# The channels this notifier can send on (notifier.channels); the representatives table
# knows the leaflet's six (storage.representatives.CHANNELS).
IMPLEMENTED_CHANNELS = ("email", "app_push", "tv_push", "sms")


class NotifierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pg_dsn: str = ""  # empty: the embedded PostgreSQL under data_dir
    data_dir: str = "var"
    # mqtt://user:password@host:port or mqtts://; empty: the embedded broker below
    mqtt_url: str = ""
    broker_host: str = EMBEDDED_BROKER_HOST
    broker_port: int = EMBEDDED_BROKER_PORT
    topic_prefix: str = TOPIC_PREFIX
    # Each notifier process needs its own, stable across its restarts: it names the
    # persistent MQTT session (events queued while it is away) and its delivery claims.
    client_id: str = "ecard-notifier-1"
    # shared: $share/<share_group>/<prefix>/events/# (several processes, each event to one);
    # plain: <prefix>/events/# (one process only); auto: shared for a named broker, plain
    # for the embedded amqtt broker, which has no shared subscriptions.
    subscription: Literal["auto", "shared", "plain"] = "auto"
    share_group: str = SHARE_GROUP
    channels: tuple[str, ...] = IMPLEMENTED_CHANNELS
    # smtp://user:password@host:port (plain, STARTTLS per smtp_starttls) or smtps:// (TLS
    # from the start); empty: the embedded SMTP sink below, started inside this process.
    smtp_url: str = ""
    smtp_starttls: bool = False
    smtp_sink_host: str = EMBEDDED_SMTP_HOST
    smtp_sink_port: int = EMBEDDED_SMTP_PORT  # 0 picks a free port (tests)
    # smpp://system_id:password@host:port; empty: the embedded SMSC simulator below, started
    # inside this process (smpp34).
    smpp_url: str = ""
    smsc_sim_host: str = EMBEDDED_SMSC_HOST
    smsc_sim_port: int = EMBEDDED_SMSC_PORT
    sms_source_addr: str = "ECARD"
    sms_per_second_max: int = SMS_PER_SECOND_MAX
    sms_submit_timeout_ms: int = SMS_SUBMIT_TIMEOUT_MS
    mail_from: str = "noreply@ecard.localhost"
    mail_from_name: str = "Проход и питание"
    # Every message sent is also written, readable, under <sent_dir>/<channel>/. None: on
    # with the embedded SMTP sink (make run: <data_dir>/sent), off otherwise; "" is off.
    sent_dir: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9110  # 0 picks a free port (tests)
    delivery_attempts_max: int = DELIVERY_ATTEMPTS_MAX
    delivery_backoff_ms_min: int = DELIVERY_BACKOFF_MS_MIN
    delivery_backoff_ms_max: int = DELIVERY_BACKOFF_MS_MAX
    delivery_lease_ms: int = DELIVERY_LEASE_MS
    delivery_poll_interval_ms: int = DELIVERY_POLL_INTERVAL_MS
    send_concurrency_max: int = SEND_CONCURRENCY_MAX
    ingest_batch_events_max: int = INGEST_BATCH_EVENTS_MAX
    smtp_timeout_ms: int = SMTP_TIMEOUT_MS
    push_timeout_ms: int = PUSH_TIMEOUT_MS
    keepalive_s: int = MQTT_KEEPALIVE_S
    reconnect_backoff_ms_min: int = RECONNECT_BACKOFF_MS_MIN
    reconnect_backoff_ms_max: int = RECONNECT_BACKOFF_MS_MAX
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS
    shutdown_grace_ms: int = SHUTDOWN_GRACE_MS
    reference_ttl_ms: int = REFERENCE_TTL_MS
    retention_days: int = RETENTION_DAYS
    mqtt_session_expiry_s: int = MQTT_SESSION_EXPIRY_S
    purge_interval_ms: int = PURGE_INTERVAL_MS  # 0: no purge in this process (python -m notifier purge, from cron)
    purge_start_delay_ms: int = PURGE_START_DELAY_MS
    purge_batch_events: int = PURGE_BATCH_EVENTS_MAX
    purge_batches_per_run_max: int = PURGE_BATCHES_PER_RUN_MAX
    cpu_nice: int = NOTICES_CPU_NICE  # relay.config: the devices first

    def __post_init__(self) -> None:
        _require(0 < self.broker_port < 65536, "broker_port", "must be 1..65535")
        _require(0 <= self.metrics_port < 65536, "metrics_port", "must be 0..65535 (0 picks a free port)")
        _require(0 <= self.smtp_sink_port < 65536, "smtp_sink_port", "must be 0..65535 (0 picks a free port)")
        _require(valid_prefix(self.topic_prefix), "topic_prefix", "must be topic levels without '+', '#' or empty levels")
        _require(bool(re.match(r"^[A-Za-z0-9._-]{1,64}$", self.client_id)), "client_id", "must be 1..64 of [A-Za-z0-9._-]")
        _require(bool(re.match(r"^[A-Za-z0-9_-]{1,64}$", self.share_group)), "share_group", "must be 1..64 of [A-Za-z0-9_-]")
        _require(len(self.channels) >= 1, "channels", "must name at least one channel")
        for channel in self.channels:
            _require(channel in IMPLEMENTED_CHANNELS, "channels", f"{channel!r} is not implemented (only {IMPLEMENTED_CHANNELS})")
        _require("@" in self.mail_from, "mail_from", "must be an e-mail address")
        _require(0 < self.smsc_sim_port < 65536, "smsc_sim_port", "must be 1..65535")
        _require(1 <= self.sms_per_second_max <= 10_000, "sms_per_second_max", "must be 1..10000")
        _require(100 <= self.sms_submit_timeout_ms, "sms_submit_timeout_ms", "must be at least 100")
        _require(bool(re.match(r"^[A-Za-z0-9+]{1,20}$", self.sms_source_addr)), "sms_source_addr",
                 "must be 1..20 of [A-Za-z0-9+]")
        _require(1 <= self.delivery_attempts_max <= 100, "delivery_attempts_max", "must be 1..100")
        _require(1 <= self.delivery_backoff_ms_min, "delivery_backoff_ms_min", "must be at least 1")
        _require(self.delivery_backoff_ms_max >= self.delivery_backoff_ms_min, "delivery_backoff_ms_max",
                 "must be at least delivery_backoff_ms_min")
        _require(self.delivery_lease_ms > max(self.smtp_timeout_ms, self.push_timeout_ms, self.sms_submit_timeout_ms),
                 "delivery_lease_ms", "must be longer than smtp_timeout_ms, push_timeout_ms and sms_submit_timeout_ms "
                 "(a live sender is never overtaken)")
        _require(10 <= self.delivery_poll_interval_ms <= 60_000, "delivery_poll_interval_ms", "must be 10..60000")
        _require(1 <= self.send_concurrency_max <= 500, "send_concurrency_max", "must be 1..500")
        _require(0 <= self.cpu_nice <= 19, "cpu_nice", "must be 0..19")
        _require(1 <= self.ingest_batch_events_max <= 10_000, "ingest_batch_events_max", "must be 1..10000")
        _require(100 <= self.smtp_timeout_ms, "smtp_timeout_ms", "must be at least 100")
        _require(100 <= self.push_timeout_ms, "push_timeout_ms", "must be at least 100")
        _require(1 <= self.keepalive_s <= 3_600, "keepalive_s", "must be 1..3600")
        _require(self.reconnect_backoff_ms_min >= 1, "reconnect_backoff_ms_min", "must be at least 1")
        _require(self.reconnect_backoff_ms_max >= self.reconnect_backoff_ms_min, "reconnect_backoff_ms_max",
                 "must be at least reconnect_backoff_ms_min")
        _require(self.statement_timeout_ms >= 100, "statement_timeout_ms", "must be at least 100")
        _require(self.shutdown_grace_ms >= 0, "shutdown_grace_ms", "must be >= 0")
        _require(self.reference_ttl_ms >= 0, "reference_ttl_ms", "must be >= 0")
        _require(self.mqtt_session_expiry_s >= 0, "mqtt_session_expiry_s", "must be >= 0")
        _require(1 <= self.retention_days <= 36_500, "retention_days", "must be 1..36500")
        # De-duplication must outlive every redelivery: a processed_events row purged while the
        # broker may still send its event again would let that event be delivered twice.
        _require(self.retention_ms > self.mqtt_session_expiry_s * 1000, "retention_days",
                 f"must be longer than mqtt_session_expiry_s ({self.mqtt_session_expiry_s} s): processed_events, "
                 "the de-duplication, must outlive the broker's redelivery of an event")
        _require(self.purge_interval_ms == 0 or 60_000 <= self.purge_interval_ms, "purge_interval_ms",
                 "must be 0 (no purge in this process) or at least 60000")
        _require(self.purge_start_delay_ms >= 0, "purge_start_delay_ms", "must be >= 0")
        _require(1 <= self.purge_batch_events <= PURGE_BATCH_EVENTS_MAX, "purge_batch_events",
                 f"must be 1..{PURGE_BATCH_EVENTS_MAX}")
        _require(1 <= self.purge_batches_per_run_max <= 1_000_000, "purge_batches_per_run_max", "must be 1..1000000")
        broker(self)
        smtp_server(self)
        smsc_server(self)

    @property
    def retention_ms(self) -> int:
        return self.retention_days * MS_PER_DAY

    @property
    def embedded_smtp(self) -> bool:
        return not self.smtp_url

    @property
    def embedded_smsc(self) -> bool:
        return not self.smpp_url

    @property
    def sent_path(self) -> Path | None:
        if self.sent_dir is None:
            return Path(self.data_dir) / "sent" if self.embedded_smtp else None
        return Path(self.sent_dir) if self.sent_dir else None

    @property
    def shared(self) -> bool:
        if self.subscription == "auto":
            return not broker(self).embedded
        return self.subscription == "shared"

    @property
    def events_filter(self) -> str:
        plain = f"{self.topic_prefix}/events/#"
        return f"$share/{self.share_group}/{plain}" if self.shared else plain


class Server(msgspec.Struct, frozen=True):
    """A peer parsed from a URL (MQTT broker, SMTP server)."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    embedded: bool

    @property
    def url(self) -> str:
        """The address without credentials (for logs)."""
        return f"{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def broker(config: NotifierConfig) -> Server:
    if not config.mqtt_url:
        return Server(config.broker_host, config.broker_port, None, None, False, True)
    return _parse(config.mqtt_url, "mqtt_url", ("mqtt", "mqtts"), 1883, 8883)


def smtp_server(config: NotifierConfig) -> Server:
    if not config.smtp_url:
        return Server(config.smtp_sink_host, config.smtp_sink_port, None, None, False, True)
    return _parse(config.smtp_url, "smtp_url", ("smtp", "smtps"), 25, 465)


def smsc_server(config: NotifierConfig) -> Server:
    if not config.smpp_url:
        return Server(config.smsc_sim_host, config.smsc_sim_port, None, None, False, True)
    server = _parse(config.smpp_url, "smpp_url", ("smpp", "smpps"), 2775, 3550)
    _require(not server.tls, "smpp_url", "smpps (TLS) is not supported by the SMPP client; use smpp://")
    return server


def _parse(url: str, field: str, schemes: tuple[str, str], port: int, tls_port: int) -> Server:
    return Server(*split_server_url(url, field, schemes, port, tls_port), False)


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


_SHARED = {"pg_dsn": "ECARD_PG_DSN", "data_dir": "ECARD_DATA_DIR", "mqtt_url": "ECARD_MQTT_URL"}


def env_name(field: str) -> str:
    """ECARD_PG_DSN, ECARD_MQTT_URL, ECARD_NOTIFIER_SMTP_URL, ..."""
    return _SHARED.get(field, f"ECARD_NOTIFIER_{field.upper()}")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> NotifierConfig:
    """TOML file (optional), then the environment, then ``overrides``. A list in the
    environment (``channels``) is comma-separated."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    for field in NotifierConfig.__struct_fields__:
        name = env_name(field)
        if name in env:
            value: Any = env[name]
            if field == "channels":
                value = tuple(part.strip() for part in value.split(",") if part.strip())
            values[field] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, NotifierConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None
