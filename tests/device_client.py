"""A small asyncio device for tests: speaks protocol v1 through the sans-IO Connection."""

from __future__ import annotations

import asyncio
import os
import time

from protocol import NEED_DATA, CLOSED, Connection, DurableAck, Event, Hello, Role
from protocol.auth import sign_hello
from storage.demo_dataset import demo_device_key

REPLY_TIMEOUT_S = 10.0


class DeviceClient:
    def __init__(self, device_id: int, kind: int, port: int, key: bytes | None = None) -> None:
        self.device_id = device_id
        self.kind = kind
        self.port = port
        self.key = demo_device_key(device_id) if key is None else key
        self.conn = Connection(Role.DEVICE, device_id)
        self.durable_txn = 0
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

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, event: Event) -> Event:
        await self.send_raw(self.conn.send(event))
        return await self.reply()

    async def reply(self) -> Event:
        """The next reply, skipping (and recording) unsolicited DURABLE_ACKs."""
        while True:
            event = await self.next_event()
            if type(event) is DurableAck:
                self.durable_txn = max(self.durable_txn, event.durable_txn)
                continue
            return event

    async def next_event(self):
        assert self.reader is not None
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(65536), REPLY_TIMEOUT_S)
            self.conn.receive_data(data)
            if not data:
                return CLOSED

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
