"""The simulators against a real gateway process: the journal must equal what they were told."""

from __future__ import annotations

import asyncio
import re

from simulators.device import KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP, read_logs
from simulators.scenarios import plan_lunch, plan_rush, run_lunch, run_rush
from simulators.verify import verify
from tests.support import GatewayProcess

_KIND_LABEL = {KIND_ENTRY: "entry", KIND_PASSAGE: "passage", KIND_PURCHASE: "purchase", KIND_TOPUP: "topup", 5: "balance"}
_DECISION_LINE = re.compile(r'^ecard_decisions_total\{kind="(\w+)",reason="(\w+)"\} ([0-9.e+]+)$', re.M)


def _decisions_metric(text: str) -> dict[tuple[str, str], int]:
    return {(k, r): int(float(v)) for k, r, v in _DECISION_LINE.findall(text) if float(v)}


def test_plans_replay_from_the_seed():
    assert plan_rush(7, 300, 4, 5.0, exit_rate=0.2) == plan_rush(7, 300, 4, 5.0, exit_rate=0.2)
    assert plan_rush(7, 300, 4, 5.0) != plan_rush(8, 300, 4, 5.0)
    assert plan_lunch(7, 300, 2, 5.0) == plan_lunch(7, 300, 2, 5.0)
    assert plan_lunch(7, 300, 2, 5.0) != plan_lunch(8, 300, 2, 5.0)
    for plan in plan_lunch(7, 1000, 2, 5.0):
        for action in plan:
            if action.op == "purchase":
                assert 1 <= len(action.items) <= 4 or sum(q * p for _c, q, p in action.items) > 50_000


def test_rush_and_lunch_match_the_journal(demo_dsn, tmp_path):
    logs = tmp_path / "sim"
    gateway = GatewayProcess(demo_dsn, tmp_path / "gateway.log").start()
    try:
        rush, rush_settled = asyncio.run(
            run_rush("127.0.0.1", gateway.port, pupils=600, seed=7, turnstiles=4, log_dir=logs, window_s=2.0,
                     exit_rate=0.2, progress_s=0)
        )
        lunch, lunch_settled = asyncio.run(
            run_lunch("127.0.0.1", gateway.port, pupils=1000, seed=7, tills=2, log_dir=logs, window_s=3.0,
                      progress_s=0)
        )
        metrics = _decisions_metric(gateway.metrics_text())
    finally:
        assert gateway.terminate() == 0
    assert rush_settled and lunch_settled
    report = asyncio.run(verify(demo_dsn, logs))
    assert report.ok, report.verdict()
    accepted = {d: s.accepted for d, s in read_logs(logs).items()}
    kinds = {rec["kind"] for recs in accepted.values() for rec in recs.values()}
    assert kinds == {KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP}
    assert report.journal_rows == rush.accepts + lunch.accepts - lunch.decisions.get((5, "OK"), 0)
    assert rush.denies.get("UNKNOWN_CARD", 0) > 0
    assert lunch.denies.get("INSUFFICIENT_FUNDS", 0) > 0
    assert lunch.denies.get("UNKNOWN_CARD", 0) > 0
    assert report.topups_kopecks > 0 and report.purchases_kopecks > 0
    # No disconnects, no restart: every decision the gateway counted reached a device.
    seen: dict[tuple[str, str], int] = {}
    for stats in (rush, lunch):
        for (kind, reason), n in stats.decisions.items():
            key = (_KIND_LABEL[kind], reason)
            seen[key] = seen.get(key, 0) + n
    assert metrics == seen


def test_disconnects_replay_exactly_once(demo_dsn, tmp_path):
    logs = tmp_path / "sim"
    gateway = GatewayProcess(demo_dsn, tmp_path / "gateway.log", ECARD_FLUSH_INTERVAL_MS="50").start()
    try:
        rush, rush_settled = asyncio.run(
            run_rush("127.0.0.1", gateway.port, pupils=500, seed=3, turnstiles=4, log_dir=logs, window_s=1.5,
                     disconnect_rate=0.1, progress_s=0)
        )
        lunch, lunch_settled = asyncio.run(
            run_lunch("127.0.0.1", gateway.port, pupils=600, seed=3, tills=2, log_dir=logs, window_s=1.5,
                      disconnect_rate=0.1, progress_s=0)
        )
    finally:
        assert gateway.terminate() == 0
    assert rush_settled and lunch_settled
    for stats in (rush, lunch):
        assert stats.injected_disconnects > 0 and stats.reconnects > 0
        assert stats.resends > 0
    assert rush.replays + lunch.replays > 0
    report = asyncio.run(verify(demo_dsn, logs))
    assert report.ok, report.verdict()
