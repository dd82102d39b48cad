"""Thin CLI: ``python -m gateway run [--config FILE] [--demo]``."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="ecard card-processing gateway for school turnstiles and canteen tills. "
        "Settings come from --config (TOML) and ECARD_<FIELD> environment variables "
        "(e.g. ECARD_PG_DSN, ECARD_LISTEN_PORT); see gateway/config.py for every field.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the gateway (Ctrl-C shuts down in order)")
    run.add_argument("--config", help="TOML file with Config fields")
    run.add_argument("--demo", action="store_true", default=None, help="load the demo dataset into an empty database")
    run.add_argument("--port", type=int, dest="listen_port", help="device listener port (default 7700)")
    run.add_argument("--metrics-port", type=int, dest="metrics_port", help="Prometheus port (default 9108)")
    check = sub.add_parser("check-config", help="validate the configuration and print it")
    check.add_argument("--config")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        import msgspec

        print(msgspec.json.format(msgspec.json.encode(config).decode(), indent=2))
        return 0
    from .app import run as run_gateway

    return run_gateway(config)


if __name__ == "__main__":
    sys.exit(main())
