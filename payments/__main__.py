"""python -m payments serve | autotopup

  serve      ecard's webhook and top-up endpoints (standalone Litestar app)
  autotopup  the auto top-up worker loop

Settings: flags, or ECARD_PG_DSN, ECARD_ACQUIRER_URL, ECARD_PAYMENTS_PUBLIC_URL,
ECARD_WEBHOOK_SECRET.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def serve(argv: list[str]) -> int:
    import uvicorn

    from .acquirer import SandboxAcquirerClient
    from .sandbox import bind_socket
    from .webhook import PaymentsService, PaymentsSettings, create_app

    p = argparse.ArgumentParser(prog="python -m payments serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8810)
    p.add_argument("--dsn", default=os.environ.get("ECARD_PG_DSN"))
    p.add_argument("--acquirer-url", default=os.environ.get("ECARD_ACQUIRER_URL", "http://127.0.0.1:8900"))
    p.add_argument("--public-url", default=os.environ.get("ECARD_PAYMENTS_PUBLIC_URL"),
                   help="where the acquirer reaches this service (default http://<host>:<port>)")
    p.add_argument("--webhook-secret", default=os.environ.get("ECARD_WEBHOOK_SECRET"))
    a = p.parse_args(argv)
    if not a.dsn:
        p.error("--dsn or ECARD_PG_DSN is required")
    if not a.webhook_secret:
        p.error("--webhook-secret or ECARD_WEBHOOK_SECRET is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = bind_socket(a.host, a.port)
    host, port = sock.getsockname()[:2]
    settings = PaymentsSettings(webhook_secret=a.webhook_secret, public_url=a.public_url or f"http://{host}:{port}")
    service = PaymentsService(a.dsn, SandboxAcquirerClient(a.acquirer_url), settings)
    print(f"payments listening on http://{host}:{port}, webhook {settings.callback_url}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("serve", "autotopup"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "serve":
        return serve(argv[1:])
    from .autotopup import main as autotopup_main

    return autotopup_main(argv[1:])


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    raise SystemExit(main())
