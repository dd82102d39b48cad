"""The notifier end to end: events published to a real Mosquitto reach a real SMTP server
(aiosmtpd) and a real MQTT subscriber on the representative's topic, through
``python -m notifier``, with the delivery records to match."""

from __future__ import annotations

import json
import time

import pytest

from notifier_support import (
    DELIVERY_TIMEOUT_S,
    REFUSALS,
    Broker,
    NotifierProcess,
    Rep,
    SmtpServer,
    Subscriber,
    add_representative,
    fetch,
    forget_session,
    publish,
    purchase,
    sample_notices,
    seed,
    wait_until,
)

pytestmark = pytest.mark.processes


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def smtp():
    s = SmtpServer(REFUSALS).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def world(pg_dsn, broker, smtp, tmp_path):
    """Seeded database, broker, SMTP server, a subscriber on representative 1's topic and a
    running notifier; everything stopped after."""
    seed(pg_dsn)
    sub = Subscriber(broker.port, f"{broker.prefix}/representatives/1/#").start()
    started: list[NotifierProcess] = []

    def start(client_id: str = f"ecard-notifier-test-{broker.tag}", **env: str) -> NotifierProcess:
        n = NotifierProcess(pg_dsn, broker, smtp, tmp_path / f"{client_id}.log", client_id=client_id,
                            sent_dir=tmp_path / "sent", **env).start()
        started.append(n)
        return n

    try:
        yield pg_dsn, broker, smtp, sub, start
    finally:
        for n in started:
            n.terminate()
        sub.close()
        for client_id in {n.client_id for n in started}:
            forget_session(broker.port, client_id)


def deliveries(dsn: str) -> list:
    return fetch(dsn, "SELECT d.*, e.kind FROM deliveries d JOIN processed_events e USING (event_id) ORDER BY d.id")


def test_a_purchase_reaches_email_and_push_with_items_cost_and_balance(world):
    dsn, broker, smtp, sub, start = world
    notifier = start()
    event_id, notice = purchase(1)
    publish(broker.port, broker.prefix, [(event_id, notice)])

    # Representative 1: e-mail and push; representative 2 (purchases by e-mail): e-mail. SMS
    # is not a channel of this notifier: no record for it.
    wait_until(lambda: len(smtp.handler.snapshot()) == 2 and len(sub.snapshot()) == 1, DELIVERY_TIMEOUT_S,
               "two e-mails and one push")
    mails = {m.rcpt: m for m in smtp.handler.snapshot()}
    assert set(mails) == {"parent1@example.ru", "granny1@example.ru"}
    mail = mails["parent1@example.ru"]
    assert mail.content_type == "multipart/alternative"
    assert mail.subject == "Иванов Иван: покупка в столовой на 85,00\u00a0₽"
    for text in (mail.text, mail.html):
        assert "Иванов Иван" in text and "ГБОУ Школа № 1" in text
        assert "25.11.2025 в 12:41" in text  # 09:41 UTC in Moscow's time
        assert "Булочка с маком" in text and "Чай с лимоном" in text
        assert "35,00\u00a0₽" in text and "70,00\u00a0₽" in text  # unit price and line total
        assert "85,00\u00a0₽" in text and "415,00\u00a0₽" in text  # cost and balance after
    assert "Булочка с маком: 2 × 35,00\u00a0₽ = 70,00\u00a0₽" in mail.text
    assert "Остаток на лицевом счёте: 415,00\u00a0₽" in mail.text

    topic, payload = sub.snapshot()[0]
    assert topic == f"{broker.prefix}/representatives/1/events"
    push = json.loads(payload)
    assert push["event_id"] == event_id and push["kind"] == "purchase" and push["account_id"] == 1
    assert push["title"] == "Иванов Иван: покупка на 85,00\u00a0₽"
    assert "Булочка с маком × 2, Чай с лимоном" in push["text"] and "415,00\u00a0₽" in push["text"]
    assert push["notice"]["balance_kopecks"] == 41_500

    wait_until(lambda: all(r["status"] == "sent" for r in deliveries(dsn)) and len(deliveries(dsn)) == 3,
               DELIVERY_TIMEOUT_S, "three deliveries sent")
    rows = deliveries(dsn)
    assert sorted((r["representative_id"], r["channel"]) for r in rows) == [(1, "app_push"), (1, "email"), (2, "email")]
    assert all(r["attempts"] == 1 and r["sent_at_ms"] is not None and r["last_error"] is None for r in rows)
    assert mail.message_id == f"<delivery-{next(r['id'] for r in rows if r['channel'] == 'email' and r['representative_id'] == 1)}@ecard.localhost>"
    # What was sent, written for a person to read, one file per message.
    sent = world_sent_files(notifier)
    assert len(sent["email"]) == 2 and len(sent["app_push"]) == 1
    assert "Остаток на лицевом счёте: 415,00\u00a0₽" in sent["email"][0].read_text()


def world_sent_files(notifier: NotifierProcess) -> dict[str, list]:
    from pathlib import Path

    root = Path(notifier.env["ECARD_NOTIFIER_SENT_DIR"])
    return {d.name: sorted(d.glob("*.txt")) for d in root.iterdir()} if root.exists() else {}


def test_every_kind_reaches_both_channels(world):
    dsn, broker, smtp, sub, start = world
    start()
    events = sample_notices(1)
    publish(broker.port, broker.prefix, events)
    # Representative 1 hears of every kind on e-mail and push; representative 2 of the two purchases.
    wait_until(lambda: len(smtp.handler.snapshot()) == len(events) + 2 and len(sub.snapshot()) == len(events),
               DELIVERY_TIMEOUT_S, "every kind by e-mail and push")
    kinds = sorted(json.loads(p)["kind"] for _, p in sub.snapshot())
    assert kinds == sorted(type(n).__struct_config__.tag for _, n in events)
    subjects = {m.subject for m in smtp.handler.snapshot() if m.rcpt == "parent1@example.ru"}
    assert "Иванов Иван: вход в школу в 08:41" in subjects
    assert "Иванов Иван: выход из школы в 15:41" in subjects
    assert "Иванов Иван: на лицевом счёте осталось \u221215,00\u00a0₽" in subjects
    assert "Иванов Иван: лицевой счёт пополнен на 123\u00a0456,78\u00a0₽" in subjects


def test_the_same_event_twice_is_delivered_once(world):
    dsn, broker, smtp, sub, start = world
    notifier = start()
    event = purchase(1)
    publish(broker.port, broker.prefix, [event, event])
    wait_until(lambda: notifier.metrics().get('ecard_notifier_events_total{outcome="duplicate"}') == 1.0,
               DELIVERY_TIMEOUT_S, "the second copy counted as a duplicate")
    wait_until(lambda: len(smtp.handler.snapshot()) == 2 and len(sub.snapshot()) == 1, DELIVERY_TIMEOUT_S,
               "the deliveries of the first copy")
    # And later: the same event again, after the first was delivered.
    publish(broker.port, broker.prefix, [event])
    wait_until(lambda: notifier.metrics().get('ecard_notifier_events_total{outcome="duplicate"}') == 2.0,
               DELIVERY_TIMEOUT_S, "the third copy counted as a duplicate")
    assert len(smtp.handler.snapshot()) == 2 and len(sub.snapshot()) == 1
    assert len(deliveries(dsn)) == 3
    assert fetch(dsn, "SELECT count(*) FROM processed_events")[0][0] == 1


def test_suspended_and_removed_representatives_get_nothing(world):
    dsn, broker, smtp, sub, start = world
    notifier = start()
    publish(broker.port, broker.prefix, [purchase(2, 1), purchase(4, 2)])
    wait_until(lambda: notifier.metrics().get('ecard_notifier_events_total{outcome="new"}') == 2.0,
               DELIVERY_TIMEOUT_S, "both events taken in")
    assert deliveries(dsn) == []
    assert [r["deliveries"] for r in fetch(dsn, "SELECT deliveries FROM processed_events")] == [0, 0]
    assert smtp.handler.snapshot() == []


def test_a_representative_removed_before_the_send_gets_nothing(world):
    """The delivery was recorded while the representative was active; it is removed before
    the send (the SMTP server is refusing for a while): cancelled, never sent."""
    dsn, broker, smtp, sub, start = world
    import asyncio

    import asyncpg

    async def add() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await add_representative(conn, Rep(7, [4], "late4@example.ru", ["email"]))
        finally:
            await conn.close()

    asyncio.run(add())
    smtp.handler.refusals["late4@example.ru"] = "451 4.3.0 Try again later"
    start(ECARD_NOTIFIER_DELIVERY_BACKOFF_MS_MIN="300", ECARD_NOTIFIER_DELIVERY_BACKOFF_MS_MAX="300")
    publish(broker.port, broker.prefix, [purchase(4, 3)])
    wait_until(lambda: any(r["status"] == "failed" for r in deliveries(dsn)), DELIVERY_TIMEOUT_S, "a first refusal")
    fetch(dsn, "UPDATE representatives SET removed_at_ms = 1 WHERE id = 7")
    del smtp.handler.refusals["late4@example.ru"]
    wait_until(lambda: deliveries(dsn)[0]["status"] == "cancelled", DELIVERY_TIMEOUT_S, "the delivery cancelled")
    assert [m for m in smtp.handler.snapshot() if m.rcpt == "late4@example.ru"] == []


def test_smtp_refusals_are_recorded_retried_and_dead_lettered(world):
    """550 (the address does not exist): dead at once, RFC 5321 calls it permanent. 451
    (greylisting, a full mailbox): failed, retried with backoff, dead after the attempts limit."""
    dsn, broker, smtp, sub, start = world
    attempts_max = 4
    notifier = start(ECARD_NOTIFIER_DELIVERY_ATTEMPTS_MAX=str(attempts_max))
    publish(broker.port, broker.prefix, [purchase(3, 5)])
    wait_until(lambda: len(deliveries(dsn)) == 2 and all(r["status"] == "dead" for r in deliveries(dsn)),
               DELIVERY_TIMEOUT_S, "both deliveries dead")
    rows = {r["address"]: r for r in deliveries(dsn)}
    refused, greylisted = rows["refused3@example.ru"], rows["greylisted3@example.ru"]
    assert refused["attempts"] == 1 and refused["last_error"].startswith("SMTP 550 5.1.1 Mailbox unavailable")
    assert greylisted["attempts"] == attempts_max
    assert greylisted["last_error"].startswith("SMTP 451 4.7.1 Greylisted")
    seen = [address for address, _ in smtp.handler.refused]
    assert seen.count("refused3@example.ru") == 1 and seen.count("greylisted3@example.ru") == attempts_max
    assert smtp.handler.snapshot() == []
    m = notifier.metrics()
    assert m['ecard_notifier_deliveries_finished_total{channel="email",status="failed"}'] == attempts_max - 1
    assert m['ecard_notifier_deliveries_finished_total{channel="email",status="dead"}'] == 2

    # An operator requeues the greylisted one once the server takes it.
    import asyncio

    import asyncpg

    from storage import deliveries as store

    del smtp.handler.refusals["greylisted3@example.ru"]

    async def requeue() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            dead = await store.dead_letters(conn)
            assert {d.address for d in dead} == {"refused3@example.ru", "greylisted3@example.ru"}
            return await store.requeue(conn, greylisted["id"], now_ms=int(time.time() * 1000))
        finally:
            await conn.close()

    assert asyncio.run(requeue())
    wait_until(lambda: [m.rcpt for m in smtp.handler.snapshot()] == ["greylisted3@example.ru"], DELIVERY_TIMEOUT_S,
               "the requeued delivery sent")
