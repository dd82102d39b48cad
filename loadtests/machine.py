"""The pure ledger machine alone: decisions per second and instructions per decision.

    python -m loadtests.machine [--decisions 200000] [--callgrind]

No sockets, no database, no event loop: a school of pupils, a till and a
turnstile, requests decoded from bytes as the gateway does, replies encoded, the
journal a bounded list drained every batch (as the writer would). Wall-clock
decisions/s is noisy on a shared machine; ``--callgrind`` runs the same
workload under ``valgrind --tool=callgrind`` and reports instructions per
decision, which stays stable whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from ledger.codes import AccountKind
from ledger.machine import Machine, MachineLimits
from ledger.records import JournalEntry
from ledger.state import NO_LIMIT, DeviceState, LedgerState, MealPeriod, Policy, Product
from protocol import (
    CardPresented,
    Connection,
    DeviceKind,
    Hello,
    Item,
    Passage,
    Purchase,
    Role,
    TXN_FLAG_ADVICE,
    encode_frame,
)
from protocol.auth import sign_hello

PUPILS = 10_000
TILL_ID, TURNSTILE_ID = 2_000_001, 1_000_001
KEY = b"m" * 16
NOW_MS = 1_795_550_000_000
BATCH = 4_096  # the journal writer's batch_events_max
LIMITS = MachineLimits(
    idempotency_window_txns=256,
    topup_kopecks_max=1_500_000,
    command_amount_kopecks_max=10_000_000,
    hello_clock_skew_ms_max=300_000,
    offline_window_ms=72 * 3_600_000,
    reader_clock_skew_ms=300_000,
    heartbeat_interval_ms=10_000,
)


class DrainedJournal:
    def __init__(self) -> None:
        self.queue: list[JournalEntry] = []

    def has_room(self) -> bool:
        return True

    def append(self, entry: JournalEntry) -> None:
        self.queue.append(entry)


def school() -> Machine:
    state = LedgerState()
    state.school_offset_ms = {1: 180 * 60_000}
    state.accounts.grow_to(PUPILS + 10)
    for p in range(1, PUPILS + 1):
        state.add_account((p, AccountKind.PUPIL, 1, 0, 10_000_000, NO_LIMIT))
        state.add_identifier(b"\x04" + p.to_bytes(6, "big"), p, 0)
    state.add_account((PUPILS + 1, AccountKind.REVENUE, 1, 0, 0, NO_LIMIT))
    state.add_account((PUPILS + 2, AccountKind.OPENING, 0, 0, -10_000_000 * PUPILS, NO_LIMIT))
    state.products = {(1, 2): Product(2, "lunch", frozenset(), frozenset(), True)}
    state.meal_periods = {1: (MealPeriod("lunch", 0, 24 * 60),)}
    state.policies = {1: Policy()}
    state.devices = {
        TILL_ID: DeviceState(TILL_ID, 1, DeviceKind.TILL, KEY, 0, 0),
        TURNSTILE_ID: DeviceState(TURNSTILE_ID, 1, DeviceKind.TURNSTILE, KEY, 0, 0),
    }
    return Machine(state, DrainedJournal(), LIMITS)


def frames(device_id: int, count: int, rng: random.Random) -> list[bytes]:
    """Request frames as a device would send them (seq 1.., txn 1..)."""
    out = []
    for n in range(1, count + 1):
        pupil = rng.randrange(1, PUPILS + 1)
        ident = b"\x04" + pupil.to_bytes(6, "big")
        if device_id == TILL_ID:
            price = rng.choice((5_000, 7_500, 16_500))
            event = Purchase(n, 0, NOW_MS, price, ident, (Item(2, 1, price),))
        elif n % 2:
            event = CardPresented(n, 0, 1, NOW_MS, ident)
        else:
            event = Passage(n, TXN_FLAG_ADVICE, 1, NOW_MS, n - 1, ident)
        out.append(encode_frame(device_id, n, event, reply=False))
    return out


def run(decisions: int, seed: int = 1, frames_total: int = 0) -> dict:
    """Decide ``decisions`` requests (half till, half turnstile); returns the figures.

    ``frames_total``: build this many request frames (at least ``decisions``), so that
    two runs deciding different numbers do the same set-up work (callgrind's difference)."""
    machine = school()
    rng = random.Random(seed)
    per_device = decisions // 2
    frames_per_device = max(decisions, frames_total) // 2
    work = []
    for device_id in (TILL_ID, TURNSTILE_ID):
        conn = Connection(Role.GATEWAY)
        hello = sign_hello(KEY, device_id, Hello(machine.state.devices[device_id].kind, "bench", 0, NOW_MS,
                                                 bytes(16), bytes(16)))
        conn.receive_data(encode_frame(device_id, 0, hello, reply=False))
        conn.send(machine.hello(device_id, conn.next_event(), NOW_MS))
        work.append((conn, machine.state.devices[device_id], frames(device_id, frames_per_device, rng)))
    journal = machine.journal
    request = machine.request
    started = time.perf_counter()
    cpu_started = time.process_time()
    for i in range(per_device):
        for conn, device, device_frames in work:
            conn.receive_data(device_frames[i])
            conn.send(request(device, conn.next_event(), NOW_MS, 0))
        if len(journal.queue) >= BATCH:
            entries = journal.queue
            journal.queue = []
            machine.on_durable(entries)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    total = per_device * 2
    assert machine.state.ledger_total() == 0
    return {
        "decisions": total,
        "decisions_per_s": round(total / elapsed),
        "cpu_us_per_decision": round(cpu / total * 1e6, 2),
    }


# The slowest callgrind run one measurement may take (Python under valgrind is ~50x slower).
CALLGRIND_RUN_TIMEOUT_S = 3_600


def instructions_per_decision(module: str, decisions: int, args: list[str]) -> dict:
    """Instructions per decision of ``python -m module --decisions N args --quiet`` under callgrind:
    (run of N) - (run of N/2), divided by N/2 (start-up cancels out). Shared by the benches."""
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (apt-get install valgrind)"}
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (decisions // 2, decisions):
            out = os.path.join(tmp, f"cg.{n}")
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                 module, "--decisions", str(n), *args, "--quiet"],
                check=True, capture_output=True, timeout=CALLGRIND_RUN_TIMEOUT_S,
            )
            with open(out) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        counts[n] = int(line.split()[1])
    half = decisions // 2
    return {"instructions_per_decision": round((counts[decisions] - counts[half]) / (decisions - half))}


def callgrind(decisions: int) -> dict:
    """Instructions per decision of the machine alone."""
    return instructions_per_decision("loadtests.machine", decisions, ["--frames", str(decisions)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--frames", type=int, default=0, help="build this many request frames (callgrind)")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per decision")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    figures = run(args.decisions, frames_total=args.frames)
    if args.callgrind:
        figures.update(callgrind(min(args.decisions, 20_000)))
    if not args.quiet:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
