"""SIGKILL the gateway under load, restart it on the same port: nothing accepted is lost or doubled."""

from __future__ import annotations

import asyncio

from simulators.crash import free_port, run_crash
from tests.support import GatewayProcess


def test_sigkill_under_load_loses_and_doubles_nothing(demo_dsn, tmp_path):
    port = free_port()

    def make_gateway() -> GatewayProcess:
        # A slower group commit leaves accepted-but-not-durable txns for every kill to lose.
        return GatewayProcess(
            demo_dsn, tmp_path / "gateway.log", ECARD_LISTEN_PORT=str(port), ECARD_FLUSH_INTERVAL_MS="50"
        )

    result = asyncio.run(
        run_crash(
            demo_dsn,
            make_gateway,
            port=port,
            log_dir=tmp_path / "sim",
            seed=11,
            rounds=3,
            turnstiles=4,
            tills=2,
            disconnect_rate=0.03,
            accepts_per_round=(1000, 3000),
            tail_accepts=1000,
            phase_timeout_s=30.0,
            settle_s=30.0,
        )
    )
    assert result.ok, result.verdict()
    assert result.kills == 3
    # The kills did lose accepted-but-not-durable txns, and the replays brought them back.
    assert result.stats.replays_applied > 0
    assert result.report.journal_rows == result.report.logged_accepts > 0
