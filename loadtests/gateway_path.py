"""The gateway's device path in one process: instructions and CPU per decision, no sockets.

    python -m loadtests.gateway_path [--decisions 40000] [--callgrind] [--check] [--profile FILE]

What ``loadtests.machine`` measures plus everything the gateway does around the machine,
as ``make bench``'s held phase has it: 1,000 devices (600 turnstiles tapping CARD_PRESENTED,
each grant followed by its PASSAGE, and 400 tills selling baskets of the ``mixed`` workload),
each request a secure-channel frame
(MAC verified, reply and DURABLE_ACK MACed) through ``DeviceSession.data_received``, the
decision latency recorded, the journal writer's batch (``JournalWriter._flush_once``: the
batch gathered and encoded as the statement's parameters) every ``--batch`` entries (64:
about one flush interval at the held rate), handed to a connection that stores nothing,
then ``GatewayCore.on_commit`` (watermarks, DURABLE_ACKs with the next replies). What it
leaves out is what the ceiling server pays too (the event loop, the socket calls) and
PostgreSQL.

The request frames depend on the replies (each MAC chains from the peer's last frame), so
they are recorded first by real device ``Connection``s against one gateway, then replayed
into a second one built the same way: only the replay is measured. ``--check`` compares its
replies with the recorded ones byte for byte, and its journal batches. ``--callgrind`` runs
the replay of N and of N/2 decisions under ``valgrind --tool=callgrind`` (both record the
same frames) and reports the difference per decision: instructions, stable on a busy machine.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from gateway.app import DeviceSession, GatewayCore, GatewayMetrics  # the in-process gateway, as app.py builds it
from gateway.config import Config, machine_limits
from ledger.codes import AccountKind
from ledger.machine import Machine
from ledger.state import NO_LIMIT, DeviceState, LedgerState, MealPeriod, Policy, Product
from protocol import CardPresented, Connection, Decision, DeviceKind, Hello, Item, NEED_DATA, Passage, Purchase, Role
from protocol.auth import sign_hello
from storage.demo_dataset import TILL_ID_BASE, TURNSTILE_ID_BASE, demo_card_uid, demo_device_key
from storage.journal import JournalWriter

from .workloads import baskets, split_devices, workload

NOW_MS = 1_795_550_000_000  # a fixed clock: the replay decides exactly as the recording did
PUPILS = 100_000
DEVICES = 1_000
BATCH = 64
SCHOOL = 1


def school(turnstiles: int, tills: int) -> LedgerState:
    """One school like the demo dataset's: pupils with 500 rubles, the canteen's accounts, devices."""
    state = LedgerState()
    state.school_offset_ms = {SCHOOL: 180 * 60_000}
    opening, revenue, free_meals = PUPILS + 1, PUPILS + 2, PUPILS + 3
    state.accounts.grow_to(PUPILS + 4 + tills)
    for p in range(1, PUPILS + 1):
        state.add_account((p, AccountKind.PUPIL, SCHOOL, 0, 50_000, NO_LIMIT))
        state.add_identifier(demo_card_uid(p), p, 0)
    state.add_account((opening, AccountKind.OPENING, 0, 0, -50_000 * PUPILS, NO_LIMIT))
    state.add_account((revenue, AccountKind.REVENUE, SCHOOL, 0, 0, NO_LIMIT))
    state.add_account((free_meals, AccountKind.FREE_MEALS, SCHOOL, 0, 0, NO_LIMIT))
    state.products = {
        (SCHOOL, code): Product(code, category, frozenset(), frozenset(), False)
        for code, category in ((5, "drinks"), (6, "bakery"), (9, "drinks"))
    }
    state.meal_periods = {SCHOOL: (MealPeriod("breakfast", 480, 600), MealPeriod("lunch", 690, 870),
                                   MealPeriod("snack", 900, 1020))}
    state.policies = {SCHOOL: Policy()}
    for n in range(1, turnstiles + 1):
        device_id = TURNSTILE_ID_BASE + n
        state.devices[device_id] = DeviceState(device_id, SCHOOL, DeviceKind.TURNSTILE, demo_device_key(device_id), 0, 0)
    for n in range(1, tills + 1):
        device_id, drawer = TILL_ID_BASE + n, PUPILS + 3 + n
        state.add_account((drawer, AccountKind.DRAWER, SCHOOL, 0, 0, NO_LIMIT))
        state.devices[device_id] = DeviceState(device_id, SCHOOL, DeviceKind.TILL, demo_device_key(device_id), drawer, 0)
    state.build_lists(NOW_MS // 1000)
    return state


class _Transport:
    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class _Database:
    """Where the writer's statement goes: nowhere (its parameters are kept for --check)."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.batches: list[tuple] = []
        self.rows = 0

    def is_closed(self) -> bool:
        return False

    async def fetchval(self, sql: str, *args, timeout: float | None = None) -> int:
        if self.keep:
            self.batches.append(args)
        return self.rows


class _Random:
    """Deterministic RND.B for the HELLO_ACKs: the replay derives the recording's session keys."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        return hashlib.sha256(struct.pack("<Q", self.n)).digest()[:size]


class Gateway:
    """The gateway's core, sessions and journal writer, wired as ``gateway.app`` wires them."""

    def __init__(self, device_ids: list[int], keep: bool) -> None:
        config = Config()
        self.db = _Database(keep)
        self.journal = JournalWriter(
            self._connect, lambda entries, duration_ns: self.core.on_commit(entries, duration_ns),
            flush_interval_ms=config.flush_interval_ms, batch_events_max=config.batch_events_max,
            queue_events_max=config.journal_queue_events_max, statement_timeout_ms=config.statement_timeout_ms,
            retry_backoff_ms_max=config.retry_backoff_ms_max,
        )
        turnstiles = sum(1 for d in device_ids if d < TILL_ID_BASE)
        machine = Machine(school(turnstiles, len(device_ids) - turnstiles), self.journal, machine_limits(config))
        self.core = GatewayCore(config, machine, GatewayMetrics(machine.tally))
        self.core.clock_ms = lambda: NOW_MS
        self.core.random_bytes = _Random()
        self.sessions: list[DeviceSession] = []
        for _ in device_ids:
            session = DeviceSession(self.core)
            session.connection_made(_Transport())
            self.sessions.append(session)

    async def _connect(self) -> _Database:
        return self.db

    def flush(self) -> None:
        """One group commit, driven by hand (the statement never waits here)."""
        journal = self.journal
        self.db.rows = sum(1 for entry in journal._queue if entry.row is not None)
        if journal._conn is None:
            journal._conn = self.db  # what _ensure_connection would have connected
        coroutine = journal._flush_once()
        try:
            coroutine.send(None)
        except StopIteration:
            return
        raise RuntimeError("the writer waited")


def devices() -> list[int]:
    turnstiles, tills = split_devices(workload("mixed"), DEVICES)
    return [TURNSTILE_ID_BASE + n for n in range(1, turnstiles + 1)] + [TILL_ID_BASE + n for n in range(1, tills + 1)]


def record(steps: int, seed: int = 7, batch: int = BATCH) -> dict:
    """Device frames for ``steps`` requests, from device Connections talking to a gateway
    (and the journal writer's statement parameters, a group commit every ``batch`` entries)."""
    ids = devices()
    gw = Gateway(ids, keep=True)
    rng = random.Random(seed)
    lines = [tuple(Item(*line) for line in basket) for basket in baskets(workload("mixed"))]
    peers, hellos = [], []
    for session, device_id in zip(gw.sessions, ids):
        key = demo_device_key(device_id)
        peer = Connection(Role.DEVICE, device_id, key)
        kind = DeviceKind.TURNSTILE if device_id < TILL_ID_BASE else DeviceKind.TILL
        frame = peer.send(sign_hello(key, device_id, Hello(kind, "bench", 0, NOW_MS, rng.randbytes(16), bytes(16))))
        session.data_received(frame)
        peer.receive_data(b"".join(session.transport.out))
        session.transport.out.clear()
        peer.next_event()
        peers.append(peer)
        hellos.append(frame)
    frames, replies, txns = [], [], [0] * len(ids)
    passages = workload("mixed").get("passage")
    granted: list[CardPresented | None] = [None] * len(ids)  # a turnstile's grant whose PASSAGE comes next
    directions = [1] * len(ids)
    for _ in range(steps):
        i = rng.randrange(len(ids))
        txns[i] = txn = txns[i] + 1
        ident = demo_card_uid(rng.randrange(1, PUPILS + 1))
        card = granted[i]
        if card is not None:  # the pupil goes through (loadtests.workloads, "passage")
            granted[i] = None
            request = Passage(txn, 0, card.direction, NOW_MS, card.txn, card.identifier)
        elif ids[i] < TILL_ID_BASE:
            directions[i] = 3 - directions[i]  # each card the other way, as the load generator
            request = CardPresented(txn, 0, directions[i], NOW_MS, ident)
        else:
            items = lines[txn & 255]
            request = Purchase(txn, 0, NOW_MS, sum(i.quantity * i.unit_price_kopecks for i in items), ident, items)
        frame = peers[i].send(request)
        session = gw.sessions[i]
        session.data_received(frame)
        reply = b"".join(session.transport.out)
        session.transport.out.clear()
        peers[i].receive_data(reply)
        while (event := peers[i].next_event()) is not NEED_DATA:
            if passages and type(request) is CardPresented and type(event) is Decision and event.outcome:
                granted[i] = request
        frames.append((i, frame))
        replies.append(reply)
        if gw.journal.depth >= batch:
            gw.flush()
    gw.flush()
    return {"devices": ids, "hellos": hellos, "frames": frames, "replies": replies, "batches": gw.db.batches}


def replay(recorded: dict, decisions: int, check: bool = False, profile: str | None = None) -> dict:
    gw = Gateway(recorded["devices"], keep=check)
    for session, frame in zip(gw.sessions, recorded["hellos"]):
        session.data_received(frame)
        session.transport.out.clear()
    work = [(gw.sessions[i].data_received, frame) for i, frame in recorded["frames"][:decisions]]
    journal, flush = gw.journal, gw.flush
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)  # as gateway.app sets it
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu_started = time.process_time()
    for received, frame in work:
        received(frame)
        if journal.depth >= BATCH:
            flush()
    flush()
    cpu = time.process_time() - cpu_started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    figures = {"decisions": decisions, "cpu_us_per_decision": round(cpu / decisions * 1e6, 2)}
    if check:
        expected: dict[int, list[bytes]] = {}
        for (i, _), reply in zip(recorded["frames"][:decisions], recorded["replies"]):
            expected.setdefault(i, []).append(reply)
        figures["replies_equal"] = all(
            b"".join(gw.sessions[i].transport.out) == b"".join(replies) for i, replies in expected.items()
        )
        if decisions == len(recorded["frames"]):
            figures["batches_equal"] = gw.db.batches == recorded["batches"]
    return figures


def callgrind(decisions: int, frames: int) -> dict:
    """Instructions per decision of the whole device path (``loadtests.machine.instructions_per_decision``)."""
    from loadtests.machine import instructions_per_decision

    return instructions_per_decision("loadtests.gateway_path", decisions, ["--frames", str(frames)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=40_000)
    parser.add_argument("--frames", type=int, default=0, help="record this many requests (at least --decisions)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per decision (replays of N and N/2)")
    parser.add_argument("--check", action="store_true", help="the replay's replies and batches equal the recording's")
    parser.add_argument("--profile", help="write a cProfile of the replay here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.callgrind:
        n = min(args.decisions, 8_000)
        figures = callgrind(n, max(n, args.frames))
    else:
        recorded = record(max(args.decisions, args.frames))
        figures = replay(recorded, args.decisions, args.check, args.profile)
    if not args.quiet:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
