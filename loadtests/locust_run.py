"""``make loadtest``: locust (headless) against a gateway, with locust's own statistics.

    python -m loadtests.locust_run [-u 50] [-r 10] [--run-time 30s] [--gateway HOST:PORT] [--csv PREFIX]

Without --gateway it makes a database (ECARD_PG_DSN's server or an embedded
one) with enough devices for the users (each locust user is one device, see
loadtests/locustfile.py), starts ``python -m gateway run`` on it, runs locust,
then stops the gateway and drops the database. With --gateway it only runs
locust; pass --turnstiles/--tills/--pupils to say what that gateway's dataset has.
The locust run is bounded: it is killed if it outlives --run-time by a minute.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import procs

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def seconds(run_time: str) -> float:
    """Locust's time string (30s, 2m, 1h30m, 45) in seconds."""
    total, found = 0.0, False
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", run_time):
        found = True
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit]
    if not found:
        raise ValueError(f"bad run time {run_time!r}")
    return total


def run_locust(
    host: str,
    port: int,
    users: int,
    spawn_rate: float,
    run_time: str,
    *,
    turnstiles: int,
    tills: int,
    pupils: int,
    csv_prefix: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "--run-time",
        run_time,
        "--host",
        f"tcp://{host}:{port}",
        "--only-summary",
        "--stop-timeout",
        "5",
    ]
    if csv_prefix:
        args += ["--csv", csv_prefix]
    env = {
        **os.environ,
        "ECARD_LOCUST_TURNSTILES": str(turnstiles),
        "ECARD_LOCUST_TILLS": str(tills),
        "ECARD_LOCUST_PUPILS": str(pupils),
        **(extra_env or {}),
    }
    return subprocess.run(
        args, cwd=procs.ROOT, env=env, capture_output=True, text=True, timeout=seconds(run_time) + 60
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.locust_run", description=__doc__.split("\n\n")[0])
    ap.add_argument("-u", "--users", type=int, default=50)
    ap.add_argument("-r", "--spawn-rate", type=float, default=10)
    ap.add_argument("--run-time", default="30s")
    ap.add_argument("--gateway", help="HOST:PORT of a running gateway (default: start one)")
    ap.add_argument("--turnstiles", type=int, help="turnstiles in the dataset (default: enough for the users)")
    ap.add_argument("--tills", type=int, help="tills in the dataset (default: enough for the users)")
    ap.add_argument("--pupils", type=int, default=10_000)
    ap.add_argument("--csv", help="locust --csv prefix (stats files)")
    args = ap.parse_args(argv)
    turnstiles = args.turnstiles or max(1, math.ceil(args.users * 0.6))
    tills = args.tills or max(1, args.users - turnstiles + 1)
    dbs = gw = None
    try:
        if args.gateway:
            host, _, port = args.gateway.rpartition(":")
            host, port_n = host or "127.0.0.1", int(port)
        else:
            dbs = procs.Databases()
            print(f"dataset: {args.pupils} pupils, {turnstiles} turnstiles, {tills} tills", file=sys.stderr)
            dsn = dbs.create(pupils=args.pupils, turnstiles=turnstiles, tills=tills)
            log_path = Path(tempfile.mkdtemp(prefix="ecard-locust-")) / "gateway.log"
            gw = procs.gateway(dsn, log_path).start()
            host, port_n = "127.0.0.1", gw.port
            print(f"gateway on {host}:{port_n} (log {log_path})", file=sys.stderr)
        p = run_locust(
            host,
            port_n,
            args.users,
            args.spawn_rate,
            args.run_time,
            turnstiles=turnstiles,
            tills=tills,
            pupils=args.pupils,
            csv_prefix=args.csv,
        )
        # Locust prints its summary (requests/s, percentiles) on stderr through its logger.
        print(p.stdout, end="")
        print(p.stderr, end="", file=sys.stderr)
        return p.returncode
    finally:
        if gw is not None:
            gw.stop()
        if dbs is not None:
            dbs.close()


if __name__ == "__main__":
    sys.exit(main())
