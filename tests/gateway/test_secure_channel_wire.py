"""The secure channel and device roles over the real wire, against a real gateway (issue 9, part 5).

Each refusal the issue names has its test: wrong key, replayed frame, reordered frame,
altered byte, a foreign frame (and the reply cache), a turnstile trying to sell, a till
opening a door, a fire panel doing either, a device of school A acting for school B, a
revoked device; plus key rotation without downtime, through the staff API.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from protocol import (
    CardPresented,
    Decision,
    DenyReason,
    DeviceKind,
    DurableAck,
    Heartbeat,
    Hello,
    HelloAck,
    Nak,
    NakReason,
    Purchase,
    RemoteProtocolError,
    State,
    crc16,
)
from protocol.limits import MAC_FAILURES_MAX
from storage.demo_dataset import demo_card_uid, till_ids, turnstile_ids
from tests.device_client import DeviceClient
from tests.gateway.test_gateway import balance, fetch, purchase, running_gateway
from tests.support import async_wait_until

pytestmark = pytest.mark.pg

TURNSTILE, TURNSTILE2 = turnstile_ids()[0], turnstile_ids()[1]
TILL, TILL2 = till_ids()[0], till_ids()[1]
FIRE_PANEL = 3_000_001  # the demo school's fire panel, if the demo has one (else made here)
SCHOOL_B = 2
TILL_B = 2_100_001
TILL_B_KEY = bytes(range(32, 48))
CARD_B = bytes.fromhex("0a0b0c0d")  # a pupil of school B (account 2000)


async def connect(gw, device_id: int, kind: int, key: bytes | None = None) -> DeviceClient:
    d = await DeviceClient(device_id, kind, gw.port, key).connect()
    ack = await d.hello()
    assert type(ack) is HelloAck, ack
    return d


def resign(frame: bytes) -> bytes:
    return frame[:-2] + crc16(frame[:-2]).to_bytes(2, "little")


async def school_b(dsn: str) -> None:
    """School B with a pupil and its card, a till of school B, and a fire panel of school A."""
    await fetch(dsn, "INSERT INTO schools (id, name, utc_offset_minutes) VALUES (2, 'ГБОУ Школа № 2', 180)")
    await fetch(dsn, "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES (2000, 1, 2, 'Иванов Пётр')")
    await fetch(dsn, "INSERT INTO pupils (account_id, school_id, full_name, grade) VALUES (2000, 2, 'Иванов Пётр', 5)")
    await fetch(dsn, "INSERT INTO identifiers (identifier, account_id, kind) VALUES ($1, 2000, 1)", CARD_B)
    await fetch(dsn, "INSERT INTO devices (id, school_id, kind, key, name) VALUES ($1, 2, 2, $2, 'Касса Б')",
                TILL_B, TILL_B_KEY)
    await fetch(dsn, "INSERT INTO devices (id, school_id, kind, key, name) VALUES ($1, 1, 3, $2, 'Пожарная панель')"
                " ON CONFLICT (id) DO NOTHING", FIRE_PANEL, bytes(range(16)))


async def fire_panel_key(dsn: str) -> bytes:
    rows = await fetch(dsn, "SELECT key, kind, school_id FROM devices WHERE id = $1", FIRE_PANEL)
    assert (rows[0]["kind"], rows[0]["school_id"]) == (3, 1)
    return bytes(rows[0]["key"])


# ---------------------------------------------------------------- the handshake


def test_every_frame_after_hello_ack_carries_a_mac(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            till = await connect(gw, TILL, DeviceKind.TILL)
            sent = till.conn.send(purchase(1, 5))
            assert sent[2] == 0x04  # FLAG_MAC
            await till.send_raw(sent)
            reply = await till.reply()
            assert type(reply) is Decision and reply.outcome == 1

    asyncio.run(main())


def test_wrong_key_hello_is_refused(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TILL, DeviceKind.TILL, gw.port, bytes(16)).connect()
            nak = await d.hello()
            assert type(nak) is Nak and nak.reason == NakReason.AUTH_FAILED
            assert await d.read_raw_until_closed() == b""

    asyncio.run(main())


def test_a_replayed_hello_gets_no_further_than_its_first_frame(demo_dsn):
    """A HELLO captured and replayed after the gateway forgot its nonce (a restart) is answered,
    but without the device key nothing after it verifies: MAC_INVALID, then the connection closes."""
    async def main():
        async with running_gateway(demo_dsn) as gw:
            honest = await DeviceClient(TILL, DeviceKind.TILL, gw.port).connect()
            captured = honest.conn.send(honest.hello_event())
            await honest.send_raw(captured)
            assert type(await honest.reply()) is HelloAck
            await honest.close()
            gw.core.state.devices[TILL].nonces.clear()  # what a restart forgets
            thief = await DeviceClient(TILL, DeviceKind.TILL, gw.port, bytes(range(100, 116))).connect()
            assert thief.conn.send(Hello.decode_payload(captured[14:-2])) == captured
            await thief.send_raw(captured)
            with pytest.raises(RemoteProtocolError) as info:
                await thief.next_event()  # the gateway's cryptogram does not verify under the thief's key
            assert info.value.reason == NakReason.AUTH_FAILED
            # The thief sends anyway, with keys of its own making.
            thief.conn._install(b"\x01" * 16, b"\x02" * 16, b"\x03" * 16)
            thief.conn._error = None
            before = await balance(demo_dsn, 5)
            for _ in range(MAC_FAILURES_MAX):
                thief.conn.state = State.READY
                await thief.send_raw(thief.conn.send(purchase(1, 5)))
            raw = await thief.read_raw_until_closed()
            assert raw.count(bytes([0x7F, int(NakReason.MAC_INVALID)])) == MAC_FAILURES_MAX
            assert gw.core.state.accounts.balance[5] == before == 50_000

    asyncio.run(main())


# ---------------------------------------------------------------- replayed, reordered, altered, foreign


def test_replayed_frame_is_refused_and_nothing_is_decided(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            till = await connect(gw, TILL, DeviceKind.TILL)
            first = till.conn.send(purchase(1, 5))
            await till.send_raw(first)
            assert (await till.reply()).outcome == 1
            assert (await till.request(purchase(2, 5))).outcome == 1
            await till.send_raw(first)  # an attacker replays the first purchase
            with pytest.raises(RemoteProtocolError) as info:
                await till.next_event()  # the NAK answers a frame the device did not send: seq 1
            assert info.value.reason == NakReason.BAD_SEQUENCE
            assert gw.core.machine.tally.naks[NakReason.MAC_INVALID] == 1
            assert gw.core.state.accounts.balance[5] == 50_000 - 2 * 16_500
            # the device goes on: the NAK verified and is in both chains
            assert (await till.request(Heartbeat(1))).time_ms > 0

    asyncio.run(main())


def test_reordered_gateway_frames_are_refused_by_the_device(demo_dsn):
    """The DECISION and the DURABLE_ACK after it, delivered swapped: the device refuses the
    first to arrive, then takes them in their order."""
    async def main():
        async with running_gateway(demo_dsn, durable_ack_quiet_ms=10) as gw:
            till = await connect(gw, TILL, DeviceKind.TILL)
            await till.send_raw(till.conn.send(purchase(1, 5)))
            raw = b""
            while raw.count(b"\xec\x01\x05") < 2:
                raw += await asyncio.wait_for(till.reader.read(4096), 10)
            first_end = 14 + int.from_bytes(raw[3:5], "little") + 2
            decision, durable = raw[:first_end], raw[first_end:]
            assert decision[13] == 0x20 and durable[13] == 0x21
            till.conn.receive_data(durable)
            with pytest.raises(RemoteProtocolError) as info:
                till.conn.next_event()
            assert info.value.reason == NakReason.MAC_INVALID
            till.conn.receive_data(decision + durable)
            assert type(till.conn.next_event()) is Decision
            assert type(till.conn.next_event()) is DurableAck

    asyncio.run(main())


def test_altered_byte_is_refused_then_the_genuine_frame_is_decided(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            till = await connect(gw, TILL, DeviceKind.TILL)
            frame = bytearray(till.conn.send(purchase(1, 5)))
            frame[14 + 17] ^= 0x01  # total_kopecks: 16500 -> 16501 ... the MAC no longer fits
            await till.send_raw(resign(bytes(frame)))
            nak = await till.reply()
            assert type(nak) is Nak and nak.reason == NakReason.MAC_INVALID
            assert gw.core.state.accounts.balance[5] == 50_000
            assert (await till.request(purchase(1, 5))).outcome == 1  # same seq, new chain
            assert gw.core.state.accounts.balance[5] == 50_000 - 16_500

    asyncio.run(main())


def test_foreign_frames_and_the_reply_cache(demo_dsn):
    """A's frame on B's connection: DEVICE_MISMATCH (B gets nothing of A's). A's last frame on
    A's next session: MAC_INVALID, not the cached reply of the session it came from."""
    async def main():
        async with running_gateway(demo_dsn) as gw:
            a = await connect(gw, TILL, DeviceKind.TILL)
            frame = a.conn.send(purchase(1, 5))
            await a.send_raw(frame)
            assert (await a.reply()).outcome == 1
            b = await connect(gw, TILL2, DeviceKind.TILL)
            await b.send_raw(frame)
            raw = await b.read_raw_until_closed()  # fatal: the connection closes
            assert raw[13] == 0x7F and raw[14] == NakReason.DEVICE_MISMATCH and raw[14 + 2 + raw[15]:][:0] == b""
            a2 = await connect(gw, TILL, DeviceKind.TILL)  # A's new session (the old one is closed)
            await a2.send_raw(frame)
            raw = await asyncio.wait_for(a2.reader.read(4096), 10)
            assert raw[13] == 0x7F and raw[14] == NakReason.MAC_INVALID  # not the cached DECISION
            assert gw.core.state.accounts.balance[5] == 50_000 - 16_500

    asyncio.run(main())


# ---------------------------------------------------------------- roles by kind and school


def test_roles_by_device_kind(demo_dsn):
    async def main():
        await school_b(demo_dsn)
        async with running_gateway(demo_dsn) as gw:
            turnstile = await connect(gw, TURNSTILE, DeviceKind.TURNSTILE)
            sold = await turnstile.request(purchase(1, 5))  # a turnstile trying to sell
            assert (sold.outcome, sold.reason) == (0, DenyReason.WRONG_DEVICE_KIND)
            till = await connect(gw, TILL, DeviceKind.TILL)
            door = await till.request(CardPresented(1, 0, 1, 1, demo_card_uid(5)))  # a till opening a door
            assert (door.outcome, door.reason) == (0, DenyReason.WRONG_DEVICE_KIND)
            panel = await connect(gw, FIRE_PANEL, DeviceKind.FIRE_PANEL, await fire_panel_key(demo_dsn))
            for request in (purchase(1, 5), CardPresented(2, 0, 1, 1, demo_card_uid(5))):
                d = await panel.request(request)
                assert (d.outcome, d.reason) == (0, DenyReason.WRONG_DEVICE_KIND), request
            assert gw.core.state.accounts.balance[5] == 50_000

    asyncio.run(main())


def test_a_device_acts_only_for_its_own_school(demo_dsn):
    async def main():
        await school_b(demo_dsn)
        async with running_gateway(demo_dsn) as gw:
            till_a = await connect(gw, TILL, DeviceKind.TILL)
            d = await till_a.request(Purchase(1, 0, 1, 16_500, CARD_B, purchase(1, 5).items))
            assert (d.outcome, d.reason) == (0, DenyReason.WRONG_SCHOOL)
            turnstile_a = await connect(gw, TURNSTILE, DeviceKind.TURNSTILE)
            d = await turnstile_a.request(CardPresented(1, 0, 1, 1, CARD_B))
            assert (d.outcome, d.reason) == (0, DenyReason.WRONG_SCHOOL)
            # nor can a device of school A pass itself off as school B's till: it lacks its key
            impostor = await DeviceClient(TILL_B, DeviceKind.TILL, gw.port).connect()  # A's demo key scheme
            nak = await impostor.hello()
            assert type(nak) is Nak and nak.reason == NakReason.AUTH_FAILED
            till_b = await connect(gw, TILL_B, DeviceKind.TILL, TILL_B_KEY)
            d = await till_b.request(purchase(1, 5))  # school B's till, school A's pupil
            assert (d.outcome, d.reason) == (0, DenyReason.WRONG_SCHOOL)
            assert gw.core.state.accounts.balance[5] == 50_000
            assert gw.core.state.accounts.balance[2000] == 0

    asyncio.run(main())


# ---------------------------------------------------------------- revocation and rotation, through the staff API


def test_revoked_device_is_cut_off_at_once_and_refused(demo_dsn):
    from tests.staff_api.test_staff_api import make_api

    api, server = make_api(demo_dsn, command_wait_ms=3_000)

    async def main():
        async with running_gateway(demo_dsn) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            till = await connect(gw, TILL, DeviceKind.TILL)
            assert (await till.request(purchase(1, 5))).outcome == 1
            api.clock.fixed_ms = time.time_ns() // 1_000_000
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/devices/{TILL}/revoke")
            assert r.status_code == 200 and r.json()["revoked"], r.text
            started = time.monotonic()
            assert await till.read_raw_until_closed() == b""  # cut off: the gateway closed the session
            assert time.monotonic() - started < 2.0
            again = await DeviceClient(TILL, DeviceKind.TILL, gw.port).connect()
            nak = await again.hello()
            assert type(nak) is Nak and nak.reason == NakReason.DEVICE_REVOKED
            assert await again.read_raw_until_closed() == b""

    try:
        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()


def test_key_rotation_without_downtime(demo_dsn):
    from tests.staff_api.test_staff_api import make_api
    from storage.demo_dataset import demo_device_key

    api, server = make_api(demo_dsn, command_wait_ms=3_000)

    async def main():
        async with running_gateway(demo_dsn) as gw:
            await async_wait_until(lambda: gw.commands.connected, 10, "the change listener")
            old = await connect(gw, TURNSTILE, DeviceKind.TURNSTILE)
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/devices/{TURNSTILE}/key/rotate")
            assert r.status_code == 200, r.text
            next_key = bytes.fromhex(r.json()["key"])
            await async_wait_until(lambda: gw.core.state.devices[TURNSTILE].next_key == next_key, 2.0, "the next key")
            # the session under the old key goes on; the old key still opens sessions
            assert (await old.request(CardPresented(1, 0, 1, 1, demo_card_uid(5)))).outcome == 1
            new = await connect(gw, TURNSTILE, DeviceKind.TURNSTILE, next_key)  # re-keyed: replaces the old session
            assert await old.read_raw_until_closed() == b""
            r = await asyncio.to_thread(api.as_, "off1", "POST", f"/devices/{TURNSTILE}/key/promote")
            assert r.status_code == 200, r.text
            await async_wait_until(lambda: gw.core.state.devices[TURNSTILE].key == next_key, 2.0, "the promotion")
            # the session under the promoted key was not touched
            assert (await new.request(CardPresented(2, 0, 1, 1, demo_card_uid(5)))).outcome == 1
            stale = await DeviceClient(TURNSTILE, DeviceKind.TURNSTILE, gw.port, demo_device_key(TURNSTILE)).connect()
            nak = await stale.hello()
            assert type(nak) is Nak and nak.reason == NakReason.AUTH_FAILED  # the retired key opens nothing

    try:
        asyncio.run(main())
    finally:
        api.http.close()
        server.stop()

