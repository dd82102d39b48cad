"""Locust users that speak ecard's binary device protocol (not HTTP).

Locust's documented way to test a non-HTTP system: a custom client that does
the I/O and fires ``events.request`` for every request. Here the client is a
plain blocking TCP socket (locust runs on gevent and has patched ``socket``, so
it is cooperative) driving the sans-IO ``protocol.Connection`` as a DEVICE.

Each locust user IS one device for its whole life: it takes a free device id
from the demo dataset's ranges, sends a signed HELLO, then taps (a turnstile
sends CARD_PRESENTED, a till sends PURCHASE of 1-3 cheap items) and gives the
id back when it stops. Two users never share a device id at the same time (a
second HELLO would take the session over from the first).

So the dataset must have at least as many devices as users. The demo dataset
has 4 turnstiles (1_000_001..1_000_004) and 2 tills (2_000_001..2_000_002): 6
users at most. ``python -m loadtests.locust_run`` loads a dataset big enough
for its -u; against another gateway say how many devices it has:

    ECARD_LOCUST_TURNSTILES=600 ECARD_LOCUST_TILLS=400 ECARD_LOCUST_PUPILS=100000 \\
        locust -f loadtests/locustfile.py --host tcp://127.0.0.1:7700 --headless -u 50 -r 10 -t 30s

A user that finds no free device id stops at once (logged, counted as a
"HELLO / no free device id" failure). Ids are allocated per locust process: in
distributed mode give each worker its own range with ECARD_LOCUST_TURNSTILE_OFFSET /
ECARD_LOCUST_TILL_OFFSET.

Stats: request_type is the request ("HELLO", "CARD_PRESENTED", "PURCHASE"),
name is the outcome ("accept", "deny:INSUFFICIENT_FUNDS", ...). A deny is a
correct business answer, so it is a success under its own name; a NAK (the
gateway refused the frame), a timeout or a lost connection is a failure.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from urllib.parse import urlsplit

from locust import User, between, task
from locust.exception import StopUser

from protocol import (
    CLOSED,
    NEED_DATA,
    CardPresented,
    Connection,
    Decision,
    DenyReason,
    DurableAck,
    Hello,
    HelloAck,
    Item,
    Nak,
    NakReason,
    Passage,
    Purchase,
    Role,
)
from protocol.auth import sign_hello
from storage.demo_dataset import TILL_ID_BASE, TURNSTILE_ID_BASE, demo_card_uid, demo_device_key

from loadtests.frames import first_txn

TURNSTILES = int(os.environ.get("ECARD_LOCUST_TURNSTILES", "4"))
TILLS = int(os.environ.get("ECARD_LOCUST_TILLS", "2"))
TURNSTILE_OFFSET = int(os.environ.get("ECARD_LOCUST_TURNSTILE_OFFSET", "0"))
TILL_OFFSET = int(os.environ.get("ECARD_LOCUST_TILL_OFFSET", "0"))
PUPILS = int(os.environ.get("ECARD_LOCUST_PUPILS", "1000"))
TIMEOUT_S = float(os.environ.get("ECARD_LOCUST_TIMEOUT_S", "5"))
# Cheap demo products (code, price): tea, compote, pie. Pupils start with 500 rubles.
PRODUCTS = ((5, 1_500), (9, 2_000), (6, 3_000))
TURNSTILE_SHARE = 0.6  # of the users, when both kinds have free ids


class DeviceIds:
    """Free device ids of the dataset; one holder at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.turnstiles = [TURNSTILE_ID_BASE + TURNSTILE_OFFSET + n for n in range(TURNSTILES, 0, -1)]
        self.tills = [TILL_ID_BASE + TILL_OFFSET + n for n in range(TILLS, 0, -1)]
        self.held_turnstiles = 0
        self.held_tills = 0

    def take(self) -> int | None:
        with self._lock:
            held = self.held_turnstiles + self.held_tills
            want_turnstile = self.held_turnstiles < round(TURNSTILE_SHARE * (held + 1))
            if want_turnstile and self.turnstiles:
                self.held_turnstiles += 1
                return self.turnstiles.pop()
            if self.tills:
                self.held_tills += 1
                return self.tills.pop()
            if self.turnstiles:
                self.held_turnstiles += 1
                return self.turnstiles.pop()
            return None

    def give_back(self, device_id: int) -> None:
        with self._lock:
            if device_id > TILL_ID_BASE:
                self.held_tills -= 1
                self.tills.append(device_id)
            else:
                self.held_turnstiles -= 1
                self.turnstiles.append(device_id)


DEVICE_IDS = DeviceIds()


class ProtocolFailure(Exception):
    """The gateway answered with a NAK or something that is not a reply."""


class DeviceClient:
    """One device session over a blocking socket; every request is reported to locust."""

    def __init__(self, host: str, port: int, device_id: int, events) -> None:
        self.host, self.port = host, port
        self.device_id = device_id
        self.kind = 2 if device_id > TILL_ID_BASE else 1
        self.events = events
        self.conn = Connection(Role.DEVICE, device_id, demo_device_key(device_id))  # the secure channel (spec 5a)
        self.sock: socket.socket | None = None
        # txns increase across sessions of the same device id, from HELLO_ACK's durable watermark
        # (they may not run more than 2^32 ahead of the highest txn the gateway knows).
        self.txn = 0
        self.rng = random.Random(device_id)
        # A granted CARD_PRESENTED (txn, direction, card): its PASSAGE is the next request, as at a
        # real turnstile (loadtests.workloads, "passage").
        self.granted: tuple[int, int, bytes] | None = None

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = Hello(self.kind, "ecard-locust", 0, time.time_ns() // 1_000_000, os.urandom(16), bytes(16))
        self.request("HELLO", sign_hello(demo_device_key(self.device_id), self.device_id, hello))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def tap(self) -> None:
        self.txn += 1
        now_ms = time.time_ns() // 1_000_000
        if self.granted is not None:
            granted_txn, direction, ident = self.granted
            self.granted = None
            self.request("PASSAGE", Passage(self.txn, 0, direction, now_ms, granted_txn, ident))
            return
        ident = demo_card_uid(self.rng.randint(1, PUPILS))
        if self.kind == 1:
            event = CardPresented(self.txn, 0, 1 + (self.rng.random() < 0.5), now_ms, ident)
            if self.request("CARD_PRESENTED", event) == "accept":
                self.granted = (event.txn, event.direction, ident)
        else:
            picked = self.rng.sample(PRODUCTS, self.rng.randint(1, 3))
            items = tuple(Item(code, 1, price) for code, price in picked)
            event = Purchase(self.txn, 0, now_ms, sum(p for _, p in picked), ident, items)
            self.request("PURCHASE", event)

    def request(self, request_type: str, event) -> str:
        """Send ``event``, read its reply, report both to locust; the reply's outcome name."""
        started = time.perf_counter()
        name, length, exc = "error", 0, None
        try:
            data = self.conn.send(event)
            assert self.sock is not None
            self.sock.sendall(data)
            reply, length = self._reply()
            if type(reply) is Decision:
                name = "accept" if reply.outcome else "deny:" + _name(DenyReason, reply.reason)
            elif type(reply) is HelloAck:
                name = "accept"
                self.txn = max(self.txn, first_txn(reply.durable_txn))
            elif type(reply) is Nak:
                name = "nak:" + _name(NakReason, reply.reason)
                exc = ProtocolFailure(f"NAK {name[4:]}: {reply.detail}")
            else:
                exc = ProtocolFailure(f"unexpected reply {type(reply).__name__}")
        except Exception as err:  # socket errors, timeouts, protocol errors: a failed request
            exc = err
            self.close()
        self.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exc,
            context={"device_id": self.device_id},
        )
        if exc is not None and (request_type == "HELLO" or self.sock is None):
            raise StopUser()
        return name

    def _reply(self):
        """The next reply, skipping unsolicited DURABLE_ACKs; (event, bytes read)."""
        assert self.sock is not None
        read = 0
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                data = self.sock.recv(65536)
                read += len(data)
                self.conn.receive_data(data)
                continue
            if event is CLOSED:
                raise ConnectionError("gateway closed the connection")
            if type(event) is DurableAck:
                continue
            return event, read


def _name(enum_cls, value: int) -> str:
    try:
        return enum_cls(value).name
    except ValueError:
        return str(value)


def _host_port(host: str | None) -> tuple[str, int]:
    if not host:
        return "127.0.0.1", 7700
    if "://" not in host:
        host = "tcp://" + host
    parts = urlsplit(host)
    return parts.hostname or "127.0.0.1", parts.port or 7700


class EcardDevice(User):
    """A turnstile or a till: HELLO once, then a tap every 50-200 ms."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        device_id = DEVICE_IDS.take()
        if device_id is None:
            self.environment.events.request.fire(
                request_type="HELLO",
                name="no free device id",
                response_time=0,
                response_length=0,
                exception=RuntimeError(
                    "more users than devices: raise ECARD_LOCUST_TURNSTILES/TILLS and the dataset's devices"
                ),
                context={},
            )
            raise StopUser()
        self.device_id = device_id
        host, port = _host_port(self.host)
        self.client = DeviceClient(host, port, device_id, self.environment.events)
        try:
            self.client.connect()
        except BaseException:
            self.client.close()
            DEVICE_IDS.give_back(device_id)
            self.device_id = None
            raise

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if getattr(self, "device_id", None) is not None:
            DEVICE_IDS.give_back(self.device_id)
            self.device_id = None

    @task
    def tap(self) -> None:
        if self.client.sock is None:
            raise StopUser()
        self.client.tap()
