"""Smoke tests of the benchmark tools (loadtests/): they speak the protocol and count honestly.

No timing assertions: these check that the tools work, not how fast anything is.
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import subprocess
import sys

import asyncpg
import psutil
import pytest

from loadtests import frames as F
from loadtests import journal_cost
from loadtests import procs
from loadtests.bench import Plan, saturation, summarize, table, throughput_bound_vs_ceiling
from loadtests.notices import summary_ms
from loadtests import perf_split
from loadtests.pyspy import own_time
from loadtests.loadgen import run_load
from loadtests.locust_run import run_locust
from loadtests.workloads import baskets, device_ids, split_devices, workload
from protocol import CardPresented, Connection, Decision, DenyReason, Hello, HelloAck, Passage, Purchase, Role
from protocol.auth import verify_hello
from storage.demo_dataset import demo_card_uid, demo_device_key, till_ids, turnstile_ids
from tests.support import GatewayProcess, wait_until


def test_fast_frames_are_what_the_protocol_decodes():
    turnstile, till = turnstile_ids(1)[0], till_ids(1)[0]
    gw = Connection(Role.GATEWAY)
    gw.receive_data(F.hello_frame(turnstile, 1, demo_device_key(turnstile)))
    hello = gw.next_event()
    assert type(hello) is Hello and verify_hello(demo_device_key(turnstile), turnstile, hello)
    gw.send(HelloAck(0, 0, 10_000))
    assert F.card_uid(42) == demo_card_uid(42)
    gw.receive_data(F.card_frame(turnstile, 1, 7, 2, 123, F.card_uid(42)))
    assert gw.next_event() == CardPresented(7, 0, 2, 123, demo_card_uid(42))
    gw.send(Decision(7, 1, 0, 0, 0, 0xFF, 1, ()))
    gw.receive_data(F.passage_frame(turnstile, 2, 8, 2, 124, 7, F.card_uid(42)))
    assert gw.next_event() == Passage(8, 0, 2, 124, 7, demo_card_uid(42))

    gw2 = Connection(Role.GATEWAY)
    gw2.receive_data(F.hello_frame(till, 2, demo_device_key(till)))
    gw2.next_event()
    gw2.send(HelloAck(0, 0, 10_000))
    basket = F.basket_bytes(baskets(workload("mixed"))[0])
    gw2.receive_data(F.purchase_frame(till, 1, 9, 456, F.card_uid(3), basket))
    event = gw2.next_event()
    assert type(event) is Purchase and event.txn == 9 and event.total_kopecks == basket[2]
    assert 1 <= len(event.items) <= 3


def test_workload_device_split():
    w = workload("mixed")
    assert split_devices(w, 1_000) == (600, 400)
    assert split_devices(w, 6) == (4, 2)  # the demo dataset's 4 turnstiles and 2 tills
    assert device_ids(w, 6) == turnstile_ids(4) + till_ids(2)


def test_ceiling_answers_frames(tmp_path):
    with procs.ceiling(tmp_path / "ceiling.log").start() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            device = turnstile_ids(1)[0]
            replies = []
            for frame in (
                F.hello_frame(device, 1, demo_device_key(device)),
                F.card_frame(device, 1, 1, 1, 0, F.card_uid(1)),
                F.card_frame(device, 2, 2, 1, 0, F.card_uid(1))[:-1] + b"\x00",  # bad CRC
            ):
                s.sendall(frame)
                buf = b""
                while not F.frame_end(buf):
                    buf += s.recv(4096)
                reply = buf[: F.frame_end(buf)]
                assert F.crc_ok(reply)
                replies.append(reply[F.OFF_TYPE])
    assert replies == [F.T_HELLO_ACK, F.T_DECISION, F.T_NAK]


def test_loadgen_counts_match_the_gateway(demo_dsn, tmp_path):
    gw = GatewayProcess(demo_dsn, tmp_path / "gateway.log").start()
    try:
        result = run_load(
            "127.0.0.1",
            gw.port,
            mode="closed",
            devices=6,
            processes=2,
            warmup_s=0.0,
            duration_s=120.0,
            pupils=1_000,
            requests_per_device=50,
        )
        metrics = procs.parse_metrics(gw.metrics_text())
    finally:
        gw.terminate()
    assert result["errors"] == [] and result["lost"] == 0
    assert result["hello_acked"] == 6
    totals = result["totals"]
    assert totals["sent"] == totals["decisions"] == 300 and totals["naks"] == 0, (totals, result["outcomes"])
    assert result["window_replies"] == 300 == result["latency_us"]["count"]
    assert set(result["outcomes"]) == {"CARD_PRESENTED", "PASSAGE", "PURCHASE"}
    assert sum(result["total_outcomes"].values()) == 300
    assert procs.metric_sum(metrics, "ecard_decisions_total") == totals["decisions"]
    accepted = sum(v for k, v in metrics["ecard_decisions_total"].items() if 'reason="OK"' in k)
    assert accepted == result["total_outcomes"].get("accept", 0)
    # Every granted card is followed by its PASSAGE, which the gateway accepts (a wrong
    # granted_txn would be NO_GRANT): the 4 turnstiles' 50 requests each alternate.
    cards, passages = result["outcomes"]["CARD_PRESENTED"], result["outcomes"]["PASSAGE"]
    assert passages == {"accept": cards["accept"]} == {"accept": 100}, (cards, passages)
    assert metrics["ecard_decisions_total"]['{kind="passage",reason="OK"}'] == 100


def test_locust_users_speak_the_protocol(demo_dsn, tmp_path):
    gw = GatewayProcess(demo_dsn, tmp_path / "gateway.log").start()
    try:
        p = run_locust(
            "127.0.0.1",
            gw.port,
            2,
            2,
            "5s",
            turnstiles=4,
            tills=2,
            pupils=1_000,
            csv_prefix=str(tmp_path / "locust"),
        )
    finally:
        gw.terminate()
    assert p.returncode == 0, p.stdout + p.stderr
    with open(tmp_path / "locust_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {(r["Type"], r["Name"]): r for r in rows}
    aggregated = by_name[("", "Aggregated")]
    assert int(aggregated["Request Count"]) > 2
    assert int(aggregated["Failure Count"]) == 0
    assert int(by_name[("HELLO", "accept")]["Request Count"]) == 2
    deny_names = {f"deny:{r.name}" for r in DenyReason}
    for (kind, name), row in by_name.items():
        if kind:
            assert kind in ("HELLO", "CARD_PRESENTED", "PASSAGE", "PURCHASE")
            assert name == "accept" or name in deny_names  # denies are successes with their own name
    # A granted card's PASSAGE follows it (the last grant of each of the 2 users may be cut off by
    # the end of the run), and the gateway accepts every one: it names a real grant.
    count = lambda kind, name: int(by_name[(kind, name)]["Request Count"]) if (kind, name) in by_name else 0  # noqa: E731
    cards = count("CARD_PRESENTED", "accept")
    assert cards > 0 and cards - 2 <= count("PASSAGE", "accept") <= cards
    assert [name for kind, name in by_name if kind == "PASSAGE"] == ["accept"]


def test_bench_report_renders_partial_results():
    res = {
        "ceiling": {"1000": {"throughput_per_s": 100.0, "latency_us": {"p99": 5}, "server_cpu_us_per_decision": 10.0}},
        "ecard": {
            "closed": {"1000": {"throughput_per_s": 70.0, "latency_us": {"p99": 7}, "server_cpu_us_per_decision": 12.0}},
            "held": {
                "rate": 3_500,
                "devices": 1_000,
                "basis": {"ecard_closed_1000_per_s": 70.0, "fraction": 0.5},
                "ecard": {
                    "throughput_per_s": 3_500.0,
                    "latency_us": {"p99": 900},
                    "server_latency_us": {"0.99": 40},
                    "durable_lag_ms": {"0.99": 30},
                    "server_cpu_us_per_decision": 25.0,
                    "pg_cpu_us_per_journaled": 6.0,
                    "saturated": [],
                },
                "ceiling": {"throughput_per_s": 3_500.0, "latency_us": {"p99": 300}, "server_cpu_us_per_decision": 10.0, "saturated": []},
                "cpu_per_decision_vs_ceiling": 2.5,
            },
        },
    }
    res["summary"] = summarize(res)
    targets = res["summary"]["targets"]
    assert targets["throughput_vs_ceiling"]["met"] is True
    assert targets["held_cpu_per_decision_vs_ceiling"]["value"] == 2.5
    assert targets["held_cpu_per_decision_vs_ceiling"]["met"] is False
    assert targets["held_pg_cpu_us_per_journaled"]["met"] is True
    assert targets["held_durable_p99_ms"]["met"] is False
    assert targets["throughput_vs_baseline"]["met"] is None  # no baseline in these results
    assert targets["notices_tap_to_channel_p99_ms"]["met"] is None  # no notices phase in these results
    res["notices"] = {
        "schools": 3, "pupils_per_school": 10, "window_s": 1.0, "purchase_rate": 0.3, "channels": ["email", "app_push"],
        "broker": "test", "rush": {"requests": 40}, "state": {"outbox": 25, "drained": True}, "deliveries": 50,
        "tap_to_channel_ms": {"all": summary_ms([5, 7, 1_500]), "email": summary_ms([5, 1_500]), "app_push": summary_ms([7])},
        "by_kind": {"entry": summary_ms([5, 7, 1_500])},
    }
    res["summary"] = summarize(res)
    assert res["summary"]["targets"]["notices_tap_to_channel_p99_ms"] == {
        "value": 1_500, "target": "< 1000", "met": False, "what": "tap -> handed to the channel p99 ms (< 1 s)"
    }
    text = table(res)
    assert "ceiling" in text and "ecard" in text and "held rate 3,500 taps/s" in text
    assert "notices: 3 schools x 10 pupils" in text and "tap -> handed to the channel p99" in text
    assert "PASS" in text and "MISS" in text and "NOT MEASURED" in text
    assert Plan(quick=True).duration_s < Plan(quick=False).duration_s
    assert Plan(quick=True).held_rate(25_172.4) == 12_600


def test_throughput_bound_counts_what_the_gateway_does_not_spend():
    # The ceiling: 40 us of the machine per decision, 16 of them its own. ecard: 5 s gateway, 2 s
    # PostgreSQL and 3 s else (the load generator) for 50,000 decisions: 60 us per decision that
    # no gateway change removes. With the targets met: 2 x 16 + 8 + 60 = 100 us against 40.
    ceiling = {"machine_cpu_window_s": 4.0, "server_cpu_window_s": 1.6, "window_decided": 100_000}
    ecard = {"machine_cpu_window_s": 10.0, "server_cpu_window_s": 5.0, "pg_cpu_window_s": 2.0,
             "window_decided": 50_000, "window_journaled": 50_000}
    assert throughput_bound_vs_ceiling(ecard, ceiling) == 0.4
    # Half the decisions journaled: PostgreSQL's 8 us per journaled decision is 4 per decision.
    assert throughput_bound_vs_ceiling(dict(ecard, window_journaled=25_000), ceiling) == round(40 / 96, 3)
    assert throughput_bound_vs_ceiling(ecard, {}) is None  # no ceiling in this run
    res = {"ceiling": {"1000": dict(ceiling, throughput_per_s=10_000.0)},
           "ecard": {"closed": {"1000": dict(ecard, throughput_per_s=2_000.0, loadgen_cpu_us_per_reply=58.0)}}}
    res["summary"] = summarize(res)
    assert res["summary"]["throughput_vs_ceiling_bound"] == 0.4
    assert "at most 0.4 on this machine even with both CPU targets met" in table(res)


def test_saturation_names_its_reasons():
    held = {"target_rate": 10_000, "throughput_per_s": 9_990.0, "totals": {"sent": 50_000}, "late": 10,
            "server_busy_cores": 0.4, "loadgen_busy_cores_per_process": 0.5, "machine_busy_cores": 1.2}
    assert saturation(held) == []
    behind = dict(held, throughput_per_s=9_000.0, late=5_000, server_busy_cores=0.95, window_not_decided=3)
    reasons = saturation(behind)
    assert len(reasons) == 4
    assert any("achieved" in r for r in reasons) and any("late taps" in r for r in reasons)
    assert any("server CPU" in r for r in reasons) and any("refused" in r for r in reasons)


def test_postgres_cpu_counts_processes_that_come_and_go():
    # (pid, start time) -> CPU seconds; "reaped": the postmaster's children_user + children_system.
    s0 = {"procs": {(1, 0.0): 1.0, (2, 0.0): 5.0, (3, 0.0): 2.0}, "reaped": 10.0, "t": 0.0}
    # pid 3 exited with 2.5 s in all (reaped), pid 4 started and used 0.25 s, pid 2 used 1 s more.
    s1 = {"procs": {(1, 0.0): 1.5, (2, 0.0): 6.0, (4, 7.0): 0.25}, "reaped": 12.5, "t": 1.0}
    assert procs.PostgresCPU.seconds(s0, s1) == pytest.approx(0.5 + 1.0 + 0.25 + 0.5)


def test_busiest_backend_is_the_one_that_ran_most_of_those_alive_in_both_snapshots():
    # (pid, start time) -> (ns on a CPU, ns waiting for one), over two seconds
    s0 = {"sched": {(1, 0.0): (10_000_000, 0), (2, 0.0): (0, 0), (3, 0.0): (0, 0)}, "t": 0.0}
    # pid 3 exited; pid 4 started (its whole time is not the window's); pid 2 ran 400 ms, pid 1 300 ms
    s1 = {"sched": {(1, 0.0): (310_000_000, 50_000_000), (2, 0.0): (400_000_000, 100_000_000),
                    (4, 9.0): (900_000_000, 0)}, "t": 2.0}
    assert procs.PostgresCPU.busiest_backend(s0, s1) == {"on_cpu_ms_per_s": 200.0, "waiting_for_cpu_ms_per_s": 50.0}
    assert procs.PostgresCPU.busiest_backend({"sched": {}, "t": 0.0}, s1) is None


def test_postgres_cpu_finds_the_server(pg_admin_dsn):
    pg = procs.PostgresCPU.find(pg_admin_dsn)
    assert pg is not None and pg.scope in ("server", "machine") and pg.pids
    s0 = pg.snapshot()
    assert s0["procs"] and procs.PostgresCPU.seconds(s0, pg.snapshot()) >= 0.0


@pytest.mark.pg
def test_snapshots_read_the_schedstat_of_the_measured_databases_backends(pg_admin_dsn):
    pg = procs.PostgresCPU.find(pg_admin_dsn)
    assert pg is not None

    async def main() -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            s0 = pg.snapshot([procs.database_name(pg_admin_dsn)])
            await conn.fetchval("SELECT count(*) FROM generate_series(1, 3000000)")  # some CPU
            s1 = pg.snapshot([procs.database_name(pg_admin_dsn)])
        finally:
            await conn.close()
        assert any(key[0] == pid for key in s1["sched"])
        busiest = procs.PostgresCPU.busiest_backend(s0, s1)
        assert busiest is not None and busiest["on_cpu_ms_per_s"] > 0

    asyncio.run(main())


@pytest.mark.pg
def test_journal_cost_per_commit_measures_each_statement_kind(pg_admin_dsn):
    dbs = procs.Databases(pg_admin_dsn)
    try:
        out = journal_cost.per_commit(calls=100, log=lambda _line: None, dbs=dbs)
    finally:
        dbs.close()
    figures = out["backend_cpu_us_per_call"]
    assert len(figures) == 5 and "one row INSERTed, COMMIT flushes the WAL" in figures
    assert all(v >= 0 for v in figures.values()) and any(v > 0 for v in figures.values())  # figures, not thresholds


def test_histogram_quantile_reads_bucket_bounds():
    m = procs.parse_metrics('x_bucket{le="1"} 5\nx_bucket{le="10"} 98\nx_bucket{le="+Inf"} 100\n')
    assert procs.histogram_quantile(m, "x", 0.5) == 10.0
    assert procs.histogram_quantile(m, "x", 0.99) == "> 10"
    assert procs.histogram_quantile(m, "y", 0.99) is None


def test_journal_stats_reads_the_group_commits_means_and_tail():
    from loadtests.bench import journal_stats

    m = procs.parse_metrics(
        "ecard_journal_flush_batch_events_count 4\necard_journal_flush_batch_events_sum 100\n"
        "ecard_journal_flush_duration_ms_count 4\necard_journal_flush_duration_ms_sum 30\n"
        'ecard_journal_flush_duration_ms_bucket{le="5"} 3\necard_journal_flush_duration_ms_bucket{le="20"} 4\n'
        'ecard_journal_flush_duration_ms_bucket{le="+Inf"} 4\n'
    )
    assert journal_stats(m) == {
        "mean_batch_events": 25.0, "mean_flush_ms": 7.5, "flushes": 4, "flush_ms_p99": 20.0, "flush_ms_p999": 20.0,
    }
    assert journal_stats({}) == {}  # no commits yet: the report leaves the line out


def test_window_delta_keeps_only_what_the_window_added():
    before = procs.parse_metrics('x_bucket{le="1"} 5\nx_bucket{le="+Inf"} 7\nx_count 7\nx_sum 30\ny_count 3\n')
    after = procs.parse_metrics('x_bucket{le="1"} 6\nx_bucket{le="+Inf"} 10\nx_count 10\nx_sum 90\ny_count 9\n')
    assert procs.window_delta(after, before, "y_count") == {"y_count": {"": 6.0}}  # a counter: its value
    window = procs.window_delta(after, before, "x")
    assert window == {"x_bucket": {'{le="1"}': 1.0, '{le="+Inf"}': 3.0}, "x_count": {"": 3.0}, "x_sum": {"": 60.0}}
    assert procs.histogram_quantile(window, "x", 0.5) == "> 1"  # 2 of the window's 3 above 1; since start it was <= 1
    assert procs.histogram_quantile(after, "x", 0.5) == 1.0


def test_histogram_by_label_reads_count_sum_and_the_highest_bucket_reached():
    from gateway.metrics import GcPauses
    from prometheus_client import CollectorRegistry, generate_latest

    pauses = GcPauses()
    pauses.generations[0].record(120)  # in (100, 250]
    pauses.generations[0].record(90)
    pauses.generations[2].record(400_000)  # past the last bound
    pauses.fold()

    class One:
        def collect(self):
            yield pauses.family()

    registry = CollectorRegistry()
    registry.register(One())
    m = procs.parse_metrics(generate_latest(registry).decode())
    got = procs.histogram_by_label(m, "ecard_gc_pause_us", "generation")
    assert got["0"] == {"count": 2.0, "sum": 210.0, "max_bound": 250.0}
    assert got["1"] == {"count": 0.0, "sum": 0.0, "max_bound": None}
    assert got["2"] == {"count": 1.0, "sum": 400_000.0, "max_bound": "> 250000"}
    assert procs.histogram_by_label(m, "absent", "generation") == {}


def test_pyspy_own_time_sums_innermost_frames():
    speedscope = {
        "shared": {"frames": [{"name": "run", "file": "a.py"}, {"name": "decide", "file": "b.py"}, {"name": "decide", "file": "b.py", "line": 9}]},
        "profiles": [{"samples": [[0, 1], [0, 2], [0], []], "weights": [1, 1, 2, 1]}],
    }
    summary = own_time(speedscope)
    assert summary["samples"] == 3 and summary["sampled_s"] == 4  # py-spy weighs samples in seconds
    assert [(r["function"], r["samples"], r["own_fraction"]) for r in summary["top"]] == [("decide", 2, 0.5), ("run", 1, 0.5)]
    assert sum(r["own_fraction"] for r in summary["top"]) == pytest.approx(1.0)


PERF_REPORT = """\
# Total Lost Samples: 0
#
# Samples: 7K of event 'cpu-clock:ppp'
# Event count (approx.): 7330330323
#
# Overhead  Shared Object
# ........  ........................................
#
    55.89%  libpython3.11.so.1.0
    25.15%  [kernel.kallsyms]
     4.16%  loop.cpython-311-x86_64-linux-gnu.so
     3.55%  _rust.abi3.so
     1.07%  protocol.cpython-311-x86_64-linux-gnu.so
     0.81%  pgproto.cpython-311-x86_64-linux-gnu.so
     0.66%  binascii.cpython-311-x86_64-linux-gnu.so
     0.15%  [vdso]
     0.07%  ld-linux-x86-64.so.2
"""


def test_perf_split_names_the_binaries_and_gives_each_its_share_per_decision():
    out = perf_split.parse(PERF_REPORT, us_per_decision=100.0)
    assert out["samples"] == 7000
    parts = {p["part"]: p for p in out["parts"]}
    assert list(parts) == ["python", "kernel", "uvloop", "cryptography", "asyncpg", "binascii", "other"]
    assert parts["asyncpg"]["percent"] == pytest.approx(1.88)  # its protocol and pgproto modules, summed
    assert parts["other"]["percent"] == pytest.approx(0.22)  # parts under SHARE_MIN_PERCENT
    assert parts["python"]["us_per_decision"] == pytest.approx(55.9) and parts["kernel"]["us_per_decision"] == 25.1
    assert sum(p["percent"] for p in out["parts"]) == pytest.approx(91.51)  # every row, nothing dropped
    text = "\n".join(perf_split.render(out, perf_split.parse(PERF_REPORT, 20.0), "t"))
    assert "python" in text and "55.9" in text and "11.2" in text  # the ceiling's column: 55.89% of 20 us


@pytest.mark.processes
def test_perf_split_samples_a_real_process(tmp_path):
    """perf (Debian's linux-perf) records a busy Python process; its time is found in the interpreter."""
    if perf_split.executable() is None:
        pytest.skip("perf is not installed (apt-get install linux-perf): the bench's --perf needs it")
    busy = subprocess.Popen([sys.executable, "-c", "import sys\nwhile True: sum(range(1000))"])
    try:
        recording = perf_split.start(busy.pid, tmp_path / "perf.data")
        assert recording is not None
        proc = psutil.Process(busy.pid)
        start_cpu_s = sum(proc.cpu_times()[:2])
        wait_until(lambda: sum(proc.cpu_times()[:2]) - start_cpu_s > 0.5, 30, "the busy process to use 0.5 s of CPU")
        out = recording.finish(us_per_decision=10.0)
    finally:
        busy.kill()
        busy.wait()
    if "error" in out and "perf_event_paranoid" in out["error"]:
        pytest.skip(f"perf may not sample here: {out['error']}")
    assert "error" not in out, out
    parts = {p["part"]: p["percent"] for p in out["parts"]}
    assert parts.get("python", 0) > 50, parts  # sum(range()) runs in the interpreter
    assert out["samples"] > 0


@pytest.mark.slow
def test_bench_quick_runs_every_phase(tmp_path):
    """``python -m loadtests.bench --quick`` end to end (about a minute): every phase reports, none fails."""
    out = tmp_path / "results"
    p = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--quick", "--out", str(out), "--storm-devices", "300", "--big-pupils", "5000"],
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (path,) = out.glob("bench-*-quick.json")
    res = json.loads(path.read_text())
    for c in ("1", "100", "1000"):
        assert res["ceiling"][c]["window_replies"] > 0
        assert res["baseline"][c]["window_replies"] > 0
        assert res["ecard"]["closed"][c]["window_replies"] > 0
    assert res["ecard"]["paced"]["window_replies"] > 0
    assert isinstance(res["ecard"]["paced"]["saturated"], list)
    # The held phase's gateway histograms cover its window (their raw series are not kept).
    held_ecard = res["ecard"]["held"]["ecard"]
    assert held_ecard["journal"]["flushes"] > 0 and "window_metrics" not in held_ecard
    assert set(held_ecard["gc_pauses"]) == {"0", "1", "2"} and held_ecard["event_loop_lag_ms"]["0.5"] is not None
    assert held_ecard["loop_thread_ms_per_s"]["on_cpu"] > 0 and held_ecard["loop_thread_ms_per_s"]["waiting_for_cpu"] >= 0
    # The turnstiles' grants are followed by their PASSAGEs, which ecard and the baseline journal.
    for system in (res["baseline"]["100"], res["ecard"]["closed"]["100"]):
        assert set(system["outcomes"]["PASSAGE"]) == {"accept"}, system["outcomes"]

    def positive(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

    # CPU of the machine, the servers and PostgreSQL over the window (figures, not thresholds).
    assert res["postgres_cpu"]["scope"] in ("server", "machine")
    for c in ("1", "100", "1000"):
        for system in (res["ceiling"][c], res["baseline"][c], res["ecard"]["closed"][c]):
            assert positive(system["machine_cpu_us_per_decision"])
            assert positive(system["server_cpu_us_per_decision"])
            assert system["pg_cpu_window_s"] >= 0
        assert positive(res["baseline"][c]["pg_cpu_us_per_journaled"])
        assert positive(res["ecard"]["closed"][c]["pg_cpu_us_per_journaled"])
    # The held rate: half of ecard's closed loop at 1,000 devices, ecard and the ceiling both paced at it.
    held = res["ecard"]["held"]
    assert positive(held["rate"]) and held["basis"]["ecard_closed_1000_per_s"] == res["ecard"]["closed"]["1000"]["throughput_per_s"]
    for name in ("ecard", "ceiling"):
        assert held[name]["target_rate"] == held["rate"]
        assert positive(held[name]["throughput_per_s"])
        assert positive(held[name]["server_cpu_us_per_decision"])
        assert positive(held[name]["machine_cpu_us_per_decision"])
        assert positive(held[name]["latency_us"]["p99"])
        assert isinstance(held[name]["saturated"], list)
    assert positive(held["ecard"]["pg_cpu_us_per_journaled"])
    assert positive(held["ecard"]["server_latency_us"]["0.99"])
    assert positive(held["ecard"]["durable_lag_ms"]["0.99"])
    assert positive(held["cpu_per_decision_vs_ceiling"])
    summary = res["summary"]
    for key in (
        "held_cpu_per_decision_vs_ceiling",
        "held_pg_cpu_us_per_journaled",
        "held_client_p99_us",
        "held_durable_p99_ms",
        "held_server_p99_us",
        "held_ecard_machine_cpu_us_per_decision",
        "throughput_vs_ceiling",
        "throughput_vs_baseline",
        "rules_throughput_vs_core",
    ):
        assert positive(summary[key]), key
        if key in summary["targets"]:
            assert summary["targets"][key]["met"] in (True, False)
    assert res["rules"]["paced"]["target_rate"] == held["rate"]
    storm = res["ecard"]["storm"]
    assert storm["acked"] == 300 and storm["held"]["gateway_devices_connected"] == 300
    assert res["cache"]["cache"]["accounts"] >= 5_000
    assert "crash" not in res  # --quick leaves the long crash phase out
    # PostgreSQL's CPU per journaled decision by part (loadtests.journal_cost), figures not thresholds.
    journal = res["journal"]
    assert set(journal["variants"]) == {variant.name for variant in journal_cost.VARIANTS}
    for variant in journal["variants"].values():
        assert positive(variant["rows"]) and positive(variant["wal_bytes_per_row"])
    assert positive(journal["variants"]["all"]["backend_cpu_us_per_row"])
    assert positive(journal["split_us_per_row"]["journal row"])
    # the floors' CPU may round to 0 in --quick's few rows (10 ms clock ticks); their rows and WAL are checked above
    assert set(journal["floor_us_per_row"]) == {"a journal row with no index", "one log row per batch"}
    # Notices (issue 8 part 4): tap -> handed to the channel under a rush at several schools.
    notices = res["notices"]
    assert notices["schools"] >= 2 and notices["state"]["drained"] is True
    assert positive(notices["events"]) and positive(notices["deliveries"])
    assert positive(notices["events_per_s"]) and positive(notices["deliveries_per_s"])
    assert notices["rush"]["errors"] == [] and positive(notices["rush"]["accepts"])
    assert notices["sms_subscribers"]["parents"] > 0 and notices["sms_subscribers"]["quiet_hours"] is None
    # PostgreSQL's CPU over the rush and its drain (the server runs on this machine here, embedded or not)
    assert positive(notices["pg_cpu_s"]) and positive(notices["pg_cpu_us"]["per_delivery"])
    for channel in ("all", "email", "app_push", "sms"):
        t = notices["tap_to_channel_ms"][channel]
        assert positive(t["count"]), channel
        for q in ("p50", "p99", "max"):
            assert positive(t[q]), (channel, q)
    assert set(notices["by_kind"]) >= {"entry", "purchase"}
    assert positive(summary["notices_tap_to_channel_p99_ms"])
    assert summary["targets"]["notices_tap_to_channel_p99_ms"]["met"] in (True, False)
    assert "tap -> handed to the channel p99" in p.stdout
    assert "targets (ratios and figures of this run):" in p.stdout
    assert "held rate" in p.stdout
    assert ("PASS" in p.stdout or "MISS" in p.stdout) and "NOT MEASURED" not in p.stdout
