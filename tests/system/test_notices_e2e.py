"""Parents' notices end to end, across real processes and real peers (issue 8).

    simulated till / turnstile ──protocol v1──► python -m gateway run ──group commit──► PostgreSQL outbox
      ──► python -m relay run ──MQTT QoS 1──► Mosquitto ──► python -m notifier
      ──► aiosmtpd (e-mail) · python -m notifier.smsc (SMPP, smpp34) · MQTT subscriber on the
          representative's topic (app push)

1. A purchase tapped at a simulated till reaches the SMTP server, the SMSC and the app, each
   with the right Russian text: items, cost and balance after. A turnstile's CARD_PRESENTED
   alone tells the parents nothing; the PASSAGE does, on all three channels.
2. Exactly once under faults: a stream of taps while the notifier is SIGKILLed (twice), the
   relay is SIGKILLed, and the broker is stopped and started again on the same port with its
   sessions on disk. Afterwards every (event, representative, channel) reached its peer, counted
   at the peers by its stable identity, and every repeat is explained by a recorded cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time

import asyncpg
import pytest

# notices_support first: it puts tests/notifier and tests/relay on sys.path for the two below.
from notices_support import (
    CHANNELS,
    NO_QUIET_HOURS,
    SCHOOL_UTC_OFFSET_MINUTES,
    AppSubscriber,
    BrokerInfo,
    OwnMosquitto,
    Smsc,
    TapStream,
    load_demo,
    mosquitto_available,
    set_sms,
    text_of,
)
from notifier_support import NotifierProcess, SmtpServer, fetch, free_port, wait_until
from protocol import DeviceKind, Direction, Outcome
from relay_support import AmqttBroker, RelayProcess, unsent_count
from simulators.device import Device, DeviceConfig
from storage.demo_dataset import DEMO_SCHOOL_NAME, demo_card_uid, demo_device_key, till_ids, turnstile_ids
from storage.representatives import SmsSettings
from tests.support import GatewayProcess

pytestmark = [pytest.mark.processes]

NBSP = "\u00a0"
# One wait for one step of a test: every process here shares two cores with the others.
STEP_TIMEOUT_S = 30.0
GATEWAY_ENV = {
    # The turnstile reports the PASSAGE only after the test has shown that the grant alone
    # told nobody anything (test 1): the arm stays open for as long as that may take.
    "ECARD_PASSAGE_WINDOW_MS": "120000",
    "ECARD_PASSAGE_REPORT_MS_MAX": "60000",
    "ECARD_LOG_LEVEL": "WARNING",
}


def notifier_env(smsc: Smsc, **extra: str) -> dict[str, str]:
    return {
        "ECARD_NOTIFIER_CHANNELS": ",".join(CHANNELS),
        "ECARD_NOTIFIER_SMPP_URL": f"smpp://ecard:secret@127.0.0.1:{smsc.port}",
        "ECARD_NOTIFIER_SMS_SUBMIT_TIMEOUT_MS": "5000",
        **extra,
    }


def local(at_ms: int) -> tuple[str, str]:
    """(date, time) of a notice in the school's local time, as the texts show them."""
    at = dt.datetime.fromtimestamp(at_ms / 1000, dt.timezone(dt.timedelta(minutes=SCHOOL_UTC_OFFSET_MINUTES)))
    return at.strftime("%d.%m.%Y"), at.strftime("%H:%M")


class Stack(contextlib.ExitStack):
    """The processes and peers of one test, stopped (and their ports freed) in reverse order."""

    def process(self, proc):
        """A started process: SIGTERM at the end (SIGKILL if it does not stop)."""
        self.callback(proc.terminate)
        return proc


# ---------------------------------------------------------------- test 1


PUPIL = 7  # the demo's pupil 7 ("Ученик 7"), whose parent is representative 7
PARENT_EMAIL = "parent7@example.ru"
PARENT_MSISDN = "79000000007"  # +7 900 000-00-07 as the SMSC sees it
SCHOOL = DEMO_SCHOOL_NAME
BASKET = [(3, 2, 3_500), (5, 1, 1_500)]  # Булочка с маком ×2, Чай с лимоном: 85,00 ₽
OPENING_KOPECKS = 50_000


class Peers:
    """What reached the real peers, for one representative."""

    def __init__(self, smtp: SmtpServer, smsc: Smsc, app: AppSubscriber) -> None:
        self.smtp, self.smsc, self.app = smtp, smsc, app

    def mails(self) -> list:
        return [m for m in self.smtp.handler.snapshot() if m.rcpt == PARENT_EMAIL]

    def submits(self) -> list[dict]:
        return [s for s in self.smsc.snapshot() if s["destination"] == PARENT_MSISDN]

    def pushes(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.app.snapshot()]


async def delivered_everywhere(conn: asyncpg.Connection, peers: Peers, event_id: str):
    """Wait until the event's three deliveries are recorded as sent and each reached its peer
    under its identity; returns (deliveries by channel, the e-mail, the push, the SMS text)."""

    found: dict = {}

    def at_peers() -> bool:
        rows = found.get("rows")
        if not rows or len(rows) != len(CHANNELS) or any(r["status"] != "sent" for r in rows):
            return False
        by = {r["channel"]: r for r in rows}
        mail = [m for m in peers.mails() if m.message_id == f"<delivery-{by['email']['id']}@ecard.localhost>"]
        push = [p for p in peers.pushes() if p["delivery_id"] == by["app_push"]["id"]]
        ids = found.get("sms_ids") or []
        parts = [s for s in peers.submits() if s["message_id"] in ids]
        if not (mail and push and ids and len(parts) == len(ids)):
            return False
        found.update(by=by, mail=mail, push=push, parts=parts)
        return True

    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        found["rows"] = await conn.fetch("SELECT * FROM deliveries WHERE event_id = $1 ORDER BY id", event_id)
        sms = [r for r in found["rows"] if r["channel"] == "sms"]
        if sms:
            found["sms_ids"] = [r["smsc_message_id"] for r in await conn.fetch(
                "SELECT smsc_message_id FROM sms_parts WHERE delivery_id = $1 ORDER BY part", sms[0]["id"])]
        if at_peers():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"event {event_id} not delivered on every channel within {STEP_TIMEOUT_S} s: "
                               f"{[dict(r) for r in found['rows']]}")
        await asyncio.sleep(0.05)
    assert len(found["mail"]) == 1 and len(found["push"]) == 1  # once each
    return found["by"], found["mail"][0], found["push"][0], text_of(found["parts"])


async def eventually(check, what: str, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Poll an async condition until it holds, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def notice_at_ms(conn: asyncpg.Connection, event_id: str) -> int:
    value = await conn.fetchval("SELECT (payload->>'at_ms')::bigint FROM outbox_events WHERE event_id = $1", event_id)
    assert value is not None, f"no outbox row {event_id}"
    return value


@pytest.fixture
def notices_world(pg_dsn, tmp_path):
    """The demo school (20 pupils) and every part of the notice path, started in the order
    the docs ask (the notifier's subscription before the relay publishes anything)."""
    load_demo(pg_dsn, pupils=20)
    # Pupil 7's parent: SMS on the paid plan (the whole text, in two parts), no quiet hours
    # (the test may run at night, school time).
    set_sms(pg_dsn, [PUPIL], SmsSettings(plan="paid", **NO_QUIET_HOURS))
    with Stack() as stack:
        if mosquitto_available():
            # ecard's generated configuration: passwords, the ACL, the app as representative 7.
            mosquitto = OwnMosquitto(tmp_path, secured=True, representatives=(PUPIL,))
            stack.callback(mosquitto.close)
            mosquitto.start()
            broker, relay_url = mosquitto.info("ecard-notifier"), mosquitto.url("ecard-relay")
            app_login = {"username": str(PUPIL), "password": mosquitto.passwords[str(PUPIL)]}
            extra = {}
        else:  # the embedded broker of make run (amqtt): no shared subscriptions, anonymous
            amqtt = stack.process(AmqttBroker(tmp_path / "amqtt.log").start())
            broker, relay_url, app_login = BrokerInfo(amqtt.url, amqtt.port), amqtt.url, {}
            extra = {"ECARD_NOTIFIER_SUBSCRIPTION": "plain"}
        smtp = SmtpServer().start()
        stack.callback(smtp.stop)
        smsc = Smsc(free_port()).start()
        stack.callback(smsc.stop)
        stack.process(NotifierProcess(pg_dsn, broker, smtp, tmp_path / "notifier.log",
                                      client_id=f"ecard-notifier-e2e-{broker.tag}", **notifier_env(smsc, **extra)).start())
        app = AppSubscriber(broker.port, f"{broker.prefix}/representatives/{PUPIL}/#", **app_login).start()
        stack.callback(app.close)
        stack.process(RelayProcess(pg_dsn, relay_url, broker.prefix, tmp_path / "relay.log").start())
        gateway = GatewayProcess(pg_dsn, tmp_path / "gateway.log", **GATEWAY_ENV).start()
        stack.callback(gateway.terminate)
        yield pg_dsn, gateway, Peers(smtp, smsc, app), broker


def test_a_tap_reaches_email_sms_and_the_app_and_an_entry_only_on_passage(notices_world, tmp_path):
    dsn, gateway, peers, broker = notices_world
    till_id, turnstile_id = till_ids(1)[0], turnstile_ids(1)[0]
    card = demo_card_uid(PUPIL)

    async def scenario() -> None:
        conn = await asyncpg.connect(dsn)
        config = DeviceConfig("127.0.0.1", gateway.port)
        till = Device(till_id, DeviceKind.TILL, demo_device_key(till_id), config, tmp_path / "sim", seed=1)
        turnstile = Device(turnstile_id, DeviceKind.TURNSTILE, demo_device_key(turnstile_id), config,
                           tmp_path / "sim", seed=1)
        try:
            await till.start()
            await turnstile.start()

            # ---- a purchase with items at the till
            sale = await till.purchase(card, BASKET)
            assert sale.outcome == Outcome.ACCEPT and sale.balance_kopecks == OPENING_KOPECKS - 8_500
            event_id = f"{till_id}:{sale.txn}:purchase"
            by, mail, push, sms = await delivered_everywhere(conn, peers, event_id)
            date, hhmm = local(await notice_at_ms(conn, event_id))
            assert mail.content_type == "multipart/alternative"
            assert mail.subject == f"Ученик 7: покупка в столовой на 85,00{NBSP}₽"
            assert (f"Ученик 7 — покупка в столовой.\n{date} в {hhmm}, {SCHOOL}.\n\n"
                    f"Булочка с маком: 2 × 35,00{NBSP}₽ = 70,00{NBSP}₽\n"
                    f"Чай с лимоном: 1 × 15,00{NBSP}₽ = 15,00{NBSP}₽\n\n"
                    f"Итого: 85,00{NBSP}₽\n"
                    f"Остаток на лицевом счёте: 415,00{NBSP}₽\n") in mail.text, mail.text
            for fragment in ("Ученик 7", SCHOOL, f"{date} в {hhmm}", "Булочка с маком", "Чай с лимоном",
                             f"35,00{NBSP}₽", f"70,00{NBSP}₽", f"85,00{NBSP}₽", f"415,00{NBSP}₽"):
                assert fragment in mail.html, fragment
            assert push["event_id"] == event_id and push["kind"] == "purchase" and push["account_id"] == PUPIL
            assert push["title"] == f"Ученик 7: покупка на 85,00{NBSP}₽"
            assert push["text"] == f"{hhmm}, столовая: Булочка с маком × 2, Чай с лимоном.\nОстаток: 415,00{NBSP}₽."
            assert push["notice"]["balance_kopecks"] == 41_500 and push["notice"]["items"] == [list(i) for i in BASKET]
            assert sms == (f"Ученик 7: покупка 85,00{NBSP}₽ в {hhmm}: Булочка с маком ×2, Чай с лимоном. "
                           f"Остаток 415,00{NBSP}₽.")
            assert by["sms"]["sms_parts"] == 2 and by["sms"]["address"] == f"+{PARENT_MSISDN}"  # paid: two parts

            # ---- the turnstile opens for the card: a grant, not yet an entry
            grant = await turnstile.card_presented(card, int(Direction.IN))
            assert grant.outcome == Outcome.ACCEPT
            assert await turnstile.wait_settled(STEP_TIMEOUT_S)  # the grant is durable (DURABLE_ACK)
            # A marker after it: a cash top-up at the till. Had the grant made an entry event, its
            # outbox row would have committed before the marker's (the journal commits in order),
            # been published before it (the relay goes in id order), taken in no later than it (the
            # notifier takes in in order); so once the marker has reached every peer and no
            # delivery is left unfinished, an entry notice would have reached them too.
            topup = await till.topup(card, 10_000, 1)
            assert topup.outcome == Outcome.ACCEPT
            marker = f"{till_id}:{topup.txn}:cash_topup"
            by, mail, push, sms = await delivered_everywhere(conn, peers, marker)
            left = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status NOT IN ('sent', 'dead', 'cancelled')")
            assert left == 0 and await conn.fetchval("SELECT count(*) FROM outbox_events WHERE sent_at_ms IS NULL") == 0
            # Nothing about an entry reached any peer ...
            assert not [m.subject for m in peers.mails() if "вход" in m.subject or "вход" in m.text]
            assert not [p for p in peers.pushes() if p["kind"] == "entry"]
            assert not [text_of([s]) for s in peers.submits() if "вход" in text_of([s])]
            # ... because there is no such event at all.
            assert await conn.fetchval("SELECT count(*) FROM outbox_events WHERE kind IN ('entry', 'exit')") == 0
            assert await conn.fetchval("SELECT count(*) FROM processed_events WHERE kind IN ('entry', 'exit')") == 0
            assert mail.subject == f"Ученик 7: лицевой счёт пополнен на 100,00{NBSP}₽"
            assert f"Остаток на лицевом счёте: 515,00{NBSP}₽" in mail.text
            assert sms == f"Ученик 7: пополнение наличными 100,00{NBSP}₽. Остаток 515,00{NBSP}₽."

            # ---- the pupil goes through: PASSAGE -> the entry notice on every channel
            passage = await turnstile.passage(card, int(Direction.IN), grant.txn)
            assert passage.outcome == Outcome.ACCEPT
            entry = f"{turnstile_id}:{passage.txn}:entry"
            by, mail, push, sms = await delivered_everywhere(conn, peers, entry)
            date, hhmm = local(await notice_at_ms(conn, entry))
            assert mail.subject == f"Ученик 7: вход в школу в {hhmm}"
            assert f"Ученик 7 — вход в школу.\n{date} в {hhmm}, {SCHOOL}.\n" in mail.text, mail.text
            assert f"{date} в {hhmm}, {SCHOOL}</p>" in mail.html, mail.html
            assert push["kind"] == "entry" and push["event_id"] == entry
            assert push["title"] == "Ученик 7: вход в школу" and push["text"] == f"{date} в {hhmm}, {SCHOOL}."
            assert sms == f"Ученик 7: вход в школу {date[:5]} в {hhmm}."
            # One entry: the grant's event is the passage's, nothing was sent for the grant itself.
            assert [p["kind"] for p in peers.pushes()] == ["purchase", "cash_topup", "entry"]
            assert len(peers.mails()) == 3 and len({m.message_id for m in peers.mails()}) == 3

            # The records agree with the peers: 3 events x 3 channels, each sent once, SMS receipts matched.
            rows = await conn.fetch("SELECT * FROM deliveries ORDER BY id")
            assert len(rows) == 9 and all(r["status"] == "sent" and r["attempts"] == 1 for r in rows)
            assert {r["representative_id"] for r in rows} == {PUPIL}
            await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM deliveries WHERE channel = 'sms' "
                                                   "AND receipt_status IS DISTINCT FROM 'DELIVRD'"),
                             "the SMSC's receipts matched to their deliveries")
            sms_rows = await conn.fetch("SELECT * FROM deliveries WHERE channel = 'sms'")
            assert all(r["receipt_status"] == "DELIVRD" and r["delivered_at_ms"] for r in sms_rows)
            assert len(peers.submits()) == sum(r["sms_parts"] for r in sms_rows) == 4  # 2 + 1 + 1 parts
        finally:
            await till.close()
            await turnstile.close()
            await conn.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- test 2

STREAM_PUPILS = 40  # parents 1..40 on every channel; grandmothers 41..44 of pupils 10..40 (SMS: low balance)
TAP_PACE_S = 0.03  # between taps: a steady stream over the whole run, faults in the middle of it
# Faults at these numbers of messages received by the peers (e-mails + SMS + pushes).
FIRST_NOTIFIER_KILL_AT = 60
STEP_MESSAGES = 100  # the peers take this many more between two faults: the stream is flowing
# Events that must wait in the outbox (relay or broker away) or in the notifier's broker
# session (notifier away) before the component comes back: the fault really held something.
HELD_EVENTS = 15
MIN_PURCHASES = 120
# After the last fault, everything reaches the peers within this (a few seconds here).
DRAIN_TIMEOUT_S = 30.0
# Mosquitto 2.0 does not save shared subscriptions ($share/...) in its persistence file
# (persist__subs_save walks a topic node's plain subscriptions only): after a restart the
# notifier's session comes back with its queued events but without its subscription, and an
# event published before the notifier has subscribed again matches no subscriber. Over MQTT 5
# the broker says so in the PUBACK (0x10) and the relay keeps the event unsent until a
# subscription takes it (relay/service.py): the "shared" case below is that fix's test.


class EventsLost(AssertionError):
    """Events the relay published (the broker acknowledged them) that the notifier never took in."""


# What the expected deliveries are, computed from the records the gateway wrote (the outbox)
# and the representatives' subscriptions, independently of the notifier's own code.
EXPECTED = """
SELECT o.event_id, r.id AS representative_id, ch AS channel,
       CASE ch WHEN 'email' THEN r.email WHEN 'sms' THEN r.phone
               ELSE $2 || '/representatives/' || r.id || '/events' END AS address
FROM outbox_events o
JOIN representative_pupils rp ON rp.account_id = o.account_id
JOIN representatives r ON r.id = rp.representative_id
CROSS JOIN LATERAL unnest(r.channels) AS ch
WHERE o.kind = ANY (r.kinds) AND r.suspended_at_ms IS NULL AND r.removed_at_ms IS NULL
  AND ch = ANY ($1::text[]) AND (ch <> 'email' OR r.email IS NOT NULL)
"""


class Faults:
    """The processes test 2 kills and starts again, and when it did so."""

    def __init__(self, dsn: str, tmp_path, broker: OwnMosquitto, smtp: SmtpServer, smsc: Smsc, subscription: str) -> None:
        self.dsn, self.tmp_path, self.broker, self.smtp, self.smsc = dsn, tmp_path, broker, smtp, smsc
        self.subscription = subscription
        self.client_id = f"ecard-notifier-faults-{broker.info().tag}"
        self.notifier: NotifierProcess | None = None
        self.relay: RelayProcess | None = None
        self.starts = {"notifier": 0, "relay": 0}
        self.notifier_killed_at_ms: list[int] = []
        self.log: list[str] = []
        self.t0_ms = int(time.time() * 1000)

    def since(self, ms: int | None) -> str:
        return "never" if ms is None else f"{(ms - self.t0_ms) / 1000:.2f}s"

    def note(self, what: str) -> None:
        self.log.append(f"{self.since(int(time.time() * 1000))} {what}")

    def start_notifier(self) -> None:
        self.starts["notifier"] += 1
        self.notifier = NotifierProcess(
            self.dsn, self.broker.info(), self.smtp, self.tmp_path / f"notifier-{self.starts['notifier']}.log",
            client_id=self.client_id,  # the same name: its persistent session and its claims
            **notifier_env(self.smsc, ECARD_NOTIFIER_SUBSCRIPTION=self.subscription, ECARD_NOTIFIER_SMS_PER_SECOND_MAX="1000",
                           # retried through the broker's absence, never a dead letter here
                           ECARD_NOTIFIER_DELIVERY_ATTEMPTS_MAX="100", ECARD_NOTIFIER_DELIVERY_BACKOFF_MS_MAX="500",
                           # a push whose PUBACK went down with the broker is given up on (and
                           # retried) after this, not after the production 10 s
                           ECARD_NOTIFIER_PUSH_TIMEOUT_MS="2000"),
        ).start()

    def start_relay(self) -> None:
        self.starts["relay"] += 1
        self.relay = RelayProcess(self.dsn, self.broker.url(), "ecard/v1",
                                  self.tmp_path / f"relay-{self.starts['relay']}.log").start()

    def kill_notifier(self, why: str) -> None:
        assert self.notifier is not None and self.notifier.running
        self.notifier.kill()  # SIGKILL: nothing flushed, nothing acknowledged
        self.notifier_killed_at_ms.append(int(time.time() * 1000))
        self.note(f"notifier SIGKILL {why}")

    def kill_relay(self, why: str) -> None:
        assert self.relay is not None and self.relay.running
        self.relay.kill()
        self.note(f"relay SIGKILL {why}")

    def close(self) -> None:
        for proc in (self.notifier, self.relay):
            if proc is not None:
                proc.terminate()


def outbox_counts(dsn: str) -> tuple[int, int]:
    """(rows published and marked sent, all rows)."""
    row = fetch(dsn, "SELECT count(*) FILTER (WHERE sent_at_ms IS NOT NULL), count(*) FROM outbox_events")[0]
    return row[0], row[1]


@pytest.fixture
def fault_world(request, pg_dsn, tmp_path):
    if not mosquitto_available():
        pytest.skip("needs Mosquitto (its sessions on disk across a restart; the embedded amqtt keeps none): "
                    "apt-get install -y mosquitto")
    load_demo(pg_dsn, pupils=STREAM_PUPILS)
    reps = [r["id"] for r in fetch(pg_dsn, "SELECT id FROM representatives WHERE 'sms' = ANY (channels)")]
    # Every SMS in one part (free plan), no quiet hours, a cap no stream here reaches.
    set_sms(pg_dsn, reps, SmsSettings(plan="free", daily_cap=500, **NO_QUIET_HOURS))
    with Stack() as stack:
        broker = OwnMosquitto(tmp_path, persistent=True)
        stack.callback(broker.close)
        broker.start()
        smtp = SmtpServer().start()
        stack.callback(smtp.stop)
        smsc = Smsc(free_port()).start()
        stack.callback(smsc.stop)
        faults = Faults(pg_dsn, tmp_path, broker, smtp, smsc, request.param)
        stack.callback(faults.close)
        faults.start_notifier()  # subscribed before the relay publishes anything
        # Every representative's app topic, on a persistent session (as a phone's app keeps one).
        app = AppSubscriber(broker.port, "ecard/v1/representatives/+/events").start()
        stack.callback(app.close)
        faults.start_relay()
        gateway = GatewayProcess(pg_dsn, tmp_path / "gateway.log", **GATEWAY_ENV).start()
        stack.callback(gateway.terminate)
        yield pg_dsn, gateway, faults, app


@pytest.mark.parametrize("fault_world", [
    "plain",  # one notifier, <prefix>/events/#: a subscription Mosquitto saves with the session
    # the notifier's default with a named broker: its subscription is gone after the broker's
    # restart until it subscribes again, and the relay holds what matched no subscription
    "shared",
], indirect=True)
def test_exactly_once_under_sigkills_and_a_broker_restart_counted_at_the_peers(fault_world, tmp_path):
    dsn, gateway, faults, app = fault_world
    smtp, smsc, broker = faults.smtp, faults.smsc, faults.broker
    started = time.monotonic()

    def at_peers() -> int:
        return len(smtp.handler.snapshot()) + len(smsc.snapshot()) + len(app.snapshot())

    def more_at_peers(than: int) -> None:
        wait_until(lambda: at_peers() >= than + STEP_MESSAGES, STEP_TIMEOUT_S, f"{STEP_MESSAGES} more at the peers")

    def more_published(than: int, what: str) -> None:
        wait_until(lambda: outbox_counts(dsn)[0] >= than + HELD_EVENTS, STEP_TIMEOUT_S, what)

    taps = TapStream(gateway.port, tmp_path / "sim", pupils=STREAM_PUPILS, pace_s=TAP_PACE_S).start()
    try:
        # 1. The notifier dies in the middle of sending; a new one (same name) takes over its
        #    claims and its broker session.
        wait_until(lambda: at_peers() >= FIRST_NOTIFIER_KILL_AT, STEP_TIMEOUT_S, "the first messages at the peers")
        faults.kill_notifier(f"at {at_peers()} messages at the peers")
        faults.start_notifier()

        # 2. The relay dies mid-stream; the taps go on and the outbox holds them; a new relay drains it.
        more_at_peers(at_peers())
        faults.kill_relay(f"with {outbox_counts(dsn)[1]} events in the outbox")
        wait_until(lambda: unsent_count(dsn) >= HELD_EVENTS, STEP_TIMEOUT_S, "events held in the outbox")
        faults.start_relay()
        faults.note("relay started")

        # 3. The notifier dies again; the broker keeps its session's events (published while it
        #    is away), and must still have them after its own restart: Mosquitto is stopped and
        #    started again on the same port and data directory with those events queued.
        more_at_peers(at_peers())
        faults.kill_notifier(f"at {at_peers()} messages at the peers")
        more_published(outbox_counts(dsn)[0], "events published to the notifier's session while it is away")
        assert broker.stop() == 0  # SIGTERM: Mosquitto ends and writes its sessions to disk
        faults.note(f"broker stopped with {outbox_counts(dsn)[0]} events published")
        wait_until(lambda: unsent_count(dsn) >= HELD_EVENTS, STEP_TIMEOUT_S, "events held in the outbox")
        broker.start()
        faults.note("broker started")
        # The relay drains what the outbox held, and more, into the restarted broker while the
        # notifier is still away: only the session the broker restored from disk can keep them.
        if faults.subscription == "shared":
            # Its $share subscription did not survive the restart: the broker answers "no matching
            # subscribers" and the relay keeps those events unsent until the notifier subscribes again.
            wait_until(lambda: faults.relay.metrics().get("ecard_relay_unmatched_total", 0) >= HELD_EVENTS,
                       STEP_TIMEOUT_S, "events the restarted broker matched to no subscription, kept by the relay")
            assert unsent_count(dsn) >= 1
        else:
            more_published(outbox_counts(dsn)[0], "events published after the broker's restart, the notifier away")
        faults.start_notifier()
        faults.note("notifier started")

        # 4. The broker goes away under a running notifier and relay (the intake's session and
        #    the app pushes in flight are cut), and comes back.
        more_at_peers(at_peers())
        assert broker.stop() == 0
        faults.note(f"broker stopped under a running notifier at {at_peers()} messages at the peers")
        wait_until(lambda: unsent_count(dsn) >= HELD_EVENTS, STEP_TIMEOUT_S, "events held in the outbox")
        broker.start()
        faults.note("broker started")
        more_published(outbox_counts(dsn)[0], "events published after the broker came back")
        # The stream goes on until it holds enough of everything (a condition, not a duration).
        wait_until(lambda: taps.accepted.get("purchase", 0) >= MIN_PURCHASES and taps.lunchers_done,
                   STEP_TIMEOUT_S, f"{MIN_PURCHASES} purchases and both low-balance crossings")
    finally:
        taps.stop()
    assert taps.settled, "every accepted tap durable"
    faults_over = time.monotonic()

    # Every (event, representative, channel) the records call for, from the outbox and the subscriptions.
    expected = {(r["event_id"], r["representative_id"], r["channel"]): r["address"]
                for r in fetch(dsn, EXPECTED, list(CHANNELS), "ecard/v1")}
    events = {r["event_id"] for r in fetch(dsn, "SELECT event_id FROM outbox_events")}
    kinds = {r["kind"]: r["n"] for r in fetch(dsn, "SELECT kind, count(*) AS n FROM outbox_events GROUP BY kind")}
    assert kinds.get("purchase", 0) >= MIN_PURCHASES and kinds.get("entry", 0), kinds
    # Exactly one low-balance alert per pupil below the threshold now (the stream tops nobody up,
    # so each crossed once): the two lunchers, and on a slow machine whoever else the longer
    # stream's baskets took below it.
    lows = {r["account_id"]: r["n"] for r in fetch(
        dsn, "SELECT account_id, count(*) AS n FROM outbox_events WHERE kind = 'low_balance' GROUP BY account_id")}
    below = {r["id"] for r in fetch(dsn, """
        SELECT a.id FROM accounts AS a LEFT JOIN school_policies AS p ON p.school_id = a.school_id
        WHERE a.kind = 1 AND a.balance_kopecks < coalesce(p.low_balance_threshold_kopecks, 10000)""")}
    assert len(below) >= 2 and lows == dict.fromkeys(below, 1), (lows, below)

    def sent_everywhere() -> bool:
        rows = fetch(dsn, "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'sent') AS sent FROM deliveries")[0]
        return rows["n"] == rows["sent"] == len(expected) and len({m.message_id for m in smtp.handler.snapshot()}) \
            + len({json.loads(m.payload)["delivery_id"] for m in app.snapshot()}) \
            + len(smsc.snapshot()) >= len(expected)

    try:
        wait_until(sent_everywhere, DRAIN_TIMEOUT_S, f"{len(expected)} deliveries sent and at the peers")
    except TimeoutError as exc:
        status = fetch(dsn, "SELECT channel, status, count(*) AS n, max(attempts) AS attempts, max(last_error) AS error "
                            "FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2")
        made = {(r["event_id"], r["representative_id"], r["channel"]) for r in fetch(dsn, "SELECT * FROM deliveries")}
        missing = sorted(set(expected) - made)
        lost = fetch(dsn, "SELECT row_id AS id, event_id, created_at_ms, sent_at_ms FROM outbox_events "
                          "WHERE event_id = ANY ($1::text[]) "
                          "AND event_id NOT IN (SELECT event_id FROM processed_events) ORDER BY row_id, position",
                     sorted({m[0] for m in missing}))
        runs: list[list] = []  # contiguous runs of outbox ids never taken in: [first, last, published from, to]
        for r in lost:
            if runs and runs[-1][1] + 1 >= r["id"]:  # a run of outbox rows (a row holds a commit's events)
                runs[-1][1], runs[-1][3] = r["id"], faults.since(r["sent_at_ms"])
            else:
                runs.append([r["id"], r["id"], faults.since(r["sent_at_ms"]), faults.since(r["sent_at_ms"])])
        raise (EventsLost if lost else AssertionError)(
            f"{exc}: deliveries {[dict(r) for r in status]}; {len(missing)} never made, e.g. {missing[:3]}; "
            f"{len(lost)} events never taken in (outbox ids, published): {runs}; faults: {faults.log}") from None
    drained = time.monotonic()

    # ---- the records: one per (event, representative, channel), every one sent
    assert {r["event_id"] for r in fetch(dsn, "SELECT event_id FROM processed_events")} == events
    rows = fetch(dsn, "SELECT * FROM deliveries ORDER BY id")
    assert len(rows) == len(expected)
    assert {(r["event_id"], r["representative_id"], r["channel"]): r["address"] for r in rows} == expected
    assert all(r["status"] == "sent" and r["sent_at_ms"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    interrupted = {r["id"]: r["interrupted_attempts"] for r in rows if r["interrupted_attempts"]}

    # ---- e-mail: each delivery reached the SMTP server under its own Message-ID, to its address
    mails = smtp.handler.snapshot()
    mail_ids = [int(m.message_id.removeprefix("<delivery-").removesuffix("@ecard.localhost>")) for m in mails]
    assert set(mail_ids) == {r["id"] for r in rows if r["channel"] == "email"}
    assert all(by_id[i]["address"] == m.rcpt for i, m in zip(mail_ids, mails))
    mail_repeats = {i: mail_ids.count(i) - 1 for i in set(mail_ids) if mail_ids.count(i) > 1}
    # A second copy only where the notifier died between the SMTP server's 250 and the COMMIT
    # of "sent": the delivery was claimed again and counted as interrupted.
    assert all(n <= interrupted.get(i, 0) for i, n in mail_repeats.items()), (mail_repeats, interrupted)

    # ---- app push: each delivery reached the representative's topic under its delivery id
    pushes = app.snapshot()
    push_ids = [json.loads(m.payload)["delivery_id"] for m in pushes]
    assert set(push_ids) == {r["id"] for r in rows if r["channel"] == "app_push"}
    for i, m in zip(push_ids, pushes):
        body = json.loads(m.payload)
        assert (m.topic, body["event_id"]) == (by_id[i]["address"], by_id[i]["event_id"])
    push_repeats = {}
    for i in set(push_ids):
        copies = [m for j, m in zip(push_ids, pushes) if j == i]
        if len(copies) > 1:
            # explained by: the broker sending again what it never saw acknowledged (DUP, after
            # its restart), the notifier dying after the PUBACK, or an attempt whose PUBACK was
            # lost with the broker (a failed attempt, retried)
            failed = by_id[i]["attempts"] - 1 - by_id[i]["interrupted_attempts"]
            explained = sum(c.dup for c in copies) + interrupted.get(i, 0) + max(0, failed)
            push_repeats[i] = (len(copies) - 1, explained)
    assert all(n <= why for n, why in push_repeats.values()), push_repeats

    # ---- SMS: each delivery's submit_sm reached the SMSC (its message ids are on the record)
    submits = smsc.snapshot()
    parts = fetch(dsn, "SELECT smsc_message_id, delivery_id, submitted_at_ms FROM sms_parts WHERE delivery_id IS NOT NULL")
    recorded = {p["smsc_message_id"]: p["delivery_id"] for p in parts}
    at_smsc = {s["message_id"]: s for s in submits}
    sms_rows = [r for r in rows if r["channel"] == "sms"]
    for r in sms_rows:
        assert r["sms_parts"] == 1 and r["smsc_message_id"] in at_smsc  # free plan: one part
        assert at_smsc[r["smsc_message_id"]]["destination"] == r["address"].lstrip("+")
    assert set(recorded) <= set(at_smsc)
    copies: dict[int, int] = {}
    for mid, delivery_id in recorded.items():
        copies[delivery_id] = copies.get(delivery_id, 0) + 1
    # An SMS whose SMSC message id was written down is never sent again (a paid plan would pay
    # twice): a delivery claimed again after a kill finds the id and is recorded as sent.
    assert all(n == 1 for n in copies.values()), {i: n for i, n in copies.items() if n > 1}
    # A submit the SMSC accepted and no record names: sent by a notifier that died before it
    # wrote the message id down; the same text to the same number as an interrupted delivery's.
    unrecorded = [s for s in submits if s["message_id"] not in recorded]
    for s in unrecorded:
        candidates = [i for i in interrupted if by_id[i]["channel"] == "sms"
                      and by_id[i]["address"].lstrip("+") == s["destination"]
                      and at_smsc[by_id[i]["smsc_message_id"]]["short_message"] == s["short_message"]
                      and copies.get(i, 0) - 1 < interrupted[i]]
        assert candidates, f"an SMS at the SMSC no delivery explains: {s}"
        copies[candidates[0]] = copies.get(candidates[0], 0) + 1
    sms_repeats = {i: n - 1 for i, n in copies.items() if n > 1}
    assert all(n <= interrupted.get(i, 0) for i, n in sms_repeats.items()), (sms_repeats, interrupted)
    assert len(submits) == len(sms_rows) + sum(sms_repeats.values())
    # Receipts: the SMSC sends one at once on the session that submitted; only a notifier that
    # died right after a submit can have missed one. Every SMS submitted after the last kill
    # gets its receipt matched (they may still be on their way: waited for).
    last_kill = max(faults.notifier_killed_at_ms)

    def without_receipt() -> list[int]:
        return [r["id"] for r in fetch(
            dsn, "SELECT d.id FROM deliveries d JOIN sms_parts p ON p.delivery_id = d.id WHERE d.channel = 'sms' "
                 "GROUP BY d.id HAVING max(p.submitted_at_ms) > $1 AND bool_and(d.receipt_status IS DISTINCT FROM "
                 "'DELIVRD')", last_kill)]

    wait_until(lambda: not without_receipt(), STEP_TIMEOUT_S, "the receipts of the SMS sent after the last kill")
    no_receipt = fetch(dsn, "SELECT count(*) FROM deliveries WHERE channel = 'sms' "
                            "AND receipt_status IS DISTINCT FROM 'DELIVRD'")[0][0]

    # ---- the broker's share: events published while the notifier was away were delivered
    # (checked above with every other event); the relay's and broker's repeats were absorbed.
    duplicates = 0.0
    if faults.notifier is not None and faults.notifier.running:
        duplicates = faults.notifier.metrics().get('ecard_notifier_events_total{outcome="duplicate"}', 0.0)
    print(f"\n{len(events)} events ({kinds}), {taps.taps} taps accepted, {len(expected)} deliveries; "
          f"faults: {'; '.join(faults.log)}\n"
          f"peers: {len(mails)} e-mails ({sum(mail_repeats.values())} repeats), {len(pushes)} pushes "
          f"({sum(n for n, _ in push_repeats.values())} repeats, {sum(m.dup for m in pushes)} DUP-flagged), "
          f"{len(submits)} SMS ({sum(sms_repeats.values())} repeats); {len(interrupted)} deliveries interrupted "
          f"mid-send; {no_receipt} SMS without receipt (sent before a kill); last notifier saw {duplicates:.0f} duplicate events; "
          f"faults phase {faults_over - started:.1f} s, drained {drained - faults_over:.1f} s after")
