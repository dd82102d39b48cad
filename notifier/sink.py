"""The embedded SMTP sink of `make run`: aiosmtpd on loopback, inside the notifier process.

``python -m notifier.sink --port N [--maildir DIR]`` runs it as a process of its own, an SMTP
peer like a real relay (the bench's notices phase: the notifier's CPU is then the notifier's).

It accepts every message and keeps it in a Maildir (``<data_dir>/mail``; ``mutt -f
var/mail`` reads it), so the e-mail channel runs its real SMTP conversation on a
developer's machine. Production names a real relay with ``smtp_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import mailbox
from pathlib import Path

from aiosmtpd.smtp import SMTP as SMTPProtocol

log = logging.getLogger("ecard.notifier.sink")

# The largest message the sink takes (a notice is a few KiB; aiosmtpd's default is 32 MiB).
SINK_MESSAGE_BYTES_MAX = 1 << 20


class MaildirSink:
    """aiosmtpd handler: every message accepted, kept in a Maildir when one is given."""

    def __init__(self, maildir: Path | None) -> None:
        if maildir is not None:
            Path(maildir).parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(str(maildir), create=True) if maildir is not None else None
        self.received = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        self.received += 1
        if self.maildir is not None:
            self.maildir.add(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


async def start_sink(host: str, port: int, maildir: Path | None) -> tuple[asyncio.AbstractServer, int, MaildirSink]:
    """Serve the sink on ``host:port`` (0: a free port) in the running loop; returns the
    server (close it), the port it listens on and the handler."""
    handler = MaildirSink(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTPProtocol(handler, hostname="ecard-sink", ident="ecard SMTP sink",
                             data_size_limit=SINK_MESSAGE_BYTES_MAX),
        host, port,
    )
    bound = server.sockets[0].getsockname()[1]
    return server, bound, handler


async def _serve(host: str, port: int, maildir: Path | None) -> None:
    server, bound, _ = await start_sink(host, port, maildir)
    print(json.dumps({"listening": bound}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier.sink", description="SMTP sink (aiosmtpd)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--maildir", type=Path, default=None, help="keep every message here (default: count only)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.maildir))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
