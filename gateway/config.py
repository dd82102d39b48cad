"""The gateway's configuration: one typed object, from a TOML file plus ECARD_* variables.

Validated once at start; every error names the field and says what is wrong.
Units are the last part of every name.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from ledger.machine import MachineLimits


class ConfigError(ValueError):
    pass


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    listen_host: str = "127.0.0.1"
    listen_port: int = 7700  # 0 picks a free port (tests)
    # A reconnect storm of ~19 k devices arrives at once; with the default backlog
    # of 100 most SYNs are dropped and clients wait seconds for their retries. The
    # kernel caps it at net.core.somaxconn.
    listen_backlog: int = 20_000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108

    pg_dsn: str = ""  # empty: the embedded PostgreSQL under data_dir
    data_dir: str = "var"
    demo: bool = False  # load the demo dataset into an empty database

    # The process may hold 20,000 files (hard cap on this platform); keep room for
    # the listener, PostgreSQL, the metrics server and logs.
    connections_max: int = 19_500
    # Three missed heartbeats: a device that said nothing for this long is gone.
    idle_timeout_ms: int = 30_000
    heartbeat_interval_ms: int = 10_000
    # About a thousand DECISION frames; a device that does not read its replies
    # must not make the gateway buffer without end: above it we stop reading it.
    write_buffer_bytes_high: int = 64 * 1024

    # Group commit: a batch leaves once its oldest entry has waited flush_interval_ms,
    # or at batch_events_max entries. Every commit costs PostgreSQL a fixed 0.5-2 ms of
    # CPU whatever its size, on the cores the gateway shares. 10 ms, measured against 5 at
    # make bench's held rate (about 3,300 taps/s on 2 cores, two runs each): half the
    # commits, PostgreSQL CPU per journaled decision 92 against 107 us, client p99 7-11 against
    # 15-29 ms, tap->durable p99 31-35 against 35-62 ms. 15 and 20 ms saved PostgreSQL more
    # but durable p99 grew (44, 52 ms). 4096 rows is one statement of about half a MiB.
    flush_interval_ms: int = 10
    # A device with traffic learns its durable watermark with its next reply, in
    # the same write; an idle one from this timer. A DURABLE_ACK of its own per
    # commit would double the gateway's write syscalls under load.
    durable_ack_interval_ms: int = 50
    # ... but a device that is still tapping gets its watermark with its next reply,
    # in the same write: only one that has been quiet this long since its watermark
    # moved gets a DURABLE_ACK of its own. At 13,000 taps/s over 1,000 devices a tap
    # comes every ~80 ms per device, and acks of their own cost 7 us of gateway CPU
    # per decision (a write syscall each); the device keeps its txns at most this
    # much longer.
    durable_ack_quiet_ms: int = 1_000
    batch_events_max: int = 4_096
    # How much the gateway may decide while PostgreSQL is away: about ten seconds
    # of a whole city's morning peak. Beyond it taps are refused (TRY_AGAIN_LATER).
    journal_queue_events_max: int = 200_000
    # No statement may hang the writer for longer; it reconnects instead.
    statement_timeout_ms: int = 5_000
    retry_backoff_ms_max: int = 2_000

    # Decided txns remembered per device for duplicate detection. A device replays
    # only what was sent since its last DURABLE_ACK (a few flush intervals' worth),
    # so 256 is far more than a replay ever needs, at ~50 KiB per device.
    idempotency_window_txns: int = 256
    # A HELLO whose device clock is further off than this is refused: it bounds
    # how long a captured HELLO could be replayed (nonces are remembered too).
    hello_clock_skew_ms_max: int = 300_000
    # The largest cash top-up a till may take in one go (15,000 rubles).
    topup_kopecks_max: int = 1_500_000
    # An advice (a sale or passage that already happened) is judged at the reader's
    # time if it happened within this: a till or turnstile may work offline over a
    # long weekend. Older (or a reader clock gone wrong): judged now, and recorded so.
    offline_window_ms: int = 72 * 3_600_000
    # How far a reader's clock may be off the gateway's (devices sync at HELLO).
    reader_clock_skew_ms: int = 300_000
    # A grant unlocks the turnstile's arm for this long (the turnstile's own timer, told
    # to it by its configuration): a PASSAGE later than that after its grant, on the
    # turnstile's clock, is GRANT_EXPIRED. Ten seconds: a child with a school bag.
    passage_window_ms: int = 10_000
    # How long after the window a PASSAGE report may still be on its way (retransmits,
    # a quick reconnect) before its grant is recorded as expired, unused.
    passage_report_ms_max: int = 5_000
    # How often grants nobody went through are looked for (a second: the record is for
    # the guard's log, not for a decision).
    grant_expiry_interval_ms: int = 1_000

    # Money commands (staff API, payments) wake the gateway by NOTIFY; this poll
    # catches one whose notification was lost (reconnects).
    commands_poll_interval_ms: int = 500
    # The largest single money command: a bank top-up, transfer or correction
    # above 100,000 rubles is a typo, not a school lunch.
    command_amount_kopecks_max: int = 10_000_000

    progress_interval_ms: int = 5_000
    # Bounded drain at shutdown: writers flush within this, then we close anyway.
    shutdown_grace_ms: int = 5_000

    def __post_init__(self) -> None:
        _require(0 <= self.listen_port < 65536, "listen_port", "must be 0..65535 (0 picks a free port)")
        _require(0 <= self.metrics_port < 65536, "metrics_port", "must be 0..65535 (0 picks a free port)")
        _require(self.listen_backlog > 0, "listen_backlog", "must be positive")
        _require(0 < self.connections_max <= 1_000_000, "connections_max", "must be 1..1,000,000")
        _require(self.idle_timeout_ms >= 1_000, "idle_timeout_ms", "must be at least 1000")
        _require(0 < self.heartbeat_interval_ms < self.idle_timeout_ms, "heartbeat_interval_ms", "must be below idle_timeout_ms")
        _require(self.write_buffer_bytes_high >= 4096, "write_buffer_bytes_high", "must be at least 4096")
        _require(1 <= self.flush_interval_ms <= 1_000, "flush_interval_ms", "must be 1..1000")
        _require(1 <= self.durable_ack_interval_ms <= 10_000, "durable_ack_interval_ms", "must be 1..10000")
        _require(0 <= self.durable_ack_quiet_ms <= 60_000, "durable_ack_quiet_ms", "must be 0..60000")
        _require(1 <= self.batch_events_max <= 100_000, "batch_events_max", "must be 1..100000")
        _require(
            self.batch_events_max <= self.journal_queue_events_max,
            "journal_queue_events_max",
            "must be at least batch_events_max",
        )
        _require(self.statement_timeout_ms >= 100, "statement_timeout_ms", "must be at least 100")
        _require(self.retry_backoff_ms_max >= 10, "retry_backoff_ms_max", "must be at least 10")
        _require(16 <= self.idempotency_window_txns <= 65_536, "idempotency_window_txns", "must be 16..65536")
        _require(0 <= self.offline_window_ms <= 30 * 86_400_000, "offline_window_ms", "must be 0..30 days")
        _require(0 <= self.reader_clock_skew_ms <= 3_600_000, "reader_clock_skew_ms", "must be 0..1 hour")
        _require(1_000 <= self.passage_window_ms <= 120_000, "passage_window_ms", "must be 1000..120000")
        _require(0 <= self.passage_report_ms_max <= 600_000, "passage_report_ms_max", "must be 0..600000")
        _require(10 <= self.grant_expiry_interval_ms <= 60_000, "grant_expiry_interval_ms", "must be 10..60000")
        _require(self.hello_clock_skew_ms_max >= 1_000, "hello_clock_skew_ms_max", "must be at least 1000")
        _require(self.topup_kopecks_max > 0, "topup_kopecks_max", "must be positive")
        _require(10 <= self.commands_poll_interval_ms <= 60_000, "commands_poll_interval_ms", "must be 10..60000")
        _require(self.command_amount_kopecks_max > 0, "command_amount_kopecks_max", "must be positive")
        _require(self.progress_interval_ms >= 0, "progress_interval_ms", "must be >= 0 (0 disables)")
        _require(self.shutdown_grace_ms >= 0, "shutdown_grace_ms", "must be >= 0")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


ENV_PREFIX = "ECARD_"


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """TOML file (optional), then ECARD_<FIELD> environment variables, then ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    fields = set(Config.__struct_fields__)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in fields:
                values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None
    except ConfigError:
        raise


def machine_limits(config: Config) -> MachineLimits:
    """The limits the ledger machine decides by, from the configuration."""
    return MachineLimits(
        idempotency_window_txns=config.idempotency_window_txns,
        topup_kopecks_max=config.topup_kopecks_max,
        command_amount_kopecks_max=config.command_amount_kopecks_max,
        hello_clock_skew_ms_max=config.hello_clock_skew_ms_max,
        offline_window_ms=config.offline_window_ms,
        reader_clock_skew_ms=config.reader_clock_skew_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        passage_window_ms=config.passage_window_ms,
        passage_report_ms_max=config.passage_report_ms_max,
    )
