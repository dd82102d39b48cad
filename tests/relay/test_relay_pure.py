"""The relay's pure parts: topic layout and message format, backoff, configuration, and the
Mosquitto files' text. No database, no broker."""

from __future__ import annotations

import base64
import hashlib
import json
import random

import msgspec
import pytest

from ledger.codes import OutboxKind
from ledger.notices import PurchaseNotice
from protocol import Item
from relay import layout
from relay.backoff import Backoff
from relay.config import ConfigError, broker, env_name, load_config, redacted
from relay.mosquitto import acl_text, check_user, config_text, hash_password, read_users_file
from storage.outbox import PendingEvent, sent_rows

PREFIX = "ecard/v1"


def test_an_outbox_row_is_sent_only_when_every_event_it_holds_is():
    def event(row: int, n: int) -> PendingEvent:
        return PendingEvent(row, f"{row}:{n}:entry", "entry", 5, 1, 0, msgspec.Raw(b"{}"))

    events = [event(7, 1), event(7, 2), event(8, 1), event(9, 1), event(9, 2), event(9, 3)]
    assert sent_rows(events, [True] * 6) == [7, 8, 9]
    assert sent_rows(events, [True, False, True, True, True, True]) == [8, 9]  # row 7 goes again whole
    assert sent_rows(events, [True, True, True, True, True, False]) == [7, 8]
    assert sent_rows(events, [False] * 6) == []
    with pytest.raises(ValueError):
        sent_rows(events, [True])  # one verdict per event


def test_the_relay_routes_by_the_notices_school_else_the_rows_account_school():
    """A notice's school_id when it is a number; otherwise the fallback given (a single row's
    account's school; 0 for a batch row, whose notices the journal writer always gives one)."""
    from storage.outbox import _school_of

    assert _school_of(b'{"kind":"entry","school_id":7,"account_id":5}', 3) == 7
    assert _school_of(msgspec.Raw(b'{"school_id":7}'), 3) == 7
    assert _school_of(b'{"kind":"card_blocked","account_id":5}', 3) == 3  # written before notices had it
    assert _school_of(b'{"school_id":"7"}', 3) == 3  # not a number: not trusted for a topic
    assert _school_of(b'{"school_id":true}', 3) == 3
    assert _school_of(b'{"school_id":null}', 0) == 0


def test_every_outbox_kind_is_a_valid_topic_level():
    for kind in OutboxKind:
        topic = layout.event_topic(PREFIX, 3, kind.value, 42)
        assert topic == f"ecard/v1/events/3/{kind.value}/42"
        assert layout.parse_event_topic(PREFIX, topic) == (3, kind.value, 42)


@pytest.mark.parametrize("kind", ["a/b", "+", "#", "", "Entry"])
def test_a_kind_that_would_break_the_topic_is_refused(kind):
    with pytest.raises(AssertionError):
        layout.event_topic(PREFIX, 1, kind, 1)


@pytest.mark.parametrize("topic", ["ecard/v1/events/1/entry", "ecard/v1/events/1/entry/2/3", "ecard/v2/events/1/entry/2",
                                   "ecard/v1/events/x/entry/2", "ecard/v1/representatives/5/entry"])
def test_other_topics_do_not_parse_as_events(topic):
    with pytest.raises(ValueError):
        layout.parse_event_topic(PREFIX, topic)


def test_filters():
    assert layout.events_filter(PREFIX) == "ecard/v1/events/#"
    assert layout.events_filter(PREFIX, 7) == "ecard/v1/events/7/#"
    assert layout.representative_filter(PREFIX, 42) == "ecard/v1/representatives/42/#"


def test_the_message_carries_the_stored_notice_byte_for_byte():
    notice = PurchaseNotice(account_id=5, school_id=1, at_ms=1_000, device_id=9, amount_kopecks=300,
                            balance_kopecks=700, items=(Item(1, 2, 150),), free_meal=False)
    # PostgreSQL renders jsonb with its own key order and spacing: the relay passes that text on.
    stored = json.dumps(json.loads(msgspec.json.encode(notice)), sort_keys=True, indent=None)
    payload = layout.encode("9:17:purchase", "purchase", 5, 1_000, msgspec.Raw(stored.encode()))
    assert json.loads(payload) == {"event_id": "9:17:purchase", "kind": "purchase", "account_id": 5,
                                   "created_at_ms": 1_000, "notice": json.loads(stored)}
    message = layout.decode(payload)
    assert bytes(message.notice) == stored.encode()
    assert layout.decode_notice(message) == notice


def test_backoff_doubles_within_its_jitter_up_to_the_cap_and_resets():
    backoff = Backoff(100, 5_000, random.Random(7))
    ceilings = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
    for ceiling_ms in ceilings:
        delay_ms = backoff.next_delay_s() * 1000
        assert ceiling_ms / 2 <= delay_ms <= ceiling_ms
    for _ in range(100):  # no overflow, however long the broker stays away
        assert 2.5 <= backoff.next_delay_s() <= 5.0
    backoff.reset()
    assert 0.05 <= backoff.next_delay_s() <= 0.1


def test_backoff_jitter_spreads_relays():
    delays = {Backoff(100, 5_000, random.Random(seed)).next_delay_s() for seed in range(20)}
    assert len(delays) == 20


def test_config_names_and_defaults():
    config = load_config(env={})
    assert (config.poll_interval_ms, config.batch_events_max, config.pending_events_max) == (1_000, 500, 1_000_000)
    assert broker(config).url == "mqtt://127.0.0.1:1884" and broker(config).embedded
    assert env_name("pg_dsn") == "ECARD_PG_DSN" and env_name("mqtt_url") == "ECARD_MQTT_URL"
    assert env_name("batch_events_max") == "ECARD_RELAY_BATCH_EVENTS_MAX"
    # the gateway's own variables do not reach the relay's fields
    assert load_config(env={"ECARD_METRICS_PORT": "1"}).metrics_port == 9109
    assert load_config(env={"ECARD_RELAY_METRICS_PORT": "0"}).metrics_port == 0


def test_a_named_broker_with_credentials():
    config = load_config(env={"ECARD_MQTT_URL": "mqtt://relay:p%40ss%3Aword@broker.example:1999"})
    b = broker(config)
    assert (b.host, b.port, b.username, b.password, b.tls, b.embedded) == (
        "broker.example", 1999, "relay", "p@ss:word", False, False)
    assert "p%40ss" not in redacted(config).mqtt_url and "***" in redacted(config).mqtt_url
    assert broker(load_config(env={"ECARD_MQTT_URL": "mqtts://h"})).port == 8883
    assert broker(load_config(env={"ECARD_MQTT_URL": "mqtt://h"})).port == 1883


@pytest.mark.parametrize("env", [
    {"ECARD_MQTT_URL": "http://h:1"},
    {"ECARD_MQTT_URL": "mqtt://h:1/topic"},
    {"ECARD_MQTT_URL": "mqtt://:1"},
    {"ECARD_RELAY_BATCH_EVENTS_MAX": "0"},
    {"ECARD_RELAY_POLL_INTERVAL_MS": "1"},
    {"ECARD_RELAY_TOPIC_PREFIX": "ecard/+/v1"},
    {"ECARD_RELAY_TOPIC_PREFIX": "ecard//v1"},
    {"ECARD_RELAY_RECONNECT_BACKOFF_MS_MAX": "10"},
    {"ECARD_RELAY_PENDING_EVENTS_MAX": "0"},
])
def test_bad_settings_are_refused_by_name(env):
    with pytest.raises(ConfigError):
        load_config(env=env)


def test_password_hash_is_mosquittos_pbkdf2_sha512():
    salt = bytes(range(12))
    hashed = hash_password("secret", salt)
    _, seven, iterations, salt_b64, digest_b64 = hashed.split("$")
    assert (seven, iterations, base64.b64decode(salt_b64)) == ("7", "101", salt)
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert hash_password("secret") != hash_password("secret")  # a fresh salt each time


def test_acl_gives_each_representative_its_own_topics_only():
    text = acl_text("ecard-relay", "ecard-notifier")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "user ecard-relay", "topic write ecard/v1/#",
        "user ecard-notifier", "topic read ecard/v1/events/#", "topic write ecard/v1/representatives/#",
        "pattern read ecard/v1/representatives/%u/#",
    ]
    conf = config_text(1883, "/x/passwd", "/x/acl")
    assert "allow_anonymous false" in conf and "listener 1883 127.0.0.1" in conf


@pytest.mark.parametrize("name, service", [("4/2", False), ("+", False), ("#", False), ("0", False), ("abc", False),
                                           ("ecard relay", True), ("1relay", True), ("re/lay", True)])
def test_user_names_that_could_escape_their_topics_are_refused(name, service):
    with pytest.raises(ValueError):
        check_user(name, service)


def test_users_file(tmp_path):
    path = tmp_path / "users"
    path.write_text("# comment\necard-relay:s3cret:with:colons\n\n42:app\n")
    assert read_users_file(path) == {"ecard-relay": "s3cret:with:colons", "42": "app"}
