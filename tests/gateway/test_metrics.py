"""gateway.metrics.Buckets: what the hot path records is folded into buckets and a ring in order,
and the quantiles read the whole ring, sorting at most QUANTILE_SORT_SAMPLES_MAX samples."""

from __future__ import annotations

import gc
import os
import threading
import random

import pytest

from gateway import metrics
from gateway.metrics import LATENCY_SAMPLES_MAX, QUANTILE_SORT_SAMPLES_MAX, Buckets
from ledger.machine import Tally


def test_fold_counts_each_sample_in_its_bucket_and_keeps_the_ring_in_order():
    b = Buckets((10, 100))
    for v in (1, 10, 11, 100, 101, 5_000):
        b.record(v)
    b.fold()
    assert b.counts == [2, 2, 2]  # <= 10, <= 100, above (bisect_left: a bound belongs to its bucket)
    assert b.total == 1 + 10 + 11 + 100 + 101 + 5_000
    assert list(b.samples[: b.filled]) == [1, 10, 11, 100, 101, 5_000] and b.cursor == 6
    b.observe(7)  # one at once, after what was recorded
    assert b.counts == [3, 2, 2] and b.samples[6] == 7 and b.filled == 7


def test_the_ring_wraps_and_keeps_the_most_recent_samples():
    b = Buckets((10,))
    for v in range(LATENCY_SAMPLES_MAX + 5):
        b.record(v)
    b.fold()
    assert b.filled == LATENCY_SAMPLES_MAX and b.cursor == 0
    assert min(b.samples) == 5 and max(b.samples) == LATENCY_SAMPLES_MAX + 4  # the oldest 5 are gone
    for v in (-1, -2):
        b.record(v)
    b.fold()
    assert b.cursor == 2 and list(b.samples[:2]) == [-1, -2] and b.samples[2] == 7


def test_quantiles_are_exact_while_the_ring_holds_no_more_than_a_sort_takes():
    rng = random.Random(7)
    values = [rng.randrange(1_000_000) for _ in range(QUANTILE_SORT_SAMPLES_MAX)]
    b = Buckets((10,))
    for v in values:
        b.record(v)
    b.fold()
    ordered = sorted(values)
    assert b.quantiles((0.5, 0.99, 0.999)) == [
        (q, ordered[int(q * len(ordered))]) for q in (0.5, 0.99, 0.999)
    ]


def test_quantiles_of_a_full_ring_sort_evenly_spaced_samples_of_all_of_it(monkeypatch):
    sorted_lengths = []
    real_sorted = sorted

    def counting_sorted(data):
        sorted_lengths.append(len(data))
        return real_sorted(data)

    monkeypatch.setattr(metrics, "sorted", counting_sorted, raising=False)
    b = Buckets((10,))
    # the older half of the ring is fast (1 us), the newer half slow (1,000 us)
    for v in [1] * (LATENCY_SAMPLES_MAX // 2) + [1_000] * (LATENCY_SAMPLES_MAX // 2):
        b.record(v)
    b.fold()
    sorted_lengths.clear()
    got = dict(b.quantiles((0.25, 0.75)))
    assert sorted_lengths == [QUANTILE_SORT_SAMPLES_MAX]  # not the whole ring
    assert got == {0.25: 1, 0.75: 1_000}  # both halves of the ring are in the sample

    rng = random.Random(11)
    values = list(range(LATENCY_SAMPLES_MAX))
    rng.shuffle(values)
    b = Buckets((10,))
    for v in values:
        b.record(v)
    b.fold()
    for q, value in b.quantiles((0.5, 0.9, 0.99, 0.999)):
        # the exact quantile is q * 65,536; a sample of 8,192 lands within a few hundred of it
        assert value == pytest.approx(q * LATENCY_SAMPLES_MAX, abs=0.01 * LATENCY_SAMPLES_MAX), q


def test_a_sample_recorded_during_a_fold_waits_for_the_next_fold(monkeypatch):
    """GC pauses are recorded from whichever thread collects (the scrape's too): an append that
    lands while the loop folds must not be dropped with the samples folded."""
    b = Buckets((10, 100))
    for v in (1, 50):
        b.record(v)
    real_sorted = sorted

    def sorted_while_another_thread_records(data):
        b.record(500)  # what another thread appends between the fold's read and its clear
        return real_sorted(data)

    monkeypatch.setattr(metrics, "sorted", sorted_while_another_thread_records, raising=False)
    b.fold()
    monkeypatch.undo()
    assert b.counts == [1, 1, 0] and list(b.pending) == [500]
    b.fold()
    assert b.counts == [1, 1, 1] and not b.pending and b.total == 551


def test_gc_pauses_times_each_collection_under_its_generation():
    pauses = metrics.GcPauses()
    pauses.install()
    try:
        pauses.install()  # idempotent: one hook, one sample per collection
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.uninstall()
    gc.collect(0)  # not recorded any more
    pauses.fold()
    counts = [sum(b.counts) for b in pauses.generations]
    # Collections the test's own allocations triggered may add to generation 0, never to 1 or 2.
    assert counts[1:] == [1, 2]
    assert pauses not in gc.callbacks
    family = pauses.family()
    assert family.name == "ecard_gc_pause_us"
    by_generation = {
        s.labels["generation"]: s.value for s in family.samples if s.name == "ecard_gc_pause_us_count"
    }
    assert by_generation == {"0": counts[0], "1": 1, "2": 2}


def test_thread_schedstat_reads_cpu_and_runqueue_wait(tmp_path):
    path = tmp_path / "schedstat"
    path.write_text("2500000000 125000000 77\n")
    assert metrics.thread_schedstat(str(path)) == (2.5, 0.125)
    assert metrics.thread_schedstat(str(tmp_path / "absent")) is None
    path.write_text("garbage\n")
    assert metrics.thread_schedstat(str(path)) is None


@pytest.mark.skipif(not os.path.exists(metrics.schedstat_path(threading.get_native_id())), reason="Linux schedstat only")
def test_the_collector_exports_the_loop_threads_cpu_and_wait():
    collector = metrics.GatewayCollector(
        metrics.GatewayMetrics(Tally()), lambda: {}, lambda: (0, 0, 0, True),
        loop_schedstat=metrics.schedstat_path(threading.get_native_id()),
    )
    families = {f.name: f for f in collector.collect()}
    on_cpu = families["ecard_event_loop_thread_cpu_seconds"].samples[0].value
    waited = families["ecard_event_loop_thread_runqueue_wait_seconds"].samples[0].value
    assert on_cpu > 0 and waited >= 0  # this thread has run (it is running this test)
    # Without a file (not Linux) the two are left out, not zero.
    families = {f.name for f in metrics.GatewayCollector(metrics.GatewayMetrics(Tally()), lambda: {}, lambda: (0, 0, 0, True)).collect()}
    assert "ecard_event_loop_thread_cpu_seconds" not in families
