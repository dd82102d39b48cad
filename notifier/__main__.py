"""python -m notifier [--config notifier.toml]

Takes the parents' events in from MQTT (the relay's stream), records one delivery per
(event, representative, channel) and sends them: e-mail (SMTP), app and Smart-TV push (MQTT), SMS (SMPP).
Every setting is a field of notifier/config.py (TOML file, or ECARD_NOTIFIER_<FIELD>;
ECARD_PG_DSN, ECARD_MQTT_URL, ECARD_DATA_DIR are shared). See docs/notifier.md.
"""

from __future__ import annotations

import argparse
import sys

from .app import run
from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", help="TOML file with NotifierConfig fields")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"notifier: configuration: {exc}", file=sys.stderr)
        return 2
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
