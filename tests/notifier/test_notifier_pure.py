"""The notifier's pure parts: retry policy, configuration, who gets what, the e-mail and push
messages. No database, no broker."""

from __future__ import annotations

import json
import random
from email import message_from_bytes, policy

import msgspec
import pytest

from email.utils import formataddr

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.channels import build_email, email_bytes, encoded_words, push_payload, representative_topic
from notifier.config import (
    DELIVERY_ATTEMPTS_MAX,
    DELIVERY_BACKOFF_MS_MAX,
    DELIVERY_BACKOFF_MS_MIN,
    ConfigError,
    load_config,
)
from notifier.render import Rendered
from notifier.retry import after_failure, retry_delay_ms
from notifier.service import targets_of
from storage.deliveries import Claimed
from storage.representatives import Subscriber


def test_backoff_doubles_from_the_minimum_to_the_cap_with_jitter():
    rng = random.Random(7)
    for attempts in range(1, 30):
        ceiling = min(DELIVERY_BACKOFF_MS_MAX, DELIVERY_BACKOFF_MS_MIN * 2 ** (attempts - 1))
        for _ in range(50):
            assert ceiling / 2 <= retry_delay_ms(attempts, DELIVERY_BACKOFF_MS_MIN, DELIVERY_BACKOFF_MS_MAX, rng) <= ceiling
    draws = {retry_delay_ms(3, 1_000, 60_000, rng) for _ in range(100)}
    assert len(draws) > 50  # jitter: a burst of failures does not come back in one instant


def test_the_attempts_span_is_what_the_limits_promise():
    """The sum of the waits between DELIVERY_ATTEMPTS_MAX attempts: about 20 to 45 minutes."""
    ceilings = [min(DELIVERY_BACKOFF_MS_MAX, DELIVERY_BACKOFF_MS_MIN * 2 ** (n - 1)) for n in range(1, DELIVERY_ATTEMPTS_MAX)]
    assert 20 * 60_000 <= sum(ceilings) / 2 and sum(ceilings) <= 50 * 60_000


def test_a_failure_is_retried_until_the_limit_then_dead():
    rng = random.Random(1)
    limits = {"attempts_max": 3, "base_ms": 100, "cap_ms": 1_000, "rng": rng, "now_ms": 10_000}
    status, at = after_failure(attempts=1, permanent=False, **limits)
    assert status == "failed" and 10_050 <= at <= 10_100
    status, at = after_failure(attempts=2, permanent=False, **limits)
    assert status == "failed" and 10_100 <= at <= 10_200
    assert after_failure(attempts=3, permanent=False, **limits) == ("dead", 10_000)
    assert after_failure(attempts=1, permanent=True, **limits) == ("dead", 10_000)


def test_configuration_from_the_environment_and_its_checks():
    config = load_config(env={"ECARD_MQTT_URL": "mqtt://notifier:s3cret@broker.example:1884",
                              "ECARD_NOTIFIER_CHANNELS": "email",
                              "ECARD_NOTIFIER_DELIVERY_ATTEMPTS_MAX": "5"})
    assert config.channels == ("email",) and config.delivery_attempts_max == 5
    assert config.shared and config.events_filter == "$share/notifier/ecard/v1/events/#"
    assert config.sent_path is not None  # the embedded SMTP sink: make run writes what it sent
    embedded = load_config(env={})
    assert not embedded.shared and embedded.events_filter == "ecard/v1/events/#"  # amqtt has no $share
    assert load_config(env={}, subscription="shared").shared
    assert load_config(env={"ECARD_NOTIFIER_SMTP_URL": "smtp://relay.example:587"}).sent_path is None
    for bad in ({"ECARD_NOTIFIER_CHANNELS": "ussd"}, {"ECARD_NOTIFIER_SMPP_URL": "smpps://smsc.example"}, {"ECARD_NOTIFIER_SMTP_URL": "http://x"},
                {"ECARD_NOTIFIER_DELIVERY_LEASE_MS": "1000"}, {"ECARD_NOTIFIER_CLIENT_ID": "a/b"},
                {"ECARD_NOTIFIER_DELIVERY_BACKOFF_MS_MAX": "1"}):
        with pytest.raises(ConfigError):
            load_config(env=bad)


def test_targets_follow_the_channels_this_notifier_sends_on():
    subs = [Subscriber(1, "Иванова О. П.", "parent", "+79000000001", "p@example.ru", ("email", "sms", "app_push", "email")),
            Subscriber(2, "Иванова Н. И.", "grandmother", "+79000000002", None, ("sms", "tv_push"))]
    targets = targets_of(subs, ("email", "app_push"), "ecard/v1")
    assert [(t.representative_id, t.channel, t.address) for t in targets] == [
        (1, "email", "p@example.ru"), (1, "app_push", "ecard/v1/representatives/1/events")]
    assert targets_of(subs, ("email",), "ecard/v1")[0].channel == "email"


def claimed(**kw) -> Claimed:
    values = dict(id=42, event_id="2000001:1000:purchase", representative_id=1, channel="email",
                  address="parent1@example.ru", attempts=1, interrupted=False, kind="purchase", account_id=1,
                  school_id=1, created_at_ms=1, notice=b'{"kind":"purchase","account_id":1}',
                  representative_active=True)
    values.update(kw)
    return Claimed(**values)


def test_the_email_is_multipart_alternative_with_a_stable_message_id():
    subject = "Иванов Иван: на лицевом счёте осталось \u221215,00\u00a0₽ — длинная тема, чтобы её перенесли"
    msg = build_email(claimed(), Rendered(subject, "Текст\n", "<p>Текст</p>"), sender="noreply@ecard.localhost",
                      sender_name="Проход и питание")
    raw = msg.as_bytes()
    assert all(len(line) <= 998 for line in raw.splitlines())  # RFC 5322's line limit
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert str(parsed["Subject"]) == subject  # no space lost at a fold
    assert str(parsed["From"]) == "Проход и питание <noreply@ecard.localhost>"
    assert parsed["Message-ID"] == "<delivery-42@ecard.localhost>"
    assert parsed.get_body(("plain",)).get_content() == "Текст\n"
    assert parsed.get_body(("html",)).get_content() == "<p>Текст</p>"


SENDER = "noreply@ecard.localhost"
SENDER_NAME = "Проход и питание"


def _fast(delivery: Claimed, rendered: Rendered) -> bytes:
    raw = email_bytes(delivery, rendered, sender=SENDER, from_header=str(formataddr((SENDER_NAME, SENDER), "utf-8")))
    assert raw is not None
    return raw


def _same_message(fast: bytes, rendered: Rendered, delivery: Claimed) -> None:
    """The directly written message reads, through the stdlib parser, as build_email's."""
    assert b"\r\n" in fast and b"\n" not in fast.replace(b"\r\n", b"")  # CRLF lines only
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
    a = message_from_bytes(fast, policy=policy.default)
    b = message_from_bytes(build_email(delivery, rendered, sender=SENDER, sender_name=SENDER_NAME).as_bytes(),
                           policy=policy.default)
    assert not a.defects and not any(part.defects for part in a.walk())
    for header in ("From", "To", "Subject", "Message-ID", "X-Ecard-Event"):
        assert str(a[header]) == str(b[header]), header
    assert a.get_content_type() == b.get_content_type()
    assert a.get_body(("plain",)).get_content() == b.get_body(("plain",)).get_content() == rendered.text
    if rendered.html is not None:
        assert a.get_body(("html",)).get_content() == b.get_body(("html",)).get_content() == rendered.html


def test_the_directly_written_email_is_the_one_the_mime_classes_build():
    subject = "Иванов Иван: на лицевом счёте осталось \u221215,00\u00a0₽ — длинная тема, чтобы её перенесли"
    for rendered in (Rendered(subject, "Текст\n" * 40, "<p>Текст</p>\n" * 40), Rendered("", "", None),
                     Rendered("Вход в школу", "Иван вошёл в 08:01.\n", None)):
        _same_message(_fast(claimed(), rendered), rendered, claimed())


@settings(max_examples=200, deadline=None)
@given(subject=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200),
       text=st.text(max_size=500), html=st.none() | st.text(max_size=500))
def test_any_subject_and_body_survive_the_direct_encoding(subject, text, html):
    rendered = Rendered(subject, text, html)
    a = message_from_bytes(_fast(claimed(), rendered), policy=policy.default)
    assert str(a["Subject"]) == subject
    assert a.get_body(("plain",)).get_content() == text  # base64: every character as it was
    if html is not None:
        assert a.get_body(("html",)).get_content() == html


def test_encoded_words_stay_within_75_characters_and_never_split_a_character():
    words = encoded_words("ё" * 100 + "€𝄞" * 20).split("\r\n ")
    assert all(len(w) <= 75 for w in words) and len(words) > 3


def test_an_address_or_event_id_that_is_not_plain_ascii_takes_the_general_path():
    rendered = Rendered("Тема", "Текст\n", None)
    for delivery in (claimed(address="родитель@пример.рф"), claimed(address="a@b.ru\r\nBcc: x@y.ru"),
                     claimed(event_id="1:2:purchase\r\nX: y")):
        assert email_bytes(delivery, rendered, sender=SENDER, from_header="x <a@b.ru>") is None


def test_the_push_payload_carries_the_event_and_the_text():
    assert representative_topic("ecard/v1", 17) == "ecard/v1/representatives/17/events"
    payload = json.loads(push_payload(claimed(channel="app_push"), Rendered("Заголовок", "Текст\n")))
    assert payload == {"delivery_id": 42, "event_id": "2000001:1000:purchase", "kind": "purchase", "account_id": 1,
                       "school_id": 1, "title": "Заголовок", "text": "Текст",
                       "notice": {"kind": "purchase", "account_id": 1}}
    assert msgspec.json.decode(push_payload(claimed(), Rendered("a", "b")))["delivery_id"] == 42


class _FlakyConn:
    """A connection whose first ``failures`` statements fail as a lost PostgreSQL would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[int]] = []

    async def execute(self, _sql, ids, *args, **kw):
        if self.failures:
            self.failures -= 1
            raise OSError("connection refused")
        self.batches.append(list(ids))
        return f"UPDATE {len(ids)}"


class _Pool:
    def __init__(self, conn: _FlakyConn) -> None:
        self.conn = conn

    def acquire(self):
        conn = self.conn

        class _Acquired:
            async def __aenter__(self):
                return conn

            async def __aexit__(self, *exc):
                return False

        return _Acquired()


def _writer(conn: _FlakyConn, **config):
    from notifier.config import NotifierConfig
    from notifier.service import OutcomeWriter

    cfg = NotifierConfig(reconnect_backoff_ms_min=1, reconnect_backoff_ms_max=2, **config)
    return OutcomeWriter(cfg, _Pool(conn), random.Random(1))


def test_outcomes_go_in_one_statement_and_are_retried_while_postgresql_is_away():
    import asyncio

    from storage.deliveries import Outcome

    async def main():
        conn = _FlakyConn(failures=3)
        writer = _writer(conn)
        running = asyncio.create_task(writer.run())
        await asyncio.wait_for(asyncio.gather(*(writer.write(Outcome(i, "sent", 1, None, 1)) for i in range(5))), 5)
        writer.close()
        await asyncio.wait_for(running, 5)
        return conn

    conn = asyncio.run(main())
    assert conn.failures == 0 and conn.batches == [[0, 1, 2, 3, 4]]  # three failures, then one statement for all


def test_an_outcome_past_its_lease_is_given_up_not_waited_for_forever():
    import asyncio

    from storage.deliveries import Outcome

    async def main():
        conn = _FlakyConn(failures=10**9)  # PostgreSQL never comes back
        writer = _writer(conn, delivery_lease_ms=200, smtp_timeout_ms=100, push_timeout_ms=100,
                         sms_submit_timeout_ms=100)
        running = asyncio.create_task(writer.run())
        await asyncio.wait_for(writer.write(Outcome(7, "sent", 1, None, 1)), 5)  # returns once given up
        writer.close()
        await asyncio.wait_for(running, 5)
        return conn

    assert asyncio.run(main()).batches == []
