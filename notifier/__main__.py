"""python -m notifier [--config notifier.toml] [purge]

Takes the parents' events in from MQTT (the relay's stream), records one delivery per
(event, representative, channel) and sends them: e-mail (SMTP), app and Smart-TV push (MQTT), SMS (SMPP).
Every setting is a field of notifier/config.py (TOML file, or ECARD_NOTIFIER_<FIELD>;
ECARD_PG_DSN, ECARD_MQTT_URL, ECARD_DATA_DIR are shared). See docs/notifier.md.

``purge``: delete once what is older than retention_days (as the running notifier does every
purge_interval_ms), print what went, and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .app import run
from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", help="TOML file with NotifierConfig fields")
    commands = parser.add_subparsers(dest="command", metavar="{purge}")
    purge = commands.add_parser("purge", help="delete the records older than retention_days once, then exit")
    purge.add_argument("--config", default=argparse.SUPPRESS, help="TOML file with NotifierConfig fields")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"notifier: configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "purge":
        return _purge(config)
    return run(config)


def _purge(config) -> int:
    from storage import database

    from .retention import describe, purge_once

    dsn = config.pg_dsn or database.start_embedded(Path(config.data_dir).resolve())
    report = asyncio.run(purge_once(config, dsn))
    print(f"notifier: {describe(report, config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
