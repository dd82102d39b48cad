"""Seeded scenarios: the morning rush at the turnstiles and lunch at the tills.

What each device sends is planned from ``random.Random(seed)`` before the run
starts (never the global RNG, never the clock), so a run with the same seed
sends the same taps and baskets in the same order per device. Only timing
(and thus interleaving across devices) differs between runs.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from protocol import DenyReason, DeviceKind, Direction, Outcome
from storage.demo_dataset import (
    DEMO_OPENING_BALANCE_KOPECKS,
    DEMO_PRODUCTS,
    demo_card_uid,
    demo_device_key,
    demo_unknown_uid,
    till_ids,
    turnstile_ids,
)

from .device import Decision, Device, DeviceConfig, Stats

TRY_AGAIN_LATER = int(DenyReason.TRY_AGAIN_LATER)
IN, OUT = int(Direction.IN), int(Direction.OUT)
TOPUP_AMOUNTS_KOPECKS = (10_000, 20_000, 30_000, 50_000, 100_000)
CASHIERS = 5


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Action:
    at_s: float  # offset from the start of the run
    op: str  # "entry" | "purchase" | "topup" | "balance"
    identifier: bytes
    account_id: int | None
    direction: int = IN
    passage: bool = True
    items: tuple[tuple[int, int, int], ...] = ()
    amount_kopecks: int = 0
    cashier_id: int = 0


def normal_basket(rng: random.Random) -> tuple[tuple[int, int, int], ...]:
    """1-4 distinct products, usually one of each (a tray: a meal, a drink, a pastry)."""
    n = rng.choices((1, 2, 3, 4), weights=(35, 35, 20, 10))[0]
    products = rng.sample(DEMO_PRODUCTS, n)
    return tuple((code, 2 if rng.random() < 0.1 else 1, price) for code, _name, price in products)


def greedy_basket(rng: random.Random) -> tuple[tuple[int, int, int], ...]:
    """A pupil buying lunch for the whole group: more than an untouched opening balance."""
    items: list[tuple[int, int, int]] = []
    total = 0
    for code, _name, price in rng.sample(DEMO_PRODUCTS, 4):
        qty = rng.randint(3, 6)
        items.append((code, qty, price))
        total += qty * price
    while total <= DEMO_OPENING_BALANCE_KOPECKS:
        code, qty, price = items[0]
        items[0] = (code, qty + 1, price)
        total += price
    return tuple(items)


def plan_rush(
    seed: int, pupils: int, turnstiles: int, window_s: float, *, exit_rate: float = 0.0,
    no_passage_rate: float = 0.05, unknown_rate: float = 0.02,
) -> list[list[Action]]:
    """Per turnstile, the taps in time order: arrivals over ``window_s``, optional exits after."""
    rng = random.Random(f"{seed}/rush")
    plans: list[list[Action]] = [[] for _ in range(turnstiles)]
    for pupil in range(1, pupils + 1):
        at = rng.uniform(0, window_s)
        gate = rng.randrange(turnstiles)
        if rng.random() < unknown_rate:
            ident, account = demo_unknown_uid(pupil), None
        else:
            ident, account = demo_card_uid(pupil), pupil
        passage = rng.random() >= no_passage_rate
        plans[gate].append(Action(at, "entry", ident, account, IN, passage))
        if account is not None and passage and rng.random() < exit_rate:
            out_at = at + rng.uniform(0.25, 0.5) * window_s
            plans[rng.randrange(turnstiles)].append(Action(out_at, "entry", ident, account, OUT, True))
    for plan in plans:
        plan.sort(key=lambda a: a.at_s)
    return plans


def plan_lunch(
    seed: int, pupils: int, tills: int, window_s: float, *, waves: int = 3, topup_rate: float = 0.08,
    balance_rate: float = 0.05, greedy_rate: float = 0.03, unknown_rate: float = 0.01,
) -> list[list[Action]]:
    """Per till, in time order: each pupil comes once, in one of ``waves`` waves."""
    rng = random.Random(f"{seed}/lunch")
    plans: list[list[Action]] = [[] for _ in range(tills)]
    wave_s = window_s / waves
    for pupil in range(1, pupils + 1):
        at = rng.randrange(waves) * wave_s + rng.uniform(0, wave_s)
        till = rng.randrange(tills)
        plan = plans[till]
        r = rng.random()
        ident, account = demo_card_uid(pupil), pupil
        if r < unknown_rate:
            plan.append(Action(at, "purchase", demo_unknown_uid(pupil), None, items=normal_basket(rng)))
            continue
        r -= unknown_rate
        if r < greedy_rate:  # never tops up in this run: the basket is more than the balance
            plan.append(Action(at, "purchase", ident, account, items=greedy_basket(rng)))
            continue
        r -= greedy_rate
        if r < topup_rate:
            amount = rng.choice(TOPUP_AMOUNTS_KOPECKS)
            plan.append(Action(at, "topup", ident, account, amount_kopecks=amount, cashier_id=rng.randint(1, CASHIERS)))
        elif r - topup_rate < balance_rate:
            plan.append(Action(at, "balance", ident, account))
        plan.append(Action(at, "purchase", ident, account, items=normal_basket(rng)))
    for plan in plans:
        plan.sort(key=lambda a: a.at_s)  # stable: a pupil's top-up stays before their purchase
    return plans


def random_action(rng: random.Random, kind: int, pupils: int) -> Action:
    """One action of the endless mixed load (crash driver)."""
    if kind == DeviceKind.TURNSTILE:
        if rng.random() < 0.02:
            return Action(0, "entry", demo_unknown_uid(rng.randint(1, 1 << 20)), None, IN, False)
        pupil = rng.randint(1, pupils)
        return Action(0, "entry", demo_card_uid(pupil), pupil, rng.choice((IN, OUT)), rng.random() >= 0.05)
    pupil = rng.randint(1, pupils)
    ident = demo_card_uid(pupil)
    r = rng.random()
    if r < 0.12:
        return Action(0, "topup", ident, pupil, amount_kopecks=rng.choice(TOPUP_AMOUNTS_KOPECKS),
                      cashier_id=rng.randint(1, CASHIERS))
    if r < 0.16:
        return Action(0, "balance", ident, pupil)
    if r < 0.18:
        return Action(0, "purchase", demo_unknown_uid(pupil), None, items=normal_basket(rng))
    if r < 0.20:
        return Action(0, "purchase", ident, pupil, items=greedy_basket(rng))
    return Action(0, "purchase", ident, pupil, items=normal_basket(rng))


# --------------------------------------------------------------------------- execution


async def retrying(call: Callable[[], Awaitable[Decision]], attempts: int = 50) -> Decision:
    """TRY_AGAIN_LATER: nothing was applied; try again later (each call takes a new txn)."""
    decision = await call()
    for attempt in range(attempts):
        if decision.outcome == Outcome.ACCEPT or decision.reason != TRY_AGAIN_LATER:
            break
        await asyncio.sleep(min(0.5, 0.02 * (attempt + 1)))
        decision = await call()
    return decision


async def perform(device: Device, action: Action) -> None:
    ident = action.identifier
    device.register_card(ident, action.account_id)
    if action.op == "entry":
        tap = await retrying(lambda: device.card_presented(ident, action.direction))
        if tap.outcome == Outcome.ACCEPT and action.passage:
            await device.passage(ident, action.direction, tap.txn)
    elif action.op == "purchase":
        await retrying(lambda: device.purchase(ident, list(action.items)))
    elif action.op == "topup":
        await retrying(lambda: device.topup(ident, action.amount_kopecks, action.cashier_id))
    elif action.op == "balance":
        await device.balance(ident)
    else:  # pragma: no cover
        raise ValueError(action.op)


@dataclass
class Fleet:
    """The devices of one run, sharing one Stats."""

    host: str
    port: int
    log_dir: Path
    seed: int
    disconnect_rate: float = 0.0
    deadline_s: float = 120.0
    reply_timeout_s: float = 1.0
    stats: Stats = field(default_factory=Stats)
    devices: list[Device] = field(default_factory=list)

    def add(self, device_id: int, kind: DeviceKind) -> Device:
        cfg = DeviceConfig(
            self.host, self.port, disconnect_rate=self.disconnect_rate, deadline_s=self.deadline_s,
            reply_timeout_s=self.reply_timeout_s,
        )
        device = Device(device_id, kind, demo_device_key(device_id), cfg, self.log_dir, seed=self.seed, stats=self.stats)
        self.devices.append(device)
        return device

    async def start(self) -> None:
        await asyncio.gather(*(d.start() for d in self.devices))

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every device's accepted txns are covered by DURABLE_ACKs."""
        results = await asyncio.gather(*(d.wait_settled(timeout_s) for d in self.devices))
        return all(results)

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.devices), return_exceptions=True)


async def _progress(stats: Stats, interval_s: float, out) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        print(f"[{time.monotonic() - started:6.1f}s] {stats.progress_line()}", file=out, flush=True)


async def play(fleet: Fleet, plans: list[list[Action]], *, progress_s: float = 2.0, settle_s: float = 30.0,
               out=sys.stdout) -> bool:
    """Run one plan per device (in time order), then wait until everything is durable."""
    await fleet.start()
    progress = asyncio.create_task(_progress(fleet.stats, progress_s, out)) if progress_s > 0 else None
    t0 = time.monotonic()

    async def worker(device: Device, plan: list[Action]) -> None:
        for action in plan:
            delay = t0 + action.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await perform(device, action)

    try:
        await asyncio.gather(*(worker(d, p) for d, p in zip(fleet.devices, plans)))
        settled = await fleet.settle(settle_s)
    finally:
        if progress is not None:
            progress.cancel()
        await fleet.close()
    return settled


async def run_rush(host: str, port: int, *, pupils: int, seed: int, turnstiles: int, log_dir: Path,
                   window_s: float, disconnect_rate: float = 0.0, exit_rate: float = 0.0,
                   progress_s: float = 2.0, deadline_s: float = 120.0, out=sys.stdout) -> tuple[Stats, bool]:
    fleet = Fleet(host, port, Path(log_dir), seed, disconnect_rate, deadline_s)
    for device_id in turnstile_ids(turnstiles):
        fleet.add(device_id, DeviceKind.TURNSTILE)
    plans = plan_rush(seed, pupils, turnstiles, window_s, exit_rate=exit_rate)
    settled = await play(fleet, plans, progress_s=progress_s, out=out)
    return fleet.stats, settled


async def run_lunch(host: str, port: int, *, pupils: int, seed: int, tills: int, log_dir: Path,
                    window_s: float, waves: int = 3, disconnect_rate: float = 0.0, progress_s: float = 2.0,
                    deadline_s: float = 120.0, out=sys.stdout) -> tuple[Stats, bool]:
    fleet = Fleet(host, port, Path(log_dir), seed, disconnect_rate, deadline_s)
    for device_id in till_ids(tills):
        fleet.add(device_id, DeviceKind.TILL)
    plans = plan_lunch(seed, pupils, tills, window_s, waves=waves)
    settled = await play(fleet, plans, progress_s=progress_s, out=out)
    return fleet.stats, settled


def parse_gateway(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1"), int(port)


__all__ = [
    "Action", "Fleet", "parse_gateway", "perform", "plan_lunch", "plan_rush", "play", "random_action",
    "retrying", "run_lunch", "run_rush",
]
