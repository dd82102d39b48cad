"""Configuration: TOML + ECARD_* variables, validated once with messages that name the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import Config, ConfigError, load_config
from tests.support import ROOT


def test_defaults_are_valid_and_documented_ports():
    c = load_config(env={})
    assert (c.listen_port, c.metrics_port, c.flush_interval_ms) == (7700, 9108, 10)


def test_env_overrides_file_and_converts_types(tmp_path):
    f = tmp_path / "ecard.toml"
    f.write_text('listen_port = 7800\nflush_interval_ms = 7\npg_dsn = "postgresql://x@h/db"\n')
    c = load_config(f, env={"ECARD_FLUSH_INTERVAL_MS": "9", "ECARD_DEMO": "true", "OTHER": "1"})
    assert (c.listen_port, c.flush_interval_ms, c.demo, c.pg_dsn) == (7800, 9, True, "postgresql://x@h/db")


@pytest.mark.parametrize(
    "env, field",
    [
        ({"ECARD_FLUSH_INTERVAL_MS": "0"}, "flush_interval_ms"),
        ({"ECARD_BATCH_EVENTS_MAX": "300000"}, "batch_events_max"),
        ({"ECARD_JOURNAL_QUEUE_EVENTS_MAX": "10", "ECARD_BATCH_EVENTS_MAX": "100"}, "journal_queue_events_max"),
        ({"ECARD_LISTEN_PORT": "70000"}, "listen_port"),
        ({"ECARD_HEARTBEAT_INTERVAL_MS": "40000"}, "heartbeat_interval_ms"),
        ({"ECARD_LISTEN_PORT": "seven"}, "listen_port"),
    ],
)
def test_invalid_values_name_the_field(env, field):
    with pytest.raises(ConfigError, match=field):
        load_config(env=env)


def test_unknown_field_in_file_is_an_error(tmp_path):
    f = tmp_path / "ecard.toml"
    f.write_text("flush_interval = 5\n")
    with pytest.raises(ConfigError, match="flush_interval"):
        load_config(f, env={})


def test_every_limit_has_its_unit_in_the_name():
    units = ("_ms", "_max", "_bytes_high", "_port", "_txns")
    numeric = [name for name in Config.__struct_fields__ if isinstance(getattr(Config(), name), int) and not isinstance(getattr(Config(), name), bool)]
    for name in numeric:
        assert any(u in name for u in units) or name == "listen_backlog", name


def test_cli_help_and_config_errors():
    out = subprocess.run([sys.executable, "-m", "gateway", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "run" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"ECARD_FLUSH_INTERVAL_MS": "0", "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode == 2 and "flush_interval_ms" in bad.stderr
