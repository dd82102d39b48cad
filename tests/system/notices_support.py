"""Support for the end-to-end notice tests (tests/system/test_notices_e2e.py): the demo school
in PostgreSQL, the gateway process and the simulators' devices at one end, `python -m relay
run`, a broker, `python -m notifier` in the middle, and the real peers at the other end: an
SMTP server (aiosmtpd), the SMSC simulator (`python -m notifier.smsc`, smpp34) and MQTT
subscribers on the representatives' topics.

The helpers of tests/notifier and tests/relay are imported, not copied. Their tests import them
as top-level modules (no ``__init__.py``: pytest puts a test's own folder on ``sys.path``), so
they are imported here the same way, and one module object serves both when the whole suite runs.

Nothing here sleeps blindly: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import msgspec
import paho.mqtt.client as paho

from tests.support import ROOT

for _helpers in (ROOT / "tests" / "notifier", ROOT / "tests" / "relay"):
    if str(_helpers) not in sys.path:
        sys.path.insert(0, str(_helpers))

from notifier_support import START_TIMEOUT_S, free_port  # noqa: E402
from relay_support import Mosquitto, mosquitto_binary, mosquitto_user  # noqa: E402
from relay.mosquitto import write_files  # noqa: E402
from storage import demo  # noqa: E402
from storage.representatives import SmsSettings, set_sms_settings  # noqa: E402
# The SMSC simulator as a process, and the text of its parts (UCS-2, UDH): the SMS tests' own helpers.
from test_notifier_sms import Smsc, text_of  # noqa: E402,F401  (re-exported for the tests)

SCHOOL_UTC_OFFSET_MINUTES = 180  # the demo school's (schools.utc_offset_minutes' default: Moscow)
NO_QUIET_HOURS = {"quiet_from_minute": 0, "quiet_to_minute": 0}
# The channels a notifier sends on in these tests: every one of the leaflet's that pushes a
# message to a peer (tv_push is the same PUBLISH as app_push to another topic).
CHANNELS = ("email", "app_push", "sms")


def load_demo(dsn: str, pupils: int) -> None:
    """The demo dataset (storage.demo), smaller: ``pupils`` pupils, each with a parent on every
    channel for every kind, every 10th also with a grandmother (SMS: low balance, card events)."""

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await demo.load_dataset(conn, pupils=pupils)
        finally:
            await conn.close()

    asyncio.run(main())


def set_sms(dsn: str, representative_ids: list[int], settings: SmsSettings) -> None:
    """The representatives' SMS settings, through the storage function the APIs will use."""

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for rep in representative_ids:
                await set_sms_settings(conn, rep, settings, now_ms=int(time.time() * 1000))
        finally:
            await conn.close()

    asyncio.run(main())


# ---------------------------------------------------------------- brokers


class BrokerInfo(msgspec.Struct):
    """What NotifierProcess reads of a broker: its URL (with the notifier's credentials), the
    topic prefix and a tag for client ids and the share group."""

    url: str
    port: int
    prefix: str = "ecard/v1"
    tag: str = msgspec.field(default_factory=lambda: secrets.token_hex(4))


class OwnMosquitto:
    """A Mosquitto of the test's own on a free loopback port, that the test stops and starts
    again on the same port and the same data directory.

    ``secured``: the configuration ecard generates (relay.mosquitto.write_files: passwords,
    the ACL, anonymous refused), with users for the relay, the notifier and the given
    representatives' apps. Otherwise anonymous. ``persistent``: sessions and queued QoS 1
    messages are kept on disk across a restart (written at an ordered stop)."""

    def __init__(self, log_dir: Path, *, secured: bool = False, persistent: bool = False,
                 representatives: tuple[int, ...] = ()) -> None:
        self.log_dir = log_dir
        # Under /tmp, not tmp_path: Mosquitto started as root drops to its own user, who must reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="ecard-e2e-mosquitto-"))
        self.port = free_port()
        self.passwords = {name: secrets.token_urlsafe(12) for name in
                          ("ecard-relay", "ecard-notifier", *(str(r) for r in representatives))}
        self.starts = 0
        self.process: Mosquitto | None = None
        self.tag = secrets.token_hex(4)  # the notifier's share group and client ids: one for the broker's life
        run_as = mosquitto_user()
        if secured:
            files = write_files(
                self.directory, self.port, relay_user="ecard-relay", notifier_user="ecard-notifier",
                users={k: v for k, v in self.passwords.items() if not k.isdigit()},
                representatives={int(k): v for k, v in self.passwords.items() if k.isdigit()},
                persistent=persistent, run_as=run_as,
            )
            self.conf = files.conf
        else:
            self.passwords = {}
            data = self.directory / "data"
            lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
            if persistent:
                data.mkdir()
                lines += ["persistence true", f"persistence_location {data}/"]
            else:
                lines.append("persistence false")
            # max_inflight_messages: the notifier's batches may fill (Mosquitto's default, 20,
            # would cap them); max_queued_messages: what the generated configuration sets
            # (relay.mosquitto.MOSQUITTO_QUEUED_MESSAGES_MAX), for the sessions of processes that are away.
            lines += ["max_inflight_messages 100", "max_queued_messages 200000", "log_dest stdout",
                      "log_type error", "log_type warning", "log_type notice", "log_type information"]
            if run_as is not None:
                lines.append(f"user {run_as}")
            self.conf = self.directory / "mosquitto.conf"
            self.conf.write_text("\n".join(lines) + "\n")
            if run_as is not None:
                for path in (self.directory, self.conf, *([data] if persistent else [])):
                    shutil.chown(path, run_as)

    def url(self, user: str | None = None) -> str:
        if user is None:
            return f"mqtt://127.0.0.1:{self.port}"
        return f"mqtt://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    def info(self, user: str | None = None) -> BrokerInfo:
        return BrokerInfo(self.url(user), self.port, tag=self.tag)

    def start(self) -> "OwnMosquitto":
        self.starts += 1
        self.process = Mosquitto(self.conf, self.port, self.log_dir / f"mosquitto-{self.starts}.log").start()
        return self

    def stop(self) -> int | None:
        """SIGTERM: Mosquitto closes its connections and writes its persistence file."""
        if self.process is None:
            return None
        return self.process.terminate()

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def mosquitto_available() -> bool:
    return mosquitto_binary() is not None


# ---------------------------------------------------------------- a representative's app


class Received(msgspec.Struct, frozen=True):
    topic: str
    payload: bytes
    dup: bool  # the broker's DUP flag: a QoS 1 message it sends again (it never saw our PUBACK)
    connection: int  # which of the subscriber's connections it came on (1, 2, ...)


class AppSubscriber:
    """A representative's app as a phone keeps it: paho-mqtt with a **persistent session**
    (clean_session=0, QoS 1), so that what is published while it (or the broker) is away is
    kept for it; reconnects by itself. Keeps every message with its DUP flag, in order."""

    def __init__(self, port: int, topic_filter: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.port = port
        self.topic_filter = topic_filter
        self.client_id = f"ecard-test-app-{secrets.token_hex(4)}"
        self.messages: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                                  protocol=paho.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        with self._lock:
            self.connections += 1
        client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if all(not rc.is_failure for rc in reason_codes):
            self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.dup), self.connections))

    def start(self) -> "AppSubscriber":
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(START_TIMEOUT_S):
            self.close()
            raise TimeoutError(f"subscriber could not subscribe to {self.topic_filter} on port {self.port}")
        return self

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------- a stream of taps


class TapStream:
    """A stream of taps at the demo school, in a thread of its own (its own event loop), paced,
    until stopped: purchases at two tills (cheap baskets; pupils 10 and 20 buy three lunches,
    which takes them below the low-balance threshold) and entries and exits at a turnstile
    (CARD_PRESENTED, then PASSAGE). The simulators' devices, with their durability contract:
    at the end every accepted tap is confirmed durable."""

    CHEAP_BASKETS = ([(5, 1, 1_500)], [(3, 1, 3_500)], [(5, 1, 1_500), (6, 1, 3_000)], [(9, 2, 2_000)])
    LUNCH = [(2, 1, 16_500)]
    LUNCHERS = (10, 20)

    def __init__(self, port: int, log_dir: Path, *, pupils: int, pace_s: float, seed: int = 8) -> None:
        self.port, self.log_dir, self.pupils, self.pace_s = port, log_dir, pupils, pace_s
        self.rng = random.Random(seed)
        self.accepted: dict[str, int] = {}
        self.denied: dict[str, int] = {}
        self.error: BaseException | None = None
        self.settled = False
        self._inside: set[int] = set()
        self._lunches: dict[int, int] = {}
        self._started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taps", daemon=True)

    def start(self) -> "TapStream":
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self.error is not None:
            self.stop()
            raise RuntimeError(f"the devices did not connect: {self.error!r}")
        return self

    @property
    def lunchers_done(self) -> bool:
        """Pupils 10 and 20 had their three lunches (each crossed the low-balance threshold)."""
        return all(self._lunches.get(p, 0) >= 3 for p in self.LUNCHERS)

    @property
    def taps(self) -> int:
        return sum(self.accepted.values())

    def stop(self, settle_s: float = 60.0) -> None:
        """Stop tapping, wait until every accepted tap is durable, close the devices."""
        self._stop.set()
        self._thread.join(settle_s + 30)
        assert not self._thread.is_alive(), "the tap stream did not stop"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001  re-raised in the test
            self.error = exc
            self._started.set()

    async def _main(self) -> None:
        from protocol import DeviceKind
        from simulators.device import Device, DeviceConfig
        from storage.demo_dataset import demo_device_key, till_ids, turnstile_ids

        config = DeviceConfig("127.0.0.1", self.port)
        tills = [Device(d, DeviceKind.TILL, demo_device_key(d), config, self.log_dir, seed=1) for d in till_ids(2)]
        turnstile_id = turnstile_ids(1)[0]
        turnstile = Device(turnstile_id, DeviceKind.TURNSTILE, demo_device_key(turnstile_id), config, self.log_dir,
                           seed=1)
        devices = [*tills, turnstile]
        try:
            for d in devices:
                await d.start()
            self._started.set()
            n = 0
            while not self._stop.is_set():
                await self._tap(n, tills, turnstile)
                n += 1
                await asyncio.sleep(self.pace_s)  # the stream's pace (the load's shape, not a wait for anything)
            self.settled = all([await d.wait_settled(60.0) for d in devices])
        finally:
            for d in devices:
                await d.close()

    def _count(self, table: dict[str, int], what: str) -> None:
        table[what] = table.get(what, 0) + 1

    async def _tap(self, n: int, tills: list, turnstile) -> None:
        from protocol import Direction, Outcome
        from storage.demo_dataset import demo_card_uid

        pupil = 1 + (n * 7) % self.pupils
        card = demo_card_uid(pupil)
        lunches = self._lunches.get(pupil, 0)
        if n % 3 != 2 and not (pupil in self.LUNCHERS and lunches >= 3):
            basket = self.LUNCH if pupil in self.LUNCHERS else self.rng.choice(self.CHEAP_BASKETS)
            if pupil in self.LUNCHERS:
                self._lunches[pupil] = lunches + 1
            decision = await tills[n % 2].purchase(card, basket)
            self._count(self.accepted if decision.outcome == Outcome.ACCEPT else self.denied, "purchase")
            return
        direction = Direction.OUT if pupil in self._inside else Direction.IN
        grant = await turnstile.card_presented(card, int(direction))
        if grant.outcome != Outcome.ACCEPT:
            self._count(self.denied, "card_presented")
            return
        passage = await turnstile.passage(card, int(direction), grant.txn)
        if passage.outcome != Outcome.ACCEPT:
            self._count(self.denied, "passage")
            return
        self._inside.symmetric_difference_update({pupil})
        self._count(self.accepted, "entry" if direction == Direction.IN else "exit")
