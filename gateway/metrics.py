"""Prometheus metrics, counted on the hot path with plain integers.

prometheus_client's labelled Counter.inc and Histogram.observe take a lock and
a label lookup each (microseconds); a decision must cost less than that in
total. So the hot path bumps list slots, and a custom Collector turns them into
metric families when Prometheus scrapes.

Exported (all prefixed ecard_):
- decisions_total{kind, reason}
- naks_total{reason}
- security_events_total{event}, reader_time_rejected_total
- decision_latency_us (histogram, frame received -> reply written, server side)
- decision_latency_quantile_us{quantile} (over the last LATENCY_SAMPLES_MAX decisions: exact up to
  QUANTILE_SORT_SAMPLES_MAX of them, beyond that from that many evenly spaced ones)
- devices_connected{kind}
- allowance_pages_total, allowance_resets_total, allowance_tills_unseen (offline tills)
- journal_queue_depth, journal_flush_batch_events (histogram), journal_flush_duration_ms (histogram)
- durable_lag_ms (histogram, decision -> COMMIT), durable_lag_quantile_ms{quantile},
  journal_oldest_pending_ms, journal_flush_failures_total, journal_connected
- event_loop_lag_ms (histogram): how late a timer of the event loop fires; the wait a
  tap spends queued behind other work, which the decision latency does not show
- event_loop_thread_cpu_seconds_total, event_loop_thread_runqueue_wait_seconds_total: the event
  loop's thread on a CPU, and ready to run but waiting for one (other processes had the cores),
  from Linux's /proc/<pid>/task/<tid>/schedstat; absent elsewhere
- gc_pause_us{generation} (histogram): every collection of Python's cyclic garbage collector,
  how long it held the process (the event loop waits for all of it)
- process_cpu_seconds etc. from prometheus_client's default process collector
"""

from __future__ import annotations

import gc
import time
from array import array
from bisect import bisect_left, bisect_right
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from protocol import DenyReason, DeviceKind, NakReason

from ledger.codes import JournalKind
from ledger.machine import Tally

LOOP_LAG_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 250, 1_000)
LATENCY_BUCKETS_US = (10, 25, 50, 75, 100, 150, 200, 250, 350, 500, 750, 1_000, 2_500, 5_000, 10_000, 50_000)
DURABLE_BUCKETS_MS = (1, 2, 5, 10, 15, 20, 30, 50, 100, 250, 500, 1_000, 5_000, 30_000)
BATCH_BUCKETS = (1, 4, 16, 64, 256, 1_024, 4_096, 16_384)
FLUSH_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 500, 1_000, 5_000)
# Quantiles come from a ring of the most recent samples: 65,536 samples
# hold a few seconds of peak traffic, at 512 KiB per ring.
LATENCY_SAMPLES_MAX = 65_536
# A quantile sorts at most this many samples of the ring (every k-th, evenly spaced): the sort
# holds the GIL (a scrape runs in prometheus_client's thread), so the event loop waits for it.
# All 65,536 took 6-10 ms of the loop per ring, twice per scrape and once per progress line;
# 8,192 take under 1 ms, and the p99.9 of 8,192 is still the 9th highest.
QUANTILE_SORT_SAMPLES_MAX = 8_192
QUANTILES = (0.5, 0.9, 0.99, 0.999)
# A collection of the cyclic GC stops everything for as long as it walks its generation:
# 0.1 ms is a young collection of a few thousand objects, 100 ms a walk of millions.
GC_PAUSE_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000)
GC_GENERATIONS = 3


class Buckets:
    """A fixed-bucket histogram with a ring of recent raw samples.

    The hot path does not call into Python per observation: ``record`` is the
    ``append`` of a plain ``array('q')`` (a C method), and the samples recorded so far
    are folded into the buckets, the sum and the ring in bulk (``fold``: sorted, then
    one bisect per bucket bound) by the event loop's thread only: after every group commit
    and on the gateway's 100 ms timer. A scrape (prometheus_client's own thread) reads what
    was folded, at most that old; it never folds (a fold there could lose a sample appended
    meanwhile). ``observe`` (one sample at once) is for the rare observations.
    """

    __slots__ = ("bounds", "counts", "total", "samples", "cursor", "filled", "pending", "record")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0
        self.samples = array("q", [0]) * LATENCY_SAMPLES_MAX
        self.cursor = 0
        self.filled = 0
        self.pending = array("q")  # recorded, not yet folded
        self.record = self.pending.append

    def observe(self, value: int) -> None:
        if self.pending:
            self.fold()  # in order
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        i = self.cursor
        self.samples[i] = value
        self.cursor = (i + 1) % LATENCY_SAMPLES_MAX
        if self.filled < LATENCY_SAMPLES_MAX:
            self.filled += 1

    def fold(self) -> None:
        """Move the recorded samples into the buckets, the sum and the ring (in order)."""
        pending = self.pending
        n = len(pending)
        if not n:
            return
        # The first n samples only, copied (one C copy): a sample appended meanwhile (a GC pause
        # recorded from the scrape thread, see GcPauses) stays pending for the next fold.
        pending = pending[:n]
        counts = self.counts
        # Bucket i holds bounds[i-1] < v <= bounds[i] (bisect_left): counted on the sorted
        # samples with one bisect per bound, whatever their number.
        data = sorted(pending)
        previous = 0
        for i, bound in enumerate(self.bounds):
            below = bisect_right(data, bound)
            counts[i] += below - previous
            previous = below
        counts[-1] += n - previous
        self.total += sum(pending)
        samples = self.samples
        if n >= LATENCY_SAMPLES_MAX:
            samples[:] = pending[n - LATENCY_SAMPLES_MAX:]
            self.cursor = 0
        else:
            i = self.cursor
            head = min(n, LATENCY_SAMPLES_MAX - i)
            samples[i:i + head] = pending[:head]
            if head < n:
                samples[:n - head] = pending[head:]
            self.cursor = (i + n) % LATENCY_SAMPLES_MAX
        self.filled = min(LATENCY_SAMPLES_MAX, self.filled + n)
        del self.pending[:n]

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> list[tuple[float, int]]:
        filled = self.filled
        if not filled:
            return [(q, 0) for q in qs]
        stride = -(-filled // QUANTILE_SORT_SAMPLES_MAX)  # 1 (all of them) up to 8,192 samples
        data = sorted(self.samples[:filled:stride])
        return [(q, data[min(len(data) - 1, int(q * len(data)))]) for q in qs]

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus's buckets: (upper bound, samples at or below it), the last one "+Inf"."""
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts):
            cumulative += count
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", cumulative + self.counts[-1]))
        return buckets

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, doc, buckets=self.cumulative(), sum_value=self.total)


class GcPauses:
    """Times every collection of Python's cyclic GC (a ``gc.callbacks`` hook), by generation.

    A collection runs in whichever thread allocated past the threshold (the event loop's, or
    prometheus_client's during a scrape) and holds the GIL throughout, so the event loop waits
    for all of it: a pause of the gateway that neither the decision latency (it falls between
    two decisions) nor the loop-lag timer (it sees one late firing) shows in full. ``record`` is
    an array append, safe from any thread; the loop's fold moves the samples into the buckets.
    """

    __slots__ = ("generations", "_started_ns")

    def __init__(self) -> None:
        self.generations = tuple(Buckets(GC_PAUSE_BUCKETS_US) for _ in range(GC_GENERATIONS))
        self._started_ns = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
        else:
            self.generations[info["generation"]].record((time.perf_counter_ns() - self._started_ns) // 1_000)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def fold(self) -> None:
        for buckets in self.generations:
            buckets.fold()

    def family(self) -> HistogramMetricFamily:
        h = HistogramMetricFamily(
            "ecard_gc_pause_us", "Collections of the cyclic GC, how long each held the process, us", labels=("generation",)
        )
        for generation, buckets in enumerate(self.generations):
            h.add_metric((str(generation),), buckets.cumulative(), sum_value=buckets.total)
        return h


class GatewayMetrics:
    def __init__(self, tally: Tally) -> None:
        self.tally = tally  # decisions, NAKs and security events, counted by the machine
        self.decisions = tally.decisions
        self.naks = tally.naks
        self.latency_us = Buckets(LATENCY_BUCKETS_US)
        self.durable_lag_ms = Buckets(DURABLE_BUCKETS_MS)
        self.batch_events = Buckets(BATCH_BUCKETS)
        self.flush_ms = Buckets(FLUSH_BUCKETS_MS)
        self.loop_lag_ms = Buckets(LOOP_LAG_BUCKETS_MS)
        self.gc_pauses = GcPauses()  # installed by the gateway once its state is loaded and frozen
        self.decisions_total = 0

    def decision_count(self) -> int:
        return self.tally.decision_count()

    def fold(self) -> None:
        """Fold what the hot path recorded (see Buckets): after each commit and every 100 ms."""
        self.latency_us.fold()
        self.durable_lag_ms.fold()
        self.gc_pauses.fold()


def thread_schedstat(path: str) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of one thread, from its Linux
    schedstat file ("<on-CPU ns> <run-queue wait ns> <timeslices>"); None where there is none."""
    try:
        with open(path) as f:
            on_cpu_ns, waited_ns, _ = f.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu_ns) / 1e9, int(waited_ns) / 1e9


def schedstat_path(thread_id: int) -> str:
    return f"/proc/self/task/{thread_id}/schedstat"


class GatewayCollector(Collector):
    def __init__(
        self,
        metrics: GatewayMetrics,
        devices_connected: Callable[[], dict[int, int]],
        journal_state: Callable[[], tuple[int, int, int, bool]],
        allowance_state: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0),
        loop_schedstat: str | None = None,
    ) -> None:
        self._m = metrics
        # The event loop thread's schedstat file (schedstat_path): read at each scrape, from the
        # scrape's own thread. A tap that waits while the loop's thread waits for a CPU is the
        # machine's contention, not the gateway's work: these two counters tell them apart.
        self._loop_schedstat = loop_schedstat
        self._allowance_state = allowance_state  # (pages sent, of them RESET, tills unseen since the start)
        self._devices_connected = devices_connected
        self._journal_state = journal_state  # (depth, oldest pending ms, failures, connected)

    def collect(self):
        m = self._m
        c = CounterMetricFamily("ecard_decisions", "Decisions by request kind and reason", labels=("kind", "reason"))
        for kind in JournalKind:
            for reason in DenyReason:
                c.add_metric((kind.label, reason.name), m.decisions[kind][reason])
        yield c
        s = CounterMetricFamily("ecard_security_events", "Protocol violations by devices", labels=("event",))
        for event, count in m.tally.security.items():
            s.add_metric((event,), count)
        yield s
        yield CounterMetricFamily(
            "ecard_reader_time_rejected",
            "Advices judged at the gateway's time: the reader's clock was outside the offline window",
            value=m.tally.reader_time_rejected,
        )
        n = CounterMetricFamily("ecard_naks", "Frames refused at the protocol level", labels=("reason",))
        for reason in NakReason:
            n.add_metric((reason.name,), m.naks[reason])
        yield n
        yield m.latency_us.family("ecard_decision_latency_us", "Frame received to reply written, microseconds")
        q = GaugeMetricFamily(
            "ecard_decision_latency_quantile_us",
            "Quantiles over the last 65,536 decisions (8,192 of them, evenly spaced), microseconds",
            labels=("quantile",),
        )
        for quantile, value in m.latency_us.quantiles():
            q.add_metric((str(quantile),), value)
        yield q
        d = GaugeMetricFamily("ecard_devices_connected", "Devices with an open session", labels=("kind",))
        connected = self._devices_connected()
        for kind in DeviceKind:
            d.add_metric((kind.name.lower(),), connected.get(kind, 0))
        yield d
        depth, oldest_ms, failures, db_up = self._journal_state()
        yield GaugeMetricFamily("ecard_journal_queue_depth", "Accepted events not yet durable", value=depth)
        yield GaugeMetricFamily("ecard_journal_oldest_pending_ms", "Age of the oldest non-durable event", value=oldest_ms)
        yield CounterMetricFamily("ecard_journal_flush_failures", "Failed group commits (retried)", value=failures)
        yield GaugeMetricFamily("ecard_journal_connected", "1 if the journal writer holds a connection", value=int(db_up))
        yield m.batch_events.family("ecard_journal_flush_batch_events", "Events per group commit")
        yield m.flush_ms.family("ecard_journal_flush_duration_ms", "Duration of one group commit, ms")
        yield m.durable_lag_ms.family("ecard_durable_lag_ms", "Decision to COMMIT, ms")
        yield m.loop_lag_ms.family("ecard_event_loop_lag_ms", "How late an event-loop timer fires, ms")
        yield m.gc_pauses.family()
        times = thread_schedstat(self._loop_schedstat) if self._loop_schedstat else None
        if times is not None:
            yield CounterMetricFamily(
                "ecard_event_loop_thread_cpu_seconds", "The event loop's thread on a CPU, seconds", value=times[0]
            )
            yield CounterMetricFamily(
                "ecard_event_loop_thread_runqueue_wait_seconds",
                "The event loop's thread ready to run but waiting for a CPU (the cores were busy with others), seconds",
                value=times[1],
            )
        pages, resets, unseen = self._allowance_state()
        yield CounterMetricFamily("ecard_allowance_pages", "ALLOWANCE_PAGEs sent to tills", value=pages)
        yield CounterMetricFamily("ecard_allowance_resets", "ALLOWANCE_PAGEs that started a till afresh", value=resets)
        yield GaugeMetricFamily(
            "ecard_allowance_tills_unseen",
            "Tills of schools with an offline floor not synced since the start (their schools keep the floor reserved)",
            value=unseen,
        )
        q = GaugeMetricFamily(
            "ecard_durable_lag_quantile_ms", "Quantiles over the last 65,536 events (8,192 of them, evenly spaced), ms",
            labels=("quantile",),
        )
        for quantile, value in m.durable_lag_ms.quantiles():
            q.add_metric((str(quantile),), value)
        yield q


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000
