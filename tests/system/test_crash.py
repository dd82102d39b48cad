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


def test_sigkill_while_the_journal_queue_is_full_loses_nothing(demo_dsn, tmp_path):
    """PostgreSQL is cut until the gateway's journal queue is full (live taps get
    TRY_AGAIN_LATER, replayed advices NAK SERVER_BUSY), then the gateway is SIGKILLed.
    Devices keep what no watermark of their session confirmed (docs/protocol.md 10):
    after the restart every accepted sale is journaled exactly once."""
    import re
    import time as _time

    from tests.support import TcpProxy, pg_upstream, proxied_dsn

    port = free_port()
    upstream, _ = pg_upstream(demo_dsn)
    proxy = TcpProxy(upstream).start()
    gateway_dsn = proxied_dsn(demo_dsn, proxy.port)
    current: list[GatewayProcess] = []
    refused = {"try_again_later": 0, "server_busy": 0}

    def make_gateway() -> GatewayProcess:
        gw = GatewayProcess(
            gateway_dsn,
            tmp_path / "gateway.log",
            ECARD_LISTEN_PORT=str(port),
            ECARD_BATCH_EVENTS_MAX="16",
            ECARD_JOURNAL_QUEUE_EVENTS_MAX="64",
            ECARD_STATEMENT_TIMEOUT_MS="500",
            ECARD_RETRY_BACKOFF_MS_MAX="100",
        )
        current[:] = [gw]
        return gw

    def count(text: str, pattern: str) -> int:
        return int(sum(float(v) for v in re.findall(pattern + r"\S* (\S+)", text, re.M)))

    async def cut_until_full(round_no: int) -> None:
        proxy.cut()
        deadline = _time.monotonic() + 30
        while True:
            text = await asyncio.to_thread(current[0].metrics_text)
            depth = count(text, r"^ecard_journal_queue_depth")
            # Full, and refusing: live taps TRY_AGAIN_LATER, or (when every device is busy
            # replaying what the last kill left it, as after a round with many kept txns) the
            # replayed advices NAK SERVER_BUSY.
            refusing = count(text, r'ecard_decisions_total\{kind="\w+",reason="TRY_AGAIN_LATER"\}') + count(
                text, r'ecard_naks_total\{reason="SERVER_BUSY"\}')
            if depth >= 64 and refusing > 0:
                refused["try_again_later"] += count(text, r'ecard_decisions_total\{kind="\w+",reason="TRY_AGAIN_LATER"\}')
                refused["server_busy"] += count(text, r'ecard_naks_total\{reason="SERVER_BUSY"\}')
                return
            assert _time.monotonic() < deadline, f"the journal queue never filled (depth {depth}, refusing {refusing})"
            await asyncio.sleep(0.05)

    async def restore(round_no: int) -> None:
        proxy.restore()

    try:
        result = asyncio.run(
            run_crash(
                demo_dsn,
                make_gateway,
                port=port,
                log_dir=tmp_path / "sim",
                seed=23,
                rounds=3,
                turnstiles=4,
                tills=2,
                disconnect_rate=0.03,
                accepts_per_round=(300, 600),
                tail_accepts=300,
                phase_timeout_s=60.0,
                settle_s=60.0,
                before_kill=cut_until_full,
                after_kill=restore,
            )
        )
    finally:
        proxy.close()
    assert result.ok, result.verdict()
    assert result.kills == 3
    assert refused["try_again_later"] > 0, "the queue was full: live taps were refused (in some round)"
    print("refused while full:", refused)
    assert result.report.journal_rows == result.report.logged_accepts > 0
