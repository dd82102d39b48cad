"""``make bench``: ecard against a bare ceiling and the usual baseline, on this machine, in one run.

    python -m loadtests.bench [--quick] [--out bench-results/]

Phases (each server and the load generator run in their own processes):
  a. ceiling   closed loop at 1, 100, 1,000 devices (constant replies: the upper bound)
  b. baseline  the same loads, one PostgreSQL transaction per tap (the usual design)
  c. ecard     the same loads against ``python -m gateway run``
  d. paced     ecard at 20,000 taps/s over 1,000 devices: server p99, client p99, tap->durable p99
  e. storm     19,000 devices connect and HELLO at once to one gateway; time to all HELLO_ACKs, held
  f. cache     a gateway started on 2,000,000 accounts: cache load time and RSS
  crash (long) ``python -m simulators crash --rounds 10`` if that module exists (not with --quick)

PostgreSQL: ECARD_PG_DSN's server (databases created and dropped here) or an
embedded one in a temporary directory. ``--quick`` shortens every phase to a
few seconds and scales the storm and the big cache down (for tests); its
figures are not the benchmark's. Results: a printed table,
bench-results/bench-<time>.json and the servers' logs in bench-results/logs-<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

from . import procs
from .loadgen import run_load
from .workloads import device_ids, split_devices, workload

CONCURRENCIES = (1, 100, 1_000)
TARGETS = {
    "throughput_vs_ceiling_min": 0.60,
    "throughput_vs_baseline_min": 20.0,
    "cpu_per_decision_vs_ceiling_max": 1.6,
    "paced_server_p99_us_max": 250,
    "paced_client_p99_us_max": 2_000,
    "paced_durable_p99_ms_max": 20,
    "cache_load_s_max": 10.0,
    "cache_rss_mib_max": 600,
    "rules_throughput_vs_core_min": 0.80,
}


class Plan:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.warmup_s = 1.0 if quick else 3.0
        self.duration_s = 2.0 if quick else 10.0
        self.paced_rate = 20_000
        self.paced_devices = 1_000
        self.storm_devices = 2_000 if quick else 19_000
        self.big_pupils = 100_000 if quick else 2_000_000
        self.pupils = 100_000

    def processes(self, devices: int) -> int:
        # 2 cores: one process drives the closed loop; a second one only at 1,000 devices.
        return 1 if devices <= 100 else 2

    def storm_processes(self) -> int:
        # Idle connections are cheap to hold but each process may open only 20,000 files.
        return max(2, math.ceil(self.storm_devices / 5_000))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(server: procs.ServerProcess | None, plan: Plan, **load) -> dict:
    """One load against ``server``; adds the server's CPU over the measured window."""
    marks: dict[str, float] = {}

    def busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    def start() -> None:
        marks["busy0"], marks["t0"] = busy(), time.perf_counter()
        if server is not None:
            marks["cpu0"] = server.cpu_seconds()

    def end() -> None:
        marks["busy1"], marks["t1"] = busy(), time.perf_counter()
        if server is not None:
            marks["cpu1"] = server.cpu_seconds()

    result = run_load(
        "127.0.0.1",
        server.port if server is not None else load.pop("port"),
        warmup_s=plan.warmup_s,
        duration_s=plan.duration_s,
        pupils=plan.pupils,
        on_window_start=start,
        on_window_end=end,
        **load,
    )
    result.pop("workload", None)
    if "busy1" in marks:
        # Whole machine (every process, also PostgreSQL and anything else running): saturation shows here.
        result["machine_busy_cores"] = round((marks["busy1"] - marks["busy0"]) / (marks["t1"] - marks["t0"]), 2)
    if "cpu1" in marks:
        cpu = marks["cpu1"] - marks["cpu0"]
        result["server_cpu_window_s"] = round(cpu, 4)
        decided = result["window_replies"] - result.get("window_not_decided", 0)
        if decided:
            # Per decided tap: replies refused with TRY_AGAIN_LATER are work that decided nothing.
            result["server_cpu_us_per_decision"] = round(cpu / decided * 1e6, 2)
    return result


def wait_drained(gw: procs.ServerProcess, timeout_s: float = 120.0) -> float:
    """Wait until the gateway's journal queue is empty (a phase must not pay for the last one's backlog)."""
    t0 = time.monotonic()
    while procs.metric_sum(gw.metrics(), "ecard_journal_queue_depth") > 0:
        if time.monotonic() - t0 > timeout_s:
            log(f"journal still not drained after {timeout_s} s; going on")
            break
        time.sleep(0.1)
    return round(time.monotonic() - t0, 2)


def closed_series(name: str, server: procs.ServerProcess, plan: Plan, gateway: bool = False) -> dict:
    out = {}
    for c in CONCURRENCIES:
        log(f"{name}: closed loop at {c} devices")
        drained = wait_drained(server) if gateway else None
        before = server.metrics() if gateway else None
        r = measure(server, plan, mode="closed", devices=c, processes=plan.processes(c))
        if gateway:
            r["journal_drain_before_s"] = drained
            after = server.metrics()
            r["journal_queue_depth_after"] = int(procs.metric_sum(after, "ecard_journal_queue_depth"))
            r["server_latency_us"] = procs.quantiles(after, "ecard_decision_latency_quantile_us")
            r["server_decisions_delta"] = int(
                procs.metric_sum(after, "ecard_decisions_total") - procs.metric_sum(before, "ecard_decisions_total")
            )
        out[str(c)] = r
        log(f"{name} @ {c}: {r.get('throughput_per_s')} /s, client p99 {r['latency_us'].get('p99')} us")
    return out


def phase_ceiling(plan: Plan, logs: Path) -> dict:
    with procs.ceiling(logs / "ceiling.log").start() as server:
        return closed_series("ceiling", server, plan)


def phase_baseline(plan: Plan, logs: Path, dbs: procs.Databases) -> dict:
    w = workload("mixed")
    t, k = split_devices(w, max(CONCURRENCIES))
    log(f"baseline: database with {plan.pupils} pupils, {t} turnstiles, {k} tills")
    dsn = dbs.create(pupils=plan.pupils, turnstiles=t, tills=k)
    try:
        with procs.baseline(dsn, logs / "baseline.log").start() as server:
            return closed_series("baseline", server, plan)
    finally:
        dbs.drop(dsn)


def phase_ecard(plan: Plan, logs: Path, dbs: procs.Databases) -> dict:
    """c (closed loops), d (paced) and e (storm) against one gateway process."""
    w = workload("mixed")
    t, k = split_devices(w, max(plan.storm_devices, max(CONCURRENCIES), plan.paced_devices))
    log(f"ecard: database with {plan.pupils} pupils, {t} turnstiles, {k} tills")
    dsn = dbs.create(pupils=plan.pupils, turnstiles=t, tills=k)
    out: dict = {}
    try:
        with procs.gateway(dsn, logs / "gateway.log").start() as gw:
            out["load"] = procs.cache_loaded(logs / "gateway.log")
            out["closed"] = closed_series("ecard", gw, plan, gateway=True)
            wait_drained(gw)
        # A fresh gateway for the paced phase: its quantile rings hold only this phase's samples.
        with procs.gateway(dsn, logs / "gateway-paced.log").start() as gw:
            log(f"paced: {plan.paced_rate} taps/s over {plan.paced_devices} devices")
            r = measure(gw, plan, mode="paced", devices=plan.paced_devices, rate=plan.paced_rate, processes=1)
            m = gw.metrics()
            r["server_latency_us"] = procs.quantiles(m, "ecard_decision_latency_quantile_us")
            r["durable_lag_ms"] = procs.quantiles(m, "ecard_durable_lag_quantile_ms")
            r["journal_queue_depth_after"] = int(procs.metric_sum(m, "ecard_journal_queue_depth"))
            r["journal"] = journal_stats(m)
            out["paced"] = r
            wait_drained(gw)
            log(f"storm: {plan.storm_devices} devices HELLO at once")
            out["storm"] = phase_storm(plan, gw)
            out["rss_mib_after"] = round(gw.rss_mib(), 1)
    finally:
        dbs.drop(dsn)
    return out


# The full rule set of the money rules (issue "accounts, cards and money"): a third
# of the pupils carry parent controls that every basket is checked against item by
# item (bans and allergens that the workload's products do not hit, so the taps
# still pass, and generous per-period and per-day limits), pupils of grades 1-4
# are entitled to free meals, the school grants grace. The workload is the same
# as the core's, so the difference in throughput is the cost of the rules.
_RULES_SQL = (
    """
    INSERT INTO account_controls (account_id, period_limits_kopecks, items_per_day_max,
                                  banned_products, banned_categories, blocked_allergens, required_diet, cashier_note)
    SELECT id, '{"breakfast": 5000000, "lunch": 5000000, "snack": 5000000}', 1000000,
           '{1, 2}', '{salad}', '{peanuts, fish}', '{}', 'Проверить фото'
    FROM accounts WHERE kind = 1 AND id % 3 = 0
    """,
    "UPDATE school_policies SET grace_kopecks = 5000, grace_meals = 1",
    "UPDATE accounts SET daily_limit_kopecks = 5000000 WHERE kind = 1 AND id % 2 = 0",
)


async def _apply_rules(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in _RULES_SQL:
            await conn.execute(statement)
    finally:
        await conn.close()


def phase_rules(plan: Plan, logs: Path, dbs: procs.Databases) -> dict:
    """ecard with the full rule set: closed loop at the top concurrency, then paced."""
    w = workload("mixed")
    t, k = split_devices(w, max(max(CONCURRENCIES), plan.paced_devices))
    log(f"rules: database with {plan.pupils} pupils (controls on a third, free meals, grace), {t} turnstiles, {k} tills")
    dsn = dbs.create(pupils=plan.pupils, turnstiles=t, tills=k, free_meals=True)
    asyncio.run(_apply_rules(dsn))
    out: dict = {}
    try:
        with procs.gateway(dsn, logs / "gateway-rules.log").start() as gw:
            top = max(CONCURRENCIES)
            out["closed"] = {str(top): measure(gw, plan, mode="closed", devices=top, processes=plan.processes(top))}
            m = gw.metrics()
            out["closed"][str(top)]["server_latency_us"] = procs.quantiles(m, "ecard_decision_latency_quantile_us")
            wait_drained(gw)
        with procs.gateway(dsn, logs / "gateway-rules-paced.log").start() as gw:
            r = measure(gw, plan, mode="paced", devices=plan.paced_devices, rate=plan.paced_rate, processes=1)
            m = gw.metrics()
            r["server_latency_us"] = procs.quantiles(m, "ecard_decision_latency_quantile_us")
            r["durable_lag_ms"] = procs.quantiles(m, "ecard_durable_lag_quantile_ms")
            out["paced"] = r
            wait_drained(gw)
    finally:
        dbs.drop(dsn)
    return out


def journal_stats(m: dict) -> dict:
    """Mean group-commit size and duration since the gateway started."""
    out = {}
    for name, key in (("ecard_journal_flush_batch_events", "mean_batch_events"), ("ecard_journal_flush_duration_ms", "mean_flush_ms")):
        count = procs.metric_sum(m, name + "_count")
        if count:
            out[key] = round(procs.metric_sum(m, name + "_sum") / count, 1)
            out["flushes"] = int(count)
    return out


def phase_storm(plan: Plan, gw: procs.ServerProcess) -> dict:
    ids = device_ids(workload("mixed"), plan.storm_devices)

    def held(summary: dict) -> dict:
        m = gw.metrics()
        return {"gateway_devices_connected": int(procs.metric_sum(m, "ecard_devices_connected")), **summary}

    r = run_load(
        "127.0.0.1",
        gw.port,
        mode="storm",
        ids=ids,
        processes=plan.storm_processes(),
        pupils=plan.pupils,
        on_all_acked=held,
        timeout_s=600,
    )
    r.pop("workload", None)
    for k in ("latency_us", "outcomes", "total_outcomes", "window_replies"):
        r.pop(k, None)
    return r


def phase_cache(plan: Plan, logs: Path, dbs: procs.Databases) -> dict:
    log(f"cache: loading {plan.big_pupils:,} pupils into a new database")
    t0 = time.perf_counter()
    dsn = dbs.create(pupils=plan.big_pupils)
    dataset_s = time.perf_counter() - t0
    try:
        log_path = logs / "gateway-big.log"
        with procs.gateway(dsn, log_path).start(timeout_s=600) as gw:
            line = procs.cache_loaded(log_path)
            rss_now = gw.rss_mib()
        return {
            "pupils": plan.big_pupils,
            "dataset_load_s": round(dataset_s, 1),
            "cache": line,
            "rss_mib_listening": round(rss_now, 1),
        }
    finally:
        dbs.drop(dsn)


def phase_crash(logs: Path, dbs: procs.Databases) -> dict:
    import importlib.util

    if importlib.util.find_spec("simulators.__main__") is None and importlib.util.find_spec("simulators.crash") is None:
        return {"skipped": "simulators has no crash command yet (python -m simulators crash)"}
    # The crash driver makes (and drops) its own database on the server it is given.
    try:
        log("crash (long): python -m simulators crash --rounds 10")
        p = subprocess.run(
            [sys.executable, "-m", "simulators", "crash", "--rounds", "10", "--pg-dsn", dbs.admin_dsn],
            cwd=procs.ROOT,
            capture_output=True,
            text=True,
            timeout=3_600,
        )
        (logs / "crash.log").write_text(p.stdout + p.stderr)
        # Its last line is the verdict (or "CRASH TEST FAILED: ...").
        lines = [line for line in p.stdout.splitlines() if line.strip()]
        return {"returncode": p.returncode, "verdict": (lines or ["(no output)"])[-1]}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "verdict": "timed out after 3600 s"}


# ----------------------------------------------------------------------------- report


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def summarize(res: dict) -> dict:
    s: dict = {}
    c, b = res.get("ceiling", {}), res.get("baseline", {})
    e = res.get("ecard", {}).get("closed", {})
    top = str(max(CONCURRENCIES))
    if top in e and top in c:
        s["throughput_vs_ceiling"] = _ratio(e[top].get("throughput_per_s"), c[top].get("throughput_per_s"))
        s["cpu_per_decision_vs_ceiling"] = _ratio(
            e[top].get("server_cpu_us_per_decision"), c[top].get("server_cpu_us_per_decision")
        )
    if top in e and top in b:
        s["throughput_vs_baseline"] = _ratio(e[top].get("throughput_per_s"), b[top].get("throughput_per_s"))
    p = res.get("ecard", {}).get("paced")
    if p:
        s["paced_achieved_per_s"] = p.get("throughput_per_s")
        s["paced_server_p99_us"] = p.get("server_latency_us", {}).get("0.99")
        s["paced_client_p99_us"] = p["latency_us"].get("p99")
        s["paced_durable_p99_ms"] = p.get("durable_lag_ms", {}).get("0.99")
    rules = res.get("rules") or {}
    top_rules = (rules.get("closed") or {}).get(top)
    if top_rules and top in e:
        s["rules_throughput_vs_core"] = _ratio(top_rules.get("throughput_per_s"), e[top].get("throughput_per_s"))
    if rules.get("paced"):
        s["rules_paced_server_p99_us"] = rules["paced"].get("server_latency_us", {}).get("0.99")
    f = res.get("cache") or {}
    if f.get("cache"):
        s["cache_load_s"] = f["cache"]["load_s"]
        s["cache_rss_mib"] = f["cache"]["rss_mib"]
    checks = {
        "throughput_vs_ceiling": ("throughput_vs_ceiling_min", ">="),
        "throughput_vs_baseline": ("throughput_vs_baseline_min", ">="),
        "cpu_per_decision_vs_ceiling": ("cpu_per_decision_vs_ceiling_max", "<="),
        "paced_server_p99_us": ("paced_server_p99_us_max", "<"),
        "paced_client_p99_us": ("paced_client_p99_us_max", "<"),
        "paced_durable_p99_ms": ("paced_durable_p99_ms_max", "<"),
        "cache_load_s": ("cache_load_s_max", "<"),
        "rules_throughput_vs_core": ("rules_throughput_vs_core_min", ">="),
        "rules_paced_server_p99_us": ("paced_server_p99_us_max", "<"),
        "cache_rss_mib": ("cache_rss_mib_max", "<="),
    }
    verdicts = {}
    for key, (target, op) in checks.items():
        v, t = s.get(key), TARGETS[target]
        if v is None:
            continue
        ok = v >= t if op == ">=" else v <= t if op == "<=" else v < t
        verdicts[key] = {"value": v, "target": f"{op} {t}", "met": ok}
    s["targets"] = verdicts
    return s


def _fmt(v, nd=0) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float) and nd:
        return f"{v:,.{nd}f}"
    return f"{int(round(v)):,}" if isinstance(v, (int, float)) else str(v)


def table(res: dict) -> str:
    lines = []
    hdr = (
        f"{'system':<9} {'devices':>7} {'decisions/s':>12} {'cli p50':>8} {'cli p99':>8} {'cli p99.9':>9} "
        f"{'srv p50':>8} {'srv p99':>8} {'srv p99.9':>9} {'srv CPU/dec':>11} {'gen CPU/dec':>11} {'busy':>5} {'refused':>8}"
    )
    lines += [hdr, "-" * len(hdr)]
    series = [("ceiling", res.get("ceiling", {})), ("baseline", res.get("baseline", {})), ("ecard", res.get("ecard", {}).get("closed", {}))]
    for name, s in series:
        for c in CONCURRENCIES:
            r = s.get(str(c))
            if not r:
                continue
            lat, srv = r.get("latency_us", {}), r.get("server_latency_us", {})
            lines.append(
                f"{name:<9} {c:>7,} {_fmt(r.get('throughput_per_s')):>12} {_fmt(lat.get('p50')):>8} {_fmt(lat.get('p99')):>8} "
                f"{_fmt(lat.get('p999')):>9} {_fmt(srv.get('0.5')):>8} {_fmt(srv.get('0.99')):>8} {_fmt(srv.get('0.999')):>9} "
                f"{_fmt(r.get('server_cpu_us_per_decision'), 1):>11} {_fmt(r.get('loadgen_cpu_us_per_reply'), 1):>11} "
                f"{_fmt(r.get('machine_busy_cores'), 2):>5} {_fmt(r.get('window_not_decided')):>8}"
            )
    lines.append("(latencies in microseconds; cli = tap->reply at the load generator, srv = frame in->reply written in ecard;")
    lines.append(" srv CPU/dec = server process CPU per decided tap, gen CPU/dec = load generator CPU per reply, in the")
    lines.append(" measured window; busy = cores busy machine-wide (every process, PostgreSQL included);")
    lines.append(" decisions/s leaves out the refused replies: TRY_AGAIN_LATER (journal queue full) and NAKs)")
    e = res.get("ecard", {})
    p = e.get("paced")
    if p:
        lines.append("")
        lines.append(
            f"paced {p.get('target_rate', 0):,.0f} taps/s over {p['devices']:,} devices: achieved {_fmt(p.get('throughput_per_s'))}/s, "
            f"late taps {p.get('late', 0):,}; server p99 {_fmt(p.get('server_latency_us', {}).get('0.99'))} us, "
            f"client p99 {_fmt(p['latency_us'].get('p99'))} us (p99.9 {_fmt(p['latency_us'].get('p999'))}), "
            f"tap->durable p99 {_fmt(p.get('durable_lag_ms', {}).get('0.99'))} ms; machine busy {p.get('machine_busy_cores')} cores"
        )
    rl = res.get("rules") or {}
    if rl and "error" not in rl:
        rc = next(iter((rl.get("closed") or {}).values()), {})
        rp = rl.get("paced") or {}
        lines.append(
            f"rules (controls on a third of the pupils, free meals, grace): closed {_fmt(rc.get('throughput_per_s'))}/s "
            f"(server p99 {_fmt(rc.get('server_latency_us', {}).get('0.99'))} us); paced {_fmt(rp.get('throughput_per_s'))}/s, "
            f"server p99 {_fmt(rp.get('server_latency_us', {}).get('0.99'))} us, client p99 {_fmt((rp.get('latency_us') or {}).get('p99'))} us, "
            f"tap->durable p99 {_fmt(rp.get('durable_lag_ms', {}).get('0.99'))} ms"
        )
    st = e.get("storm")
    if st:
        held = st.get("held", {})
        lines.append(
            f"storm: {st['devices']:,} devices HELLO at once: {st.get('acked', 0):,} HELLO_ACKed in {st.get('all_acked_s')} s "
            f"({st.get('refused', 0)} refused); gateway held {held.get('gateway_devices_connected', '-'):,} sessions; "
            f"{st.get('heartbeat_replies', 0):,} heartbeats answered in {st.get('heartbeat_round_s')} s; "
            f"{st.get('lost_while_held', 0)} lost"
        )
    f = res.get("cache")
    if f and "error" not in f:
        cl = f.get("cache") or {}
        lines.append(
            f"cache: {f['pupils']:,} pupils: loaded in {cl.get('load_s', '-')} s, RSS {cl.get('rss_mib', '-')} MiB "
            f"(RSS when listening {f.get('rss_mib_listening')} MiB; dataset generated in {f.get('dataset_load_s')} s)"
        )
    for name in ("ceiling", "baseline", "ecard", "rules", "cache", "crash"):
        if isinstance(res.get(name), dict) and "error" in res[name]:
            lines.append(f"{name}: FAILED: {res[name]['error'][:300]}")
    cr = res.get("crash")
    if cr and "error" not in cr:
        lines.append(f"crash (long): {cr.get('verdict') or cr.get('skipped')}")
    s = res.get("summary", {})
    if s.get("targets"):
        lines.append("")
        lines.append("targets:")
        for key, v in s["targets"].items():
            lines.append(f"  {key:<30} {v['value']!s:>10}  target {v['target']:<10} {'met' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per phase, scaled-down storm and cache")
    ap.add_argument("--out", default="bench-results", help="directory for the JSON results")
    ap.add_argument(
        "--phases",
        default="ceiling,baseline,ecard,rules,cache,crash",
        help="comma-separated subset of ceiling,baseline,ecard,rules,cache,crash",
    )
    ap.add_argument("--storm-devices", type=int, help="devices in the reconnect storm (default 19,000; 2,000 with --quick)")
    ap.add_argument("--big-pupils", type=int, help="accounts for the cache phase (default 2,000,000; 100,000 with --quick)")
    ap.add_argument("--crash", choices=("auto", "skip", "run"), default="auto", help="auto: run unless --quick")
    args = ap.parse_args(argv)
    phases = set(args.phases.split(","))
    plan = Plan(args.quick)
    if args.storm_devices:
        plan.storm_devices = args.storm_devices
    if args.big_pupils:
        plan.big_pupils = args.big_pupils
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = out_dir / f"logs-{stamp}"  # server logs of this run, next to its JSON
    logs.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "memory_mib": psutil.virtual_memory().total >> 20,
        },
        "plan": {k: v for k, v in vars(plan).items()},
        "workload": workload("mixed"),
        "targets": TARGETS,
        "logs": str(logs),
    }
    log(f"logs in {logs}")
    dbs = procs.Databases()
    res["postgres"] = "ECARD_PG_DSN" if os.environ.get("ECARD_PG_DSN") else "embedded"
    run = {
        "ceiling": lambda: phase_ceiling(plan, logs),
        "baseline": lambda: phase_baseline(plan, logs, dbs),
        "ecard": lambda: phase_ecard(plan, logs, dbs),
        "rules": lambda: phase_rules(plan, logs, dbs),
        "cache": lambda: phase_cache(plan, logs, dbs),
        "crash": lambda: phase_crash(logs, dbs),
    }
    if args.crash == "skip" or (args.crash == "auto" and args.quick):
        phases.discard("crash")
    failed = []
    try:
        for name, phase in run.items():
            if name not in phases:
                continue
            try:
                res[name] = phase()
            except Exception as exc:  # one broken phase must not cost the others
                import traceback

                traceback.print_exc()
                log(f"phase {name} failed: {type(exc).__name__}: {exc}")
                res[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                failed.append(name)
    finally:
        dbs.close()
        res["summary"] = summarize(res)
        res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        path = out_dir / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
        path.write_text(json.dumps(res, indent=2, ensure_ascii=False))
        print(table(res))
        print(f"\nresults: {path}")
        if failed:
            print(f"FAILED phases: {', '.join(failed)} (see above and the logs in {logs})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
