"""python -m payments serve | autotopup

  serve      ecard's webhook and the parents' top-up, saved-card and auto top-up endpoints
             (standalone Litestar app)
  autotopup  the auto top-up worker loop

Settings: flags, or ECARD_PG_DSN, ECARD_ACQUIRER_URL, ECARD_PAYMENTS_PUBLIC_URL,
ECARD_WEBHOOK_SECRET, ECARD_PAYMENTS_RETURN_ORIGINS (comma-separated origins a top-up's
return_url may point to; default http://127.0.0.1:8820, the parents' pages).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def serve(argv: list[str]) -> int:
    import uvicorn

    from .acquirer import SandboxAcquirerClient
    from .app import create_app
    from .sandbox import bind_socket
    from .webhook import RETURN_ORIGINS_DEFAULT, PaymentsService, PaymentsSettings

    p = argparse.ArgumentParser(prog="python -m payments serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8810)
    p.add_argument("--dsn", default=os.environ.get("ECARD_PG_DSN"))
    p.add_argument("--acquirer-url", default=os.environ.get("ECARD_ACQUIRER_URL", "http://127.0.0.1:8900"))
    p.add_argument("--public-url", default=os.environ.get("ECARD_PAYMENTS_PUBLIC_URL"),
                   help="where the acquirer reaches this service (default http://<host>:<port>)")
    p.add_argument("--webhook-secret", default=os.environ.get("ECARD_WEBHOOK_SECRET"))
    p.add_argument("--return-origins",
                   default=os.environ.get("ECARD_PAYMENTS_RETURN_ORIGINS", ",".join(RETURN_ORIGINS_DEFAULT)),
                   help="comma-separated origins (scheme://host:port) a top-up's return_url may point to")
    a = p.parse_args(argv)
    if not a.dsn:
        p.error("--dsn or ECARD_PG_DSN is required")
    if not a.webhook_secret:
        p.error("--webhook-secret or ECARD_WEBHOOK_SECRET is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = bind_socket(a.host, a.port)
    host, port = sock.getsockname()[:2]
    origins = tuple(o.strip().rstrip("/") for o in a.return_origins.split(",") if o.strip())
    if not origins:
        p.error("--return-origins or ECARD_PAYMENTS_RETURN_ORIGINS names no origin")
    from .topups import origin

    for o in origins:
        if origin(o) is None:
            p.error(f"return origin {o!r} is not an absolute http(s) origin such as http://127.0.0.1:8820")
    settings = PaymentsSettings(webhook_secret=a.webhook_secret, public_url=a.public_url or f"http://{host}:{port}",
                                return_origins=origins)
    service = PaymentsService(a.dsn, SandboxAcquirerClient(a.acquirer_url), settings)
    print(f"payments listening on http://{host}:{port}, webhook {settings.callback_url}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
    # On SIGINT or SIGTERM uvicorn shuts down, then raises the signal again: SIGTERM ends the
    # process quietly, SIGINT comes back here as KeyboardInterrupt (uvicorn.run ignores it too).
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
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
