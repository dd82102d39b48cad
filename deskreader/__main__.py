"""python -m deskreader --reader NAME --desk NAME --token-file FILE [--staff-url URL]

Watches one PC/SC reader and posts each card's UID to the staff API's desk reader
(docs/desk-reader.md). Every option is also ECARD_DESKREADER_<OPTION> (the command line wins).
Needs pyscard and pcscd: python -m deskreader.install (make deskreader-deps).
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, DeskReaderConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deskreader", description=__doc__.split("\n\n")[1])
    for field in DeskReaderConfig.__struct_fields__:
        parser.add_argument("--" + field.replace("_", "-"), dest=field, default=None,
                            help=f"(env ECARD_DESKREADER_{field.upper()})")
    args = parser.parse_args(argv)
    try:
        config = load_config(**vars(args))
        config.token()
    except ConfigError as exc:
        print(f"deskreader: configuration: {exc}", file=sys.stderr)
        return 2
    from .bridge import run, setup_logging

    setup_logging()
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        print("deskreader: pyscard is not installed: python -m deskreader.install (make deskreader-deps)",
              file=sys.stderr)
        return 2
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
