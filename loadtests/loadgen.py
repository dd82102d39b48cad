"""The load generator: simulated devices over TCP, in their own processes.

Modes (``python -m loadtests.loadgen --help``):
- ``closed``: every device sends its next tap as soon as the reply to the
  previous one arrives (fixed concurrency = number of devices), like pgbench
  or MagicStack's benchmarks: warm-up, then a measured window.
- ``paced``: the devices together send ``rate`` taps/s (each device at
  rate/devices, random phase); a tap whose time comes while the previous one is
  still in flight goes out as soon as its reply arrives and is counted "late".
- ``storm``: every device connects and sends HELLO at the same instant (a
  reconnect storm), holds its session, then proves it with one HEARTBEAT each.

Devices are spread over worker processes (multiprocessing, spawn): each runs
uvloop with one asyncio.Protocol per device. Requests are packed with struct +
crc_hqx (loadtests.frames); tap->reply latency is recorded at the client in an
HdrHistogram (microseconds) for replies to taps sent inside the window. Each
worker reports its own CPU time over the window. The parent merges the results
into one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import resource
import sys
import time
from typing import Callable

from hdrh.histogram import HdrHistogram

from protocol import DenyReason, NakReason
from storage.demo_dataset import demo_device_key

from . import frames as F
from .workloads import baskets, device_ids, workload

LATENCY_MAX_US = 60_000_000
QUANTILES = (50.0, 90.0, 99.0, 99.9)
REQUEST_NAMES = {F.T_CARD: "CARD_PRESENTED", F.T_PASSAGE: "PASSAGE", F.T_PURCHASE: "PURCHASE", F.T_HEARTBEAT: "HEARTBEAT"}
DENY_NAMES = {int(r): r.name for r in DenyReason}
NAK_NAMES = {int(r): r.name for r in NakReason}
# After the window closes, replies still in flight are awaited this long.
DRAIN_S = 5.0


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def histogram_summary(h: HdrHistogram) -> dict:
    if h.get_total_count() == 0:
        return {"count": 0}
    out = {"count": h.get_total_count(), "min": h.get_min_value(), "mean": round(h.get_mean_value(), 1)}
    for q in QUANTILES:
        out[f"p{q:g}".replace(".", "")] = h.get_value_at_percentile(q)
    out["max"] = h.get_max_value()
    return out


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- worker side


class Worker:
    """One process's share of the devices and its counters."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.mode = spec["mode"]
        w = spec["workload"]
        self.rng = random.Random(w.get("seed", 0) * 1_000 + spec["index"])
        self.pupils = w["pupils"]
        self.passages = bool(w.get("passage"))  # a granted card is followed by its PASSAGE (workloads)
        self.baskets = [F.basket_bytes(b) for b in baskets(w)]
        self.hist = new_histogram()
        self.counts: dict[str, dict[str, int]] = {}  # request -> outcome -> replies in the window
        self.totals = {"sent": 0, "decisions": 0, "naks": 0, "durable_acks": 0, "heartbeats": 0}
        self.total_outcomes: dict[str, int] = {}
        self.errors: list[str] = []
        self.window_start = self.window_end = float("inf")  # monotonic seconds
        self.stop_at = float("inf")
        self.requests_per_device = spec.get("requests_per_device") or 0
        self.late = 0
        self.devices: list[Device] = []
        self.hello_acked = 0
        self.hello_failed = 0
        self.last_ack_ns = 0
        self.lost = 0
        self.all_acked = asyncio.Event()
        self.heartbeat_replies = 0
        self.finished = 0
        self.expected = len(spec["device_ids"])
        self.all_finished = asyncio.Event()
        self.cpu_window = [0.0, 0.0]

    def outcome(self, mtype: int, frame: bytes) -> str:
        if mtype == F.T_DECISION:
            if frame[F.OFF_OUTCOME]:
                return "accept"
            return "deny:" + DENY_NAMES.get(frame[F.OFF_REASON], str(frame[F.OFF_REASON]))
        if mtype == F.T_NAK:
            return "nak:" + NAK_NAMES.get(frame[F.OFF_NAK_REASON], str(frame[F.OFF_NAK_REASON]))
        return f"type:0x{mtype:02x}"

    def device_done(self) -> None:
        self.finished += 1
        if self.finished >= self.expected:
            self.all_finished.set()


class Device(asyncio.Protocol):
    __slots__ = (
        "w", "device_id", "kind", "seq", "txn", "buf", "sent_ns", "sent_type", "transport", "ready",
        "replies", "next_due", "loop", "in_flight", "done", "hello", "interval", "owed", "key", "channel",
        "sent_ident", "sent_direction", "granted",
    )

    def __init__(self, worker: Worker, device_id: int, hello: bytes) -> None:
        self.w = worker
        self.device_id = device_id
        self.kind = F.device_kind(device_id)
        self.seq = 0
        # txns must increase per device across sessions and runs, and may not run more than 2^32
        # ahead of the highest the gateway knows: set from HELLO_ACK's durable watermark (frames.first_txn).
        self.txn = 0
        self.buf = b""
        self.sent_ns = 0
        self.sent_type = 0
        self.transport: asyncio.Transport | None = None
        self.ready = False
        self.replies = 0
        self.next_due = 0.0
        self.loop = asyncio.get_running_loop()
        self.in_flight = False
        self.done = False
        self.hello = hello
        self.interval = 0.0
        self.owed = False  # paced: a tap came due while the previous one was in flight
        self.key = demo_device_key(device_id)
        self.channel: F.DeviceChannel | None = None  # the secure channel, once HELLO_ACK verified
        self.sent_ident = b""  # the card of the CARD_PRESENTED in flight, and its direction
        self.sent_direction = 0
        # A turnstile's accepted CARD_PRESENTED (txn, direction, card) whose PASSAGE is its next request.
        self.granted: tuple[int, int, bytes] | None = None

    # -- sending

    def send_hello(self) -> None:
        self.seq = 0
        self.in_flight = True
        self.sent_type = F.T_HELLO
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.hello)  # type: ignore[union-attr]

    def send_tap(self) -> None:
        w = self.w
        self.seq += 1
        self.txn += 1
        now_ms = time.time_ns() // 1_000_000
        granted = self.granted
        if granted is not None:
            # The pupil went through the turnstile that granted the card: as at a real school,
            # every accepted CARD_PRESENTED is followed by its PASSAGE (journaled, and the entry
            # or exit the parents are told of).
            self.granted = None
            granted_txn, direction, ident = granted
            frame = F.passage_frame(self.device_id, self.seq, self.txn, direction, now_ms, granted_txn, ident)
            self.sent_type = F.T_PASSAGE
        elif self.kind == 1:
            ident = F.card_uid(w.rng.randrange(1, w.pupils + 1))
            direction = 2 if self.sent_direction == 1 else 1  # in, out, in, ...: each card the other way
            frame = F.card_frame(self.device_id, self.seq, self.txn, direction, now_ms, ident)
            self.sent_type = F.T_CARD
            self.sent_ident, self.sent_direction = ident, direction
        else:
            ident = F.card_uid(w.rng.randrange(1, w.pupils + 1))
            frame = F.purchase_frame(self.device_id, self.seq, self.txn, now_ms, ident, w.baskets[self.txn & 255])
            self.sent_type = F.T_PURCHASE
        self.in_flight = True
        w.totals["sent"] += 1
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.channel.seal(frame) if self.channel is not None else frame)  # type: ignore[union-attr]

    def send_heartbeat(self) -> None:
        self.seq += 1
        self.sent_type = F.T_HEARTBEAT
        self.in_flight = True
        self.sent_ns = time.perf_counter_ns()
        frame = F.heartbeat_frame(self.device_id, self.seq, time.time_ns() // 1_000_000)
        self.transport.write(self.channel.seal(frame) if self.channel is not None else frame)  # type: ignore[union-attr]

    def paced_tick(self) -> None:
        """Paced: the timer of the next tap fired."""
        if self.done or self.transport is None or self.transport.is_closing():
            return
        if self.in_flight:
            self.owed = True  # goes out as soon as the reply arrives, counted late
            return
        if time.perf_counter() >= self.w.stop_at:
            self.finish()
            return
        self.send_paced()

    def send_paced(self) -> None:
        self.send_tap()
        self.next_due += self.interval
        self.loop.call_later(max(0.0, self.next_due - time.perf_counter()), self.paced_tick)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.w.device_done()

    # -- asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send_hello()

    def connection_lost(self, exc) -> None:
        w = self.w
        if not self.done:
            w.lost += 1
            if len(w.errors) < 20:
                w.errors.append(f"device {self.device_id}: connection lost ({exc})")
            self.finish()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        now_ns = time.perf_counter_ns()
        buf = self.buf + data if self.buf else data
        while True:
            end = F.frame_end(buf)
            if not end:
                break
            frame = buf[:end]
            buf = buf[end:]
            mtype = frame[F.OFF_TYPE]
            channel = self.channel
            if channel is not None and not channel.check(frame):
                w = self.w
                if len(w.errors) < 20:
                    w.errors.append(f"device {self.device_id}: a gateway frame's MAC does not verify")
                self.transport.close()  # type: ignore[union-attr]
                self.finish()
                return
            if mtype == F.T_DURABLE_ACK:
                self.w.totals["durable_acks"] += 1
                continue
            self.on_reply(mtype, frame, now_ns)
        self.buf = buf

    def on_reply(self, mtype: int, frame: bytes, now_ns: int) -> None:
        w = self.w
        self.in_flight = False
        sent_type = self.sent_type
        if sent_type == F.T_HELLO:
            if mtype == F.T_HELLO_ACK:
                self.channel = F.DeviceChannel.open(self.key, self.device_id, self.hello, frame)
                if self.channel is None and not F.DeviceChannel.plain_peer(frame):
                    w.hello_failed += 1
                    w.errors.append(f"device {self.device_id}: the gateway's cryptogram does not verify")
                    if w.hello_acked + w.hello_failed >= w.expected:
                        w.all_acked.set()
                    self.finish()
                    return
                self.ready = True
                self.txn = max(self.txn, F.first_txn(F.hello_ack_durable_txn(frame)))
                w.hello_acked += 1
                w.last_ack_ns = now_ns
                if w.hello_acked + w.hello_failed >= w.expected:
                    w.all_acked.set()
                if w.mode == "closed":
                    self.send_tap()
            else:
                w.hello_failed += 1
                if len(w.errors) < 20:
                    w.errors.append(f"device {self.device_id}: HELLO refused: {w.outcome(mtype, frame)}")
                if w.hello_acked + w.hello_failed >= w.expected:
                    w.all_acked.set()
                self.finish()
            return
        if sent_type == F.T_HEARTBEAT:
            w.heartbeat_replies += 1
            w.totals["heartbeats"] += 1
            self.finish()
            return
        totals = w.totals
        if mtype == F.T_DECISION:
            totals["decisions"] += 1
            if sent_type == F.T_CARD and w.passages and frame[F.OFF_OUTCOME]:
                self.granted = (self.txn, self.sent_direction, self.sent_ident)
        else:
            totals["naks"] += 1
        outcome = w.outcome(mtype, frame)
        w.total_outcomes[outcome] = w.total_outcomes.get(outcome, 0) + 1
        sent = self.sent_ns / 1e9
        if w.window_start <= sent < w.window_end:
            w.hist.record_value(max(1, (now_ns - self.sent_ns) // 1_000))
            by = w.counts.setdefault(REQUEST_NAMES[sent_type], {})
            by[outcome] = by.get(outcome, 0) + 1
        self.replies += 1
        if w.requests_per_device and self.replies >= w.requests_per_device:
            self.finish()
            return
        if now_ns / 1e9 >= w.stop_at:
            self.finish()
            return
        if w.mode == "closed":
            self.send_tap()
        elif self.owed:
            self.owed = False
            w.late += 1
            self.send_paced()


async def _connect_all(worker: Worker, host: str, port: int, ids: list[int], hellos: dict[int, bytes]) -> None:
    loop = asyncio.get_running_loop()

    async def one(device_id: int) -> None:
        for attempt in range(20):
            try:
                device = Device(worker, device_id, hellos[device_id])
                worker.devices.append(device)
                await loop.create_connection(lambda: device, host, port)
                return
            except OSError as exc:
                worker.devices.remove(device)
                if attempt == 19:
                    worker.hello_failed += 1
                    worker.errors.append(f"device {device_id}: connect failed: {exc}")
                    return
                await asyncio.sleep(0.05 * (attempt + 1))

    await asyncio.gather(*(one(d) for d in ids))


async def _worker(spec: dict, pipe) -> dict:
    """Runs in the worker process. ``pipe`` carries the parent's go and times."""
    worker = Worker(spec)
    mode = spec["mode"]
    ids: list[int] = spec["device_ids"]
    keys = {d: demo_device_key(d) for d in ids}
    hellos = {d: F.hello_frame(d, F.device_kind(d), keys[d]) for d in ids}
    loop = asyncio.get_running_loop()
    result: dict = {"index": spec["index"], "devices": len(ids)}

    def recv() -> dict:
        return pipe.recv()

    if mode == "storm":
        pipe.send({"ready": True})
        go = await asyncio.to_thread(recv)
        start_ns = time.perf_counter_ns()
        worker.devices = []
        await _connect_all(worker, spec["host"], spec["port"], ids, hellos)
        try:
            await asyncio.wait_for(worker.all_acked.wait(), spec.get("storm_timeout_s", 120))
        except asyncio.TimeoutError:
            worker.errors.append("timed out waiting for HELLO_ACKs")
        result["acked"] = worker.hello_acked
        result["refused"] = worker.hello_failed
        result["all_acked_s"] = (worker.last_ack_ns - go["start_ns"]) / 1e9 if worker.hello_acked else None
        result["connect_started_late_s"] = (start_ns - go["start_ns"]) / 1e9
        pipe.send({"acked": worker.hello_acked, "refused": worker.hello_failed, "all_acked_s": result["all_acked_s"]})
        await asyncio.to_thread(recv)  # the parent has looked at the gateway; now prove liveness
        lost_before = worker.lost
        live = [d for d in worker.devices if d.ready and not d.done and d.transport is not None]
        worker.finished = 0
        worker.expected = len(live)
        worker.all_finished.clear()
        if not live:
            worker.all_finished.set()
        t0 = time.perf_counter_ns()
        for d in live:
            d.send_heartbeat()
        try:
            await asyncio.wait_for(worker.all_finished.wait(), 60)
        except asyncio.TimeoutError:
            worker.errors.append("timed out waiting for heartbeat replies")
        result["heartbeat_round_s"] = (time.perf_counter_ns() - t0) / 1e9
        result["heartbeat_replies"] = worker.heartbeat_replies
        result["lost_while_held"] = lost_before
        for d in worker.devices:
            d.done = True
            if d.transport is not None:
                d.transport.close()
        await asyncio.sleep(0.1)
    else:
        # Connect and open every session before the clock starts.
        worker.mode = "hold"
        await _connect_all(worker, spec["host"], spec["port"], ids, hellos)
        try:
            await asyncio.wait_for(worker.all_acked.wait(), 60)
        except asyncio.TimeoutError:
            worker.errors.append("timed out waiting for HELLO_ACKs")
        pipe.send({"ready": True, "acked": worker.hello_acked, "refused": worker.hello_failed})
        go = await asyncio.to_thread(recv)
        worker.mode = mode
        worker.window_start, worker.window_end = go["window_start"], go["window_end"]
        worker.stop_at = go["window_end"]
        live = [d for d in worker.devices if d.ready and not d.done]
        worker.finished = 0
        worker.expected = len(live)
        now = time.perf_counter()
        if go["start"] > now:
            await asyncio.sleep(go["start"] - now)
        while time.perf_counter() < go["start"]:  # uvloop timers are millisecond-grained and may fire early
            pass

        def cpu_mark(i: int) -> None:
            worker.cpu_window[i] = cpu_seconds()

        now = time.perf_counter()
        loop.call_later(max(0.0, go["window_start"] - now), cpu_mark, 0)
        loop.call_later(max(0.0, go["window_end"] - now), cpu_mark, 1)
        if mode == "closed":
            for d in live:
                d.send_tap()
        else:
            per_device_rate = spec["rate"] / spec["total_devices"]
            start = time.perf_counter()
            for d in live:
                d.interval = 1.0 / per_device_rate
                d.next_due = start + worker.rng.random() * d.interval
                loop.call_later(d.next_due - start, d.paced_tick)
            worker.stop_at = go["window_end"]
        if not live:
            worker.all_finished.set()
        wait_s = max(0.0, go["window_end"] - time.perf_counter()) + DRAIN_S
        if worker.requests_per_device:
            wait_s = max(wait_s, 120.0)
        try:
            await asyncio.wait_for(worker.all_finished.wait(), wait_s)
        except asyncio.TimeoutError:
            worker.errors.append(f"{sum(1 for d in worker.devices if not d.done)} devices still waiting for a reply")
        if worker.cpu_window[1] == 0.0:
            worker.cpu_window[1] = cpu_seconds()
        if worker.cpu_window[0] == 0.0:
            worker.cpu_window[0] = worker.cpu_window[1]
        for d in worker.devices:
            d.done = True
            if d.transport is not None:
                d.transport.close()
        await asyncio.sleep(0.05)
        result["acked"] = worker.hello_acked
        result["refused"] = worker.hello_failed
    result.update(
        histogram=worker.hist.encode().decode(),
        counts=worker.counts,
        totals=worker.totals,
        total_outcomes=worker.total_outcomes,
        late=worker.late,
        lost=worker.lost,
        errors=worker.errors,
        cpu_window_s=worker.cpu_window[1] - worker.cpu_window[0],
        cpu_total_s=cpu_seconds(),
    )
    return result


def _worker_main(spec: dict, pipe, results) -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        import uvloop

        results.put(uvloop.run(_worker(spec, pipe)))
    except BaseException as exc:  # report, never hang the parent
        results.put({"index": spec["index"], "fatal": f"{type(exc).__name__}: {exc}"})
        raise


# --------------------------------------------------------------------------- parent side


def _spread(ids: list[int], processes: int) -> list[list[int]]:
    return [ids[i::processes] for i in range(processes)]


def run_load(
    host: str,
    port: int,
    *,
    mode: str = "closed",
    devices: int = 100,
    processes: int = 1,
    warmup_s: float = 2.0,
    duration_s: float = 10.0,
    rate: float = 0.0,
    workload_name: str = "mixed",
    pupils: int | None = None,
    requests_per_device: int = 0,
    ids: list[int] | None = None,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    on_all_acked: Callable[[dict], dict] | None = None,
    timeout_s: float = 300.0,
) -> dict:
    """Run one load in ``processes`` worker processes; return the merged results.

    ``on_window_start``/``on_window_end`` run in this process at the window's
    edges (the benchmark samples the server's CPU there). In storm mode
    ``on_all_acked(summary)`` runs while every session is held and its dict is
    added to the result.
    """
    w = workload(workload_name, pupils=pupils)
    ids = ids if ids is not None else device_ids(w, devices)
    processes = max(1, min(processes, len(ids)))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pipes, procs = [], []
    for i, share in enumerate(_spread(ids, processes)):
        parent_end, child_end = ctx.Pipe()
        spec = {
            "index": i,
            "mode": mode,
            "host": host,
            "port": port,
            "device_ids": share,
            "total_devices": len(ids),
            "rate": rate,
            "workload": w,
            "requests_per_device": requests_per_device,
        }
        p = ctx.Process(target=_worker_main, args=(spec, child_end, results), daemon=True)
        p.start()
        pipes.append(parent_end)
        procs.append(p)
    out: dict = {
        "mode": mode,
        "devices": len(ids),
        "processes": processes,
        "workload": w,
        "host": f"{host}:{port}",
    }
    deadline = time.monotonic() + timeout_s
    try:
        ready = [_recv(p, deadline, procs) for p in pipes]
        if mode == "storm":
            start_ns = time.perf_counter_ns()
            for p in pipes:
                p.send({"start_ns": start_ns})
            acks = [_recv(p, deadline, procs) for p in pipes]
            summary = {
                "acked": sum(a["acked"] for a in acks),
                "refused": sum(a["refused"] for a in acks),
                "all_acked_s": max((a["all_acked_s"] or 0.0) for a in acks),
            }
            if on_all_acked is not None:
                out["held"] = on_all_acked(summary)
            for p in pipes:
                p.send({"heartbeat": True})
        else:
            out["hello_acked"] = sum(r.get("acked", 0) for r in ready)
            start = time.perf_counter() + 0.05
            window_start = start + warmup_s
            window_end = window_start + duration_s
            for p in pipes:
                p.send({"start": start, "window_start": window_start, "window_end": window_end})
            if not requests_per_device:  # else the run ends when every device has its replies
                _sleep_until(window_start)
                if on_window_start is not None:
                    on_window_start()
                _sleep_until(window_end)
                if on_window_end is not None:
                    on_window_end()
            out["window_s"] = duration_s
            out["warmup_s"] = warmup_s
            if mode == "paced":
                out["target_rate"] = rate
        parts = [results.get(timeout=max(1.0, deadline - time.monotonic())) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return _merge(out, parts)


def _recv(pipe, deadline: float, procs) -> dict:
    while not pipe.poll(0.1):
        if time.monotonic() > deadline:
            raise TimeoutError("load generator workers did not answer in time")
        if not all(p.is_alive() for p in procs):
            raise RuntimeError("a load generator worker died; see its stderr")
    return pipe.recv()


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.perf_counter()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def _merge(out: dict, parts: list[dict]) -> dict:
    fatal = [p["fatal"] for p in parts if "fatal" in p]
    if fatal:
        raise RuntimeError("load generator worker failed: " + "; ".join(fatal))
    hist = new_histogram()
    counts: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for p in parts:
        hist.decode_and_add(p["histogram"].encode())
        for req, by in p["counts"].items():
            dst = counts.setdefault(req, {})
            for k, v in by.items():
                dst[k] = dst.get(k, 0) + v
        for k, v in p["totals"].items():
            totals[k] = totals.get(k, 0) + v
        for k, v in p["total_outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    replies = sum(sum(by.values()) for by in counts.values())
    out["window_replies"] = replies
    # Replies that decided nothing: the gateway was overloaded (TRY_AGAIN_LATER) or refused the frame (NAK).
    not_decided = sum(v for by in counts.values() for k, v in by.items() if k == "deny:TRY_AGAIN_LATER" or k.startswith("nak:"))
    out["window_not_decided"] = not_decided
    if out.get("window_s"):
        out["replies_per_s"] = round(replies / out["window_s"], 1)
        out["throughput_per_s"] = round((replies - not_decided) / out["window_s"], 1)
    out["latency_us"] = histogram_summary(hist)
    out["outcomes"] = counts
    out["totals"] = totals
    out["total_outcomes"] = outcomes
    out["late"] = sum(p["late"] for p in parts)
    out["lost"] = sum(p["lost"] for p in parts)
    out["loadgen_cpu_window_s"] = round(sum(p["cpu_window_s"] for p in parts), 4)
    out["loadgen_cpu_total_s"] = round(sum(p["cpu_total_s"] for p in parts), 4)
    if replies:
        out["loadgen_cpu_us_per_reply"] = round(out["loadgen_cpu_window_s"] / replies * 1e6, 2)
    out["errors"] = [e for p in parts for e in p["errors"]][:20]
    if out["mode"] == "storm":
        out["acked"] = sum(p.get("acked", 0) for p in parts)
        out["refused"] = sum(p.get("refused", 0) for p in parts)
        out["all_acked_s"] = round(max((p.get("all_acked_s") or 0.0) for p in parts), 3)
        out["heartbeat_replies"] = sum(p.get("heartbeat_replies", 0) for p in parts)
        out["heartbeat_round_s"] = round(max(p.get("heartbeat_round_s", 0.0) for p in parts), 3)
        out["lost_while_held"] = sum(p.get("lost_while_held", 0) for p in parts)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=("closed", "paced", "storm"), default="closed")
    ap.add_argument("--devices", type=int, default=100, help="devices (= concurrency in closed mode)")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before the measured window")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of the measured window")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced mode: taps/s over all devices")
    ap.add_argument("--workload", default="mixed")
    ap.add_argument("--pupils", type=int, help="tap account ids 1..N (the dataset must have them)")
    ap.add_argument("--requests-per-device", type=int, default=0, help="stop each device after this many replies")
    ap.add_argument("--out", help="write the JSON result here (default: stdout)")
    args = ap.parse_args(argv)
    result = run_load(
        args.host,
        args.port,
        mode=args.mode,
        devices=args.devices,
        processes=args.processes,
        warmup_s=args.warmup,
        duration_s=args.duration,
        rate=args.rate,
        workload_name=args.workload,
        pupils=args.pupils,
        requests_per_device=args.requests_per_device,
    )
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
