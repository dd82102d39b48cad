"""A device whose counter went back (docs/protocol.md 10.15), against a real gateway and
PostgreSQL: its storage lost (an empty log) or restored from an older copy (an old log). Its
new requests are decided as new ones and journaled, never answered with what the gateway had
decided for the same txns of the device's earlier life."""

from __future__ import annotations

import asyncio
import shutil

import asyncpg

from protocol import DenyReason, DeviceKind, Direction
from simulators.device import Device, DeviceConfig
from storage.demo_dataset import demo_card_uid, demo_device_key, turnstile_ids
from tests.gateway.test_gateway import running_gateway

TURNSTILE = turnstile_ids()[0]


async def _walk_in(device: Device, pupil: int) -> int:
    """A pupil in through the turnstile: the grant's txn (asserting both steps were accepted)."""
    card = demo_card_uid(pupil)
    device.register_card(card, pupil)
    granted = await device.card_presented(card, Direction.IN)
    assert granted.reason == DenyReason.OK, DenyReason(granted.reason).name
    through = await device.passage(card, Direction.IN, granted.txn)
    assert through.reason == DenyReason.OK, DenyReason(through.reason).name
    return granted.txn


async def _journaled(dsn: str) -> dict[int, bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT device_txn, identifier FROM journal WHERE device_id = $1", TURNSTILE)
    finally:
        await conn.close()
    return {r["device_txn"]: bytes(r["identifier"]) for r in rows}


def _turnstile(port: int, log_dir) -> Device:
    return Device(TURNSTILE, DeviceKind.TURNSTILE, demo_device_key(TURNSTILE), DeviceConfig(host="127.0.0.1", port=port),
                  log_dir, seed=5)


def test_a_device_restored_from_an_old_log_or_with_none_goes_on_above_its_earlier_life(demo_dsn, tmp_path):
    life, old, recent = (tmp_path / name for name in ("life", "old", "recent"))

    async def restored(port: int, backup, name: str) -> Device:
        shutil.copytree(backup, tmp_path / name)
        device = _turnstile(port, tmp_path / name)
        await device.start()
        return device

    async def main() -> None:
        # The smallest window: the first life's early txns are forgotten (TXN_TOO_OLD), its last
        # 16 remembered (TXN_REUSED for another request).
        async with running_gateway(demo_dsn, idempotency_window_txns=16) as gw:
            first = _turnstile(gw.port, life)
            await first.start()
            for pupil in range(1, 21):  # txns 1..40, a grant and a passage each
                await _walk_in(first, pupil)
                if pupil in (1, 15):
                    assert await first.wait_settled(10)  # a copy with nothing kept in it
                if pupil == 1:
                    shutil.copytree(life, old)  # a copy a restore brings back: counter at 2
                elif pupil == 15:
                    shutil.copytree(life, recent)  # counter at 30
            assert await first.wait_settled(10)  # all durable: the gateway's watermark is 40
            await first.close()
            assert first.txn_high == 40

            # Restored from the recent copy: txn 31 is remembered as pupil 16's grant. NAK
            # TXN_REUSED, not pupil 16's ACCEPT: it moves past the gateway's watermark.
            again = await restored(gw.port, recent, "restored-recent")
            assert await _walk_in(again, 30) == 41
            assert again.stats.counter_caught_up == 1 and again.stats.duplicates == 0
            assert again.stats.naks.get("TXN_REUSED") == 1
            assert await again.wait_settled(10)
            await again.close()

            # Restored from the old copy: txn 3 is forgotten (TXN_TOO_OLD): the same move.
            older = await restored(gw.port, old, "restored-old")
            assert await _walk_in(older, 31) == 43
            assert older.stats.counter_caught_up == 1 and older.stats.duplicates == 0
            assert await older.wait_settled(10)
            await older.close()

            # Its storage lost altogether: an empty log starts at its first HELLO_ACK's watermark.
            fresh = _turnstile(gw.port, tmp_path / "empty")
            await fresh.start()
            assert await _walk_in(fresh, 32) == 45
            assert fresh.stats.counter_caught_up == 0 and fresh.stats.duplicates == 0
            assert await fresh.wait_settled(10)
            await fresh.close()
            assert gw.core.machine.tally.security["txn_reused"] == 1

        journal = await _journaled(demo_dsn)
        assert sorted(journal) == list(range(1, 47))  # every txn once, each life's under its own
        cards = list(journal.values())
        for pupil in (*range(1, 21), 30, 31, 32):
            assert cards.count(demo_card_uid(pupil)) == 2, pupil  # the grant and the passage

    asyncio.run(main())
