"""``python -m staff_api serve`` runs the API under uvicorn; ``create-staff`` bootstraps a token.

    python -m staff_api serve --host 127.0.0.1 --port 8800 [--pg-dsn DSN]
    python -m staff_api create-staff --login L --role R [--school N] [--pg-dsn DSN]
    python -m staff_api rotate-token --login L [--pg-dsn DSN]

rotate-token is the way back in when the only operator's token expired or was lost: it
prints a new token for L (the old one stops at once; audited as cli:rotate-token). Over
HTTP, ``python -m staff_api.cli token rotate [--login L]`` does the same.

The DSN comes from --pg-dsn or ECARD_PG_DSN; without either, the embedded
PostgreSQL under ./var (the gateway's) is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import asyncpg

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8800
BOOTSTRAP_ACTOR = "cli:create-staff"
ROTATE_ACTOR = "cli:rotate-token"


def _dsn(arg: str | None) -> str:
    dsn = arg or os.environ.get("ECARD_PG_DSN")
    if dsn:
        return dsn
    from storage import database

    return database.start_embedded(Path("var").resolve())


async def _create_staff(dsn: str, login: str, role: str, school: int | None) -> str:
    from . import db
    from .admin import create_staff

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            return await create_staff(conn, login, role, school, BOOTSTRAP_ACTOR, db.system_clock_ms())
    finally:
        await conn.close()


async def _rotate_token(dsn: str, login: str) -> str:
    from . import db
    from .admin import rotate_token

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            return (await rotate_token(conn, login, ROTATE_ACTOR, db.system_clock_ms())).token
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m staff_api", description="ecard staff and operator API")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--pg-dsn", default=None)
    create = sub.add_parser("create-staff", help="create a staff member directly in the database; prints the token")
    create.add_argument("--login", required=True)
    create.add_argument("--role", required=True, choices=("operator", "officer", "cashier", "auditor"))
    create.add_argument("--school", type=int, default=None)
    create.add_argument("--pg-dsn", default=None)
    rotate = sub.add_parser("rotate-token", help="a new token for a staff member, directly in the database; prints it")
    rotate.add_argument("--login", required=True)
    rotate.add_argument("--pg-dsn", default=None)
    args = parser.parse_args(argv)

    if args.command == "serve":
        import uvicorn

        from .app import create_app

        uvicorn.run(create_app(_dsn(args.pg_dsn)), host=args.host, port=args.port, log_level="info")
        return 0
    from litestar.exceptions import HTTPException

    try:
        if args.command == "rotate-token":
            token = asyncio.run(_rotate_token(_dsn(args.pg_dsn), args.login))
        else:
            token = asyncio.run(_create_staff(_dsn(args.pg_dsn), args.login, args.role, args.school))
    except HTTPException as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
