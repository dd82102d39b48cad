"""CLI: ``python -m simulators {rush,lunch,fire,offline,tills,crash,verify} ...``."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

# Every scenario drives the demo's same devices (turnstiles 1000001.., tills 2000001..), so they all
# keep their logs in one place: a device's txn counter grows over its whole life (docs/protocol.md
# 10.1), whichever scenario drives it. A second directory would be a second life of the same device,
# with its counter back at 1: what the gateway had decided for those txns would answer it.
LOG_DIR_HELP = "directory of the per-device JSON-lines logs (one per device, shared by every scenario)"

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pupils", type=int, default=1000, help="pupils taking part (demo accounts 1..N)")
    p.add_argument("--seed", type=int, default=7, help="seed of everything the devices decide to send")
    p.add_argument("--gateway", default="127.0.0.1:7700", help="gateway device port, host:port")
    p.add_argument("--log-dir", default="var/sim", help=LOG_DIR_HELP)
    p.add_argument("--window-s", type=float, default=30.0, help="compressed length of the scenario, seconds")
    p.add_argument("--disconnect-rate", type=float, default=0.0, help="probability per request to drop the TCP connection")
    p.add_argument("--progress-s", type=float, default=2.0, help="seconds between progress lines (0: none)")
    p.add_argument("--deadline-s", type=float, default=120.0, help="give up when the gateway is unreachable this long")
    p.add_argument("--pg-dsn", default=os.environ.get("ECARD_PG_DSN", ""),
                   help="if set, compare the journal with the logs at the end (exit 1 on mismatch)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="ecard device simulators: seeded turnstile/till scenarios and the crash driver.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rush = sub.add_parser("rush", help="morning rush: pupils tap in at the turnstiles")
    _common(rush)
    rush.add_argument("--turnstiles", type=int, default=4)
    rush.add_argument("--exit-rate", type=float, default=0.0, help="share of pupils who also leave later")
    lunch = sub.add_parser("lunch", help="lunch: waves of pupils buy baskets at the tills")
    _common(lunch)
    lunch.add_argument("--tills", type=int, default=2)
    lunch.add_argument("--waves", type=int, default=3)
    fire = sub.add_parser("fire", help="fire drill: pupils in, the panel's alarm, turnstiles released, muster, reset")
    fire.add_argument("--pupils", type=int, default=1000, help="pupils of the demo school (accounts 1..N)")
    fire.add_argument("--inside", type=int, default=200, help="pupils who come in before the alarm")
    fire.add_argument("--exit-share", type=float, default=0.3, help="share of them who tap out during the alarm")
    fire.add_argument("--turnstiles", type=int, default=4)
    fire.add_argument("--offline", type=int, default=1, help="turnstiles cut off the network during the alarm")
    fire.add_argument("--seed", type=int, default=7)
    fire.add_argument("--gateway", default="127.0.0.1:7700", help="gateway device port, host:port")
    fire.add_argument("--log-dir", default="var/sim", help=LOG_DIR_HELP)
    fire.add_argument("--pg-dsn", default=os.environ.get("ECARD_PG_DSN", ""),
                      help="if set, check the journaled muster against the simulated presence (exit 1 on mismatch)")
    offline = sub.add_parser("offline", help="a turnstile loses the gateway, lets pupils in from its list, replays")
    offline.add_argument("--pupils", type=int, default=1000, help="pupils of the demo school (accounts 1..N)")
    offline.add_argument("--entering", type=int, default=30, help="pupils who come in while it is cut off")
    offline.add_argument("--seed", type=int, default=7)
    offline.add_argument("--gateway", default="127.0.0.1:7700", help="gateway device port, host:port")
    offline.add_argument("--log-dir", default="var/sim", help=LOG_DIR_HELP)
    offline.add_argument("--pg-dsn", default=os.environ.get("ECARD_PG_DSN", ""),
                         help="if set, check that every offline event is journaled once at its own time")
    tills = sub.add_parser("tills", help="both demo tills lose the gateway and sell alone within the school's floor")
    tills.add_argument("--pupils", type=int, default=60, help="demo pupils (of 1..1000) who try every till")
    tills.add_argument("--seed", type=int, default=7)
    tills.add_argument("--gateway", default="127.0.0.1:7700", help="gateway device port, host:port")
    tills.add_argument("--staff-api", default="http://127.0.0.1:8800", help="the staff API (to set the floor)")
    tills.add_argument("--token-file", default="var/operator-token.txt", help="an operator's token (make run writes it)")
    tills.add_argument("--log-dir", default="var/sim", help=LOG_DIR_HELP)
    tills.add_argument("--pg-dsn", default=os.environ.get("ECARD_PG_DSN", ""),
                       help="if set, check that every offline sale is journaled once at its own time")
    crash = sub.add_parser("crash", help="SIGKILL the gateway under load, restart it, verify the journal exactly")
    crash.add_argument("--rounds", type=int, default=10, help="SIGKILL+restart cycles")
    crash.add_argument("--seed", type=int, default=7)
    crash.add_argument("--pg-dsn", default=os.environ.get("ECARD_PG_DSN", ""),
                       help="PostgreSQL server (a fresh database is created on it and dropped after)")
    crash.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    crash.add_argument("--gateway-cmd", default="", help="command that runs the gateway (default: python -m gateway run)")
    crash.add_argument("--port", type=int, default=0, help="gateway device port (default: a free one)")
    crash.add_argument("--turnstiles", type=int, default=4)
    crash.add_argument("--tills", type=int, default=2)
    crash.add_argument("--pupils", type=int, default=1000)
    crash.add_argument("--disconnect-rate", type=float, default=0.02)
    crash.add_argument("--accepts-per-round", default="1000,3000", help="min,max accepted requests between kills")
    crash.add_argument("--tail-accepts", type=int, default=1000, help="accepted requests after the last restart")
    crash.add_argument("--flush-interval-ms", type=int, default=50, help="gateway group-commit interval")
    crash.add_argument("--log-dir", default="", help="device logs (default: a fresh temporary directory)")
    verify = sub.add_parser("verify", help="compare a database's journal with a directory of device logs")
    verify.add_argument("--pg-dsn", default=os.environ.get("ECARD_PG_DSN", ""), required=False)
    verify.add_argument("--log-dir", default="var/sim")
    args = parser.parse_args(argv)
    if args.command in ("rush", "lunch"):
        return asyncio.run(_scenario(args))
    if args.command == "crash":
        return asyncio.run(_crash(args))
    if args.command == "fire":
        return asyncio.run(_fire(args))
    if args.command == "tills":
        return asyncio.run(_tills(args))
    if args.command == "offline":
        return asyncio.run(_offline(args))
    return asyncio.run(_verify(args.pg_dsn, Path(args.log_dir)))


async def _verify(dsn: str, log_dir: Path) -> int:
    from .verify import verify

    if not dsn:
        print("verify: --pg-dsn or ECARD_PG_DSN is required", file=sys.stderr)
        return 2
    report = await verify(dsn, log_dir)
    print(report.verdict())
    return 0 if report.ok else 1


async def _scenario(args: argparse.Namespace) -> int:
    from .device import Unavailable
    from .scenarios import parse_gateway, run_lunch, run_rush

    host, port = parse_gateway(args.gateway)
    common = dict(
        pupils=args.pupils, seed=args.seed, log_dir=Path(args.log_dir), window_s=args.window_s,
        disconnect_rate=args.disconnect_rate, progress_s=args.progress_s, deadline_s=args.deadline_s,
    )
    try:
        if args.command == "rush":
            stats, settled = await run_rush(host, port, turnstiles=args.turnstiles, exit_rate=args.exit_rate, **common)
        else:
            stats, settled = await run_lunch(host, port, tills=args.tills, waves=args.waves, **common)
    except Unavailable as exc:
        print(f"{args.command} aborted: {exc}", file=sys.stderr)
        return 1
    print(f"{args.command} done (seed {args.seed}):")
    print(stats.summary())
    print("all accepted txns durable" if settled else "NOT SETTLED: some accepted txns never got a DURABLE_ACK")
    code = 0 if settled else 1
    if args.pg_dsn:
        code = max(code, await _verify(args.pg_dsn, Path(args.log_dir)))
    return code


async def _fire(args: argparse.Namespace) -> int:
    from .device import Unavailable
    from .fire import run_fire
    from .scenarios import parse_gateway

    host, port = parse_gateway(args.gateway)
    try:
        report = await run_fire(
            host, port, pupils=args.pupils, turnstiles=args.turnstiles, seed=args.seed, log_dir=Path(args.log_dir),
            inside=args.inside, exit_share=args.exit_share, offline=args.offline, pg_dsn=args.pg_dsn,
        )
    except Unavailable as exc:
        print(f"fire aborted: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


async def _tills(args: argparse.Namespace) -> int:
    from .device import Unavailable
    from .scenarios import parse_gateway
    from .tills_offline import run_tills_offline

    host, port = parse_gateway(args.gateway)
    try:
        token = Path(args.token_file).read_text().strip()
        report = await run_tills_offline(host, port, staff_api=args.staff_api, token=token, pupils=args.pupils,
                                         seed=args.seed, log_dir=Path(args.log_dir), pg_dsn=args.pg_dsn)
    except (Unavailable, OSError, RuntimeError) as exc:
        print(f"tills aborted: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


async def _offline(args: argparse.Namespace) -> int:
    from .device import Unavailable
    from .offline import run_offline
    from .scenarios import parse_gateway

    host, port = parse_gateway(args.gateway)
    try:
        report = await run_offline(host, port, pupils=args.pupils, entering=args.entering, seed=args.seed,
                                   log_dir=Path(args.log_dir), pg_dsn=args.pg_dsn)
    except Unavailable as exc:
        print(f"offline aborted: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


async def _crash(args: argparse.Namespace) -> int:
    import asyncpg

    from storage import database, demo, migrate

    from .crash import GatewaySubprocess, free_port, run_crash

    if not args.pg_dsn:
        print("crash: --pg-dsn or ECARD_PG_DSN is required", file=sys.stderr)
        return 2
    dsn = await database.create_database(args.pg_dsn, "ecard_crash")
    try:
        await asyncio.to_thread(migrate.upgrade, dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await demo.load_dataset(conn, pupils=args.pupils, turnstiles=args.turnstiles, tills=args.tills)
        finally:
            await conn.close()
        temporary = not args.log_dir
        log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="ecard-crash-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        port = args.port or free_port()
        cmd = shlex.split(args.gateway_cmd) if args.gateway_cmd else None
        env = {"ECARD_FLUSH_INTERVAL_MS": str(args.flush_interval_ms)}
        lo, hi = (int(x) for x in args.accepts_per_round.split(","))
        print(f"[crash] database {dsn}, gateway port {port}, logs in {log_dir}", flush=True)
        try:
            result = await run_crash(
                dsn,
                lambda: GatewaySubprocess(dsn, port, log_dir / "gateway.log", cmd, **env),
                port=port, log_dir=log_dir, seed=args.seed, rounds=args.rounds, turnstiles=args.turnstiles,
                tills=args.tills, pupils=args.pupils, disconnect_rate=args.disconnect_rate,
                accepts_per_round=(lo, hi), tail_accepts=args.tail_accepts,
            )
        except Exception as exc:  # a stalled load, a gateway that does not come back, ...
            print(f"CRASH TEST FAILED: {type(exc).__name__}: {exc} (logs in {log_dir})", flush=True)
            return 1
        print(result.verdict(), flush=True)
        if result.ok and temporary:
            shutil.rmtree(log_dir, ignore_errors=True)  # kept on failure, for the post-mortem
        return 0 if result.ok else 1
    finally:
        if not args.keep_db:
            await database.drop_database(args.pg_dsn, dsn)


if __name__ == "__main__":
    sys.exit(main())
