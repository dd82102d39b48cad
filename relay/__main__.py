"""Thin CLI: ``python -m relay run | broker | mosquitto-files | check-config``."""

from __future__ import annotations

import argparse
import sys

from .config import EMBEDDED_BROKER_HOST, EMBEDDED_BROKER_PORT, TOPIC_PREFIX, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relay",
        description="ecard's outbox relay: publishes the parents' notices to MQTT with QoS 1, in outbox order, "
        "and marks what the broker acknowledged. Settings: --config (TOML), ECARD_PG_DSN, ECARD_MQTT_URL "
        "(mqtt://user:password@host:port; empty: the embedded broker on 127.0.0.1:1884) and "
        "ECARD_RELAY_<FIELD> (see relay/config.py). Topics and format: docs/notices.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the relay (Ctrl-C stops after the batch in flight)")
    run.add_argument("--config", help="TOML file with RelayConfig fields")
    run.add_argument("--metrics-port", type=int, dest="metrics_port", help="Prometheus port (default 9109)")
    run.add_argument(
        "--embedded-broker", action="store_true", help="also run the embedded amqtt broker in this process"
    )
    check = sub.add_parser("check-config", help="validate the configuration and print it")
    check.add_argument("--config")
    broker = sub.add_parser("broker", help="run the embedded MQTT broker (amqtt, anonymous, loopback)")
    broker.add_argument("--host", default=EMBEDDED_BROKER_HOST)
    broker.add_argument("--port", type=int, default=EMBEDDED_BROKER_PORT)
    files = sub.add_parser("mosquitto-files", help="write mosquitto.conf, passwd and acl with ecard's rules")
    files.add_argument("--dir", required=True, help="where to write them")
    files.add_argument("--passwords", required=True, help="user:password lines; decimal names are representatives")
    files.add_argument("--relay-user", default="ecard-relay")
    files.add_argument("--notifier-user", default=None)
    files.add_argument("--host", default="127.0.0.1")
    files.add_argument("--port", type=int, default=1883)
    files.add_argument("--prefix", default=TOPIC_PREFIX)
    files.add_argument("--run-as", default=None, help="mosquitto's user (when started as root)")
    files.add_argument("--persistent", action="store_true", help="keep sessions and queued messages across restarts")
    args = parser.parse_args(argv)

    if args.command == "broker":
        import asyncio
        import logging

        from .broker import serve as serve_broker

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return asyncio.run(serve_broker(args.host, args.port))
    if args.command == "mosquitto-files":
        from pathlib import Path

        from .mosquitto import read_users_file, write_files

        users = read_users_file(Path(args.passwords))
        representatives = {name: pw for name, pw in users.items() if name.isdigit()}
        services = {name: pw for name, pw in users.items() if not name.isdigit()}
        written = write_files(
            Path(args.dir), args.port, relay_user=args.relay_user, users=services, notifier_user=args.notifier_user,
            representatives=representatives, prefix=args.prefix, host=args.host, persistent=args.persistent,
            run_as=args.run_as,
        )
        print(f"wrote {written.conf}, {written.passwd}, {written.acl}; start: mosquitto -c {written.conf}")
        return 0
    overrides = {"metrics_port": getattr(args, "metrics_port", None)}
    try:
        config = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        import msgspec

        from .config import redacted

        print(msgspec.json.format(msgspec.json.encode(redacted(config)).decode(), indent=2))
        return 0
    from .app import run as run_relay

    return run_relay(config, embedded_broker=args.embedded_broker)


if __name__ == "__main__":
    sys.exit(main())
