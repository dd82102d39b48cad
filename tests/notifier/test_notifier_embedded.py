"""make run's embedded defaults: the amqtt broker (``python -m relay broker``, no shared
subscriptions: a plain one), the SMTP sink inside the notifier (mail kept in a Maildir), and
every message written, readable, under <data_dir>/sent/<channel>/."""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from email import message_from_bytes, policy

import pytest

from notifier_support import (
    DELIVERY_TIMEOUT_S,
    ROOT,
    START_TIMEOUT_S,
    Broker,
    NotifierProcess,
    Subscriber,
    accepts,
    fetch,
    free_port,
    publish,
    purchase,
    seed,
    wait_until,
)

pytestmark = pytest.mark.processes


def test_embedded_broker_sink_and_sent_files(pg_dsn, tmp_path):
    seed(pg_dsn)
    port = free_port()
    log = open(tmp_path / "amqtt.log", "ab")
    amqtt = subprocess.Popen([sys.executable, "-m", "relay", "broker", "--host", "127.0.0.1", "--port", str(port)],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    notifier = None
    sub = None
    try:
        wait_until(lambda: accepts(port) or amqtt.poll() is not None, START_TIMEOUT_S, "the amqtt broker")
        assert amqtt.poll() is None
        broker = Broker(tmp_path)
        broker.port = port
        data_dir = tmp_path / "var"
        notifier = NotifierProcess(pg_dsn, broker, None, tmp_path / "notifier.log", client_id="ecard-notifier-1",
                                   ECARD_MQTT_URL="", ECARD_NOTIFIER_BROKER_PORT=str(port),
                                   ECARD_DATA_DIR=str(data_dir))
        notifier.env.pop("ECARD_NOTIFIER_SENT_DIR")  # the default: on with the embedded sink
        notifier.start()
        assert "(embedded broker) as ecard/v1/events/#" in notifier.ready_line
        assert "embedded SMTP sink" in notifier.ready_line
        sub = Subscriber(port, "ecard/v1/representatives/1/#").start()
        publish(port, "ecard/v1", [purchase(1)])

        sent = data_dir / "sent"
        wait_until(lambda: len(list((sent / "email").glob("*.txt"))) == 2 and len(list((sent / "app_push").glob("*.txt"))) == 1,
                   DELIVERY_TIMEOUT_S, "two e-mails and one push written under sent/")
        text = sorted((sent / "email").glob("*.txt"))[0].read_text()
        assert "Subject: Иванов Иван: покупка в столовой на 85,00\u00a0₽" in text
        assert "Булочка с маком: 2 × 35,00\u00a0₽ = 70,00\u00a0₽" in text
        push_file = next((sent / "app_push").glob("*.txt")).read_text()
        assert "To: ecard/v1/representatives/1/events" in push_file and '"delivery_id"' in push_file

        maildir = mailbox.Maildir(str(data_dir / "mail"), create=False)
        wait_until(lambda: len(maildir) == 2, DELIVERY_TIMEOUT_S, "two messages in the sink's Maildir")
        rcpts = sorted(str(message_from_bytes(m.as_bytes(), policy=policy.default)["To"]) for m in maildir)
        assert rcpts == ["granny1@example.ru", "parent1@example.ru"]
        wait_until(lambda: len(sub.snapshot()) == 1, DELIVERY_TIMEOUT_S, "the push at the app's subscriber")
        assert json.loads(sub.snapshot()[0][1])["event_id"] == purchase(1)[0]
        wait_until(lambda: [r[0] for r in fetch(pg_dsn, "SELECT DISTINCT status FROM deliveries")] == ["sent"],
                   DELIVERY_TIMEOUT_S, "every delivery recorded as sent")
        assert notifier.terminate() == 0  # SIGTERM: the ordered stop
    finally:
        if sub is not None:
            sub.close()
        if notifier is not None:
            notifier.kill()
        amqtt.terminate()
        try:
            amqtt.wait(10)
        except subprocess.TimeoutExpired:
            amqtt.kill()
            amqtt.wait()
        log.close()
    assert os.path.isdir(data_dir / "mail" / "new")
