"""The ``notices`` phase of ``make bench``: tap -> handed to the channel, under a morning rush.

Issue 8, part 4. Several schools (``schools`` x ``pupils`` pupils, every pupil with a
parent on e-mail and app push: the demo loader's representatives, then the schools split
by SQL below; the parents of every ``SMS_PARENT_EVERY``-th pupil, and the demo grandmothers,
also on SMS), and every process of the notices' path as its own process:

    simulated devices -> gateway -> outbox -> relay -> MQTT broker -> notifier -> SMTP sink / MQTT push / SMSC

- the broker: a Mosquitto of this run on a free port (the system binary, with room for the
  notifier's batches and backlog: ``max_inflight_messages 100``, ``max_queued_messages``
  generous), under a topic prefix of this run; without a binary the system Mosquitto on
  127.0.0.1:1883 (same prefix); without either the embedded amqtt broker
  (``python -m relay broker``) on a free port;
- the SMSC: ``python -m notifier.smsc`` (the SMPP simulator the tests use, smpp34) on a free
  port, answering every submit_sm and sending its receipt; the notifier binds to it as to a real
  aggregator (``smpp_url``);
- the SMTP server: ``python -m notifier.sink`` (the embedded sink of `make run`, aiosmtpd, with
  its Maildir) as a process of its own, as a real relay would be;
- ``python -m gateway run``, ``python -m notifier`` (e-mail, app push and SMS),
  ``python -m relay run``, started in that order (the notifier holds its subscription before
  the relay publishes anything);
- SMS subscribers (``subscribe_sms``): parents of every ``SMS_PARENT_EVERY``-th pupil keep the
  demo's SMS channel (the others lose it), and every representative on SMS gets explicit terms:
  free plan, no quiet hours (the bench runs at any hour on the machine's clock, and the default
  22:00-07:00 would defer the night's SMS to the morning), no digest, the default daily cap.
  ``notifier.sms.decide`` is asked, for every one of them at the time of the run, whether an
  SMS would go out at once; the phase refuses to start otherwise;
- the devices: ``simulators`` turnstiles (CARD_PRESENTED, then PASSAGE: an entry notice is
  made on PASSAGE) in this process, each school its own turnstiles and tills; the rush's
  arrivals are spread uniformly over ``window_s`` like ``python -m simulators rush``, and a
  share of the pupils also buys a basket at a till of their school up to a quarter of the window after entering.

Measured per delivery, from the database once everything is sent: the tap (the device's
own send time, ``journal.device_time_ms``: the simulators' clock is this machine's; for an
entry, whose notice the PASSAGE makes, the CARD_PRESENTED granted just before it) and
the decision (``journal.decided_at_ms``) to ``deliveries.sent_at_ms`` (the SMTP server's
250 / the broker's PUBACK), joined through the event id ``<device_id>:<txn>:<kind>``
(journal key) and ``processed_events``/``outbox``. For SMS, ``sent_at_ms`` is the SMSC's
submit_sm_resp for the message's last part (the aggregator has it; the phone's receipt comes
later and is not waited for). Also the notifier's own metric ``ecard_notifier_delivery_seconds``
(outbox row -> peer), bucket bounds. And PostgreSQL's CPU over the rush and its drain (this
database's backends and the shared auxiliary processes: the gateway's group commits, the relay's
reads and marks, the notifier's take-in, claims and outcomes) per decision, per event and per
delivery: at the rush's low rate (a few hundred deliveries a second) every statement carries
few rows, so this is mostly what a statement costs whatever its size.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from . import procs, pyspy

CHANNELS = ("email", "app_push", "sms")
# How long the pipeline may take to hand over the last notices after the rush.
DRAIN_TIMEOUT_S = 120.0
# The parents of every this-many-th pupil are on SMS (and the demo grandmothers, who hear of low
# balances and cards). Each such parent gets an SMS per entry and per purchase: at 3 x 1,000
# pupils over 30 s (30 % also buying) that is about 200 SMS, 6-7 a second, under the notifier's
# SMS_PER_SECOND_MAX (10 submit_sm a second, what an aggregator sells): the phase measures the
# pipeline, not a queue behind the throttle.
SMS_PARENT_EVERY = 20
# SMS one subscribed representative may get in the rush (an entry and a purchase); the daily cap
# is checked against it.
SMS_PER_REPRESENTATIVE_IN_RUSH_MAX = 2
# The SMTP server and the SMSC stand in for peers on other machines (a mail relay, an SMS
# aggregator): they run at the lowest CPU priority, so that they take what ecard's processes leave
# and the gateway's figures beside them are ecard's. (The relay and the notifier lower their own,
# relay.config.NOTICES_CPU_NICE; the broker runs at normal priority.)
PEER_NICE = 19
# The rush's tap times are cut into buckets of this many seconds for the p99 over time.
RUSH_BUCKET_S = 5.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ReadyProcess(procs.ServerProcess):
    """A process that is ready when its output shows ``ready`` (a regex); metrics port from it."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str], ready: str, nice: int = 0) -> None:
        super().__init__(args, log_path, env)
        self.ready = re.compile(ready)
        self.nice = nice  # added to the process's CPU niceness at its start

    def start(self, timeout_s: float = 120.0) -> "ReadyProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], cwd=procs.ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
        )
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout_s, self.kill)
        timer.start()
        try:
            while True:
                raw = self.proc.stdout.readline()
                if not raw:
                    code = self.proc.wait(timeout=10)
                    raise RuntimeError(f"{self.args} exited with {code} before it was ready; see {self.log_path}")
                self._log.write(raw)
                self._log.flush()
                line = raw.decode(errors="replace")
                if self.ready.search(line):
                    m = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", line)
                    self.metrics_port = int(m.group(1)) if m else 0
                    break
        except BaseException:
            self.kill()
            raise
        finally:
            timer.cancel()
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        return self


class Broker:
    """The MQTT broker of the phase: see the module's docstring."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"ecardbench-{self.tag}/v1"
        self.port = 0
        self.kind = ""
        self.proc: subprocess.Popen | ReadyProcess | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if binary is not None:
            self.port = free_port()
            conf = self.logs / "mosquitto-notices.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_inflight_messages 100\nmax_queued_messages 200000\nlog_dest stdout\n"
            )
            self._log = open(self.logs / "mosquitto-notices.log", "ab")
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while not accepts(self.port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start; see {self.logs / 'mosquitto-notices.log'}")
                time.sleep(0.05)
            self.kind = f"mosquitto ({binary}) of this run"
        elif accepts(1883):
            self.port, self.kind = 1883, "the system Mosquitto on 127.0.0.1:1883"
        else:
            self.port = free_port()
            self.proc = ReadyProcess(
                ["-m", "relay", "broker", "--port", str(self.port)], self.logs / "broker-notices.log", {}, "listening on"
            ).start()
            self.kind = "embedded amqtt (python -m relay broker)"
        return self

    def stop(self) -> None:
        if isinstance(self.proc, ReadyProcess):
            self.proc.stop()
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


def smsc(logs: Path) -> ReadyProcess:
    """``python -m notifier.smsc`` on a free port: one JSON line per submit_sm into its log."""
    port = free_port()
    sim = ReadyProcess(["-m", "notifier.smsc", "--port", str(port)], logs / "smsc-notices.log", {}, r'"listening"',
                       nice=PEER_NICE)
    sim.port = port
    return sim


def smtp_sink(logs: Path) -> ReadyProcess:
    """``python -m notifier.sink`` on a free port, a process of its own: the SMTP peer, as a real
    relay would be (inside the notifier, its Maildir writes would be counted as the notifier's)."""
    port = free_port()
    sink = ReadyProcess(["-m", "notifier.sink", "--port", str(port), "--maildir", str(logs / "sink-mail")],
                        logs / "smtp-sink-notices.log", {}, r'"listening"', nice=PEER_NICE)
    sink.port = port
    return sink


def notifier(dsn: str, broker: Broker, logs: Path, smsc_port: int, smtp_port: int) -> ReadyProcess:
    data = logs / "notifier-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        "ECARD_PG_DSN": dsn,
        "ECARD_MQTT_URL": broker.url,
        "ECARD_DATA_DIR": str(data),
        "ECARD_NOTIFIER_TOPIC_PREFIX": broker.prefix,
        "ECARD_NOTIFIER_SHARE_GROUP": f"bench-{broker.tag}",
        "ECARD_NOTIFIER_CLIENT_ID": f"bench-notifier-{broker.tag}",
        "ECARD_NOTIFIER_CHANNELS": ",".join(CHANNELS),
        "ECARD_NOTIFIER_METRICS_PORT": "0",
        "ECARD_NOTIFIER_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "ECARD_NOTIFIER_SMPP_URL": f"smpp://bench:bench@127.0.0.1:{smsc_port}",
        "ECARD_NOTIFIER_SENT_DIR": "",
        "ECARD_LOG_LEVEL": "WARNING",
    }
    if broker.kind.startswith("embedded"):
        env["ECARD_NOTIFIER_SUBSCRIPTION"] = "plain"
    return ReadyProcess(["-m", "notifier"], logs / "notifier-notices.log", env, "ecard notifier running")


def relay(dsn: str, broker: Broker, logs: Path) -> ReadyProcess:
    env = {
        "ECARD_PG_DSN": dsn,
        "ECARD_MQTT_URL": broker.url,
        "ECARD_RELAY_TOPIC_PREFIX": broker.prefix,
        "ECARD_RELAY_CLIENT_ID": f"bench-relay-{broker.tag}",
        "ECARD_RELAY_METRICS_PORT": "0",
        "ECARD_LOG_LEVEL": "WARNING",
    }
    return ReadyProcess(["-m", "relay", "run"], logs / "relay-notices.log", env, "ecard relay running")


# ----------------------------------------------------------------------------- the schools


async def split_schools(dsn: str, schools: int, pupils: int, turnstiles: int, tills: int) -> None:
    """The demo loader's one school of ``schools * pupils`` pupils, split into ``schools``
    schools: school s has pupils (s-1)*pupils+1 .. s*pupils (and their representatives),
    turnstiles and tills (s-1)*n+1 .. s*n, its own revenue account, products, meal periods
    and policy (copies of school 1's)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            next_id = int(await conn.fetchval("SELECT max(id) FROM accounts"))
            for s in range(2, schools + 1):
                lo, hi = (s - 1) * pupils + 1, s * pupils
                await conn.execute(
                    "INSERT INTO schools (id, name, utc_offset_minutes)"
                    " SELECT $1::integer, name || ' (' || $1::integer || ')', utc_offset_minutes FROM schools WHERE id = 1", s
                )
                for table in ("school_policies", "meal_periods", "products"):
                    await conn.execute(f"CREATE TEMP TABLE copy_{table} AS SELECT * FROM {table} WHERE school_id = 1")
                    await conn.execute(f"UPDATE copy_{table} SET school_id = $1", s)
                    await conn.execute(f"INSERT INTO {table} SELECT * FROM copy_{table}")
                    await conn.execute(f"DROP TABLE copy_{table}")
                next_id += 1
                await conn.execute(
                    "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES ($1, 2, $2, $3)",
                    next_id, s, f"Выручка столовой {s}",
                )
                await conn.execute("UPDATE accounts SET school_id = $1 WHERE kind = 1 AND id BETWEEN $2 AND $3", s, lo, hi)
                await conn.execute("UPDATE pupils SET school_id = $1 WHERE account_id BETWEEN $2 AND $3", s, lo, hi)
                await conn.execute(
                    "UPDATE representatives SET school_id = $1 WHERE id IN"
                    " (SELECT representative_id FROM representative_pupils WHERE account_id BETWEEN $2 AND $3)",
                    s, lo, hi,
                )
                ts = [turnstile_id(n) for n in range((s - 1) * turnstiles + 1, s * turnstiles + 1)]
                ks = [till_id(n) for n in range((s - 1) * tills + 1, s * tills + 1)]
                await conn.execute("UPDATE devices SET school_id = $1 WHERE id = ANY($2::bigint[])", s, ts + ks)
                await conn.execute(
                    "UPDATE accounts SET school_id = $1 WHERE id IN (SELECT drawer_account_id FROM devices"
                    " WHERE id = ANY($2::bigint[]) AND drawer_account_id IS NOT NULL)", s, ks,
                )
    finally:
        await conn.close()


async def subscribe_sms(dsn: str, every: int, now_ms: int) -> dict:
    """Parents of every ``every``-th pupil stay on SMS (the demo puts every parent on every
    channel), the others leave it; every representative on SMS gets the bench's terms (free, no
    quiet hours, no digest). Then ``notifier.sms.decide`` must say "send now, one part" for each
    at ``now_ms`` in its school's time, or this raises."""
    import asyncpg

    from notifier.sms import Send, decide
    from storage.representatives import SmsSettings, set_sms_settings, sms_settings

    terms = SmsSettings(plan="free", quiet_from_minute=0, quiet_to_minute=0, digest=False)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE representatives SET channels = array_remove(channels, 'sms') "
                "WHERE relation = 'parent' AND 'sms' = ANY (channels) AND id % $1 <> 0 AND cardinality(channels) > 1",
                every,
            )
            rows = await conn.fetch(
                "SELECT r.id, r.relation, s.utc_offset_minutes FROM representatives r JOIN schools s ON s.id = r.school_id "
                "WHERE 'sms' = ANY (r.channels) ORDER BY r.id"
            )
            for r in rows:
                await set_sms_settings(conn, r["id"], terms, now_ms=now_ms)
        for r in rows:
            stored = await sms_settings(conn, r["id"])
            decision = decide(stored, now_ms=now_ms, event_at_ms=now_ms, utc_offset_minutes=r["utc_offset_minutes"],
                              sent_today=SMS_PER_REPRESENTATIVE_IN_RUSH_MAX)
            if decision != Send(parts_max=1):
                raise RuntimeError(f"representative {r['id']} would not get an SMS at once now: {decision}")
    finally:
        await conn.close()
    return {"representatives": len(rows), "parents": sum(1 for r in rows if r["relation"] == "parent"),
            "parent_every": every, "plan": terms.plan, "quiet_hours": None, "digest": False,
            "daily_cap": terms.daily_cap}


def turnstile_id(n: int) -> int:
    from storage.demo_dataset import TURNSTILE_ID_BASE

    return TURNSTILE_ID_BASE + n


def till_id(n: int) -> int:
    from storage.demo_dataset import TILL_ID_BASE

    return TILL_ID_BASE + n


# ----------------------------------------------------------------------------- the rush


def plan_school(seed: int, school: int, pupils: int, turnstiles: int, tills: int, window_s: float,
                purchase_rate: float) -> tuple[list[list], list[list]]:
    """School ``school``'s rush: every pupil taps in at one of its turnstiles (CARD_PRESENTED,
    then PASSAGE) at a uniform time in the window; ``purchase_rate`` of them also buys a
    basket at one of its tills, a little later (up to a quarter of the window after entering:
    the last buyers after the window). The buying time was once cut at the window's end, which
    put an eighth of the purchases at the same last instant (about 110 baskets at once on a few
    tills: a burst no canteen sees, and the tail of the phase's p99)."""
    from simulators.scenarios import IN, Action, normal_basket
    from storage.demo_dataset import demo_card_uid

    rng = random.Random(f"{seed}/notices/{school}")
    gates: list[list] = [[] for _ in range(turnstiles)]
    tills_plan: list[list] = [[] for _ in range(tills)]
    for pupil in range((school - 1) * pupils + 1, school * pupils + 1):
        at = rng.uniform(0, window_s)
        gates[rng.randrange(turnstiles)].append(Action(at, "entry", demo_card_uid(pupil), pupil, IN, True))
        if rng.random() < purchase_rate:
            buy = at + rng.uniform(0, window_s / 4)
            tills_plan[rng.randrange(tills)].append(Action(buy, "purchase", demo_card_uid(pupil), pupil, items=normal_basket(rng)))
    for p in gates + tills_plan:
        p.sort(key=lambda a: a.at_s)
    return gates, tills_plan


async def drive(port: int, log_dir: Path, *, schools: int, pupils: int, turnstiles: int, tills: int,
                window_s: float, purchase_rate: float, seed: int) -> dict:
    from protocol import DeviceKind
    from simulators.scenarios import Fleet, play

    fleet = Fleet("127.0.0.1", port, log_dir, seed, 0.0, 120.0)
    plans: list[list] = []
    for s in range(1, schools + 1):
        gates, tills_plan = plan_school(seed, s, pupils, turnstiles, tills, window_s, purchase_rate)
        for n, plan in zip(range((s - 1) * turnstiles + 1, s * turnstiles + 1), gates):
            fleet.add(turnstile_id(n), DeviceKind.TURNSTILE)
            plans.append(plan)
        for n, plan in zip(range((s - 1) * tills + 1, s * tills + 1), tills_plan):
            fleet.add(till_id(n), DeviceKind.TILL)
            plans.append(plan)
    t0 = time.monotonic()
    with open(log_dir / "progress.log", "w") as out:
        settled = await play(fleet, plans, progress_s=2.0, out=out)
    st = fleet.stats
    return {
        "devices": len(fleet.devices),
        "planned_actions": sum(len(p) for p in plans),
        "requests": st.requests,
        "accepts": st.accepts,
        "denies": dict(st.denies),
        "naks": dict(st.naks),
        "errors": st.errors[:20],
        "settled": settled,
        "run_s": round(time.monotonic() - t0, 2),
        "device_reply_ms": {"p50": round(st.quantile_ms(0.5), 2), "p99": round(st.quantile_ms(0.99), 2)},
    }


# ----------------------------------------------------------------------------- measuring

_STATE = """
SELECT (SELECT count(*) FROM outbox_events) AS outbox,
       (SELECT count(*) FROM outbox_events WHERE sent_at_ms IS NULL) AS unsent,
       (SELECT count(*) FROM processed_events) AS processed,
       (SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending', 'failed')) AS open,
       (SELECT count(*) FROM deliveries) AS deliveries
"""

_LATENCIES = """
SELECT d.channel, pe.kind, d.sent_at_ms,
       d.sent_at_ms - COALESCE(g.device_time_ms, j.device_time_ms, j.decided_at_ms) AS from_tap,
       d.sent_at_ms - j.decided_at_ms AS from_decision,
       d.sent_at_ms - pe.created_at_ms AS from_outbox,
       COALESCE(g.device_time_ms, j.device_time_ms, j.decided_at_ms) AS tap_ms,
       o.sent_at_ms - o.created_at_ms AS outbox_to_published,
       pe.received_at_ms - o.sent_at_ms AS published_to_taken_in,
       d.sent_at_ms - pe.received_at_ms AS taken_in_to_channel
FROM deliveries AS d
JOIN processed_events AS pe ON pe.event_id = d.event_id
JOIN outbox_events AS o ON o.event_id = d.event_id
JOIN journal AS j ON j.device_id = split_part(d.event_id, ':', 1)::bigint
                 AND j.device_txn = split_part(d.event_id, ':', 2)::bigint
-- an entry's notice comes from the PASSAGE; the tap is the CARD_PRESENTED granted just before
-- it on the same turnstile (the simulators send the passage right after the grant, next txn)
LEFT JOIN journal AS g ON j.kind = 2 AND g.kind = 1 AND g.device_id = j.device_id
                      AND g.device_txn = j.device_txn - 1 AND g.account_id = j.account_id
WHERE d.status = 'sent' AND split_part(d.event_id, ':', 1) <> '0'
"""


async def _fetch(dsn: str, sql: str) -> list:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def wait_delivered(dsn: str, timeout_s: float = DRAIN_TIMEOUT_S) -> dict:
    """Until every outbox row is published, taken in and every delivery finished (or the timeout)."""
    t0 = time.monotonic()
    while True:
        (row,) = asyncio.run(_fetch(dsn, _STATE))
        state = dict(row)
        done = state["outbox"] > 0 and state["unsent"] == 0 and state["processed"] >= state["outbox"] and state["open"] == 0
        if done or time.monotonic() - t0 > timeout_s:
            state["drained"] = done
            state["drain_wait_s"] = round(time.monotonic() - t0, 2)
            return state
        time.sleep(0.2)


def _quantile(data: list[float], q: float) -> float:
    """Nearest rank on sorted data."""
    return data[max(0, min(len(data) - 1, math.ceil(q * len(data)) - 1))]


def summary_ms(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    data = sorted(values)
    return {
        "count": len(data),
        "p50": _quantile(data, 0.5),
        "p90": _quantile(data, 0.9),
        "p99": _quantile(data, 0.99),
        "max": data[-1],
        "mean": round(sum(data) / len(data), 1),
    }


def latencies(rows: list) -> dict:
    out: dict = {"tap_to_channel_ms": {}, "decision_to_channel_ms": {}, "outbox_to_channel_ms": {}, "by_kind": {}}
    for key, column in (("tap_to_channel_ms", "from_tap"), ("decision_to_channel_ms", "from_decision"),
                        ("outbox_to_channel_ms", "from_outbox")):
        out[key]["all"] = summary_ms([r[column] for r in rows])
        for channel in CHANNELS:
            out[key][channel] = summary_ms([r[column] for r in rows if r["channel"] == channel])
    # Where the time goes: the relay (outbox row -> the broker's PUBACK, outbox.sent_at_ms), the
    # broker and the notifier's intake (-> processed_events.received_at_ms), the notifier's
    # delivery (-> deliveries.sent_at_ms). The relay marks a whole batch once all its PUBACKs are
    # in, so the first stage holds the batch's publishing and the middle one is often negative
    # (the notifier took the event in before the relay marked its batch).
    out["stages_ms"] = {
        stage: summary_ms([r[stage] for r in rows if r[stage] is not None])
        for stage in ("outbox_to_published", "published_to_taken_in", "taken_in_to_channel")
    }
    for kind in sorted({r["kind"] for r in rows}):
        out["by_kind"][kind] = summary_ms([r["from_tap"] for r in rows if r["kind"] == kind])
    if rows:
        first, last = min(r["tap_ms"] for r in rows), max(r["sent_at_ms"] for r in rows)
        span_s = max(0.001, (last - first) / 1000)
        out["first_tap_to_last_sent_s"] = round(span_s, 2)
        # When in the rush the slow ones were tapped: p99 per RUSH_BUCKET_S of tap time (a
        # tail at the end of the window is a backlog that built up; spread out, it is noise).
        buckets: dict[int, list[float]] = {}
        for r in rows:
            buckets.setdefault(int((r["tap_ms"] - first) / 1000 // RUSH_BUCKET_S), []).append(r["from_tap"])
        out["tap_to_channel_p99_ms_by_rush_time"] = {
            f"{b * RUSH_BUCKET_S:g}-{(b + 1) * RUSH_BUCKET_S:g} s": summary_ms(v)["p99"] for b, v in sorted(buckets.items())
        }
        out["deliveries_per_s"] = round(len(rows) / span_s, 1)
    return out


def gateway_alone(plan, logs: Path, dbs: procs.Databases) -> dict:
    """The same rush (same seed, schools, devices) against the gateway alone: the outbox fills
    and nobody reads it (no relay, broker, notifier, SMTP sink or SMSC). The gateway's own
    figures here against those of the notices run say what the notices' path costs the devices
    (issue 8: "with the gateway's own figures unchanged")."""
    schools, pupils = plan.notices_schools, plan.notices_pupils
    turnstiles, tills = plan.notices_turnstiles, plan.notices_tills
    dsn = dbs.create(pupils=schools * pupils, turnstiles=schools * turnstiles, tills=schools * tills,
                     represented_pupils=schools * pupils)
    try:
        asyncio.run(split_schools(dsn, schools, pupils, turnstiles, tills))
        gw = procs.gateway(dsn, logs / "gateway-notices-alone.log").start()
        try:
            sim_dir = logs / "sim-notices-alone"
            sim_dir.mkdir(parents=True, exist_ok=True)
            log("notices: the same rush against the gateway alone (nobody reads the outbox)")
            cpu0 = gw.cpu_seconds()
            rush = asyncio.run(drive(
                gw.port, sim_dir, schools=schools, pupils=pupils, turnstiles=turnstiles, tills=tills,
                window_s=plan.notices_window_s, purchase_rate=plan.notices_purchase_rate, seed=7,
            ))
            gm = gw.metrics()
            return {
                "server_latency_us": procs.quantiles(gm, "ecard_decision_latency_quantile_us"),
                "durable_lag_ms": procs.quantiles(gm, "ecard_durable_lag_quantile_ms"),
                "device_reply_ms": rush.get("device_reply_ms"),
                "requests": rush.get("requests"),
                "cpu_s": round(gw.cpu_seconds() - cpu0, 3),
            }
        finally:
            gw.stop()
    finally:
        dbs.drop(dsn)


def phase_notices(plan, logs: Path, dbs: procs.Databases) -> dict:
    schools, pupils = plan.notices_schools, plan.notices_pupils
    turnstiles, tills = plan.notices_turnstiles, plan.notices_tills
    total = schools * pupils
    out: dict = {
        "schools": schools,
        "pupils_per_school": pupils,
        "turnstiles_per_school": turnstiles,
        "tills_per_school": tills,
        "window_s": plan.notices_window_s,
        "purchase_rate": plan.notices_purchase_rate,
        "channels": list(CHANNELS),
    }
    out["gateway_alone"] = gateway_alone(plan, logs, dbs)
    log(f"notices: database with {schools} schools x {pupils:,} pupils, each with a parent on e-mail and app push, "
        f"every {SMS_PARENT_EVERY}th also on SMS")
    dsn = dbs.create(pupils=total, turnstiles=schools * turnstiles, tills=schools * tills, represented_pupils=total)
    asyncio.run(split_schools(dsn, schools, pupils, turnstiles, tills))
    out["sms_subscribers"] = asyncio.run(subscribe_sms(dsn, SMS_PARENT_EVERY, int(time.time() * 1000)))
    broker = Broker(logs).start()
    out["broker"] = broker.kind
    out["topic_prefix"] = broker.prefix
    started: list[procs.ServerProcess] = []
    try:
        sim = smsc(logs).start()
        started.append(sim)
        gw = procs.gateway(dsn, logs / "gateway-notices.log").start()
        started.append(gw)
        sink = smtp_sink(logs).start()
        started.append(sink)
        nt = notifier(dsn, broker, logs, sim.port, sink.port).start()  # before the relay: it holds its subscription first
        started.append(nt)
        rl = relay(dsn, broker, logs).start()
        started.append(rl)
        sim_dir = logs / "sim-notices"
        sim_dir.mkdir(parents=True, exist_ok=True)
        log(f"notices: rush over {plan.notices_window_s:g} s: {total:,} pupils tap in at {schools * turnstiles} turnstiles, "
            f"{plan.notices_purchase_rate:.0%} also buy at {schools * tills} tills (broker: {broker.kind})")
        gw0 = gw.metrics()
        spy = None
        if getattr(plan, "profile", False):  # --profile: the notifier sampled over the rush and its drain
            out["profile_file"] = str(logs / "pyspy-notifier.speedscope.json")
            spy = pyspy.start(nt.pid, plan.notices_window_s + 20, Path(out["profile_file"]))
        cpu0 = {name: p.cpu_seconds() for name, p in (("gateway", gw), ("notifier", nt), ("relay", rl))}
        # PostgreSQL's whole work for a tap whose parents are told: the gateway's group commits,
        # the relay's reads and marks, the notifier's deliveries (None where the server's
        # processes are not on this machine)
        pg = dbs.postgres_cpu()
        pg0 = pg.snapshot([procs.database_name(dsn)]) if pg is not None else None
        out["rush"] = asyncio.run(drive(
            gw.port, sim_dir, schools=schools, pupils=pupils, turnstiles=turnstiles, tills=tills,
            window_s=plan.notices_window_s, purchase_rate=plan.notices_purchase_rate, seed=7,
        ))
        state = wait_delivered(dsn)
        out["state"] = state
        if spy is not None:
            out["profile"] = pyspy.finish(spy, Path(out["profile_file"]))
        cpu1 = {name: p.cpu_seconds() for name, p in (("gateway", gw), ("notifier", nt), ("relay", rl))}
        out["cpu_s"] = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu0}
        if pg is not None and pg0 is not None:
            split = pg.by_class(pg0, pg.snapshot([procs.database_name(dsn)]))
            # this database's backends and the shared auxiliary processes (as the held phase's "pg own")
            out["pg_cpu_s"] = round(split["db"] + split["shared"], 3)
        gm = gw.metrics()
        out["gateway"] = {
            "server_latency_us": procs.quantiles(gm, "ecard_decision_latency_quantile_us"),
            "durable_lag_ms": procs.quantiles(gm, "ecard_durable_lag_quantile_ms"),
            "decisions": int(procs.metric_sum(gm, "ecard_decisions_total") - procs.metric_sum(gw0, "ecard_decisions_total")),
            "device_reply_ms": (out["rush"] or {}).get("device_reply_ms"),
        }
        nm = nt.metrics()
        out["notifier_metric_delivery_s"] = {
            q: procs.histogram_quantile(nm, "ecard_notifier_delivery_seconds", float(q)) for q in ("0.5", "0.99")
        }
        rows = asyncio.run(_fetch(dsn, _LATENCIES))
        out.update(latencies(rows))
        out["events"] = state["processed"]
        out["deliveries"] = len(rows)
        run_s = (out["rush"] or {}).get("run_s") or 0
        out["events_per_s"] = round(state["outbox"] / run_s, 1) if run_s else None
        out["taps_per_s"] = round(out["rush"]["requests"] / run_s, 1) if run_s else None
        if "pg_cpu_s" in out:
            journaled = out["gateway"]["decisions"]
            out["pg_cpu_us"] = {
                "per_decision": round(out["pg_cpu_s"] / journaled * 1e6, 1) if journaled else None,
                "per_event": round(out["pg_cpu_s"] / state["processed"] * 1e6, 1) if state["processed"] else None,
                "per_delivery": round(out["pg_cpu_s"] / len(rows) * 1e6, 1) if rows else None,
            }
        if not state["drained"]:
            out["warning"] = f"not everything was delivered within {DRAIN_TIMEOUT_S:g} s: {state}"
    finally:
        for p in reversed(started):
            p.stop()
        broker.stop()
        dbs.drop(dsn)
    t = out.get("tap_to_channel_ms", {}).get("all", {})
    log(f"notices: {out.get('deliveries', 0):,} deliveries of {out.get('events', 0):,} events: tap -> channel "
        f"p50 {t.get('p50')} ms, p99 {t.get('p99')} ms, max {t.get('max')} ms")
    sms = out.get("tap_to_channel_ms", {}).get("sms", {})
    log(f"notices: {sms.get('count', 0):,} SMS: tap -> SMSC p50 {sms.get('p50')} ms, p90 {sms.get('p90')} ms, "
        f"p99 {sms.get('p99')} ms")
    return out


def render(n: dict) -> list[str]:
    """Lines for the bench's table."""
    sms = n.get("sms_subscribers") or {}
    lines = [
        f"notices: {n['schools']} schools x {n['pupils_per_school']:,} pupils (parents on {', '.join(n['channels'])}), "
        f"rush over {n['window_s']:g} s, {n['purchase_rate']:.0%} also buy; broker: {n.get('broker')}",
    ]
    if sms:
        lines.append(
            f"  SMS: {sms.get('representatives', 0):,} representatives ({sms.get('parents', 0):,} parents: every "
            f"{sms.get('parent_every')}th pupil's), {sms.get('plan')} plan, no quiet hours, no digest, through "
            "python -m notifier.smsc; handed to the channel = the SMSC's submit_sm_resp"
        )
    r = n.get("rush") or {}
    st = n.get("state") or {}
    lines.append(
        f"  {r.get('requests', 0):,} taps ({n.get('taps_per_s')}/s), {st.get('outbox', 0):,} events ({n.get('events_per_s')}/s), "
        f"{n.get('deliveries', 0):,} deliveries sent ({n.get('deliveries_per_s')}/s from the first tap to the last send); "
        f"{'all delivered' if st.get('drained') else 'NOT all delivered'}"
    )
    lines.append(f"  {'from':<22} {'channel':<9} {'count':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for key, label in (("tap_to_channel_ms", "tap (device)"), ("decision_to_channel_ms", "decision (gateway)"),
                       ("outbox_to_channel_ms", "outbox row")):
        for channel in ("all", *n.get("channels", CHANNELS)):
            s = (n.get(key) or {}).get(channel) or {}
            if not s.get("count"):
                continue
            lines.append(
                f"  {label:<22} {channel:<9} {s['count']:>7,} {s['p50']:>7,} {s['p90']:>7,} {s['p99']:>7,} {s['max']:>7,}"
            )
    for kind, s in (n.get("by_kind") or {}).items():
        if s.get("count"):
            lines.append(f"  tap -> channel, {kind:<14} {s['count']:>7,} deliveries, p50 {s['p50']:,} ms, p99 {s['p99']:,} ms")
    over_time = n.get("tap_to_channel_p99_ms_by_rush_time") or {}
    if over_time:
        lines.append("  p99 ms by tap time in the rush: " + "; ".join(f"{k} {v}" for k, v in over_time.items()))
    stages = n.get("stages_ms") or {}
    if stages:
        lines.append("  stages (p50 / p99 ms): " + "; ".join(
            f"{name.replace('_', ' ')} {(stages.get(name) or {}).get('p50')} / {(stages.get(name) or {}).get('p99')}"
            for name in ("outbox_to_published", "published_to_taken_in", "taken_in_to_channel")
        ))
    g = n.get("gateway") or {}
    lines.append(
        f"  gateway meanwhile: server p99 {g.get('server_latency_us', {}).get('0.99')} us, "
        f"tap->durable p99 {g.get('durable_lag_ms', {}).get('0.99')} ms; CPU s gateway/relay/notifier "
        f"{(n.get('cpu_s') or {}).get('gateway')}/{(n.get('cpu_s') or {}).get('relay')}/{(n.get('cpu_s') or {}).get('notifier')}; "
        f"notifier's ecard_notifier_delivery_seconds p99 <= {(n.get('notifier_metric_delivery_s') or {}).get('0.99')} s"
    )
    pgu = n.get("pg_cpu_us") or {}
    if pgu:
        lines.append(
            f"  PostgreSQL meanwhile, the gateway's commits, the relay's reads and marks and the notifier's deliveries: "
            f"{n.get('pg_cpu_s')} s CPU; per decision {pgu.get('per_decision')} us, per event {pgu.get('per_event')} us, "
            f"per delivery {pgu.get('per_delivery')} us"
        )
    alone = n.get("gateway_alone") or {}
    if alone:
        lines.append(
            f"  gateway alone, the same rush with nobody reading the outbox: server p99 "
            f"{alone.get('server_latency_us', {}).get('0.99')} us, tap->durable p99 "
            f"{alone.get('durable_lag_ms', {}).get('0.99')} ms, device reply p99 "
            f"{(alone.get('device_reply_ms') or {}).get('p99')} ms (with the notices' path: "
            f"{(g.get('device_reply_ms') or {}).get('p99')} ms); CPU s gateway {alone.get('cpu_s')}"
        )
    if n.get("warning"):
        lines.append(f"  WARNING: {n['warning']}")
    return lines
