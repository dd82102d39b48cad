"""The fire drill: pupils come in, the fire panel raises the alarm, the gateway releases
every turnstile of the school and takes the muster, some pupils tap out through the released
arms, the panel resets. Seeded: the same seed sends the same taps in the same order.

Measured: how long each turnstile took to release after the panel sent FIRE_ALARM (until
its MODE arrived), and, with ``--pg-dsn``, that the muster the gateway journaled is
exactly the pupils the simulation left inside, with the exits reported during the
evacuation. A turnstile "offline" during the alarm never hears the gateway: it releases by
its wired fire input (docs/building.md) and reports its mode when it comes back.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol import DenyReason, DeviceKind, Direction, TurnstileMode
from storage.demo_dataset import FIRE_PANEL_ID, demo_card_uid, demo_device_key, turnstile_ids

from .device import Device, DeviceConfig, Stats

IN, OUT = int(Direction.IN), int(Direction.OUT)
# Every connected turnstile must be released within this after the alarm is answered
# (docs/building.md): a MODE frame per turnstile, sent in the same turn of the loop.
RELEASE_MS_MAX = 1_000


@dataclass
class FireReport:
    seed: int
    inside_expected: set[int]
    evacuated: set[int]
    release_ms: dict[int, float] = field(default_factory=dict)  # turnstile -> ms from the panel's FIRE_ALARM sent
    offline: list[int] = field(default_factory=list)
    offline_released_by_wire: bool = True
    offline_reported_normal: bool = True
    reset_ms: dict[int, float] = field(default_factory=dict)
    inside_already: set[int] = field(default_factory=set)  # the drill's pupils refused at the door as inside
    muster: set[int] | None = None  # from the journal (--pg-dsn)
    evacuated_journaled: set[int] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and all(ms <= RELEASE_MS_MAX for ms in self.release_ms.values())
            and self.offline_released_by_wire
            and self.offline_reported_normal
            and (self.muster is None or self.muster == self.inside_expected)
            and (self.evacuated_journaled is None or self.evacuated_journaled == self.evacuated)
        )

    def summary(self) -> str:
        worst = max(self.release_ms.values(), default=0.0)
        lines = [
            f"fire drill (seed {self.seed}): {len(self.inside_expected)} pupils inside at the alarm, "
            f"{len(self.evacuated)} tapped out during the evacuation"
            + (f" ({len(self.inside_already)} of the drill's pupils were inside already)" if self.inside_already else ""),
            f"released: {len(self.release_ms)} turnstiles online, slowest {worst:.1f} ms after the panel's alarm "
            f"(limit {RELEASE_MS_MAX} ms); offline during the alarm: {self.offline or 'none'} "
            f"(released by the wired input: {'yes' if self.offline_released_by_wire else 'NO'})",
            f"reset: back to normal in {max(self.reset_ms.values(), default=0.0):.1f} ms; "
            f"offline turnstiles back to normal on reconnect: {'yes' if self.offline_reported_normal else 'NO'}",
        ]
        if self.muster is not None:
            lines.append(
                f"muster journaled: {len(self.muster)} pupils, "
                f"{'exactly the simulated presence' if self.muster == self.inside_expected else 'MISMATCH'}; "
                f"evacuated journaled: {len(self.evacuated_journaled or ())}"
            )
        lines += [f"ERROR {e}" for e in self.errors]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


async def _walk(turnstile: Device, pupil: int, direction: int) -> DenyReason:
    """A tap and, when granted, the passage: OK, or the reason of the step that refused."""
    card = demo_card_uid(pupil)
    turnstile.register_card(card, pupil)
    granted = await turnstile.card_presented(card, direction)
    if granted.reason != DenyReason.OK:
        return DenyReason(granted.reason)
    through = await turnstile.passage(card, direction, granted.txn)
    return DenyReason(through.reason)


async def _wait_mode(devices: list[Device], mode: int, timeout_s: float, since: float) -> dict[int, float]:
    """device id -> ms from ``since`` (monotonic) until the MODE that put it in ``mode`` arrived."""
    done: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(devices) and time.monotonic() < deadline:
        for d in devices:
            if d.device_id not in done and d.mode == mode:
                done[d.device_id] = max(0.0, d.mode_at - since) * 1000
        if len(done) < len(devices):
            waits = [asyncio.create_task(d.mode_changed.wait()) for d in devices if d.device_id not in done]
            for d in devices:
                d.mode_changed.clear()
            await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
    return done


async def run_fire(
    host: str, port: int, *, pupils: int, turnstiles: int, seed: int, log_dir: Path, inside: int = 200,
    exit_share: float = 0.3, offline: int = 1, pg_dsn: str = "", timeout_s: float = 30.0,
) -> FireReport:
    rng = random.Random(f"{seed}/fire")
    config = DeviceConfig(host=host, port=port, deadline_s=timeout_s)
    stats = Stats()
    ids = turnstile_ids(turnstiles)
    devices = {d: Device(d, DeviceKind.TURNSTILE, demo_device_key(d), config, log_dir, seed=seed, stats=stats)
               for d in ids}
    panel = Device(FIRE_PANEL_ID, DeviceKind.FIRE_PANEL, demo_device_key(FIRE_PANEL_ID), config, log_dir, seed=seed,
                   stats=stats)
    offline_ids = ids[len(ids) - offline:] if offline else []
    online = [devices[d] for d in ids if d not in offline_ids]
    entering = rng.sample(range(1, pupils + 1), min(inside, pupils))
    leaving_early = set(rng.sample(entering, len(entering) // 10))  # went home before the alarm
    report = FireReport(seed, set(), set(), offline=list(offline_ids))
    try:
        for d in devices.values():
            await d.start()
        await panel.start()
        # Who is inside already (an earlier simulator's morning, with --pg-dsn): the muster counts
        # them too. Without the database the drill knows only its own pupils.
        before = await _inside(pg_dsn) if pg_dsn else set()
        # The morning: in through any turnstile; a few leave again. A pupil inside already is
        # refused by the school's anti-passback, and is inside all the same.
        for n, pupil in enumerate(entering):
            reason = await _walk(devices[ids[n % len(ids)]], pupil, IN)
            if reason == DenyReason.ANTI_PASSBACK and (pupil in before or not pg_dsn):
                report.inside_already.add(pupil)
            elif reason != DenyReason.OK:
                report.errors.append(f"pupil {pupil} was not let in: {reason.name}")
        for n, pupil in enumerate(sorted(leaving_early)):
            reason = await _walk(devices[ids[n % len(ids)]], pupil, OUT)
            if reason != DenyReason.OK:
                report.errors.append(f"pupil {pupil} was not let out: {reason.name}")
        report.inside_expected = (before | set(entering)) - leaving_early
        for d in offline_ids:  # the network to these turnstiles is cut before the alarm
            await devices[d].close()
        # The alarm. The panel's wire reaches every turnstile, online or not.
        for d in devices.values():
            d.fire_input = True
        sent = time.monotonic()
        answered = await panel.fire_alarm()
        if answered.reason != DenyReason.OK:
            report.errors.append(f"FIRE_ALARM answered {DenyReason(answered.reason).name}")
        report.release_ms = await _wait_mode(online, TurnstileMode.RELEASED, timeout_s, sent)
        for d in online:
            if d.device_id not in report.release_ms:
                report.errors.append(f"turnstile {d.device_id} was never told to release")
        report.offline_released_by_wire = all(devices[d].released for d in offline_ids)
        # The evacuation: some pupils tap out through the released arms (the rest just run).
        drill_inside = sorted(set(entering) - leaving_early)  # the drill's own pupils tap out, as before
        evacuating = sorted(rng.sample(drill_inside, int(len(drill_inside) * exit_share)))
        for n, pupil in enumerate(evacuating):
            reason = await _walk(online[n % len(online)], pupil, OUT)
            if reason == DenyReason.OK:
                report.evacuated.add(pupil)
            else:
                report.errors.append(f"pupil {pupil} could not tap out during the alarm: {reason.name}")
        # The reset at the panel: the wire opens, the gateway returns every turnstile to normal.
        for d in devices.values():
            d.fire_input = False
        sent = time.monotonic()
        reset = await panel.fire_reset()
        if reset.reason != DenyReason.OK:
            report.errors.append(f"FIRE_RESET answered {DenyReason(reset.reason).name}")
        report.reset_ms = await _wait_mode(online, TurnstileMode.NORMAL, timeout_s, sent)
        # The offline turnstiles come back, still released by the gateway's last word (none),
        # report their mode and are told NORMAL.
        for d in offline_ids:
            back = Device(d, DeviceKind.TURNSTILE, demo_device_key(d), config, log_dir, seed=seed, stats=stats)
            back.mode, back.alarm_at_ms = int(TurnstileMode.RELEASED), 1  # as they were left
            devices[d] = back
            await back.start()
        comeback = await _wait_mode([devices[d] for d in offline_ids], TurnstileMode.NORMAL, timeout_s, time.monotonic())
        report.offline_reported_normal = len(comeback) == len(offline_ids)
        for d in list(devices.values()) + [panel]:
            if not await d.wait_settled(timeout_s):
                report.errors.append(f"device {d.device_id}: accepted txns not all durable")
        if pg_dsn:
            report.muster, report.evacuated_journaled = await _journaled(pg_dsn, answered_txn=answered.txn)
    finally:
        for d in list(devices.values()) + [panel]:
            await d.close()
    report.errors += stats.errors
    return report


async def _inside(dsn: str) -> set[int]:
    """The pupils of the demo school the gateway's checkpoints have inside now."""
    import asyncpg

    from ledger.codes import Presence
    from storage import building
    from storage.demo_dataset import DEMO_SCHOOL_ID

    conn = await asyncpg.connect(dsn)
    try:
        rows = await building.presence(conn, DEMO_SCHOOL_ID, int(time.time() * 1000))
    finally:
        await conn.close()
    return {r.account_id for r in rows if r.presence == Presence.INSIDE}


async def _journaled(dsn: str, *, answered_txn: int) -> tuple[set[int], set[int]]:
    import asyncpg

    from ledger.codes import AccessKind, JournalKind

    conn = await asyncpg.connect(dsn)
    try:
        alarm_at = await conn.fetchval(
            "SELECT at_ms FROM access_events WHERE kind = $1 AND device_id = $2 AND device_txn = $3",
            int(AccessKind.FIRE_ALARM), FIRE_PANEL_ID, answered_txn)
        muster = {r[0] for r in await conn.fetch(
            "SELECT account_id FROM access_events WHERE kind = $1 AND device_id = $2 AND device_txn = $3",
            int(AccessKind.MUSTERED), FIRE_PANEL_ID, answered_txn)}
        reset_at = await conn.fetchval(
            "SELECT min(at_ms) FROM access_events WHERE kind = $1 AND at_ms >= $2", int(AccessKind.FIRE_RESET), alarm_at)
        evacuated = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT account_id FROM journal WHERE kind = $1 AND direction = $2 AND decided_at_ms >= $3"
            " AND decided_at_ms <= $4",
            int(JournalKind.PASSAGE), OUT, alarm_at, reset_at or 2**62)}
    finally:
        await conn.close()
    # Exits of mustered pupils only: one who left before the alarm in its very millisecond
    # is not in the muster, and not evacuated.
    return muster, evacuated & muster
