"""A small asyncio device for tests: speaks protocol v1 through the sans-IO Connection.

It tracks what a device must track about durability (docs/protocol.md 10.4, 10.6):

- ``durable_txn``: the highest watermark seen from any session (HELLO_ACK or
  DURABLE_ACK); it is what ``hello_event`` reports;
- ``hello_ack_durable_txn``: the watermark of this session's HELLO_ACK (it
  confirms nothing; it is the counter base after TXN_OUT_OF_RANGE);
- ``decided``: txns ACCEPTed in the current session, not yet confirmed;
- ``confirmed``: txns a device may drop — ACCEPTed in a session and covered
  by a DURABLE_ACK read after that ACCEPT in the same session.

A new HELLO starts a new session: ``decided`` is emptied, nothing of an earlier
session confirms anything.
"""

from __future__ import annotations

import asyncio
import os
import time

from protocol import NEED_DATA, CLOSED, Connection, Decision, DurableAck, Event, Hello, HelloAck, Mode, Outcome, Role
from protocol.auth import sign_hello
from storage.demo_dataset import demo_device_key

REPLY_TIMEOUT_S = 10.0


class DeviceClient:
    def __init__(self, device_id: int, kind: int, port: int, key: bytes | None = None) -> None:
        self.device_id = device_id
        self.kind = kind
        self.port = port
        self.key = demo_device_key(device_id) if key is None else key
        self.conn = Connection(Role.DEVICE, device_id, self.key)  # the secure channel (spec 5a)
        self.durable_txn = 0  # the highest watermark seen, any session
        self.mode: Mode | None = None  # the last MODE the gateway sent (turnstiles, fire alarm)
        self.hello_ack_durable_txn = 0  # this session's HELLO_ACK watermark (confirms nothing)
        self.decided: set[int] = set()  # ACCEPTed in this session, no DURABLE_ACK after it yet
        self.confirmed: set[int] = set()  # ACCEPTed, then covered by a DURABLE_ACK, in one session
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> "DeviceClient":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    def hello_event(self, *, nonce: bytes | None = None, time_ms: int | None = None, kind: int | None = None) -> Hello:
        hello = Hello(
            self.kind if kind is None else kind,
            "test-1.0",
            self.durable_txn,
            time.time_ns() // 1_000_000 if time_ms is None else time_ms,
            os.urandom(16) if nonce is None else nonce,
            b"\0" * 16,
        )
        return sign_hello(self.key, self.device_id, hello)

    async def hello(self, **kwargs) -> Event:
        return await self.request(self.hello_event(**kwargs))

    def is_confirmed(self, txn: int) -> bool:
        """May a device drop ``txn``? Only after its ACCEPT and then a covering DURABLE_ACK, in one session."""
        return txn in self.confirmed

    def crafted(self, event: Event, payload: bytes) -> bytes:
        """The frame of request ``event`` with ``payload`` in place of its own (an invalid one,
        say), framed, MACed and chained as the Connection would send it: the session goes on
        as if ``event`` had been sent. Test-only: a real device cannot send what no event encodes."""
        from binascii import crc_hqx

        from protocol.connection import CRC_INIT, HEADER
        from protocol.limits import FRAME_MAC_BYTES

        conn = self.conn
        sent = conn.send(event)
        head = HEADER.pack(*HEADER.unpack_from(sent)[:3], len(payload) + FRAME_MAC_BYTES, *HEADER.unpack_from(sent)[4:])
        body = head + payload
        body += conn._tx.sign(conn._own_mac_prev + conn._reply_mac, body)
        conn._own_mac = body[-FRAME_MAC_BYTES:]
        frame = body + crc_hqx(body, CRC_INIT).to_bytes(2, "little")
        conn._last_request = frame
        return frame

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, event: Event) -> Event:
        if type(event) is Hello:
            self.decided = set()  # a new session
        await self.send_raw(self.conn.send(event))
        return await self.reply()

    async def reply(self) -> Event:
        """The next reply, skipping (and recording) unsolicited DURABLE_ACKs."""
        while True:
            event = await self.next_event()
            if type(event) is DurableAck or type(event) is Mode:
                continue  # unsolicited (Mode: the last one is kept in ``mode``)
            return event

    async def next_event(self):
        assert self.reader is not None
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                self._observe(event)
                return event
            data = await asyncio.wait_for(self.reader.read(65536), REPLY_TIMEOUT_S)
            self.conn.receive_data(data)
            if not data:
                return CLOSED

    def _observe(self, event) -> None:
        """The durability bookkeeping of section 10.4, in stream order."""
        cls = type(event)
        if cls is Decision:
            if event.outcome == Outcome.ACCEPT and event.txn:
                self.decided.add(event.txn)
        elif cls is DurableAck:
            self.durable_txn = max(self.durable_txn, event.durable_txn)
            covered = {txn for txn in self.decided if txn <= event.durable_txn}
            self.decided -= covered
            self.confirmed |= covered
        elif cls is Mode:
            self.mode = event
        elif cls is HelloAck:
            self.hello_ack_durable_txn = event.durable_txn
            self.durable_txn = max(self.durable_txn, event.durable_txn)

    async def read_raw_until_closed(self) -> bytes:
        assert self.reader is not None
        return await asyncio.wait_for(self.reader.read(), REPLY_TIMEOUT_S)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
