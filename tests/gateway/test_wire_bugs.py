"""Bugs found by a client written from docs/protocol.md alone, tested over a real socket.

Each failed against the gateway before the ledger machine (issue 7).
"""

from __future__ import annotations

import asyncio

import pytest

from protocol import DeviceKind, HelloAck, Item, NakReason, Purchase, encode_frame
from protocol.limits import PENDING_FRAMES_MAX
from storage.demo_dataset import demo_card_uid, till_ids
from tests.device_client import DeviceClient
from tests.gateway.test_gateway import fetch, running_gateway
from tests.support import async_wait_until

pytestmark = pytest.mark.pg

TILL, TILL2 = till_ids()[0], till_ids()[1]


def purchase(txn: int, account: int) -> Purchase:
    return Purchase(txn, 0, 1, 100, demo_card_uid(account), (Item(3, 1, 100),))


def test_a_flood_of_frames_is_refused_before_any_is_decided(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TILL, DeviceKind.TILL, gw.port).connect()
            assert type(await d.hello()) is HelloAck
            frames = b"".join(
                encode_frame(TILL, seq, purchase(seq, 21), reply=False) for seq in range(1, PENDING_FRAMES_MAX + 2)
            )
            await d.send_raw(frames)
            raw = await d.read_raw_until_closed()
            # One NAK TOO_MANY_PENDING, seq 0, then the connection closes: no DECISION at all.
            assert raw[13] == 0x7F and raw[14] == NakReason.TOO_MANY_PENDING, raw.hex()
            assert int.from_bytes(raw[9:13], "little") == 0
            assert gw.core.state.accounts.balance[21] == 50_000
            assert gw.core.machine.tally.decision_count() == 0
        rows = await fetch(demo_dsn, "SELECT count(*) FROM journal WHERE device_id = $1", TILL)
        assert rows[0][0] == 0

    asyncio.run(main())


def test_exactly_the_limit_of_frames_is_answered_one_by_one(demo_dsn):
    """PENDING_FRAMES_MAX frames in one read are all answered. Under the secure channel a device
    cannot make its next request before the reply to the last (its MAC chains from that reply),
    so the frames here are one request and its retransmits: decided once, answered each time."""
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TILL, DeviceKind.TILL, gw.port).connect()
            assert type(await d.hello()) is HelloAck
            frame = d.conn.send(purchase(1, 22))
            await d.send_raw(frame * PENDING_FRAMES_MAX)
            raw, replies = b"", []
            while len(replies) < PENDING_FRAMES_MAX:
                raw += await asyncio.wait_for(d.reader.read(65536), 5)
                while len(raw) >= 14 and len(raw) >= 16 + int.from_bytes(raw[3:5], "little"):
                    end = 16 + int.from_bytes(raw[3:5], "little")
                    if raw[13] == 0x20:  # DECISION (a DURABLE_ACK may come in between)
                        replies.append(raw[:end])
                    raw = raw[end:]
            assert replies == [replies[0]] * PENDING_FRAMES_MAX  # the cached reply, byte for byte, every time
            assert gw.core.state.accounts.balance[22] == 50_000 - 100

    asyncio.run(main())


def test_a_hello_of_another_device_on_an_open_session_is_refused_and_closes(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TILL, DeviceKind.TILL, gw.port).connect()
            assert type(await d.hello()) is HelloAck
            intruder = DeviceClient(TILL2, DeviceKind.TILL, gw.port)
            await d.send_raw(encode_frame(TILL2, 0, intruder.hello_event(), reply=False))
            raw = await d.read_raw_until_closed()
            assert raw[13] == 0x7F and raw[14] == NakReason.DEVICE_MISMATCH, raw.hex()
            assert gw.core.sessions.of_device(TILL2) is None
            await async_wait_until(lambda: gw.core.sessions.of_device(TILL) is None, 10, "the session closed")

    asyncio.run(main())
