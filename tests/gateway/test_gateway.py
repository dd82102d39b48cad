"""The gateway end to end, in process: real sockets, real PostgreSQL, the demo dataset."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct
import urllib.request

import asyncpg
import pytest

from gateway.app import Gateway
from gateway.config import load_config
from gateway.metrics import GcPauses
from protocol import (
    CLOSED,
    DECISION_FLAG_DUPLICATE,
    TXN_FLAG_ADVICE,
    BalanceQuery,
    CardPresented,
    Decision,
    DenyReason,
    DeviceKind,
    HelloAck,
    Heartbeat,
    Item,
    Nak,
    NakReason,
    Purchase,
    TopupCash,
    encode_frame,
)
from storage.demo_dataset import demo_card_uid, demo_unknown_uid, till_ids, turnstile_ids
from tests.device_client import DeviceClient
from tests.support import async_wait_until

TURNSTILE = turnstile_ids()[0]
TILL = till_ids()[0]
TILL2 = till_ids()[1]


@contextlib.asynccontextmanager
async def running_gateway(dsn: str, **overrides):
    config = load_config(env={}, **{"pg_dsn": dsn, "listen_port": 0, "metrics_port": 0, "progress_interval_ms": 0,
                                    **overrides})
    gateway = Gateway(config)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def device(gateway: Gateway, device_id: int, kind: int, hello: bool = True) -> DeviceClient:
    d = await DeviceClient(device_id, kind, gateway.port).connect()
    if hello:
        ack = await d.hello()
        assert type(ack) is HelloAck, ack
    return d


def purchase(txn: int, account: int, price: int = 16_500, qty: int = 1, flags: int = 0) -> Purchase:
    return Purchase(txn, flags, 1, price * qty, demo_card_uid(account), (Item(2, qty, price),))


async def fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def balance(dsn: str, account: int) -> int:
    return (await fetch(dsn, "SELECT balance_kopecks FROM accounts WHERE id = $1", account))[0][0]


async def wait_durable(d: DeviceClient, txn: int) -> None:
    while d.durable_txn < txn:
        event = await d.next_event()
        if hasattr(event, "durable_txn") and type(event).__name__ == "DurableAck":
            d.durable_txn = max(d.durable_txn, event.durable_txn)


# ---------------------------------------------------------------- the happy path


def test_taps_are_decided_journaled_and_acknowledged_durable(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            t = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            d = await t.request(CardPresented(1, 0, 1, 1, demo_card_uid(7)))
            assert (d.outcome, d.reason, d.template_id) == (1, DenyReason.OK, 100)
            till = await device(gw, TILL, DeviceKind.TILL)
            d = await till.request(purchase(1, 7))
            assert (d.outcome, d.balance_kopecks, d.params) == (1, 50_000 - 16_500, (16_500, 33_500))
            d = await till.request(TopupCash(2, 0, 1, 1_000, 3, demo_card_uid(7)))
            assert d.balance_kopecks == 34_500
            d = await till.request(BalanceQuery(demo_card_uid(7)))
            assert (d.txn, d.balance_kopecks) == (0, 34_500)
            hb = await till.request(Heartbeat(5))
            assert type(hb) is Heartbeat
            await asyncio.wait_for(wait_durable(till, 2), 10)
            await asyncio.wait_for(wait_durable(t, 1), 10)
            rows = await fetch(demo_dsn, "SELECT device_id, device_txn, kind, amount_kopecks FROM journal ORDER BY 1, 2")
            assert [tuple(r) for r in rows] == [(TURNSTILE, 1, 1, 0), (TILL, 1, 3, 16_500), (TILL, 2, 4, 1_000)]
            assert await balance(demo_dsn, 7) == 34_500
            total = await fetch(demo_dsn, "SELECT sum(balance_kopecks) FROM accounts")
            assert total[0][0] == 0
            assert gw.core.state.devices[TILL].durable_txn == 2
            text = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).read().decode()
            assert 'ecard_decisions_total{kind="purchase",reason="OK"} 1.0' in text
            assert 'ecard_devices_connected{kind="till"} 1.0' in text
            assert 'ecard_event_loop_lag_ms_count' in text and 'ecard_durable_lag_ms_count' in text
            assert all(f'ecard_gc_pause_us_count{{generation="{g}"}}' in text for g in (0, 1, 2))
            await t.close()
            await till.close()

    asyncio.run(main())
    assert not [c for c in gc.callbacks if isinstance(c, GcPauses)], "a stopped gateway leaves no GC hook behind"


# ---------------------------------------------------------------- HELLO and authentication


@pytest.mark.parametrize(
    "case, reason",
    [
        ("unknown device", NakReason.UNKNOWN_DEVICE),
        ("wrong key", NakReason.AUTH_FAILED),
        ("clock skew", NakReason.AUTH_FAILED),
        ("wrong kind", NakReason.AUTH_FAILED),
    ],
)
def test_hello_refused_and_connection_closed(demo_dsn, case, reason):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            if case == "unknown device":
                d = await DeviceClient(999, DeviceKind.TURNSTILE, gw.port, key=b"k" * 16).connect()
                reply = await d.hello()
            elif case == "wrong key":
                d = await DeviceClient(TURNSTILE, DeviceKind.TURNSTILE, gw.port, key=b"x" * 16).connect()
                reply = await d.hello()
            elif case == "clock skew":
                d = await DeviceClient(TURNSTILE, DeviceKind.TURNSTILE, gw.port).connect()
                reply = await d.hello(time_ms=1_000)
            else:
                d = await DeviceClient(TURNSTILE, DeviceKind.TILL, gw.port).connect()
                reply = await d.hello()
            assert type(reply) is Nak and reply.reason == reason
            assert await d.read_raw_until_closed() == b""
            assert gw.core.sessions.of_device(TURNSTILE) is None

    asyncio.run(main())


def test_replayed_hello_nonce_refused(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TURNSTILE, DeviceKind.TURNSTILE, gw.port).connect()
            hello = d.hello_event(nonce=b"n" * 16)
            assert type(await d.request(hello)) is HelloAck
            await d.close()
            again = await DeviceClient(TURNSTILE, DeviceKind.TURNSTILE, gw.port).connect()
            reply = await again.request(hello)  # the same signed bytes, captured and replayed
            assert type(reply) is Nak and reply.reason == NakReason.AUTH_FAILED

    asyncio.run(main())


def test_request_before_hello_is_out_of_state(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TURNSTILE, DeviceKind.TURNSTILE, gw.port).connect()
            await d.send_raw(encode_frame(TURNSTILE, 1, CardPresented(1, 0, 1, 1, demo_card_uid(1)), reply=False))
            d.conn._pending_seq = 1
            d.conn.state = d.conn.state.__class__.BUSY
            reply = await d.reply()
            assert type(reply) is Nak and reply.reason == NakReason.OUT_OF_STATE
            assert gw.core.metrics.decision_count() == 0

    asyncio.run(main())


def test_new_session_replaces_the_old_one(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            first = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            second = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            assert await first.read_raw_until_closed() == b""
            d = await second.request(CardPresented(1, 0, 1, 1, demo_card_uid(1)))
            assert d.outcome == 1

    asyncio.run(main())


# ---------------------------------------------------------------- bad frames


@pytest.mark.parametrize(
    "mutate, reason, fatal",
    [
        (lambda f: f[:-1] + bytes([f[-1] ^ 0xFF]), NakReason.BAD_CRC, False),
        (lambda f: b"\x00" + f[1:], NakReason.BAD_START_BYTE, True),
        (lambda f: f[:1] + b"\x02" + f[2:], NakReason.UNSUPPORTED_VERSION, True),
        (lambda f: f[:3] + struct.pack("<H", 2000) + f[5:], NakReason.FRAME_TOO_LARGE, True),
    ],
)
def test_bad_frames_get_a_nak_with_reason(demo_dsn, mutate, reason, fatal):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            good = d.conn.send(purchase(1, 3))
            await d.send_raw(mutate(good))
            reply = await d.reply()
            assert type(reply) is Nak and reply.reason == reason
            if fatal:
                assert await d.read_raw_until_closed() == b""
            else:
                # The NAKed frame took no sequence number: the device sends it again as it was.
                decided = await d.request(purchase(1, 3))
                assert type(decided) is Decision and decided.outcome == 1
            assert gw.core.state.accounts.balance[3] == (33_500 if not fatal else 50_000)

    asyncio.run(main())


def test_malformed_payload_takes_its_sequence_and_is_nakked(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            good = purchase(1, 3)
            bad_total = good.encode_payload()
            bad_total = bad_total[:17] + struct.pack("<I", 1) + bad_total[21:]  # total != sum of items
            await d.send_raw(d.crafted(good, bad_total))  # framed and MACed as the device would
            reply = await d.reply()
            assert type(reply) is Nak and reply.reason == NakReason.MALFORMED_PAYLOAD
            assert gw.core.state.accounts.balance[3] == 50_000
            decided = await d.request(purchase(2, 3))  # the session goes on at seq 2
            assert decided.outcome == 1

    asyncio.run(main())


# ---------------------------------------------------------------- retries and idempotency


def test_retransmit_gets_identical_bytes_and_is_decided_once(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            first = await d.request(purchase(1, 11))
            await d.send_raw(d.conn.last_request_bytes() if hasattr(d.conn, "last_request_bytes") else d.conn._last_request)
            raw = await asyncio.wait_for(d.reader.read(65536), 5)
            assert raw == gw.core.sessions.of_device(TILL).conn._last_reply
            assert gw.core.state.accounts.balance[11] == 50_000 - 16_500
            assert first.outcome == 1

    asyncio.run(main())


def test_duplicate_txn_in_a_new_session_repeats_the_decision_without_applying(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            first = await d.request(purchase(1, 12))
            denied = await d.request(purchase(2, 12, price=1_000_000))
            assert denied.reason == DenyReason.INSUFFICIENT_FUNDS
            await d.close()
            d = await device(gw, TILL, DeviceKind.TILL)
            again = await d.request(purchase(1, 12))
            assert again.flags == DECISION_FLAG_DUPLICATE and again.balance_kopecks == first.balance_kopecks
            again_denied = await d.request(purchase(2, 12, price=1_000_000))
            assert again_denied.reason == DenyReason.INSUFFICIENT_FUNDS and again_denied.flags == DECISION_FLAG_DUPLICATE
            assert gw.core.state.accounts.balance[12] == 50_000 - 16_500

    asyncio.run(main())


def test_txn_must_increase_within_a_session(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            assert (await d.request(purchase(5, 13))).outcome == 1
            reply = await d.request(purchase(4, 13))
            assert type(reply) is Nak and reply.reason == NakReason.TXN_OUT_OF_ORDER
            assert gw.core.state.accounts.balance[13] == 50_000 - 16_500

    asyncio.run(main())


def test_txn_below_the_idempotency_window_is_too_old(demo_dsn):
    """Durable txns beyond the window are forgotten: a resend of one cannot be answered."""

    async def main():
        async with running_gateway(demo_dsn, idempotency_window_txns=16) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            for txn in range(1, 21):
                assert (await d.request(purchase(txn, 14, price=100))).outcome == 1
            await asyncio.wait_for(wait_durable(d, 20), 10)
            assert (await d.request(purchase(21, 14, price=100))).outcome == 1  # evicts 1..5
            state = gw.core.state.devices[TILL]
            assert state.forgotten_txn_max == 5 and len(state.recent) == 16
            await d.close()
            d = await device(gw, TILL, DeviceKind.TILL)
            old = await d.request(purchase(3, 14, price=100))
            assert old.reason == DenyReason.TXN_TOO_OLD
            remembered = await d.request(purchase(10, 14, price=100))
            assert remembered.outcome == 1 and remembered.flags == DECISION_FLAG_DUPLICATE
            assert gw.core.state.accounts.balance[14] == 50_000 - 21 * 100

    asyncio.run(main())


def test_accepted_txns_not_yet_durable_are_never_forgotten(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn, idempotency_window_txns=16, flush_interval_ms=1000, batch_events_max=1000) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            for txn in range(1, 41):
                assert (await d.request(purchase(txn, 17, price=100))).outcome == 1
            state = gw.core.state.devices[TILL]
            assert state.forgotten_txn_max == 0 and len(state.recent) == 40
            await d.close()
            d = await device(gw, TILL, DeviceKind.TILL)
            replay = await d.request(purchase(1, 17, price=100, flags=TXN_FLAG_ADVICE))
            assert replay.outcome == 1 and replay.flags == DECISION_FLAG_DUPLICATE
            assert gw.core.state.accounts.balance[17] == 50_000 - 40 * 100

    asyncio.run(main())


def test_after_a_restart_replays_are_applied_once(demo_dsn):
    """The gateway restarts; a replay of a durable txn is a duplicate, a lost one is applied."""

    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            await d.request(purchase(1, 15))
            await asyncio.wait_for(wait_durable(d, 1), 10)
            await d.close()
        async with running_gateway(demo_dsn) as gw:
            assert gw.core.state.accounts.balance[15] == 50_000 - 16_500
            d = await device(gw, TILL, DeviceKind.TILL)
            replay = await d.request(purchase(1, 15, flags=TXN_FLAG_ADVICE))
            assert replay.outcome == 1 and replay.flags == DECISION_FLAG_DUPLICATE
            # An advice the gateway never saw (accepted offline): applied, never declined,
            # even though it overdraws the account.
            offline = await d.request(purchase(2, 15, price=40_000, flags=TXN_FLAG_ADVICE))
            assert offline.outcome == 1 and offline.balance_kopecks == 33_500 - 40_000
            await asyncio.wait_for(wait_durable(d, 2), 10)
        assert await balance(demo_dsn, 15) == 33_500 - 40_000
        rows = await fetch(demo_dsn, "SELECT count(*) FROM journal WHERE device_id = $1", TILL)
        assert rows[0][0] == 2

    asyncio.run(main())


def test_hello_ack_carries_the_durable_watermark(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            d = await device(gw, TILL2, DeviceKind.TILL)
            await d.request(purchase(41, 16, price=100))
            await asyncio.wait_for(wait_durable(d, 41), 10)
            await d.close()
        async with running_gateway(demo_dsn) as gw:
            d = await DeviceClient(TILL2, DeviceKind.TILL, gw.port).connect()
            ack = await d.hello()
            assert type(ack) is HelloAck and ack.durable_txn == 41

    asyncio.run(main())


# ---------------------------------------------------------------- limits and overload


def test_connection_limit_refuses_with_server_busy(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn, connections_max=2) as gw:
            a = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            b = await device(gw, TILL, DeviceKind.TILL)
            c = await DeviceClient(TILL2, DeviceKind.TILL, gw.port).connect()
            reply = await c.next_event()
            assert type(reply) is Nak and reply.reason == NakReason.SERVER_BUSY
            assert await c.read_raw_until_closed() == b""
            await a.close()
            await b.close()

    asyncio.run(main())


def test_unknown_card_denied_and_not_journaled(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn) as gw:
            t = await device(gw, TURNSTILE, DeviceKind.TURNSTILE)
            d = await t.request(CardPresented(1, 0, 1, 1, demo_unknown_uid(1)))
            assert d.outcome == 0 and d.reason == DenyReason.UNKNOWN_CARD and d.template_id == DenyReason.UNKNOWN_CARD
            ok = await t.request(CardPresented(2, 0, 1, 1, demo_card_uid(1)))
            await asyncio.wait_for(wait_durable(t, 2), 10)
        rows = await fetch(demo_dsn, "SELECT device_txn FROM journal")
        assert [r[0] for r in rows] == [2] and ok.outcome == 1

    asyncio.run(main())


def test_ordered_shutdown_flushes_everything_accepted(demo_dsn):
    async def main():
        async with running_gateway(demo_dsn, flush_interval_ms=1000, batch_events_max=10_000) as gw:
            d = await device(gw, TILL, DeviceKind.TILL)
            for txn in range(1, 51):
                assert (await d.request(purchase(txn, 20 + txn % 5, price=100))).outcome == 1
            assert gw.core.journal.depth > 0  # nothing flushed yet: the interval is long
        rows = await fetch(demo_dsn, "SELECT count(*) FROM journal")
        assert rows[0][0] == 50

    asyncio.run(main())
