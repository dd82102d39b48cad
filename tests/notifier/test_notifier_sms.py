"""SMS and TV push end to end: ``python -m notifier`` against the SMPP server of the smpp34
package (``python -m notifier.smsc``, a process of the test's own), a real Mosquitto and
PostgreSQL. Receipts, UCS-2 and UDH at the SMSC, the rules per representative, reconnect,
throttle, the Smart-TV topic, and make run's embedded SMSC simulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
import time

import asyncpg
import pytest

from notifier_support import (
    DELIVERY_TIMEOUT_S,
    ROOT,
    START_TIMEOUT_S,
    Broker,
    NotifierProcess,
    Rep,
    Subscriber,
    fetch,
    forget_session,
    free_port,
    publish,
    purchase,
    sample_notices,
    seed,
    wait_until,
)
from storage.representatives import SmsSettings, set_sms_settings

pytestmark = pytest.mark.processes

NO_QUIET = dict(quiet_from_minute=0, quiet_to_minute=0)


class Smsc:
    """``python -m notifier.smsc`` on a port of its own; keeps every submit_sm it printed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.submits: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> "Smsc":
        self.proc = subprocess.Popen([sys.executable, "-m", "notifier.smsc", "--port", str(self.port)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = self.proc.stdout.readline()
        assert b"listening" in first, first
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        return self

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.submits.append(json.loads(raw))

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.submits)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._reader.join(10)
            self.proc.stdout.close()


def text_of(submits: list[dict]) -> str:
    """The text the parts carry (UCS-2; the UDH taken off when esm_class has UDHI)."""
    out = []
    # parts in their UDH order (byte 5: the sequence number)
    submits = sorted(submits, key=lambda s: bytes.fromhex(s["short_message"])[5] if s["esm_class"] & 0x40 else 0)
    for s in submits:
        raw = bytes.fromhex(s["short_message"])
        assert s["data_coding"] == 8
        out.append((raw[raw[0] + 1:] if s["esm_class"] & 0x40 else raw).decode("utf-16-be"))
    return "".join(out)


def set_settings(dsn: str, settings: dict[int, SmsSettings]) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for rep, s in settings.items():
                await set_sms_settings(conn, rep, s, now_ms=0)
        finally:
            await conn.close()

    asyncio.run(main())


def sms_rows(dsn: str) -> list:
    return fetch(dsn, "SELECT * FROM deliveries WHERE channel = 'sms' ORDER BY id")


REPS = [
    Rep(1, [1], None, ["sms", "tv_push"]),  # free plan
    Rep(2, [1], None, ["sms"], full_name="Иванова Нина Ивановна"),  # paid plan
    Rep(3, [2], None, ["sms"]),  # quiet hours now
    Rep(4, [3], None, ["sms"]),  # cap 1
    Rep(5, [4], None, ["sms"]),  # daily digest
]


@pytest.fixture
def world(pg_dsn, tmp_path):
    broker = Broker(tmp_path).start()
    smsc = Smsc(free_port()).start()
    seed(pg_dsn, REPS)
    now = dt.datetime.now(dt.timezone(dt.timedelta(minutes=180)))
    minute = now.hour * 60 + now.minute
    set_settings(pg_dsn, {
        1: SmsSettings(**NO_QUIET),
        2: SmsSettings(plan="paid", **NO_QUIET),
        3: SmsSettings(quiet_from_minute=(minute - 60) % 1440, quiet_to_minute=(minute + 60) % 1440),
        4: SmsSettings(daily_cap=1, **NO_QUIET),
        5: SmsSettings(digest=True, plan="paid", **NO_QUIET),
    })
    started: list[NotifierProcess] = []

    def start(**env: str) -> NotifierProcess:
        n = NotifierProcess(pg_dsn, broker, None, tmp_path / "notifier.log", client_id=f"ecard-notifier-sms-{broker.tag}",
                            sent_dir=tmp_path / "sent", ECARD_NOTIFIER_CHANNELS="sms,tv_push",
                            ECARD_NOTIFIER_SMPP_URL=f"smpp://ecard:secret@127.0.0.1:{smsc.port}",
                            ECARD_NOTIFIER_SMS_SUBMIT_TIMEOUT_MS="1000", **env).start()
        started.append(n)
        return n

    try:
        yield pg_dsn, broker, smsc, start, tmp_path
    finally:
        for n in started:
            n.terminate()
        for client_id in {n.client_id for n in started}:
            forget_session(broker.port, client_id)
        smsc.stop()
        broker.stop()


def test_sms_rules_receipts_ucs2_udh_and_tv_push(world):
    dsn, broker, smsc, start, tmp_path = world
    tv = Subscriber(broker.port, f"{broker.prefix}/representatives/1/tv").start()
    try:
        start()
        notices = sample_notices(4)
        entry, exit_ = notices[0], notices[1]
        publish(broker.port, broker.prefix, [purchase(1), purchase(2, 1), purchase(3, 2), purchase(3, 3),
                                             entry, exit_])

        # free (rep 1): one part, cut with "…"; paid (rep 2): two parts with UDH, the whole text
        wait_until(lambda: {r["representative_id"]: r["status"] for r in sms_rows(dsn)}.get(2) == "sent"
                   and {r["representative_id"]: r["status"] for r in sms_rows(dsn)}.get(1) == "sent",
                   DELIVERY_TIMEOUT_S, "the SMS of reps 1 and 2 sent")
        by_dest = {}
        for s in smsc.snapshot():
            by_dest.setdefault(s["destination"], []).append(s)
        free, paid = by_dest["79000000001"], by_dest["79000000002"]
        # the SMSC may take a message's parts in either order (its sessions are windowed): part order is the UDH's
        paid = sorted(paid, key=lambda s: bytes.fromhex(s["short_message"])[5])
        assert len(free) == 1 and free[0]["esm_class"] == 0 and text_of(free).endswith("…")
        assert len(text_of(free)) == 70
        assert len(paid) == 2 and all(p["esm_class"] == 0x40 for p in paid)
        whole = text_of(paid)
        assert whole == ("Иванов Иван: покупка 85,00\u00a0₽ в 12:41: Булочка с маком ×2, Чай с лимоном. "
                         "Остаток 415,00\u00a0₽.")
        assert all(p["source"] == "ECARD" for p in paid)

        # receipts: every part DELIVRD -> delivered_at_ms; the SMSC's ids are on the record
        wait_until(lambda: all(r["delivered_at_ms"] for r in sms_rows(dsn) if r["representative_id"] in (1, 2)),
                   DELIVERY_TIMEOUT_S, "the receipts matched")
        rows = {r["representative_id"]: r for r in sms_rows(dsn) if r["representative_id"] in (1, 2)}
        assert rows[2]["sms_parts"] == 2 and rows[2]["smsc_message_id"] == paid[0]["message_id"]
        assert rows[1]["receipt_status"] == "DELIVRD"
        parts = fetch(dsn, "SELECT smsc_message_id, stat FROM sms_parts WHERE delivery_id = $1 ORDER BY part",
                      rows[2]["id"])
        assert [(p["smsc_message_id"], p["stat"]) for p in parts] == [(p["message_id"], "DELIVRD") for p in paid]

        # quiet hours (rep 3): deferred to their end, not sent, not dropped, not an attempt
        wait_until(lambda: any(r["representative_id"] == 3 and r["status"] == "pending" and r["last_error"]
                               for r in sms_rows(dsn)), DELIVERY_TIMEOUT_S, "rep 3's SMS deferred")
        quiet = next(r for r in sms_rows(dsn) if r["representative_id"] == 3)
        assert quiet["attempts"] == 0 and "quiet hours" in quiet["last_error"]
        assert quiet["next_attempt_at_ms"] > time.time() * 1000 + 30 * 60_000

        # the daily cap (rep 4, cap 1): one sent, the other cancelled
        wait_until(lambda: sorted(r["status"] for r in sms_rows(dsn) if r["representative_id"] == 4)
                   == ["cancelled", "sent"], DELIVERY_TIMEOUT_S, "rep 4: one sent, one over the cap")
        assert "cap" in next(r for r in sms_rows(dsn) if r["representative_id"] == 4
                             and r["status"] == "cancelled")["last_error"]
        assert len(by_dest.get("79000000004", [])) <= 1
        wait_until(lambda: len([s for s in smsc.snapshot() if s["destination"] == "79000000004"]) == 1,
                   DELIVERY_TIMEOUT_S, "one SMS for rep 4")

        # the digest (rep 5): the day's events (long past their digest time) in one SMS
        wait_until(lambda: [r["status"] for r in sms_rows(dsn) if r["representative_id"] == 5] == ["sent", "sent"],
                   DELIVERY_TIMEOUT_S, "rep 5's digest")
        digest = [s for s in smsc.snapshot() if s["destination"] == "79000000005"]
        assert text_of(digest) == "Сводка за 25.11. Козлова Анна: 08:41 вход; 15:41 выход."
        notes = [r["last_error"] for r in sms_rows(dsn) if r["representative_id"] == 5]
        assert sum(1 for n in notes if n and n.startswith("in the daily digest")) == 1

        # TV push: the Smart-TV topic, QoS 1, short Russian text
        wait_until(lambda: len(tv.snapshot()) == 1, DELIVERY_TIMEOUT_S, "the TV push")
        topic, payload = tv.snapshot()[0]
        body = json.loads(payload)
        assert topic == f"{broker.prefix}/representatives/1/tv"
        assert body["title"] == "Иванов Иван: покупка 85,00\u00a0₽" and body["text"] == "12:41, столовая. Остаток 415,00\u00a0₽."
        # every SMS and TV push written, readable
        files = sorted((tmp_path / "sent" / "sms").glob("*.txt"))
        assert len(files) == 4  # reps 1, 2, 4 and the digest
        assert any("Part 2/2:" in f.read_text() for f in files)
        assert len(list((tmp_path / "sent" / "tv_push").glob("*.txt"))) == 1
    finally:
        tv.close()


def test_the_smsc_going_away_is_retried_and_reconnected_and_the_throttle_holds(world):
    dsn, broker, smsc, start, _ = world
    start(ECARD_NOTIFIER_SMS_PER_SECOND_MAX="4")
    smsc.stop()
    publish(broker.port, broker.prefix, [purchase(1, 10)])
    wait_until(lambda: any(r["status"] == "failed" and "SMPP" in (r["last_error"] or "") for r in sms_rows(dsn)),
               DELIVERY_TIMEOUT_S, "a failed attempt while the SMSC is away")
    again = Smsc(smsc.port).start()
    try:
        wait_until(lambda: [r["status"] for r in sms_rows(dsn)] == ["sent", "sent"], DELIVERY_TIMEOUT_S,
                   "sent after the SMSC came back")
        # the one given up on while the SMSC was away did not go out beside its retry
        assert len([s for s in again.snapshot() if s["destination"] == "79000000001"]) == 1
        assert len([s for s in again.snapshot() if s["destination"] == "79000000002"]) == 2, (
            [dict(r) for r in fetch(dsn, "SELECT id, representative_id, attempts, last_error FROM deliveries")],
            [(s["at"], s["message_id"], s["destination"], s["short_message"][:12]) for s in again.snapshot()])
        # the throttle: 5 purchases to reps 1 (free: 1 part) and 2 (paid: 2 parts) are 15
        # submit_sm at 4/s: a burst of 4, then >= (15 - 4) / 4 s
        before = len(again.snapshot())
        publish(broker.port, broker.prefix, [purchase(1, 20 + i) for i in range(5)])
        wait_until(lambda: len(again.snapshot()) - before == 15, DELIVERY_TIMEOUT_S, "fifteen parts at the SMSC")
        stamps = sorted(s["at"] for s in again.snapshot()[before:])
        assert stamps[-1] - stamps[0] >= (15 - 4) / 4 - 0.2
    finally:
        again.stop()


def test_an_sms_the_smsc_accepted_before_a_kill_is_not_sent_again(world):
    """A notifier SIGKILLed after the SMSC accepted an SMS and its message id was written, but
    before the delivery's outcome: the delivery is still ``sending`` under its client id. The
    next process of that id claims it again and finds the SMSC's id on the record: recorded as
    sent, and the parent (who may pay per SMS) gets no second copy."""
    dsn, broker, smsc, start, _ = world
    first = start()
    publish(broker.port, broker.prefix, [purchase(1, 30)])
    wait_until(lambda: [(r["representative_id"], r["status"]) for r in sms_rows(dsn)] == [(1, "sent"), (2, "sent")],
               DELIVERY_TIMEOUT_S, "both SMS sent")
    free = next(r for r in sms_rows(dsn) if r["representative_id"] == 1)
    assert free["smsc_message_id"] and free["attempts"] == 1
    first.kill()
    # what the kill between the SMSC's answer (recorded) and the outcome leaves
    fetch(dsn, "UPDATE deliveries SET status = 'sending', sent_at_ms = NULL, claimed_by = $2, "
               "next_attempt_at_ms = $3 WHERE id = $1", free["id"], first.client_id, int(time.time() * 1000) + 600_000)
    at_smsc = len([s for s in smsc.snapshot() if s["destination"] == "79000000001"])
    assert at_smsc == 1
    start()  # the same client id: its interrupted claims are due at once
    wait_until(lambda: next(r for r in sms_rows(dsn) if r["id"] == free["id"])["status"] == "sent",
               DELIVERY_TIMEOUT_S, "the interrupted SMS recorded as sent")
    again = next(r for r in sms_rows(dsn) if r["id"] == free["id"])
    assert again["attempts"] == 2 and again["interrupted_attempts"] == 1
    assert "not sent again" in again["last_error"] and again["smsc_message_id"] == free["smsc_message_id"]
    assert len([s for s in smsc.snapshot() if s["destination"] == "79000000001"]) == 1


def test_make_run_starts_an_smsc_simulator_and_writes_every_sms(pg_dsn, tmp_path):
    broker = Broker(tmp_path).start()
    seed(pg_dsn, REPS[:1])
    set_settings(pg_dsn, {1: SmsSettings(**NO_QUIET)})
    port = free_port()
    notifier = NotifierProcess(pg_dsn, broker, None, tmp_path / "notifier.log", client_id=f"ecard-notifier-emb-{broker.tag}",
                               ECARD_NOTIFIER_CHANNELS="sms", ECARD_NOTIFIER_SMSC_SIM_PORT=str(port),
                               ECARD_DATA_DIR=str(tmp_path / "var"))
    notifier.env.pop("ECARD_NOTIFIER_SENT_DIR")
    try:
        notifier.start()
        assert f"SMS via 127.0.0.1:{port} (embedded SMSC simulator)" in notifier.ready_line
        publish(broker.port, broker.prefix, [sample_notices(1)[0]])
        sent = tmp_path / "var" / "sent" / "sms"
        wait_until(lambda: len(list(sent.glob("*.txt"))) == 1, DELIVERY_TIMEOUT_S, "one SMS written")
        text = next(sent.glob("*.txt")).read_text()
        assert "To: +79000000001" in text and "Иванов Иван: вход в школу 25.11 в 08:41." in text
        wait_until(lambda: fetch(pg_dsn, "SELECT delivered_at_ms FROM deliveries")[0]["delivered_at_ms"] is not None,
                   DELIVERY_TIMEOUT_S, "the simulator's receipt matched")
        assert notifier.terminate() == 0
    finally:
        notifier.kill()
        forget_session(broker.port, notifier.client_id)
        broker.stop()
