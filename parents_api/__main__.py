"""``python -m parents_api``: the parents' API under uvicorn.

    python -m parents_api [--host 127.0.0.1] [--port 8820] [--pg-dsn DSN]
                          [--smtp-host H --smtp-port P [--smtp-starttls]] [--sent-dir var/sent]
                          [--ussd-token T]

The DSN comes from --pg-dsn or ECARD_PG_DSN; without either, the embedded PostgreSQL
under ./var (the gateway's). Codes for phones are written one file per message under
<sent-dir>/sms/ (where an SMSC would be); codes for e-mail go to the SMTP server when
--smtp-host (or ECARD_SMTP_HOST) is given, else one file per message under
<sent-dir>/email/. ECARD_USSD_TOKEN (or --ussd-token) makes /ussd require the
aggregator's bearer token.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8820


def _dsn(arg: str | None) -> str:
    dsn = arg or os.environ.get("ECARD_PG_DSN")
    if dsn:
        return dsn
    from storage import database

    return database.start_embedded(Path("var").resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parents_api", description="ecard parents' API and USSD")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--pg-dsn", default=None)
    parser.add_argument("--smtp-host", default=os.environ.get("ECARD_SMTP_HOST"))
    parser.add_argument("--smtp-port", type=int, default=int(os.environ.get("ECARD_SMTP_PORT", "25")))
    parser.add_argument("--smtp-starttls", action="store_true")
    parser.add_argument("--smtp-from", default="ecard <no-reply@ecard.local>")
    parser.add_argument("--sent-dir", default="var/sent")
    parser.add_argument("--ussd-token", default=os.environ.get("ECARD_USSD_TOKEN"))
    parser.add_argument("--payments-url", default=os.environ.get("ECARD_PAYMENTS_URL"),
                        help="the payments service (card top-ups), e.g. http://127.0.0.1:8810")
    parser.add_argument("--public-url", default=os.environ.get("ECARD_PARENTS_PUBLIC_URL"),
                        help="where parents reach these pages (default http://<host>:<port>)")
    args = parser.parse_args(argv)

    import uvicorn

    from .app import create_app
    from .config import Settings
    from .senders import FileSender, Senders, SmtpSender

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    files = FileSender(Path(args.sent_dir))
    email = (SmtpSender(args.smtp_host, args.smtp_port, from_address=args.smtp_from, start_tls=args.smtp_starttls)
             if args.smtp_host else files)
    if args.ussd_token is None:
        logging.getLogger("parents_api").warning(
            "/ussd accepts any caller: set ECARD_USSD_TOKEN to require the aggregator's token")
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    app = create_app(Settings(dsn=_dsn(args.pg_dsn), ussd_token=args.ussd_token, payments_url=args.payments_url,
                              public_url=public_url), Senders(email=email, sms=files))
    print(f"parents' API on http://{args.host}:{args.port} (OpenAPI at /schema); codes by SMS under "
          f"{Path(args.sent_dir) / 'sms'}, by e-mail "
          f"{'via SMTP ' + args.smtp_host + ':' + str(args.smtp_port) if args.smtp_host else 'under ' + str(Path(args.sent_dir) / 'email')}",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
