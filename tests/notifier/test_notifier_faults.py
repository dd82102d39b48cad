"""The notifier under faults and in numbers: SIGKILL mid-stream and restart, two processes
on one shared subscription. Counted at the real peers (the SMTP server, an MQTT subscriber)."""

from __future__ import annotations

import json
import threading

import pytest

from notifier_support import (
    DELIVERY_TIMEOUT_S,
    Broker,
    NotifierProcess,
    SmtpServer,
    Subscriber,
    fetch,
    forget_session,
    publish,
    purchase,
    seed,
    wait_until,
)

pytestmark = pytest.mark.processes


@pytest.fixture
def peers(pg_dsn, tmp_path):
    seed(pg_dsn)
    broker = Broker(tmp_path).start()
    smtp = SmtpServer().start()
    sub = Subscriber(broker.port, f"{broker.prefix}/representatives/+/events").start()
    started: list[NotifierProcess] = []

    def start(client_id: str, **env: str) -> NotifierProcess:
        n = NotifierProcess(pg_dsn, broker, smtp, tmp_path / f"{client_id}.log", client_id=client_id, **env).start()
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
        smtp.stop()
        broker.stop()


def counted(smtp: SmtpServer, sub: Subscriber) -> tuple[list[str], list[int]]:
    """Message-IDs received by the SMTP server and delivery ids received by the app, repeats included."""
    return ([m.message_id for m in smtp.handler.snapshot()],
            [json.loads(payload)["delivery_id"] for _, payload in sub.snapshot()])


def test_sigkill_mid_stream_and_restart_delivers_every_event(peers):
    dsn, broker, smtp, sub, start = peers
    events_count = 150  # each: two e-mails (parent, grandmother) and one push (parent)
    events = [purchase(1, n) for n in range(events_count)]
    client_id = f"ecard-notifier-crash-{broker.tag}"
    # Two sends at a time, so that the stream lasts long enough to be cut in the middle.
    slow = {"ECARD_NOTIFIER_SEND_CONCURRENCY_MAX": "2", "ECARD_NOTIFIER_INGEST_BATCH_EVENTS_MAX": "10"}
    notifier = start(client_id, **slow)
    publisher = threading.Thread(target=publish, args=(broker.port, broker.prefix, events), kwargs={"pace_s": 0.004})
    publisher.start()
    kills = 0
    for threshold in (40, 160):
        wait_until(lambda: len(smtp.handler.snapshot()) >= threshold, DELIVERY_TIMEOUT_S, f"{threshold} e-mails")
        notifier.kill()
        kills += 1
        notifier = start(client_id, **slow)  # the same name: its persistent session and its claims
    publisher.join(DELIVERY_TIMEOUT_S)
    assert not publisher.is_alive()

    def done() -> bool:
        mails, pushes = counted(smtp, sub)
        return len(set(mails)) == 2 * events_count and len(set(pushes)) == events_count

    wait_until(done, DELIVERY_TIMEOUT_S, "every delivery at the peers")
    wait_until(lambda: fetch(dsn, "SELECT count(*) FROM deliveries WHERE status <> 'sent'")[0][0] == 0,
               DELIVERY_TIMEOUT_S, "every delivery recorded as sent")

    rows = fetch(dsn, "SELECT id, event_id, representative_id, channel, interrupted_attempts FROM deliveries")
    assert fetch(dsn, "SELECT count(*) FROM processed_events")[0][0] == events_count
    assert len(rows) == 3 * events_count  # one per (event, representative, channel): none doubled
    expected = {(event_id, 1, "email") for event_id, _ in events} | {(event_id, 2, "email") for event_id, _ in events} \
        | {(event_id, 1, "app_push") for event_id, _ in events}
    assert {(r["event_id"], r["representative_id"], r["channel"]) for r in rows} == expected

    mails, pushes = counted(smtp, sub)
    by_id = {r["id"]: r for r in rows}
    email_ids = {f"<delivery-{r['id']}@ecard.localhost>" for r in rows if r["channel"] == "email"}
    assert set(mails) == email_ids  # every e-mail delivery reached the server, under its own Message-ID
    assert set(pushes) == {r["id"] for r in rows if r["channel"] == "app_push"}
    # A message can reach the peer twice only when the notifier died between the peer's
    # acceptance and the COMMIT of "sent": such a delivery was claimed again with its
    # interrupted_attempts counted, and went out under the same Message-ID / delivery id.
    interrupted = {r["id"] for r in rows if r["interrupted_attempts"] > 0}
    repeats = [i for i in pushes if pushes.count(i) > 1] + \
        [int(m.split("-")[1].split("@")[0]) for m in mails if mails.count(m) > 1]
    assert set(repeats) <= interrupted, (repeats, interrupted)
    assert len(mails) - len(set(mails)) + len(pushes) - len(set(pushes)) <= sum(
        by_id[i]["interrupted_attempts"] for i in interrupted)
    print(f"\n{kills} kills: {len(mails)} e-mails ({len(mails) - len(set(mails))} repeats), {len(pushes)} pushes "
          f"({len(pushes) - len(set(pushes))} repeats); {len(interrupted)} deliveries interrupted mid-send")


def test_two_notifiers_share_the_stream_without_doubles(peers):
    dsn, broker, smtp, sub, start = peers
    events_count = 120
    first = start(f"ecard-notifier-a-{broker.tag}")
    second = start(f"ecard-notifier-b-{broker.tag}")
    publish(broker.port, broker.prefix, [purchase(1, n) for n in range(events_count)], pace_s=0.002)

    def done() -> bool:
        mails, pushes = counted(smtp, sub)
        return len(mails) >= 2 * events_count and len(pushes) >= events_count

    wait_until(done, DELIVERY_TIMEOUT_S, "every delivery at the peers")
    wait_until(lambda: fetch(dsn, "SELECT count(*) FROM deliveries WHERE status <> 'sent'")[0][0] == 0,
               DELIVERY_TIMEOUT_S, "every delivery recorded as sent")
    mails, pushes = counted(smtp, sub)
    assert len(mails) == len(set(mails)) == 2 * events_count
    assert len(pushes) == len(set(pushes)) == events_count
    taken = [n.metrics().get('ecard_notifier_events_total{outcome="new"}', 0.0) for n in (first, second)]
    assert sum(taken) == events_count and min(taken) > 0, taken  # the broker split the stream between them
    dups = [n.metrics().get('ecard_notifier_events_total{outcome="duplicate"}', 0.0) for n in (first, second)]
    assert dups == [0.0, 0.0]
