"""The crash driver: devices under load while the gateway is SIGKILLed and restarted.

Turnstiles and tills (with injected disconnects) run an endless seeded mixed
load against a gateway subprocess. At seeded moments (after seeded numbers of
accepted requests) the gateway is killed with SIGKILL and started again on the
same port; the devices reconnect and replay. At the end the load stops, every
device waits until its accepted txns are covered by DURABLE_ACK, the gateway is
shut down in order, and PostgreSQL is compared with the devices' logs
(``simulators.verify``): exact equality, or the run fails.

``run_crash`` is the core (the short test and the long CLI variant call it);
``GatewaySubprocess`` runs ``python -m gateway run`` on a fixed port.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from protocol import DeviceKind
from storage.demo_dataset import till_ids, turnstile_ids

from .device import Device, Stats
from .scenarios import Fleet, perform, random_action
from .verify import Report, verify

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on [\d.]+:(\d+), metrics on http://[\d.]+:(\d+)/metrics")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class GatewayLike(Protocol):
    port: int

    def start(self, timeout_s: float = 60.0) -> "GatewayLike": ...
    def kill(self) -> None: ...
    def terminate(self, timeout_s: float = 30.0) -> int: ...


class GatewaySubprocess:
    """``python -m gateway run`` (or ``cmd``) on ``port`` against ``dsn``; stdout/stderr to ``log_path``."""

    def __init__(self, dsn: str, port: int, log_path: Path, cmd: list[str] | None = None, **env: str) -> None:
        self.port = port
        self.metrics_port = 0
        self.log_path = Path(log_path)
        self.cmd = cmd or [sys.executable, "-m", "gateway", "run"]
        self.env = {
            **os.environ,
            "ECARD_PG_DSN": dsn,
            "ECARD_LISTEN_PORT": str(port),
            "ECARD_METRICS_PORT": "0",
            "ECARD_PROGRESS_INTERVAL_MS": "0",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "GatewaySubprocess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        found: list[re.Match] = []
        ready = threading.Event()

        def drain(stream) -> None:
            for line in iter(stream.readline, b""):
                if not found:
                    m = _LISTENING.search(line.decode(errors="replace"))
                    if m:
                        found.append(m)
                        ready.set()
                log.write(line)
                log.flush()
            ready.set()
            log.close()

        threading.Thread(target=drain, args=(self.proc.stdout,), daemon=True).start()
        if not ready.wait(timeout_s) or not found:
            self.kill()
            raise RuntimeError(f"gateway did not start listening within {timeout_s} s; see {self.log_path}")
        self.port, self.metrics_port = int(found[0].group(1)), int(found[0].group(2))
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


@dataclass
class CrashResult:
    report: Report
    kills: int
    settled: bool
    accepts: int
    seconds: float
    stats: Stats

    def verdict(self) -> str:
        head = "CRASH TEST PASSED" if self.ok else "CRASH TEST FAILED"
        extra = "" if self.settled else " (devices never settled: kept txns without DURABLE_ACK)"
        if self.stats.errors:
            extra += f" gateway contract errors={len(self.stats.errors)}: {self.stats.errors[0]}"
        return (
            f"{head}: kills={self.kills} accepts={self.accepts} replays_applied={self.stats.replays_applied} "
            f"in {self.seconds:.1f} s; {self.report.verdict()}{extra}"
        )

    @property
    def ok(self) -> bool:
        return self.report.ok and self.settled and not self.stats.errors


async def run_crash(
    dsn: str,
    make_gateway: Callable[[], GatewayLike],
    *,
    port: int,
    log_dir: Path,
    seed: int = 7,
    rounds: int = 3,
    turnstiles: int = 4,
    tills: int = 2,
    pupils: int = 1000,
    disconnect_rate: float = 0.02,
    accepts_per_round: tuple[int, int] = (300, 800),
    tail_accepts: int = 300,
    phase_timeout_s: float = 60.0,
    settle_s: float = 60.0,
    host: str = "127.0.0.1",
    out=sys.stdout,
    before_kill: Callable[[int], Awaitable[None]] | None = None,
    after_kill: Callable[[int], Awaitable[None]] | None = None,
) -> CrashResult:
    """Load, ``rounds`` SIGKILL+restart cycles, settle, verify. ``make_gateway`` binds ``port``.

    ``before_kill(round)`` runs when the round's accepts are reached, right before the
    SIGKILL (e.g. cut PostgreSQL and wait until the journal queue is full);
    ``after_kill(round)`` after it, before the restart (e.g. restore PostgreSQL)."""
    started = time.monotonic()
    rng = random.Random(f"{seed}/crash")
    gateway = await asyncio.to_thread(make_gateway().start)
    fleet = Fleet(host, port, Path(log_dir), seed, disconnect_rate, deadline_s=phase_timeout_s, reply_timeout_s=0.5)
    for device_id in turnstile_ids(turnstiles):
        fleet.add(device_id, DeviceKind.TURNSTILE)
    for device_id in till_ids(tills):
        fleet.add(device_id, DeviceKind.TILL)
    stats = fleet.stats
    stop = asyncio.Event()
    kills = 0

    async def load(device: Device) -> None:
        drng = random.Random(f"{seed}/load/{device.device_id}")
        kind = DeviceKind(device.kind)
        while not stop.is_set():
            await perform(device, random_action(drng, kind, pupils))

    async def until_accepts(n: int) -> None:
        deadline = time.monotonic() + phase_timeout_s
        while stats.accepts < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load stalled: {stats.accepts} accepts, waiting for {n}")
            if any(w.done() for w in workers):
                for w in workers:
                    if w.done() and w.exception() is not None:
                        raise w.exception()  # type: ignore[misc]
            await asyncio.sleep(0.005)

    workers: list[asyncio.Task] = []
    settled = False
    try:
        await fleet.start()
        workers = [asyncio.create_task(load(d)) for d in fleet.devices]
        target = 0
        for round_no in range(1, rounds + 1):
            target += rng.randint(*accepts_per_round)
            await until_accepts(target)
            if before_kill is not None:
                await before_kill(round_no)
            await asyncio.to_thread(gateway.kill)
            kills += 1
            if after_kill is not None:
                await after_kill(round_no)
            print(f"[crash] round {round_no}: SIGKILL after {stats.accepts} accepts; restarting", file=out, flush=True)
            gateway = await asyncio.to_thread(make_gateway().start)
            print(f"[crash] round {round_no}: gateway back; {stats.progress_line()}", file=out, flush=True)
        await until_accepts(target + tail_accepts)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), phase_timeout_s)
        settled = await fleet.settle(settle_s)
    finally:
        stop.set()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await fleet.close()
        await asyncio.to_thread(gateway.terminate)
    print(f"[crash] load done; {stats.summary()}", file=out, flush=True)
    report = await verify(dsn, Path(log_dir))
    return CrashResult(report, kills, settled, stats.accepts, time.monotonic() - started, stats)
